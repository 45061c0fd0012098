"""What one metaserver request costs: wall time and the CPU of each side, per call.

    .venv/bin/python tests/performance/request_cost.py [--calls 3000] [--rounds 3]

It starts one metaserver (no dataserver) in a temporary folder and, from this process,
calls one request after another: Ping (no namespace, no log), Stat, an empty file
created in one request, and Delete; each through the async client (every call in one
hop to the reactor thread) and through the blocking facade (one hop a call, as
scripts and the shell call). Beside them, as the floor measured in the same run, the
same Ping between plain Twisted AMP protocols (``twisted.protocols.amp.AMP``: no
session, no limits, no leader-following client) over the same mutual TLS, served by
amp_sink.py --plain.

The metaserver writes its audit log as `dfs local` has it do (``--no-audit``: none).
For each it prints the wall time, the client's CPU and the server's CPU per call,
the best of ``--rounds``. The CPU columns are what to compare across versions on a
busy machine: the wall time of one call after another is the sum of both sides'
CPU, the kernel's work and the waits for a core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from amp_sink import PlainPing
from throughput import Sink
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.protocols import amp

from dfs.client.blocking import BlockingClient, connect, run
from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster
from dfs.protocol.commands import Ping

HERE = Path(__file__).resolve().parent


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Row:
    """The best (lowest wall time) of several rounds of one measure."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.best: tuple[float, float, float] | None = None

    def add(self, wall: float, client: float, server: float) -> None:
        if self.best is None or wall < self.best[0]:
            self.best = (wall, client, server)

    def line(self) -> str:
        assert self.best is not None
        wall, client, server = (1000 * value for value in self.best)
        return f"{self.label:<34} {wall:7.3f} ms {client:9.3f} ms {server:9.3f} ms"


def measure(row: Row, calls: int, server_pid: int, action: Callable[[], object]) -> None:
    server = cpu_of(server_pid)
    client = time.process_time()
    started = time.perf_counter()
    action()
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - client
    row.add(wall / calls, client_cpu / calls, (cpu_of(server_pid) - server) / calls)


def in_one_hop(loop: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    return lambda: run(loop, timeout=600)


async def plain_session(port: int, client: DFSClient) -> amp.AMP:
    options = client.credentials.credentials.client_options("127.0.0.1")
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
    protocol: amp.AMP = await connectProtocol(endpoint, amp.AMP())
    return protocol


def one_round(
    rows: dict[str, Row],
    calls: int,
    round_number: int,
    blocking: BlockingClient,
    plain: amp.AMP,
    sink_pid: int,
    meta_pid: int,
) -> None:
    client = blocking.async_client
    first = [f"/bench/a{round_number}.{i}" for i in range(calls)]
    second = [f"/bench/b{round_number}.{i}" for i in range(calls)]

    async def plain_pings() -> None:
        for _ in range(calls):
            await plain.callRemote(PlainPing)

    async def pings() -> None:
        for _ in range(calls):
            await client.metaserver.call(Ping)

    async def stats() -> None:
        for _ in range(calls):
            await client.stat("/bench/file")

    async def creates() -> None:
        for path in first:
            await client.write_file(path, b"")

    async def deletes() -> None:
        for path in first:
            await client.delete(path)

    measure(rows["plain AMP Ping (floor)"], calls, sink_pid, in_one_hop(plain_pings))
    measure(rows["Ping, async"], calls, meta_pid, in_one_hop(pings))
    measure(rows["Stat, async"], calls, meta_pid, in_one_hop(stats))
    measure(
        rows["Stat, blocking"],
        calls,
        meta_pid,
        lambda: [blocking.stat("/bench/file") for _ in range(calls)],
    )
    measure(rows["empty file, async"], calls, meta_pid, in_one_hop(creates))
    measure(
        rows["empty file, blocking"],
        calls,
        meta_pid,
        lambda: [blocking.write_file(path, b"") for path in second],
    )
    measure(rows["Delete, async"], calls, meta_pid, in_one_hop(deletes))
    measure(
        rows["Delete, blocking"],
        calls,
        meta_pid,
        lambda: [blocking.delete(path) for path in second],
    )


def main(arguments: argparse.Namespace) -> None:
    calls = arguments.calls
    folder = Path(tempfile.mkdtemp(prefix="dfs-request-cost-"))
    sink: Sink | None = None
    try:
        cluster = LocalCluster.create(
            folder / "cluster",
            metaservers=1,
            dataservers=0,
            security_options=None if arguments.audit else {"audit_log": None},
        )
        cluster.start()
        try:
            cluster.wait_ready(timeout=60)
            meta = cluster.metaservers[0]
            meta_pid = meta.pid()
            assert meta_pid is not None
            sink = Sink.start(meta.config_path, folder / "sink.log", plain=True)
            blocking: BlockingClient = connect(load_client_config(cluster.client_config), 600)
            blocking.mkdir("/bench")
            blocking.write_file("/bench/file", b"")
            plain = run(plain_session, sink.port, blocking.async_client, timeout=60)
            rows = {
                name: Row(name)
                for name in (
                    "plain AMP Ping (floor)",
                    "Ping, async",
                    "Stat, async",
                    "Stat, blocking",
                    "empty file, async",
                    "empty file, blocking",
                    "Delete, async",
                    "Delete, blocking",
                )
            }
            for round_number in range(arguments.rounds):
                one_round(rows, calls, round_number, blocking, plain, sink.process.pid, meta_pid)
                print(f"round {round_number + 1} of {arguments.rounds} done", flush=True)
            print(f"\n{calls} calls one after another, best of {arguments.rounds} rounds")
            print(f"{'per call':<34} {'wall':>10} {'client CPU':>12} {'server CPU':>12}")
            for row in rows.values():
                print(row.line())
            plain.transport.loseConnection()
            blocking.close()
        finally:
            cluster.stop()
    finally:
        if sink is not None:
            sink.stop()
        shutil.rmtree(folder, ignore_errors=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per measure")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the best is kept)")
    parser.add_argument(
        "--no-audit",
        dest="audit",
        action="store_false",
        help="no audit log (dfs local gives each metaserver one)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main(parse(sys.argv[1:]))
