"""Where a new chunk's replicas go: distinct live dataservers, least used first.

Pure: the registry's records and a seeded ``random.Random`` come in, names go out.
Space reports arrive with heartbeats, so chunks handed out since a dataserver's last
report are counted against it; otherwise a burst of new chunks would all land on
whichever dataservers looked emptiest a moment ago.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs

from dfs.metaserver.registry import DataserverRecord, DataserverState


@attrs.define
class Placement:
    rng: random.Random = attrs.field(factory=random.Random)
    #: Bytes promised to each dataserver since its last space report.
    _pending: dict[str, int] = attrs.field(factory=dict)

    def reported(self, name: str) -> None:
        """A fresh space report from ``name`` already counts what it received."""
        self._pending.pop(name, None)

    def choose(
        self, records: Sequence[DataserverRecord], count: int, chunk_size: int
    ) -> list[DataserverRecord]:
        """Up to ``count`` distinct live dataservers with room for a chunk."""
        eligible = [
            record
            for record in records
            if record.state is DataserverState.ALIVE
            and record.space.free - self._pending.get(record.name, 0) >= chunk_size
        ]
        # Shuffle first so that dataservers equally used are chosen evenly.
        self.rng.shuffle(eligible)
        eligible.sort(key=self._use)
        chosen = eligible[:count]
        for record in chosen:
            self._pending[record.name] = self._pending.get(record.name, 0) + chunk_size
        return chosen

    def _use(self, record: DataserverRecord) -> float:
        capacity = max(1, record.space.capacity)
        return (record.space.used + self._pending.get(record.name, 0)) / capacity
