"""Backup files (dfs.metaserver.backup) and the offline restore (dfs.metaserver.restore)."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dfs.client.admin import BACKUP_PAGE, ClusterAdmin
from dfs.localcluster import free_ports
from dfs.metaserver import backup, restore
from dfs.metaserver.journal import DurableJournal
from dfs.metaserver.namespace import (
    Namespace,
)
from dfs.metaserver.operations import (
    AddChunk,
    Caller,
    Close,
    CommitChunk,
    Create,
    Mkdir,
    Ok,
)
from dfs.metaserver.raft import NamespaceLog
from dfs.metaserver.syncobj import DurableSyncObj, SyncObjConf
from dfs.protocol.commands import ReadBackup, StartBackup
from dfs.protocol.errors import ChecksumMismatch

ALICE = Caller("alice")


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
    return backup.encode(
        namespace.snapshot(), leader="meta1", raft_index=42, raft_term=3, created=1000.0
    )


# -- the file format -------------------------------------------------------------------


def test_a_backup_reads_back_with_its_header_and_namespace(namespace):
    parsed = backup.parse(backup_of(namespace))
    assert parsed.header.leader == "meta1"
    assert (parsed.header.raft_index, parsed.header.raft_term) == (42, 3)
    assert parsed.header.format == backup.FORMAT
    assert parsed.namespace() == namespace
    assert "by meta1 at Raft index 42 (term 3)" in backup.describe(parsed.header)


def test_one_changed_byte_of_the_payload_fails_the_checksum(namespace):
    data = bytearray(backup_of(namespace))
    data[-20] ^= 0x01
    with pytest.raises(backup.BackupInvalid, match="SHA-256 checksum mismatch"):
        backup.parse(bytes(data))


def test_a_changed_header_field_fails_the_checksum(namespace):
    data = backup_of(namespace).replace(b'"raft_index":42', b'"raft_index":43')
    with pytest.raises(backup.BackupInvalid, match="SHA-256 checksum mismatch"):
        backup.parse(data)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"PK\x03\x04" + data, "not a DFS namespace backup"),
        (lambda data: data[:-1], "truncated or damaged"),
        (lambda data: data.replace(b'"format":1', b'"format":9'), "backup format 9"),
        (lambda data: data.replace(b'{"', b"[", 1), "header is damaged"),
        (lambda data: data[: len(backup.MAGIC) + 10], "header is truncated"),
    ],
)
def test_what_is_not_a_whole_backup_is_refused_before_unpickling(namespace, damage, message):
    with pytest.raises(backup.BackupInvalid, match=message):
        backup.parse(damage(backup_of(namespace)))


# -- holding a backup for its pages ----------------------------------------------------


def test_pages_come_from_the_backup_taken_and_it_expires_when_not_read():
    clock = Clock()
    store = backup.BackupStore(clock, keep=10.0)
    backup_id, held = store.add(b"0123456789")
    assert held.sha256 == hashlib.sha256(b"0123456789").hexdigest()
    assert store.page(backup_id, 0, 4) == b"0123"
    clock.advance(9)
    assert store.page(backup_id, 8, 4) == b"89"  # reading keeps it
    clock.advance(9)
    assert store.page(backup_id, 4, 2) == b"45"
    clock.advance(10)
    assert store.page(backup_id, 0, 4) is None
    assert store.page("nonsense", 0, 4) is None


def test_only_the_newest_backups_are_held():
    store = backup.BackupStore(Clock(), most=2)
    first, _ = store.add(b"a")
    second, _ = store.add(b"b")
    third, _ = store.add(b"c")
    assert store.page(first, 0, 1) is None
    assert (store.page(second, 0, 1), store.page(third, 0, 1)) == (b"b", b"c")


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


def test_every_member_restores_the_same_raft_snapshot_that_the_loader_accepts(namespace, tmp_path):
    members = [f"127.0.0.1:{port}" for port in free_ports(3)]
    data = backup_of(namespace)
    dumps = []
    for index in range(len(members)):
        data_dir = tmp_path / f"meta{index}"
        restored, closed, _ = restore.restore(data, data_dir, members)
        assert closed == ["/d/open"]
        dumps.append((data_dir / "raft" / "raft.dump").read_bytes())
    # Byte for byte the same: the members cannot disagree on where they start.
    assert dumps[0] == dumps[1] == dumps[2]

    me, *partners = members
    log, sync, journal = load_restored(tmp_path / "meta0" / "raft", me, partners)
    try:
        assert log.state == restored
        assert [entry[1] for entry in journal] == [1, 2]
        assert sync.raftLastApplied == 2
        assert sorted(node for node, _ in sync.members()) == sorted(partners)
    finally:
        sync.halt()


def test_a_file_being_written_at_backup_time_is_closed_at_its_committed_length(namespace, tmp_path):
    restored, _, _ = restore.restore(backup_of(namespace), tmp_path, ["127.0.0.1:7100"])
    stat = restored.stat("/d/open").value
    assert stat.length == 10
    assert stat.mtime == 1000.0  # the backup's time: the same on every member
    assert stat.under_construction is None
    assert restored.expired_leases(float("inf")) == []
    assert restored.verify() == []


def test_restore_refuses_a_folder_that_holds_raft_state(namespace, tmp_path):
    (tmp_path / "raft").mkdir()
    (tmp_path / "raft" / "raft.journal").write_bytes(b"")
    with pytest.raises(restore.RestoreRefused, match=r"already holds Raft state \(raft.journal\)"):
        restore.restore(backup_of(namespace), tmp_path, ["127.0.0.1:7100"])


def test_the_command_refuses_a_damaged_backup_with_one_line(namespace, tmp_path, capsys):
    config = tmp_path / "metaserver_config.json"
    config.write_text('{"name": "meta1", "data_dir": "%s"}' % (tmp_path / "data"))
    damaged = bytearray(backup_of(namespace))
    damaged[-5] ^= 0xFF
    (tmp_path / "backup").write_bytes(bytes(damaged))
    status = restore.main(["--config", str(config), str(tmp_path / "backup")])
    err = capsys.readouterr().err
    assert status == 65
    assert err.count("\n") == 1
    assert "SHA-256 checksum mismatch" in err
    assert not (tmp_path / "data" / "raft").exists()


# -- fetching through the client ---------------------------------------------------------


class HeldChannel:
    """A leader's channel that answers StartBackup and ReadBackup from a BackupStore."""

    def __init__(self, data: bytes, damage: bool = False) -> None:
        self.store = backup.BackupStore(Clock())
        self.data = data
        self.damage = damage
        self.pages: list[tuple[int, int]] = []

    async def call(self, command, **arguments):
        if command is StartBackup:
            backup_id, held = self.store.add(self.data)
            return {"backup_id": backup_id, "size": len(self.data), "sha256": held.sha256}
        assert command is ReadBackup
        self.pages.append((arguments["offset"], arguments["length"]))
        page = self.store.page(arguments["backup_id"], arguments["offset"], arguments["length"])
        return {"data": page[:-1] + b"?" if self.damage else page}


@pytest.mark.parametrize("size", [0, 1, BACKUP_PAGE, 2 * BACKUP_PAGE + 5])
def test_the_client_fetches_every_page_and_checks_the_whole(size):
    data = os.urandom(size)
    client = ClusterAdmin()
    client.metaserver = HeldChannel(data)
    out = io.BytesIO()
    answer = _result(client.backup(out))
    assert out.getvalue() == data
    assert answer == {"size": size, "sha256": hashlib.sha256(data).hexdigest()}
    assert all(length <= BACKUP_PAGE for _, length in client.metaserver.pages)


def test_the_client_refuses_a_backup_that_arrived_damaged():
    client = ClusterAdmin()
    client.metaserver = HeldChannel(b"x" * 100, damage=True)
    with pytest.raises(ChecksumMismatch, match="arrived damaged"):
        _result(client.backup(io.BytesIO()))


def _result(coroutine):
    failures = []
    deferred = Deferred.fromCoroutine(coroutine)
    results = []
    deferred.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    return results[0]
