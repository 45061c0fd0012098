"""Benchmark: namespace operations per second, the cost of the journal's fsync, failover.

    .venv/bin/python tests/performance/metadata.py [--files 2000] [--kills 10] [--quick]

Starts local clusters of metaservers only (real twistd processes on 127.0.0.1, mutual
TLS, no dataservers: these operations never touch one) and, with the client library
in this process, measures per second:

- creates: an empty file created and closed (Create, then CloseFile: two Raft entries);
- stats: Stat of those files;
- lists: ListDirectory of a directory of 100 entries;
- renames: Rename of those files;

with 1 metaserver, with a group of 3, and with a group of 3 whose journal is not
fsynced (``raft_fsync: false``), each from 1 client and from 16 concurrent clients.
Then, in the group of 3, kills the leader (kill -9) --kills times while clients write,
and reports the time from the kill to the first change a new leader accepted.

Prints figures; asserts nothing. All processes run on this machine, so the clients,
the metaservers and their fsyncs share its cores and its disk.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater, react

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster

LIST_SIZE = 100


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def connect(cluster: LocalCluster) -> DFSClient:
    return await DFSClient.connect(reactor, load_client_config(cluster.client_config))


async def wait_serving(cluster: LocalCluster, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for meta in cluster.metaservers:
            status = cluster.status(meta, timeout=0.5)
            if status and (status.get("raft") or {}).get("serving"):
                return meta
        await sleep(0.02)
    raise RuntimeError("no metaserver leads")


async def timed(count: int, clients: list[DFSClient], operation: Any) -> float:
    """Run ``operation(client, client_number, index)`` count times spread over the
    clients, each client one at a time; operations per second."""
    share = count // len(clients)

    async def run(client: DFSClient, number: int) -> None:
        for index in range(share):
            await operation(client, number, index)

    started = time.perf_counter()
    await gatherResults(
        [Deferred.fromCoroutine(run(client, n)) for n, client in enumerate(clients)]
    )
    return share * len(clients) / (time.perf_counter() - started)


async def measure(cluster: LocalCluster, clients_count: int, files: int, tag: str) -> dict:
    clients = [await connect(cluster) for _ in range(clients_count)]
    try:
        for number in range(clients_count):
            await clients[0].mkdir(f"/{tag}/c{number}", parents=True)

        async def create(client: DFSClient, number: int, index: int) -> None:
            writer = await client.create(f"/{tag}/c{number}/f{index}")
            await writer.close()

        async def stat(client: DFSClient, number: int, index: int) -> None:
            await client.stat(f"/{tag}/c{number}/f{index}")

        async def listing(client: DFSClient, number: int, index: int) -> None:
            await client.listdir(f"/{tag}/list")

        async def rename(client: DFSClient, number: int, index: int) -> None:
            await client.rename(f"/{tag}/c{number}/f{index}", f"/{tag}/c{number}/g{index}")

        await clients[0].mkdir(f"/{tag}/list")
        for index in range(LIST_SIZE):
            await clients[0].mkdir(f"/{tag}/list/e{index}")
        return {
            "creates": await timed(files, clients, create),
            "stats": await timed(files, clients, stat),
            "lists": await timed(max(len(clients), files // 4), clients, listing),
            "renames": await timed(files, clients, rename),
        }
    finally:
        for client in clients:
            client.close()


async def failover(cluster: LocalCluster, kills: int) -> list[float]:
    """Seconds from kill -9 of the leader to the first mkdir a new leader accepted."""
    times = []
    writer = await connect(cluster)
    try:
        for kill in range(kills):
            leader = await wait_serving(cluster)
            await writer.mkdir(f"/failover-warm-{kill}")  # the client talks to the leader
            cluster.kill_node(leader)
            killed_at = time.perf_counter()
            await writer.mkdir(f"/failover-{kill}")
            times.append(time.perf_counter() - killed_at)
            cluster.start_node(leader)
            await caught_up(cluster)
    finally:
        writer.close()
    return times


async def caught_up(cluster: LocalCluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied = []
        for meta in cluster.metaservers:
            status = cluster.status(meta, timeout=0.5)
            raft = (status or {}).get("raft") or {}
            applied.append(raft.get("last_applied"))
        if None not in applied and len(set(applied)) == 1:
            return
        await sleep(0.05)
    raise RuntimeError("the restarted metaserver did not catch up")


async def main(arguments: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dfs-metadata-bench-"))
    results: dict[str, dict[int, dict]] = {}
    failovers: list[float] = []
    setups = [
        ("1 metaserver", 1, True),
        ("3 metaservers", 3, True),
        ("3 metaservers, no fsync", 3, False),
    ]
    try:
        for label, metaservers, fsync in setups:
            cluster = LocalCluster.create(
                folder / label.replace(" ", "-").replace(",", ""),
                metaservers=metaservers,
                dataservers=0,
                metaserver_options={"raft_fsync": fsync},
            )
            cluster.start()
            try:
                cluster.wait_ready(timeout=60)
                results[label] = {}
                for clients in arguments.clients:
                    tag = f"bench-{clients}"
                    results[label][clients] = await measure(cluster, clients, arguments.files, tag)
                    print(f"{label}, {clients} clients: {fmt(results[label][clients])}", flush=True)
                if metaservers == 3 and fsync and arguments.kills:
                    failovers = await failover(cluster, arguments.kills)
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(results, failovers, arguments)


def fmt(figures: dict) -> str:
    return ", ".join(f"{name} {value:,.0f}/s" for name, value in figures.items())


def report(results: dict, failovers: list[float], arguments: argparse.Namespace) -> None:
    print()
    print(f"Namespace operations per second ({arguments.files} files per phase):")
    print(f"| setup | clients | creates | stats | lists ({LIST_SIZE} entries) | renames |")
    print("|---|---|---|---|---|---|")
    for label, by_clients in results.items():
        for clients, figures in by_clients.items():
            print(
                f"| {label} | {clients} | {figures['creates']:,.0f} | {figures['stats']:,.0f} "
                f"| {figures['lists']:,.0f} | {figures['renames']:,.0f} |"
            )
    synced = results.get("3 metaservers", {})
    unsynced = results.get("3 metaservers, no fsync", {})
    for clients in arguments.clients:
        if clients in synced and clients in unsynced:
            with_fsync = synced[clients]["creates"]
            without = unsynced[clients]["creates"]
            print(
                f"fsync cost, 3 metaservers, {clients} clients: creates {with_fsync:,.0f}/s with, "
                f"{without:,.0f}/s without: {100 * (1 - with_fsync / without):.1f}% slower"
            )
    if failovers:
        print(
            f"kill -9 of the leader to the first change on a new leader, {len(failovers)} kills: "
            f"median {statistics.median(failovers):.2f} s, "
            f"min {min(failovers):.2f} s, max {max(failovers):.2f} s"
        )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="files per phase")
    parser.add_argument("--kills", type=int, default=10, help="leader kills for failover")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 16], help="concurrent clients"
    )
    parser.add_argument("--quick", action="store_true", help="200 files, 3 kills")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.files, arguments.kills = 200, 3
    return arguments


if __name__ == "__main__":
    options = parse(sys.argv[1:])
    react(lambda _reactor: Deferred.fromCoroutine(main(options)))
