"""File contents inside DFS: ``head``, ``tail`` and ``cp``.

``head`` and ``tail`` read only the part of a file they print: ``tail`` seeks to the
end and reads backwards in growing pieces until it holds the lines it wants. ``cp``
streams one DFS file into another through this client, in pieces; a copy that fails
or is interrupted (Ctrl-C) leaves no partial destination file.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from dfs.client.blocking import run_eventually
from dfs.protocol import errors
from dfs.protocol.records import Entry
from dfs_shell.files import (
    Failures,
    Session,
    add_command,
    into_directory,
    transfer,
    write_all,
)

#: Bytes read at a time by head -n, and first read backwards by tail -n (doubling).
BLOCK = 65536
DEFAULT_LINES = 10


def tail_range(length: int, count: int) -> tuple[int, int]:
    """(offset, size) of the last ``count`` bytes of a file of ``length`` bytes."""
    start = max(0, length - max(0, count))
    return start, length - start


def lines_end(data: bytes, count: int) -> int | None:
    """Where the first ``count`` lines of ``data`` end (just after the count-th
    newline), or None when ``data`` holds fewer than ``count`` newlines."""
    if count <= 0:
        return 0
    at = -1
    for _ in range(count):
        at = data.find(b"\n", at + 1)
        if at < 0:
            return None
    return at + 1


def tail_lines_start(suffix: bytes, count: int, whole: bool) -> int | None:
    """Where the last ``count`` lines start in ``suffix``, the end of a file (the
    whole file if ``whole``); None when an earlier part is needed to tell. A newline
    that ends the file ends its last line, it does not start an empty one."""
    if count <= 0:
        return len(suffix)
    end = len(suffix) - 1 if suffix.endswith(b"\n") else len(suffix)
    for _ in range(count):
        at = suffix.rfind(b"\n", 0, end)
        if at < 0:
            return 0 if whole else None
        end = at
    return end + 1


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, summary, run, examples in (
        (
            "head",
            "print the first lines (or bytes) of a file",
            run_head,
            "examples:\n  dfs head /data/app.log\n  dfs head -n 50 /data/app.log\n"
            "  dfs head -c 1024 /data/blob.bin | xxd",
        ),
        (
            "tail",
            "print the last lines (or bytes) of a file",
            run_tail,
            "examples:\n  dfs tail /data/app.log\n  dfs tail -n 100 /data/app.log\n"
            "  dfs tail -c 4096 /data/blob.bin",
        ),
    ):
        command = add_command(subparsers, name, summary, run, epilog=examples)
        amount = command.add_mutually_exclusive_group()
        amount.add_argument("-c", "--bytes", type=_count, metavar="BYTES", help="this many bytes")
        amount.add_argument(
            "-n",
            "--lines",
            type=_count,
            default=DEFAULT_LINES,
            metavar="LINES",
            help=f"this many lines (default: {DEFAULT_LINES})",
        )
        command.add_argument("paths", nargs="+", metavar="PATH")

    cp = add_command(
        subparsers,
        "cp",
        "copy files (or directories, -r) inside DFS",
        run_cp,
        description="Copy inside DFS: each SOURCE to DESTINATION, or into DESTINATION "
        "when it is a directory or there are several sources. Copies keep their "
        "source's replication factor and chunk size.",
        epilog="examples:\n  dfs cp /data/a.txt /data/b.txt\n  dfs cp /data/a.txt /data/b.txt "
        "/archive\n  dfs cp -r /data /backup/data\n  dfs cp -f /data/new.txt /data/old.txt",
    )
    cp.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    cp.add_argument("-f", "--force", action="store_true", help="overwrite existing files")
    cp.add_argument("sources", nargs="+", metavar="SOURCE")
    cp.add_argument("destination", metavar="DESTINATION")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return value


def run_head(session: Session, args: argparse.Namespace) -> int:
    return _print_parts(session, args, "head", _head)


def run_tail(session: Session, args: argparse.Namespace) -> int:
    return _print_parts(session, args, "tail", _tail)


def _print_parts(
    session: Session,
    args: argparse.Namespace,
    name: str,
    part: Callable[[Any, argparse.Namespace, Any], None],
) -> int:
    failures = Failures(name, session)
    out = sys.stdout.buffer
    for index, path in enumerate(args.paths):
        remote = session.resolve(path)
        with failures.about(path, remote=remote):
            if session.stat(path).is_dir:
                raise errors.IsADirectory(remote)
            with session.client.open(remote) as reader:
                if len(args.paths) > 1:
                    gap = "\n" if index else ""
                    write_all(out, f"{gap}==> {path} <==\n".encode())
                part(reader, args, out)
            out.flush()
    return failures.status


def _head(reader: Any, args: argparse.Namespace, out: Any) -> None:
    if args.bytes is not None:
        write_all(out, reader.read(args.bytes))
        return
    remaining = args.lines
    while remaining > 0 and (block := reader.read(BLOCK)):
        end = lines_end(block, remaining)
        if end is not None:
            write_all(out, block[:end])
            return
        write_all(out, block)
        remaining -= block.count(b"\n")


def _tail(reader: Any, args: argparse.Namespace, out: Any) -> None:
    length = reader.seek(0, os.SEEK_END)
    if args.bytes is not None:
        offset, size = tail_range(length, args.bytes)
        reader.seek(offset)
        write_all(out, reader.read(size))
        return
    suffix, offset, size = b"", length, BLOCK
    while True:
        # Backwards in pieces that double, so a file of long lines takes few reads.
        start = max(0, offset - size)
        reader.seek(start)
        suffix = reader.read(offset - start) + suffix
        offset, size = start, size * 2
        begin = tail_lines_start(suffix, args.lines, whole=offset == 0)
        if begin is not None:
            write_all(out, suffix[begin:])
            return


def run_cp(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("cp", session)
    destination = session.resolve(args.destination)
    inside = into_directory(session, "cp", args)
    for source in args.sources:
        remote = session.resolve(source)
        target = posixpath.join(destination, posixpath.basename(remote)) if inside else destination
        entry: Entry | None = None
        before = failures.count
        with failures.about(source, remote=remote):
            entry = session.stat(source)
            if entry.is_dir and not args.recursive:
                raise errors.IsADirectory(remote)
            if entry.is_dir and (target + "/").startswith(entry.path.rstrip("/") + "/"):
                raise errors.InvalidArgument(f"cannot copy a directory into itself, {target}")
        if entry is not None and failures.count == before:
            _copy(session, failures, args, entry, target)
    return failures.status


def _copy(
    session: Session, failures: Failures, args: argparse.Namespace, entry: Entry, target: str
) -> None:
    client = session.client
    children: list[Entry] = []
    with failures.about(target):
        if entry.is_dir:
            client.mkdir(target, parents=True)
            children = client.listdir(entry.path)
        else:
            transfer(
                partial(
                    run_eventually,
                    client.async_client.copy,
                    entry.path,
                    target,
                    overwrite=args.force,
                ),
                target,
                entry.length,
            )
    for child in children:
        _copy(session, failures, args, child, posixpath.join(target, child.name))
