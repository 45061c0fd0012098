"""Cluster control for administrators: fsck, decommissioning, the balancer, backups.

Decommissioning is replicated state (the namespace names the dataservers being
drained); how far each drain has gone, the balancer and fsck's view of the replicas
belong to the replication monitor. A backup is a snapshot of the namespace that the
serving leader writes to a file (:class:`~dfs.metaserver.backupfolder.BackupFolder`)
while an administrator fetches it page by page.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from dfs.config import ReplicationConfig
from dfs.metaserver import backup
from dfs.metaserver import operations as ops
from dfs.metaserver.backupfolder import BackupFolder
from dfs.metaserver.healing import ReplicationMonitor
from dfs.metaserver.log import ReplicatedLog, commit, lookup, stamp
from dfs.metaserver.registry import DataserverRegistry
from dfs.metaserver.safemode import SafeMode
from dfs.protocol.errors import InvalidArgument, UnknownDataserver
from dfs.security.identity import Identity

#: A page of fsck's problems stops growing past this many bytes.
PAGE_BYTES = 40_000


class ClusterControl:
    log = Logger()

    def __init__(
        self,
        clock: Any,
        log: ReplicatedLog,
        safe_mode: SafeMode,
        registry: DataserverRegistry,
        monitor: ReplicationMonitor,
        config: ReplicationConfig,
        backups: BackupFolder,
    ) -> None:
        self._clock = clock
        self._log = log
        self._safe_mode = safe_mode
        self._registry = registry
        self._monitor = monitor
        self._config = config
        #: backups written here, held while an administrator fetches them
        self._backups = backups

    def fsck(self, path: str, start: int, limit: int) -> dict[str, Any]:
        self._safe_mode.check_serving()
        tree = lookup(self._log, lambda namespace: namespace.tree(path))
        problems, summary = self._monitor.fsck(tree)
        start = max(0, start)
        limit = max(1, min(limit, 1000))
        page: list[dict[str, Any]] = []
        size = 0
        for entry in problems[start:]:
            entry_size = 150 + len(entry["path"].encode()) + 20 * len(entry["locations"])
            if len(page) >= limit or size + entry_size > PAGE_BYTES:
                break
            page.append(entry)
            size += entry_size
        return {"problems": page, "more": start + len(page) < len(problems), **summary}

    # -- decommissioning ---------------------------------------------------------------

    async def set_decommission(self, identity: Identity, name: str, on: bool) -> None:
        if on and self._registry.get(name) is None:
            raise UnknownDataserver(f"no dataserver named {name!r} has registered")
        self._monitor.drain_remaining.pop(name, None)
        # Allowed in safe mode: an administrator may drain a dataserver before the
        # cluster is fully up.
        self._safe_mode.check_serving()
        await commit(
            self._log, ops.SetDecommission(name, on, **stamp(identity, self._clock.seconds()))
        )
        self.log.info(
            "{admin} {action} dataserver {name}",
            admin=identity.name,
            action="decommissioned" if on else "recommissioned",
            name=name,
        )

    def drain_state(self, name: str) -> str | None:
        """ "decommissioning" or "decommissioned" for a dataserver being drained."""
        draining = self._log.read(lambda namespace: namespace.decommissioned)
        if name not in draining:
            return None
        remaining = self._monitor.drain_remaining.get(name)
        return "decommissioned" if remaining == 0 else "decommissioning"

    def drain_remaining(self, name: str) -> int:
        """Chunks still lacking replicas without ``name``; -1 when it is not being
        drained, or no plan has counted yet."""
        if self.drain_state(name) is None:
            return -1
        return self._monitor.drain_remaining.get(name, -1)

    # -- the balancer ------------------------------------------------------------------

    def control_balancer(self, identity: Identity, action: str, threshold: float) -> dict[str, Any]:
        self._log.check_serving()
        balancer = self._monitor.balancer
        if action == "start":
            if not 0 <= threshold < 100:
                raise InvalidArgument(f"threshold {threshold}: expected a percentage in 0..100")
            balancer.start(threshold or self._config.balancer_threshold)
        elif action == "stop":
            balancer.stop()
        elif action != "status":
            raise InvalidArgument(f"balancer action {action!r}: expected start, stop or status")
        if action != "status":
            self.log.info("{admin}: balancer {action}", admin=identity.name, action=action)
        return self._monitor.balancer_state()

    # -- backups -----------------------------------------------------------------------

    def start_backup(self, leader: str) -> dict[str, Any]:
        """Start writing a backup of the namespace. Only the serving leader takes one:
        its state holds everything committed. The namespace is copied at one point,
        between two operations (a fork), so the backup is one consistent state
        however long it takes to write and to fetch."""
        self._safe_mode.check_serving()
        return {"backup_id": self._backups.start(leader)}

    def backup_status(self, backup_id: str) -> dict[str, Any]:
        held = self._backups.status(backup_id)
        return {"state": held.state.value, "size": held.size, "sha256": held.sha256}

    def read_backup(self, backup_id: str, offset: int, length: int) -> dict[str, Any]:
        if offset < 0 or not 0 < length <= backup.MAX_PAGE:
            raise InvalidArgument(
                f"offset {offset}, length {length}: expected offset >= 0 and "
                f"0 < length <= {backup.MAX_PAGE}"
            )
        return {"data": self._backups.page(backup_id, offset, length)}

    def end_backup(self, backup_id: str) -> dict[str, Any]:
        self._backups.end(backup_id)
        return {}
