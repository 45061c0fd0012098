"""Backup files (dfs.metaserver.backup), the leader's backup folder
(dfs.metaserver.backupfolder), fetching through the client and the offline restore
(dfs.metaserver.restore)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import time
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dfs.client.admin import BACKUP_PAGE, BACKUP_WINDOW, ClusterAdmin
from dfs.localcluster import free_ports
from dfs.metaserver import backup, restore
from dfs.metaserver.backupfolder import BackupFolder, BackupState, HeldBackup
from dfs.metaserver.journal import DurableJournal
from dfs.metaserver.log import MemoryLog
from dfs.metaserver.namespace import (
    Namespace,
)
from dfs.metaserver.operations import (
    AddChunk,
    Caller,
    Close,
    CommitChunk,
    Create,
    CreateClosed,
    Mkdir,
    Ok,
)
from dfs.metaserver.raft import NamespaceLog
from dfs.metaserver.syncobj import DurableSyncObj, SyncObjConf
from dfs.protocol.commands import BackupStatus, EndBackup, ReadBackup, StartBackup
from dfs.protocol.errors import BackupFailed, ChecksumMismatch, InvalidArgument

ALICE = Caller("alice")
#: A backup written by DFS before backups went to disk (format 1), of the namespace
#: the ``namespace`` fixture builds, taken by meta1 at index 42 of term 3.
FORMAT_1 = Path(__file__).parent / "data" / "namespace-format1.backup"


def ok(namespace: Namespace, operation) -> object:
    result = namespace.apply(operation)
    assert isinstance(result, Ok), result
    return result.value


@pytest.fixture
def namespace() -> Namespace:
    """A directory, a complete file and one still being written (one chunk committed,
    one pending)."""
    state = Namespace(root_mode=0o777)
    ok(state, Mkdir("/d", caller=ALICE, now=1.0))
    for path in ("/d/done", "/d/open"):
        ok(state, Create(path, caller=ALICE, now=2.0, lease_holder="c1", lease_expires=90.0))
        chunk = ok(state, AddChunk(path, "c1", 90.0, caller=ALICE, now=3.0))
        ok(state, CommitChunk(path, "c1", chunk.chunk_id, 1, 10, caller=ALICE, now=4.0))
    ok(state, AddChunk("/d/open", "c1", 90.0, caller=ALICE, now=5.0))
    ok(state, Close("/d/done", "c1", 10, caller=ALICE, now=6.0))
    return state


def backup_of(namespace: Namespace) -> bytes:
    out = io.BytesIO()
    backup.write(namespace, out, leader="meta1", raft_index=42, raft_term=3, created=1000.0)
    return out.getvalue()


def checked(data: bytes) -> tuple[backup.Backup, Namespace]:
    source = io.BytesIO(data)
    found = backup.check(source)
    return found, found.namespace(source)


# -- the file format -------------------------------------------------------------------


def test_a_backup_reads_back_with_its_header_and_namespace(namespace):
    found, loaded = checked(backup_of(namespace))
    assert found.header.leader == "meta1"
    assert (found.header.raft_index, found.header.raft_term) == (42, 3)
    assert found.header.format == backup.FORMAT == 2
    assert loaded == namespace
    assert loaded.verify() == []
    assert "by meta1 at Raft index 42 (term 3)" in backup.describe(found.header)


def test_write_answers_the_size_and_sha256_of_the_whole_file(namespace):
    out = io.BytesIO()
    written = backup.write(namespace, out, leader="m", raft_index=1, raft_term=1)
    data = out.getvalue()
    assert written == backup.Written(len(data), hashlib.sha256(data).hexdigest())
    assert data.startswith(backup.MAGIC)
    assert data[-backup.TRAILER_LENGTH :].startswith(backup.END)


def test_a_namespace_written_in_small_batches_reads_back_equal(namespace):
    for index in range(25):
        ok(namespace, CreateClosed(f"/d/f{index}", caller=ALICE, now=7.0))
    out = io.BytesIO()
    namespace.write_snapshot(out, batch=4)
    out.seek(0)
    assert Namespace.read_snapshot(out) == namespace
    with pytest.raises((EOFError, pickle.UnpicklingError)):
        Namespace.read_snapshot(io.BytesIO(out.getvalue()[: len(out.getvalue()) // 2]))


def test_one_changed_byte_of_the_payload_fails_the_checksum(namespace):
    data = bytearray(backup_of(namespace))
    data[-backup.TRAILER_LENGTH - 20] ^= 0x01
    with pytest.raises(backup.BackupInvalid, match="SHA-256 checksum mismatch"):
        backup.check(io.BytesIO(bytes(data)))


def test_a_changed_header_field_fails_the_checksum(namespace):
    data = backup_of(namespace).replace(b'"raft_index":42', b'"raft_index":43')
    with pytest.raises(backup.BackupInvalid, match="SHA-256 checksum mismatch"):
        backup.check(io.BytesIO(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"PK\x03\x04" + data, "not a DFS namespace backup"),
        (lambda data: data[:-1], "no end mark: the file is truncated"),
        (lambda data: data[:-200] + data[-backup.TRAILER_LENGTH :], "truncated or damaged"),
        (lambda data: data.replace(b'"format":2', b'"format":9'), "backup format 9"),
        (lambda data: data.replace(b'{"', b"[", 1), "header is damaged"),
        (lambda data: data[: len(backup.MAGIC) + 10], "header is truncated"),
    ],
)
def test_what_is_not_a_whole_backup_is_refused_before_unpickling(namespace, damage, message):
    with pytest.raises(backup.BackupInvalid, match=message):
        backup.check(io.BytesIO(damage(backup_of(namespace))))


def test_a_backup_of_format_1_still_restores(namespace):
    data = FORMAT_1.read_bytes()
    found, loaded = checked(data)
    assert found.header.format == 1
    assert (found.header.leader, found.header.raft_index) == ("meta1", 42)
    assert loaded == namespace
    damaged = bytearray(data)
    damaged[-20] ^= 0x01
    with pytest.raises(backup.BackupInvalid, match="SHA-256 checksum mismatch"):
        backup.check(io.BytesIO(bytes(damaged)))
    with pytest.raises(backup.BackupInvalid, match="truncated or damaged"):
        backup.check(io.BytesIO(data[:-1]))


# -- the leader's backup folder ------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(namespace) -> MemoryLog:
    return MemoryLog(namespace)


@pytest.fixture
def folder(clock, log, tmp_path):
    backups = BackupFolder(clock, log, tmp_path / "backups", keep=60.0)
    backups.startService()
    yield backups
    backups.stopService()


def written(folder: BackupFolder, clock: Clock, backup_id: str, timeout: float = 30) -> HeldBackup:
    """The backup once its child has exited, driving the folder's clock meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        clock.advance(0.05)
        held = folder.status(backup_id)
        if held.state is not BackupState.WRITING:
            return held
        time.sleep(0.01)
    raise AssertionError(f"backup {backup_id} not written within {timeout} s")


