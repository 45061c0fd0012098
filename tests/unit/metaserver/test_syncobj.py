"""The PySyncObj adapter: what DurableSyncObj changes in PySyncObj's handling of
messages and snapshots, and the start-up check of the private names it relies on."""

from __future__ import annotations

import pysyncobj.journal
import pysyncobj.serializer
import pysyncobj.syncobj
import pysyncobj.transport
import pytest

from dfs.localcluster import LocalCluster, free_ports
from dfs.metaserver import syncobj
from dfs.metaserver.journal import DurableJournal
from dfs.metaserver.namespace import (
    Namespace,
)
from dfs.metaserver.raft import NamespaceLog, RaftService, RaftSettings
from dfs.metaserver.syncobj import (
    DurableSyncObj,
    DurableTransport,
    SnapshotUnreadable,
    SyncObjConf,
    Unsupported,
)
from dfs.metaserver.tap import Options, makeService
from dfs.node import StartupError


@pytest.fixture
def follower(tmp_path):
    """A node whose journal holds entries 1..6 of term 1 and that never ticks."""
    me, partner = (f"127.0.0.1:{port}" for port in free_ports(2))
    journal = DurableJournal(tmp_path)
    for index in range(1, 7):
        journal.add(b"\x00", index, 1)  # no-op entries
    journal.sync()
    journal.setCurrentTerm(1, None)
    conf = SyncObjConf(
        autoTick=False,
        fullDumpFile=str(tmp_path / "raft.dump"),
        journalFile=str(tmp_path / "raft.journal"),
        dynamicMembershipChange=True,
    )
    sync = DurableSyncObj(me, [partner], conf, [NamespaceLog(Namespace())], journal)
    yield sync, syncobj.node_at(partner), journal
    sync.halt()


def test_a_snapshot_arriving_in_pieces_does_not_commit_an_unchecked_log(follower):
    sync, leader, _ = follower
    piece = (b"...", True, False)  # first piece of a snapshot, more to come
    for message in (
        {"type": "append_entries", "term": 2, "commit_index": 6, "serialized": piece},
        {"type": "append_entries", "term": 2, "commit_index": 6, "serialized": None},
    ):
        sync.receive(leader, message)
        # Entries 2..6 were never checked against the leader's log: not committed.
        assert sync.raftCommitIndex == 1


def test_entries_checked_against_the_leader_are_committed(follower):
    sync, leader, _ = follower
    message = {
        "type": "append_entries",
        "term": 2,
        "commit_index": 7,
        "prevLogIdx": 6,
        "prevLogTerm": 1,
        "entries": [(b"\x00", 7, 2)],
    }
    sync.receive(leader, message)
    assert sync.raftCommitIndex == 7


def test_the_answer_waits_until_the_new_entries_are_synced(follower, monkeypatch):
    sync, leader, journal = follower
    assert isinstance(sync.transport, DurableTransport)
    sent = []
    # What PySyncObj's transport really sends, without sockets.
    monkeypatch.setattr(
        pysyncobj.transport.TCPTransport, "send", lambda self, node, message: sent.append(message)
    )
    message = {
        "type": "append_entries",
        "term": 2,
        "commit_index": 6,
        "prevLogIdx": 6,
        "prevLogTerm": 1,
        "entries": [(b"\x00", 7, 2)],
    }
    sync.receive(leader, message)
    assert journal.dirty
    assert sent == []  # the acknowledgement is held
    syncs = journal.syncs
    sync.release()
    assert journal.syncs == syncs + 1
    assert [m["type"] for m in sent] == ["next_node_idx"]
    assert sent[0]["next_node_idx"] == 8


def write_snapshot(path, before, last, state):
    with open(path, "wb") as out:
        syncobj.write_full_dump(out, [{"state": state, "addresses": {}}], before, last, [])


