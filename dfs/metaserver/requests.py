"""Namespace requests: directories and files, owners, modes, groups, quotas, listings.

Each mutation becomes an operation of :mod:`dfs.metaserver.namespace`, submitted to
the replicated log and answered once committed; each query reads the local namespace,
on the serving leader only. Chunks a mutation frees are handed to the replica tracker,
which has their replicas deleted.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from dfs.config import ReplicationConfig
from dfs.metaserver import namespace as ns
from dfs.metaserver.log import ReplicatedLog, caller, commit, lookup, stamp
from dfs.metaserver.replicas import ReplicaTracker
from dfs.metaserver.safemode import SafeMode
from dfs.protocol.errors import InvalidArgument
from dfs.security.identity import Identity


def check_replication(config: ReplicationConfig, path: str, replication: int) -> None:
    """InvalidArgument unless ``replication`` is within the cluster's bounds."""
    low, high = config.min_replication, config.max_replication
    if not low <= replication <= high:
        raise InvalidArgument(f"{path}: replication {replication} is outside {low}..{high}")


#: A page of a listing stops growing past this many bytes of entries, so that the
#: answer fits one AMP value (65,535 bytes) whatever the names are like.
PAGE_BYTES = 40_000


def _stat_entry(stat: ns.Stat) -> dict[str, Any]:
    return {
        "path": stat.path,
        "name": stat.name,
        "kind": stat.kind,
        "inode": stat.inode,
        "owner": stat.owner,
        "group": stat.group,
        "mode": stat.mode,
        "mtime": stat.mtime,
        "length": stat.length,
        "replication": stat.replication,
        "chunk_size": stat.chunk_size,
        "complete": stat.complete,
    }


def _quota_entry(usage: ns.QuotaUsage) -> dict[str, Any]:
    return {
        "path": usage.path,
        "files_quota": -1 if usage.files is None else usage.files,
        "bytes_quota": -1 if usage.bytes is None else usage.bytes,
        "names": usage.names,
        "space": usage.space,
    }


def _entry_size(entry: dict[str, Any]) -> int:
    return (
        200
        + len(entry["path"].encode())
        + len(entry["name"].encode())
        + len(entry["owner"])
        + len(entry["group"])
    )


class NamespaceRequests:
    log = Logger()

    def __init__(
        self,
        clock: Any,
        log: ReplicatedLog,
        safe_mode: SafeMode,
        replicas: ReplicaTracker,
        config: ReplicationConfig,
    ) -> None:
        self._clock = clock
        self._log = log
        self._safe_mode = safe_mode
        self._replicas = replicas
        self._config = config

    async def _commit(self, operation: ns.Operation) -> Any:
        self._safe_mode.check_mutation()
        return await commit(self._log, operation)

    def _query(self, query: Any) -> Any:
        self._safe_mode.check_serving()
        return lookup(self._log, query)

    def _stamp(self, identity: Identity, request_id: str = "") -> dict[str, Any]:
        return stamp(identity, self._clock.seconds(), request_id)

    # -- directories and files ----------------------------------------------------------

    async def mkdir(
        self, identity: Identity, path: str, mode: int, parents: bool, request_id: str
    ) -> None:
        await self._commit(ns.Mkdir(path, mode, parents, **self._stamp(identity, request_id)))

    async def delete(self, identity: Identity, path: str, recursive: bool, request_id: str) -> None:
        result = await self._commit(ns.Delete(path, recursive, **self._stamp(identity, request_id)))
        self._replicas.drop(result.freed)

    async def rename(
        self, identity: Identity, source: str, destination: str, request_id: str
    ) -> None:
        result = await self._commit(
            ns.Rename(source, destination, **self._stamp(identity, request_id))
        )
        self._replicas.drop(result.freed)

    async def set_replication(
        self, identity: Identity, path: str, replication: int, request_id: str
    ) -> None:
        check_replication(self._config, path, replication)
        await self._commit(
            ns.SetReplication(path, replication, **self._stamp(identity, request_id))
        )

    async def chmod(self, identity: Identity, path: str, mode: int, request_id: str) -> None:
        await self._commit(ns.Chmod(path, mode, **self._stamp(identity, request_id)))

    async def chown(
        self, identity: Identity, path: str, owner: str, group: str, request_id: str
    ) -> None:
        """``owner`` or ``group`` empty: that one is left as it is."""
        await self._commit(
            ns.Chown(path, owner or None, group or None, **self._stamp(identity, request_id))
        )

    # -- users, groups, quotas -------------------------------------------------------------

    async def change_group(
        self, identity: Identity, group: str, users: list[str], add: bool
    ) -> list[str]:
        if len(users) > ns.MAX_GROUP_MEMBERS:
            raise InvalidArgument(f"at most {ns.MAX_GROUP_MEMBERS} users at once")
        members = await self._commit(
            ns.ChangeGroup(group, tuple(users), add, **self._stamp(identity))
        )
        self.log.info(
            "{admin}: group {group} {change} {users}",
            admin=identity.name,
            group=group,
            change="gains" if add else "loses",
            users=", ".join(users),
        )
        return list(members)

    def groups(self) -> list[dict[str, Any]]:
        self._safe_mode.check_serving()
        listing = self._log.read(lambda namespace: namespace.groups())
        return [{"name": name, "members": list(members)} for name, members in listing.items()]

    async def add_user(self, identity: Identity, name: str) -> str:
        stat = await self._commit(ns.AddUser(name, **self._stamp(identity)))
        self.log.info("{admin}: added user {name}", admin=identity.name, name=name)
        return str(stat.path)

    async def set_quota(
        self, identity: Identity, path: str, files: int | None, size: int | None, clear: bool
    ) -> dict[str, Any]:
        usage = await self._commit(ns.SetQuota(path, files, size, clear, **self._stamp(identity)))
        self.log.info(
            "{admin}: quota of {path}: files {files}, bytes {size}",
            admin=identity.name,
            path=path,
            files=usage.files,
            size=usage.bytes,
        )
        return _quota_entry(usage)

    def quota(self, identity: Identity, path: str) -> dict[str, Any]:
        who = caller(identity)
        return _quota_entry(self._query(lambda namespace: namespace.quota(path, who)))

    # -- queries ---------------------------------------------------------------------------

    def stat(self, identity: Identity, path: str) -> dict[str, Any]:
        who = caller(identity)
        return _stat_entry(self._query(lambda namespace: namespace.stat(path, who)))

    def list_directory(
        self, identity: Identity, path: str, start_after: str, limit: int
    ) -> dict[str, Any]:
        who = caller(identity)
        entries = self._query(lambda namespace: namespace.list(path, who))
        page: list[dict[str, Any]] = []
        size = 0
        limit = max(1, min(limit, 1000))
        more = False
        for stat in entries:
            if start_after and stat.name <= start_after:
                continue
            entry = _stat_entry(stat)
            if len(page) >= limit or size + _entry_size(entry) > PAGE_BYTES:
                more = True
                break
            page.append(entry)
            size += _entry_size(entry)
        return {"entries": page, "more": more}

    def du(self, identity: Identity, path: str) -> dict[str, int]:
        who = caller(identity)
        usage = self._query(lambda namespace: namespace.du(path, who))
        return {
            "files": usage.files,
            "directories": usage.directories,
            "bytes": usage.bytes,
            "replicated_bytes": usage.replicated_bytes,
        }
