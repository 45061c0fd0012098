"""The audit log: what a record holds (and never holds), which commands are recorded,
rotation by size, the file's mode, and the hook on a metaserver connection."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from dfs.config import ConfigError, SecurityConfig, load_security_config
from dfs.metaserver import audit
from dfs.metaserver.audit import AuditLog, open_audit_log
from dfs.metaserver.log import MemoryLog
from dfs.metaserver.operations import (
    Caller,
    Chown,
    Mkdir,
)
from dfs.metaserver.registry import DataserverRegistry
from dfs.metaserver.service import Metaserver, MetaserverMetrics, MetaserverSession
from dfs.protocol import bulktls, commands
from dfs.protocol.commands import Bulk, DFSCommand
from dfs.protocol.errors import FileNotFound, InvalidArgument, NotLeader, PermissionDenied
from dfs.protocol.session import PeerSession
from dfs.protocol.version import ProtocolVersion
from dfs.security.identity import Identity, Role

ALICE = Identity(Role.CLIENT, "alice")
META = Identity(Role.METASERVER, "meta1")


def box_for(command: type[amp.Command], **arguments: Any) -> amp.AmpBox:
    """The box a caller sends for ``command`` with ``arguments``."""
    return amp._objectsToStrings(arguments, command.arguments, amp.AmpBox(), None)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1795000000.25)  # 2026-11-18T11:06:40.250Z
    return clock


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def audit_log(log_path: Path, clock: Clock):
    log = AuditLog.open(log_path, 1024 * 1024, 3, clock, "security_config.json")
    yield log
    log.stopService()


# -- the record ------------------------------------------------------------------------


def test_record_has_the_fixed_fields_in_order_then_the_arguments():
    record = audit.audit_record(
        1795000000.25,
        ALICE,
        "10.0.0.5:41234",
        "Chmod",
        {"path": "/home/alice/report", "mode": "0640"},
        "ok",
    )
    assert list(record) == [
        "time",
        "user",
        "role",
        "remote",
        "operation",
        "path",
        "destination",
        "result",
        "mode",
    ]
    assert record["time"] == "2026-11-18T11:06:40.250Z"
    assert (record["user"], record["role"], record["remote"]) == (
        "alice",
        "client",
        "10.0.0.5:41234",
    )
    assert record["destination"] is None


def test_an_argument_named_like_a_fixed_field_cannot_pass_for_the_caller():
    record = audit.audit_record(0.0, ALICE, "h:1", "AddUser", {"user": "mallory"}, "ok")
    assert (record["user"], record["target_user"]) == ("alice", "mallory")


def test_a_line_is_one_line_of_json_whatever_the_path_holds():
    record = audit.audit_record(0.0, ALICE, "h:1", "Mkdir", {"path": "/a\nb\u00e9\x00"}, "ok")
    line = audit.format_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["path"] == "/a\nb\u00e9\x00"


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(),
    st.lists(st.text(), max_size=3),
    st.floats(allow_nan=False),
)


@given(
    when=st.floats(min_value=0, max_value=4e9),
    caller=st.sampled_from([ALICE, META, None]),
    remote=st.text(),
    path=st.one_of(st.none(), st.text()),
    arguments=st.dictionaries(
        st.sampled_from(["destination", "mode", "user", "users", "recursive", "length"]),
        _VALUES,
    ),
    result=st.sampled_from(["ok", "PermissionDenied", "FileNotFound"]),
)
def test_a_line_built_directly_is_the_line_of_the_record(
    when, caller, remote, path, arguments, result
):
    arguments = {"path": path, **arguments} if path is not None else arguments
    record = audit.audit_record(when, caller, remote, "Mkdir", arguments, result)
    assert audit.record_line(when, caller, remote, "Mkdir", arguments, result) == (
        audit.format_line(record)
    )


@given(st.floats(min_value=0, max_value=4e9))
def test_the_time_is_stamped_as_datetime_rounds_it(when):
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(when, UTC)
    assert audit._stamp(when) == moment.strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def test_create_records_path_mode_and_flags_but_not_client_or_request_ids():
    box = box_for(
        commands.Create,
        path="/f",
        mode=0o644,
        replication=2,
        chunk_size=0,
        overwrite=True,
        client_id="c-1234",
        request_id="r-5678",
    )
    assert audit.recorded_arguments(commands.Create, box) == {
        "path": "/f",
        "mode": "0644",
        "replication": 2,
        "overwrite": True,
    }


def test_rename_records_source_as_path_and_destination():
    box = box_for(commands.Rename, source="/a", destination="/b", request_id="r")
    record = audit.audit_record(
        0.0, ALICE, "h:1", "Rename", audit.recorded_arguments(commands.Rename, box), "ok"
    )
    assert (record["path"], record["destination"]) == ("/a", "/b")
    assert "source" not in record


def test_decommission_records_the_target_name():
    box = box_for(commands.Decommission, name="ds3")
    assert audit.recorded_arguments(commands.Decommission, box) == {"name": "ds3"}


class Hostile(DFSCommand):
    """Arguments that must never reach the audit log, some under allow-listed names."""

    commandName = b"Hostile"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"token", amp.Unicode()),
        (b"read_token", amp.Unicode()),
        (b"key", amp.Unicode()),
        (b"data", Bulk()),
        (b"name", amp.String()),  # allow-listed name, raw bytes: still left out
        (b"files", amp.AmpList([(b"path", amp.Unicode())])),
        (b"users", amp.ListOf(amp.Unicode())),
    ]
    response: ClassVar[list] = []
    allowed_roles = frozenset({Role.CLIENT})


def test_tokens_keys_data_and_raw_bytes_are_never_recorded():
    box = box_for(
        Hostile,
        path="/p",
        token="SECRET-TOKEN",
        read_token="SECRET-READ",
        key="SECRET-KEY",
        data=b"SECRET-DATA" * 10000,
        name=b"SECRET-NAME",
        files=[{"path": "/SECRET-NESTED"}],
        users=["bob", "carol"],
    )
    recorded = audit.recorded_arguments(Hostile, box)
    assert recorded == {"path": "/p", "users": ["bob", "carol"]}
    assert b"SECRET" not in audit.format_line(
        audit.audit_record(0.0, ALICE, "h:1", "Hostile", recorded, "ok")
    )


def test_no_recorded_argument_name_looks_like_a_secret():
    for name in audit.RECORDED_ARGUMENTS:
        assert not any(word in name for word in audit.SECRET_WORDS), name


def test_an_undecodable_or_missing_argument_is_left_out():
    box = amp.AmpBox(path=b"\xff\xfe", mode=b"not a number")
    assert audit.recorded_arguments(commands.Chmod, box) == {}


# -- which commands, which outcomes ----------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        commands.Mkdir,
        commands.Create,
        commands.CloseFile,
        commands.GetChunks,
        commands.Stat,
        commands.ListDirectory,
        commands.Delete,
        commands.Rename,
        commands.Chmod,
        commands.Chown,
        commands.SetReplication,
        commands.DiskUsage,
        commands.Fsck,
        commands.Decommission,
        commands.Recommission,
        commands.ControlSafeMode,
        commands.ControlBalancer,
        commands.AddMetaserver,
        commands.RemoveMetaserver,
    ],
)
def test_namespace_and_admin_operations_are_audited(command):
    assert audit.audited(command)


@pytest.mark.parametrize(
    "command",
    [
        commands.Ping,
        commands.AddChunk,
        commands.CommitChunk,
        commands.RenewLease,
        commands.BumpChunkVersion,
        commands.ClusterSpace,
        commands.MetaserverStatus,
        commands.Heartbeat,
        commands.RegisterDataserver,
        commands.ReportChunks,
        commands.ChunkReceived,
    ],
)
def test_chunk_traffic_status_polls_and_server_traffic_are_not(command):
    assert not audit.audited(command)


def test_every_unaudited_name_is_a_command():
    names = {command.commandName for command in commands.ALL_COMMANDS}
    assert audit.UNAUDITED <= names


def test_outcome_names():
    assert audit.outcome_name({}) == "ok"
    denied = Failure(amp.RemoteAmpError(PermissionDenied.code, "no"))
    assert audit.outcome_name(denied) == "PermissionDenied"
    assert audit.outcome_name(Failure(amp.RemoteAmpError(NotLeader.code, ""))) is None
    assert audit.outcome_name(Failure(amp.RemoteAmpError(b"WEIRD", ""))) == "WEIRD"
    assert audit.outcome_name(Failure(KeyError("x"))) == "KeyError"


# -- the file --------------------------------------------------------------------------


def answer(audit_log, command, caller, outcome, **arguments):
    """Run a responder answering ``outcome`` through the audit log's wrapper, and
    write the records as a connection does before it sends the answer."""
    results: list[object] = []
    respond = audit_log.wrap(command, caller, "10.0.0.5:41234", lambda box: outcome)
    returned = respond(box_for(command, **arguments))
    if isinstance(returned, dict):
        returned = succeed(returned)
    returned.addBoth(results.append)
    audit_log.flush()
    return results[0]


def test_records_wait_for_the_answer_and_go_in_one_write(audit_log, log_path):
    writes: list[bytes] = []
    real_write = audit_log._file.write
    audit_log._file.write = lambda data: (writes.append(data), real_write(data))
    respond = audit_log.wrap(commands.Stat, ALICE, "h:1", lambda box: {"entry": None})
    for number in range(3):
        respond(box_for(commands.Stat, path=f"/file{number}"))
    assert audit_log.pending and log_path.read_text() == ""
    audit_log.flush()
    assert len(writes) == 1
    assert [r["path"] for r in lines_of(log_path)] == ["/file0", "/file1", "/file2"]
    assert audit_log.written == 3


def test_a_record_whose_answer_never_leaves_is_written_at_the_next_turn(audit_log, log_path, clock):
    waiting: Deferred[dict] = Deferred()
    respond = audit_log.wrap(commands.Mkdir, ALICE, "h:1", lambda box: waiting)
    respond(box_for(commands.Mkdir, **MKDIR))
    waiting.callback({})
    assert log_path.read_text() == ""
    clock.advance(0)
    assert [r["operation"] for r in lines_of(log_path)] == ["Mkdir"]


def test_a_responder_that_raises_is_recorded_and_its_failure_passes_through(audit_log, log_path):
    def refuse(box):
        raise PermissionDenied("no")

    respond = audit_log.wrap(commands.Mkdir, ALICE, "h:1", refuse)
    failures: list[Failure] = []
    respond(box_for(commands.Mkdir, **MKDIR)).addErrback(failures.append)
    audit_log.flush()
    assert failures[0].check(PermissionDenied)
    assert [r["result"] for r in lines_of(log_path)] == ["PermissionDenied"]


def test_stopping_writes_the_records_waiting(log_path, clock):
    log = AuditLog.open(log_path, 1024 * 1024, 3, clock, "security_config.json")
    respond = log.wrap(commands.Stat, ALICE, "h:1", lambda box: {"entry": None})
    respond(box_for(commands.Stat, path="/file"))
    log.stopService()
    assert [r["path"] for r in lines_of(log_path)] == ["/file"]


def test_allowed_and_denied_operations_are_written_and_answers_pass_through(audit_log, log_path):
    assert answer(audit_log, commands.Mkdir, ALICE, succeed({}), **MKDIR) == {}
    denied = answer(
        audit_log,
        commands.Delete,
        ALICE,
        fail(amp.RemoteAmpError(PermissionDenied.code, "no")),
        path="/x",
        recursive=True,
        request_id="r",
    )
    assert isinstance(denied, Failure) and denied.check(amp.RemoteAmpError)
    records = lines_of(log_path)
    assert [(r["operation"], r["path"], r["result"]) for r in records] == [
        ("Mkdir", "/home/alice/new", "ok"),
        ("Delete", "/x", "PermissionDenied"),
    ]
    assert records[0] == {
        "time": "2026-11-18T11:06:40.250Z",
        "user": "alice",
        "role": "client",
        "remote": "10.0.0.5:41234",
        "operation": "Mkdir",
        "path": "/home/alice/new",
        "destination": None,
        "result": "ok",
        "mode": "0755",
        "parents": False,
    }
    assert records[1]["recursive"] is True


MKDIR = {"path": "/home/alice/new", "mode": 0o755, "parents": False, "request_id": "r"}


def test_not_leader_answers_and_allowed_server_traffic_are_not_written(audit_log, log_path):
    ds1 = Identity(Role.DATASERVER, "ds1")
    not_leader = fail(amp.RemoteAmpError(NotLeader.code, "10.0.0.2:7000"))
    answer(audit_log, commands.Mkdir, ALICE, not_leader, **MKDIR).trap(amp.RemoteAmpError)
    heartbeat = {"name": "ds1", "capacity": 1, "free": 1, "used": 0, "chunks": 0}
    answer(audit_log, commands.Heartbeat, ds1, succeed({"delete": []}), **heartbeat)
    assert log_path.read_text() == ""
    denied = fail(amp.RemoteAmpError(PermissionDenied.code, "not you"))
    answer(audit_log, commands.Heartbeat, ds1, denied, **heartbeat).trap(amp.RemoteAmpError)
    assert [(r["operation"], r["role"], r["name"]) for r in lines_of(log_path)] == [
        ("Heartbeat", "dataserver", "ds1")
    ]


def test_created_mode_0600_and_an_existing_file_is_made_0600(tmp_path, clock):
    path = tmp_path / "audit.log"
    AuditLog.open(path, 4096, 1, clock, "s.json").stopService()
    assert mode_of(path) == 0o600
    path.chmod(0o644)
    AuditLog.open(path, 4096, 1, clock, "s.json").stopService()
    assert mode_of(path) == 0o600


def test_rotates_by_size_keeping_the_configured_backups_all_0600(tmp_path, clock):
    path = tmp_path / "audit.log"
    log = AuditLog.open(path, 4096, 2, clock, "s.json")
    for number in range(200):  # about 40 KB of records: many rotations
        answer(log, commands.Stat, ALICE, succeed({}), path=f"/file{number:04}")
    log.stopService()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    for name in names:
        file = tmp_path / name
        assert mode_of(file) == 0o600
        assert file.stat().st_size <= 4096 + 400  # rotated once past the limit
        assert all(record["operation"] == "Stat" for record in lines_of(file))
    newest = lines_of(path)[-1]
    assert newest["path"] == "/file0199"


def test_no_backups_keeps_only_the_current_file(tmp_path, clock):
    log = AuditLog.open(tmp_path / "audit.log", 4096, 0, clock, "s.json")
    for number in range(100):
        answer(log, commands.Stat, ALICE, succeed({}), path=f"/file{number:04}")
    log.stopService()
    assert [p.name for p in tmp_path.iterdir()] == ["audit.log"]


def test_a_write_failure_is_logged_and_operations_go_on(audit_log, log_path):
    events: list[dict] = []
    audit_log.log = Logger(observer=events.append)
    real_write = audit_log._file.write

    def broken(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    audit_log._file.write = broken
    assert answer(audit_log, commands.Mkdir, ALICE, succeed({}), **MKDIR) == {}
    assert answer(audit_log, commands.Mkdir, ALICE, succeed({}), **MKDIR) == {}
    assert [event["log_level"].name for event in events] == ["error"]
    assert "No space left on device" in events[0]["error"]
    audit_log._file.write = real_write
    answer(audit_log, commands.Mkdir, ALICE, succeed({}), **MKDIR)
    assert events[-1]["lost"] == 2
    assert len(lines_of(log_path)) == 1


def test_lost_records_are_counted_in_the_metrics(audit_log, clock, make_handlers):
    metaserver = Metaserver(
        identity=META,
        config=FakeConfig(),  # type: ignore[arg-type]
        clock=clock,
        registry=DataserverRegistry(dead_after=5.0),
        handlers=make_handlers(clock),
        audit=audit_log,
    )
    registry = CollectorRegistry()
    registry.register(MetaserverMetrics(metaserver))
    audit_log.lost = 3
    assert "dfs_audit_records_lost_total 3.0" in generate_latest(registry).decode()


def test_a_missing_folder_is_a_config_error(tmp_path, clock):
    config = tmp_path / "security_config.json"
    config.write_text(json.dumps({"audit_log": "nowhere/audit.log"}))
    with pytest.raises(ConfigError) as raised:
        open_audit_log(load_security_config(config), clock)
    message = str(raised.value)
    assert str(config) in message and "audit_log" in message
    assert str(tmp_path / "nowhere") in message


def test_a_folder_in_place_of_the_file_is_a_config_error(tmp_path, clock):
    # A file that cannot be opened for writing, whoever runs the test (root included).
    (tmp_path / "audit.log").mkdir()
    config = tmp_path / "security_config.json"
    config.write_text(json.dumps({"audit_log": "audit.log"}))
    with pytest.raises(ConfigError) as raised:
        open_audit_log(load_security_config(config), clock)
    message = str(raised.value)
    assert "\n" not in message
    expected = "expected a file the metaserver can write"
    assert message.startswith(f"{config}: key 'audit_log': {expected}")
    assert str(tmp_path / "audit.log") in message and "Is a directory" in message


def test_the_audit_log_is_on_by_default_in_var_log_dfs(tmp_path):
    config = tmp_path / "security_config.json"
    config.write_text("{}")
    assert load_security_config(config).audit_log == Path("/var/log/dfs/audit.log")


def test_no_audit_log_when_it_is_null_records_nothing(tmp_path, clock):
    config = tmp_path / "security_config.json"
    config.write_text(json.dumps({"audit_log": None}))
    log = open_audit_log(load_security_config(config), clock)
    assert not log.enabled and log.path is None
    assert answer(log, commands.Mkdir, ALICE, succeed({}), **MKDIR) == {}
    assert log.written == 0
    assert list(tmp_path.iterdir()) == [config]


# -- a reload --------------------------------------------------------------------------


def security(tmp_path: Path, **settings: Any) -> SecurityConfig:
    """security_config.json with ``settings``, as the server reads it."""
    config = tmp_path / "security_config.json"
    config.write_text(json.dumps(settings))
    return load_security_config(config)


def test_a_reload_turns_the_audit_log_on_moves_it_changes_its_rotation_and_turns_it_off(
    tmp_path, clock
):
    off = security(tmp_path, audit_log=None)
    log = open_audit_log(off, clock)
    events: list[dict] = []
    log.log = Logger(observer=events.append)

    on = security(tmp_path, audit_log="first.log")
    assert log.apply_security(off, on) == ()
    answer(log, commands.Mkdir, ALICE, succeed({}), **MKDIR)
    assert [r["operation"] for r in lines_of(tmp_path / "first.log")] == ["Mkdir"]

    (tmp_path / "logs").mkdir()
    moved = security(tmp_path, audit_log="logs/second.log", audit_log_backups=0)
    assert log.apply_security(on, moved) == ()
    assert log.settings is not None and log.settings.backups == 0
    answer(log, commands.Stat, ALICE, succeed({}), path="/x")
    assert [r["operation"] for r in lines_of(tmp_path / "first.log")] == ["Mkdir"]
    assert [r["operation"] for r in lines_of(tmp_path / "logs" / "second.log")] == ["Stat"]
    assert mode_of(tmp_path / "logs" / "second.log") == 0o600
    assert log._file is not None and log._file.maxRotatedFiles == 0

    unchanged = security(tmp_path, audit_log="logs/second.log", audit_log_backups=0)
    before = len(events)
    assert log.apply_security(moved, unchanged) == ()
    assert len(events) == before  # nothing to do, nothing said

    assert log.apply_security(unchanged, off) == ()
    assert not log.enabled
    answer(log, commands.Stat, ALICE, succeed({}), path="/y")
    assert len(lines_of(tmp_path / "logs" / "second.log")) == 1
    said = [formatEvent(event) for event in events]
    assert any(line.startswith("audit log ") and "first.log" in line for line in said)
    assert any("audit log off (it was " in line and "second.log" in line for line in said)


def test_a_reload_to_a_file_that_cannot_be_opened_keeps_the_one_in_use(tmp_path, clock):
    on = security(tmp_path, audit_log="audit.log")
    log = open_audit_log(on, clock)
    events: list[dict] = []
    log.log = Logger(observer=events.append)
    bad = security(tmp_path, audit_log="gone/audit.log", audit_log_max_bytes=8192)
    assert log.apply_security(on, bad) == ("audit_log", "audit_log_max_bytes", "audit_log_backups")
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith("not changing the audit log: ")
    assert "audit_log" in errors[0] and str(tmp_path / "gone") in errors[0]
    assert errors[0].endswith("still writing " + str(tmp_path / "audit.log"))
    answer(log, commands.Mkdir, ALICE, succeed({}), **MKDIR)
    assert len(lines_of(tmp_path / "audit.log")) == 1
    assert log.settings is not None and log.settings.max_bytes == on.audit_log_max_bytes
    log.stopService()


def test_a_session_records_nothing_while_the_audit_log_is_off_and_again_once_on(
    tmp_path, clock, make_handlers
):
    off = security(tmp_path, audit_log=None)
    log = open_audit_log(off, clock)
    client, pump = connect(ALICE, log, clock, make_handlers)
    assert call(client, pump, commands.Mkdir, **MKDIR) == {}
    log.apply_security(off, security(tmp_path, audit_log="audit.log"))
    call(client, pump, commands.Stat, path="/missing").trap(FileNotFound)
    assert [r["operation"] for r in lines_of(tmp_path / "audit.log")] == ["Stat"]
    log.stopService()


# -- the hook on a metaserver connection ------------------------------------------------


class FakeConfig:
    dataserver_dead_after = 5.0


def alices_home() -> MemoryLog:
    """A namespace where alice has a home folder to make directories in."""
    log = MemoryLog()
    admin = {"caller": Caller(user="dfs", superuser=True), "now": 0.0}
    log.namespace.apply(Mkdir("/home/alice", 0o755, True, **admin))
    log.namespace.apply(Chown("/home/alice", "alice", None, **admin))
    return log


def connect(caller: Identity, audit_log: AuditLog, clock: Clock, make_handlers):
    metaserver = Metaserver(
        identity=META,
        config=FakeConfig(),  # type: ignore[arg-type]
        clock=clock,
        registry=DataserverRegistry(dead_after=5.0),
        handlers=make_handlers(clock, alices_home()),
        audit=audit_log,
    )
    client, server, pump = connectedServerAndClient(
        lambda: MetaserverSession(metaserver), lambda: PeerSession(caller)
    )
    server.authenticated(caller)
    client.authenticated(META)
    return client, pump


def call(client, pump, command, **arguments):
    results: list[object] = []
    client.callRemote(command, **arguments).addBoth(results.append)
    pump.flush()
    return results[0]


def test_the_session_records_operations_and_role_refusals(
    audit_log, log_path, clock, make_handlers
):
    client, pump = connect(ALICE, audit_log, clock, make_handlers)
    assert call(client, pump, commands.Mkdir, **MKDIR) == {}
    call(client, pump, commands.Stat, path="/missing").trap(FileNotFound)
    call(client, pump, commands.Fsck, path="/", start=0, limit=10).trap(PermissionDenied)
    call(client, pump, commands.Ping)
    records = lines_of(log_path)
    assert [(r["operation"], r["path"], r["result"]) for r in records] == [
        ("Mkdir", "/home/alice/new", "ok"),
        ("Stat", "/missing", "FileNotFound"),
        ("Fsck", "/", "PermissionDenied"),
    ]
    assert {(r["user"], r["role"]) for r in records} == {("alice", "client")}


def test_a_client_of_protocol_2_0_asking_for_a_backup_is_told_why_not(clock, make_handlers):
    # Not an audit matter, but this file has the session harness: a 2.0 client's
    # StartBackup expects the whole backup's size in the answer, which 2.1 cannot give.
    client, pump = connect(Identity(Role.ADMIN, "root"), None, clock, make_handlers)
    server = pump.server
    server.peer_protocol = ProtocolVersion(2, 0)
    failure = call(client, pump, commands.StartBackup)
    failure.trap(InvalidArgument)
    message = str(failure.value)
    assert "protocol 2.0 cannot fetch them" in message and "2.1 or later" in message


def test_the_answers_of_a_read_leave_after_their_records_are_written(
    audit_log, log_path, clock, make_handlers, monkeypatch
):
    # What the log holds each time a connection sends the answers one read gathered.
    sent_with: list[str] = []
    monkeypatch.setattr(
        bulktls, "flusher", lambda transport: lambda: sent_with.append(log_path.read_text())
    )
    client, pump = connect(ALICE, audit_log, clock, make_handlers)
    call(client, pump, commands.Stat, path="/missing").trap(FileNotFound)
    assert any('"operation": "Stat"' in text for text in sent_with)
    assert [r["operation"] for r in lines_of(log_path)] == ["Stat"]
