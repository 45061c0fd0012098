"""``dfs local up|status|down``: a whole cluster on this machine, for trying DFS out.

``up`` creates the folder on first use (CA, certificates, configs, free loopback
ports), starts one metaserver (or a Raft group of 3 or 5) and N dataservers as twistd
processes, waits until a metaserver leads and every dataserver is registered, and
prints the client config's path.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dfs.localcluster import DESCRIPTION, LocalCluster, LocalClusterError
from dfs_shell.errors import CommandError


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "dfs" / "local"


def register(subparsers: argparse._SubParsersAction) -> None:
    local = subparsers.add_parser(
        "local",
        help="run a whole cluster on this machine",
        description="Create, start, inspect and stop a cluster of real processes on loopback.",
    )
    commands = local.add_subparsers(title="local commands", metavar="COMMAND", required=True)

    up = commands.add_parser("up", help="create (first time) and start the local cluster")
    _dir_option(up)
    up.add_argument(
        "--metaservers",
        type=int,
        default=1,
        choices=(1, 3, 5),
        metavar="N",
        help="metaservers when the cluster is created: 1, or a Raft group of 3 or 5 (default 1)",
    )
    up.add_argument(
        "--dataservers",
        type=int,
        default=3,
        metavar="N",
        help="number of dataservers when the cluster is created (default 3)",
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for every dataserver to register (default 60)",
    )
    up.set_defaults(run=run_up)

    status = commands.add_parser("status", help="show the local cluster's processes")
    _dir_option(status)
    status.set_defaults(run=run_status)

    down = commands.add_parser("down", help="stop every process of the local cluster")
    _dir_option(down)
    down.set_defaults(run=run_down)


def _dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder of the cluster (default {default_dir()})",
    )


def _open(args: argparse.Namespace, command: str) -> LocalCluster:
    try:
        return LocalCluster.open(args.dir or default_dir())
    except LocalClusterError as error:
        raise CommandError(command, str(error)) from None


def run_up(args: argparse.Namespace) -> int:
    directory = (args.dir or default_dir()).absolute()
    if args.dataservers < 1:
        raise CommandError("local up", f"--dataservers must be at least 1, got {args.dataservers}")
    try:
        if (directory / DESCRIPTION).exists():
            cluster = LocalCluster.open(directory)
        else:
            cluster = LocalCluster.create(
                directory, metaservers=args.metaservers, dataservers=args.dataservers
            )
        running = cluster.running()
        if len(running) == len(cluster.nodes):
            print(
                f"dfs: local up: the cluster in {directory} is already running "
                f"({len(running)} processes); see 'dfs local status --dir {directory}'",
                file=sys.stderr,
            )
            print(cluster.client_config)
            return 0
        cluster.start()
        cluster.wait_ready(timeout=args.timeout)
    except LocalClusterError as error:
        raise CommandError("local up", str(error)) from None
    print(cluster.client_config)
    return 0


def run_status(args: argparse.Namespace) -> int:
    cluster = _open(args, "local status")
    metas = {}
    roles = {}
    for meta in cluster.metaservers:
        document = cluster.status(meta)
        if document is not None:
            metas[meta.name] = {d["name"]: d for d in document["dataservers"]}
            raft = document.get("raft") or {}
            roles[meta.name] = f"running, {raft.get('role', 'unknown')}"
    print(f"cluster {cluster.directory}")
    print(f"client config {cluster.client_config}")
    print(f"{'NODE':<8} {'ROLE':<11} {'PID':>7}  {'ADDRESS':<21} STATE")
    for node in cluster.nodes:
        pid = node.pid()
        role = "metaserver" if node.kind == "meta" else "dataserver"
        if pid is None:
            state = "stopped"
        elif node.kind == "meta":
            state = roles.get(node.name, "running, not answering")
        else:
            seen = [m.get(node.name, {}).get("state", "unregistered") for m in metas.values()]
            state = "running, " + (", ".join(seen) if seen else "no metaserver answers")
        print(f"{node.name:<8} {role:<11} {pid or '-':>7}  {node.address:<21} {state}")
    return 0 if len(cluster.running()) == len(cluster.nodes) else 3


def run_down(args: argparse.Namespace) -> int:
    cluster = _open(args, "local down")
    stopped = cluster.stop()
    if stopped:
        print(f"stopped {', '.join(stopped)}")
    else:
        print(f"nothing was running in {cluster.directory}")
    return 0
