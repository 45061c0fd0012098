"""Owners and modes: ``chmod``, ``chown`` and ``chgrp``, each with ``-R`` for a
directory and everything under it.

Modes are octal (``755``, ``0640``, ``1777``); symbolic modes (``u+x``) are not
understood. Who may change what is the metaserver's to decide.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from dfs_shell.files import Failures, Session, add_command


def parse_mode(text: str) -> int:
    """An octal mode such as ``755`` or ``0640``, at most ``7777``."""
    if not text or len(text) > 4 or any(digit not in "01234567" for digit in text):
        raise argparse.ArgumentTypeError(f"invalid mode: {text!r} (octal, such as 755)")
    return int(text, 8)


def parse_owner(text: str) -> tuple[str | None, str | None]:
    """``OWNER``, ``OWNER:GROUP`` or ``:GROUP`` as (owner, group), None for one left
    as it is."""
    owner, colon, group = text.partition(":")
    if not owner and not group:
        raise argparse.ArgumentTypeError(f"invalid owner: {text!r} (OWNER[:GROUP])")
    if colon and not group:
        # chown alice: would take alice's login group; DFS users have none.
        raise argparse.ArgumentTypeError(f"invalid owner: {text!r}: the group is missing")
    return owner or None, group or None


def parse_group(text: str) -> str:
    if not text or ":" in text:
        raise argparse.ArgumentTypeError(f"invalid group: {text!r}")
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    chmod = add_command(
        subparsers,
        "chmod",
        "change the mode (permission bits) of files and directories",
        run_chmod,
        epilog="examples:\n  dfs chmod 640 /data/secret.txt\n  dfs chmod -R 755 /data/www",
    )
    chmod.add_argument("mode", type=parse_mode, metavar="MODE", help="octal, such as 755")

    chown = add_command(
        subparsers,
        "chown",
        "change the owner (and group) of files and directories",
        run_chown,
        epilog="examples:\n  dfs chown alice /home/alice\n"
        "  dfs chown -R alice:science /projects/x\n  dfs chown :science /projects/y",
    )
    chown.add_argument("owner", type=parse_owner, metavar="OWNER[:GROUP]")

    chgrp = add_command(
        subparsers,
        "chgrp",
        "change the group of files and directories",
        run_chgrp,
        epilog="examples:\n  dfs chgrp science /projects/x\n  dfs chgrp -R staff /shared",
    )
    chgrp.add_argument("group", type=parse_group, metavar="GROUP")

    for command in (chmod, chown, chgrp):
        command.add_argument(
            "-R", "--recursive", action="store_true", help="directories and all below them"
        )
        command.add_argument("paths", nargs="+", metavar="PATH")


def _each(
    session: Session, args: argparse.Namespace, name: str, change: Callable[[str], None]
) -> int:
    """``change`` every path (and, with -R, all below it): the paths first, then
    what is below them."""
    failures = Failures(name, session)

    def below(path: str) -> None:
        for entry in session.client.listdir(path):
            with failures.about(entry.path):
                change(entry.path)
                if entry.is_dir:
                    below(entry.path)

    for path in args.paths:
        remote = session.resolve(path)
        with failures.about(path, remote=remote):
            session.check_directory(path)
            change(remote)
            if args.recursive and session.client.stat(remote).is_dir:
                below(remote)
    return failures.status


def run_chmod(session: Session, args: argparse.Namespace) -> int:
    return _each(session, args, "chmod", lambda path: session.client.chmod(path, args.mode))


def run_chown(session: Session, args: argparse.Namespace) -> int:
    owner, group = args.owner
    return _each(session, args, "chown", lambda path: session.client.chown(path, owner, group))


def run_chgrp(session: Session, args: argparse.Namespace) -> int:
    return _each(session, args, "chgrp", lambda path: session.client.chown(path, group=args.group))
