"""The dataserver's chunk store: chunk files and their CRC32C sidecars in one folder.

Plain blocking file I/O, safe to call from several threads (the Twisted side runs the
fsync-heavy calls in a thread pool). The on-disk layout, the sidecar format and the
crash-safety argument are in docs/chunk-format.md; keep the two in step.

A chunk is stored as ``<chunk_id>_<version>.chunk`` (the bytes, nothing else) and
``<chunk_id>_<version>.crc`` (a CRC32C of every 64 KiB block) under
``<root>/chunks/<chunk_id & 0xff as two hex digits>/``. Writers append to ``*.tmp``
names; :meth:`ChunkWriter.finish` fsyncs both files (at once), renames the sidecar, then the data
file (the commit point), then fsyncs the folder. The store serves only the exact
version asked for: an older replica is stale, never served, and deleted as soon as a
newer version is complete.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from types import TracebackType

import attrs
import google_crc32c
from twisted.logger import Logger

from dfs.dataserver.space import measure_space
from dfs.protocol.errors import (
    ChecksumMismatch,
    ChunkNotFound,
    FileExists,
    InvalidArgument,
    NoSpace,
    StaleChunk,
)

CHECKSUM_BLOCK = 65536
#: How far past a read the kernel is asked to read ahead from disk: well past what a
#: reader keeps in flight (4 MiB), since replicas written with direct I/O are not in
#: the page cache.
READ_AHEAD = 16 * 1024 * 1024
#: How many replicas' checksum tables reads keep in memory (4 KiB for 64 MiB).
SIDECAR_CACHE = 1024
"""Bytes covered by one CRC32C in the sidecar (the last block of a chunk may be shorter)."""

SIDECAR_MAGIC = b"DFSC"
SIDECAR_FORMAT = 1
# magic, format, flags, block size, block count, chunk id, version, data length
_HEADER = struct.Struct(">4sHHIIQQQ")
_CRC = struct.Struct(">I")
SIDECAR_HEADER_SIZE = _HEADER.size + _CRC.size
"""Header plus its own CRC32C; the block CRCs follow, then a CRC32C of those."""

_MAX_ID = 2**64 - 1
_VERIFY_PIECE = 64 * CHECKSUM_BLOCK  # verify() reads 4 MiB at a time
_FOLDER_NAME = re.compile(r"[0-9a-f]{2}")
_FILE_NAME = re.compile(r"(0|[1-9][0-9]*)_(0|[1-9][0-9]*)\.(chunk|crc)(\.tmp)?")
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DATA, _SIDECAR = ".chunk", ".crc"
_DATA_TMP, _SIDECAR_TMP = ".chunk.tmp", ".crc.tmp"


@attrs.frozen
class ChunkId:
    chunk_id: int
    version: int


@attrs.frozen
class StoredChunk:
    """A complete replica: both files in place and of agreeing sizes."""

    chunk_id: int
    version: int
    length: int

    @property
    def id(self) -> ChunkId:
        return ChunkId(self.chunk_id, self.version)


@attrs.frozen
class ScanEntry:
    """A file the startup scan removed or quarantined, and why."""

    path: Path
    reason: str
    chunk: ChunkId | None = None


@attrs.frozen
class ScanReport:
    chunks: list[StoredChunk]
    discarded: list[ScanEntry]
    quarantined: list[ScanEntry]
    unknown: list[Path]


def block_count(length: int) -> int:
    """How many CRCs a chunk of ``length`` bytes has."""
    return -(-length // CHECKSUM_BLOCK)


def sidecar_size(length: int) -> int:
    return SIDECAR_HEADER_SIZE + _CRC.size * block_count(length) + _CRC.size


def encode_sidecar(chunk_id: int, version: int, length: int, crcs: list[int]) -> bytes:
    """The sidecar file's bytes (format in docs/chunk-format.md)."""
    if len(crcs) != block_count(length):
        raise ValueError(f"{len(crcs)} CRCs for {length} bytes")
    header = _HEADER.pack(
        SIDECAR_MAGIC, SIDECAR_FORMAT, 0, CHECKSUM_BLOCK, len(crcs), chunk_id, version, length
    )
    table = struct.pack(f">{len(crcs)}I", *crcs)
    return b"".join(
        (
            header,
            _CRC.pack(google_crc32c.value(header)),
            table,
            _CRC.pack(google_crc32c.value(table)),
        )
    )


def decode_sidecar(raw: bytes, chunk_id: int, version: int) -> tuple[int, bytes]:
    """Check a whole sidecar; return (data length, the packed table of block CRCs).

    Raises ``ChecksumMismatch`` naming what is wrong: a damaged sidecar makes the
    replica as unusable as damaged data.
    """
    where = f"chunk {chunk_id} version {version}: sidecar"
    if len(raw) < SIDECAR_HEADER_SIZE + _CRC.size:
        raise ChecksumMismatch(f"{where} truncated ({len(raw)} bytes)")
    header = raw[: _HEADER.size]
    (header_crc,) = _CRC.unpack_from(raw, _HEADER.size)
    if google_crc32c.value(header) != header_crc:
        raise ChecksumMismatch(f"{where} header fails its CRC")
    magic, fmt, _flags, block, count, sc_id, sc_version, length = _HEADER.unpack(header)
    if magic != SIDECAR_MAGIC or fmt != SIDECAR_FORMAT or block != CHECKSUM_BLOCK:
        raise ChecksumMismatch(f"{where} has unknown format {magic!r}/{fmt}/{block}")
    if (sc_id, sc_version) != (chunk_id, version):
        raise ChecksumMismatch(f"{where} belongs to chunk {sc_id} version {sc_version}")
    if count != block_count(length) or len(raw) != sidecar_size(length):
        raise ChecksumMismatch(f"{where} is {len(raw)} bytes for {length} data bytes")
    table = raw[SIDECAR_HEADER_SIZE:-4]
    (table_crc,) = _CRC.unpack_from(raw, len(raw) - 4)
    if google_crc32c.value(table) != table_crc:
        raise ChecksumMismatch(f"{where} block table fails its CRC")
    return length, table


