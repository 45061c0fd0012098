"""Which dataservers exist, where they are, how full they are, and whether they live.

Pure bookkeeping: time is passed in by the caller, so tests drive it directly.
Locations and liveness are soft state, rebuilt from registrations and heartbeats
after a metaserver restart, never stored.
"""

from __future__ import annotations

import enum

import attrs

from dfs.protocol.records import Location


class DataserverState(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"


@attrs.frozen
class SpaceReport:
    capacity: int
    free: int
    used: int
    chunks: int


@attrs.define
class DataserverRecord:
    name: str
    #: where it serves clients and peers, as it registered
    address: Location
    space: SpaceReport
    registered_at: float
    last_heartbeat: float
    state: DataserverState = DataserverState.ALIVE


@attrs.define
class DataserverRegistry:
    """Registered dataservers, keyed by the name in their certificate."""

    dead_after: float
    _records: dict[str, DataserverRecord] = attrs.field(factory=dict)

    def register(self, name: str, address: Location, space: SpaceReport, now: float) -> bool:
        """Record a (re-)registration; True when the dataserver is new or was dead."""
        previous = self._records.get(name)
        self._records[name] = DataserverRecord(
            name=name, address=address, space=space, registered_at=now, last_heartbeat=now
        )
        return previous is None or previous.state is DataserverState.DEAD

    def heartbeat(self, name: str, space: SpaceReport, now: float) -> bool:
        """Record a heartbeat; False when the dataserver must register first
        (unknown, or already declared dead: its chunks may have been re-replicated)."""
        record = self._records.get(name)
        if record is None or record.state is DataserverState.DEAD:
            return False
        record.space = space
        record.last_heartbeat = now
        return True

    def expire(self, now: float) -> list[DataserverRecord]:
        """Mark dataservers silent for longer than ``dead_after`` as dead; return them."""
        newly_dead = []
        for record in self._records.values():
            if (
                record.state is DataserverState.ALIVE
                and now - record.last_heartbeat > self.dead_after
            ):
                record.state = DataserverState.DEAD
                newly_dead.append(record)
        return newly_dead

    def get(self, name: str) -> DataserverRecord | None:
        return self._records.get(name)

    def records(self) -> list[DataserverRecord]:
        return sorted(self._records.values(), key=lambda record: record.name)

    def alive(self) -> list[DataserverRecord]:
        return [r for r in self.records() if r.state is DataserverState.ALIVE]
