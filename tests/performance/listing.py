"""Benchmark: listing a directory of many entries, through the library and ``dfs ls``.

    .venv/bin/python tests/performance/listing.py [--entries 10000] [--repeat 7]

Starts a local cluster of one metaserver (a real twistd process on 127.0.0.1, mutual
TLS, no dataservers: a listing never touches one), creates ``--entries`` empty files
in one directory, then times, ``--repeat`` times each:

- ``listdir``: ``connect(config).listdir(directory)`` through the blocking client
  (one connection, opened before timing);
- ``dfs ls``: the shell as a user runs it, in a process of its own, process start
  and connection included;
- ``dfs ls -l``: the same with the long format.

Prints the median, the fastest and the slowest of each, and the median CPU time the
client side (this process, or the shell's) and the metaserver spent on one: on a
machine shared with other work the wall times grow with the load, the CPU times much
less. Then the floors a one-shot command stands on: starting Python, and starting it
and importing Twisted's reactor (which brings the TLS stack). Asserts nothing.

The ``dfs`` and ``dfs_shell`` packages are byte-compiled first, as installing them
does: run from a checkout with PYTHONDONTWRITEBYTECODE set, every ``dfs ls`` would
otherwise compile them from source again, a quarter of its time.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from twisted.internet.defer import Deferred, gatherResults

from dfs.client.blocking import connect, run
from dfs.client.client import DFSClient
from dfs.localcluster import LocalCluster

DIRECTORY = "/listing"
#: Creates in flight at once while filling the directory.
CREATORS = 16


async def fill(client: DFSClient, entries: int) -> None:
    """``entries`` empty files in DIRECTORY, CREATORS at a time."""
    await client.mkdir(DIRECTORY, parents=True)

    async def creator(first: int) -> None:
        for index in range(first, entries, CREATORS):
            writer = await client.create(f"{DIRECTORY}/f{index:06}")
            await writer.close()

    await gatherResults([Deferred.fromCoroutine(creator(first)) for first in range(CREATORS)])


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user and system) of this process and its waited-for children, and
    of process ``pid``."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def timed(repeat: int, action: Callable[[], object], pid: int | None) -> tuple[list, list]:
    """Wall times and CPU times (this side and the metaserver) of ``repeat`` runs."""
    times, cpus = [], []
    for _ in range(repeat):
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
        cpus.append(cpu_seconds(pid) - cpu)
    return times, cpus


def shown(label: str, measured: tuple[list, list]) -> str:
    times, cpus = measured
    return (
        f"{label:<12} median {1000 * statistics.median(times):9.1f} ms   "
        f"min {1000 * min(times):9.1f} ms   max {1000 * max(times):9.1f} ms   "
        f"cpu {1000 * statistics.median(cpus):7.1f} ms"
    )


def byte_compile() -> None:
    """Compile the client's packages as an installation does."""
    import dfs
    import dfs_shell

    for package in (dfs, dfs_shell):
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)


def python(code: str) -> Callable[[], object]:
    return lambda: subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def main(arguments: argparse.Namespace) -> None:
    byte_compile()
    folder = Path(tempfile.mkdtemp(prefix="dfs-listing-bench-"))
    try:
        cluster = LocalCluster.create(folder / "cluster", metaservers=1, dataservers=0)
        cluster.start()
        try:
            cluster.wait_ready(timeout=60)
            client = connect(cluster.client_config, timeout=600)
            started = time.perf_counter()
            run(fill, client.async_client, arguments.entries, timeout=600)
            print(
                f"{arguments.entries:,} empty files created in "
                f"{time.perf_counter() - started:.1f} s",
                flush=True,
            )
            count = len(client.listdir(DIRECTORY))
            print(f"listdir sees {count:,} entries", flush=True)

            pid = cluster.metaservers[0].pid()
            library = timed(arguments.repeat, lambda: client.listdir(DIRECTORY), pid)
            print(shown("listdir", library), flush=True)
            environment = dict(os.environ, DFS_CONFIG=str(cluster.client_config))

            def shell(*options: str) -> None:
                done = subprocess.run(
                    [sys.executable, "-m", "dfs_shell.main", "ls", *options, DIRECTORY],
                    env=environment,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    timeout=120,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"dfs ls failed: {done.stderr.decode()[-500:]}")

            print(shown("dfs ls", timed(arguments.repeat, shell, pid)), flush=True)
            print(shown("dfs ls -l", timed(arguments.repeat, lambda: shell("-l"), pid)), flush=True)
            startup = timed(arguments.repeat, python("import dfs_shell.main"), None)
            print(shown("import only", startup) + "   (the shell's start, no listing)")
            floor = timed(arguments.repeat, python("pass"), None)
            print(shown("python", floor) + "   (python -c pass)")
            reactor = timed(arguments.repeat, python("import twisted.internet.reactor"), None)
            print(shown("reactor", reactor) + "   (python -c 'import twisted.internet.reactor')")
            client.close()
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000, help="files in the directory")
    parser.add_argument("--repeat", type=int, default=7, help="timings of each")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse(sys.argv[1:]))
