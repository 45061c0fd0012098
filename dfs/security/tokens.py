"""Chunk access tokens: the metaserver's word that a user may read, write or copy one
version of one chunk until a given time.

Dataservers obey only the metaservers' decisions. A metaserver that allowed a read
or a write (after its permission checks) hands the client a token with the chunk's
locations or allocation; the dataserver checks the token before it touches the
chunk. A token is the text

    t1.<fields>.<mac>

where ``fields`` is ``chunk_id:version:operation:user:expires`` (``expires`` in whole
Unix seconds) and ``mac`` its HMAC-SHA256 under the cluster's token key, both in
unpadded base64url. The fields are readable by anyone (so a client can see when its
token runs out); only the MAC makes them true. A token is no secret from the user it
was minted for, and useless to anyone else: a dataserver checks the user against the
caller's certificate.

The key in use mints; during a rotation the previous key still verifies (see
docs/configuration.md, "Rotating the token key").

Pure: no clock (the caller passes ``now``), no files, no sockets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re

import attrs

from dfs.protocol.errors import InvalidToken

READ = "read"
#: Covers every step of a replica write: OpenChunkWrite and its data on the chunk
#: stream, RecoverChunkWrite (for the new version), FinishChunkWrite, StoreChunk,
#: AbortChunkWrite.
WRITE = "write"
#: A dataserver pulling a replica from another on the leader's ReplicateChunk order.
#: Distinct from READ so that a copy token (minted for a dataserver's name) is
#: worthless on a client connection, and a client's read token on a dataserver one.
COPY = "copy"
OPERATIONS = frozenset({READ, WRITE, COPY})

PREFIX = "t1"
#: Bound into every MAC, so that the key could sign other things one day without a
#: signature of one kind passing for the other.
CONTEXT = b"dfs chunk access token v1\n"
#: Longer texts are refused before any decoding (the longest real one is ~200 chars).
MAX_LENGTH = 512

_FIELDS = re.compile(r"(\d{1,19}):(\d{1,19}):([a-z]{1,16}):([A-Za-z0-9._-]{1,64}):(\d{1,12})")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # Only the one spelling mint() writes: unused low bits of the last character
    # would otherwise give several texts for the same token.
    if _b64encode(data) != text:
        raise ValueError("not canonical base64url")
    return data


@attrs.frozen
class ChunkToken:
    """What a token grants: ``operation`` on ``version`` of ``chunk_id`` by ``user``
    until ``expires`` (Unix seconds)."""

    chunk_id: int
    version: int
    operation: str
    user: str
    expires: int

    def fields(self) -> bytes:
        return (
            f"{self.chunk_id}:{self.version}:{self.operation}:{self.user}:{self.expires}"
        ).encode("ascii")

    @classmethod
    def parse(cls, token: str) -> tuple[ChunkToken, bytes]:
        """The claims of ``token`` and its MAC, unverified; InvalidToken (malformed)
        if it is not a token's text."""
        if not isinstance(token, str) or len(token) > MAX_LENGTH:
            raise InvalidToken("malformed token: not a token's text")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise InvalidToken(f"malformed token: expected {PREFIX}.<fields>.<mac>")
        try:
            fields = _b64decode(parts[1]).decode("ascii")
            mac = _b64decode(parts[2])
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise InvalidToken("malformed token: not base64url") from None
        match = _FIELDS.fullmatch(fields)
        if match is None or len(mac) != hashlib.sha256().digest_size:
            raise InvalidToken("malformed token: its fields do not parse")
        chunk_id, version, operation, user, expires = match.groups()
        claims = cls(int(chunk_id), int(version), operation, user, int(expires))
        return claims, mac


def expiry(token: str) -> float | None:
    """When ``token`` runs out (Unix seconds), as it claims; None if it is not a
    token. For a client deciding when to renew: nothing is verified."""
    try:
        return float(ChunkToken.parse(token)[0].expires)
    except InvalidToken:
        return None


