"""Benchmark: the metaserver's memory per file, while files are created and after a restart.

    .venv/bin/python tests/performance/memory.py [--files 200000] [--clients 16] [--quick]

Starts a local cluster of one metaserver and no dataservers (a real twistd process on
127.0.0.1; empty files never touch a dataserver), reads the metaserver's resident set
size (VmRSS in /proc/PID/status) when idle, then has --clients clients, in this
process, create --files empty files (one request and one log entry each) spread over
directories of --per-directory files. It samples the RSS while they do (the peak),
reads it at the end, restarts the metaserver (SIGTERM, start, wait until it serves)
and reads it once more. For each of the three it prints the bytes per file:
(RSS - idle RSS) / files.

Prints figures; asserts nothing. The clients and the metaserver share this machine's
cores, so the rate of creates is only indicative.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall, deferLater, react

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster

#: How often the RSS is sampled while files are created.
SAMPLE_SECONDS = 0.2
#: Time the metaserver is left alone before a reading that should be settled.
SETTLE_SECONDS = 3.0


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def metaserver_pid(cluster: LocalCluster) -> int:
    pid = cluster.metaservers[0].pid()
    if pid is None:
        raise RuntimeError("the metaserver does not run")
    return pid


async def create_files(
    cluster: LocalCluster, clients_count: int, files: int, per_directory: int
) -> tuple[int, float]:
    """Create ``files`` empty files from ``clients_count`` clients; the files made
    and the seconds taken."""
    config = load_client_config(cluster.client_config)
    clients = [await DFSClient.connect(reactor, config) for _ in range(clients_count)]
    share = files // clients_count
    try:

        async def run(number: int, client: DFSClient) -> None:
            for index in range(share):
                directory = f"/memory/c{number}/d{index // per_directory}"
                if index % per_directory == 0:
                    await client.mkdir(directory, parents=True)
                await client.write_file(f"{directory}/f{index}", b"")

        started = time.perf_counter()
        await gatherResults(
            [Deferred.fromCoroutine(run(n, client)) for n, client in enumerate(clients)]
        )
        return share * clients_count, time.perf_counter() - started
    finally:
        for client in clients:
            client.close()


async def main(arguments: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dfs-memory-bench-"))
    cluster = LocalCluster.create(folder / "cluster", metaservers=1, dataservers=0)
    cluster.start()
    try:
        cluster.wait_ready(timeout=60)
        await sleep(SETTLE_SECONDS)
        pid = metaserver_pid(cluster)
        idle = rss(pid)
        peak = idle

        def sample() -> None:
            nonlocal peak
            peak = max(peak, rss(pid))

        sampler = LoopingCall(sample)
        sampler.start(SAMPLE_SECONDS)
        try:
            files, seconds = await create_files(
                cluster, arguments.clients, arguments.files, arguments.per_directory
            )
        finally:
            sampler.stop()
        end = rss(pid)
        peak = max(peak, end)
        await sleep(SETTLE_SECONDS)
        settled = rss(pid)

        cluster.stop_node(cluster.metaservers[0])
        cluster.start_node(cluster.metaservers[0])
        restart_started = time.perf_counter()
        cluster.wait_ready(timeout=600)
        restart_seconds = time.perf_counter() - restart_started
        await sleep(SETTLE_SECONDS)
        restarted = rss(metaserver_pid(cluster))
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)

    def per_file(value: int) -> str:
        return f"{(value - idle) / files:,.0f} bytes/file (RSS {value / 2**20:,.1f} MiB)"

    print(
        f"{files:,} empty files from {arguments.clients} clients in {seconds:.1f} s "
        f"({files / seconds:,.0f}/s), {arguments.per_directory:,} per directory"
    )
    print(f"idle metaserver: RSS {idle / 2**20:,.1f} MiB")
    print(f"peak during load: {per_file(peak)}")
    print(f"end of load: {per_file(end)}")
    print(f"{SETTLE_SECONDS:.0f} s after the load: {per_file(settled)}")
    print(f"after a restart ({restart_seconds:.1f} s to serve): {per_file(restarted)}")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000, help="empty files to create")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--per-directory", type=int, default=1000, help="files in each directory")
    parser.add_argument("--quick", action="store_true", help="20,000 files")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.files = 20_000
    return arguments


if __name__ == "__main__":
    options = parse(sys.argv[1:])
    react(lambda _reactor: Deferred.fromCoroutine(main(options)))
