"""``dfs admin meta status|add|remove``: look at and change the metaserver group.

Needs an admin certificate in the client config. ``status`` asks every configured
metaserver for its own view (so a follower that lags or a metaserver that is down
shows as such); ``add`` and ``remove`` go to the leader, which changes the group one
member at a time through the Raft log.
"""

from __future__ import annotations

import argparse
from typing import Any

from dfs.config import Address
from dfs_shell.errors import CommandError
from dfs_shell.files import FAILURES, Session, reason


def register(subparsers: argparse._SubParsersAction) -> None:
    admin = subparsers.add_parser(
        "admin",
        help="administer the cluster (admin certificate)",
        description="Administer the cluster; needs an admin certificate in the client config.",
    )
    groups = admin.add_subparsers(title="admin commands", metavar="COMMAND", required=True)
    meta = groups.add_parser(
        "meta",
        help="the metaserver Raft group",
        description="Show the metaserver Raft group, add or remove a member.",
    )
    commands = meta.add_subparsers(title="meta commands", metavar="COMMAND", required=True)

    status = commands.add_parser(
        "status", help="each metaserver's role, term, commit index and lag"
    )
    status.set_defaults(run=_runner("admin meta status", run_status))

    add = commands.add_parser(
        "add",
        help="add a metaserver to the group (then start it with the members as partners)",
    )
    add.add_argument("raft", metavar="HOST:PORT", help="the new metaserver's raft_listen")
    add.set_defaults(run=_runner("admin meta add", run_add))

    remove = commands.add_parser("remove", help="remove a metaserver from the group")
    remove.add_argument("raft", metavar="HOST:PORT", help="the metaserver's raft_listen")
    remove.set_defaults(run=_runner("admin meta remove", run_remove))


def _runner(name: str, run: Any) -> Any:
    def runner(args: argparse.Namespace) -> int:
        args.command_name = name
        session = Session(args)
        try:
            return int(run(session, args))
        except FAILURES as error:
            raise CommandError(name, reason(error)) from None
        finally:
            session.close()

    return runner


def _raft_address(args: argparse.Namespace) -> str:
    try:
        return str(Address.parse(args.raft))
    except ValueError as error:
        raise CommandError(args.command_name, f"{args.raft}: {error}") from None


def run_status(session: Session, args: argparse.Namespace) -> int:
    views = session.client.metaserver_status()
    leaders = [view for view in views if view.get("role") == "leader" and view.get("serving")]
    commit = leaders[0]["commit_index"] if leaders else None
    print(
        f"{'METASERVER':<22} {'NAME':<10} {'RAFT':<22} {'ROLE':<10} {'TERM':>6} "
        f"{'COMMIT':>8} {'APPLIED':>8} {'LAG':>6}"
    )
    for view in views:
        if "error" in view:
            print(f"{view['address']:<22} unreachable: {view['error']}")
            continue
        lag = "-" if commit is None else str(max(0, commit - view["last_applied"]))
        print(
            f"{view['address']:<22} {view['name']:<10} {view['raft']:<22} {view['role']:<10} "
            f"{view['term']:>6} {view['commit_index']:>8} {view['last_applied']:>8} {lag:>6}"
        )
    if leaders:
        members = sorted([leaders[0]["raft"], *(m["raft"] for m in leaders[0]["members"])])
        print(f"group (as the leader {leaders[0]['name']} sees it): {', '.join(members)}")
    else:
        print("no leader: the group is electing one, or a majority is down")
    unreachable = sum(1 for view in views if "error" in view)
    return 0 if leaders and not unreachable else 3


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
