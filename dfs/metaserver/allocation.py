"""Files written and read: leases, chunks, and the tokens that let clients at the data.

:class:`ChunkTokens` is the one place chunk access tokens are minted: read tokens
with a file's chunks, write tokens with a new chunk or version, copy tokens with a
repair order. :class:`ChunkAllocator` answers the commands of a file's life: created
under a write lease (empty and closed at once, or with its first chunk in the same
entry), new chunks and where their replicas go (placement), a chunk's new version
after a pipeline lost a dataserver, chunks committed (the last one with the close),
leases renewed or recovered, a file's chunks with their live replicas, and fresh
tokens for a long transfer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger

from dfs.config import ReplicationConfig
from dfs.metaserver import namespace as ns
from dfs.metaserver import operations as ops
from dfs.metaserver.log import ReplicatedLog, caller, commit, holder, lookup, stamp
from dfs.metaserver.placement import Placement
from dfs.metaserver.registry import DataserverRecord, DataserverRegistry, DataserverState
from dfs.metaserver.replicas import ReplicaTracker
from dfs.metaserver.requests import check_replication
from dfs.metaserver.safemode import SafeMode
from dfs.protocol import records
from dfs.protocol.errors import InvalidArgument, IsADirectory, NoSpace, PermissionDenied
from dfs.protocol.records import Location
from dfs.security.identity import Identity
from dfs.security.tokens import COPY, READ, WRITE, TokenIssuer

#: A page of chunks stops growing past this many bytes, so that the answer fits one
#: AMP value (65,535 bytes) whatever the addresses and tokens are like.
PAGE_BYTES = 40_000
#: Chunks whose tokens one RenewChunkTokens renews: ~200 bytes each on the wire.
MAX_RENEWALS = 100
#: The one who recovers expired leases: the metaserver itself.
METASERVER = ops.Caller(user="dfs", superuser=True)


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
        #: How long a writer's lease lasts without renewal (the client renews at a third).
        self.lease_period = lease_period
        self._placement = placement or Placement()
        self._rng = rng or random.Random()

    def _min_replicas(self, replication: int) -> int:
        """Replicas a chunk needs before it is committed: min_replication, or the
        file's own factor if that is lower."""
        return max(1, min(self._config.min_replication, replication))

    def _stat(self, path: str, identity: Identity | None = None) -> ns.Stat:
        self._safe_mode.check_serving()
        who = caller(identity) if identity is not None else None
        stat: ns.Stat = lookup(self._log, lambda namespace: namespace.stat(path, who))
        return stat

    def _writing(self, path: str, inode: int) -> ns.Stat:
        """The file a writer names: the one numbered ``inode`` wherever a rename took
        it (the stat gives its path now), or, from a writer that names none (protocol
        2.0), the one at ``path``."""
        if inode == ops.BY_PATH:
            return self._stat(path)
        self._safe_mode.check_serving()
        stat: ns.Stat = lookup(self._log, lambda namespace: namespace.stat_inode(inode, path))
        return stat

    async def _commit(self, operation: ops.Operation) -> Any:
        self._safe_mode.check_mutation()
        return await commit(self._log, operation)

    # -- writers -----------------------------------------------------------------------

    def space_reported(self, name: str) -> None:
        """A fresh space report from ``name`` already counts what it received."""
        self._placement.reported(name)

    def _place(self, path: str, replication: int, chunk_size: int) -> list[DataserverRecord]:
        """Distinct live dataservers for a new chunk of ``path``: NoSpace unless at
        least min_replication (or the file's factor, if lower) have room for it."""
        draining = self._log.read(lambda namespace: namespace.decommissioned)
        targets = self._placement.choose(
            [record for record in self._registry.records() if record.name not in draining],
            replication,
            chunk_size,
        )
        needed = self._min_replicas(replication)
        if len(targets) < needed:
            raise NoSpace(
                f"{path}: {len(targets)} live dataservers have room for a chunk, "
                f"{needed} needed (min_replication)"
            )
        return targets

    def _granted(
        self,
        identity: Identity,
        path: str,
        chunk: ns.ChunkRef,
        targets: list[DataserverRecord],
        replication: int,
    ) -> dict[str, Any]:
        """A new chunk as the writer gets it: where to write it, with its token."""
        if len(targets) < replication:
            self.log.warn(
                "{path}: chunk {chunk_id} gets {count} of {wanted} replicas "
                "(not enough live dataservers with room)",
                path=path,
                chunk_id=chunk.chunk_id,
                count=len(targets),
                wanted=replication,
            )
        return {
            "chunk_id": chunk.chunk_id,
            "version": chunk.version,
            "targets": [record.address for record in targets],
            "token": self._tokens.write(identity, chunk.chunk_id, chunk.version),
        }

    async def create(
        self,
        identity: Identity,
        path: str,
        mode: int,
        replication: int,
        chunk_size: int,
        overwrite: bool,
        client_id: str,
        request_id: str,
        close: bool = False,
        first_chunk: bool = False,
    ) -> dict[str, Any]:
        """A new file under the caller's write lease; ``close``: empty and complete at
        once (no lease); ``first_chunk``: with its first chunk, where placement allows
        (the answer then carries the chunk, as AddChunk's would)."""
        replication = replication or self._config.default_replication
        chunk_size = chunk_size or self._config.chunk_size
        check_replication(self._config, path, replication)
        now = self._clock.seconds()
        common = stamp(identity, now, request_id)
        lease = {
            "lease_holder": holder(identity, client_id),
            "lease_expires": now + self.lease_period,
        }
        targets: list[DataserverRecord] = []
        if first_chunk and not close:
            try:
                targets = self._place(path, replication, chunk_size)
            except NoSpace:
                pass  # not now: the writer's own AddChunk says so when it needs the chunk
        operation: ops.Operation
        if close:
            operation = ops.CreateClosed(path, mode, replication, chunk_size, overwrite, **common)
        elif targets:
            operation = ops.CreateWithChunk(
                path, mode, replication, chunk_size, overwrite, **lease, **common
            )
        else:
            operation = ops.Create(
                path, mode, replication, chunk_size, overwrite, **lease, **common
            )
        result = await self._commit(operation)
        self._replicas.drop(result.freed)
        answer: dict[str, Any] = {
            "replication": result.stat.replication,
            "chunk_size": result.stat.chunk_size,
            "lease_period": self.lease_period,
            "closed": close,
            "inode": result.stat.inode,
        }
        if result.chunk is not None:
            answer.update(self._granted(identity, path, result.chunk, targets, replication))
        return answer

    async def add_chunk(
        self,
        identity: Identity,
        path: str,
        client_id: str,
        request_id: str,
        inode: int = ops.BY_PATH,
    ) -> dict[str, Any]:
        stat = self._writing(path, inode)
        path = stat.path
        if stat.kind != ns.FILE:
            raise InvalidArgument(f"{path} is not a file")
        targets = self._place(path, stat.replication, stat.chunk_size)
        now = self._clock.seconds()
        chunk = await self._commit(
            ops.AddChunk(
                path,
                holder(identity, client_id),
                now + self.lease_period,
                **stamp(identity, now, request_id),
                inode=inode,
            )
        )
        return self._granted(identity, path, chunk, targets, stat.replication)

    async def bump_chunk_version(
        self,
        identity: Identity,
        path: str,
        client_id: str,
        chunk_id: int,
        request_id: str,
        inode: int = ops.BY_PATH,
    ) -> dict[str, Any]:
        path = self._writing(path, inode).path
        chunk = await self._commit(
            ops.BumpChunkVersion(
                path,
                holder(identity, client_id),
                chunk_id,
                **stamp(identity, self._clock.seconds(), request_id),
                inode=inode,
            )
        )
        version = int(chunk.version)
        # The new version needs a new write token: the old one names the old version.
        return {"version": version, "token": self._tokens.write(identity, chunk_id, version)}

    def _check_replicas(self, stat: ns.Stat, chunk_id: int, locations: Sequence[Location]) -> None:
        needed = self._min_replicas(stat.replication)
        if stat.kind == ns.FILE and len(set(locations)) < needed:
            raise InvalidArgument(
                f"{stat.path}: chunk {chunk_id} is on {len(set(locations))} dataservers, "
                f"fewer than min_replication ({needed})"
            )

    async def commit_chunk(
        self,
        identity: Identity,
        path: str,
        client_id: str,
        chunk_id: int,
        version: int,
        length: int,
        locations: Sequence[Location],
        request_id: str,
        inode: int = ops.BY_PATH,
    ) -> None:
        stat = self._writing(path, inode)
        self._check_replicas(stat, chunk_id, locations)
        await self._commit(
            ops.CommitChunk(
                stat.path,
                holder(identity, client_id),
                chunk_id,
                version,
                length,
                **stamp(identity, self._clock.seconds(), request_id),
                inode=inode,
            )
        )
        self._replicas.written(chunk_id, version, locations)

    async def close(
        self,
        identity: Identity,
        path: str,
        client_id: str,
        length: int,
        request_id: str,
        chunk_id: int | None = None,
        version: int = 0,
        chunk_length: int = 0,
        locations: Sequence[Location] | None = None,
        inode: int = ops.BY_PATH,
    ) -> None:
        """Complete the file at ``length``; with ``chunk_id``, commit its last chunk
        first in the same entry (``chunk_length`` 0: drop it, it holds nothing)."""
        stat = self._writing(path, inode)
        common = stamp(identity, self._clock.seconds(), request_id)
        lease_holder = holder(identity, client_id)
        if chunk_id is None:
            await self._commit(ops.Close(stat.path, lease_holder, length, **common, inode=inode))
            return
        locations = locations or ()
        if chunk_length:
            self._check_replicas(stat, chunk_id, locations)
        await self._commit(
            ops.CommitClose(
                stat.path,
                lease_holder,
                chunk_id,
                version,
                chunk_length,
                length,
                **common,
                inode=inode,
            )
        )
        if chunk_length:
            self._replicas.written(chunk_id, version, locations)

    async def renew_lease(
        self, identity: Identity, path: str, client_id: str, inode: int = ops.BY_PATH
    ) -> None:
        now = self._clock.seconds()
        # Writers keep their leases through safe mode, so they can carry on after.
        self._safe_mode.check_serving()
        path = self._writing(path, inode).path
        await commit(
            self._log,
            ops.RenewLease(
                path,
                holder(identity, client_id),
                now + self.lease_period,
                **stamp(identity, now),
                inode=inode,
            ),
        )

    async def recover_expired_leases(self) -> None:
        """Close files whose writer stopped renewing, at their committed length."""
        if not self._safe_mode.deciding:
            return
        now = self._clock.seconds()
        for expired in self._log.read(lambda namespace: namespace.expired_leases(now)):
            # By inode: a rename before this entry is applied does not lose the file.
            result = await self._log.submit(
                ops.RecoverLease(expired.path, caller=METASERVER, now=now, inode=expired.inode)
            )
            self.log.info(
                "lease on {path} expired: {outcome}",
                path=result.value.path if result.ok else expired.path,
                outcome="closed at its committed length" if result.ok else result.message,
            )

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
        page: list[records.ChunkRecord] = []
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
            addresses.sort(key=lambda address: address.host != client_host)
            token = self._tokens.read(identity, chunk.chunk_id, chunk.version)
            record = records.ChunkRecord(
                chunk.chunk_id, chunk.version, chunk.length, tuple(addresses), token
            )
            page.append(record)
            size += records.chunk_record_size(record)
            index += 1
        return {"length": stat.length, "chunks": page, "more": index < len(chunks)}

    def renew_chunk_tokens(
        self,
        identity: Identity,
        path: str,
        operation: str,
        chunk_ids: list[int],
        client_id: str,
        inode: int = ops.BY_PATH,
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
        # Writing: the lease is the permission (a file may be write-only to its writer),
        # and a writer that names the file's inode follows it through renames.
        if operation == WRITE and inode != ops.BY_PATH:
            stat = self._writing(path, inode)
            path = stat.path
        else:
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
