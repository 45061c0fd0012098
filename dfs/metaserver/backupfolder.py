"""The backups the leader writes into ``data_dir/backups`` while an administrator
fetches them.

``dfs admin backup`` asks the leader to start a backup (StartBackup). The leader
forks (:mod:`dfs.metaserver.frozen`) while it holds the lock that applies the log, so
the child's copy of the namespace is one consistent state, and the Raft thread goes on
applying the log at once. The child writes the backup file
(:func:`dfs.metaserver.backup.write`) to ``<id>.partial``, streaming, fsyncs it,
renames it to ``<id>.backup``, reports the file's size and SHA-256 on a pipe and
exits. The administrator's client asks how far it is (BackupStatus), reads the file a
page at a time (ReadBackup) and ends the backup (EndBackup), which deletes the file.

A backup that nobody asked about for ``keep`` seconds is deleted too (its client went
away), and so is every leftover found at start: backup ids live in memory, so a file
from before a restart can never be fetched. At most ``most`` backups are held at once;
a new one pushes the oldest out. The child stops with an error rather than leave less
than ``reserve`` bytes free on the folder's file system, which it shares with the
Raft journal.
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from dfs.metaserver import backup
from dfs.metaserver.filelayer import FileLayer
from dfs.metaserver.log import ReplicatedLog
from dfs.metaserver.namespace import Namespace
from dfs.protocol.errors import BackupFailed, InvalidArgument

PARTIAL = ".partial"
DONE = ".backup"
#: Bytes the child buffers before a write: large writes, few system calls.
WRITE_BUFFER = 1024 * 1024
#: The child checks the free space of the folder's file system this often (bytes).
SPACE_CHECK = 64 * 1024 * 1024


class BackupState(enum.Enum):
    WRITING = "writing"
    READY = "ready"
    FAILED = "failed"


@attrs.define
class HeldBackup:
    """One backup of this leader: a child writing it, then a file being fetched."""

    backup_id: str
    raft_index: int
    started: float
    #: the child writing the file (0 once it has been waited for)
    pid: int
    #: the read end of the pipe the child reports on (-1 once read)
    report: int
    state: BackupState = BackupState.WRITING
    size: int = -1
    sha256: str = ""
    error: str = ""
    #: the finished file, open for reading pages (-1 until then)
    reader: int = -1
    #: when it goes unless asked about again
    expires: float = 0.0
    timer: IDelayedCall | None = None


class _SpaceGuard:
    """The child's output: stops the backup, with ENOSPC, rather than leave less than
    ``reserve`` bytes free (the journal lives on the same file system)."""

    def __init__(self, out: Any, folder: Path, reserve: int) -> None:
        self._out = out
        self._folder = folder
        self._reserve = reserve
        self._unchecked = 0

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self._unchecked += size
        if self._unchecked >= SPACE_CHECK:
            self._unchecked = 0
            stats = os.statvfs(self._folder)
            if stats.f_bavail * stats.f_frsize < self._reserve:
                raise OSError(
                    28,
                    f"fewer than {self._reserve} bytes left free, kept for the Raft journal",
                )
        self._out.write(data)
        return size


def write_in_child(
    namespace: Namespace,
    partial: Path,
    done: Path,
    report: int,
    reserve: int,
    header: dict[str, Any],
) -> None:
    """What the forked child does: write the backup, put it in place, report on the
    ``report`` pipe (``{"size", "sha256"}`` or ``{"error"}``). Never raises."""
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "wb", buffering=WRITE_BUFFER) as out:
            written = backup.write(namespace, _SpaceGuard(out, partial.parent, reserve), **header)  # type: ignore[arg-type]
        FileLayer().replace(partial, done)
        message: dict[str, Any] = {"size": written.size, "sha256": written.sha256}
    except OSError as error:
        message = {"error": f"writing {partial}: {error.strerror or error}"}
    except BaseException as error:
        message = {"error": f"writing {partial}: {type(error).__name__}: {error}"}
    os.write(report, json.dumps(message).encode())


class BackupFolder(Service):
    """Owns ``data_dir/backups``: the backup files of this metaserver and the children
    writing them."""

    log = Logger()

    def __init__(
        self,
        clock: Any,
        log: ReplicatedLog,
        folder: Path,
        keep: float = 120.0,
        most: int = 2,
        reserve: int = 256 * 1024 * 1024,
        poll: float = 0.05,
    ) -> None:
        self._clock = clock
        self._log = log
        self.folder = folder
        self._keep = keep
        self._most = most
        self._reserve = reserve
        self._poll = poll
        self._held: dict[str, HeldBackup] = {}

    # -- the service --------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        leftovers = [path for path in self.folder.iterdir() if path.suffix in (PARTIAL, DONE)]
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            self.log.info(
                "removed {count} backup files left from before the start in {folder}",
                count=len(leftovers),
                folder=str(self.folder),
            )

    def stopService(self) -> None:
        for held in list(self._held.values()):
            self._drop(held)
        super().stopService()

    # -- what the administrator asks ------------------------------------------------------

    def start(self, leader: str) -> str:
        """Start writing a backup of the namespace as it is now; its id."""
        while len(self._held) >= self._most:
            self._drop(next(iter(self._held.values())))
        backup_id = secrets.token_hex(8)
        partial, done = self._paths(backup_id)
        # Read before the fork: the copy holds at least the entries up to here.
        index, term = self._log.position()
        header = {
            "leader": leader,
            "raft_index": index,
            "raft_term": term,
            "created": self._clock.seconds(),
        }
        report, report_in_child = os.pipe()
        # Another child forked meanwhile (PySyncObj's) may hold the write end too:
        # reading must not wait for it.
        os.set_blocking(report, False)
        try:
            pid = self._log.fork(
                lambda namespace: write_in_child(
                    namespace, partial, done, report_in_child, self._reserve, header
                ),
                keep=(report_in_child,),
            )
        except OSError as error:
            os.close(report)
            raise BackupFailed(f"cannot start the process writing the backup: {error}") from None
        finally:
            os.close(report_in_child)
        held = HeldBackup(backup_id, index, self._clock.seconds(), pid, report)
        self._held[backup_id] = held
        held.timer = self._clock.callLater(self._poll, self._watch, held)
        self.log.info(
            "backup {backup_id} started: process {pid} writes the namespace at Raft index "
            "{index} to {path}",
            backup_id=backup_id,
            pid=pid,
            index=index,
            path=str(partial),
        )
        return backup_id

    def status(self, backup_id: str) -> HeldBackup:
        """The backup as it stands; InvalidArgument for one not held here, and
        BackupFailed (with the reason) for one whose writing failed."""
        held = self._get(backup_id)
        if held.state is BackupState.FAILED:
            raise BackupFailed(held.error)
        return held

    def page(self, backup_id: str, offset: int, length: int) -> bytes:
        """Bytes ``offset`` to ``offset + length`` of a finished backup (fewer at its end)."""
        held = self.status(backup_id)
        if held.state is not BackupState.READY:
            raise InvalidArgument(f"backup {backup_id!r} is still being written: ask its status")
        return os.pread(held.reader, length, offset)

    def end(self, backup_id: str) -> None:
        """Delete a backup (stopping its child if it still writes); nothing for one not
        held here."""
        held = self._held.get(backup_id)
        if held is not None:
            self._drop(held)
            self.log.info("backup {backup_id} ended and deleted", backup_id=backup_id)

    # -- inside ---------------------------------------------------------------------------

    def _paths(self, backup_id: str) -> tuple[Path, Path]:
        return self.folder / f"{backup_id}{PARTIAL}", self.folder / f"{backup_id}{DONE}"

    def _get(self, backup_id: str) -> HeldBackup:
        held = self._held.get(backup_id)
        if held is None:
            raise InvalidArgument(
                f"backup {backup_id!r} is not held here (the leader changed, or it "
                "expired): take the backup again"
            )
        held.expires = self._clock.seconds() + self._keep
        return held

    def _watch(self, held: HeldBackup) -> None:
        """Poll the child until it has exited, then take its report."""
        held.timer = None
        try:
            pid, status = os.waitpid(held.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = held.pid, -1
        if pid == 0:
            held.timer = self._clock.callLater(self._poll, self._watch, held)
            return
        held.pid = 0
        report = _read_report(held.report)
        held.report = -1
        seconds = self._clock.seconds() - held.started
        partial, done = self._paths(held.backup_id)
        if status == 0 and "sha256" in report:
            held.state = BackupState.READY
            held.size, held.sha256 = int(report["size"]), str(report["sha256"])
            held.reader = os.open(done, os.O_RDONLY | os.O_CLOEXEC)
            self.log.info(
                "backup {backup_id} written: {size} bytes at Raft index {index} in {seconds:.2f} s",
                backup_id=held.backup_id,
                size=held.size,
                index=held.raft_index,
                seconds=seconds,
            )
        else:
            held.state = BackupState.FAILED
            held.error = report.get("error") or _ended(status)
            self._remove(partial)
            self.log.error(
                "backup {backup_id} failed: {error}", backup_id=held.backup_id, error=held.error
            )
        held.expires = self._clock.seconds() + self._keep
        held.timer = self._clock.callLater(self._keep, self._expire, held)

    def _expire(self, held: HeldBackup) -> None:
        held.timer = None
        left = held.expires - self._clock.seconds()
        if left > 0:
            held.timer = self._clock.callLater(left, self._expire, held)
            return
        self._drop(held)
        self.log.info(
            "backup {backup_id} deleted: not asked about for {keep:.0f} s",
            backup_id=held.backup_id,
            keep=self._keep,
        )

    def _drop(self, held: HeldBackup) -> None:
        self._held.pop(held.backup_id, None)
        if held.timer is not None and held.timer.active():
            held.timer.cancel()
        held.timer = None
        if held.pid:
            try:
                os.kill(held.pid, signal.SIGKILL)
                os.waitpid(held.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            held.pid = 0
        for fd in (held.report, held.reader):
            if fd >= 0:
                os.close(fd)
        held.report = held.reader = -1
        for path in self._paths(held.backup_id):
            self._remove(path)

    def _remove(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            self.log.warn("cannot remove {path}: {error}", path=str(path), error=str(error))


def _ended(status: int) -> str:
    """How the child ended, from its wait status (-1: nobody knows)."""
    if status < 0:
        return "the process writing the backup is gone"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"the process writing the backup was killed by signal {-code}"
    return f"the process writing the backup exited with status {code}"


def _read_report(fd: int) -> dict[str, Any]:
    """What the child wrote on its pipe before it exited ({} if nothing readable)."""
    try:
        data = os.read(fd, 65536)
    except OSError:
        data = b""
    finally:
        os.close(fd)
    try:
        report = json.loads(data)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}
