"""What the leader does to keep every chunk at its replication factor.

Pure decisions over plain data: which chunks lack replicas and which copies to
start first, which replicas are surplus, which dataserver a drain has finished
with, and what fsck says of a chunk. The replication monitor
(:mod:`dfs.metaserver.healing`) feeds it the namespace's targets, the replica
locations and the dataservers' state, and carries out what it decides.

Words used here:

- *live* replicas: on a live dataserver, at the chunk's current version;
- *counted* replicas: live ones not on a dataserver being drained (decommissioned):
  a drained dataserver's replicas serve reads and are copy sources, but the chunk
  needs its full count without them;
- *endangered*: fewer live replicas; a chunk with one left goes before a chunk
  with two, whatever their files' factors.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from dfs.metaserver.namespace import ChunkTarget
from dfs.metaserver.registry import DataserverRecord, DataserverState

MISSING: Final = "missing"
CORRUPT: Final = "corrupt"
UNDER: Final = "under-replicated"
OVER: Final = "over-replicated"
STALE: Final = "stale"

#: Copy purposes, as logs and counters name them.
REPAIR: Final = "repair"
DRAIN: Final = "drain"
BALANCE: Final = "balance"


@attrs.frozen
class ServerView:
    """A dataserver as the planner sees it."""

    name: str
    alive: bool
    draining: bool
    capacity: int
    used: int
    free: int

    @property
    def use(self) -> float:
        return self.used / max(1, self.capacity)

    @property
    def accepts(self) -> bool:
        """May receive new replicas."""
        return self.alive and not self.draining


def server_views(
    records: Iterable[DataserverRecord], draining: frozenset[str]
) -> dict[str, ServerView]:
    """The registry's dataservers as the planner sees them; ``draining`` names those
    being decommissioned."""
    return {
        record.name: ServerView(
            name=record.name,
            alive=record.state is DataserverState.ALIVE,
            draining=record.name in draining,
            capacity=record.space.capacity,
            used=record.space.used,
            free=record.space.free,
        )
        for record in records
    }


@attrs.frozen
class Copy:
    """Copy a replica to ``target`` from one of ``sources`` (best first); for a
    balancing move, ``then_remove`` is the replica to delete once it has landed."""

    chunk_id: int
    version: int
    length: int
    sources: tuple[str, ...]
    target: str
    purpose: str
    then_remove: str | None = None


@attrs.frozen
class Removal:
    server: str
    chunk_id: int
    version: int
    reason: str


@attrs.frozen
class Assessment:
    """One chunk's replicas against its target."""

    target: ChunkTarget
    live: tuple[str, ...]
    counted: tuple[str, ...]
    stale: tuple[tuple[str, int], ...]  # (server, version) of older replicas

    @property
    def wanted(self) -> int:
        return self.target.replication

    @property
    def lacking(self) -> int:
        return max(0, self.wanted - len(self.counted))

    @property
    def surplus(self) -> int:
        return max(0, len(self.counted) - self.wanted)


def assess(
    target: ChunkTarget, replicas: Mapping[str, int], servers: Mapping[str, ServerView]
) -> Assessment:
    live = []
    counted = []
    stale = []
    for server, version in sorted(replicas.items()):
        view = servers.get(server)
        if view is None or not view.alive:
            continue
        if version == target.version:
            live.append(server)
            if not view.draining:
                counted.append(server)
        elif version < target.version:
            stale.append((server, version))
    return Assessment(target, tuple(live), tuple(counted), tuple(stale))


def problem(assessment: Assessment, corrupt: bool) -> str | None:
    """What fsck reports for a committed chunk, worst first; None when healthy."""
    if not assessment.live:
        return MISSING
    if corrupt and assessment.lacking:
        return CORRUPT
    if assessment.lacking:
        return UNDER
    if assessment.surplus:
        return OVER
    if assessment.stale:
        return STALE
    return None


@attrs.define
class Plan:
    copies: list[Copy] = attrs.field(factory=list)
    removals: list[Removal] = attrs.field(factory=list)
    #: chunks still lacking replicas after this plan's copies (no source or target
    #: free, or no dataserver left to hold one more replica)
    waiting: int = 0
    #: name of each draining dataserver -> chunks it holds that lack replicas without it
    drain_remaining: dict[str, int] = attrs.field(factory=dict)


