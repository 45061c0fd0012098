"""The Raft journal of a metaserver: checksummed records, fsynced in groups.

PySyncObj keeps its log in a journal object (``add``, ``deleteEntriesFrom``,
``deleteEntriesTo``, the current term and vote, ...). Its own file journal never
fsyncs, and trims itself in place, so a power cut or a crash in the middle of a
compaction can lose acknowledged entries. :class:`DurableJournal` replaces it:

- ``add`` only buffers; :meth:`DurableJournal.sync` writes every buffered record
  with one write and one fdatasync (group commit). The node sends no message while
  the journal holds unsynced records (see :mod:`dfs.metaserver.syncobj`), so nothing
  is counted toward a majority, acknowledged or answered before it is on disk.
- Each record carries a CRC32C. At start a damaged record with no intact record
  after it is a torn write from a crash (it was never synced, so never
  acknowledged) and is cut off; a damaged record with intact records after it is
  corruption and stops the node with the file and offset.
- Trimming the front (after a snapshot) writes a new file, fsyncs it and renames it
  over the old one; cutting the tail (a follower dropping entries the leader
  overruled) truncates and is synced with the next group.
- Term and vote are written to their own file (temporary, fsync, rename, fsync the
  folder) before the message that depends on them can leave.

All I/O goes through :class:`dfs.metaserver.filelayer.FileLayer`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import google_crc32c
from twisted.logger import Logger

from dfs.metaserver.filelayer import FileLayer

MAGIC = b"DFSRAFT\x00"
FORMAT = 1
_HEADER = struct.Struct("<8sI")
#: length of the command, CRC32C of everything after this field, index, term
_RECORD = struct.Struct("<IIQQ")
#: A record claiming more than this is damaged, whatever its checksum says.
MAX_COMMAND = 64 * 1024 * 1024

Entry = tuple[bytes, int, int]  # (command, index, term), as PySyncObj keeps them


class JournalCorrupt(Exception):
    """A journal or its metadata is damaged in a way a crash cannot explain."""


class JournalFailed(Exception):
    """Writing or syncing the journal failed: nothing more may be acknowledged."""


def encode(command: bytes, index: int, term: int) -> bytes:
    body = struct.pack("<QQ", index, term) + command
    return struct.pack("<II", len(command), google_crc32c.value(body)) + body


class DurableJournal:
    """PySyncObj's journal interface over a checksummed, group-synced file."""

    log = Logger()

    def __init__(self, directory: Path, layer: FileLayer | None = None, fsync: bool = True):
        self._directory = Path(directory)
        self._path = self._directory / "raft.journal"
        self._meta_path = self._directory / "raft.meta"
        self._layer = layer or FileLayer()
        #: Without fsync (benchmarks only) a power cut can lose acknowledged entries.
        self._fsync = fsync
        self._entries: list[Entry] = []
        #: File offset where each entry's record starts (its end for the last).
        self._offsets: list[int] = []
        self._end = _HEADER.size
        self._pending = bytearray()
        self._needs_sync = False
        self._failed: Exception | None = None
        self._commit_index = 1
        self._term, self._voted_for = self._load_meta()
        self._fd = self._open()
        self.syncs = 0

    # -- opening ------------------------------------------------------------------

    def _load_meta(self) -> tuple[int, str | None]:
        data = self._layer.read(self._meta_path)
        if data is None:
            return 0, None
        try:
            meta = json.loads(data)
            term, voted_for = int(meta["term"]), meta["voted_for"]
            if voted_for is not None and not isinstance(voted_for, str):
                raise ValueError("voted_for is not a node address")
        except (ValueError, KeyError, TypeError) as error:
            raise JournalCorrupt(f"{self._meta_path}: unreadable ({error})") from None
        return term, voted_for

    def _open(self) -> int:
        data = self._layer.read(self._path)
        if data is None or (len(data) < _HEADER.size and not data.strip(b"\x00")):
            # No journal yet, or one whose header never reached the disk.
            self._layer.write_file(self._path, _HEADER.pack(MAGIC, FORMAT))
            fd = self._layer.open_append(self._path)
            self._layer.truncate(fd, _HEADER.size)
            return fd
        magic, version = _HEADER.unpack_from(data) if len(data) >= _HEADER.size else (b"", 0)
        if magic != MAGIC:
            raise JournalCorrupt(f"{self._path}: not a DFS Raft journal")
        if version != FORMAT:
            raise JournalCorrupt(f"{self._path}: journal format {version}, expected {FORMAT}")
        end = self._parse(data)
        fd = self._layer.open_append(self._path)
        if end < len(data):
            self.log.warn(
                "{path}: dropped {count} bytes of a record torn by a crash at offset {offset}",
                path=str(self._path),
                count=len(data) - end,
                offset=end,
            )
            self._layer.truncate(fd, end)
            self._layer.fsync(fd)
        else:
            self._layer.truncate(fd, end)
        self._end = end
        return fd

    def _parse(self, data: bytes) -> int:
        """Read every intact record; the offset where the intact records end."""
        offset = _HEADER.size
        while offset < len(data):
            entry, size = _record_at(data, offset)
            if entry is None or (self._entries and entry[1] != self._entries[-1][1] + 1):
                self._check_torn(data, offset)
                return offset
            self._entries.append(entry)
            self._offsets.append(offset)
            offset += size
        return offset

    def _check_torn(self, data: bytes, offset: int) -> None:
        """A damaged record is a torn write only if nothing intact follows it."""
        last = self._entries[-1][1] if self._entries else 0
        for later in range(offset + 1, len(data) - _RECORD.size + 1):
            entry, _ = _record_at(data, later)
            if entry is not None and entry[1] > last:
                raise JournalCorrupt(
                    f"{self._path}: record at offset {offset} is damaged but intact "
                    f"records follow (index {entry[1]} at offset {later}); refusing to "
                    "start. Move the journal aside to let this metaserver catch up "
                    "from the others."
                )

    # -- durability -----------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """True while some record or cut is not yet on stable storage."""
        return bool(self._pending) or self._needs_sync

    def sync(self) -> None:
        """Write the buffered records and fsync them: one group commit."""
        if self._failed is not None:
            raise JournalFailed(f"{self._path}: an earlier write failed: {self._failed}")
        if not self.dirty:
            return
        try:
            if self._pending:
                self._layer.write(self._fd, self._pending)
                self._pending.clear()
            if self._fsync:
                self._layer.datasync(self._fd)
        except OSError as error:
            # What reached the disk is unknown now: never acknowledge again.
            self._failed = error
            raise JournalFailed(f"{self._path}: {error}") from error
        self._needs_sync = False
        self.syncs += 1

    # -- PySyncObj's journal interface -------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        record = encode(command, idx, term)
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)
        self._pending += record

    def clear(self) -> None:
        self.deleteEntriesTo(len(self._entries))

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        cut = self._offsets[entryFrom]
        written = self._end - len(self._pending)
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        if cut >= written:
            del self._pending[cut - written :]
        else:
            self._pending.clear()
            self._layer.truncate(self._fd, cut)
            self._needs_sync = True
        self._end = cut

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop the first ``entryTo`` entries: a new file, fsynced, renamed over."""
        kept = self._entries[entryTo:]
        records = [encode(*entry) for entry in kept]
        self._layer.write_file(self._path, _HEADER.pack(MAGIC, FORMAT) + b"".join(records))
        self._layer.close(self._fd)
        self._fd = self._layer.open_append(self._path)
        self._entries = list(kept)
        self._offsets = []
        offset = _HEADER.size
        for record in records:
            self._offsets.append(offset)
            offset += len(record)
        self._end = offset
        self._layer.truncate(self._fd, offset)
        self._pending.clear()
        self._needs_sync = False

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        # Stopping is not a reason to sync: whatever was acknowledged already is.
        self._layer.close(self._fd)

    def flush(self) -> None:
        self.sync()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # Kept in memory only: after a restart the leader tells the commit index
        # again, and a stored one could claim entries a power cut took away.
        self._commit_index = raftCommitIndex

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        if (term, votedForNodeId) == (self._term, self._voted_for):
            return
        document = json.dumps({"term": term, "voted_for": votedForNodeId}).encode()
        self._layer.write_file(self._meta_path, document)
        self._term, self._voted_for = term, votedForNodeId

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> str | None:
        return self._voted_for

    def onOneSecondTimer(self) -> None:
        pass


def _record_at(data: bytes, offset: int) -> tuple[Entry | None, int]:
    """The entry whose record starts at ``offset`` and the record's size, or
    (None, 0) when there is no intact record there."""
    if offset + _RECORD.size > len(data):
        return None, 0
    length, crc, index, term = _RECORD.unpack_from(data, offset)
    end = offset + _RECORD.size + length
    if length > MAX_COMMAND or end > len(data) or index < 1:
        return None, 0
    if google_crc32c.value(data[offset + 8 : end]) != crc:
        return None, 0
    return (bytes(data[offset + _RECORD.size : end]), index, term), end - offset
