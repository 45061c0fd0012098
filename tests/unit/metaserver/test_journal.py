"""The Raft journal: group commit, checksums, torn tails, crash-safe trims, and what
survives a simulated power cut."""

from __future__ import annotations

import os

import pytest

from dfs.metaserver.filelayer import FileLayer
from dfs.metaserver.journal import DurableJournal, JournalCorrupt, JournalFailed, encode
from dfs.metaserver.powercut import PowerCutFileLayer


def entries(first: int, count: int, term: int = 1) -> list[tuple[bytes, int, int]]:
    return [(b"op-%d" % index, index, term) for index in range(first, first + count)]


def fill(journal: DurableJournal, items: list[tuple[bytes, int, int]]) -> None:
    for item in items:
        journal.add(*item)


def test_synced_entries_come_back_after_a_restart(tmp_path):
    journal = DurableJournal(tmp_path)
    fill(journal, entries(1, 5))
    assert journal.dirty
    journal.sync()
    assert not journal.dirty
    journal._destroy()
    again = DurableJournal(tmp_path)
    assert list(again) == entries(1, 5)


def test_many_entries_share_one_fsync(tmp_path):
    journal = DurableJournal(tmp_path)
    fill(journal, entries(1, 100))
    journal.sync()
    journal.sync()  # nothing new: no second fsync
    assert journal.syncs == 1


def test_a_power_cut_forgets_unsynced_entries_and_keeps_synced_ones(tmp_path):
    layer = PowerCutFileLayer(tmp_path)
    journal = DurableJournal(tmp_path, layer)
    fill(journal, entries(1, 3))
    journal.sync()
    fill(journal, entries(4, 3))
    journal._layer.write(journal._fd, journal._pending)  # written, never fsynced
    journal._pending.clear()
    journal._destroy()
    layer.cut()
    assert list(DurableJournal(tmp_path, layer)) == entries(1, 3)


def test_term_and_vote_are_durable_at_once(tmp_path):
    layer = PowerCutFileLayer(tmp_path)
    journal = DurableJournal(tmp_path, layer)
    journal.setCurrentTerm(7, "127.0.0.1:7100")
    journal._destroy()
    layer.cut()
    again = DurableJournal(tmp_path, layer)
    assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (7, "127.0.0.1:7100")


def test_cutting_the_tail_is_durable_with_the_next_sync(tmp_path):
    layer = PowerCutFileLayer(tmp_path)
    journal = DurableJournal(tmp_path, layer)
    fill(journal, entries(1, 6))
    journal.sync()
    journal.deleteEntriesFrom(3)  # the leader overruled entries 4..6
    fill(journal, entries(4, 2, term=2))
    assert journal.dirty
    journal.sync()
    journal._destroy()
    layer.cut()
    assert list(DurableJournal(tmp_path, layer)) == entries(1, 3) + entries(4, 2, term=2)


def test_cutting_unsynced_entries_needs_no_disk_write(tmp_path):
    journal = DurableJournal(tmp_path)
    fill(journal, entries(1, 2))
    journal.sync()
    fill(journal, entries(3, 3))
    journal.deleteEntriesFrom(3)
    journal.add(b"other", 4, 2)
    journal.sync()
    journal._destroy()
    assert list(DurableJournal(tmp_path)) == [*entries(1, 3), (b"other", 4, 2)]


def test_trimming_the_front_survives_a_restart_and_keeps_unsynced_entries(tmp_path):
    layer = PowerCutFileLayer(tmp_path)
    journal = DurableJournal(tmp_path, layer)
    fill(journal, entries(1, 10))
    journal.sync()
    fill(journal, entries(11, 2))
    journal.deleteEntriesTo(8)  # a snapshot covers 1..8
    assert not journal.dirty  # the rewrite is synced, the new entries included
    journal._destroy()
    layer.cut()
    assert list(DurableJournal(tmp_path, layer)) == entries(9, 4)


def test_a_power_cut_during_a_trim_leaves_the_old_journal_whole(tmp_path):
    class CutBeforeRename(PowerCutFileLayer):
        armed = False

        def rename(self, source, target):
            if self.armed:
                raise OSError("power lost")
            super().rename(source, target)

    layer = CutBeforeRename(tmp_path)
    journal = DurableJournal(tmp_path, layer)
    fill(journal, entries(1, 10))
    journal.sync()
    layer.armed = True
    with pytest.raises(OSError):
        journal.deleteEntriesTo(5)
    os.close(journal._fd)
    layer.cut()
    assert list(DurableJournal(tmp_path, PowerCutFileLayer(tmp_path))) == entries(1, 10)


def test_a_torn_last_record_is_dropped(tmp_path):
    journal = DurableJournal(tmp_path)
    fill(journal, entries(1, 4))
    journal.sync()
    journal._destroy()
    path = tmp_path / "raft.journal"
    size = path.stat().st_size
    record = encode(b"op-5", 5, 1)
    with open(path, "ab") as handle:
        handle.write(record[: len(record) // 2])
    again = DurableJournal(tmp_path)
    assert list(again) == entries(1, 4)
    assert path.stat().st_size == size
    again.add(*entries(5, 1)[0])
    again.sync()
    again._destroy()
    assert list(DurableJournal(tmp_path)) == entries(1, 5)


def test_a_garbled_last_record_is_dropped(tmp_path):
    journal = DurableJournal(tmp_path)
    fill(journal, entries(1, 4))
    journal.sync()
    journal._destroy()
    path = tmp_path / "raft.journal"
    record = bytearray(encode(b"op-5", 5, 1))
    record[-1] ^= 0xFF
    with open(path, "ab") as handle:
        handle.write(bytes(record) + b"\x00" * 100)
    assert list(DurableJournal(tmp_path)) == entries(1, 4)


def test_a_damaged_record_with_intact_records_after_it_stops_the_node(tmp_path):
    journal = DurableJournal(tmp_path)
    fill(journal, entries(1, 6))
    journal.sync()
    journal._destroy()
    path = tmp_path / "raft.journal"
    data = bytearray(path.read_bytes())
    offset = journal._offsets[2]
    data[offset + 20] ^= 0x01  # one bit of entry 3's index
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as raised:
        DurableJournal(tmp_path)
    message = str(raised.value)
    assert str(path) in message
    assert f"offset {offset}" in message


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    (tmp_path / "raft.journal").write_bytes(b"PYSYNCOBJ" + b"\x00" * 60)
    with pytest.raises(JournalCorrupt, match="not a DFS Raft journal"):
        DurableJournal(tmp_path)


def test_a_failed_fsync_fails_every_later_sync(tmp_path):
    class FailingDisk(FileLayer):
        broken = False

        def datasync(self, fd):
            if self.broken:
                raise OSError(5, "Input/output error")
            super().datasync(fd)

    disk = FailingDisk()
    journal = DurableJournal(tmp_path, disk)
    disk.broken = True
    journal.add(b"x", 2, 1)
    with pytest.raises(JournalFailed, match="Input/output error"):
        journal.sync()
    with pytest.raises(JournalFailed, match="earlier write failed"):
        journal.sync()


def test_without_fsync_records_are_still_written(tmp_path):
    calls = []

    class Counting(FileLayer):
        def datasync(self, fd):
            calls.append(fd)
            super().datasync(fd)

    journal = DurableJournal(tmp_path, Counting(), fsync=False)
    calls.clear()
    fill(journal, entries(1, 3))
    journal.sync()
    assert calls == []
    journal._destroy()
    assert list(DurableJournal(tmp_path)) == entries(1, 3)
