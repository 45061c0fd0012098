"""Benchmark: how long the cluster takes to be whole again after losing a dataserver.

    .venv/bin/python tests/performance/rereplication.py [--gib 1.0] [--dataservers 5]
        [--copies 2,4] [--quick]

For each value of ``rereplication_per_dataserver`` in ``--copies``: starts a local
cluster (1 metaserver, ``--dataservers`` dataservers, real twistd processes on
127.0.0.1 with mutual TLS, 64 MiB chunks, replication 3), writes files until one
dataserver holds about ``--gib`` GiB, kills that dataserver (kill -9), and reports:

- detection: from the kill to the leader declaring it dead (``dataserver_dead_after``);
- repair: from then to the first healthy fsck (every chunk at 3 live replicas);
- the re-replication rate: bytes the leader copied over the repair time.

Baselines, measured in the same run on the same disk: ``cp`` of the lost dataserver's
chunk files (one disk copy, no network, no checksums), and the client's write of the
same amount at replication 1 (one pipeline hop: AMP over TLS, CRC32C, fsync). Prints
figures; asserts nothing. Every process shares this machine's cores and disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dfs.client.blocking import BlockingClient, connect
from dfs.localcluster import LocalCluster

MiB = 1024 * 1024
CHUNK = 64 * MiB
PIECE = 4 * MiB


def write_files(client: BlockingClient, prefix: str, total: int, replication: int) -> float:
    """Write ``total`` bytes as files of 4 chunks; seconds taken."""
    piece = os.urandom(PIECE)
    began = time.perf_counter()
    written = 0
    index = 0
    while written < total:
        size = min(4 * CHUNK, total - written)
        with client.open(f"{prefix}{index}", "wb", replication=replication) as handle:
            left = size
            while left:
                handle.write(piece[: min(PIECE, left)])
                left -= min(PIECE, left)
        written += size
        index += 1
    return time.perf_counter() - began


def held_bytes(node: Any) -> int:
    return sum(p.stat().st_size for p in (node.directory / "data" / "chunks").glob("*/*.chunk"))


def disk_copy_seconds(node: Any, scratch: Path) -> tuple[int, float]:
    """cp of the node's chunk files to another folder, synced: the disk's own speed."""
    target = scratch / f"cp-{node.name}"
    began = time.perf_counter()
    shutil.copytree(node.directory / "data" / "chunks", target)
    subprocess.run(["sync"], check=True)
    seconds = time.perf_counter() - began
    size = sum(p.stat().st_size for p in target.glob("*/*.chunk"))
    shutil.rmtree(target)
    return size, seconds


def leader_status(cluster: LocalCluster) -> dict[str, Any]:
    status = cluster.status(cluster.metaservers[0])
    assert status is not None
    return status


def run_once(scratch: Path, dataservers: int, gib: float, copies: int) -> dict[str, float]:
    cluster = LocalCluster.create(
        scratch / f"cluster-{copies}",
        dataservers=dataservers,
        heartbeat_interval=0.5,
        dataserver_dead_after=3.0,
        replication={"chunk_size": CHUNK, "rereplication_per_dataserver": copies},
    )
    cluster.start()
    try:
        cluster.wait_ready(60)
        client = connect(cluster.client_config)
        # Each dataserver holds 3/N of a replication-3 cluster's bytes.
        total = int(gib * 1024**3 * dataservers / 3)
        write_seconds = write_files(client, "/data", total, 3)
        victim = max(cluster.dataservers, key=held_bytes)
        held = held_bytes(victim)
        copy_size, copy_seconds = disk_copy_seconds(victim, scratch)
        r1_seconds = write_files(client, "/r1-", held, 1)
        # Those have one replica each: gone with the dataserver, never whole again.
        for entry in client.listdir("/"):
            if entry.name.startswith("r1-"):
                client.delete(entry.path)
        before = leader_status(cluster)["replication"]["copied_bytes"]
        killed = time.monotonic()
        cluster.kill_node(victim)
        dead_at = None
        while True:
            status = leader_status(cluster)
            if dead_at is None and any(
                d["name"] == victim.name and d["state"] == "dead" for d in status["dataservers"]
            ):
                dead_at = time.monotonic()
            if dead_at is not None and client.fsck("/").healthy:
                healthy_at = time.monotonic()
                break
            if time.monotonic() - killed > 3600:
                raise RuntimeError("not whole again after an hour")
            time.sleep(0.2)
        copied = leader_status(cluster)["replication"]["copied_bytes"] - before
        client.close()
        return {
            "held": held,
            "write_r3": total / write_seconds,
            "write_r1": held / r1_seconds,
            "disk_copy": copy_size / copy_seconds,
            "detect": dead_at - killed,
            "repair": healthy_at - dead_at,
            "copied": copied,
            "rate": copied / (healthy_at - dead_at),
        }
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB the lost dataserver holds")
    parser.add_argument("--dataservers", type=int, default=5)
    parser.add_argument("--copies", default="2,4", help="rereplication_per_dataserver values")
    parser.add_argument("--quick", action="store_true", help="0.25 GiB, copies 2: a smoke run")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every cluster is stopped and the folder removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.quick:
        args.gib, args.copies = 0.25, "2"
    scratch = Path(tempfile.mkdtemp(prefix="dfs-rerep-"))
    try:
        print(
            f"{args.dataservers} dataservers, replication 3, 64 MiB chunks; "
            f"the lost dataserver holds about {args.gib:g} GiB"
        )
        for copies in (int(c) for c in args.copies.split(",")):
            figures = run_once(scratch, args.dataservers, args.gib, copies)
            mb = 1e6
            print(
                f"\nrereplication_per_dataserver={copies}: "
                f"lost {figures['held'] / 1024**3:.2f} GiB"
                f"\n  detected dead after      {figures['detect']:6.1f} s "
                "(dataserver_dead_after 3 s)"
                f"\n  whole again after        {figures['repair']:6.1f} s more"
                f"\n  re-replication rate      {figures['rate'] / mb:6.1f} MB/s "
                f"({figures['copied'] / 1024**3:.2f} GiB copied)"
                f"\n  baseline: disk copy (cp) {figures['disk_copy'] / mb:6.1f} MB/s"
                f"  -> ratio {figures['rate'] / figures['disk_copy']:.2f}"
                f"\n  baseline: client write r1 {figures['write_r1'] / mb:5.1f} MB/s"
                f"  -> ratio {figures['rate'] / figures['write_r1']:.2f}"
                f"\n  (client write r3 while filling: {figures['write_r3'] / mb:.1f} MB/s)"
            )
            sys.stdout.flush()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
