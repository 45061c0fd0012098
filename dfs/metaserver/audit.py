"""The audit log: one JSON line per namespace and admin operation, allowed or denied.

The metaserver hands the responder of every command to :meth:`AuditLog.wrap`
(``MetaserverSession.locateResponder``), role refusals included. Once the answer is
known, one line records who asked (the name and role in their certificate, their
address), what (the command, its path and destination, and the few arguments named in
:data:`RECORDED_ARGUMENTS`) and how it ended: ``"ok"`` or the error's name, such as
``"PermissionDenied"``. Nothing else of a request is copied: never file data, tokens or
keys. Which commands are recorded is decided from the command class alone
(:func:`audited`), so a new command a person may send is recorded without more code.

The record is built by pure functions (:func:`audit_record`, :func:`format_line`);
:class:`AuditLog` writes the lines to a file rotated by size (Twisted's ``LogFile``),
created mode 0600 since it names users and paths. SIGHUP (:mod:`dfs.reload`) can turn
it on or off, move it, or change its rotation without a restart.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import CoroutineType
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

from dfs.config import ConfigError, SecurityConfig
from dfs.protocol.errors import ALL_ERRORS, NotLeader, PermissionDenied
from dfs.security.identity import Identity, Role

#: Commands a person may send that are not recorded when they succeed (a denial is
#: always recorded), by name. The per-chunk traffic of a write (and the renewal of chunk
#: tokens during a long read or write) happens between a Create or a GetChunks and the
#: end, which are recorded; the others read the state of the cluster, not of the
#: namespace, and are polled by tools and monitoring.
UNAUDITED: frozenset[bytes] = frozenset(
    {
        b"Ping",
        b"AddChunk",
        b"BumpChunkVersion",
        b"CommitChunk",
        b"RenewLease",
        b"RenewChunkTokens",
        # the polls and pages of a backup: StartBackup is the one worth a record
        b"BackupStatus",
        b"ReadBackup",
        b"EndBackup",
        b"ReportBadReplica",
        b"ClusterSpace",
        b"ListDataservers",
        b"MetaserverStatus",
    }
)

#: The only arguments copied into a record (``source`` is recorded as ``path``). An
#: allow-list, so that a new argument stays out of the audit log until someone decides
#: it belongs there.
RECORDED_ARGUMENTS: frozenset[str] = frozenset(
    {
        "path",
        "source",
        "destination",
        "mode",
        "owner",
        "group",
        "user",
        "users",
        "replication",
        "recursive",
        "overwrite",
        "parents",
        "length",
        "name",
        "action",
        "threshold",
        "raft",
        "files",
        "bytes",
        "add",
        "clear",
    }
)

#: Parts of an argument name that mark a secret: never recorded, allow-list or not.
SECRET_WORDS: tuple[str, ...] = ("token", "key", "password", "secret")

#: Argument types whose values are recorded: text, numbers, flags and lists of text.
#: Raw bytes (amp.String, Bulk) and nested lists never are, whatever their name.
_PLAIN_TYPES: tuple[type[amp.Argument], ...] = (amp.Unicode, amp.Integer, amp.Float, amp.Boolean)

_PEOPLE = frozenset({Role.CLIENT, Role.ADMIN})
_ERROR_NAMES: dict[bytes, str] = {error.code: error.__name__ for error in ALL_ERRORS}

OK = "ok"


@functools.cache
def audited(command: type[amp.Command]) -> bool:
    """Whether an answered ``command`` is recorded whatever its outcome: those a person
    (client or admin role) may send, but for :data:`UNAUDITED`. Dataserver and
    metaserver traffic is recorded only when denied."""
    allowed: frozenset[Role] = getattr(command, "allowed_roles", frozenset())
    return bool(allowed & _PEOPLE) and command.commandName not in UNAUDITED


def outcome_name(outcome: object) -> str | None:
    """``"ok"`` for an answer, the error's name for a failure, None for an answer
    that is not recorded (NotLeader: nothing happened here, the caller asks the leader)."""
    if not isinstance(outcome, Failure):
        return OK
    error = outcome.value
    if isinstance(error, amp.RemoteAmpError):
        code = error.errorCode
        if code == NotLeader.code:
            return None
        return _ERROR_NAMES.get(code, code.decode("ascii", "replace"))
    if isinstance(error, NotLeader):
        return None
    return type(error).__name__


def recorded_arguments(command: type[amp.Command], box: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The arguments of ``box`` worth an audit record, decoded, in the command's order.
    An argument missing or undecodable (the answer is then InvalidArgument) is left out."""
    found: dict[str, Any] = {}
    for wire_name, name, key, argument in _recorded_fields(command):
        raw = box.get(wire_name)
        if raw is None:
            continue
        try:
            value = argument.fromString(raw)
        except Exception:
            continue
        if name == "mode" and isinstance(value, int):
            value = f"{value:04o}"
        found[key] = value
    return found


