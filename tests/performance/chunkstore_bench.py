"""Micro-benchmark: the chunk store's write and read paths beside plain file I/O.

    .venv/bin/python tests/performance/chunkstore_bench.py [--size-mib 256] [--dir PATH]

Writes and reads one chunk (256 MiB by default) in 64 KiB packets, the size the write
pipeline and readers use, and prints MB/s (10^6 bytes per second), best of --repeat
runs. The baseline lines are plain os.write / os.pread on a file in the same folder,
measured in the same run. Warm reads come from the page cache; cold reads drop the
file's pages first (posix_fadvise), as verify() does. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import google_crc32c

from dfs.dataserver.chunkstore import CHECKSUM_BLOCK, ChunkStore

PACKET = CHECKSUM_BLOCK


def best_rate(size: int, repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return size / best / 1e6


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    folder = Path(tempfile.mkdtemp(prefix="chunkstore-bench-", dir=args.dir))
    try:
        run(folder, size, args.repeat)
    finally:
        shutil.rmtree(folder)


def run(folder: Path, size: int, repeat: int) -> None:
    data = os.urandom(size)
    packets = [data[at : at + PACKET] for at in range(0, size, PACKET)]
    plain = folder / "plain.bin"
    stores = {
        fsync: ChunkStore(folder / f"store-{fsync}", reserved_space=0, fsync=fsync)
        for fsync in (False, True)
    }
    version = iter(range(1, 1_000_000))

    def plain_write(fsync: bool) -> None:
        # A new file each time, then the previous one removed: the store does the same
        # (a new version's file, the older version deleted at finish).
        fresh = plain.with_suffix(".new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for packet in packets:
                os.write(fd, packet)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(fresh, plain)

    def store_write(fsync: bool) -> None:
        writer = stores[fsync].open_writer(1, next(version), expected_length=size)
        for packet in packets:
            writer.append(packet)
        writer.finish()

    def plain_read(piece: int) -> None:
        fd = os.open(plain, os.O_RDONLY)
        try:
            for at in range(0, size, piece):
                os.pread(fd, piece, at)
        finally:
            os.close(fd)

    print(f"chunk of {size // 2**20} MiB in {folder}, 64 KiB packets, best of {repeat}")
    print(f"google_crc32c implementation: {google_crc32c.implementation}")
    rows: list[tuple[str, float]] = []
    rows.append(
        (
            "crc32c alone, 64 KiB blocks",
            best_rate(size, repeat, lambda: [google_crc32c.value(p) for p in packets]),
        )
    )
    rows.append(("baseline write, no fsync", best_rate(size, repeat, lambda: plain_write(False))))
    rows.append(("store write, no fsync", best_rate(size, repeat, lambda: store_write(False))))
    rows.append(("baseline write + fsync", best_rate(size, repeat, lambda: plain_write(True))))
    rows.append(("store write + fsync", best_rate(size, repeat, lambda: store_write(True))))

    store = stores[False]
    chunk = store.get(1)
    assert chunk is not None and chunk.length == size
    v = chunk.version

    def store_read(piece: int, verify: bool) -> None:
        for at in range(0, size, piece):
            store.read(1, v, at, piece, verify=verify)

    def store_read_crcs(piece: int) -> None:
        for at in range(0, size, piece):
            store.read_with_checksums(1, v, at, piece)

    for piece, label in ((PACKET, "64 KiB"), (4 * 2**20, "4 MiB")):
        plain_read(piece)  # warm the cache
        store_read(piece, False)
        rows.append(
            (
                f"baseline read, {label} preads, warm",
                best_rate(size, repeat, partial(plain_read, piece)),
            )
        )
        rows.append(
            (
                f"store read no verify, {label}, warm",
                best_rate(size, repeat, partial(store_read, piece, False)),
            )
        )
        rows.append(
            (
                f"store read + verify, {label}, warm",
                best_rate(size, repeat, partial(store_read, piece, True)),
            )
        )
        rows.append(
            (
                f"store read_with_checksums, {label}, warm",
                best_rate(size, repeat, partial(store_read_crcs, piece)),
            )
        )

    data_path = store.data_path(1, v)

    def cold(path: Path, then: Callable[[], object]) -> Callable[[], object]:
        def go() -> object:
            drop_cache(path)
            return then()

        return go

    # Timed with the fadvise call, which is cheap next to reading 256 MiB.
    rows.append(
        (
            "baseline read, 4 MiB preads, cold",
            best_rate(size, repeat, cold(plain, lambda: plain_read(4 * 2**20))),
        )
    )
    rows.append(
        (
            "store read + verify, 4 MiB, cold",
            best_rate(size, repeat, cold(data_path, lambda: store_read(4 * 2**20, True))),
        )
    )
    rows.append(
        ("store verify() (scrub, drops cache)", best_rate(size, repeat, lambda: store.verify(1, v)))
    )

    width = max(len(name) for name, _ in rows)
    for name, rate in rows:
        print(f"  {name:<{width}}  {rate:8.0f} MB/s")


if __name__ == "__main__":
    main()
