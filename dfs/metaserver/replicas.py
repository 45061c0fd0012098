"""Where the replicas are: dataservers' reports in, deletion orders out.

Soft state, never replicated (:class:`~dfs.metaserver.locations.ChunkLocations`):
after a restart, or on a new leader, it fills again from the dataservers' full chunk
reports and their ChunkReceived messages. A replica older than the chunk's current
version is stale and is scheduled for deletion; the orders go out with the answer to
its dataserver's next heartbeat.

The chunks a mutation freed are not soft state: the namespace keeps them
(``Namespace.freed_chunks``) until no dataserver holds one, so that a leader elected
after the mutation still has their replicas deleted. Each pass of the leader orders
every holder of one to delete it (:meth:`ReplicaTracker.collect_freed`) and has the
log forget those that are gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dfs.metaserver import namespace as ns
from dfs.metaserver import operations as ops
from dfs.metaserver.locations import ChunkLocations
from dfs.metaserver.log import METASERVER, ReplicatedLog
from dfs.metaserver.registry import DataserverRegistry
from dfs.metaserver.replication import assess, server_views
from dfs.protocol.errors import PermissionDenied
from dfs.protocol.records import Location
from dfs.security.identity import Identity


class ReplicaTracker:
    log = Logger()

    def __init__(self, log: ReplicatedLog, registry: DataserverRegistry) -> None:
        self._log = log
        self._registry = registry
        self._locations = ChunkLocations()
        #: dataserver -> (chunk id, version) of a full report still arriving in pages
        self._reports: dict[str, list[tuple[int, int]]] = {}
        self._settled = False
        #: a ForgetFreedChunks entry is on its way: one at a time
        self._forgetting = False

    def _settle(self) -> None:
        # Reports that came in while the namespace was loading could not be told
        # stale from current then: sort them once it is loaded.
        if self._settled or not self._log.ready:
            return
        self._settled = True
        for chunk_id, replicas in self._locations.items():
            for server, version in replicas.items():
                self._place(server, chunk_id, version)

    def _place(self, server: str, chunk_id: int, version: int) -> None:
        current = (
            self._log.read(lambda namespace: namespace.chunk_version(chunk_id))
            if self._settled
            else None
        )
        if current is not None and version < current:
            # Stale: a newer version was written without this replica.
            self._locations.schedule_deletion(server, chunk_id, version)
            self.log.info(
                "stale replica of chunk {chunk_id} (version {version} < {current}) "
                "on {server} will be deleted",
                chunk_id=chunk_id,
                version=version,
                current=current,
                server=server,
            )
        else:
            # Unknown chunks (orphans) are kept on record for now: a file being
            # written may not have committed them yet.
            self._locations.add(server, chunk_id, version)

    # -- reports from dataservers --------------------------------------------------------

    @staticmethod
    def _check_reporter(identity: Identity, name: str) -> None:
        if name != identity.name:
            raise PermissionDenied(f"{identity} cannot report for dataserver {name!r}")

    def report_chunks(
        self, identity: Identity, name: str, chunks: Iterable[dict[str, int]], last: bool
    ) -> None:
        """A page of ``name``'s full report; the last page replaces what it held."""
        self._check_reporter(identity, name)
        self._settle()
        pending = self._reports.setdefault(name, [])
        pending.extend((chunk["chunk_id"], chunk["version"]) for chunk in chunks)
        if last:
            replicas = self._reports.pop(name)
            self._locations.forget_server(name)
            for chunk_id, version in replicas:
                self._place(name, chunk_id, version)
            self.log.info(
                "dataserver {name} reported {count} replicas", name=name, count=len(replicas)
            )

    def chunk_received(self, identity: Identity, name: str, chunk_id: int, version: int) -> None:
        self._check_reporter(identity, name)
        self._settle()
        self._place(name, chunk_id, version)

    def written(self, chunk_id: int, version: int, addresses: Iterable[Location]) -> None:
        """A writer committed ``chunk_id`` on the dataservers at ``addresses``. They
        report it too; recording it now lets a reader find it even if those reports
        are a moment late."""
        by_address = {record.address: record.name for record in self._registry.records()}
        for address in addresses:
            name = by_address.get(address)
            if name is not None:
                self._locations.add(name, chunk_id, version)

    def copied(self, server: str, chunk_id: int, version: int) -> None:
        """A repair copy of ``chunk_id`` landed on ``server``."""
        self._locations.add(server, chunk_id, version)

    def dataserver_dead(self, name: str) -> None:
        self._locations.forget_server(name)

    # -- deletions ---------------------------------------------------------------------

    def drop(self, freed: Iterable[ns.ChunkRef]) -> None:
        """Chunks no file holds any more: every replica is to be deleted (each
        dataserver deletes the version it holds, which may be older)."""
        for chunk in freed:
            for server, held in self._locations.replicas(chunk.chunk_id).items():
                self._locations.schedule_deletion(server, chunk.chunk_id, held)

    def schedule_deletion(self, server: str, chunk_id: int, version: int) -> None:
        self._locations.schedule_deletion(server, chunk_id, version)

    def remove(self, server: str, chunk_id: int) -> None:
        """``server`` no longer holds ``chunk_id`` (quarantined, or not found there)."""
        self._locations.remove(server, chunk_id)

    def deletions_for(self, name: str) -> list[dict[str, int]]:
        """The deletion orders for ``name``, taken: they go out once."""
        self._settle()
        return [
            {"chunk_id": chunk_id, "version": version}
            for chunk_id, version in self._locations.take_deletions(name)
        ]

    def pending_deletions(self) -> dict[int, list[tuple[str, int]]]:
        return self._locations.pending_deletions()

    def sweep_freed(self) -> list[int]:
        """Order every replica of a freed chunk deleted; returns the freed chunks no
        dataserver holds any more and no order waits for, which may be forgotten.

        For the deciding leader only, once every live dataserver has reported to it:
        a leader elected after the mutation has the freed chunks from the namespace,
        and their replicas from the reports."""
        freed = self._log.read(lambda namespace: namespace.freed_chunks())
        if not freed:
            return []
        self._settle()
        waiting = self._locations.pending_deletions()
        gone = []
        for chunk_id in freed:
            held = self._locations.replicas(chunk_id)
            # Each dataserver deletes the version it holds, which may be older.
            for server, version in held.items():
                self._locations.schedule_deletion(server, chunk_id, version)
            if not held and chunk_id not in waiting:
                gone.append(chunk_id)
        return gone

    def collect_freed(self, now: float) -> Deferred[None] | None:
        """One pass over the freed chunks (:meth:`sweep_freed`), and a
        ForgetFreedChunks entry for up to ``MAX_FORGET`` of those gone, unless one is
        on its way already. Returns that entry's submission (None if none was made)."""
        gone = self.sweep_freed()
        if not gone or self._forgetting:
            return None
        batch = tuple(sorted(gone)[: ops.MAX_FORGET])
        self._forgetting = True
        return Deferred.fromCoroutine(self._forget(batch, now))

    async def _forget(self, chunk_ids: tuple[int, ...], now: float) -> None:
        try:
            result = await self._log.submit(
                ops.ForgetFreedChunks(chunk_ids, caller=METASERVER, now=now)
            )
        except Exception as error:
            # Lost leadership, most likely: the next leader forgets them.
            self.log.info(
                "freed chunks not forgotten now ({error}); a later pass tries again",
                error=error,
            )
            return
        finally:
            self._forgetting = False
        if isinstance(result, ops.Err):
            self.log.error(
                "forgetting freed chunks refused: {error}: {message}",
                error=result.error,
                message=result.message,
            )
        else:
            self.log.info(
                "{count} freed chunks have no replica left: forgotten", count=result.value
            )

    # -- looking -----------------------------------------------------------------------

    def items(self) -> list[tuple[int, dict[str, int]]]:
        """A copy of every chunk's replicas: (chunk id, {dataserver: version})."""
        self._settle()
        return self._locations.items()

    def replicas(self, chunk_id: int) -> dict[str, int]:
        return self._locations.replicas(chunk_id)

    def holders(self, chunk_id: int, version: int) -> list[str]:
        return self._locations.holders(chunk_id, version)

    def census(self) -> tuple[int, int]:
        """(committed chunks with a live replica reported, committed chunks)."""
        draining = self._log.read(lambda namespace: namespace.decommissioned)
        servers = server_views(self._registry.records(), draining)
        replicas = self.items()

        def targets(namespace: Any) -> tuple[dict[int, ns.ChunkTarget | None], int]:
            found = {chunk_id: namespace.chunk_target(chunk_id) for chunk_id, _ in replicas}
            return found, namespace.committed_chunk_count()

        found, total = self._log.read(targets)
        reported = 0
        for chunk_id, held in replicas:
            target = found[chunk_id]
            if target is not None and target.committed and assess(target, held, servers).live:
                reported += 1
        return reported, total
