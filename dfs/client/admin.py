"""What an administrator asks of the cluster: the metaserver group, chunk health
(fsck), dataservers and their decommissioning, safe mode, the balancer, users and
groups.

:class:`ClusterAdmin` is mixed into :class:`~dfs.client.client.DFSClient`, so these
are methods of every client; the metaservers answer them only for an admin
certificate (PermissionDenied otherwise). Everything but ``metaserver_status`` goes to
the Raft leader through the client's :class:`~dfs.client.leader.MetaserverChannel`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import Logger

from dfs.client.connection import ClientCredentials, connect_server
from dfs.client.leader import MetaserverChannel
from dfs.config import Address, ClientConfig
from dfs.protocol.commands import (
    AddMetaserver,
    AddUser,
    BackupStatus,
    ChangeGroup,
    ControlBalancer,
    ControlSafeMode,
    Decommission,
    EndBackup,
    Fsck,
    GetQuota,
    ListDataservers,
    ListGroups,
    MetaserverStatus,
    ReadBackup,
    Recommission,
    RemoveMetaserver,
    SetQuota,
    StartBackup,
)
from dfs.protocol.errors import ChecksumMismatch

#: Problems asked for per Fsck call: a page stays well under AMP's 65,535-byte values.
FSCK_PAGE = 500

#: The counters of a Fsck answer, as :attr:`FsckReport.summary` holds them.
FSCK_COUNTERS = (
    "files",
    "directories",
    "bytes",
    "chunks",
    "open_chunks",
    "missing",
    "under_replicated",
    "over_replicated",
    "corrupt",
    "stale",
    "replicas",
    "dataservers_alive",
    "dataservers_dead",
    "decommissioning",
    "copies_in_flight",
)

SAFE_MODE_ACTIONS = ("get", "enter", "leave")

#: Bytes of a backup asked for per ReadBackup call, and calls in flight at once: what
#: the client holds of a backup at most.
BACKUP_PAGE = 1024 * 1024
BACKUP_WINDOW = 4
#: Seconds between BackupStatus calls while the leader writes the backup: first, most.
BACKUP_POLL_FIRST = 0.05
BACKUP_POLL_MAX = 1.0
#: Seconds EndBackup is tried for at the end of a backup.
BACKUP_END_TIMEOUT = 10.0
BALANCER_ACTIONS = ("start", "stop", "status")


@attrs.frozen
class FsckProblem:
    """One chunk that is not as its file's replication factor wants it."""

    path: str
    #: the chunk's place in the file, from 0
    index: int
    chunk_id: int
    version: int
    #: missing, under-replicated, over-replicated, corrupt or stale
    problem: str
    #: live replicas at the current version
    replicas: int
    #: the file's replication factor
    wanted: int
    #: names of the dataservers holding the live replicas
    locations: tuple[str, ...]

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> FsckProblem:
        return cls(
            path=answer["path"],
            index=answer["index"],
            chunk_id=answer["chunk_id"],
            version=answer["version"],
            problem=answer["problem"],
            replicas=answer["replicas"],
            wanted=answer["wanted"],
            locations=tuple(answer["locations"]),
        )


@attrs.frozen
class FsckReport:
    """The health of a tree: every problem found, and the counters of the whole tree
    (:data:`FSCK_COUNTERS`) as the last page of the check reported them."""

    healthy: bool
    problems: tuple[FsckProblem, ...]
    summary: dict[str, int]


