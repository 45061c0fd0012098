"""Benchmark: small files written one after another at replication 3, then read back.

    .venv/bin/python tests/performance/smallfiles.py [--files 400] [--file-size 64K]

Starts a local cluster (1 metaserver, 3 dataservers, real twistd processes on
127.0.0.1) in a temporary folder, writes --files files of --file-size random bytes
one after another through the blocking client at replication 3, reads them back, and
prints files/s for each. The first few files (--warmup) are written and not counted:
they dial the connections every later file shares. The cluster is always stopped and
the folder removed. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from dfs.client import blocking
from dfs.localcluster import LocalCluster

_UNITS = {"": 1, "K": 2**10, "M": 2**20}


def parse_size(text: str) -> int:
    text = text.upper().removesuffix("IB").removesuffix("B")
    unit = text[-1] if text and text[-1] in _UNITS else ""
    return int(text[: len(text) - len(unit)]) * _UNITS[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--files", type=int, default=400, help="files timed (default 400)")
    parser.add_argument("--file-size", type=parse_size, default=64 * 1024, help="default 64K")
    parser.add_argument("--warmup", type=int, default=20, help="files not timed (default 20)")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the temporary folder")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="dfs-smallfiles-", dir=args.dir))
    cluster: LocalCluster | None = None
    try:
        cluster = LocalCluster.create(folder / "cluster", metaservers=1, dataservers=3)
        cluster.start()
        cluster.wait_ready(timeout=60)
        client = blocking.connect(cluster.client_config)
        client.mkdir("/bench")
        payloads = [os.urandom(args.file_size) for _ in range(8)]

        def write(names: range) -> float:
            start = time.perf_counter()
            for number in names:
                with client.open(f"/bench/{number}", "wb", replication=3) as out:
                    out.write(payloads[number % len(payloads)])
            return time.perf_counter() - start

        write(range(-args.warmup, 0))
        wrote = write(range(args.files))
        start = time.perf_counter()
        for number in range(args.files):
            with client.open(f"/bench/{number}", "rb") as source:
                assert source.read() == payloads[number % len(payloads)]
        read = time.perf_counter() - start
        client.close()
        size = args.file_size // 1024
        print(
            f"{args.files} files of {size} KiB at replication 3: "
            f"write {args.files / wrote:.1f} files/s ({1000 * wrote / args.files:.2f} ms a file), "
            f"read {args.files / read:.1f} files/s ({1000 * read / args.files:.2f} ms a file)",
            flush=True,
        )
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
