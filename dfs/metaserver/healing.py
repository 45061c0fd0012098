"""The leader's replication monitor: safe mode, repairs, removals, drains, balance.

Every ``replication_interval`` it looks at every replica the dataservers reported
(soft state in :class:`~dfs.metaserver.locations.ChunkLocations`) against the
namespace, and on the leader, once out of safe mode:

- starts copies of the chunks lacking replicas, most endangered first, at most
  ``rereplication_per_dataserver`` per dataserver at a time; a copy is an order
  (``ReplicateChunk``) to the target dataserver, which pulls the replica from a
  source dataserver: data never passes through a metaserver;
- removes surplus and stale replicas, every replica of a chunk a mutation freed (the
  namespace keeps those until none is left, so a new leader removes them too) and,
  after ``orphan_grace``, other replicas no file refers to (the orders go out with
  the dataservers' heartbeat answers);
- drains decommissioned dataservers, and runs the balancer when asked to.

Nothing is decided while :class:`~dfs.metaserver.safemode.SafeMode` holds back; each
pass hands it the count of chunks with a replica reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dfs.config import ReplicationConfig
from dfs.metaserver import namespace as ns
from dfs.metaserver.balancer import Balancer, spread
from dfs.metaserver.log import ReplicatedLog
from dfs.metaserver.registry import DataserverRegistry, DataserverState
from dfs.metaserver.replicas import ReplicaTracker
from dfs.metaserver.replication import (
    BALANCE,
    CORRUPT,
    MISSING,
    OVER,
    STALE,
    UNDER,
    Assessment,
    Copy,
    ReplicationPlanner,
    ServerView,
    assess,
    problem,
    server_views,
)
from dfs.metaserver.safemode import SafeMode
from dfs.protocol.commands import ReplicateChunk, VerifyChunk
from dfs.protocol.errors import ChunkNotFound, PermissionDenied, StaleChunk
from dfs.protocol.records import Location
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity

if TYPE_CHECKING:
    from dfs.metaserver.allocation import ChunkTokens

#: Seconds before a copy that failed is tried again towards the same dataserver.
COPY_RETRY_PAUSE = 30.0

#: Bytes per second a repair copy is assumed to reach at worst, for its timeout.
SLOWEST_COPY = 5 * 1024 * 1024


class ReplicationMonitor:
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        log: ReplicatedLog,
        safe_mode: SafeMode,
        registry: DataserverRegistry,
        replicas: ReplicaTracker,
        config: ReplicationConfig,
        session_for: Callable[[str], PeerSession | None],
        started: float | None = None,
        *,
        tokens: ChunkTokens | None = None,
    ) -> None:
        self._reactor = reactor
        #: mints the copy token each ReplicateChunk order carries (None: orders go
        #: without one, and no dataserver serves them)
        self._tokens = tokens
        self._log = log
        self._safe_mode = safe_mode
        self._registry = registry
        self._replicas = replicas
        self.config = config
        self._session_for = session_for
        #: reactor time this metaserver started; decisions wait for every live
        #: dataserver to have registered (dead_after), and for safe mode to end
        self.started = reactor.seconds() if started is None else started
        self.planner = ReplicationPlanner(max_copies=config.rereplication_per_dataserver)
        self.balancer = Balancer(
            threshold=config.balancer_threshold,
            continuous=config.balancer_continuous,
            running=config.balancer_continuous,
        )
        #: (chunk id, target) -> copy in flight
        self._copies: dict[tuple[int, str], Copy] = {}
        #: dataserver -> copies it takes part in now (sending or receiving)
        self._busy: dict[str, int] = {}
        #: chunk id -> dataservers whose replica was found corrupt, until repaired
        self.corrupt: dict[int, set[str]] = {}
        #: (dataserver, chunk id) -> when a replica no file refers to was first seen
        self._orphans: dict[tuple[str, int], float] = {}
        self._verifying: set[tuple[str, int]] = set()
        #: (chunk id, target) -> until when not to try that copy again (it failed)
        self._cooling: dict[tuple[int, str], float] = {}
        #: name of each draining dataserver -> chunks still lacking without it
        #: (absent until the first plan after decommissioning)
        self.drain_remaining: dict[str, int] = {}
        self.reported_chunks = 0
        self.total_chunks = 0
        self.under_replicated = 0
        self.waiting = 0
        self.copies_done = 0
        self.copies_failed = 0
        self.copied_bytes = 0
        self.removals = 0
        self.last_pass_seconds = 0.0
        self._early_pass: Any = None

    # -- looking -------------------------------------------------------------------

    def servers(self) -> dict[str, ServerView]:
        draining = self._log.read(lambda namespace: namespace.decommissioned)
        return server_views(self._registry.records(), draining)

    def _targets(self, chunk_ids: Iterable[int]) -> dict[int, ns.ChunkTarget | None]:
        ids = list(chunk_ids)
        return self._log.read(lambda namespace: {c: namespace.chunk_target(c) for c in ids})

    def assess_all(
        self, servers: dict[str, ServerView], now: float
    ) -> tuple[list[Assessment], list[tuple[str, int, int]]]:
        """Every committed chunk with a replica reported, assessed; and the orphan
        replicas (dataserver, chunk id, version) past their grace period."""
        replicas = self._replicas.items()
        targets = self._targets(chunk_id for chunk_id, _ in replicas)
        assessments = []
        expired = []
        seen_orphans = set()
        reported = 0
        for chunk_id, held in replicas:
            target = targets[chunk_id]
            if target is None:
                for server, version in held.items():
                    key = (server, chunk_id)
                    seen_orphans.add(key)
                    first = self._orphans.setdefault(key, now)
                    if now - first >= self.config.orphan_grace:
                        expired.append((server, chunk_id, version))
                continue
            if not target.committed:
                continue
            assessment = assess(target, held, servers)
            if assessment.live:
                reported += 1
            assessments.append(assessment)
        for key in set(self._orphans) - seen_orphans:
            del self._orphans[key]
        self.reported_chunks = reported
        self.total_chunks = self._log.read(lambda namespace: namespace.committed_chunk_count())
        return assessments, expired

    # -- the pass ------------------------------------------------------------------

    def tick(self) -> None:
        """One pass; run every ``replication_interval`` on every metaserver (a
        follower keeps its safe mode and counts current for when it leads)."""
        if not self._log.ready:
            return
        began = time.perf_counter()
        now = self._reactor.seconds()
        servers = self.servers()
        assessments, expired = self.assess_all(servers, now)
        self._safe_mode.counted(self.reported_chunks, self.total_chunks, now)
        self.under_replicated = sum(1 for a in assessments if a.lacking) + (
            self.total_chunks - self.reported_chunks
        )
        by_id = {a.target.chunk_id: a for a in assessments}
        for chunk_id in [c for c in self.corrupt if not self._still_corrupt(c, by_id)]:
            del self.corrupt[chunk_id]
        if not self._safe_mode.deciding:
            return
        if now - self.started < self._registry.dead_after:
            # Until then a live dataserver may not have registered here yet: its
            # replicas would look lost and be copied for nothing.
            return
        copying = self._copying()
        incoming: dict[str, int] = {}
        for copy in self._copies.values():
            incoming[copy.target] = incoming.get(copy.target, 0) + copy.length
        plan = self.planner.plan(
            assessments, servers, self._busy, copying, self._avoid(now), incoming
        )
        self.drain_remaining = plan.drain_remaining
        self.waiting = plan.waiting
        # Freed chunks are replicated (a new leader has them too): their replicas go
        # at once, not after orphan_grace as other orphans do.
        self._replicas.collect_freed(now)
        for removal in plan.removals:
            self._remove(removal.server, removal.chunk_id, removal.version, removal.reason)
        for server, chunk_id, version in expired:
            self._remove(server, chunk_id, version, "orphan")
            self._orphans.pop((server, chunk_id), None)
        for copy in plan.copies:
            self._start(copy)
        self._balance(servers, assessments)
        self.last_pass_seconds = time.perf_counter() - began

    def _still_corrupt(self, chunk_id: int, by_id: dict[int, Assessment]) -> bool:
        # Corrupt until the chunk is whole again, or gone.
        assessment = by_id.get(chunk_id)
        if assessment is not None:
            return assessment.lacking > 0
        return self._targets([chunk_id])[chunk_id] is not None

    def _pass_soon(self) -> None:
        """A copy slot came free while chunks wait for one: use it now rather than at
        the next pass. Passes stay at most a fifth of the time, however short copies are."""
        if self._early_pass is not None and self._early_pass.active():
            return
        delay = max(0.05, 4 * self.last_pass_seconds)
        self._early_pass = self._reactor.callLater(delay, self.tick)

    def _avoid(self, now: float) -> dict[int, frozenset[str]]:
        avoid: dict[int, set[str]] = {}
        for key, until in list(self._cooling.items()):
            if until <= now:
                del self._cooling[key]
            else:
                avoid.setdefault(key[0], set()).add(key[1])
        return {chunk_id: frozenset(names) for chunk_id, names in avoid.items()}

    def _copying(self) -> dict[int, frozenset[str]]:
        copying: dict[int, set[str]] = {}
        for chunk_id, target in self._copies:
            copying.setdefault(chunk_id, set()).add(target)
        return {chunk_id: frozenset(targets) for chunk_id, targets in copying.items()}

    def _remove(self, server: str, chunk_id: int, version: int, reason: str) -> None:
        self._replicas.schedule_deletion(server, chunk_id, version)
        self.removals += 1
        self.log.info(
            "removing the {reason} replica of chunk {chunk_id} version {version} on {server}",
            reason=reason,
            chunk_id=chunk_id,
            version=version,
            server=server,
        )

    # -- copies ------------------------------------------------------------------

    @property
    def copies_in_flight(self) -> int:
        return len(self._copies)

    def _start(self, copy: Copy) -> None:
        key = (copy.chunk_id, copy.target)
        self._copies[key] = copy
        charged = (copy.target, copy.sources[0])
        for name in charged:
            self._busy[name] = self._busy.get(name, 0) + 1
        done = Deferred.fromCoroutine(self._copy(copy))

        def finished(_: object) -> None:
            self._copies.pop(key, None)
            for name in charged:
                self._busy[name] -= 1
                if not self._busy[name]:
                    del self._busy[name]
            if self.waiting or self.balancer.running:
                self._pass_soon()

        done.addBoth(finished)

    async def _copy(self, copy: Copy) -> None:
        session = self._session_for(copy.target)
        addresses = []
        for name in copy.sources:
            record = self._registry.get(name)
            if record is not None:
                addresses.append(record.address)
        if session is None or not addresses:
            self.copies_failed += 1
            self.log.warn(
                "cannot copy chunk {chunk_id} to {target}: no connection to it",
                chunk_id=copy.chunk_id,
                target=copy.target,
            )
            return
        rate = self.config.balancer_bandwidth if copy.purpose == BALANCE else 0
        timeout = 60 + copy.length / max(1, rate or SLOWEST_COPY)
        began = self._reactor.seconds()
        # The target presents this to its sources on every read of the copy, which
        # may run (throttled) longer than a client's token lasts: it lasts as long
        # as the order may.
        token = (
            self._tokens.copy(copy.target, copy.chunk_id, copy.version, lifetime=timeout)
            if self._tokens is not None
            else ""
        )
        call = session.callRemote(
            ReplicateChunk,
            chunk_id=copy.chunk_id,
            version=copy.version,
            length=copy.length,
            sources=addresses,
            rate=rate,
            token=token,
        )
        call.addTimeout(timeout, self._reactor)
        try:
            answer = await call
        except Exception as error:
            self.copies_failed += 1
            # Elsewhere first: that target may be full or failing.
            self._cooling[(copy.chunk_id, copy.target)] = self._reactor.seconds() + COPY_RETRY_PAUSE
            self.log.warn(
                "{purpose} copy of chunk {chunk_id} version {version} to {target} failed: {error}",
                purpose=copy.purpose,
                chunk_id=copy.chunk_id,
                version=copy.version,
                target=copy.target,
                error=f"{type(error).__name__}: {error}",
            )
            return
        self.copies_done += 1
        self.copied_bytes += copy.length
        self._replicas.copied(copy.target, copy.chunk_id, copy.version)
        self.log.info(
            "{purpose} copy of chunk {chunk_id} version {version} ({length} bytes) "
            "from {source} to {target} in {seconds:.2f}s",
            purpose=copy.purpose,
            chunk_id=copy.chunk_id,
            version=copy.version,
            length=copy.length,
            source=answer["source"],
            target=copy.target,
            seconds=self._reactor.seconds() - began,
        )
        if copy.then_remove is not None:
            self._finish_move(copy)

    def _finish_move(self, copy: Copy) -> None:
        assert copy.then_remove is not None
        target = self._targets([copy.chunk_id])[copy.chunk_id]
        if target is None or target.version != copy.version:
            return  # freed or rewritten meanwhile: the orphan and stale rules apply
        assessment = assess(target, self._replicas.replicas(copy.chunk_id), self.servers())
        if copy.then_remove in assessment.counted and len(assessment.counted) > target.replication:
            self._remove(copy.then_remove, copy.chunk_id, copy.version, "moved")
            self.balancer.moved(copy.length)

    # -- balance -------------------------------------------------------------------

    def _balance(self, servers: dict[str, ServerView], assessments: list[Assessment]) -> None:
        if not self.balancer.running:
            return
        moving: dict[str, int] = {}
        pending: dict[str, int] = {}
        for copy in self._copies.values():
            if copy.purpose == BALANCE and copy.then_remove is not None:
                for name in (copy.target, copy.then_remove):
                    moving[name] = moving.get(name, 0) + 1
                pending[copy.target] = pending.get(copy.target, 0) + copy.length
                pending[copy.then_remove] = pending.get(copy.then_remove, 0) - copy.length
        accepting = [view for view in servers.values() if view.accepts and view.capacity]
        if not moving and spread(accepting) <= self.balancer.threshold:
            if not self.balancer.continuous:
                self.balancer.stop()
                self.log.info(
                    "balancer done: every dataserver within {threshold}% of the mean use "
                    "({moved} chunks moved)",
                    threshold=self.balancer.threshold,
                    moved=self.balancer.moved_chunks,
                )
            return
        by_server: dict[str, list[Assessment]] = {}
        for assessment in assessments:
            for name in assessment.counted:
                by_server.setdefault(name, []).append(assessment)
        moves = self.balancer.plan(
            servers,
            lambda name: by_server.get(name, ()),
            moving,
            self._copying(),
            pending,
        )
        for move in moves:
            # Moves share the per-dataserver limit with repairs, which go first.
            if all(
                self._busy.get(name, 0) < self.planner.max_copies
                for name in (move.target, move.sources[0])
            ):
                self._start(move)

    def balancer_state(self) -> dict[str, Any]:
        servers = [view for view in self.servers().values() if view.accepts and view.capacity]
        current = spread(servers)
        return {
            "running": self.balancer.running,
            "continuous": self.balancer.continuous,
            "threshold": self.balancer.threshold,
            "bandwidth": self.config.balancer_bandwidth,
            "moves_in_flight": sum(1 for c in self._copies.values() if c.purpose == BALANCE),
            "moved_chunks": self.balancer.moved_chunks,
            "moved_bytes": self.balancer.moved_bytes,
            "spread": current,
            "balanced": current <= self.balancer.threshold,
        }

    # -- corrupt replicas -----------------------------------------------------------

    def report_corrupt(
        self, identity: Identity, name: str, chunk_id: int, version: int, reason: str
    ) -> None:
        """Dataserver ``name`` found its replica corrupt and quarantined it."""
        if name != identity.name:
            raise PermissionDenied(f"{identity} cannot report for dataserver {name!r}")
        self.replica_corrupt(name, chunk_id, version, reason)

    def bad_replica(self, chunk_id: int, version: int, address: Location, reason: str) -> None:
        """A reader found the replica at ``address`` bad."""
        for record in self._registry.records():
            if record.address == address:
                self.suspect(record.name, chunk_id, version, reason)

    def replica_corrupt(self, server: str, chunk_id: int, version: int, reason: str) -> None:
        """``server`` quarantined its replica: it is gone, and the chunk is repaired
        from a good one at the next pass."""
        self._replicas.remove(server, chunk_id)
        self.corrupt.setdefault(chunk_id, set()).add(server)
        self.log.warn(
            "replica of chunk {chunk_id} version {version} on {server} is corrupt "
            "and quarantined: {reason}",
            chunk_id=chunk_id,
            version=version,
            server=server,
            reason=reason,
        )

    def suspect(self, server: str, chunk_id: int, version: int, reason: str) -> None:
        """A reader reported a replica bad: have its dataserver check it rather than
        take a client's word (a network fault looks the same to a reader)."""
        key = (server, chunk_id)
        session = self._session_for(server)
        if key in self._verifying or session is None:
            return
        self._verifying.add(key)
        self.log.info(
            "checking the replica of chunk {chunk_id} on {server}: a reader reported {reason}",
            chunk_id=chunk_id,
            server=server,
            reason=reason,
        )
        call = session.callRemote(VerifyChunk, chunk_id=chunk_id, version=version)
        call.addTimeout(60 + 64 * 1024 * 1024 / SLOWEST_COPY, self._reactor)

        def checked(answer: dict[str, Any]) -> None:
            if not answer["intact"]:
                self.replica_corrupt(server, chunk_id, version, "failed its checksums")

        def failed(failure: Any) -> None:
            if failure.check(ChunkNotFound, StaleChunk):
                self._replicas.remove(server, chunk_id)
            self.log.info(
                "could not check chunk {chunk_id} on {server}: {error}",
                chunk_id=chunk_id,
                server=server,
                error=failure.getErrorMessage(),
            )

        call.addCallbacks(checked, failed)
        call.addBoth(lambda _: self._verifying.discard(key))

    # -- fsck ----------------------------------------------------------------------

    def fsck(self, tree: ns.Tree) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every problem under a tree (files in walk order, chunks in file order)
        and the summary counters of the Fsck answer."""
        servers = self.servers()
        stale = self._replicas.pending_deletions()
        problems: list[dict[str, Any]] = []
        counts = dict.fromkeys((MISSING, UNDER, OVER, CORRUPT, STALE), 0)
        chunks = open_chunks = replicas = size = 0
        for file in tree.files:
            size += file.length
            for index, chunk in enumerate(file.chunks):
                if chunk.length == 0:
                    open_chunks += 1
                    continue
                chunks += 1
                target = ns.ChunkTarget(
                    chunk.chunk_id, chunk.version, chunk.length, file.replication
                )
                assessment = assess(target, self._replicas.replicas(chunk.chunk_id), servers)
                replicas += len(assessment.counted)
                older = [v for _, v in stale.get(chunk.chunk_id, ()) if v < chunk.version]
                if older and not assessment.stale:
                    assessment = attrs.evolve(assessment, stale=tuple(("", v) for v in older))
                found = problem(assessment, chunk.chunk_id in self.corrupt)
                if found is None:
                    continue
                counts[found] += 1
                problems.append(
                    {
                        "path": file.path,
                        "index": index,
                        "chunk_id": chunk.chunk_id,
                        "version": chunk.version,
                        "problem": found,
                        "replicas": len(assessment.counted),
                        "wanted": file.replication,
                        "locations": list(assessment.counted),
                    }
                )
        records = self._registry.records()
        alive = [r for r in records if r.state is DataserverState.ALIVE]
        summary = {
            "healthy": not problems,
            "files": len(tree.files),
            "directories": tree.directories,
            "bytes": size,
            "chunks": chunks,
            "open_chunks": open_chunks,
            "missing": counts[MISSING],
            "under_replicated": counts[UNDER],
            "over_replicated": counts[OVER],
            "corrupt": counts[CORRUPT],
            "stale": counts[STALE],
            "replicas": replicas,
            "dataservers_alive": len(alive),
            "dataservers_dead": len(records) - len(alive),
            "decommissioning": sum(1 for view in servers.values() if view.draining),
            "copies_in_flight": self.copies_in_flight,
        }
        return problems, summary

    def status(self) -> dict[str, Any]:
        return {
            "safe_mode": self._safe_mode.state(),
            "reported_chunks": self.reported_chunks,
            "total_chunks": self.total_chunks,
            "under_replicated": self.under_replicated,
            "waiting": self.waiting,
            "copies_in_flight": self.copies_in_flight,
            "copies_done": self.copies_done,
            "copies_failed": self.copies_failed,
            "copied_bytes": self.copied_bytes,
            "removals": self.removals,
            "corrupt": sum(len(servers) for servers in self.corrupt.values()),
            "last_pass_seconds": self.last_pass_seconds,
            "balancer": self.balancer_state(),
        }
