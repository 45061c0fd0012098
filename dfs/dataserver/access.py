"""Who may touch a chunk here: the token check of every chunk command.

A dataserver reads, writes or copies a chunk only on a token a metaserver minted
(:mod:`dfs.security.tokens`). The caller's certificate says who presents it:

- a person (client or admin certificate) needs a token minted for its own name:
  ``read`` for ReadChunk, ``write`` for the commands of a replica write;
- a dataserver forwarding a pipeline presents the writer's ``write`` token, minted
  for the writer, not for it: any user's token is accepted from a dataserver
  certificate (a dataserver holds the token key anyway, so this trusts it with
  nothing more);
- a dataserver copying a replica on the leader's order presents a ``copy`` token
  minted for its own name; ReadChunk from a dataserver takes nothing else.

A refusal is InvalidToken saying why, logged with the caller's identity.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from dfs.protocol.errors import InvalidToken
from dfs.security.identity import Identity, Role
from dfs.security.tokens import COPY, READ, WRITE, TokenKeys


class ChunkAccess:
    """The token check, with this dataserver's keys and clock."""

    log = Logger()

    def __init__(self, keys: TokenKeys, clock: Any) -> None:
        self.keys = keys
        self._clock = clock
        #: tokens refused, for the status page
        self.refused = 0

    def use(self, keys: TokenKeys) -> None:
        """Check tokens with ``keys`` from now on (reloaded on SIGHUP)."""
        self.keys = keys

    def check(
        self,
        token: str | None,
        chunk_id: int,
        version: int,
        *,
        read: bool,
        peer: Identity | None,
        address: str,
        command: str,
    ) -> None:
        """Return if ``peer`` may run ``command`` on ``version`` of ``chunk_id`` with
        ``token`` (``read`` for ReadChunk, else a step of a write); raise
        InvalidToken otherwise."""
        from_dataserver = peer is not None and peer.role is Role.DATASERVER
        if read:
            operation = COPY if from_dataserver else READ
        else:
            operation = WRITE
        user = None if (from_dataserver and operation == WRITE) else getattr(peer, "name", "")
        try:
            self.keys.verify(token, chunk_id, version, operation, user, self._clock.seconds())
        except InvalidToken as error:
            self.refused += 1
            self.log.warn(
                "refused {command} of chunk {chunk_id} version {version} to {peer} at "
                "{address}: {reason}",
                command=command,
                chunk_id=chunk_id,
                version=version,
                peer=str(peer),
                address=address,
                reason=str(error),
            )
            raise
