"""Benchmark: how long log application pauses while ``dfs admin backup`` runs on a
large namespace.

    .venv/bin/python tests/performance/backup_pause.py [--files 200000] [--clients 4] [--quick]

Starts one metaserver and no dataservers (a real twistd process on 127.0.0.1; empty
files never touch a dataserver), has --clients clients create --files empty files (a directory of
--per-directory files at a time each, all its requests in flight),
then has one client make directories one after another, each acknowledged only once
its log entry is applied, while the backup runs in the same process. The gaps between
consecutive acknowledgements show how long the log stood still: printed before the
backup (the baseline) and during it, with the backup's size and duration.

Uses only ``DFSClient.backup(out)``, so it measures any version that has it.
Prints figures; asserts nothing. The clients and the metaserver share this machine's
cores, so a gap also holds the time the metaserver waited for a core.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater, react

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster

#: Seconds of mutations before the backup, for the baseline.
BASELINE_SECONDS = 3.0


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def create_files(
    cluster: LocalCluster, clients_count: int, files: int, per_directory: int
) -> float:
    """Create ``files`` empty files from ``clients_count`` clients, each creating a
    directory's files all at once (``per_directory`` requests in flight); seconds
    taken."""
    config = load_client_config(cluster.client_config)
    clients = [await DFSClient.connect(reactor, config) for _ in range(clients_count)]
    directories = max(1, files // per_directory)
    try:

        async def fill(client: DFSClient, directory: int) -> None:
            path = f"/bulk/d{directory}"
            await client.mkdir(path, parents=True)
            pending = [
                Deferred.fromCoroutine(client.write_file(f"{path}/f{index}", b""))
                for index in range(per_directory)
            ]
            await gatherResults(pending)

        async def run(number: int, client: DFSClient) -> None:
            for directory in range(number, directories, clients_count):
                await fill(client, directory)

        started = time.perf_counter()
        await gatherResults(
            [Deferred.fromCoroutine(run(n, client)) for n, client in enumerate(clients)]
        )
        return time.perf_counter() - started
    finally:
        for client in clients:
            client.close()


class Mutator:
    """One client making directories one after another; when each was acknowledged."""

    def __init__(self, client: DFSClient) -> None:
        self.client = client
        self.acks: list[float] = []
        self.running = True

    async def run(self) -> None:
        await self.client.mkdir("/during", parents=True)
        number = 0
        while self.running:
            await self.client.mkdir(f"/during/d{number}")
            self.acks.append(time.perf_counter())
            number += 1

    def longest_gap(self, start: float, end: float) -> tuple[float, int]:
        """The longest time between two acknowledgements (or the window's edges)
        within ``start``..``end``, and how many acknowledgements fell in it."""
        inside = [ack for ack in self.acks if start <= ack <= end]
        points = [start, *inside, end]
        return max(b - a for a, b in itertools.pairwise(points)), len(inside)


async def main(arguments: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dfs-backup-bench-"))
    cluster = LocalCluster.create(folder / "cluster", metaservers=1, dataservers=0)
    cluster.start()
    try:
        cluster.wait_ready(timeout=60)
        seconds = await create_files(
            cluster, arguments.clients, arguments.files, arguments.per_directory
        )
        print(
            f"{arguments.files:,} empty files from {arguments.clients} clients in "
            f"{seconds:.1f} s ({arguments.files / seconds:,.0f}/s)",
            flush=True,
        )
        config = load_client_config(cluster.client_config)
        client = await DFSClient.connect(reactor, config)
        admin = await DFSClient.connect(reactor, config)
        mutator = Mutator(client)
        running = Deferred.fromCoroutine(mutator.run())
        try:
            await sleep(0.5)
            baseline_start = time.perf_counter()
            await sleep(BASELINE_SECONDS)
            baseline_end = time.perf_counter()
            out_path = folder / "namespace.backup"
            with open(out_path, "wb") as out:
                started = time.perf_counter()
                answer = await admin.backup(out)
                ended = time.perf_counter()
            await sleep(0.5)
        finally:
            mutator.running = False
            await running
            client.close()
            admin.close()
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)

    base_gap, base_acks = mutator.longest_gap(baseline_start, baseline_end)
    gap, acks = mutator.longest_gap(started, ended)
    print(
        f"baseline: longest gap between acknowledged mkdirs {base_gap * 1000:,.1f} ms "
        f"({base_acks:,} in {baseline_end - baseline_start:.1f} s)"
    )
    print(
        f"backup: {answer['size']:,} bytes in {ended - started:.2f} s; longest gap between "
        f"acknowledged mkdirs {gap * 1000:,.1f} ms ({acks:,} acknowledged meanwhile)"
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000, help="empty files to create")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--per-directory", type=int, default=1000, help="files in each directory")
    parser.add_argument("--quick", action="store_true", help="20,000 files")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.files = 20_000
    return arguments


if __name__ == "__main__":
    options = parse(sys.argv[1:])
    react(lambda _reactor: Deferred.fromCoroutine(main(options)))
