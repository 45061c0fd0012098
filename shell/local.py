"""``dfs local [up|status|down|revoke]``: a whole cluster on this machine, for trying DFS out.

``dfs local`` alone starts the cluster in the default folder if it is not running
(as ``up`` does) and opens the interactive shell on it.
``up`` creates the folder on first use (CA, certificates, configs, free loopback
ports), starts one metaserver (or a Raft group of 3 or 5) and N dataservers as twistd
processes, waits until a metaserver leads and every dataserver is registered, and
prints the client config's path.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dfs.security.identity import Role
from dfs_shell.errors import CommandError
from dfs_shell.files import data_dir

# dfs.localcluster and the CA are imported by the commands that use them: every other
# dfs command builds this parser and should not pay for them.

if TYPE_CHECKING:
    from dfs.localcluster import LocalCluster

#: What ``dfs local`` creates when no cluster exists yet (as ``up`` without options).
DEFAULT_METASERVERS = 1
DEFAULT_DATASERVERS = 3
DEFAULT_TIMEOUT = 60.0


def default_dir() -> Path:
    return data_dir() / "local"


def register(subparsers: argparse._SubParsersAction) -> None:
    local = subparsers.add_parser(
        "local",
        help="run a whole cluster on this machine",
        description="Create, start, inspect and stop a cluster of real processes on "
        "loopback. With no command: start it (if needed) and open the shell on it.",
    )
    local.set_defaults(run=run_local_shell, command_name="local")
    commands = local.add_subparsers(title="local commands", metavar="COMMAND")

    up = commands.add_parser("up", help="create (first time) and start the local cluster")
    _dir_option(up)
    up.add_argument(
        "--metaservers",
        type=int,
        default=DEFAULT_METASERVERS,
        choices=(1, 3, 5),
        metavar="N",
        help="metaservers when the cluster is created: 1, or a Raft group of 3 or 5 (default 1)",
    )
    up.add_argument(
        "--dataservers",
        type=int,
        default=DEFAULT_DATASERVERS,
        metavar="N",
        help="number of dataservers when the cluster is created (default 3)",
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
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

    revoke = commands.add_parser(
        "revoke",
        help="revoke a user's (or node's) certificates",
        description="Revoke every certificate the local cluster's CA issued to NAME: its "
        "servers refuse and disconnect the holder within seconds, without a restart.",
    )
    _dir_option(revoke)
    revoke.add_argument("name", metavar="NAME", help="identity name, e.g. alice")
    revoke.add_argument(
        "--role", choices=[role.value for role in Role], help="only the certificates of this role"
    )
    revoke.set_defaults(run=run_revoke)

    adduser = commands.add_parser(
        "adduser",
        help="issue a user a certificate and write a client config for it",
        description="Issue NAME a client certificate (an admin one with --admin) from the "
        "local cluster's CA and write a client config for it; prints the config's path "
        "(use it with 'dfs -c PATH' or DFS_CONFIG). 'dfs admin user add NAME' then gives "
        "the user a home directory.",
    )
    _dir_option(adduser)
    adduser.add_argument("name", metavar="NAME", help="the user's name, e.g. alice")
    adduser.add_argument("--admin", action="store_true", help="an admin (superuser) certificate")
    adduser.set_defaults(run=run_adduser)


def _dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder of the cluster (default {default_dir()})",
    )


def _open(args: argparse.Namespace, command: str) -> LocalCluster:
    from dfs.localcluster import LocalCluster, LocalClusterError

    try:
        return LocalCluster.open(args.dir or default_dir())
    except LocalClusterError as error:
        raise CommandError(command, str(error)) from None


def run_up(args: argparse.Namespace) -> int:
    if args.dataservers < 1:
        raise CommandError("local up", f"--dataservers must be at least 1, got {args.dataservers}")
    client_config = _up(
        "local up",
        (args.dir or default_dir()).absolute(),
        metaservers=args.metaservers,
        dataservers=args.dataservers,
        timeout=args.timeout,
    )
    print(client_config)
    return 0


def run_local_shell(args: argparse.Namespace) -> int:
    """``dfs local``: the local cluster in the default folder, up, and a shell on it."""
    if getattr(args, "shell_session", None) is not None:
        raise CommandError("local", "already in the shell; use 'local up|status|down'")
    args.config = str(
        _up(
            "local",
            default_dir().absolute(),
            metaservers=DEFAULT_METASERVERS,
            dataservers=DEFAULT_DATASERVERS,
            timeout=DEFAULT_TIMEOUT,
            quiet=True,
        )
    )
    from dfs_shell.main import run_shell

    return run_shell(args)


def _up(
    command: str,
    directory: Path,
    *,
    metaservers: int,
    dataservers: int,
    timeout: float,
    quiet: bool = False,
) -> Path:
    """Create (first time) and start the cluster in ``directory``: its client config."""
    from dfs.localcluster import DESCRIPTION, LocalCluster, LocalClusterError

    try:
        if (directory / DESCRIPTION).exists():
            cluster = LocalCluster.open(directory)
        else:
            cluster = LocalCluster.create(
                directory, metaservers=metaservers, dataservers=dataservers
            )
        running = cluster.running()
        if len(running) == len(cluster.nodes):
            if not quiet:
                print(
                    f"dfs: {command}: the cluster in {directory} is already running "
                    f"({len(running)} processes); see 'dfs local status --dir {directory}'",
                    file=sys.stderr,
                )
            return Path(cluster.client_config)
        if quiet:
            print(f"dfs: {command}: starting the local cluster in {directory}", file=sys.stderr)
        cluster.start()
        cluster.wait_ready(timeout=timeout)
    except LocalClusterError as error:
        raise CommandError(command, str(error)) from None
    return Path(cluster.client_config)


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


def run_revoke(args: argparse.Namespace) -> int:
    from dfs.localcluster import LocalClusterError
    from dfs.security.ca import CAError
    from dfs_shell.ca import report_revocation

    cluster = _open(args, "local revoke")
    try:
        revocation, pointed = cluster.revoke(args.name, args.role)
    except (CAError, LocalClusterError) as error:
        raise CommandError("local revoke", str(error)) from None
    report_revocation(revocation)
    running = cluster.running()
    if pointed and running:
        # A server reads security_config.json again on SIGHUP, a new CRL path included.
        for node in cluster.nodes:
            if node.name in running:
                try:
                    cluster.signal_node(node, signal.SIGHUP)
                except LocalClusterError:
                    pass  # it stopped meanwhile: it reads the file at its next start
        print(
            f"dfs: local revoke: {cluster.security_config} did not name the CRL; it does "
            "now, and the running servers were told to read it again (SIGHUP)",
            file=sys.stderr,
        )
    return 0


def run_adduser(args: argparse.Namespace) -> int:
    from dfs.security.ca import CAError

    cluster = _open(args, "local adduser")
    try:
        config = cluster.add_user(args.name, admin=args.admin)
    except (CAError, ValueError) as error:
        raise CommandError("local adduser", f"{args.name}: {error}") from None
    print(config)
    return 0


def run_down(args: argparse.Namespace) -> int:
    cluster = _open(args, "local down")
    stopped = cluster.stop()
    if stopped:
        print(f"stopped {', '.join(stopped)}")
    else:
        print(f"nothing was running in {cluster.directory}")
    return 0