@attrs.define
class ReplicationPlanner:
    """Decides copies and removals, ``max_copies`` at most per dataserver at a time
    (counting those it sends and those it receives)."""

    max_copies: int
    rng: random.Random = attrs.field(factory=random.Random)

    def plan(
        self,
        assessments: Iterable[Assessment],
        servers: Mapping[str, ServerView],
        busy: Mapping[str, int],
        copying: Mapping[int, frozenset[str]],
        avoid: Mapping[int, frozenset[str]] | None = None,
        incoming: Mapping[str, int] | None = None,
    ) -> Plan:
        """``busy``: copies each dataserver takes part in now; ``copying``: chunk id
        -> targets of the copies of it in flight (they count as replicas to come);
        ``avoid``: chunk id -> dataservers not to copy it to (a copy there failed
        a moment ago); ``incoming``: bytes each dataserver receives in copies in
        flight (not in its last free space report yet)."""
        avoid = avoid or {}
        promised = dict(incoming or {})
        plan = Plan(drain_remaining={s.name: 0 for s in servers.values() if s.draining})
        load = dict(busy)
        needy: list[Assessment] = []
        for assessment in assessments:
            chunk_id = assessment.target.chunk_id
            coming = copying.get(chunk_id, frozenset())
            for server in assessment.live:
                if server in plan.drain_remaining and assessment.lacking:
                    plan.drain_remaining[server] += 1
            plan.removals.extend(
                Removal(server, chunk_id, version, "stale") for server, version in assessment.stale
            )
            if assessment.lacking > len(coming):
                if assessment.live:
                    needy.append(assessment)
                continue
            if assessment.surplus and not coming:
                plan.removals.extend(self._surplus(assessment, servers))

        # Most endangered first: one live replica before two, then the largest
        # share of the factor lacking.
        needy.sort(key=lambda a: (len(a.live), -a.lacking / a.wanted, a.target.chunk_id))
        accepting = [view for view in servers.values() if view.accepts]
        for assessment in needy:
            coming = copying.get(assessment.target.chunk_id, frozenset())
            started = 0
            needed = assessment.lacking - len(coming)
            for _ in range(needed):
                copy = self._copy(
                    assessment,
                    accepting,
                    load,
                    coming | avoid.get(assessment.target.chunk_id, frozenset()),
                    servers,
                    promised,
                )
                if copy is None:
                    break
                coming = coming | {copy.target}
                plan.copies.append(copy)
                started += 1
            if started < needed:
                plan.waiting += 1
        return plan

    def _copy(
        self,
        assessment: Assessment,
        accepting: list[ServerView],
        load: dict[str, int],
        coming: frozenset[str],
        servers: Mapping[str, ServerView],
        promised: dict[str, int],
    ) -> Copy | None:
        target_chunk = assessment.target
        sources = [s for s in assessment.live if load.get(s, 0) < self.max_copies]
        if not sources:
            return None
        holders = set(assessment.live) | {server for server, _ in assessment.stale}
        candidates = [
            view
            for view in accepting
            if view.name not in holders
            and view.name not in coming
            and view.free - promised.get(view.name, 0) >= target_chunk.length
            and load.get(view.name, 0) < self.max_copies
        ]
        if not candidates:
            return None
        self.rng.shuffle(candidates)
        target = min(candidates, key=lambda view: view.use)
        # Draining dataservers first (they take no writes), then the least busy.
        self.rng.shuffle(sources)
        sources.sort(key=lambda s: (not servers[s].draining, load.get(s, 0)))
        load[target.name] = load.get(target.name, 0) + 1
        load[sources[0]] = load.get(sources[0], 0) + 1
        promised[target.name] = promised.get(target.name, 0) + target_chunk.length
        # Whole but for the replicas on draining dataservers: a drain, not a repair.
        purpose = DRAIN if len(assessment.live) >= assessment.wanted else REPAIR
        return Copy(
            chunk_id=target_chunk.chunk_id,
            version=target_chunk.version,
            length=target_chunk.length,
            sources=tuple(sources),
            target=target.name,
            purpose=purpose,
        )

    def _surplus(self, assessment: Assessment, servers: Mapping[str, ServerView]) -> list[Removal]:
        # Remove from the fullest dataservers: that also evens out the disks.
        fullest = sorted(assessment.counted, key=lambda s: (-servers[s].use, s))
        return [
            Removal(server, assessment.target.chunk_id, assessment.target.version, "surplus")
            for server in fullest[: assessment.surplus]
        ]