def _mac(key: bytes, fields: bytes) -> bytes:
    return hmac.new(key, CONTEXT + fields, hashlib.sha256).digest()


@attrs.frozen
class TokenKeys:
    """The cluster's token keys: ``current`` mints and verifies, ``previous`` (during
    a rotation) only verifies."""

    current: bytes = attrs.field(repr=False)
    previous: bytes | None = attrs.field(default=None, repr=False)

    @current.validator
    def _check_current(self, _attribute: object, value: bytes) -> None:
        if not value:
            raise ValueError("the token key must not be empty")

    def mint(self, chunk_id: int, version: int, operation: str, user: str, expires: float) -> str:
        """A token granting ``operation`` on ``version`` of ``chunk_id`` to ``user``
        until ``expires`` (rounded up to a whole second)."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown token operation {operation!r}")
        claims = ChunkToken(chunk_id, version, operation, user, math.ceil(expires))
        fields = claims.fields()
        if _FIELDS.fullmatch(fields.decode("ascii")) is None:
            raise ValueError(f"cannot mint a token for {claims}")
        return f"{PREFIX}.{_b64encode(fields)}.{_b64encode(_mac(self.current, fields))}"

    def verify(
        self,
        token: str | None,
        chunk_id: int,
        version: int,
        operation: str,
        user: str | None,
        now: float,
    ) -> ChunkToken:
        """The claims of ``token`` if it grants ``operation`` on ``version`` of
        ``chunk_id`` to ``user`` (any user when None) at ``now``; otherwise
        InvalidToken saying why. Nothing a token claims is looked at before its MAC
        is found good."""
        if not token:
            raise InvalidToken(
                f"no token: {operation} of chunk {chunk_id} needs a token from the metaserver"
            )
        claims, mac = ChunkToken.parse(token)
        fields = claims.fields()
        keys = [self.current] if self.previous is None else [self.current, self.previous]
        # Both keys are always tried, so the time taken says nothing about which matched.
        matched = [hmac.compare_digest(mac, _mac(key, fields)) for key in keys]
        if not any(matched):
            raise InvalidToken("forged token: not signed with a token key of this cluster")
        if claims.chunk_id != chunk_id:
            raise InvalidToken(f"wrong chunk: token is for chunk {claims.chunk_id}, not {chunk_id}")
        if claims.version != version:
            raise InvalidToken(
                f"wrong version: token is for chunk {chunk_id} version {claims.version}, "
                f"not {version}"
            )
        if claims.operation != operation:
            raise InvalidToken(f"wrong operation: token allows {claims.operation}, not {operation}")
        if user is not None and claims.user != user:
            raise InvalidToken(f"wrong user: token is for {claims.user}, not {user}")
        if now >= claims.expires:
            raise InvalidToken(
                f"expired token: chunk {chunk_id} {operation} token expired "
                f"{now - claims.expires:.1f} s ago"
            )
        return claims


def is_expired(error: InvalidToken) -> bool:
    """True when a dataserver refused a token only because it ran out."""
    return str(error).startswith("expired token")


@attrs.define
class TokenIssuer:
    """The metaserver's side: tokens that last ``lifetime`` seconds from ``now``.
    ``keys`` change on SIGHUP (:class:`dfs.trust.TrustService`): tokens minted from
    then on use the new current key."""

    keys: TokenKeys
    lifetime: float

    def use(self, keys: TokenKeys) -> None:
        self.keys = keys

    def issue(
        self,
        chunk_id: int,
        version: int,
        operation: str,
        user: str,
        now: float,
        *,
        lifetime: float | None = None,
    ) -> str:
        """A token for ``user`` from ``now``; ``lifetime`` overrides the configured
        one (a copy on the leader's order may take longer)."""
        return self.keys.mint(chunk_id, version, operation, user, now + (lifetime or self.lifetime))