def test_a_snapshot_newer_than_the_journal_start_trims_the_journal(follower, tmp_path):
    sync, _, journal = follower
    state = Namespace()
    write_snapshot(tmp_path / "raft.dump", (b"\x00", 3, 1), (b"\x00", 4, 1), state)
    sync.load_snapshot(clear_journal=False)
    # Entries 5 and 6, after the snapshot, are still there.
    assert [entry[1] for entry in journal] == [3, 4, 5, 6]
    assert sync.raftLastApplied == 4


def test_a_snapshot_the_journal_does_not_reach_replaces_it(follower, tmp_path):
    sync, _, journal = follower
    write_snapshot(tmp_path / "raft.dump", (b"\x00", 9, 2), (b"\x00", 10, 2), Namespace())
    sync.load_snapshot(clear_journal=False)
    assert [entry[1] for entry in journal] == [9, 10]


def test_an_unreadable_snapshot_stops_the_node(follower, tmp_path):
    sync, _, _ = follower
    (tmp_path / "raft.dump").write_bytes(b"not a snapshot")
    with pytest.raises(SnapshotUnreadable, match=r"raft\.dump"):
        sync.load_snapshot(clear_journal=False)


def test_a_snapshot_older_than_the_journal_start_stops_the_node(follower, tmp_path):
    sync, _, journal = follower
    journal.deleteEntriesTo(3)  # the journal now starts at entry 4
    write_snapshot(tmp_path / "raft.dump", (b"\x00", 1, 1), (b"\x00", 2, 1), Namespace())
    with pytest.raises(SnapshotUnreadable, match="entries in between are missing"):
        sync.load_snapshot(clear_journal=False)
    assert [entry[1] for entry in journal] == [4, 5, 6]  # nothing dropped


# -- the check of what PySyncObj must provide ----------------------------------------------

SyncObj = pysyncobj.syncobj.SyncObj


def test_the_installed_pysyncobj_has_everything_dfs_relies_on():
    assert syncobj.problems() == []
    syncobj.check_supported()


def _load_dump_file_renamed(self, clear):
    pass


@pytest.mark.parametrize(
    ("owner", "name", "replacement", "named"),
    [
        (SyncObj, "_SyncObj__loadDumpFile", None, "SyncObj._SyncObj__loadDumpFile"),
        (SyncObj, "_SyncObj__onMessageReceived", None, "SyncObj._SyncObj__onMessageReceived"),
        (
            SyncObj,
            "_SyncObj__loadDumpFile",
            _load_dump_file_renamed,
            "SyncObj._SyncObj__loadDumpFile(self, clearJournal)",
        ),
        (pysyncobj.syncobj, "createJournal", None, "pysyncobj.syncobj.createJournal"),
        (pysyncobj.syncobj, "_RAFT_STATE", None, "pysyncobj.syncobj._RAFT_STATE"),
        (pysyncobj.syncobj, "_COMMAND_TYPE", None, "pysyncobj.syncobj._COMMAND_TYPE"),
        (pysyncobj.serializer, "atomicReplace", None, "pysyncobj.serializer.atomicReplace"),
        (pysyncobj.journal.Journal, "onOneSecondTimer", ..., "DurableJournal.onOneSecondTimer"),
    ],
)
def test_a_missing_name_is_named_in_one_line_with_the_supported_version(
    monkeypatch, owner, name, replacement, named
):
    if replacement is None:
        monkeypatch.delattr(owner, name)
    elif replacement is ...:  # the journal interface gained a method ours lacks
        monkeypatch.delattr(DurableJournal, name)
    else:
        monkeypatch.setattr(owner, name, replacement)
    with pytest.raises(Unsupported) as caught:
        syncobj.check_supported()
    message = str(caught.value)
    assert "\n" not in message
    assert named in message
    assert "pysyncobj 0.3.17" in message


