"""DurableSyncObj: what it changes in PySyncObj's handling of messages and snapshots."""

from __future__ import annotations

import gzip
import pickle

import pytest
from pysyncobj import SyncObjConf
from pysyncobj.node import TCPNode
from pysyncobj.transport import TCPTransport

from dfs.localcluster import free_ports
from dfs.metaserver.journal import DurableJournal
from dfs.metaserver.namespace import Namespace
from dfs.metaserver.raft import DurableSyncObj, DurableTransport, NamespaceLog, SnapshotUnreadable


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
    yield sync, TCPNode(partner), journal
    sync.halt()


def test_a_snapshot_arriving_in_pieces_does_not_commit_an_unchecked_log(follower):
    sync, leader, _ = follower
    piece = (b"...", True, False)  # first piece of a snapshot, more to come
    for message in (
        {"type": "append_entries", "term": 2, "commit_index": 6, "serialized": piece},
        {"type": "append_entries", "term": 2, "commit_index": 6, "serialized": None},
    ):
        sync._SyncObj__onMessageReceived(leader, message)
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
    sync._SyncObj__onMessageReceived(leader, message)
    assert sync.raftCommitIndex == 7


def test_the_answer_waits_until_the_new_entries_are_synced(follower, monkeypatch):
    sync, leader, journal = follower
    assert isinstance(sync._transport, DurableTransport)
    sent = []
    # What the transport really sends, without sockets.
    monkeypatch.setattr(TCPTransport, "send", lambda self, node, message: sent.append(message))
    message = {
        "type": "append_entries",
        "term": 2,
        "commit_index": 6,
        "prevLogIdx": 6,
        "prevLogTerm": 1,
        "entries": [(b"\x00", 7, 2)],
    }
    sync._SyncObj__onMessageReceived(leader, message)
    assert journal.dirty
    assert sent == []  # the acknowledgement is held
    syncs = journal.syncs
    sync.release()
    assert journal.syncs == syncs + 1
    assert [m["type"] for m in sent] == ["next_node_idx"]
    assert sent[0]["next_node_idx"] == 8


def write_snapshot(path, before, last, state):
    consumer = NamespaceLog(state)
    data = ([{}, consumer._serialize()], last, before, set())
    with open(path, "wb") as handle, gzip.GzipFile(fileobj=handle, mode="wb") as packed:
        pickle.dump(data, packed)


def test_a_snapshot_newer_than_the_journal_start_trims_the_journal(follower, tmp_path):
    sync, _, journal = follower
    state = Namespace()
    write_snapshot(tmp_path / "raft.dump", (b"\x00", 3, 1), (b"\x00", 4, 1), state)
    sync._SyncObj__loadDumpFile(clearJournal=False)
    # Entries 5 and 6, after the snapshot, are still there.
    assert [entry[1] for entry in journal] == [3, 4, 5, 6]
    assert sync.raftLastApplied == 4


def test_a_snapshot_the_journal_does_not_reach_replaces_it(follower, tmp_path):
    sync, _, journal = follower
    write_snapshot(tmp_path / "raft.dump", (b"\x00", 9, 2), (b"\x00", 10, 2), Namespace())
    sync._SyncObj__loadDumpFile(clearJournal=False)
    assert [entry[1] for entry in journal] == [9, 10]


def test_an_unreadable_snapshot_stops_the_node(follower, tmp_path):
    sync, _, _ = follower
    (tmp_path / "raft.dump").write_bytes(b"not a snapshot")
    with pytest.raises(SnapshotUnreadable, match=r"raft\.dump"):
        sync._SyncObj__loadDumpFile(clearJournal=False)


def test_a_snapshot_older_than_the_journal_start_stops_the_node(follower, tmp_path):
    sync, _, journal = follower
    journal.deleteEntriesTo(3)  # the journal now starts at entry 4
    write_snapshot(tmp_path / "raft.dump", (b"\x00", 1, 1), (b"\x00", 2, 1), Namespace())
    with pytest.raises(SnapshotUnreadable, match="entries in between are missing"):
        sync._SyncObj__loadDumpFile(clearJournal=False)
    assert [entry[1] for entry in journal] == [4, 5, 6]  # nothing dropped