#: Direct I/O wants offsets, lengths and buffer addresses aligned; the page size covers
#: every common logical block size.
DIRECT_ALIGN = 4096
assert CHECKSUM_BLOCK % DIRECT_ALIGN == 0, "truncate relies on blocks being aligned"
#: Bytes a replica being written gathers in memory before they go to disk in one write.
STAGE_SIZE = 1024 * 1024
#: Threads that write full stages while the writers fill the next one (one write in
#: flight per writer). Started on first use.
_FLUSHER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chunk-flush")
#: Threads that fsync a replica's sidecar while its finish fsyncs the data file.
_SYNCER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chunk-sync")
#: Bytes a replica written without direct I/O may hold in the page cache before the
#: kernel is asked to start writing them out: the fsync at the end then finds little
#: left to do, so a chunk's finish does not stall its pipeline for the whole chunk's
#: disk write.
WRITEBACK_EVERY = 4 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _find_sync_file_range() -> Callable[[int, int, int], object] | None:
    """Linux's sync_file_range(2), which Python's os module lacks; None elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, length: int) -> object:
        return call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    return start_writeback


_start_writeback = _find_sync_file_range()


def _align_up(size: int) -> int:
    return -(-size // DIRECT_ALIGN) * DIRECT_ALIGN


def _open_data(path: str, *, direct: bool) -> tuple[int, bool]:
    """Create a replica's data file; with ``O_DIRECT`` when asked and the file system
    takes it. Returns the descriptor and whether it is direct."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o644), True
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o644), False


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _read_exact(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset``, or fewer only when the file ends first."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    pieces = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def _unlink(path: str | Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise_no_space(error: OSError, what: str) -> None:
    """Turn a full file system (ENOSPC, EDQUOT) into the wire's NoSpace."""
    if error.errno in _NO_SPACE_ERRNOS:
        raise NoSpace(f"{what}: {os.strerror(error.errno)}") from error


def _check_id(chunk_id: int, version: int) -> None:
    for name, value in (("chunk id", chunk_id), ("version", version)):
        if not 0 <= value <= _MAX_ID:
            raise InvalidArgument(f"{name} {value} out of range")


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise InvalidArgument(f"bad byte range: offset {offset}, length {length}")


class ChunkWriter:
    """One replica being written: appends go to ``*.tmp`` files until :meth:`finish`.

    Use from one thread at a time. CRCs are computed as data arrives and kept in memory
    (4 bytes per 64 KiB), so the sidecar is written once, at :meth:`finish`.

    Appended bytes gather in an aligned buffer of STAGE_SIZE bytes (the stage) and go
    to disk a whole stage at a time, with direct I/O (``O_DIRECT``) where the file
    system allows it: the page cache is neither filled nor written back, which on a
    busy dataserver is the largest CPU cost of a write. Where it does not (tmpfs, some
    network file systems), the stage goes through the page cache and the kernel is
    asked to start writing it back every WRITEBACK_EVERY bytes. A full stage is written
    by a flusher thread while the next one fills.

    Bytes on the stage count as stored, for the pipeline's acknowledgements, as bytes
    in the page cache do; neither is durable before :meth:`finish`. Only the process
    itself dying loses staged bytes, and a dataserver that died leaves the pipeline:
    the writer goes on under a new version and this replica is discarded.
    """

    def __init__(
        self,
        store: ChunkStore,
        chunk_id: int,
        version: int,
        expected_length: int | None,
        *,
        cached: bool = False,
    ) -> None:
        self._store = store
        #: written through the page cache and left there (a small chunk, likely read
        #: soon: its few pages save the reader a trip to the disk)
        self._cached = cached
        self.chunk_id = chunk_id
        self.version = version
        self.expected_length = expected_length
        self._crcs: list[int] = []  # one per full block
        self._partial_crc = 0  # of the bytes after the last full block
        self._partial_len = 0
        self._length = 0
        #: bytes of the file on disk or on their way there; the stage holds the ones
        #: after them
        self._flushed = 0
        #: the write of the spare stage in progress, in a flusher thread
        self._in_flight: Future[None] | None = None
        self._spare: mmap.mmap | None = None
        #: the disk write that failed; the replica cannot be completed
        self._failed: OSError | None = None
        self._written_back = 0  # bytes handed to the kernel's writeback
        self._closed = False
        size = store.stage_size
        if expected_length is not None:
            size = max(DIRECT_ALIGN, min(size, _align_up(expected_length)))
        self._stage = mmap.mmap(-1, size)  # page aligned, as direct I/O wants
        self._fd, self._direct = _open_data(
            store._file(chunk_id, version, _DATA_TMP), direct=store.direct_io and not cached
        )

    @property
    def id(self) -> ChunkId:
        return ChunkId(self.chunk_id, self.version)

    @property
    def length(self) -> int:
        return self._length

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def direct(self) -> bool:
        """True while the replica is written with direct I/O."""
        return self._direct

    @property
    def checksums(self) -> list[int]:
        """CRC32C of every block so far; the last one covers a partial block if any."""
        if self._partial_len:
            return [*self._crcs, self._partial_crc]
        return list(self._crcs)

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._closed:
            self.abort()

    def __repr__(self) -> str:
        return f"<ChunkWriter chunk {self.chunk_id} version {self.version} at {self._length}>"

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"writer of chunk {self.chunk_id} version {self.version} is closed")

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` at the end. A failed disk write (NoSpace when the file system
        is full) fails this call or a later one, and every one after it: the replica
        cannot be completed any more."""
        self._check_open()
        if not isinstance(data, bytes):
            data = bytes(data)  # google_crc32c takes bytes only
        if not data:
            return
        with memoryview(data) as view:
            position = 0
            while position < len(data):
                fill = self._length - self._flushed
                capacity = len(self._stage)
                if fill == capacity:
                    self._flush()  # a failed flush ends the replica: no CRC to keep right
                    fill = 0
                take = min(capacity - fill, len(data) - position)
                self._stage[fill : fill + take] = view[position : position + take]
                self._length += take
                position += take
        self._add_crcs(data)

    def _flush(self) -> None:
        """Send the full stage to disk in the background and go on with the spare
        one; the previous flush must have succeeded."""
        self._settle()
        size = len(self._stage)
        stage = self._stage
        self._stage = self._spare if self._spare is not None else mmap.mmap(-1, size)
        self._spare = stage
        offset, self._flushed = self._flushed, self._flushed + size
        self._in_flight = _FLUSHER.submit(self._write_out, stage, size, offset)

    def _settle(self) -> None:
        """Wait for the flush in flight; raise if it, or any earlier one, failed."""
        future, self._in_flight = self._in_flight, None
        if future is not None:
            try:
                future.result()
            except OSError as e:
                self._failed = e
        if self._failed is not None:
            error = self._failed
            message = f"chunk {self.chunk_id}: a write to disk failed: {error.strerror}"
            _raise_no_space(error, message)
            raise OSError(error.errno, message)

    def _write_out(self, stage: mmap.mmap, size: int, offset: int) -> None:
        """Write the first ``size`` bytes of ``stage`` at ``offset`` (multiples of
        DIRECT_ALIGN while the writer uses direct I/O). Runs in a flusher thread for
        a full stage, one at a time per writer."""
        failure: OSError | None = None
        try:
            with memoryview(stage) as whole, whole[:size] as piece:
                try:
                    _write_all(self._fd, piece, offset)
                except OSError as e:
                    if not (self._direct and e.errno == errno.EINVAL):
                        raise
                    # The file system took the open but not the write: go on without.
                    flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                    fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                    self._direct = False
                    _write_all(self._fd, piece, offset)
        except OSError as e:
            # A fresh error: the traceback of this one holds views of the stage, which
            # could then never be closed.
            failure = OSError(e.errno, e.strerror)
        if failure is not None:
            raise failure
        end = offset + size
        if not self._direct and end - self._written_back >= WRITEBACK_EVERY:
            # Start the disk writes of what was written since, without waiting for
            # them (a failure shows at the fsync of finish).
            if _start_writeback is not None and self._store.fsync:
                _start_writeback(self._fd, self._written_back, end - self._written_back)
            self._written_back = end

    def _add_crcs(self, data: bytes) -> None:
        # One CRC per block; an append may end or start in the middle of a block.
        size = len(data)
        pos = 0
        if self._partial_len:
            take = min(size, CHECKSUM_BLOCK - self._partial_len)
            piece = data if take == size else data[:take]
            self._partial_crc = google_crc32c.extend(self._partial_crc, piece)
            self._partial_len += take
            pos = take
            if self._partial_len == CHECKSUM_BLOCK:
                self._crcs.append(self._partial_crc)
                self._partial_crc = self._partial_len = 0
        crcs = self._crcs
        value = google_crc32c.value
        while size - pos >= CHECKSUM_BLOCK:
            crcs.append(value(data[pos : pos + CHECKSUM_BLOCK]))
            pos += CHECKSUM_BLOCK
        if pos < size:
            rest = data[pos:]
            self._partial_crc = value(rest)
            self._partial_len = len(rest)

    def _bytes(self, offset: int, length: int) -> bytes:
        """Bytes of the replica so far, from the disk and the stage (after _settle)."""
        pieces = []
        if offset < self._flushed:
            size = min(length, self._flushed - offset)
            # A separate descriptor: direct reads would want aligned buffers too.
            fd = os.open(self._store._file(self.chunk_id, self.version, _DATA_TMP), os.O_RDONLY)
            try:
                piece = _read_exact(fd, size, offset)
            finally:
                os.close(fd)
            if len(piece) != size:
                raise OSError(errno.EIO, f"chunk {self.chunk_id}: short read of its own bytes")
            pieces.append(piece)
            offset, length = offset + size, length - size
        if length:
            start = offset - self._flushed
            pieces.append(self._stage[start : start + length])
        return b"".join(pieces)

    def truncate(self, length: int) -> None:
        """Drop every byte after ``length`` (pipeline recovery: back to the last
        acknowledged length). The CRC of a now partial last block is recomputed from
        the bytes kept."""
        self._check_open()
        if not 0 <= length <= self._length:
            raise InvalidArgument(
                f"chunk {self.chunk_id}: cannot truncate {self._length} bytes to {length}"
            )
        self._settle()
        full, rest = divmod(length, CHECKSUM_BLOCK)
        tail = self._bytes(full * CHECKSUM_BLOCK, rest) if rest else b""
        if length < self._flushed:
            # The disk keeps the aligned part, the stage takes the rest back (the end
            # of the partial block just read: blocks are multiples of DIRECT_ALIGN).
            base = length - length % DIRECT_ALIGN
            kept = tail[len(tail) - (length - base) :]
            os.ftruncate(self._fd, base)
            self._stage[: len(kept)] = kept
            self._flushed = base
            self._written_back = min(self._written_back, base)
        self._length = length
        del self._crcs[full:]
        self._partial_crc = google_crc32c.value(tail) if rest else 0
        self._partial_len = rest

    def rebase(self, new_version: int) -> None:
        """Make this replica in progress version ``new_version`` (pipeline recovery)."""
        self._check_open()
        self._store._rebase(self, new_version)

    def _flush_all(self) -> None:
        """Put every byte on disk. A direct write covers whole aligned blocks: the
        last one is padded with zeros and the file cut back to its length."""
        self._settle()
        fill = self._length - self._flushed
        if not fill:
            return
        if self._direct:
            padded = _align_up(fill)
            self._stage[fill:padded] = bytes(padded - fill)
            self._write_out(self._stage, padded, self._flushed)
            if padded != fill:
                os.ftruncate(self._fd, self._length)
        else:
            self._write_out(self._stage, fill, self._flushed)
        self._flushed = self._length

    def finish(self) -> StoredChunk:
        """Make the replica durable and visible; older versions of it are deleted.

        Crash safety (docs/chunk-format.md): data fsynced, sidecar written and fsynced,
        sidecar renamed, data renamed (the commit point), folder fsynced; only then is
        the chunk in the index and this call returns.
        """
        self._check_open()
        store = self._store
        chunk_id, version = self.chunk_id, self.version
        data_tmp = store._file(chunk_id, version, _DATA_TMP)
        sidecar_tmp = store._file(chunk_id, version, _SIDECAR_TMP)
        sidecar = store._file(chunk_id, version, _SIDECAR)
        data = store._file(chunk_id, version, _DATA)
        renamed: list[str] = []
        try:
            self._flush_all()
            raw = encode_sidecar(chunk_id, version, self._length, self.checksums)
            fd = os.open(sidecar_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, raw, 0)
                if store.fsync:
                    # Both files at once, before either is renamed: the file system
                    # can make them durable in one journal commit where one after the
                    # other takes two (half the time for small replicas).
                    sidecar_synced = _SYNCER.submit(os.fsync, fd)
                    try:
                        os.fsync(self._fd)
                    finally:
                        sidecar_synced.result()
                    if not self._direct and not self._cached:
                        # Drop-behind: the replica is on disk; its pages would only
                        # crowd out data being read (and, on fresh memory, new pages
                        # cost more).
                        _drop_cache(self._fd)
            finally:
                os.close(fd)
            self._close_files()
            os.rename(sidecar_tmp, sidecar)
            renamed.append(sidecar)
            os.rename(data_tmp, data)
            renamed.insert(0, data)
            if store.fsync:
                _fsync_dir(store._folders[chunk_id & 0xFF])
        except BaseException as e:
            # Never acknowledged: remove whatever got its final name too, data first.
            self._discard(renamed)
            if isinstance(e, OSError):
                _raise_no_space(e, f"chunk {chunk_id}")
            raise
        self._closed = True
        return store._committed(self, StoredChunk(chunk_id, version, self._length))

    def abort(self) -> None:
        """Forget this replica: close and remove the temporaries. Safe to call twice."""
        if not self._closed:
            self._discard()

    def _close_files(self) -> None:
        if self._in_flight is not None:
            # Never close the descriptor under a write still in flight.
            wait([self._in_flight])
            self._in_flight = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for stage in (self._stage, self._spare):
            if stage is not None and not stage.closed:
                stage.close()

    def _discard(self, renamed: list[str] | None = None) -> None:
        self._closed = True
        self._close_files()
        store = self._store
        _unlink(store._file(self.chunk_id, self.version, _DATA_TMP))
        _unlink(store._file(self.chunk_id, self.version, _SIDECAR_TMP))
        for path in renamed or ():
            _unlink(path)
        store._forget_writer(self)


class ChunkStore:
    """Every chunk replica in one dataserver folder, with an in-memory index.

    The index (chunk id -> the one complete version here) answers lookups without
    touching the disk; :meth:`scan` builds it at startup. One lock guards the index
    and the table of open writers; file I/O happens outside it.
    """

    log = Logger()

    def __init__(
        self,
        root: Path,
        *,
        reserved_space: int,
        capacity: int | None = None,
        fsync: bool = True,
        direct_io: bool = True,
        drop_behind_reads: bool = True,
        stage_size: int = STAGE_SIZE,
    ) -> None:
        if reserved_space < 0:
            raise ValueError(f"reserved_space {reserved_space} < 0")
        if stage_size <= 0 or stage_size % DIRECT_ALIGN:
            raise ValueError(f"stage_size {stage_size} is not a multiple of {DIRECT_ALIGN}")
        self.root = Path(root)
        self.reserved_space = reserved_space
        self.capacity = capacity
        self.fsync = fsync
        #: write replicas with direct I/O where the file system allows it
        self.direct_io = direct_io
        #: drop the pages of a replica read in order once the reader is past them
        self.drop_behind_reads = drop_behind_reads
        #: bytes a replica being written gathers before a disk write
        self.stage_size = stage_size
        self.chunks_dir = self.root / "chunks"
        self.quarantine_dir = self.root / "quarantine"
        self._lock = threading.Lock()
        self._index: dict[int, StoredChunk] = {}
        self._used = 0
        self._writers: dict[int, ChunkWriter] = {}
        #: Checked sidecar tables of recently read replicas, least recently used first.
        self._tables: OrderedDict[ChunkId, bytes] = OrderedDict()
        self._folders = [str(self.chunks_dir / f"{n:02x}") for n in range(256)]
        self._folder_ready = [False] * 256
        self._create_folders()
        if google_crc32c.implementation != "c":
            self.log.warn(
                "google_crc32c runs its pure Python fallback: checksums will be far slower "
                "than the disk (install a wheel with the C extension)"
            )

    def _create_folders(self) -> None:
        created = not (self.chunks_dir.is_dir() and self.quarantine_dir.is_dir())
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(exist_ok=True)
        if created and self.fsync:
            _fsync_dir(self.root)

    def _ensure_folder(self, chunk_id: int) -> None:
        # Subfolders appear on first use; the new entry is made durable before any
        # chunk inside it can be acknowledged.
        n = chunk_id & 0xFF
        if self._folder_ready[n]:
            return
        try:
            os.mkdir(self._folders[n])
        except FileExistsError:
            pass
        else:
            if self.fsync:
                _fsync_dir(self.chunks_dir)
        self._folder_ready[n] = True

    # -- names ------------------------------------------------------------------

    def folder(self, chunk_id: int) -> Path:
        return self.chunks_dir / f"{chunk_id & 0xFF:02x}"

    def data_path(self, chunk_id: int, version: int) -> Path:
        return Path(self._file(chunk_id, version, _DATA))

    def sidecar_path(self, chunk_id: int, version: int) -> Path:
        return Path(self._file(chunk_id, version, _SIDECAR))

    def temporary_path(self, chunk_id: int, version: int, *, sidecar: bool = False) -> Path:
        return Path(self._file(chunk_id, version, _SIDECAR_TMP if sidecar else _DATA_TMP))

    def _file(self, chunk_id: int, version: int, suffix: str) -> str:
        # Plain strings: building a Path costs more than the open() on the read path.
        return f"{self._folders[chunk_id & 0xFF]}/{chunk_id}_{version}{suffix}"

    # -- index --------------------------------------------------------------------

    def chunks(self) -> list[StoredChunk]:
        with self._lock:
            return sorted(self._index.values(), key=lambda c: c.chunk_id)

    def get(self, chunk_id: int) -> StoredChunk | None:
        with self._lock:
            return self._index.get(chunk_id)

    def writer(self, chunk_id: int) -> ChunkWriter | None:
        """The open writer of this chunk, if any (pipeline recovery finds it here)."""
        with self._lock:
            return self._writers.get(chunk_id)

    def used_bytes(self) -> int:
        """Data bytes of the complete chunks (sidecars are not counted)."""
        with self._lock:
            return self._used

    def free_bytes(self) -> int:
        """What may still be written: min(fs free, capacity - used) - reserved, >= 0.

        Bytes already written by open writers count as used; the rest of what they
        announced (``expected_length``) is set aside as well.
        """
        with self._lock:
            return self._free_bytes_locked()

    def _free_bytes_locked(self) -> int:
        in_progress = promised = 0
        for writer in self._writers.values():
            in_progress += writer.length
            if writer.expected_length is not None:
                promised += max(0, writer.expected_length - writer.length)
        space = measure_space(
            self.root,
            capacity=self.capacity,
            reserved=self.reserved_space,
            used=self._used + in_progress,
        )
        return max(0, space.free - promised)

    def _lookup(self, chunk_id: int, version: int) -> StoredChunk:
        _check_id(chunk_id, version)
        with self._lock:
            stored = self._index.get(chunk_id)
        if stored is None:
            raise ChunkNotFound(f"chunk {chunk_id} is not stored here")
        if stored.version < version:
            raise StaleChunk(
                f"chunk {chunk_id}: version {stored.version} here, {version} asked for"
            )
        if stored.version > version:
            # The asker's version is the stale one: it should ask the metaserver again.
            raise StaleChunk(
                f"chunk {chunk_id}: version {version} asked for, newer version "
                f"{stored.version} here"
            )
        return stored

    def _vanished(self, chunk_id: int, version: int) -> Exception:
        # A file was missing: deleted or replaced by a newer version since the lookup,
        # or removed behind our back.
        try:
            self._lookup(chunk_id, version)
        except (ChunkNotFound, StaleChunk) as e:
            return e
        return ChunkNotFound(f"chunk {chunk_id} version {version}: files missing")

    # -- writing --------------------------------------------------------------------

    def open_writer(
        self,
        chunk_id: int,
        version: int,
        expected_length: int | None = None,
        *,
        cached: bool = False,
    ) -> ChunkWriter:
        """Start a replica. FileExists if this version is complete here or the chunk
        already has a writer; StaleChunk if a newer version is complete here; NoSpace
        if less than ``expected_length`` (default one block) may be written."""
        _check_id(chunk_id, version)
        if expected_length is not None and expected_length < 0:
            raise InvalidArgument(f"expected length {expected_length} < 0")
        needed = expected_length or CHECKSUM_BLOCK
        with self._lock:
            stored = self._index.get(chunk_id)
            if stored is not None and stored.version == version:
                raise FileExists(f"chunk {chunk_id} version {version} is already complete")
            if stored is not None and stored.version > version:
                raise StaleChunk(
                    f"chunk {chunk_id}: version {version} is older than version "
                    f"{stored.version} here"
                )
            current = self._writers.get(chunk_id)
            if current is not None:
                raise FileExists(
                    f"chunk {chunk_id} is already being written (version {current.version})"
                )
            free = self._free_bytes_locked()
            if free < needed:
                raise NoSpace(
                    f"chunk {chunk_id}: {needed} bytes wanted, {free} free "
                    f"above the reserved {self.reserved_space}"
                )
            try:
                self._ensure_folder(chunk_id)
                writer = ChunkWriter(self, chunk_id, version, expected_length, cached=cached)
            except OSError as e:
                _raise_no_space(e, f"chunk {chunk_id}")
                raise
            self._writers[chunk_id] = writer
        return writer

    def store_whole(self, chunk_id: int, version: int, data: bytes) -> StoredChunk:
        """A whole replica at once: open_writer, append and finish in one call (one
        visit to a thread for a small chunk); nothing is left behind if it fails. It
        goes through the page cache and stays there: a small file is often read soon
        after it is written, and its pages are few."""
        with self.open_writer(chunk_id, version, len(data), cached=True) as writer:
            writer.append(data)
            return writer.finish()

    def _rebase(self, writer: ChunkWriter, new_version: int) -> None:
        chunk_id = writer.chunk_id
        _check_id(chunk_id, new_version)
        if new_version <= writer.version:
            raise InvalidArgument(
                f"chunk {chunk_id}: new version {new_version} is not above {writer.version}"
            )
        with self._lock:
            stored = self._index.get(chunk_id)
            if stored is not None and stored.version >= new_version:
                raise StaleChunk(
                    f"chunk {chunk_id}: version {stored.version} here, cannot rebase "
                    f"to {new_version}"
                )
            # An open file keeps working across a rename. The sidecar has no temporary
            # yet: it is written at finish.
            os.rename(
                self._file(chunk_id, writer.version, _DATA_TMP),
                self._file(chunk_id, new_version, _DATA_TMP),
            )
            writer.version = new_version

    def rebase_complete(
        self, chunk_id: int, version: int, new_version: int, length: int
    ) -> StoredChunk:
        """Give a complete replica of ``length`` bytes at ``version`` or older the
        version ``new_version`` (a pipeline recovery that came after this replica was
        finished). ChunkNotFound if there is no such replica, InvalidArgument if its
        length differs.

        Crash safe: the data file gets a second name (a hard link) and a new sidecar
        is written, fsynced and renamed before the old names go, so a crash leaves the
        old version, or both (the scan keeps the newer).
        """
        _check_id(chunk_id, new_version)
        with self._lock:
            stored = self._index.get(chunk_id)
            writing = chunk_id in self._writers
        if stored is None or stored.version > version or writing:
            raise ChunkNotFound(f"chunk {chunk_id}: no complete replica at version {version}")
        if new_version <= stored.version:
            raise InvalidArgument(
                f"chunk {chunk_id}: new version {new_version} is not above {stored.version}"
            )
        if stored.length != length:
            raise InvalidArgument(
                f"chunk {chunk_id}: the replica here has {stored.length} bytes, not {length}"
            )
        table = self._sidecar_table(stored)
        crcs = list(struct.unpack(f">{len(table) // _CRC.size}I", table))
        old_data = self._file(chunk_id, stored.version, _DATA)
        new_data = self._file(chunk_id, new_version, _DATA)
        sidecar_tmp = self._file(chunk_id, new_version, _SIDECAR_TMP)
        try:
            _unlink(new_data)
            os.link(old_data, new_data)
            fd = os.open(sidecar_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, encode_sidecar(chunk_id, new_version, length, crcs), 0)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(sidecar_tmp, self._file(chunk_id, new_version, _SIDECAR))
            if self.fsync:
                _fsync_dir(self._folders[chunk_id & 0xFF])
        except OSError as e:
            _unlink(sidecar_tmp)
            _unlink(new_data)
            _raise_no_space(e, f"chunk {chunk_id}")
            raise
        rebased = StoredChunk(chunk_id, new_version, length)
        with self._lock:
            if self._index.get(chunk_id) == stored:
                self._index[chunk_id] = rebased
        self._remove_files(chunk_id, stored.version)
        return rebased

    def _committed(self, writer: ChunkWriter, stored: StoredChunk) -> StoredChunk:
        chunk_id = stored.chunk_id
        with self._lock:
            if self._writers.get(chunk_id) is writer:
                del self._writers[chunk_id]
            old = self._index.get(chunk_id)
            newer = old is not None and old.version > stored.version
            if not newer:
                self._index[chunk_id] = stored
                self._used += stored.length - (old.length if old is not None else 0)
        if newer:
            assert old is not None
            self._remove_files(chunk_id, stored.version)
            raise StaleChunk(f"chunk {chunk_id}: version {old.version} completed meanwhile")
        if old is not None and old.version != stored.version:
            self._remove_files(chunk_id, old.version)
        return stored

    def _forget_writer(self, writer: ChunkWriter) -> None:
        with self._lock:
            if self._writers.get(writer.chunk_id) is writer:
                del self._writers[writer.chunk_id]

    def _remove_files(self, chunk_id: int, version: int) -> bool:
        self._forget_table(chunk_id, version)
        # Data first: without its data file a sidecar is an orphan that scan removes.
        removed = _unlink(self._file(chunk_id, version, _DATA))
        return _unlink(self._file(chunk_id, version, _SIDECAR)) or removed

    # -- reading --------------------------------------------------------------------

    def _open_data(self, stored: StoredChunk) -> int:
        try:
            return os.open(
                self._file(stored.chunk_id, stored.version, _DATA), os.O_RDONLY | os.O_CLOEXEC
            )
        except FileNotFoundError:
            raise self._vanished(stored.chunk_id, stored.version) from None

    def _sidecar_table(self, stored: StoredChunk) -> bytes:
        """The block CRC table of a complete replica, checked; cached, since every
        read needs it and a replica's sidecar never changes once complete."""
        key = stored.id
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
        table = self._load_sidecar_table(stored)
        with self._lock:
            if self._index.get(stored.chunk_id) == stored:
                self._tables[key] = table
                while len(self._tables) > SIDECAR_CACHE:
                    self._tables.popitem(last=False)
        return table

    def _forget_table(self, chunk_id: int, version: int) -> None:
        with self._lock:
            self._tables.pop(ChunkId(chunk_id, version), None)

    def _load_sidecar_table(self, stored: StoredChunk) -> bytes:
        try:
            fd = os.open(
                self._file(stored.chunk_id, stored.version, _SIDECAR), os.O_RDONLY | os.O_CLOEXEC
            )
        except FileNotFoundError:
            raise self._vanished(stored.chunk_id, stored.version) from None
        try:
            # One byte more than expected, so that a sidecar grown too long shows.
            raw = os.pread(fd, sidecar_size(stored.length) + 1, 0)
        finally:
            os.close(fd)
        length, table = decode_sidecar(raw, stored.chunk_id, stored.version)
        if length != stored.length:
            raise ChecksumMismatch(
                f"chunk {stored.chunk_id} version {stored.version}: sidecar says "
                f"{length} bytes, data file has {stored.length}"
            )
        return table

    def _read_blocks(
        self, stored: StoredChunk, offset: int, length: int
    ) -> tuple[int, bytes, list[int]]:
        """(start, data, CRCs) of the whole blocks covering [offset, offset + length)."""
        end = min(offset + length, stored.length)
        first = offset // CHECKSUM_BLOCK
        last = block_count(end)
        start = first * CHECKSUM_BLOCK
        stop = min(last * CHECKSUM_BLOCK, stored.length)
        table = self._sidecar_table(stored)
        crcs = list(struct.unpack_from(f">{last - first}I", table, 4 * first))
        data = self._pread(stored, start, stop - start, read_ahead=READ_AHEAD)
        return start, data, crcs

    def _pread(
        self, stored: StoredChunk, offset: int, length: int, *, read_ahead: int = 0
    ) -> bytes:
        fd = self._open_data(stored)
        try:
            data = _read_exact(fd, length, offset)
            end = offset + length
            # A reader going through the replica in order asks for what follows next:
            # have the kernel start reading it from disk now. Asked again each time
            # a read crosses half of that distance (the kernel walks every page of the
            # range at each asking, so not at every read).
            step = read_ahead // 2
            if (
                read_ahead
                and (offset == 0 or end // step != offset // step)
                and hasattr(os, "posix_fadvise")
            ):
                if end < stored.length:
                    os.posix_fadvise(fd, end, read_ahead, os.POSIX_FADV_WILLNEED)
                crossed = end // step * step
                if self.drop_behind_reads and crossed >= step:
                    # And to forget the stretch the reader has gone past: the page
                    # cache does not grow by a replica's length at each read.
                    os.posix_fadvise(fd, crossed - step, step, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        if len(data) != length:
            raise ChecksumMismatch(
                f"chunk {stored.chunk_id} version {stored.version}: data file shorter "
                f"than its {stored.length} bytes"
            )
        return data

    def read(
        self, chunk_id: int, version: int, offset: int, length: int, *, verify: bool = True
    ) -> bytes:
        """Bytes [offset, offset + length) of a replica, fewer at its end.

        With ``verify`` the whole blocks covering the range are read and checked:
        ChecksumMismatch if any fails. StaleChunk if the version here is older (or
        newer) than the one asked for, ChunkNotFound if there is none.
        """
        _check_range(offset, length)
        stored = self._lookup(chunk_id, version)
        end = min(offset + length, stored.length)
        if offset >= end:
            return b""
        if not verify:
            return self._pread(stored, offset, end - offset)
        start, data, crcs = self._read_blocks(stored, offset, end - offset)
        value = google_crc32c.value
        if len(crcs) == 1:
            if value(data) != crcs[0]:
                raise self._mismatch(stored, start // CHECKSUM_BLOCK)
        else:
            for i, crc in enumerate(crcs):
                at = i * CHECKSUM_BLOCK
                if value(data[at : at + CHECKSUM_BLOCK]) != crc:
                    raise self._mismatch(stored, start // CHECKSUM_BLOCK + i)
        if start == offset and len(data) == end - offset:
            return data
        return data[offset - start : end - start]

    def _mismatch(self, stored: StoredChunk, block: int) -> ChecksumMismatch:
        return ChecksumMismatch(
            f"chunk {stored.chunk_id} version {stored.version}: block {block} "
            f"(bytes from {block * CHECKSUM_BLOCK}) fails its CRC32C"
        )

    def read_with_checksums(
        self, chunk_id: int, version: int, offset: int, length: int
    ) -> tuple[bytes, list[int]]:
        """Data and the stored CRC of each block it covers, not verified here, so the
        reader checks end to end (the fast path).

        ``offset`` must be a multiple of CHECKSUM_BLOCK. The data runs to the end of
        the last block touched by ``length`` (or the chunk's end), so each CRC covers
        exactly its piece of the data: block i is ``data[i*65536:(i+1)*65536]``.
        """
        _check_range(offset, length)
        if offset % CHECKSUM_BLOCK:
            raise InvalidArgument(f"offset {offset} is not a multiple of {CHECKSUM_BLOCK}")
        stored = self._lookup(chunk_id, version)
        if length == 0 or offset >= stored.length:
            return b"", []
        _start, data, crcs = self._read_blocks(stored, offset, length)
        return data, crcs

    def verify(
        self,
        chunk_id: int,
        version: int,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> bool:
        """Re-read the whole replica from disk and check sidecar and every block.

        For the scrubber: ``on_progress(nbytes)`` is called after each 4 MiB piece, so
        it may sleep there to bound the read rate. The pages read are dropped from the
        cache, before (to read the disk, not memory) and after (not to evict hot data).
        ChunkNotFound / StaleChunk as for :meth:`read`.
        """
        stored = self._lookup(chunk_id, version)
        try:
            # From disk, not the cache: the scrubber is there to see the disk.
            table = self._load_sidecar_table(stored)
        except ChecksumMismatch as e:
            self.log.warn("scrub: {problem}", problem=str(e))
            return False
        crcs = struct.unpack(f">{len(table) // 4}I", table)
        fd = self._open_data(stored)
        try:
            if os.fstat(fd).st_size != stored.length:
                self.log.warn(
                    "scrub: chunk {chunk_id} version {version}: data file size changed",
                    chunk_id=chunk_id,
                    version=version,
                )
                return False
            _drop_cache(fd)
            value = google_crc32c.value
            for piece_start in range(0, stored.length, _VERIFY_PIECE):
                piece = _read_exact(fd, _VERIFY_PIECE, piece_start)
                first = piece_start // CHECKSUM_BLOCK
                for i in range(block_count(len(piece))):
                    at = i * CHECKSUM_BLOCK
                    if value(piece[at : at + CHECKSUM_BLOCK]) != crcs[first + i]:
                        self.log.warn(
                            "scrub: {problem}", problem=str(self._mismatch(stored, first + i))
                        )
                        return False
                if on_progress is not None:
                    on_progress(len(piece))
            _drop_cache(fd)
        finally:
            os.close(fd)
        return True

    # -- removing -----------------------------------------------------------------

    def _drop_from_index(self, chunk_id: int, version: int | None) -> StoredChunk | None:
        with self._lock:
            stored = self._index.get(chunk_id)
            if stored is None or (version is not None and stored.version != version):
                return None
            del self._index[chunk_id]
            self._used -= stored.length
            return stored

    def delete(self, chunk_id: int, version: int | None = None) -> bool:
        """Remove a complete replica (any version when ``version`` is None). True if
        anything was removed. Not fsynced: a delete lost in a crash shows up in the
        next chunk report and is asked for again."""
        stored = self._drop_from_index(chunk_id, version)
        removed = stored is not None
        if version is None:
            if stored is not None:
                self._remove_files(chunk_id, stored.version)
            return removed
        return self._remove_files(chunk_id, version) or removed

    def quarantine(self, chunk_id: int, version: int) -> None:
        """Move a replica's files to ``<root>/quarantine/`` for an operator: no longer
        served, reported or counted. ChunkNotFound if neither file is here."""
        self._drop_from_index(chunk_id, version)
        self._forget_table(chunk_id, version)
        moved = self._move_to_quarantine(
            self.data_path(chunk_id, version), self.sidecar_path(chunk_id, version)
        )
        if not moved:
            raise ChunkNotFound(f"chunk {chunk_id} version {version} is not stored here")
        self.log.warn(
            "chunk {chunk_id} version {version} quarantined as {paths}",
            chunk_id=chunk_id,
            version=version,
            paths=[str(p) for p in moved],
        )

    def _move_to_quarantine(self, *paths: Path) -> list[Path]:
        # The data file goes first: without it the replica is no longer complete.
        names = [p.name for p in paths]
        n = 0
        while True:
            suffix = f".{n}" if n else ""
            targets = [self.quarantine_dir / f"{name}{suffix}" for name in names]
            if not any(t.exists() for t in targets):
                break
            n += 1
        moved = []
        for path, target in zip(paths, targets, strict=True):
            try:
                os.rename(path, target)
            except FileNotFoundError:
                continue
            moved.append(target)
        if moved and self.fsync:
            _fsync_dir(self.quarantine_dir)
            _fsync_dir(paths[0].parent)
        return moved

    # -- startup --------------------------------------------------------------------

    def scan(self) -> ScanReport:
        """Rebuild the index from the disk, at startup (no writer may be open).

        Removes temporaries (writes that never finished) and orphan sidecars, keeps
        the newest complete version of each chunk and removes older ones, quarantines
        replicas whose data and sidecar sizes disagree or that lack a sidecar. Sizes
        come from ``stat`` only; contents are the scrubber's job.
        """
        with self._lock:
            if self._writers:
                raise RuntimeError(f"scan with {len(self._writers)} writer(s) open")
        discarded: list[ScanEntry] = []
        quarantined: list[ScanEntry] = []
        unknown: list[Path] = []
        found: dict[int, dict[int, dict[str, os.DirEntry[str]]]] = {}
        for folder in sorted(os.scandir(self.chunks_dir), key=lambda e: e.name):
            if not (folder.is_dir() and _FOLDER_NAME.fullmatch(folder.name)):
                unknown.append(Path(folder.path))
                continue
            with os.scandir(folder.path) as entries:
                for entry in entries:
                    match = _FILE_NAME.fullmatch(entry.name)
                    if match is None or f"{int(match[1]) & 0xFF:02x}" != folder.name:
                        unknown.append(Path(entry.path))
                        continue
                    chunk = ChunkId(int(match[1]), int(match[2]))
                    if match[4]:
                        _unlink(Path(entry.path))
                        discarded.append(ScanEntry(Path(entry.path), "unfinished write", chunk))
                        continue
                    versions = found.setdefault(chunk.chunk_id, {})
                    versions.setdefault(chunk.version, {})[match[3]] = entry

        index: dict[int, StoredChunk] = {}
        for chunk_id, versions in found.items():
            for version in sorted(versions, reverse=True):
                chunk = ChunkId(chunk_id, version)
                files = versions[version]
                data, sidecar = files.get("chunk"), files.get("crc")
                kept = index.get(chunk_id)
                if kept is not None:
                    for entry in files.values():
                        _unlink(Path(entry.path))
                        reason = f"older than version {kept.version}"
                        discarded.append(ScanEntry(Path(entry.path), reason, chunk))
                    continue
                if data is None:
                    assert sidecar is not None
                    _unlink(Path(sidecar.path))
                    discarded.append(ScanEntry(Path(sidecar.path), "sidecar without data", chunk))
                    continue
                data_size = data.stat().st_size
                if sidecar is None:
                    reason = "data without sidecar"
                elif sidecar.stat().st_size != sidecar_size(data_size):
                    reason = f"sidecar of {sidecar.stat().st_size} bytes for {data_size} data bytes"
                else:
                    index[chunk_id] = StoredChunk(chunk_id, version, data_size)
                    continue
                paths = [Path(data.path)] + ([Path(sidecar.path)] if sidecar else [])
                self._move_to_quarantine(*paths)
                quarantined.append(ScanEntry(Path(data.path), reason, chunk))

        with self._lock:
            self._index = index
            self._used = sum(c.length for c in index.values())
        chunks = sorted(index.values(), key=lambda c: c.chunk_id)
        for gone in discarded:
            self.log.info("scan: removed {path}: {reason}", path=str(gone.path), reason=gone.reason)
        for bad in quarantined:
            self.log.warn(
                "scan: quarantined {path}: {reason}", path=str(bad.path), reason=bad.reason
            )
        for path in unknown:
            self.log.warn("scan: left alone unknown file {path}", path=str(path))
        self.log.info(
            "scan of {root}: {count} chunks, {used} bytes; {discarded} files removed, "
            "{quarantined} replicas quarantined",
            root=str(self.root),
            count=len(chunks),
            used=self._used,
            discarded=len(discarded),
            quarantined=len(quarantined),
        )
        return ScanReport(chunks, discarded, quarantined, unknown)


def _drop_cache(fd: int) -> None:
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