def test_an_attribute_pysyncobj_no_longer_sets_stops_the_node_being_built(monkeypatch, tmp_path):
    original = SyncObj.__init__

    def init_without_noop_index(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self._SyncObj__noopIDx

    monkeypatch.setattr(SyncObj, "__init__", init_without_noop_index)
    # A change the check of the classes cannot see: only the node shows it.
    monkeypatch.setattr(syncobj, "check_supported", lambda: None)
    conf = SyncObjConf(autoTick=False, fullDumpFile=str(tmp_path / "raft.dump"))
    me, partner = (f"127.0.0.1:{port}" for port in free_ports(2))
    with pytest.raises(Unsupported, match=r"missing SyncObj\(\)\._SyncObj__noopIDx; DFS needs"):
        DurableSyncObj(me, [partner], conf, [NamespaceLog(Namespace())], DurableJournal(tmp_path))


def test_a_journal_pysyncobj_did_not_take_stops_the_node_being_built(monkeypatch, tmp_path):
    original = SyncObj.__init__

    def init_with_its_own_journal(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._SyncObj__raftLog = pysyncobj.journal.MemoryJournal()

    monkeypatch.setattr(SyncObj, "__init__", init_with_its_own_journal)
    # A change the check of the classes cannot see: only the node shows it.
    monkeypatch.setattr(syncobj, "check_supported", lambda: None)
    conf = SyncObjConf(autoTick=False, fullDumpFile=str(tmp_path / "raft.dump"))
    me, partner = (f"127.0.0.1:{port}" for port in free_ports(2))
    with pytest.raises(Unsupported, match="SyncObj\\(\\) using createJournal"):
        DurableSyncObj(me, [partner], conf, [NamespaceLog(Namespace())], DurableJournal(tmp_path))


def test_opening_the_journal_with_an_unsupported_pysyncobj_is_a_startup_error(
    monkeypatch, tmp_path
):
    monkeypatch.delattr(SyncObj, "_SyncObj__loadDumpFile")
    settings = RaftSettings(
        self_address="127.0.0.1:1", partners=(), data_dir=tmp_path, password=None
    )
    raft = RaftService(None, settings, NamespaceLog(Namespace()))
    with pytest.raises(StartupError, match=r"SyncObj\._SyncObj__loadDumpFile"):
        raft.open_journal()
    assert raft.journal is None
    assert list(tmp_path.iterdir()) == []  # nothing opened, nothing written


def test_dfs_meta_with_an_unsupported_pysyncobj_stops_with_one_line(monkeypatch, tmp_path, capfd):
    cluster = LocalCluster.create(tmp_path / "cluster", dataservers=1)
    monkeypatch.delattr(pysyncobj.syncobj, "createJournal")
    options = Options()
    options.parseOptions(["--config", str(cluster.metaservers[0].config_path)])
    with pytest.raises(SystemExit) as caught:
        makeService(options)
    assert caught.value.code == 70
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("dfs-meta: error: pysyncobj 0.3.17 is not supported: ")
    assert "pysyncobj.syncobj.createJournal" in lines[0]


def test_a_leaders_new_entries_leave_before_its_journal_is_synced(follower, monkeypatch):
    # The followers sync them while the leader syncs its own; anything that answers
    # for the log (an acknowledgement, a vote) still waits for the sync.
    sync, partner, journal = follower
    sent = []
    monkeypatch.setattr(
        pysyncobj.transport.TCPTransport, "send", lambda self, node, message: sent.append(message)
    )
    journal.add(b"\x00", 7, 2)
    assert journal.dirty
    entries = {
        "type": "append_entries",
        "term": 2,
        "commit_index": 6,
        "prevLogIdx": 6,
        "prevLogTerm": 1,
        "entries": [(b"\x00", 7, 2)],
    }
    sync.transport.send(partner, entries)
    assert sent == [entries]
    sync.transport.send(partner, {"type": "next_node_idx", "next_node_idx": 8, "success": True})
    sync.transport.send(partner, dict(entries, commit_index=7))
    assert sent == [entries]  # behind a held answer, in order
    sync.release()
    assert [m["type"] for m in sent] == ["append_entries", "next_node_idx", "append_entries"]