def fetch(folder: BackupFolder, backup_id: str, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += folder.page(backup_id, len(data), 1000)
    return data


def test_a_child_writes_the_backup_as_the_namespace_was_when_it_started(
    folder, clock, log, namespace
):
    before = Namespace.read_snapshot(io.BytesIO(_snapshot(namespace)))
    backup_id = folder.start("meta1")
    # Applied after the fork: not in the backup.
    ok(log.namespace, Mkdir("/later", caller=ALICE, now=8.0))
    held = written(folder, clock, backup_id)
    assert held.state is BackupState.READY
    path = folder.folder / f"{backup_id}.backup"
    assert path.stat().st_mode & 0o777 == 0o600
    assert not (folder.folder / f"{backup_id}.partial").exists()
    data = fetch(folder, backup_id, held.size)
    assert (len(data), hashlib.sha256(data).hexdigest()) == (held.size, held.sha256)
    found, loaded = checked(data)
    assert found.header.leader == "meta1"
    assert loaded == before
    assert not loaded.stat("/later").ok

    folder.end(backup_id)
    assert list(folder.folder.iterdir()) == []
    with pytest.raises(InvalidArgument, match="take the backup again"):
        folder.status(backup_id)
    folder.end(backup_id)  # again: nothing to do


def test_a_backup_that_cannot_be_written_fails_with_the_reason(folder, clock):
    folder.folder.rmdir()
    folder.folder.write_bytes(b"")  # a file where the folder was
    backup_id = folder.start("meta1")
    with pytest.raises(BackupFailed, match="Not a directory"):
        written(folder, clock, backup_id)
    with pytest.raises(BackupFailed):
        folder.page(backup_id, 0, 10)


def test_a_backup_nobody_asks_about_is_deleted(folder, clock):
    backup_id = folder.start("meta1")
    written(folder, clock, backup_id)
    clock.advance(59)
    folder.page(backup_id, 0, 10)  # reading keeps it
    clock.advance(59)
    assert (folder.folder / f"{backup_id}.backup").exists()
    clock.advance(2)
    assert list(folder.folder.iterdir()) == []
    with pytest.raises(InvalidArgument, match="not held here"):
        folder.page(backup_id, 0, 10)


def test_pages_wait_for_the_end_of_the_writing(folder, clock):
    backup_id = folder.start("meta1")
    if folder.status(backup_id).state is BackupState.WRITING:
        with pytest.raises(InvalidArgument, match="still being written"):
            folder.page(backup_id, 0, 10)
    written(folder, clock, backup_id)


def test_only_the_newest_backups_are_held(clock, log, tmp_path):
    folder = BackupFolder(clock, log, tmp_path / "backups", most=2)
    folder.startService()
    try:
        first, second, third = (folder.start("meta1") for _ in range(3))
        with pytest.raises(InvalidArgument):
            folder.status(first)
        for backup_id in (second, third):
            written(folder, clock, backup_id)
        assert sorted(path.name for path in folder.folder.iterdir()) == sorted(
            f"{backup_id}.backup" for backup_id in (second, third)
        )
    finally:
        folder.stopService()


def test_stopping_ends_every_child_and_leftovers_go_at_start(clock, log, tmp_path):
    folder = BackupFolder(clock, log, tmp_path / "backups")
    folder.startService()
    backup_id = folder.start("meta1")
    folder.stopService()
    assert list(folder.folder.iterdir()) == []
    with pytest.raises(InvalidArgument):
        folder.status(backup_id)
    (folder.folder / "0123.partial").write_bytes(b"x")
    (folder.folder / "4567.backup").write_bytes(b"x")
    (folder.folder / "notes.txt").write_bytes(b"kept")
    folder.startService()
    assert [path.name for path in folder.folder.iterdir()] == ["notes.txt"]
    folder.stopService()


def _snapshot(namespace: Namespace) -> bytes:
    out = io.BytesIO()
    namespace.write_snapshot(out)
    return out.getvalue()


# -- restoring ---------------------------------------------------------------------------


def load_restored(raft_dir, me, partners) -> tuple[NamespaceLog, DurableSyncObj, DurableJournal]:
    """What a metaserver starting on the restored folder loads (PySyncObj's snapshot
    loader over our journal), without ticking."""
    journal = DurableJournal(raft_dir)
    log = NamespaceLog(Namespace())
    conf = SyncObjConf(
        autoTick=False,
        fullDumpFile=str(raft_dir / "raft.dump"),
        journalFile=str(raft_dir / "raft.journal"),
        dynamicMembershipChange=True,
    )
    sync = DurableSyncObj(me, partners, conf, [log], journal)
    sync.load_snapshot(clear_journal=False)
    return log, sync, journal


@pytest.fixture
def backup_file(namespace, tmp_path) -> Path:
    path = tmp_path / "namespace.backup"
    path.write_bytes(backup_of(namespace))
    return path


def test_every_member_restores_the_same_raft_snapshot_that_the_loader_accepts(
    backup_file, tmp_path
):
    members = [f"127.0.0.1:{port}" for port in free_ports(3)]
    dumps = []
    for index in range(len(members)):
        data_dir = tmp_path / f"meta{index}"
        restored, closed, _ = restore.restore(backup_file, data_dir, members)
        assert closed == ["/d/open"]
        dumps.append((data_dir / "raft" / "raft.dump").read_bytes())
    # Byte for byte the same: the members cannot disagree on where they start.
    assert dumps[0] == dumps[1] == dumps[2]
    assert not (tmp_path / "meta0" / "raft" / "raft.dump.tmp").exists()

    me, *partners = members
    log, sync, journal = load_restored(tmp_path / "meta0" / "raft", me, partners)
    try:
        assert log.state == restored
        assert [entry[1] for entry in journal] == [1, 2]
        assert sync.raftLastApplied == 2
        assert sorted(node for node, _ in sync.members()) == sorted(partners)
    finally:
        sync.halt()


def test_a_file_being_written_at_backup_time_is_closed_at_its_committed_length(
    backup_file, tmp_path
):
    restored, _, _ = restore.restore(backup_file, tmp_path, ["127.0.0.1:7100"])
    stat = restored.stat("/d/open").value
    assert stat.length == 10
    assert stat.mtime == 1000.0  # the backup's time: the same on every member
    assert stat.under_construction is None
    assert restored.expired_leases(float("inf")) == []
    assert restored.verify() == []


def test_a_format_1_backup_restores_as_it_did(tmp_path, namespace):
    restored, closed, description = restore.restore(FORMAT_1, tmp_path, ["127.0.0.1:7100"])
    assert closed == ["/d/open"]
    assert restored.stat("/d/done").value.length == 10
    assert "at Raft index 42 (term 3)" in description


def test_restore_refuses_a_folder_that_holds_raft_state(backup_file, tmp_path):
    (tmp_path / "raft").mkdir()
    (tmp_path / "raft" / "raft.journal").write_bytes(b"")
    with pytest.raises(restore.RestoreRefused, match=r"already holds Raft state \(raft.journal\)"):
        restore.restore(backup_file, tmp_path, ["127.0.0.1:7100"])


def test_the_command_refuses_a_damaged_backup_with_one_line(namespace, tmp_path, capsys):
    config = tmp_path / "metaserver_config.json"
    config.write_text('{"name": "meta1", "data_dir": "%s"}' % (tmp_path / "data"))
    damaged = bytearray(backup_of(namespace))
    damaged[-backup.TRAILER_LENGTH - 5] ^= 0xFF
    (tmp_path / "backup").write_bytes(bytes(damaged))
    status = restore.main(["--config", str(config), str(tmp_path / "backup")])
    err = capsys.readouterr().err
    assert status == 65
    assert err.count("\n") == 1
    assert "SHA-256 checksum mismatch" in err
    assert not (tmp_path / "data" / "raft").exists()


def test_the_command_names_a_backup_format_it_does_not_know(namespace, tmp_path, capsys):
    config = tmp_path / "metaserver_config.json"
    config.write_text('{"name": "meta1", "data_dir": "%s"}' % (tmp_path / "data"))
    (tmp_path / "backup").write_bytes(backup_of(namespace).replace(b'"format":2', b'"format":3'))
    status = restore.main(["--config", str(config), str(tmp_path / "backup")])
    err = capsys.readouterr().err
    assert status == 65
    assert err.splitlines() == [
        f"dfs-meta-restore: error: {tmp_path / 'backup'}: backup format 3: this version "
        "of DFS restores formats 1 and 2"
    ]


# -- fetching through the client ---------------------------------------------------------


class Leader:
    """A leader's channel holding one backup of ``data``: the pages it is asked for
    wait until the test answers them."""

    def __init__(self, data: bytes, damage: bool = False, failure: str = "") -> None:
        self.data = data
        self.damage = damage
        self.failure = failure
        self.polls = 0
        self.asked: list[tuple[int, int, Deferred[None]]] = []
        self.ended: list[str] = []

    async def call(self, command, **arguments):
        if command is StartBackup:
            return {"backup_id": "b1"}
        if command is BackupStatus:
            self.polls += 1
            if self.failure:
                raise BackupFailed(self.failure)
            if self.polls < 3:
                return {"state": "writing", "size": -1, "sha256": ""}
            sha256 = hashlib.sha256(self.data).hexdigest()
            return {"state": "ready", "size": len(self.data), "sha256": sha256}
        assert command is ReadBackup
        offset, length = arguments["offset"], arguments["length"]
        answered: Deferred[None] = Deferred()
        self.asked.append((offset, length, answered))
        await answered
        page = self.data[offset : offset + length]
        return {"data": page[:-1] + b"?" if self.damage else page}

    async def call_within(self, seconds, command, **arguments):
        assert command is EndBackup
        self.ended.append(arguments["backup_id"])
        return {}

    def outstanding(self) -> int:
        return sum(1 for *_, answered in self.asked if not answered.called)

    def answer_all(self) -> int:
        """Answer the pages asked for, oldest first; the most outstanding at once."""
        most = 0
        for _ in range(10_000):
            pending = [answered for *_, answered in self.asked if not answered.called]
            if not pending:
                return most
            most = max(most, len(pending))
            pending[0].callback(None)
        raise AssertionError("the client keeps asking")


def admin_client(leader: Leader) -> tuple[ClusterAdmin, Clock]:
    client = ClusterAdmin()
    clock = Clock()
    client._reactor = clock
    client.metaserver = leader  # type: ignore[assignment]
    return client, clock


def run(client_call, clock: Clock, leader: Leader) -> tuple[list, list]:
    results: list = []
    failures: list = []
    Deferred.fromCoroutine(client_call).addCallbacks(results.append, failures.append)
    clock.advance(0.05)
    clock.advance(0.1)
    most = leader.answer_all()
    assert most <= BACKUP_WINDOW
    return results, failures


@pytest.mark.parametrize("size", [0, 1, BACKUP_PAGE, 5 * BACKUP_PAGE + 5])
def test_the_client_fetches_every_page_with_a_window_and_checks_the_whole(size):
    data = os.urandom(size)
    leader = Leader(data)
    client, clock = admin_client(leader)
    out = io.BytesIO()
    results, failures = run(client.backup(out), clock, leader)
    assert failures == []
    assert out.getvalue() == data
    assert results == [{"size": size, "sha256": hashlib.sha256(data).hexdigest()}]
    assert [offset for offset, _, _ in leader.asked] == list(range(0, size, BACKUP_PAGE))
    assert all(length <= BACKUP_PAGE for _, length, _ in leader.asked)
    assert leader.ended == ["b1"]


def test_the_client_refuses_a_backup_that_arrived_damaged_and_ends_it():
    leader = Leader(b"x" * 100, damage=True)
    client, clock = admin_client(leader)
    _, failures = run(client.backup(io.BytesIO()), clock, leader)
    assert failures and failures[0].check(ChecksumMismatch)
    assert "arrived damaged" in str(failures[0].value)
    assert leader.ended == ["b1"]


def test_the_client_reports_a_backup_the_leader_could_not_write():
    leader = Leader(b"", failure="writing b1.partial: No space left on device")
    client, clock = admin_client(leader)
    _, failures = run(client.backup(io.BytesIO()), clock, leader)
    assert failures and failures[0].check(BackupFailed)
    assert "No space left on device" in str(failures[0].value)
    assert leader.ended == ["b1"]
