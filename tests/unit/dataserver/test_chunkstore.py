"""ChunkStore on real files: round trips, checksums, scan, versions, space, recovery."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import random
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import google_crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfs.dataserver.chunkstore import (
    CHECKSUM_BLOCK,
    DIRECT_ALIGN,
    SIDECAR_HEADER_SIZE,
    ChunkId,
    ChunkStore,
    StoredChunk,
    decode_sidecar,
)
from dfs.protocol.errors import (
    ChecksumMismatch,
    ChunkNotFound,
    FileExists,
    InvalidArgument,
    NoSpace,
    StaleChunk,
)

B = CHECKSUM_BLOCK
SIZES = [0, 1, B - 1, B, B + 1, 3 * B + 17]


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def store_at(root: Path, **kwargs) -> ChunkStore:
    kwargs.setdefault("reserved_space", 0)
    kwargs.setdefault("fsync", False)
    return ChunkStore(root, **kwargs)


def write_chunk(
    store: ChunkStore, chunk_id: int, version: int, data: bytes, piece: int = 10_000
) -> StoredChunk:
    writer = store.open_writer(chunk_id, version, expected_length=len(data))
    for at in range(0, len(data), piece):
        writer.append(data[at : at + piece])
    return writer.finish()


def block_crcs(data: bytes) -> list[int]:
    return [google_crc32c.value(data[at : at + B]) for at in range(0, len(data), B)]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


#: How replicas are written: with direct I/O or through the page cache, with a stage
#: small enough that the tests' chunks take several disk writes, or the default one.
WRITE_MODES = {
    "direct": {"direct_io": True, "stage_size": 2 * DIRECT_ALIGN},
    "page-cache": {"direct_io": False, "stage_size": 2 * DIRECT_ALIGN},
    "default": {},
}


@pytest.fixture(params=sorted(WRITE_MODES))
def store(tmp_path: Path, request: pytest.FixtureRequest) -> ChunkStore:
    return store_at(tmp_path / "data", **WRITE_MODES[request.param])


def direct_io_works(folder: Path) -> bool:
    """Whether the file system under ``folder`` takes O_DIRECT."""
    probe = folder / "direct-probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


@pytest.fixture
def chunk(store: ChunkStore) -> bytes:
    data = payload(3 * B + 17)
    write_chunk(store, 7, 1, data)
    return data


# -- round trips ------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.sampled_from(SIZES),
    cuts=st.lists(st.integers(min_value=0, max_value=3 * B + 17), max_size=8),
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(sorted(WRITE_MODES)),
)
def test_round_trip_with_appends_of_any_size(tmp_path_factory, size, cuts, seed, mode):
    store = store_at(tmp_path_factory.mktemp("rt"), **WRITE_MODES[mode])
    data = payload(size, seed)
    bounds = sorted({0, size, *(c for c in cuts if c <= size)})
    writer = store.open_writer(42, 3)
    for start, end in itertools.pairwise(bounds):
        writer.append(data[start:end])
        assert writer.length == end
        assert writer.checksums == block_crcs(data[:end])
    assert writer.finish() == StoredChunk(42, 3, size)

    assert store.read(42, 3, 0, size) == data
    assert store.read(42, 3, 0, size, verify=False) == data
    assert store.verify(42, 3) is True
    assert store.get(42) == StoredChunk(42, 3, size)
    assert store.used_bytes() == size
    raw = store.sidecar_path(42, 3).read_bytes()
    length, table = decode_sidecar(raw, 42, 3)
    assert length == size
    assert list(struct.unpack(f">{len(table) // 4}I", table)) == block_crcs(data)
    # A fresh store finds the same chunk on disk.
    assert store_at(store.root).scan().chunks == [StoredChunk(42, 3, size)]


def test_append_accepts_bytearray_and_memoryview(store):
    data = payload(B + 5)
    writer = store.open_writer(1, 1)
    writer.append(bytearray(data[:7]))
    writer.append(memoryview(data)[7:])
    writer.finish()
    assert store.read(1, 1, 0, len(data)) == data


BOUNDARIES = sorted(
    {n + d for n in (0, B, 2 * B, 3 * B, 3 * B + 17) for d in (-1, 0, 1) if n + d >= 0}
)


@pytest.mark.parametrize("verify", [True, False])
def test_byte_range_reads_at_every_block_boundary(store, chunk, verify):
    for offset in BOUNDARIES:
        for end in BOUNDARIES:
            if end < offset:
                continue
            got = store.read(7, 1, offset, end - offset, verify=verify)
            assert got == chunk[offset:end], (offset, end)


def test_read_past_the_end_is_short_and_negative_ranges_are_refused(store, chunk):
    assert store.read(7, 1, len(chunk) - 3, 100) == chunk[-3:]
    assert store.read(7, 1, len(chunk) + 10, 100) == b""
    with pytest.raises(InvalidArgument):
        store.read(7, 1, -1, 10)
    with pytest.raises(InvalidArgument):
        store.read(7, 1, 0, -10)


def test_read_with_checksums_returns_whole_blocks_and_their_crcs(store, chunk):
    data, crcs = store.read_with_checksums(7, 1, B, 10)
    assert data == chunk[B : 2 * B]
    assert crcs == block_crcs(chunk)[1:2]
    data, crcs = store.read_with_checksums(7, 1, 2 * B, 10 * B)
    assert data == chunk[2 * B :]
    assert crcs == block_crcs(chunk)[2:]
    assert store.read_with_checksums(7, 1, 0, 0) == (b"", [])
    with pytest.raises(InvalidArgument):
        store.read_with_checksums(7, 1, 100, 10)


# -- corruption -------------------------------------------------------------------


def test_flipped_data_byte_fails_reads_covering_it_and_verify(store, chunk):
    flip_byte(store.data_path(7, 1), B + 100)
    with pytest.raises(ChecksumMismatch, match="block 1"):
        store.read(7, 1, B + 100, 1)
    with pytest.raises(ChecksumMismatch):
        store.read(7, 1, 0, 2 * B)
    # Even a read that does not include the byte checks its whole block.
    with pytest.raises(ChecksumMismatch):
        store.read(7, 1, B, 10)
    assert store.verify(7, 1) is False
    # Other blocks still read, and the fast path hands the client a CRC that fails.
    assert store.read(7, 1, 0, B) == chunk[:B]
    assert store.read(7, 1, 2 * B, B + 17) == chunk[2 * B :]
    data, [crc] = store.read_with_checksums(7, 1, B, B)
    assert google_crc32c.value(data) != crc
    assert store.read(7, 1, B + 100, 1, verify=False) != chunk[B + 100 : B + 101]


def test_verify_reports_progress_for_a_rate_limited_scrubber(store, chunk):
    seen: list[int] = []
    assert store.verify(7, 1, on_progress=seen.append) is True
    assert sum(seen) == len(chunk)


@pytest.mark.parametrize(
    "damage",
    ["table byte", "header byte", "truncated", "extended", "emptied"],
)
def test_damaged_sidecar_is_detected(store, chunk, damage):
    sidecar = store.sidecar_path(7, 1)
    raw = sidecar.read_bytes()
    if damage == "table byte":
        flip_byte(sidecar, SIDECAR_HEADER_SIZE + 5)
    elif damage == "header byte":
        flip_byte(sidecar, 20)
    elif damage == "truncated":
        sidecar.write_bytes(raw[:-6])
    elif damage == "extended":
        sidecar.write_bytes(raw + b"\0\0\0\0")
    else:
        sidecar.write_bytes(b"")
    with pytest.raises(ChecksumMismatch, match="sidecar"):
        store.read(7, 1, 0, 10)
    with pytest.raises(ChecksumMismatch, match="sidecar"):
        store.read_with_checksums(7, 1, 0, 10)
    assert store.verify(7, 1) is False


def test_sidecar_of_another_chunk_is_detected(store, chunk):
    write_chunk(store, 8, 1, chunk)
    os.replace(store.sidecar_path(8, 1), store.sidecar_path(7, 1))
    with pytest.raises(ChecksumMismatch, match="belongs to chunk 8"):
        store.read(7, 1, 0, 10)


def test_truncated_data_file_is_detected(store, chunk):
    os.truncate(store.data_path(7, 1), len(chunk) - 1)
    with pytest.raises(ChecksumMismatch):
        store.read(7, 1, 3 * B, 17)
    with pytest.raises(ChecksumMismatch):
        store.read(7, 1, 3 * B, 17, verify=False)
    assert store.verify(7, 1) is False
    assert store.read(7, 1, 0, B) == chunk[:B]


def test_quarantined_chunk_is_kept_for_the_operator_but_not_served(store, chunk):
    store.quarantine(7, 1)
    assert store.get(7) is None
    assert store.chunks() == []
    assert store.used_bytes() == 0
    with pytest.raises(ChunkNotFound):
        store.read(7, 1, 0, 1)
    assert files_under(store.quarantine_dir) == ["7_1.chunk", "7_1.crc"]
    assert store.quarantine_dir.joinpath("7_1.chunk").read_bytes() == chunk
    assert store_at(store.root).scan().chunks == []
    # The same replica quarantined again (written anew) keeps both copies.
    write_chunk(store, 7, 1, b"again")
    store.quarantine(7, 1)
    assert files_under(store.quarantine_dir) == ["7_1.chunk", "7_1.chunk.1", "7_1.crc", "7_1.crc.1"]
    with pytest.raises(ChunkNotFound):
        store.quarantine(7, 1)


# -- versions -----------------------------------------------------------------------


def test_only_the_exact_version_is_served(store):
    write_chunk(store, 5, 2, b"hello")
    with pytest.raises(StaleChunk, match="version 2 here"):
        store.read(5, 3, 0, 5)
    # Asking for an older version than the one here: the asker is the stale one.
    with pytest.raises(StaleChunk, match="newer version 2 here"):
        store.read(5, 1, 0, 5)
    with pytest.raises(ChunkNotFound):
        store.read(6, 1, 0, 5)
    with pytest.raises(StaleChunk):
        store.verify(5, 3)
    assert store.read(5, 2, 0, 5) == b"hello"


def test_a_newer_version_replaces_the_older_one_on_finish(store):
    write_chunk(store, 5, 1, b"old bytes")
    writer = store.open_writer(5, 2)
    writer.append(b"new")
    assert store.read(5, 1, 0, 9) == b"old bytes"  # served until the new one is complete
    writer.finish()
    assert store.chunks() == [StoredChunk(5, 2, 3)]
    assert store.used_bytes() == 3
    assert files_under(store.folder(5)) == ["5_2.chunk", "5_2.crc"]
    with pytest.raises(StaleChunk):
        store.read(5, 1, 0, 9)


def test_open_writer_refuses_a_complete_version_an_older_one_and_a_second_writer(store):
    write_chunk(store, 5, 2, b"x")
    with pytest.raises(FileExists):
        store.open_writer(5, 2)
    with pytest.raises(StaleChunk):
        store.open_writer(5, 1)
    writer = store.open_writer(5, 3)
    assert store.writer(5) is writer
    with pytest.raises(FileExists, match="being written"):
        store.open_writer(5, 4)
    writer.abort()
    assert store.writer(5) is None
    store.open_writer(5, 4).abort()


def test_delete(store):
    write_chunk(store, 5, 2, b"abc")
    assert store.delete(5, 1) is False
    assert store.get(5) == StoredChunk(5, 2, 3)
    assert store.delete(5, 2) is True
    assert store.get(5) is None
    assert store.delete(5) is False
    write_chunk(store, 5, 3, b"abc")
    assert store.delete(5) is True
    assert files_under(store.folder(5)) == []
    assert store.used_bytes() == 0


# -- scan ---------------------------------------------------------------------------


def test_scan_keeps_complete_chunks_and_discards_temporaries(store, tmp_path):
    write_chunk(store, 1, 1, payload(B + 1))
    write_chunk(store, 258, 4, b"")
    unfinished = store.open_writer(2, 1)
    unfinished.append(payload(1000))
    unfinished._fd, fd = -1, unfinished._fd  # the process dies with the writer open
    os.close(fd)
    store.folder(3).mkdir()
    store.temporary_path(3, 1, sidecar=True).write_bytes(b"half a sidecar")

    fresh = store_at(store.root)
    report = fresh.scan()
    assert report.chunks == [StoredChunk(1, 1, B + 1), StoredChunk(258, 4, 0)]
    assert sorted(e.path.name for e in report.discarded) == ["2_1.chunk.tmp", "3_1.crc.tmp"]
    assert report.quarantined == [] and report.unknown == []
    assert fresh.chunks() == report.chunks
    assert fresh.used_bytes() == B + 1
    assert not store.temporary_path(2, 1).exists()
    assert fresh.read(1, 1, 0, B + 1) == payload(B + 1)


def test_scan_drops_older_versions_when_a_newer_one_is_complete(store):
    write_chunk(store, 9, 1, b"version one")
    # A crash after the new version was committed but before the old was deleted:
    # put the old files back beside the new ones.
    saved = {p: p.read_bytes() for p in (store.data_path(9, 1), store.sidecar_path(9, 1))}
    write_chunk(store, 9, 2, b"version two")
    for path, raw in saved.items():
        path.write_bytes(raw)

    report = store_at(store.root).scan()
    assert report.chunks == [StoredChunk(9, 2, 11)]
    assert {e.chunk for e in report.discarded} == {ChunkId(9, 1)}
    assert files_under(store.folder(9)) == ["9_2.chunk", "9_2.crc"]


def test_scan_quarantines_a_chunk_whose_sidecar_has_the_wrong_size(store):
    write_chunk(store, 4, 1, payload(2 * B))
    write_chunk(store, 5, 1, payload(10))
    sidecar = store.sidecar_path(4, 1)
    sidecar.write_bytes(sidecar.read_bytes()[:-4])

    fresh = store_at(store.root)
    report = fresh.scan()
    assert report.chunks == [StoredChunk(5, 1, 10)]
    [bad] = report.quarantined
    assert bad.chunk == ChunkId(4, 1)
    assert "sidecar" in bad.reason
    assert files_under(store.quarantine_dir) == ["4_1.chunk", "4_1.crc"]
    with pytest.raises(ChunkNotFound):
        fresh.read(4, 1, 0, 1)


def test_scan_handles_half_done_renames_and_keeps_an_older_good_version(store):
    write_chunk(store, 6, 1, b"good")
    write_chunk(store, 7, 1, b"data")
    write_chunk(store, 8, 1, b"orphan")
    # 6: version 2's data got its name but its sidecar did not (never acknowledged).
    store.data_path(6, 2).write_bytes(b"newer")
    # 7: data file gone, sidecar left (an interrupted delete).
    store.data_path(7, 1).unlink()
    # 8: sidecar gone.
    store.sidecar_path(8, 1).unlink()
    stray = store.folder(6) / "notes.txt"
    stray.write_text("operator was here")

    report = store_at(store.root).scan()
    assert report.chunks == [StoredChunk(6, 1, 4)]
    assert [(e.chunk, e.reason) for e in report.discarded] == [
        (ChunkId(7, 1), "sidecar without data")
    ]
    assert sorted(e.chunk.chunk_id for e in report.quarantined if e.chunk) == [6, 8]
    assert report.unknown == [stray]
    assert stray.exists()


def test_scan_refuses_to_run_with_a_writer_open(store):
    store.open_writer(1, 1)
    with pytest.raises(RuntimeError):
        store.scan()


# -- space --------------------------------------------------------------------------


def test_no_space_when_the_reserve_exceeds_what_is_left(tmp_path):
    store = store_at(tmp_path, capacity=10 * B, reserved_space=8 * B)
    assert store.free_bytes() == 2 * B
    writer = store.open_writer(1, 1, expected_length=2 * B)
    # The first writer's announced length is set aside for it.
    with pytest.raises(NoSpace):
        store.open_writer(2, 1)
    writer.append(payload(B))
    assert store.free_bytes() == 0
    writer.finish()
    assert store.used_bytes() == B
    assert store.free_bytes() == B
    with pytest.raises(NoSpace):
        store.open_writer(3, 1, expected_length=B + 1)
    store.open_writer(3, 1, expected_length=B).abort()

    full = store_at(tmp_path / "full", capacity=B, reserved_space=2 * B)
    assert full.free_bytes() == 0
    with pytest.raises(NoSpace):
        full.open_writer(1, 1)


def test_a_full_file_system_is_no_space_and_ends_the_replica(tmp_path, monkeypatch):
    store = store_at(tmp_path, stage_size=DIRECT_ALIGN)
    writer = store.open_writer(1, 1)
    writer.append(payload(DIRECT_ALIGN))  # a full stage, not written yet

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    # The full stage goes to disk in the background; its failure shows at the next
    # call that needs it, and at every call after.
    writer.append(b"more")
    with pytest.raises(NoSpace, match="chunk 1"):
        writer.finish()
    with pytest.raises(ValueError):
        writer.append(b"x")
    assert files_under(store.chunks_dir) == []
    assert store.chunks() == [] and store.writer(1) is None

    monkeypatch.undo()
    writer = store.open_writer(2, 1)
    writer.append(payload(DIRECT_ALIGN))
    monkeypatch.setattr(os, "pwrite", full)
    writer.append(payload(DIRECT_ALIGN))
    with pytest.raises(NoSpace):
        writer.append(payload(DIRECT_ALIGN))  # needs the stage whose write failed
    with pytest.raises(NoSpace):
        writer.truncate(0)
    monkeypatch.undo()
    with pytest.raises(NoSpace):
        writer.finish()  # space came back, but bytes are missing from the file
    assert files_under(store.chunks_dir) == []


def test_other_write_errors_end_the_replica_too(tmp_path, monkeypatch):
    store = store_at(tmp_path, stage_size=DIRECT_ALIGN)
    writer = store.open_writer(1, 1)
    writer.append(payload(DIRECT_ALIGN + 1))

    def broken(fd, data, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", broken)
    with pytest.raises(OSError, match="chunk 1: a write to disk failed: Input/output error"):
        writer.append(payload(DIRECT_ALIGN))
    monkeypatch.undo()
    writer.abort()
    assert files_under(store.chunks_dir) == []


# -- direct I/O -----------------------------------------------------------------------


def test_replicas_are_written_with_direct_io_where_the_file_system_takes_it(tmp_path):
    if not direct_io_works(tmp_path):
        pytest.skip(f"{tmp_path}: the file system refuses O_DIRECT")
    store = store_at(tmp_path)
    data = payload(3 * B + 17)  # not a multiple of the alignment
    writer = store.open_writer(1, 1)
    assert writer.direct
    writer.append(data)
    writer.finish()
    assert store.data_path(1, 1).stat().st_size == len(data)
    assert store.read(1, 1, 0, len(data) + 1) == data
    assert store.verify(1, 1) is True
    assert not store_at(tmp_path, direct_io=False).open_writer(2, 1).direct


def test_direct_io_refused_at_open_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    store = store_at(tmp_path, stage_size=DIRECT_ALIGN)
    writer = store.open_writer(1, 1)
    assert not writer.direct
    data = payload(3 * DIRECT_ALIGN + 5)
    writer.append(data)
    writer.finish()
    assert store.read(1, 1, 0, len(data)) == data


def test_direct_io_refused_at_the_first_write_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    if not direct_io_works(tmp_path):
        pytest.skip(f"{tmp_path}: the file system refuses O_DIRECT")
    real_pwrite = os.pwrite

    def no_direct(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", no_direct)
    store = store_at(tmp_path, stage_size=DIRECT_ALIGN)
    writer = store.open_writer(1, 1)
    assert writer.direct
    data = payload(3 * DIRECT_ALIGN + 5)
    writer.append(data)
    writer.finish()
    assert not writer.direct
    assert store.read(1, 1, 0, len(data)) == data


def test_stage_size_must_suit_direct_io(tmp_path):
    for size in (0, -DIRECT_ALIGN, DIRECT_ALIGN + 512):
        with pytest.raises(ValueError, match="multiple of 4096"):
            store_at(tmp_path, stage_size=size)


# -- the page cache behind a reader ----------------------------------------------------


def cached_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache, as fincore (util-linux) counts them."""
    out = subprocess.run(
        ["fincore", "--bytes", "--raw", "--noheadings", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip())


def drops_cached_pages(path: Path) -> bool:
    """Whether the file system under ``path`` lets go of cached pages when asked
    (tmpfs, whose pages are the file, does not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return cached_bytes(path) == 0


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs fincore (util-linux)")
def test_a_reader_in_order_leaves_the_page_cache_behind_it_empty(tmp_path):
    size = 32 * 2**20
    data = payload(size)
    resident = {}
    for drop in (True, False):
        store = store_at(tmp_path / f"drop-{drop}", fsync=True, drop_behind_reads=drop)
        write_chunk(store, 1, 1, data, piece=2**20)
        path = next((tmp_path / f"drop-{drop}" / "chunks").rglob("1_1.chunk"))
        if not drops_cached_pages(path):
            pytest.skip("this file system keeps a file's pages whatever it is told")
        assert path.read_bytes() == data  # now every page is cached, and clean
        got = bytearray()
        for offset in range(0, size, 8 * B):  # as the client asks: 512 KiB at a time
            piece, _ = store.read_with_checksums(1, 1, offset, 8 * B)
            got += piece
        assert got == data
        resident[drop] = cached_bytes(path)
    assert resident[False] == size
    assert resident[True] <= 2**20, resident


# -- pipeline recovery ----------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 1, B - 1, B, B + 1, 2 * B + 5])
def test_truncate_and_rebase_then_finish(store, keep):
    write_chunk(store, 3, 4, b"the previous version")
    first, second = payload(2 * B + 100, seed=1), payload(B + 3, seed=2)
    writer = store.open_writer(3, 5)
    writer.append(first)
    writer.truncate(keep)
    assert writer.length == keep
    assert writer.checksums == block_crcs(first[:keep])
    writer.rebase(6)
    assert writer.version == 6
    assert not store.temporary_path(3, 5).exists()
    writer.append(second)
    assert writer.finish() == StoredChunk(3, 6, keep + len(second))

    expected = first[:keep] + second
    assert store.read(3, 6, 0, len(expected)) == expected
    assert store.verify(3, 6) is True
    assert store.chunks() == [StoredChunk(3, 6, len(expected))]
    assert files_under(store.folder(3)) == ["3_6.chunk", "3_6.crc"]


def test_truncate_and_rebase_refuse_bad_arguments(store):
    write_chunk(store, 3, 7, b"x")
    writer = store.open_writer(3, 8)
    writer.append(b"abc")
    with pytest.raises(InvalidArgument):
        writer.truncate(4)
    with pytest.raises(InvalidArgument):
        writer.rebase(8)
    with pytest.raises(InvalidArgument):
        writer.rebase(2**64)
    writer.abort()
    with pytest.raises(ValueError):
        writer.truncate(0)


# -- abort, fsync ----------------------------------------------------------------------


def test_abort_leaves_nothing(store):
    writer = store.open_writer(11, 1, expected_length=B)
    writer.append(payload(B + 3))
    writer.abort()
    writer.abort()
    assert files_under(store.chunks_dir) == []
    assert store.chunks() == [] and store.writer(11) is None
    with pytest.raises(ValueError):
        writer.append(b"x")
    with pytest.raises(RuntimeError), store.open_writer(12, 1) as writer:
        writer.append(b"y")
        raise RuntimeError("pipeline broke")
    assert files_under(store.chunks_dir) == []


def test_finish_fsyncs_data_sidecar_and_folder(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path, reserved_space=0, fsync=True)
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    folder = store.folder(300)
    for chunk_id in (300, 44):  # the same subfolder, created for the first one
        writer = store.open_writer(chunk_id, 2)
        writer.append(payload(B + 1))
        writer.finish()
    # Each replica's data and sidecar are fsynced at once (in either order), both
    # under their temporary names, then the folder that holds their final names.
    assert synced[0] == str(store.chunks_dir)  # the new subfolder's entry
    for start, chunk_id in ((1, 300), (4, 44)):
        assert sorted(synced[start : start + 2]) == [
            str(folder / f"{chunk_id}_2.chunk.tmp"),
            str(folder / f"{chunk_id}_2.crc.tmp"),
        ]
        assert synced[start + 2] == str(folder)
    assert len(synced) == 7


def test_no_fsync_when_disabled(store, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("fsync called"))
    write_chunk(store, 1, 1, b"abc")


def test_writers_on_several_threads(store):
    errors: list[BaseException] = []

    def write(chunk_id: int) -> None:
        try:
            for version in (1, 2):
                write_chunk(store, chunk_id, version, payload(B + chunk_id, chunk_id), piece=4096)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.chunks() == [StoredChunk(n, 2, B + n) for n in range(8)]
    assert store.used_bytes() == sum(B + n for n in range(8))
    for n in range(8):
        assert store.read(n, 2, 0, B + n) == payload(B + n, n)


def test_rebase_complete_gives_a_finished_replica_a_new_version(store, tmp_path):
    data = payload(3 * B + 5)
    write_chunk(store, 7, 1, data)
    rebased = store.rebase_complete(7, 1, 3, len(data))
    assert rebased == StoredChunk(7, 3, len(data))
    assert store.get(7) == rebased
    assert store.read(7, 3, 0, len(data)) == data
    with pytest.raises((ChunkNotFound, StaleChunk)):
        store.read(7, 1, 0, 1)
    names = sorted(path.name for path in store.folder(7).iterdir())
    assert names == ["7_3.chunk", "7_3.crc"]
    # What a restart sees: the new version only, its sidecar valid.
    again = store_at(store.root)
    assert [c.id for c in again.scan().chunks] == [ChunkId(7, 3)]
    assert again.read(7, 3, 0, len(data)) == data


def test_rebase_complete_refuses_what_it_cannot_do(store):
    data = payload(100)
    with pytest.raises(ChunkNotFound):
        store.rebase_complete(8, 1, 2, 100)
    write_chunk(store, 8, 2, data)
    with pytest.raises(ChunkNotFound):
        store.rebase_complete(8, 1, 3, 100)  # the replica is newer than asked
    with pytest.raises(InvalidArgument):
        store.rebase_complete(8, 2, 3, 99)  # a different length
    with pytest.raises(InvalidArgument):
        store.rebase_complete(8, 2, 2, 100)  # not a newer version
    store.open_writer(9, 1)
    with pytest.raises(ChunkNotFound):
        store.rebase_complete(9, 1, 2, 0)  # still being written
    assert store.get(8) == StoredChunk(8, 2, 100)
