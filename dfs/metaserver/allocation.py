"""Chunks handed to writers and readers, with the tokens that let them at the data.

:class:`ChunkTokens` is the one place chunk access tokens are minted: read tokens
with a file's chunks, write tokens with a new chunk or version, copy tokens with a
repair order. :class:`ChunkAllocator` answers the chunk commands: a new chunk and
where its replicas go (placement), a chunk's new version after a pipeline lost a
dataserver, a chunk committed, a file's chunks with their live replicas, and fresh
tokens for a long transfer.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.logger import Logger

from dfs.config import Address, ReplicationConfig
from dfs.metaserver import namespace as ns
from dfs.metaserver.log import ReplicatedLog, caller, commit, holder, lookup, stamp
from dfs.metaserver.placement import Placement
from dfs.metaserver.registry import DataserverRegistry, DataserverState
from dfs.metaserver.replicas import ReplicaTracker
from dfs.metaserver.safemode import SafeMode
from dfs.protocol.errors import InvalidArgument, IsADirectory, NoSpace, PermissionDenied
from dfs.security.identity import Identity
from dfs.security.tokens import COPY, READ, WRITE, TokenIssuer

#: A page of chunks stops growing past this many bytes, so that the answer fits one
#: AMP value (65,535 bytes) whatever the addresses and tokens are like.
PAGE_BYTES = 40_000
#: Chunks whose tokens one RenewChunkTokens renews: ~200 bytes each on the wire.
MAX_RENEWALS = 100


class ChunkTokens:
    """Mints every chunk access token this metaserver hands out."""

    def __init__(self, clock: Any, issuer: TokenIssuer) -> None:
        self._clock = clock
        self._issuer = issuer

    def read(self, identity: Identity, chunk_id: int, version: int) -> str:
        return self._mint(identity.name, chunk_id, version, READ)

    def write(self, identity: Identity, chunk_id: int, version: int) -> str:
        return self._mint(identity.name, chunk_id, version, WRITE)

    def copy(self, target: str, chunk_id: int, version: int, lifetime: float) -> str:
        """For dataserver ``target`` to read the replica it is ordered to copy: it
        lasts as long as the order may run (throttled, longer than a client's)."""
        return self._issuer.issue(
            chunk_id, version, COPY, target, self._clock.seconds(), lifetime=lifetime
        )

    def _mint(self, user: str, chunk_id: int, version: int, operation: str) -> str:
        # The caller has done the permission checks.
        return self._issuer.issue(chunk_id, version, operation, user, self._clock.seconds())


class ChunkAllocator:
    log = Logger()

    def __init__(
        self,
        clock: Any,
        log: ReplicatedLog,
        safe_mode: SafeMode,
        registry: DataserverRegistry,
        replicas: ReplicaTracker,
        tokens: ChunkTokens,
        config: ReplicationConfig,
        lease_period: float,
        placement: Placement | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._log = log
        self._safe_mode = safe_mode
        self._registry = registry
        self._replicas = replicas
        self._tokens = tokens
        self._config = config
        self._lease_period = lease_period
        self._placement = placement or Placement()
        self._rng = rng or random.Random()

    def _min_replicas(self, stat: ns.Stat) -> int:
        """Replicas a chunk needs before it is committed: min_replication, or the
        file's own factor if that is lower."""
        return max(1, min(self._config.min_replication, stat.replication))

    def _stat(self, path: str, identity: Identity | None = None) -> ns.Stat:
        self._safe_mode.check_serving()
        who = caller(identity) if identity is not None else None
        stat: ns.Stat = lookup(self._log, lambda namespace: namespace.stat(path, who))
        return stat

    async def _commit(self, operation: ns.Operation) -> Any:
        self._safe_mode.check_mutation()
        return await commit(self._log, operation)

    # -- writers -----------------------------------------------------------------------

    def space_reported(self, name: str) -> None:
        """A fresh space report from ``name`` already counts what it received."""
        self._placement.reported(name)

    async def add_chunk(
        self, identity: Identity, path: str, client_id: str, request_id: str
    ) -> dict[str, Any]:
        stat = self._stat(path)
        if stat.kind != ns.FILE:
            raise InvalidArgument(f"{path} is not a file")
        draining = self._log.read(lambda namespace: namespace.decommissioned)
        targets = self._placement.choose(
            [record for record in self._registry.records() if record.name not in draining],
            stat.replication,
            stat.chunk_size,
        )
        needed = self._min_replicas(stat)
        if len(targets) < needed:
            raise NoSpace(
                f"{path}: {len(targets)} live dataservers have room for a chunk, "
                f"{needed} needed (min_replication)"
            )
        now = self._clock.seconds()
        chunk = await self._commit(
            ns.AddChunk(
                path,
                holder(identity, client_id),
                now + self._lease_period,
                **stamp(identity, now, request_id),
            )
        )
        if len(targets) < stat.replication:
            self.log.warn(
                "{path}: chunk {chunk_id} gets {count} of {wanted} replicas "
                "(not enough live dataservers with room)",
                path=path,
                chunk_id=chunk.chunk_id,
                count=len(targets),
                wanted=stat.replication,
            )
        return {
            "chunk_id": chunk.chunk_id,
            "version": chunk.version,
            "targets": [record.address for record in targets],
            "token": self._tokens.write(identity, chunk.chunk_id, chunk.version),
        }

    async def bump_chunk_version(
        self, identity: Identity, path: str, client_id: str, chunk_id: int, request_id: str
    ) -> dict[str, Any]:
        chunk = await self._commit(
            ns.BumpChunkVersion(
                path,
                holder(identity, client_id),
                chunk_id,
                **stamp(identity, self._clock.seconds(), request_id),
            )
        )
        version = int(chunk.version)
        # The new version needs a new write token: the old one names the old version.
        return {"version": version, "token": self._tokens.write(identity, chunk_id, version)}

    async def commit_chunk(
        self,
        identity: Identity,
        path: str,
        client_id: str,
        chunk_id: int,
        version: int,
        length: int,
        locations: list[str],
        request_id: str,
    ) -> None:
        stat = self._stat(path)
        needed = self._min_replicas(stat)
        if stat.kind == ns.FILE and len(set(locations)) < needed:
            raise InvalidArgument(
                f"{path}: chunk {chunk_id} is on {len(set(locations))} dataservers, "
                f"fewer than min_replication ({needed})"
            )
        await self._commit(
            ns.CommitChunk(
                path,
                holder(identity, client_id),
                chunk_id,
                version,
                length,
                **stamp(identity, self._clock.seconds(), request_id),
            )
        )
        self._replicas.written(chunk_id, version, locations)

    # -- readers -----------------------------------------------------------------------

    def get_chunks(
        self,
        identity: Identity,
        path: str,
        first: int,
        limit: int,
        client_host: str | None = None,
    ) -> dict[str, Any]:
        """A page of the file's chunks with their live replicas, best first for a
        reader on ``client_host``: those on its own host, then the rest in random
        order so that readers spread over the replicas. Each comes with a read token
        for ``identity``."""
        stat = self._stat(path, identity)
        if stat.kind != ns.FILE:
            raise IsADirectory(f"{path}: is a directory")
        who = caller(identity)
        chunks = lookup(self._log, lambda namespace: namespace.chunks(path, who))
        alive = {
            record.name: record.address
            for record in self._registry.records()
            if record.state is DataserverState.ALIVE
        }
        page: list[dict[str, Any]] = []
        size = 0
        limit = max(1, min(limit, 1000))
        index = first
        for chunk in chunks[first:]:
            if len(page) >= limit or size > PAGE_BYTES:
                break
            # A reader sees only committed bytes: the last chunk of a file being
            # written may still be growing and is left out until committed.
            if chunk.length == 0 and not stat.complete:
                index += 1
                continue
            addresses = [
                alive[name]
                for name in self._replicas.holders(chunk.chunk_id, chunk.version)
                if name in alive
            ]
            self._rng.shuffle(addresses)
            addresses.sort(key=lambda address: Address.parse(address).host != client_host)
            token = self._tokens.read(identity, chunk.chunk_id, chunk.version)
            page.append(
                {
                    "chunk_id": chunk.chunk_id,
                    "version": chunk.version,
                    "length": chunk.length,
                    "locations": addresses,
                    "token": token,
                }
            )
            size += 60 + len(token) + sum(len(address) + 2 for address in addresses)
            index += 1
        return {"length": stat.length, "chunks": page, "more": index < len(chunks)}

    def renew_chunk_tokens(
        self, identity: Identity, path: str, operation: str, chunk_ids: list[int], client_id: str
    ) -> dict[str, Any]:
        """Fresh tokens for chunks of the file at ``path``, for a reader or writer
        whose tokens run out during a long transfer. A read token is given after the
        same checks as GetChunks; a write token only to the holder of the file's
        write lease (which it got from Create, after the permission checks)."""
        if operation not in (READ, WRITE):
            raise InvalidArgument(f"token operation {operation!r}: expected read or write")
        if len(chunk_ids) > MAX_RENEWALS:
            raise InvalidArgument(
                f"{len(chunk_ids)} chunks at once: at most {MAX_RENEWALS} per request"
            )
        # Reading: the same permission checks as get_chunks (keep the two alike).
        # Writing: the lease is the permission (a file may be write-only to its writer).
        stat = self._stat(path, identity)
        if stat.kind != ns.FILE:
            raise IsADirectory(f"{path}: is a directory")
        if operation == WRITE and stat.under_construction != holder(identity, client_id):
            raise PermissionDenied(f"{path}: {identity} does not hold its write lease")
        reader = caller(identity) if operation == READ else None
        versions = {
            chunk.chunk_id: chunk.version
            for chunk in lookup(self._log, lambda namespace: namespace.chunks(path, reader))
        }
        mint = self._tokens.read if operation == READ else self._tokens.write
        tokens = []
        for chunk_id in dict.fromkeys(chunk_ids):
            version = versions.get(chunk_id)
            if version is None:
                raise InvalidArgument(f"{path}: has no chunk {chunk_id}")
            token = mint(identity, chunk_id, version)
            tokens.append({"chunk_id": chunk_id, "version": version, "token": token})
        return {"tokens": tokens}