@functools.cache
def _recorded_fields(command: type[amp.Command]) -> tuple[tuple[bytes, str, str, Any], ...]:
    """Of ``command``'s arguments, those an audit record holds: wire name, name, the
    record's key and the argument type; worked out once per command, as every
    request a person sends is recorded."""
    fields = []
    for wire_name, argument in command.arguments:
        name = wire_name.decode("ascii", "replace")
        if name not in RECORDED_ARGUMENTS or any(word in name for word in SECRET_WORDS):
            continue
        if _plain(argument):
            fields.append((wire_name, name, "path" if name == "source" else name, argument))
    return tuple(fields)


def _plain(argument: amp.Argument) -> bool:
    if isinstance(argument, amp.ListOf):
        return isinstance(argument.elementType, _PLAIN_TYPES)
    return isinstance(argument, _PLAIN_TYPES)


def _stamp(when: float) -> str:
    """``when`` as ISO 8601 in UTC to the millisecond (``2026-12-06T15:04:05.123Z``).
    Formatted from the fields, not with strftime: the C library may look at the time
    zone files on every call, and every request a person sends is recorded. The
    part up to the second is worked out once a second (:func:`_second`)."""
    # Rounded to the microsecond as datetime.fromtimestamp rounds (half to even).
    fraction, whole = math.modf(when)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1, micro + 1_000_000
    return f"{_second(int(whole))}{micro // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    """``2026-12-06T15:04:05.``: the stamp of second ``whole`` up to its milliseconds."""
    moment = datetime.fromtimestamp(whole, UTC)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}."
    )


def audit_record(
    when: float,
    caller: Identity | None,
    remote: str,
    operation: str,
    arguments: Mapping[str, Any],
    result: str,
) -> dict[str, Any]:
    """One record: the fixed fields first (``path`` and ``destination`` always there,
    null when the command has none), then the recorded arguments; one named like a
    fixed field is recorded as ``target_NAME`` (``target_user``)."""
    stamp = _stamp(when)
    record: dict[str, Any] = {
        "time": stamp,
        "user": caller.name if caller is not None else None,
        "role": caller.role.value if caller is not None else None,
        "remote": remote,
        "operation": operation,
        "path": arguments.get("path"),
        "destination": arguments.get("destination"),
        "result": result,
    }
    for name, value in arguments.items():
        if name in ("path", "destination"):
            continue
        # An argument named like a fixed field (the user a command acts on) must not
        # pass for the caller.
        record["target_" + name if name in record else name] = value
    return record


def format_line(record: Mapping[str, Any]) -> bytes:
    """One line of UTF-8 JSON. Control characters in a path are escaped by JSON, so a
    record is always exactly one line."""
    text = json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
    return (text + "\n").encode("utf-8", "backslashreplace")


_json_string: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _json(value: Any) -> str:
    """``value`` as :func:`format_line`'s ``json.dumps`` writes it, quicker for the
    text, numbers and flags a record mostly holds."""
    kind = type(value)
    if kind is str:
        return _json_string(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def record_line(
    when: float,
    caller: Identity | None,
    remote: str,
    operation: str,
    arguments: Mapping[str, Any],
    result: str,
) -> bytes:
    """``format_line(audit_record(...))``, the same bytes, built without the dict and
    the general JSON encoder: every request a person sends is recorded."""
    if caller is None:
        who = '"user": null, "role": null'
    else:
        who = f'"user": {_json_string(caller.name)}, "role": {_json_string(caller.role.value)}'
    parts = [
        f'{{"time": "{_stamp(when)}", {who}, "remote": {_json_string(remote)}, '
        f'"operation": {_json_string(operation)}, "path": {_json(arguments.get("path"))}, '
        f'"destination": {_json(arguments.get("destination"))}, '
        f'"result": {_json_string(result)}'
    ]
    for name, value in arguments.items():
        if name in ("path", "destination"):
            continue
        if name in _FIXED_FIELDS:
            name = "target_" + name
        parts.append(f", {_json_string(name)}: {_json(value)}")
    parts.append("}\n")
    return "".join(parts).encode("utf-8", "backslashreplace")


#: The fields every record starts with (:func:`audit_record`).
_FIXED_FIELDS = frozenset(
    ("time", "user", "role", "remote", "operation", "path", "destination", "result")
)


class AuditFile(LogFile):
    """Twisted's size-rotated log file, opened for appending and always mode 0600.

    Appending (rather than writing at the offset found at open) keeps lines whole
    even if two processes were given the same file. ``maxRotatedFiles`` 0 keeps no
    rotated file at all."""

    def _openFile(self) -> None:
        self.closed = False
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        descriptor = os.open(self.path, flags, 0o600)
        try:
            # An existing file may have been made readable by others: not any more.
            os.fchmod(descriptor, 0o600)
            self.size = os.fstat(descriptor).st_size
        except OSError:
            os.close(descriptor)
            raise
        self._file = os.fdopen(descriptor, "ab", buffering=0)

    def rotate(self) -> None:
        super().rotate()
        if self.maxRotatedFiles == 0:
            Path(f"{self.path}.1").unlink(missing_ok=True)

    def open_again(self) -> None:
        """Open the file afresh after a failure (a rotation may have stopped half way)."""
        file = getattr(self, "_file", None)
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        self._openFile()


@attrs.frozen
class AuditSettings:
    """Where the audit log goes and how it is rotated (security_config.json's
    ``audit_log``, ``audit_log_max_bytes`` and ``audit_log_backups``)."""

    path: Path
    max_bytes: int
    backups: int

    @classmethod
    def of(cls, security: SecurityConfig) -> AuditSettings | None:
        """The settings ``security`` names; None when it names no audit log."""
        if security.audit_log is None:
            return None
        return cls(security.audit_log, security.audit_log_max_bytes, security.audit_log_backups)


#: The keys of security_config.json the audit log is made from.
AUDIT_KEYS = ("audit_log", "audit_log_max_bytes", "audit_log_backups")


def open_audit_file(settings: AuditSettings, source: str) -> AuditFile:
    """Open (or create) the file ``settings`` names; ConfigError naming ``source``
    (the security config) and ``audit_log`` when it cannot be written."""
    path = settings.path
    if not path.parent.is_dir():
        raise ConfigError(
            source,
            "audit_log",
            "a file in an existing folder",
            f"{str(path)!r} (no folder {str(path.parent)!r})",
        )
    try:
        return AuditFile(
            path.name,
            str(path.parent),
            rotateLength=settings.max_bytes,
            defaultMode=0o600,
            maxRotatedFiles=settings.backups,
        )
    except OSError as error:
        raise ConfigError(
            source,
            "audit_log",
            "a file the metaserver can write",
            f"{str(path)!r} ({error.strerror or error})",
        ) from None


class AuditLog(Service):
    """Writes audit records to a rotated file. A record is built once its operation is
    answered and held only until that answer leaves: the connection that answers
    calls :meth:`flush` before it sends (``MetaserverSession``), so the lines of
    the requests one read of a connection brought go in one write, ahead of their
    answers, and a clean stop or a crash of the process loses no record of an
    answered request. A record whose answer never leaves (the connection was lost)
    is written at the reactor's next turn. A failure to write is logged as an error
    and operations go on (the count of lost records is logged when writing works
    again).

    With no file (security_config.json names none) it records nothing. A reload
    (:meth:`apply_security`) can turn it on or off, move it or change its rotation:
    the new file is opened before the old one is closed, so a record is never lost in
    between, and a new file that cannot be opened leaves the one in use as it is."""

    log = Logger()

    def __init__(
        self,
        file: AuditFile | None,
        clock: IReactorTime,
        settings: AuditSettings | None = None,
    ) -> None:
        self._file = file
        self._clock = clock
        #: the settings ``file`` was opened with (None: unknown, or no file)
        self.settings = settings
        self.path = file.path if file is not None else None
        self.written = 0
        self.lost = 0
        self._failing = False
        self._reopen = False
        #: lines built and not written yet, and the turn's flush that writes them
        self._pending: list[bytes] = []
        self._scheduled: IDelayedCall | None = None

    @classmethod
    def open(
        cls, path: Path, max_bytes: int, backups: int, clock: IReactorTime, source: str
    ) -> AuditLog:
        """Open (or create) the audit log at ``path``; ConfigError naming ``source``
        (the security config) and the key when it cannot be written."""
        settings = AuditSettings(path, max_bytes, backups)
        return cls(open_audit_file(settings, source), clock, settings)

    @property
    def enabled(self) -> bool:
        """Whether operations are recorded (a file is configured)."""
        return self._file is not None

    @property
    def pending(self) -> bool:
        """Whether records wait to be written (:meth:`flush`)."""
        return bool(self._pending)

    def wrap(
        self,
        command: type[amp.Command],
        caller: Identity | None,
        remote: str,
        responder: Callable[[amp.AmpBox], Any],
    ) -> Callable[[amp.AmpBox], Any]:
        """``responder`` recording its outcome once answered. The answer passes
        through unchanged."""

        def answered(outcome: object, box: amp.AmpBox) -> object:
            self.answered(command, caller, remote, box, outcome)
            return outcome

        def respond(box: amp.AmpBox) -> Any:
            # Called directly, not through maybeDeferred: an answer known at once (a
            # Stat) is recorded without a Deferred of its own.
            try:
                result = responder(box)
            except BaseException:
                failure = Failure()
                self.answered(command, caller, remote, box, failure)
                return fail(failure)
            if isinstance(result, CoroutineType):
                result = Deferred.fromCoroutine(result)
            if isinstance(result, Deferred):
                return result.addBoth(answered, box)
            self.answered(command, caller, remote, box, result)
            return result

        return respond

    def answered(
        self,
        command: type[amp.Command],
        caller: Identity | None,
        remote: str,
        box: Mapping[bytes, bytes],
        outcome: object,
    ) -> None:
        """Record ``command`` from ``caller`` answered with ``outcome`` (a result or a
        Failure), if it is one to record."""
        if self._file is None:
            return
        try:
            result = outcome_name(outcome)
            if result is None or not (audited(command) or result == PermissionDenied.__name__):
                return
            line = record_line(
                self._clock.seconds(),
                caller,
                remote,
                command.commandName.decode("ascii", "replace"),
                recorded_arguments(command, box),
                result,
            )
        except Exception:
            # The answer must still reach the caller, whatever went wrong here.
            self.log.failure("cannot build an audit record for {command}", command=command)
            return
        self._pending.append(line)
        if self._scheduled is None:
            self._scheduled = self._clock.callLater(0, self._turn_ended)

    def _turn_ended(self) -> None:
        self._scheduled = None
        self.flush()

    def flush(self) -> None:
        """Write the records built so far, in one write."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._write(b"".join(pending) if len(pending) > 1 else pending[0], len(pending))

    def write(self, line: bytes) -> None:
        """Write ``line`` (one record) now, after the records waiting."""
        self._pending.append(line)
        self.flush()

    def _write(self, lines: bytes, count: int) -> None:
        if self._file is None:
            return
        try:
            if self._reopen or self._file.closed:
                self._file.open_again()
                self._reopen = False
            self._file.write(lines)
        except (OSError, ValueError) as error:
            self._reopen = True
            self.lost += count
            if not self._failing:
                self._failing = True
                self.log.error(
                    "cannot write the audit log {path}: {error}; operations go on unrecorded",
                    path=self.path,
                    error=str(error),
                )
            return
        self.written += count
        if self._failing:
            self._failing = False
            self.log.warn(
                "the audit log {path} is written again; {lost} records lost so far",
                path=self.path,
                lost=self.lost,
            )

    # -- reload ----------------------------------------------------------------

    def apply_security(self, running: SecurityConfig, fresh: SecurityConfig) -> tuple[str, ...]:
        """Use the audit settings of ``fresh`` (security_config.json read again); the
        keys kept at their ``running`` value: all of them if the new file cannot be
        opened, none otherwise."""
        wanted = AuditSettings.of(fresh)
        if wanted == AuditSettings.of(running) and wanted == self.settings:
            return ()
        if self.use(wanted, str(fresh.source)):
            return ()
        return AUDIT_KEYS

    def use(self, settings: AuditSettings | None, source: str) -> bool:
        """Record to the file ``settings`` names from now on (None: record nothing).
        False, with one error logged, if it cannot be opened: the file in use stays."""
        before = self.path
        # Records of answers already given belong to the file in use until now.
        self.flush()
        if settings is None:
            self._close()
            self._file, self.settings, self.path = None, None, None
            if before is not None:
                self.log.info("audit log off (it was {path})", path=before)
            return True
        try:
            fresh = open_audit_file(settings, source)
        except ConfigError as error:
            self.log.error(
                "not changing the audit log: {reason}; {keeping}",
                reason=str(error),
                keeping="still writing " + before if before is not None else "it stays off",
            )
            return False
        self._close()
        self._file, self.settings, self.path = fresh, settings, fresh.path
        self._failing = self._reopen = False
        self.log.info(
            "audit log {path} (rotated at {max_bytes} bytes, {backups} kept){was}",
            path=self.path,
            max_bytes=settings.max_bytes,
            backups=settings.backups,
            was="" if before is None else "; it was " + before,
        )
        return True

    def _close(self) -> None:
        if self._file is not None and not self._file.closed:
            with contextlib.suppress(OSError):
                self._file.close()

    def stopService(self) -> None:
        super().stopService()
        self.flush()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        self._close()


def open_audit_log(security: SecurityConfig, clock: IReactorTime) -> AuditLog:
    """The audit log ``security`` names (one that records nothing when it names none);
    ConfigError naming the key when the file cannot be written."""
    settings = AuditSettings.of(security)
    if settings is None:
        return AuditLog(None, clock)
    return AuditLog(open_audit_file(settings, str(security.source)), clock, settings)
