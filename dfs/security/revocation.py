"""Certificate revocation: the cluster CA's CRL, checked, and what it revokes.

``dfs ca revoke`` adds serial numbers to a CRL signed by the cluster CA; servers
name that file in security_config.json (``crl``) and refuse, and disconnect, every
peer whose certificate it lists. This module is the pure part: it turns the bytes
of a CRL into a :class:`RevocationList` once it has checked that the cluster CA
signed it, and answers "is this certificate revoked?". Reading the file, noticing
that it changed and closing connections are the servers' business
(:mod:`dfs.trust`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

__all__ = [
    "CRLError",
    "FileState",
    "RevocationList",
    "describe_certificate",
    "parse_crl",
]


class CRLError(Exception):
    """A CRL that cannot be used: unreadable, malformed or not the cluster CA's. One line."""


def describe_certificate(certificate: x509.Certificate) -> str:
    """``serial 0x..., subject OU=client, CN=alice`` for logs and messages."""
    try:
        subject = certificate.subject.rfc4514_string()
    except ValueError:
        subject = "(malformed subject)"
    return f"serial {certificate.serial_number:#x}, subject {subject}"


@attrs.frozen
class RevocationList:
    """The serial numbers the cluster CA has revoked, as of ``last_update``."""

    issuer: x509.Name
    serials: frozenset[int]
    last_update: datetime
    next_update: datetime | None = None
    #: The CRL number extension, which grows with each CRL the CA signs.
    number: int | None = None

    def __len__(self) -> int:
        return len(self.serials)

    def is_revoked(self, certificate: x509.Certificate) -> bool:
        """True if the CA that signed this list revoked ``certificate``.

        Serial numbers are unique per issuer only, so a certificate of another
        issuer is never taken as revoked here (the TLS handshake refuses those anyway).
        """
        return certificate.issuer == self.issuer and certificate.serial_number in self.serials

    def refusal(self, certificate: x509.Certificate) -> str | None:
        """Why a peer presenting ``certificate`` must be refused, or None."""
        if self.is_revoked(certificate):
            return f"certificate revoked ({describe_certificate(certificate)})"
        return None

    def is_outdated(self, now: datetime) -> bool:
        """True once the CA's promised next update is past: the list may miss revocations."""
        return self.next_update is not None and now > self.next_update


def parse_crl(data: bytes, authority: x509.Certificate) -> RevocationList:
    """The revocation list in ``data`` (PEM or DER) if ``authority`` signed it.

    Raises :class:`CRLError` if the data is not a CRL, names another issuer, or its
    signature does not verify with the CA's public key: a list anyone could write
    must never decide who is shut out (or let back in).
    """
    if not data.strip():
        raise CRLError("the file is empty")
    try:
        if b"-----BEGIN" in data:
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
    except ValueError:
        raise CRLError("not a valid CRL (PEM or DER)") from None
    if crl.issuer != authority.subject:
        raise CRLError(
            f"issued by {crl.issuer.rfc4514_string()!r}, "
            f"not by the cluster CA {authority.subject.rfc4514_string()!r}"
        )
    try:
        valid = crl.is_signature_valid(authority.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise CRLError("its signature does not verify with the cluster CA's key")
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    except ValueError as error:
        raise CRLError(f"malformed extensions: {error}") from None
    return RevocationList(
        issuer=crl.issuer,
        serials=frozenset(entry.serial_number for entry in crl),
        last_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        number=number,
    )


@attrs.frozen
class FileState:
    """What a server remembers of a file it watches, to tell when it changed.

    The content digest decides: modification times can be coarse or be set back,
    and a ``touch`` or a copy of the same list is no change worth acting on. The
    file is small (tens of bytes per revoked certificate), so reading it on every
    check costs nothing that matters.
    """

    mtime_ns: int
    size: int
    digest: str

    @classmethod
    def of(cls, mtime_ns: int, data: bytes) -> FileState:
        return cls(mtime_ns, len(data), hashlib.sha256(data).hexdigest())

    def same_content(self, other: FileState | None) -> bool:
        return other is not None and (self.size, self.digest) == (other.size, other.digest)
