"""Which dataserver holds which replica: soft state, rebuilt from reports.

Never replicated through Raft: after a restart (or on a new leader) it fills again
from the dataservers' full chunk reports and incremental ChunkReceived messages.
Also keeps, per dataserver, the replicas it should delete; they go out with the
answer to its next heartbeat.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.define
class ChunkLocations:
    #: chunk id -> {dataserver name: version held}
    _replicas: dict[int, dict[str, int]] = attrs.field(factory=dict)
    #: dataserver name -> chunk ids it holds
    _held: dict[str, set[int]] = attrs.field(factory=dict)
    #: dataserver name -> (chunk id, version) to delete there
    _deletions: dict[str, set[tuple[int, int]]] = attrs.field(factory=dict)

    def add(self, server: str, chunk_id: int, version: int) -> None:
        self._replicas.setdefault(chunk_id, {})[server] = version
        self._held.setdefault(server, set()).add(chunk_id)

    def remove(self, server: str, chunk_id: int) -> None:
        holders = self._replicas.get(chunk_id)
        if holders is not None:
            holders.pop(server, None)
            if not holders:
                del self._replicas[chunk_id]
        self._held.get(server, set()).discard(chunk_id)

    def replace_server(self, server: str, replicas: Iterable[tuple[int, int]]) -> None:
        """A full report: ``server`` holds exactly these (chunk id, version) pairs."""
        self.forget_server(server)
        for chunk_id, version in replicas:
            self.add(server, chunk_id, version)

    def forget_server(self, server: str) -> None:
        for chunk_id in self._held.pop(server, set()):
            holders = self._replicas.get(chunk_id)
            if holders is not None:
                holders.pop(server, None)
                if not holders:
                    del self._replicas[chunk_id]

    def holders(self, chunk_id: int, version: int) -> list[str]:
        """Dataservers holding ``chunk_id`` at exactly ``version``."""
        return sorted(
            server for server, held in self._replicas.get(chunk_id, {}).items() if held == version
        )

    def items(self) -> list[tuple[int, dict[str, int]]]:
        """A copy of every chunk's replicas: (chunk id, {dataserver: version})."""
        return [(chunk_id, dict(held)) for chunk_id, held in self._replicas.items()]

    def replicas(self, chunk_id: int) -> dict[str, int]:
        return dict(self._replicas.get(chunk_id, {}))

    def count(self, server: str) -> int:
        return len(self._held.get(server, ()))

    # -- deletions ---------------------------------------------------------------

    def schedule_deletion(self, server: str, chunk_id: int, version: int) -> None:
        self._deletions.setdefault(server, set()).add((chunk_id, version))
        self.remove(server, chunk_id)

    def pending_deletions(self) -> dict[int, list[tuple[str, int]]]:
        """chunk id -> (dataserver, version) of each replica waiting to be deleted."""
        pending: dict[int, list[tuple[str, int]]] = {}
        for server, replicas in self._deletions.items():
            for chunk_id, version in replicas:
                pending.setdefault(chunk_id, []).append((server, version))
        return pending

    def take_deletions(self, server: str, limit: int = 1000) -> list[tuple[int, int]]:
        pending = self._deletions.get(server)
        if not pending:
            return []
        batch = sorted(pending)[:limit]
        pending.difference_update(batch)
        return batch
