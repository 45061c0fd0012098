"""``dfs admin ...``: look after the cluster. Needs an admin certificate in the client
config.

- ``status``: the metaservers, then every dataserver with its space and state;
- ``fsck [PATH]``: every chunk under PATH against its replication factor;
- ``decommission NAME [--wait]`` and ``recommission NAME``: drain a dataserver
  before taking it away, or take it back;
- ``safemode get|enter|leave`` and ``balancer start|stop|status``;
- ``backup FILE``: a consistent snapshot of the namespace from the leader;
- ``meta status|add|remove``: the metaserver Raft group. ``meta status`` asks every
  configured metaserver for its own view (so a follower that lags or a metaserver
  that is down shows as such); the rest go to the leader.

The output is for people; scripts rely on the exit status (``fsck``: 0 healthy, 1
not). What is printed is built by the pure ``format_*`` functions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dfs.client.admin import SAFE_MODE_ACTIONS, FsckProblem, FsckReport
from dfs.client.blocking import BlockingClient
from dfs.config import Address
from dfs_shell.errors import CommandError
from dfs_shell.files import FAILURES, LOST, Session, reason
from dfs_shell.sizes import human, parse_size

#: Seconds between two looks at a draining dataserver (``decommission --wait``).
POLL_INTERVAL = 0.5
DECOMMISSION_TIMEOUT = 3600.0

Run = Callable[[Session, argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction) -> None:
    admin = subparsers.add_parser(
        "admin",
        help="administer the cluster (admin certificate)",
        description="Administer the cluster; needs an admin certificate in the client config.",
    )
    groups = admin.add_subparsers(title="admin commands", metavar="COMMAND", required=True)

    # -h means human sizes (as in ls -h and df -h), so help is --help only.
    status = groups.add_parser(
        "status",
        help="the metaservers and the dataservers: state, space, chunks",
        description="The metaservers (as 'admin meta status' shows them) and every "
        "dataserver the leader knows. Exit status 3 when no leader serves, a "
        "metaserver does not answer or a dataserver is dead.",
        add_help=False,
    )
    status.add_argument("--help", action="help", help="show this help and exit")
    status.add_argument("-h", "--human", action="store_true", help="sizes like 1.5K 20.0M")
    status.set_defaults(run=_runner("admin status", run_cluster_status))

    fsck = groups.add_parser(
        "fsck",
        help="check every chunk under a path against its replication factor",
        description="List every missing, under-, over-replicated, corrupt or stale chunk "
        "under PATH and summarize. Exit status 0 when healthy, 1 otherwise.",
    )
    fsck.add_argument("path", nargs="?", default="/", metavar="PATH", help="default: /")
    fsck.set_defaults(run=_runner("admin fsck", run_fsck, subject="path"))

    backup = groups.add_parser(
        "backup",
        help="write a consistent snapshot of the namespace to a local file",
        description="The Raft leader writes the namespace (directories, files, "
        "owners, modes, chunk lists, groups, quotas) as it was at one point to a file "
        "in its data folder, without pausing the log; it is copied to FILE (mode 0600), "
        "checked against its SHA-256, and the leader's copy is deleted. Restore it with "
        "'dfs-meta-restore' on every metaserver "
        "(docs/deployment.md, 'Backup and restore').",
    )
    backup.add_argument("file", metavar="FILE", help="the local file to write")
    backup.set_defaults(run=_runner("admin backup", run_backup, subject="file"))

    decommission = groups.add_parser(
        "decommission",
        help="drain a dataserver before taking it away",
        description="The dataserver takes no new chunks and its chunks are copied to "
        "others; it is 'decommissioned' (safe to stop) once every chunk it holds has its "
        "replicas elsewhere. Interrupting --wait does not stop the draining.",
    )
    decommission.add_argument("name", metavar="NAME", help="the dataserver (see admin status)")
    decommission.add_argument("--wait", action="store_true", help="wait until it is decommissioned")
    decommission.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"with --wait: give up after this long (default {DECOMMISSION_TIMEOUT:g})",
    )
    decommission.set_defaults(run=_runner("admin decommission", run_decommission, subject="name"))

    recommission = groups.add_parser(
        "recommission",
        help="take a decommissioned dataserver back",
        description="Undo decommission: the dataserver takes chunks again.",
    )
    recommission.add_argument("name", metavar="NAME", help="the dataserver (see admin status)")
    recommission.set_defaults(run=_runner("admin recommission", run_recommission, subject="name"))

    safemode = groups.add_parser(
        "safemode",
        help="show, enter or leave safe mode (no namespace change)",
        description="get: show safe mode; enter: refuse every namespace change until "
        "'leave'; leave: end it, also the one a new leader keeps until enough chunks "
        "are reported.",
    )
    safemode.add_argument(
        "action", nargs="?", default="get", choices=SAFE_MODE_ACTIONS, metavar="get|enter|leave"
    )
    safemode.set_defaults(run=_runner("admin safemode", run_safemode))

    balancer = groups.add_parser(
        "balancer",
        help="start, stop or show the balancer",
        description="The balancer moves chunks from the fullest dataservers to the "
        "emptiest until every dataserver's use is within the threshold of the mean.",
    )
    actions = balancer.add_subparsers(title="balancer commands", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start balancing")
    start.add_argument(
        "--threshold",
        type=_percent,
        default=0.0,
        metavar="PCT",
        help="percentage points from the mean use (default: the configured one)",
    )
    start.set_defaults(run=_runner("admin balancer", run_balancer), action="start")
    stop = actions.add_parser("stop", help="stop balancing (moves under way finish)")
    stop.set_defaults(run=_runner("admin balancer", run_balancer), action="stop", threshold=0.0)
    show = actions.add_parser("status", help="show the balancer's state")
    show.set_defaults(run=_runner("admin balancer", run_balancer), action="status", threshold=0.0)

    group = groups.add_parser(
        "group",
        help="list groups, add or remove their members",
        description="Groups decide who shares a file's group permissions. Changing "
        "them takes a superuser (an admin certificate or a member of the superuser group).",
    )
    group_commands = group.add_subparsers(title="group commands", metavar="COMMAND", required=True)
    group_add = group_commands.add_parser("add", help="add users to a group (made if new)")
    group_add.add_argument("group", metavar="GROUP")
    group_add.add_argument("users", nargs="+", metavar="USER")
    group_add.set_defaults(run=_runner("admin group add", run_group_add, subject="group"))
    group_remove = group_commands.add_parser(
        "remove", help="remove users from a group (an empty group is gone)"
    )
    group_remove.add_argument("group", metavar="GROUP")
    group_remove.add_argument("users", nargs="+", metavar="USER")
    group_remove.set_defaults(run=_runner("admin group remove", run_group_remove, subject="group"))
    group_list = group_commands.add_parser("list", help="every group and its members")
    group_list.set_defaults(run=_runner("admin group list", run_group_list))

    user = groups.add_parser(
        "user",
        help="add a user's home directory",
        description="A user is the name in their certificate (issue one with 'dfs ca "
        "issue --dir CA --role client --name NAME'); 'user add' gives them /user/NAME.",
    )
    user_commands = user.add_subparsers(title="user commands", metavar="COMMAND", required=True)
    user_add = user_commands.add_parser(
        "add", help="make /user/NAME owned by NAME, group NAME, mode 0750"
    )
    user_add.add_argument("name", metavar="NAME")
    user_add.set_defaults(run=_runner("admin user add", run_user_add, subject="name"))

    quota = groups.add_parser(
        "quota",
        help="set or clear a directory's name and space quotas",
        description="A name quota bounds the files and directories under a directory "
        "(itself included); a space quota bounds their bytes times replication. "
        "'dfs count -q PATH' shows them with their use.",
    )
    quota_commands = quota.add_subparsers(title="quota commands", metavar="COMMAND", required=True)
    quota_set = quota_commands.add_parser(
        "set", help="set the name quota, the space quota or both (the other stays)"
    )
    quota_set.add_argument("path", metavar="PATH")
    quota_set.add_argument("--files", type=_count, metavar="N", help="files and directories")
    quota_set.add_argument(
        "--bytes", type=_size_argument, metavar="SIZE", help="bytes times replication: 10G, 1.5T"
    )
    quota_set.set_defaults(run=_runner("admin quota set", run_quota_set, subject="path"))
    quota_clear = quota_commands.add_parser("clear", help="remove both quotas")
    quota_clear.add_argument("path", metavar="PATH")
    quota_clear.set_defaults(run=_runner("admin quota clear", run_quota_clear, subject="path"))

    meta = groups.add_parser(
        "meta",
        help="the metaserver Raft group",
        description="Show the metaserver Raft group, add or remove a member.",
    )
    commands = meta.add_subparsers(title="meta commands", metavar="COMMAND", required=True)

    meta_status = commands.add_parser(
        "status", help="each metaserver's role, term, commit index and lag"
    )
    meta_status.set_defaults(run=_runner("admin meta status", run_status))

    add = commands.add_parser(
        "add",
        help="add a metaserver to the group (then start it with the members as partners)",
    )
    add.add_argument("raft", metavar="HOST:PORT", help="the new metaserver's raft_listen")
    add.set_defaults(run=_runner("admin meta add", run_add))

    remove = commands.add_parser("remove", help="remove a metaserver from the group")
    remove.add_argument("raft", metavar="HOST:PORT", help="the metaserver's raft_listen")
    remove.set_defaults(run=_runner("admin meta remove", run_remove))


def _runner(name: str, run: Run, subject: str | None = None) -> Callable[..., int]:
    """``run`` with a session; a failure is one line ``dfs: NAME: reason``, or
    ``dfs: NAME: SUBJECT: reason`` naming the argument ``subject`` (a path, a
    dataserver)."""

    def runner(args: argparse.Namespace) -> int:
        args.command_name = name
        # The interactive shell's session is kept open, for its next command.
        shared = getattr(args, "shell_session", None)
        session = shared if shared is not None else Session(args)
        session.command = name
        try:
            return int(run(session, args))
        except FAILURES as error:
            if isinstance(error, LOST):
                session.reset()
            if subject is None:
                raise CommandError(name, reason(error)) from None
            about = getattr(args, subject)
            raise CommandError(name, f"{about}: {reason(error, about)}") from None
        finally:
            if shared is None:
                session.close()

    return runner


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a name quota is at least 1")
    return value


def _size_argument(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"must be more than 0 and less than 100: {text!r}")
    return value


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart; those in ``right``
    (numbers) aligned to the right."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _bytes(count: int) -> str:
    """``1288490188 B (1.2G)``; no second figure when both say the same."""
    return f"{count} B ({human(count)})" if count >= 1024 else f"{count} B"


def _percentage(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "0.0 %"


# -- the metaserver group --------------------------------------------------------


def _leaders(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [view for view in views if view.get("role") == "leader" and view.get("serving")]


def format_metaservers(views: list[dict[str, Any]]) -> str:
    """Each metaserver's own view of the Raft group, and the group as the leader
    sees it (``admin meta status``)."""
    leaders = _leaders(views)
    commit = leaders[0]["commit_index"] if leaders else None
    lines = [
        f"{'METASERVER':<22} {'NAME':<10} {'RAFT':<22} {'ROLE':<10} {'TERM':>6} "
        f"{'COMMIT':>8} {'APPLIED':>8} {'LAG':>6}"
    ]
    for view in views:
        if "error" in view:
            lines.append(f"{view['address']:<22} unreachable: {view['error']}")
            continue
        lag = "-" if commit is None else str(max(0, commit - view["last_applied"]))
        lines.append(
            f"{view['address']:<22} {view['name']:<10} {view['raft']:<22} {view['role']:<10} "
            f"{view['term']:>6} {view['commit_index']:>8} {view['last_applied']:>8} {lag:>6}"
        )
    if leaders:
        members = sorted([leaders[0]["raft"], *(m["raft"] for m in leaders[0]["members"])])
        lines.append(f"group (as the leader {leaders[0]['name']} sees it): {', '.join(members)}")
    else:
        lines.append("no leader: the group is electing one, or a majority is down")
    return "\n".join(lines)


def metaservers_healthy(views: list[dict[str, Any]]) -> bool:
    """A leader serves and every metaserver answered."""
    return bool(_leaders(views)) and not any("error" in view for view in views)


def run_status(session: Session, args: argparse.Namespace) -> int:
    views = session.client.metaserver_status()
    print(format_metaservers(views))
    return 0 if metaservers_healthy(views) else 3


def _raft_address(args: argparse.Namespace) -> str:
    try:
        return str(Address.parse(args.raft))
    except ValueError as error:
        raise CommandError(args.command_name, f"{args.raft}: {error}") from None


def run_add(session: Session, args: argparse.Namespace) -> int:
    raft = _raft_address(args)
    session.client.add_metaserver(raft)
    print(f"added {raft} to the metaserver group; start it with the members as raft_partners")
    return 0


def run_remove(session: Session, args: argparse.Namespace) -> int:
    raft = _raft_address(args)
    session.client.remove_metaserver(raft)
    print(f"removed {raft} from the metaserver group")
    return 0


# -- the cluster at a glance -------------------------------------------------------

DATASERVER_STATES = ("alive", "dead", "decommissioning", "decommissioned")


def _heartbeat(age: float) -> str:
    if age < 0:
        return "never"
    return f"{age:.1f}s ago" if age < 100 else f"{age:.0f}s ago"


def format_dataservers(dataservers: list[dict[str, Any]], *, human_sizes: bool = False) -> str:
    """A table of the dataservers by name, and how many are in each state."""
    if not dataservers:
        return "no dataserver has registered"

    def size(value: int) -> str:
        return human(value) if human_sizes else str(value)

    rows = []
    for ds in sorted(dataservers, key=lambda ds: ds["name"]):
        capacity = ds["capacity"]
        use = f"{100.0 * ds['used'] / capacity:.0f}%" if capacity else "-"
        rows.append(
            [
                ds["name"],
                ds["address"],
                ds["state"],
                size(capacity),
                size(ds["used"]),
                size(ds["free"]),
                use,
                str(ds["chunks"]),
                _heartbeat(ds["last_heartbeat_age"]),
            ]
        )
    headers = [
        "NAME",
        "ADDRESS",
        "STATE",
        "CAPACITY",
        "USED",
        "FREE",
        "USE%",
        "CHUNKS",
        "LAST HEARTBEAT",
    ]
    lines = _table(headers, rows, right={3, 4, 5, 6, 7})
    counts = [
        f"{sum(1 for ds in dataservers if ds['state'] == state)} {state}"
        for state in DATASERVER_STATES
    ]
    others = sum(1 for ds in dataservers if ds["state"] not in DATASERVER_STATES)
    if others:
        counts.append(f"{others} other")
    lines.append(f"{len(dataservers)} dataservers: {', '.join(counts)}")
    return "\n".join(lines)


def run_cluster_status(session: Session, args: argparse.Namespace) -> int:
    views = session.client.metaserver_status()
    print(format_metaservers(views))
    print()
    dataservers = session.client.dataservers()
    print(format_dataservers(dataservers, human_sizes=args.human))
    healthy = metaservers_healthy(views) and not any(ds["state"] == "dead" for ds in dataservers)
    return 0 if healthy else 3


# -- fsck -----------------------------------------------------------------------------


def format_problem(problem: FsckProblem) -> str:
    """``/a/b: chunk 3 (id 17 v2): under-replicated: 2 of 3 replicas (ds1, ds2)``"""
    where = f" ({', '.join(problem.locations)})" if problem.locations else ""
    return (
        f"{problem.path}: chunk {problem.index} (id {problem.chunk_id} v{problem.version}): "
        f"{problem.problem}: {problem.replicas} of {problem.wanted} replicas{where}"
    )


def format_fsck(report: FsckReport, path: str) -> str:
    """The problems, one a line, then a summary in the manner of ``hdfs fsck``."""
    counters = report.summary
    chunks = counters["chunks"]
    status = "HEALTHY" if report.healthy else "UNHEALTHY"
    average = counters["replicas"] / chunks if chunks else 0.0
    rows = [
        ("Total size", _bytes(counters["bytes"])),
        ("Total directories", str(counters["directories"])),
        ("Total files", str(counters["files"])),
        ("Total chunks", str(chunks)),
        ("Open chunks (being written)", str(counters["open_chunks"])),
        ("Missing chunks", f"{counters['missing']} ({_percentage(counters['missing'], chunks)})"),
        (
            "Under-replicated chunks",
            f"{counters['under_replicated']} ({_percentage(counters['under_replicated'], chunks)})",
        ),
        (
            "Over-replicated chunks",
            f"{counters['over_replicated']} ({_percentage(counters['over_replicated'], chunks)})",
        ),
        ("Corrupt chunks", f"{counters['corrupt']} ({_percentage(counters['corrupt'], chunks)})"),
        ("Stale chunks", f"{counters['stale']} ({_percentage(counters['stale'], chunks)})"),
        ("Average replication", f"{average:.2f}"),
        (
            "Dataservers",
            f"{counters['dataservers_alive']} alive, {counters['dataservers_dead']} dead, "
            f"{counters['decommissioning']} decommissioning",
        ),
        ("Copies in flight", str(counters["copies_in_flight"])),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = [format_problem(problem) for problem in report.problems]
    if lines:
        lines.append("")
    lines.append(f"Status: {status}")
    lines += [f" {label + ':':<{width}}{value}" for label, value in rows]
    lines += ["", f"The filesystem under path '{path}' is {status}"]
    return "\n".join(lines)


def run_fsck(session: Session, args: argparse.Namespace) -> int:
    session.check_directory(args.path)
    report = session.client.fsck(args.path)
    print(format_fsck(report, args.path))
    return 0 if report.healthy else 1


# -- decommissioning ----------------------------------------------------------------


def format_draining(dataserver: dict[str, Any], elapsed: float) -> str:
    """The line ``decommission --wait`` keeps redrawing on a terminal."""
    remaining = dataserver.get("drain_remaining", -1)
    left = f", {remaining} still to copy" if remaining >= 0 else ""
    return (
        f"{dataserver['name']}: {dataserver['state']}, holds {dataserver['chunks']} chunks"
        f"{left} ({elapsed:.0f} s)"
    )


def wait_decommissioned(
    client: BlockingClient,
    name: str,
    timeout: float,
    *,
    progress: Callable[[dict[str, Any], float], None] | None = None,
    interval: float = POLL_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Look at dataserver ``name`` every ``interval`` seconds until it is
    decommissioned (its last listing is the answer), calling ``progress(dataserver,
    seconds waited)`` after each look; CommandError after ``timeout`` seconds."""
    began = clock()
    while True:
        found = [ds for ds in client.dataservers() if ds["name"] == name]
        if not found:
            raise CommandError("admin decommission", f"{name}: no such dataserver")
        dataserver = found[0]
        if dataserver["state"] == "decommissioned":
            return dataserver
        waited = clock() - began
        if progress is not None:
            progress(dataserver, waited)
        if waited >= timeout:
            raise CommandError(
                "admin decommission",
                f"{name}: still {dataserver['state']} after {timeout:g} s "
                f"(holds {dataserver['chunks']} chunks); it goes on draining",
            )
        sleep(min(interval, max(0.0, timeout - waited)))