class ClusterAdmin:
    """The administration methods of :class:`~dfs.client.client.DFSClient`."""

    log = Logger()

    # Set by DFSClient.__init__.
    _reactor: Any
    config: ClientConfig
    credentials: ClientCredentials
    metaserver: MetaserverChannel

    # -- the metaserver group ------------------------------------------------------

    async def metaserver_status(self) -> list[dict[str, Any]]:
        """Every configured metaserver's own view of the Raft group, asked directly
        (not through the leader); one that cannot be asked gives its address and
        an ``error``."""

        async def ask(address: Address) -> dict[str, Any]:
            try:
                session = await connect_server(
                    self._reactor, address, self.credentials, timeout=self.config.connect_timeout
                )
            except Exception as error:
                return {"address": str(address), "error": f"{type(error).__name__}: {error}"}
            try:
                call = session.callRemote(MetaserverStatus)
                call.addTimeout(self.config.connect_timeout, self._reactor)
                return {"address": str(address), **(await call)}
            except Exception as error:
                return {"address": str(address), "error": f"{type(error).__name__}: {error}"}
            finally:
                session.abort()

        return list(
            await gatherResults(
                [Deferred.fromCoroutine(ask(address)) for address in self.config.metaservers]
            )
        )

    async def add_metaserver(self, raft_address: str) -> None:
        await self.metaserver.call(AddMetaserver, raft=raft_address)

    async def remove_metaserver(self, raft_address: str) -> None:
        await self.metaserver.call(RemoveMetaserver, raft=raft_address)

    # -- chunk health ----------------------------------------------------------------

    async def fsck(self, path: str = "/") -> FsckReport:
        """Check every chunk of every file under ``path``: all the problems (asked for
        a page at a time) and the tree's counters."""
        problems: list[FsckProblem] = []
        start = 0
        while True:
            answer = await self.metaserver.call(Fsck, path=path, start=start, limit=FSCK_PAGE)
            page = [FsckProblem.from_answer(problem) for problem in answer["problems"]]
            problems += page
            start += len(page)
            # A page without problems that says there are more would ask forever.
            if not answer["more"] or not page:
                return FsckReport(
                    healthy=answer["healthy"],
                    problems=tuple(problems),
                    summary={name: answer[name] for name in FSCK_COUNTERS},
                )

    # -- dataservers -------------------------------------------------------------------

    async def dataservers(self) -> list[dict[str, Any]]:
        """Every dataserver the metaserver knows: ``name``, ``address``, ``state``
        (alive, dead, decommissioning, decommissioned), ``capacity``, ``free``,
        ``used`` (bytes), ``chunks`` and ``last_heartbeat_age`` (seconds)."""
        answer = await self.metaserver.call(ListDataservers)
        return [dict(dataserver) for dataserver in answer["dataservers"]]

    async def decommission(self, name: str) -> None:
        """Start draining the dataserver ``name``; :meth:`dataservers` shows it
        ``decommissioned`` once every chunk it holds has its replicas elsewhere."""
        await self.metaserver.call(Decommission, name=name)

    async def recommission(self, name: str) -> None:
        """Undo :meth:`decommission`: the dataserver takes chunks again."""
        await self.metaserver.call(Recommission, name=name)

    # -- safe mode and the balancer ----------------------------------------------------

    async def safemode(self, action: str = "get") -> dict[str, Any]:
        """``get``, ``enter`` or ``leave`` safe mode; the state after it: ``on``,
        ``manual``, ``reason``, ``reported_chunks``, ``total_chunks``, ``threshold``,
        ``dataservers_alive``, ``min_dataservers``."""
        if action not in SAFE_MODE_ACTIONS:
            raise ValueError(f"safe mode action must be get, enter or leave, not {action!r}")
        return dict(await self.metaserver.call(ControlSafeMode, action=action))

    async def balancer(self, action: str = "status", threshold: float = 0.0) -> dict[str, Any]:
        """``start`` (with ``threshold`` percent, 0 for the configured one), ``stop``
        or ``status`` of the balancer; its state after it: ``running``,
        ``continuous``, ``threshold``, ``bandwidth``, ``moves_in_flight``,
        ``moved_chunks``, ``moved_bytes``, ``spread``, ``balanced``."""
        if action not in BALANCER_ACTIONS:
            raise ValueError(f"balancer action must be start, stop or status, not {action!r}")
        if not 0 <= threshold < 100:
            raise ValueError(f"balancer threshold must be 0 to 100 percent, not {threshold!r}")
        return dict(await self.metaserver.call(ControlBalancer, action=action, threshold=threshold))

    # -- users and groups --------------------------------------------------------------

    async def groups(self) -> dict[str, list[str]]:
        """Every group and its members, by group name."""
        answer = await self.metaserver.call(ListGroups)
        return {group["name"]: list(group["members"]) for group in answer["groups"]}

    async def group_add(self, group: str, users: list[str]) -> list[str]:
        """Add ``users`` to ``group`` (made if new); its members after the change.
        Superusers only, as every change below."""
        answer = await self.metaserver.call(ChangeGroup, group=group, users=users, add=True)
        return list(answer["members"])

    async def group_remove(self, group: str, users: list[str]) -> list[str]:
        """Take ``users`` out of ``group``; a group left empty is gone."""
        answer = await self.metaserver.call(ChangeGroup, group=group, users=users, add=False)
        return list(answer["members"])

    async def add_user(self, name: str) -> str:
        """Make ``/user/<name>`` owned by ``name`` (group ``name``, mode 0750); its path."""
        answer = await self.metaserver.call(AddUser, name=name)
        return str(answer["path"])

    # -- quotas ------------------------------------------------------------------------

    async def quota(self, path: str) -> dict[str, Any]:
        """A directory's quotas and use: ``files_quota`` and ``bytes_quota`` (None:
        no limit), ``names`` (files and directories, itself included) and ``space``
        (bytes times replication)."""
        return _quota(await self.metaserver.call(GetQuota, path=path))

    async def set_quota(
        self, path: str, *, files: int | None = None, bytes: int | None = None
    ) -> dict[str, Any]:
        """Set the name quota (``files``) and/or the space quota (``bytes``) of a
        directory; the one not given stays. Superusers only."""
        if files is None and bytes is None:
            raise ValueError("give a name quota (files), a space quota (bytes) or both")
        answer = await self.metaserver.call(
            SetQuota, path=path, files=files, bytes=bytes, clear=False
        )
        return _quota(answer)

    async def clear_quota(self, path: str) -> dict[str, Any]:
        """Remove both quotas of a directory. Superusers only."""
        return _quota(await self.metaserver.call(SetQuota, path=path, clear=True))

    # -- backups -----------------------------------------------------------------------

    async def backup(self, out: IO[bytes]) -> dict[str, Any]:
        """Have the leader write a backup of the namespace and copy it to ``out``, a
        page at a time with :data:`BACKUP_WINDOW` pages in flight; its ``size`` and
        ``sha256``. ChecksumMismatch when what arrived is not what the leader wrote,
        BackupFailed when the leader could not write it. The leader's file is deleted
        at the end, whatever happened."""
        started = await self.metaserver.call(StartBackup)
        backup_id = started["backup_id"]
        try:
            status = await self._backup_written(backup_id)
            size, sha256 = status["size"], status["sha256"]
            await self._fetch_backup(backup_id, size, sha256, out)
        finally:
            await self._end_backup(backup_id)
        return {"size": size, "sha256": sha256}

    async def _backup_written(self, backup_id: str) -> dict[str, Any]:
        """BackupStatus, asked again after a pause (growing to BACKUP_POLL_MAX) until
        the leader has written the backup."""
        pause = BACKUP_POLL_FIRST
        while True:
            status = await self.metaserver.call(BackupStatus, backup_id=backup_id)
            if status["state"] == "ready":
                return status
            await deferLater(self._reactor, pause, lambda: None)
            pause = min(2 * pause, BACKUP_POLL_MAX)

    async def _fetch_backup(self, backup_id: str, size: int, sha256: str, out: IO[bytes]) -> None:
        digest = hashlib.sha256()
        pending: deque[tuple[int, Deferred[dict[str, Any]]]] = deque()
        asked = written = 0
        try:
            while written < size:
                while len(pending) < BACKUP_WINDOW and asked < size:
                    length = min(BACKUP_PAGE, size - asked)
                    page = self.metaserver.call(
                        ReadBackup, backup_id=backup_id, offset=asked, length=length
                    )
                    pending.append((length, Deferred.fromCoroutine(page)))
                    asked += length
                length, first = pending.popleft()
                data = (await first)["data"]
                if len(data) != length:
                    break  # the file on the leader is shorter than it said
                digest.update(data)
                out.write(data)
                written += length
        finally:
            for _, left in pending:
                left.addErrback(lambda _failure: None)
                left.cancel()
        if written != size or digest.hexdigest() != sha256:
            raise ChecksumMismatch(
                f"the backup arrived damaged ({written} of {size} bytes, SHA-256 differs)"
            )

    async def _end_backup(self, backup_id: str) -> None:
        # Best effort: a leader that does not hear it deletes the file by itself once
        # nobody has asked about it for a while.
        try:
            await self.metaserver.call_within(BACKUP_END_TIMEOUT, EndBackup, backup_id=backup_id)
        except Exception as error:
            self.log.info(
                "backup {backup_id} not ended on the leader: {error}",
                backup_id=backup_id,
                error=str(error),
            )


def _quota(answer: dict[str, Any]) -> dict[str, Any]:
    quota = dict(answer)
    for key in ("files_quota", "bytes_quota"):
        if quota[key] < 0:
            quota[key] = None
    return quota
