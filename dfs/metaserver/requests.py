"""Namespace requests: directories and files, owners, modes, groups, quotas, listings.

Each mutation becomes an operation of :mod:`dfs.metaserver.namespace`, submitted to
the replicated log and answered once committed; each query reads the local namespace,
on the serving leader only. Chunks a mutation frees are handed to the replica tracker,
which has their replicas deleted.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger

from dfs.config import ReplicationConfig
from dfs.metaserver import namespace as ns
from dfs.metaserver import operations as ops
from dfs.metaserver import quotas
from dfs.metaserver.log import ReplicatedLog, caller, commit, lookup, stamp
from dfs.metaserver.replicas import ReplicaTracker
from dfs.metaserver.safemode import SafeMode
from dfs.protocol import records
from dfs.protocol.errors import InvalidArgument
from dfs.security.identity import Identity


def check_replication(config: ReplicationConfig, path: str, replication: int) -> None:
    """InvalidArgument unless ``replication`` is within the cluster's bounds."""
    low, high = config.min_replication, config.max_replication
    if not low <= replication <= high:
        raise InvalidArgument(f"{path}: replication {replication} is outside {low}..{high}")


#: Entries of a directory one ListDirectory answers at most (fewer when they would
#: not fit one packed page, records.PAGE_LIMIT bytes).
LIST_LIMIT = 10_000


def _stat_entry(stat: ns.Stat) -> records.Entry:
    # A Stat is an Entry with the lease holder, which stays here.
    fields = attrs.fields(records.Entry)
    return records.Entry(*(getattr(stat, field.name) for field in fields))


def _quota_entry(usage: quotas.QuotaUsage) -> dict[str, Any]:
    return {
        "path": usage.path,
        "files_quota": -1 if usage.files is None else usage.files,
        "bytes_quota": -1 if usage.bytes is None else usage.bytes,
        "names": usage.names,
        "space": usage.space,
    }


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

    async def _commit(self, operation: ops.Operation) -> Any:
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
        await self._commit(ops.Mkdir(path, mode, parents, **self._stamp(identity, request_id)))

    async def delete(self, identity: Identity, path: str, recursive: bool, request_id: str) -> None:
        result = await self._commit(
            ops.Delete(path, recursive, **self._stamp(identity, request_id))
        )
        self._replicas.drop(result.freed)

    async def rename(
        self, identity: Identity, source: str, destination: str, request_id: str
    ) -> None:
        result = await self._commit(
            ops.Rename(source, destination, **self._stamp(identity, request_id))
        )
        self._replicas.drop(result.freed)

    async def set_replication(
        self, identity: Identity, path: str, replication: int, request_id: str
    ) -> None:
        check_replication(self._config, path, replication)
        await self._commit(
            ops.SetReplication(path, replication, **self._stamp(identity, request_id))
        )

    async def chmod(self, identity: Identity, path: str, mode: int, request_id: str) -> None:
        await self._commit(ops.Chmod(path, mode, **self._stamp(identity, request_id)))

    async def chown(
        self, identity: Identity, path: str, owner: str, group: str, request_id: str
    ) -> None:
        """``owner`` or ``group`` empty: that one is left as it is."""
        await self._commit(
            ops.Chown(path, owner or None, group or None, **self._stamp(identity, request_id))
        )

    # -- users, groups, quotas -------------------------------------------------------------

    async def change_group(
        self, identity: Identity, group: str, users: list[str], add: bool
    ) -> list[str]:
        if len(users) > ns.MAX_GROUP_MEMBERS:
            raise InvalidArgument(f"at most {ns.MAX_GROUP_MEMBERS} users at once")
        members = await self._commit(
            ops.ChangeGroup(group, tuple(users), add, **self._stamp(identity))
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
        stat = await self._commit(ops.AddUser(name, **self._stamp(identity)))
        self.log.info("{admin}: added user {name}", admin=identity.name, name=name)
        return str(stat.path)

    async def set_quota(
        self, identity: Identity, path: str, files: int | None, size: int | None, clear: bool
    ) -> dict[str, Any]:
        usage = await self._commit(ops.SetQuota(path, files, size, clear, **self._stamp(identity)))
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
        return {"entry": _stat_entry(self._query(lambda namespace: namespace.stat(path, who)))}

    def list_directory(
        self, identity: Identity, path: str, start_after: str, limit: int
    ) -> dict[str, Any]:
        who = caller(identity)
        limit = max(1, min(limit, LIST_LIMIT))
        # One read: the page is one consistent view, however the directory changes.
        found = self._query(lambda namespace: namespace.list_page(path, who, start_after, limit))
        # Packed here, column by column; the page stops short where the next entry
        # would not fit one packed value.
        packed, count = records.pack_entry_page(found.entries, records.PAGE_LIMIT)
        return {"entries": packed, "more": found.more or count < len(found.entries)}

    def du(self, identity: Identity, path: str) -> dict[str, int]:
        who = caller(identity)
        usage = self._query(lambda namespace: namespace.du(path, who))
        return {
            "files": usage.files,
            "directories": usage.directories,
            "bytes": usage.bytes,
            "replicated_bytes": usage.replicated_bytes,
        }