class _StatusLine:
    """One line on a terminal's standard error, redrawn in place."""

    def __init__(self) -> None:
        self._width = 0

    def __call__(self, dataserver: dict[str, Any], elapsed: float) -> None:
        text = format_draining(dataserver, elapsed)
        sys.stderr.write("\r" + text.ljust(self._width))
        sys.stderr.flush()
        self._width = max(self._width, len(text))

    def end(self) -> None:
        if self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()


def run_decommission(session: Session, args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise CommandError(args.command_name, "--timeout goes with --wait", exit_code=2)
    session.client.decommission(args.name)
    if not args.wait:
        print(
            f"{args.name} is decommissioning: its chunks are being copied to other "
            f"dataservers; follow it with 'dfs admin status' or "
            f"'dfs admin decommission {args.name} --wait'"
        )
        return 0
    line = _StatusLine() if sys.stderr.isatty() else None
    try:
        wait_decommissioned(
            session.client,
            args.name,
            DECOMMISSION_TIMEOUT if args.timeout is None else args.timeout,
            progress=line,
        )
    finally:
        if line is not None:
            line.end()
    print(
        f"{args.name} is decommissioned: every chunk it held has its replicas on other "
        f"dataservers; it can be stopped"
    )
    return 0


def run_recommission(session: Session, args: argparse.Namespace) -> int:
    session.client.recommission(args.name)
    print(f"{args.name} is back in service: it takes new chunks again")
    return 0


# -- safe mode and the balancer -------------------------------------------------------


def format_safemode(state: dict[str, Any]) -> str:
    """``Safe mode is OFF``, or ``Safe mode is ON (reason)`` and, while the leader
    waits for chunk reports, how far they are."""
    if not state["on"]:
        return "Safe mode is OFF"
    reason_text = state["reason"] or (
        "entered by an administrator" if state["manual"] else "waiting for chunk reports"
    )
    lines = [f"Safe mode is ON ({reason_text})"]
    if not state["manual"]:
        reported, total = state["reported_chunks"], state["total_chunks"]
        share = 100.0 * reported / total if total else 100.0
        lines.append(
            f"  Chunks reported: {reported} of {total} ({share:.1f}%, "
            f"{100.0 * state['threshold']:.1f}% needed)"
        )
        alive = f"  Dataservers alive: {state['dataservers_alive']}"
        if state["min_dataservers"]:
            alive += f" ({state['min_dataservers']} needed)"
        lines.append(alive)
    return "\n".join(lines)


def run_safemode(session: Session, args: argparse.Namespace) -> int:
    print(format_safemode(session.client.safemode(args.action)))
    return 0


def format_balancer(state: dict[str, Any]) -> str:
    """Whether the balancer runs, its threshold, how far from balanced the cluster is
    and what it moved."""
    running = "running" if state["running"] else "not running"
    continuous = ", continuous" if state["continuous"] else ""
    balanced = "balanced" if state["balanced"] else "not balanced"
    bandwidth = f"{human(state['bandwidth'])}/s per move" if state["bandwidth"] else "unlimited"
    return "\n".join(
        [
            f"Balancer is {running} (threshold {state['threshold']:g}%{continuous})",
            f"  Spread: {state['spread']:.1f}% from the mean use: {balanced}",
            f"  Moves in flight: {state['moves_in_flight']}",
            f"  Moved: {state['moved_chunks']} chunks, {_bytes(state['moved_bytes'])}",
            f"  Bandwidth: {bandwidth}",
        ]
    )


def run_balancer(session: Session, args: argparse.Namespace) -> int:
    print(format_balancer(session.client.balancer(args.action, args.threshold)))
    return 0


# -- users and groups -----------------------------------------------------------------


def format_groups(groups: dict[str, list[str]]) -> str:
    """One line per group: ``GROUP: member, member``."""
    if not groups:
        return "No groups"
    return "\n".join(f"{name}: {', '.join(members)}" for name, members in sorted(groups.items()))


def run_group_add(session: Session, args: argparse.Namespace) -> int:
    members = session.client.group_add(args.group, args.users)
    print(format_groups({args.group: members}))
    return 0


def run_group_remove(session: Session, args: argparse.Namespace) -> int:
    members = session.client.group_remove(args.group, args.users)
    print(format_groups({args.group: members}) if members else f"{args.group}: no member left")
    return 0


def run_group_list(session: Session, args: argparse.Namespace) -> int:
    print(format_groups(session.client.groups()))
    return 0


def run_user_add(session: Session, args: argparse.Namespace) -> int:
    print(f"{session.client.add_user(args.name)} is ready for {args.name}")
    return 0


# -- quotas ---------------------------------------------------------------------------


def format_quota(quota: dict[str, Any]) -> str:
    """The quotas of a directory and their use, one line each."""
    files, size = quota["files_quota"], quota["bytes_quota"]
    names = f"{quota['names']} files and directories"
    space = f"{_bytes(quota['space'])} (bytes times replication)"
    return "\n".join(
        [
            f"{quota['path']}:",
            f"  Name quota:  {'none' if files is None else files} ({names} in use)",
            f"  Space quota: {'none' if size is None else _bytes(size)} ({space} in use)",
        ]
    )


def run_quota_set(session: Session, args: argparse.Namespace) -> int:
    if args.files is None and args.bytes is None:
        raise CommandError("admin quota set", "give --files N, --bytes SIZE or both")
    session.check_directory(args.path)
    remote = session.resolve(args.path)
    print(format_quota(session.client.set_quota(remote, files=args.files, bytes=args.bytes)))
    return 0


def run_quota_clear(session: Session, args: argparse.Namespace) -> int:
    session.check_directory(args.path)
    print(format_quota(session.client.clear_quota(session.resolve(args.path))))
    return 0


# -- backups --------------------------------------------------------------------------


def run_backup(session: Session, args: argparse.Namespace) -> int:
    target = os.path.abspath(args.file)
    # Written next to FILE and renamed over it once complete: an interrupted backup
    # never leaves a FILE that looks whole.
    temporary = f"{target}.partial"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            answer = session.client.backup(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    print(f"backup written to {args.file}: {_bytes(answer['size'])}, SHA-256 {answer['sha256']}")
    return 0
