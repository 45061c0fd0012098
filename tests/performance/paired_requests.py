"""The same requests on two versions of the metaserver started side by side, in turns.

    .venv/bin/python tests/performance/paired_requests.py --base /path/to/other/checkout
        [--new .] [--block 300] [--rounds 10] [--metaservers 1] [--no-audit]

On a machine shared with other work, two runs of one benchmark a minute apart can
differ by a third. This starts one cluster (metaservers only) from each source tree
(``--base`` and ``--new``: folders holding a ``dfs`` package, such as a checkout or a
``git archive`` of a commit), then calls ``--block`` Stats, empty files and Deletes
on one, then the other, in alternating order, ``--rounds`` times, from this one
client process. It prints, per operation and version, the median wall time and the
leader's CPU a call, and the median of the rounds' new/base ratios: both versions
meet the same load at nearly the same moment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dfs.client.blocking import BlockingClient, connect, run
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster

OPERATIONS = ("stat", "create", "delete")


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def leader_pid(cluster: LocalCluster, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for meta in cluster.metaservers:
            status = cluster.status(meta, timeout=1.0)
            pid = meta.pid()
            if status and (status.get("raft") or {}).get("serving") and pid is not None:
                return pid
        time.sleep(0.05)
    raise RuntimeError("no metaserver leads")


def one_block(client: BlockingClient, operation: str, prefix: str, block: int) -> None:
    remote = client.async_client

    async def calls() -> None:
        for index in range(block):
            if operation == "stat":
                await remote.stat("/bench/file")
            elif operation == "create":
                await remote.write_file(f"{prefix}.{index}", b"")
            else:
                await remote.delete(f"{prefix}.{index}")

    run(calls, timeout=600)


def main(arguments: argparse.Namespace) -> None:
    sources = {"base": arguments.base.resolve(), "new": arguments.new.resolve()}
    folder = Path(tempfile.mkdtemp(prefix="dfs-paired-"))
    clusters: dict[str, LocalCluster] = {}
    clients: dict[str, tuple[BlockingClient, int]] = {}
    try:
        for name, source in sources.items():
            # The metaserver runs the code of ``source``: its twistd inherits the path.
            os.environ["PYTHONPATH"] = str(source)
            try:
                cluster = LocalCluster.create(
                    folder / name,
                    metaservers=arguments.metaservers,
                    dataservers=0,
                    security_options=None if arguments.audit else {"audit_log": None},
                )
                cluster.start()
            finally:
                del os.environ["PYTHONPATH"]
            clusters[name] = cluster
        for name, cluster in clusters.items():
            cluster.wait_ready(timeout=90)
            client = connect(load_client_config(cluster.client_config), 600)
            client.mkdir("/bench")
            client.write_file("/bench/file", b"")
            clients[name] = (client, leader_pid(cluster))
        figures: dict[tuple[str, str], list[tuple[float, float]]] = {
            (name, operation): [] for name in sources for operation in OPERATIONS
        }
        for round_number in range(arguments.rounds):
            order = ["base", "new"] if round_number % 2 == 0 else ["new", "base"]
            for operation in OPERATIONS:
                for name in order:
                    client, pid = clients[name]
                    cpu, started = cpu_of(pid), time.perf_counter()
                    one_block(client, operation, f"/bench/r{round_number}", arguments.block)
                    wall = (time.perf_counter() - started) / arguments.block
                    figures[(name, operation)].append((wall, (cpu_of(pid) - cpu) / arguments.block))
            print(f"round {round_number + 1} of {arguments.rounds} done", flush=True)
        audit = "on" if arguments.audit else "off"
        print(
            f"\n{arguments.metaservers} metaserver(s), audit log {audit}, {arguments.rounds}"
            f" rounds of {arguments.block} calls: median wall and leader CPU a call"
        )
        for operation in OPERATIONS:
            line = [f"{operation:<7}"]
            for name in sources:
                walls = [wall for wall, _ in figures[(name, operation)]]
                cpus = [cpu for _, cpu in figures[(name, operation)]]
                wall, cpu = statistics.median(walls), statistics.median(cpus)
                line.append(
                    f"{name} {1000 * wall:.3f} ms ({1 / wall:,.0f}/s), CPU {1000 * cpu:.3f} ms"
                )
            pairs = list(
                zip(figures[("base", operation)], figures[("new", operation)], strict=True)
            )
            wall_ratio = statistics.median(new[0] / base[0] for base, new in pairs)
            cpu_ratio = statistics.median(new[1] / base[1] for base, new in pairs if base[1] > 0)
            line.append(f"new/base: wall {wall_ratio:.2f}, CPU {cpu_ratio:.2f}")
            print(" | ".join(line))
        for client, _ in clients.values():
            client.close()
    finally:
        for cluster in clusters.values():
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="source tree of the base")
    parser.add_argument("--new", type=Path, default=Path("."), help="source tree of the new")
    parser.add_argument("--block", type=int, default=300, help="calls in one turn")
    parser.add_argument("--rounds", type=int, default=10, help="turns of each version")
    parser.add_argument("--metaservers", type=int, default=1, help="metaservers a cluster")
    parser.add_argument(
        "--no-audit", dest="audit", action="store_false", help="no audit log on either"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse(sys.argv[1:]))
