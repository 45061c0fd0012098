"""Finding one's way: ``cd``, ``pwd``, ``tree`` and ``find`` in DFS, ``lcd`` and ``lls``
on the local side.

``cd`` and ``lcd`` change the interactive shell's working directories (the remote
one lives in its :class:`~dfs_shell.files.Session`, the local one is the process's).
Run one-shot (``dfs cd /data``) they only check that the directory exists, print
nothing, and exit 0 or 1 as in the shell: the next ``dfs`` command starts at ``/`` and
in the folder it was started in again.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import posixpath
import stat as stat_module
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from dfs_shell.errors import CommandError
from dfs_shell.files import FAILURES, LOST, Failures, Session, add_command, reason


@attrs.frozen
class TreeNode:
    """A name in a drawn tree and what is below it."""

    name: str
    is_dir: bool
    children: tuple[TreeNode, ...] = ()


def draw_tree(root: TreeNode) -> Iterator[str]:
    """The lines ``tree`` prints: the root, then every entry under box-drawing lines,
    then a blank line and the count of directories and files below the root."""
    counts = [0, 0]

    def below(node: TreeNode, prefix: str) -> Iterator[str]:
        for index, child in enumerate(node.children):
            last = index == len(node.children) - 1
            yield prefix + ("└── " if last else "├── ") + child.name
            counts[0 if child.is_dir else 1] += 1
            yield from below(child, prefix + ("    " if last else "│   "))

    yield root.name
    yield from below(root, "")
    yield ""
    yield tree_summary(*counts)


def tree_summary(directories: int, files: int) -> str:
    return (
        f"{directories} director{'y' if directories == 1 else 'ies'}, "
        f"{files} file{'' if files == 1 else 's'}"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    cd = add_command(
        subparsers,
        "cd",
        "change the DFS working directory",
        run_cd,
        description="Change the DFS working directory, from which relative paths are "
        "taken. One-shot (dfs cd PATH) it only checks PATH is a directory.",
        epilog="examples:\n  cd /data/logs\n  cd ..\n  cd            (back to /)",
    )
    cd.add_argument("path", nargs="?", default="/", metavar="PATH", help="default: /")

    add_command(
        subparsers,
        "pwd",
        "print the DFS working directory",
        run_pwd,
        epilog="examples:\n  pwd",
    )

    lcd = add_command(
        subparsers,
        "lcd",
        "change the local working directory",
        run_lcd,
        description="Change the local working directory, from which put and get take "
        "relative local paths. One-shot (dfs lcd DIR) it only checks DIR.",
        epilog="examples:\n  lcd ~/Downloads\n  lcd           (back to the home folder)",
    )
    lcd.add_argument("directory", nargs="?", metavar="DIR", help="default: the home folder")

    lls = add_command(
        subparsers,
        "lls",
        "list a local directory",
        run_lls,
        epilog="examples:\n  lls\n  lls -l ~/Downloads",
    )
    lls.add_argument("-l", action="store_true", help="long format: mode, size, time")
    lls.add_argument("directory", nargs="?", default=".", metavar="DIR", help="default: .")

    tree = add_command(
        subparsers,
        "tree",
        "show a directory tree",
        run_tree,
        epilog="examples:\n  dfs tree /data",
    )
    tree.add_argument(
        "path", nargs="?", default=".", metavar="PATH", help="default: the working directory"
    )

    find = add_command(
        subparsers,
        "find",
        "find files and directories by name or type",
        run_find,
        description="Print every path under PATH (PATH included) whose name matches "
        "the shell pattern of -name and whose type is that of -type.",
        epilog="examples:\n  dfs find /data -name '*.log'\n  dfs find /data -type d",
    )
    find.add_argument(
        "path", nargs="?", default=".", metavar="PATH", help="default: the working directory"
    )
    find.add_argument("-name", metavar="PATTERN", help="a shell pattern: *, ?, [abc]")
    find.add_argument("-type", choices=("f", "d"), help="f: files, d: directories")


def _directory(session: Session, command: str, path: str) -> str:
    """The absolute path of the directory ``path``, or a CommandError."""
    remote = session.resolve(path)
    try:
        entry = session.client.stat(remote)
    except FAILURES as error:
        if isinstance(error, LOST):
            session.reset()
        raise CommandError(command, f"{path}: {reason(error, remote)}") from None
    if not entry.is_dir:
        raise CommandError(command, f"{path}: Not a directory")
    return entry.path


def run_cd(session: Session, args: argparse.Namespace) -> int:
    session.cwd = _directory(session, "cd", args.path)
    return 0


def run_pwd(session: Session, args: argparse.Namespace) -> int:
    print(session.cwd)
    return 0


def run_lcd(session: Session, args: argparse.Namespace) -> int:
    directory = args.directory or os.path.expanduser("~")
    try:
        os.chdir(os.path.expanduser(directory))
    except OSError as error:
        raise CommandError("lcd", f"{directory}: {reason(error)}") from None
    return 0


def run_lls(session: Session, args: argparse.Namespace) -> int:
    folder = Path(os.path.expanduser(args.directory))
    try:
        # os.stat, not Path.stat: Path drops a trailing slash, and lls file/ must fail.
        if stat_module.S_ISDIR(os.stat(os.path.expanduser(args.directory)).st_mode):
            # Hidden names are left out, as ls does.
            entries = sorted(
                (entry for entry in folder.iterdir() if not entry.name.startswith(".")),
                key=lambda entry: entry.name,
            )
            names = [entry.name for entry in entries]
        else:
            entries, names = [folder], [args.directory]
        for entry, name in zip(entries, names, strict=True):
            print(_local_long(entry, name) if args.l else name)
    except OSError as error:
        raise CommandError("lls", f"{args.directory}: {reason(error)}") from None
    return 0


def _local_long(entry: Path, name: str) -> str:
    info = entry.lstat()
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.st_mtime))
    return f"{stat_module.filemode(info.st_mode)} {info.st_size:>12} {when} {name}"


def run_tree(session: Session, args: argparse.Namespace) -> int:
    root = _directory(session, "tree", args.path)
    failures = Failures("tree", session)

    def node(name: str, path: str) -> TreeNode:
        children: Sequence[TreeNode] = ()
        with failures.about(path):
            children = [
                node(entry.name, entry.path) if entry.is_dir else TreeNode(entry.name, False)
                for entry in session.client.listdir(path)
            ]
        return TreeNode(name, True, tuple(children))

    top = node(args.path, root)
    for line in draw_tree(top):
        print(line)
    return failures.status


def run_find(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("find", session)
    remote = session.resolve(args.path)

    def matches(name: str, is_dir: bool) -> bool:
        if args.name is not None and not fnmatch.fnmatchcase(name, args.name):
            return False
        return args.type is None or args.type == ("d" if is_dir else "f")

    def walk(shown: str, path: str) -> None:
        with failures.about(shown, remote=path):
            for entry in session.client.listdir(path):
                child = posixpath.join(shown, entry.name)
                if matches(entry.name, entry.is_dir):
                    print(child)
                if entry.is_dir:
                    walk(child, entry.path)

    with failures.about(args.path, remote=remote):
        entry = session.stat(args.path)
        if matches(posixpath.basename(entry.path) or "/", entry.is_dir):
            print(args.path)
        if entry.is_dir:
            walk(args.path, entry.path)
    return failures.status
