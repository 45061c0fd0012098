"""Moving replicas from the fullest dataservers to the emptiest.

Pure decisions: given each dataserver's use and the replicas it holds, pick moves
(copy to a less used dataserver, then remove the original) until every dataserver
taking replicas is within ``threshold`` percentage points of the mean use. A move
never lowers a chunk below its factor: the original goes only once the copy has
landed, and only chunks already whole are moved.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping

import attrs

from dfs.metaserver.replication import BALANCE, Assessment, Copy, ServerView


def mean_use(servers: Iterable[ServerView]) -> float:
    views = list(servers)
    capacity = sum(view.capacity for view in views)
    return sum(view.used for view in views) / capacity if capacity else 0.0


def spread(servers: Iterable[ServerView]) -> float:
    """The largest distance of a dataserver's use from the mean, in percent."""
    views = list(servers)
    if not views:
        return 0.0
    mean = mean_use(views)
    return 100 * max(abs(view.use - mean) for view in views)


@attrs.define
class Balancer:
    threshold: float
    continuous: bool = False
    running: bool = False
    #: at most this many moves at a time per dataserver, sending or receiving
    moves_per_server: int = 1
    moved_chunks: int = 0
    moved_bytes: int = 0
    rng: random.Random = attrs.field(factory=random.Random)

    def start(self, threshold: float | None = None) -> None:
        if threshold:
            self.threshold = threshold
        self.running = True

    def stop(self) -> None:
        self.running = False

    def moved(self, length: int) -> None:
        self.moved_chunks += 1
        self.moved_bytes += length

    def plan(
        self,
        servers: Mapping[str, ServerView],
        held: Callable[[str], Iterable[Assessment]],
        moving: Mapping[str, int],
        copying: Mapping[int, frozenset[str]],
        pending: Mapping[str, int],
    ) -> list[Copy]:
        """Moves to start now.

        ``held(name)``: the assessed chunks a dataserver holds; ``moving``: balancing
        moves each dataserver takes part in now; ``copying``: chunk id -> targets of
        copies in flight; ``pending``: bytes each dataserver will gain (positive) or
        lose (negative) when the moves in flight finish.
        """
        views = {
            name: attrs.evolve(view, used=max(0, view.used + pending.get(name, 0)))
            for name, view in servers.items()
            if view.accepts and view.capacity > 0
        }
        if len(views) < 2:
            return []
        mean = mean_use(views.values())
        margin = self.threshold / 100
        above = sorted((v for v in views.values() if v.use > mean + margin), key=lambda v: -v.use)
        below = sorted((v for v in views.values() if v.use < mean - margin), key=lambda v: v.use)
        # Only one side out of bounds: the other side is everything past the mean.
        if above and not below:
            below = sorted((v for v in views.values() if v.use < mean), key=lambda v: v.use)
        elif below and not above:
            above = sorted((v for v in views.values() if v.use > mean), key=lambda v: -v.use)
        load = dict(moving)
        moves: list[Copy] = []
        targets = [v for v in below if load.get(v.name, 0) < self.moves_per_server]
        for source in above:
            if load.get(source.name, 0) >= self.moves_per_server:
                continue
            for target in list(targets):
                copy = self._move(source, target, held(source.name), copying)
                if copy is None:
                    continue
                moves.append(copy)
                for name in (source.name, target.name):
                    load[name] = load.get(name, 0) + 1
                if load[target.name] >= self.moves_per_server:
                    targets.remove(target)
                break
            if not targets:
                break
        return moves

    def _move(
        self,
        source: ServerView,
        target: ServerView,
        chunks: Iterable[Assessment],
        copying: Mapping[int, frozenset[str]],
    ) -> Copy | None:
        candidates = [
            a
            for a in chunks
            if not a.lacking
            and a.target.chunk_id not in copying
            and target.name not in a.live
            and target.free >= a.target.length
        ]
        if not candidates:
            return None
        # The largest chunks move the most bytes per move; ties at random.
        self.rng.shuffle(candidates)
        chosen = max(candidates, key=lambda a: a.target.length)
        return Copy(
            chunk_id=chosen.target.chunk_id,
            version=chosen.target.version,
            length=chosen.target.length,
            sources=(source.name,),
            target=target.name,
            purpose=BALANCE,
            then_remove=source.name,
        )
