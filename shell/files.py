"""The one-shot file commands: ``dfs [-c CONFIG] ls|mkdir|put|get|cat|rm|mv|stat|du|df|setrep``.

Each runs against the cluster named by the client config (``-c``, else the
environment variable DFS_CONFIG, else ~/.config/dfs/client_config.json, else
/etc/dfs/client_config.json). Failures print ``dfs: CMD: PATH: reason`` and exit 1.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import stat as stat_module
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import crochet
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionClosed

from dfs.client.blocking import BlockingClient, connect, run_eventually
from dfs.client.client import Entry
from dfs.client.connection import NoMetaserverReachable
from dfs.config import ConfigError
from dfs.protocol import errors
from dfs_shell.errors import CommandError
from dfs_shell.sizes import human

#: Errors whose standard wording says all (like the C library's strerror).
PLAIN = (
    errors.FileNotFound,
    errors.FileExists,
    errors.NotADirectory,
    errors.IsADirectory,
    errors.DirectoryNotEmpty,
    errors.PermissionDenied,
)

#: What a command may meet besides DFS errors: local files, and a cluster that stops
#: answering or drops the connection half way.
FAILURES = (
    errors.DFSError,
    OSError,
    ConnectionClosed,
    ConnectError,
    defer.TimeoutError,
    NoMetaserverReachable,
)

#: Seconds an interrupted put or get may take to remove its partial file.
CANCEL_GRACE = 5.0


def default_config() -> Path | None:
    for candidate in (
        os.environ.get("DFS_CONFIG"),
        os.path.expanduser("~/.config/dfs/client_config.json"),
        "/etc/dfs/client_config.json",
    ):
        if candidate and (os.environ.get("DFS_CONFIG") == candidate or Path(candidate).exists()):
            return Path(candidate)
    return None


def reason(error: BaseException, path: str = "") -> str:
    """The words after ``dfs: CMD: PATH:``, without saying PATH twice."""
    if isinstance(error, PLAIN):
        return error.user_text
    if isinstance(error, errors.NotLeader):
        # What is left after the client library followed the leader for request_timeout.
        return "No metaserver leader answered in time (is a leader being elected?)"
    if isinstance(error, errors.DFSError):
        detail = error.message
        if path and detail.startswith(f"{path}: "):
            detail = detail[len(path) + 2 :]
        return f"{error.user_text}: {detail}" if detail else error.user_text
    if isinstance(error, defer.TimeoutError):
        return "Timed out: the cluster did not answer in time"
    if isinstance(error, (ConnectionClosed, ConnectError)):
        return f"Lost the connection to the cluster: {error}"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error) or type(error).__name__


class Session:
    """The connection a command uses, opened on first need."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._client: BlockingClient | None = None

    @property
    def client(self) -> BlockingClient:
        if self._client is None:
            config = self._args.config or default_config()
            if config is None:
                raise CommandError(
                    self._args.command_name,
                    "no client config: give -c CONFIG or set DFS_CONFIG",
                )
            try:
                self._client = connect(config)
            except ConfigError as error:
                raise CommandError(self._args.command_name, str(error)) from None
            except Exception as error:
                raise CommandError(
                    self._args.command_name, f"cannot reach the cluster: {reason(error)}"
                ) from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def register(subparsers: argparse._SubParsersAction) -> None:
    def command(name: str, help_text: str, run: Callable[..., int]) -> argparse.ArgumentParser:
        # -h means human sizes (as in ls -h and du -h), so help is --help only.
        parser = subparsers.add_parser(name, help=help_text, description=help_text, add_help=False)
        parser.add_argument("--help", action="help", help="show this help and exit")
        parser.set_defaults(run=_runner(name, run), command_name=name)
        return parser

    ls = command("ls", "list directories (or show files)", run_ls)
    ls.add_argument("-l", action="store_true", help="long format: mode, owner, size, time")
    ls.add_argument("-h", "--human", action="store_true", help="sizes like 1.5K 20.0M")
    ls.add_argument("-d", action="store_true", help="list directories themselves")
    ls.add_argument("paths", nargs="*", default=["/"], metavar="PATH")

    mkdir = command("mkdir", "make directories", run_mkdir)
    mkdir.add_argument(
        "-p", "--parents", action="store_true", help="make parents, no error if it exists"
    )
    mkdir.add_argument("paths", nargs="+", metavar="PATH")

    put = command("put", "copy local files into DFS", run_put)
    put.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")
    put.add_argument(
        "-r", "--replication", type=int, default=0, help="replicas (default: cluster's)"
    )
    put.add_argument("sources", nargs="+", metavar="LOCAL")
    put.add_argument("destination", metavar="REMOTE")

    get = command("get", "copy DFS files to local files", run_get)
    get.add_argument("-f", "--force", action="store_true", help="overwrite an existing local file")
    get.add_argument("sources", nargs="+", metavar="REMOTE")
    get.add_argument("destination", metavar="LOCAL")

    cat = command("cat", "print files", run_cat)
    cat.add_argument("paths", nargs="+", metavar="PATH")

    rm = command("rm", "remove files or directories", run_rm)
    rm.add_argument(
        "-r", "--recursive", action="store_true", help="remove directories and their contents"
    )
    rm.add_argument("-f", "--force", action="store_true", help="no error for missing paths")
    rm.add_argument("paths", nargs="+", metavar="PATH")

    mv = command("mv", "move or rename", run_mv)
    mv.add_argument("source", metavar="SOURCE")
    mv.add_argument("destination", metavar="DESTINATION")

    stat = command("stat", "show an entry's details", run_stat)
    stat.add_argument("paths", nargs="+", metavar="PATH")

    du = command("du", "space used under paths", run_du)
    du.add_argument("-s", "--summarize", action="store_true", help="one total per path")
    du.add_argument("-h", "--human", action="store_true", help="sizes like 1.5K 20.0M")
    du.add_argument("paths", nargs="*", default=["/"], metavar="PATH")

    df = command("df", "cluster capacity", run_df)
    df.add_argument("-h", "--human", action="store_true", help="sizes like 1.5K 20.0M")

    setrep = command("setrep", "set the replication factor of files", run_setrep)
    setrep.add_argument("replication", type=int, metavar="N")
    setrep.add_argument("paths", nargs="+", metavar="PATH")


def _runner(name: str, run: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
    def runner(args: argparse.Namespace) -> int:
        session = Session(args)
        try:
            return run(session, args)
        finally:
            session.close()

    return runner


class Failures:
    """Collects per-path failures: each printed at once, the exit status at the end.

    With ``missing_ok`` (``rm -f``) a path that does not exist is no failure at all.
    A put or get names its ``local`` file when the local side fails (OSError), the
    DFS path otherwise.
    """

    def __init__(self, command: str, *, missing_ok: bool = False) -> None:
        self.command = command
        self.missing_ok = missing_ok
        self.count = 0

    @contextmanager
    def about(self, path: str, local: str | None = None) -> Iterator[None]:
        try:
            yield
        except (CommandError, BrokenPipeError):
            raise
        except FAILURES as error:
            if self.missing_ok and isinstance(error, errors.FileNotFound):
                return
            self.count += 1
            if local is not None and isinstance(error, OSError):
                path = local
            print(f"dfs: {self.command}: {path}: {reason(error, path)}", file=sys.stderr)

    @property
    def status(self) -> int:
        return 1 if self.count else 0


def _size(value: int, args: argparse.Namespace) -> str:
    return human(value) if getattr(args, "human", False) else str(value)


def _long(entry: Entry, args: argparse.Namespace) -> str:
    kind = stat_module.S_IFDIR if entry.is_dir else stat_module.S_IFREG
    mode = stat_module.filemode(kind | entry.mode)
    replication = "-" if entry.is_dir else str(entry.replication)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.mtime))
    name = entry.path if args.paths_shown_in_full else entry.name
    size = _size(entry.length, args)
    return f"{mode} {replication:>3} {entry.owner:<10} {entry.group:<10} {size:>12} {when} {name}"


def run_ls(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("ls")
    args.paths_shown_in_full = False
    for index, path in enumerate(args.paths):
        with failures.about(path):
            entry = session.client.stat(path)
            if entry.is_dir and not args.d:
                entries = session.client.listdir(path)
                if len(args.paths) > 1:
                    print(("\n" if index else "") + f"{path}:")
            else:
                entries = [entry]
                args.paths_shown_in_full = True
            for item in entries:
                print(
                    _long(item, args)
                    if args.l
                    else (item.path if args.paths_shown_in_full else item.name)
                )
            args.paths_shown_in_full = False
    return failures.status


def run_mkdir(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("mkdir")
    for path in args.paths:
        with failures.about(path):
            session.client.mkdir(path, parents=args.parents)
    return failures.status


def _progress(label: str, total: int) -> Any:
    if not sys.stderr.isatty():
        return None
    from dfs_shell.progress import TransferProgress

    return TransferProgress(label, total)


def _transfer(start: Callable[..., Any], label: str, total: int) -> int:
    """Run a put/get in the reactor thread, showing progress here; Ctrl-C cancels it."""
    done = [0]

    def progress(count: int) -> None:
        done[0] = count

    bar = _progress(label, total)
    # The bar is up before the first byte moves, so that it shows the whole transfer.
    with bar if bar is not None else nullcontext():
        result = start(progress=progress)
        try:
            if bar is None:
                return int(result.wait(None))
            while True:
                try:
                    value = result.wait(0.1)
                except crochet.TimeoutError:
                    bar.update(done[0])
                    continue
                bar.update(done[0])
                return int(value)
        except KeyboardInterrupt:
            # A cancelled transfer removes its partial file; give it the moment that
            # takes, or the process would end first. A second Ctrl-C stops waiting.
            result.cancel()
            try:
                result.wait(CANCEL_GRACE)
            except Exception:
                pass
            raise


def run_put(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("put")
    client = session.client
    into_directory = len(args.sources) > 1 or args.destination.endswith("/")
    if not into_directory:
        try:
            into_directory = client.stat(args.destination).is_dir
        except errors.FileNotFound:
            pass
        except FAILURES as error:
            raise CommandError(
                "put", f"{args.destination}: {reason(error, args.destination)}"
            ) from None
    for source in args.sources:
        target = (
            posixpath.join(args.destination, Path(source).name)
            if into_directory
            else args.destination
        )
        with failures.about(target, local=source):
            if Path(source).is_dir():
                raise IsADirectoryError(21, "Is a directory")
            total = Path(source).stat().st_size
            options = {"replication": args.replication} if args.replication else {}
            _transfer(
                partial(
                    run_eventually,
                    client.async_client.put,
                    source,
                    target,
                    overwrite=args.force,
                    **options,
                ),
                target,
                total,
            )
    return failures.status


def run_get(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("get")
    client = session.client
    local_dir = Path(args.destination).is_dir()
    if len(args.sources) > 1 and not local_dir:
        raise CommandError("get", f"{args.destination}: Not a directory")
    for source in args.sources:
        target = (
            Path(args.destination) / posixpath.basename(source)
            if local_dir
            else Path(args.destination)
        )
        with failures.about(source, local=str(target)):
            entry = client.stat(source)
            if entry.is_dir:
                raise errors.IsADirectory(source)
            if target.exists() and not args.force:
                raise FileExistsError(17, "File exists (use -f to overwrite)")
            _transfer(
                partial(run_eventually, client.async_client.get, source, target),
                source,
                entry.length,
            )
    return failures.status


def run_cat(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("cat")
    out = sys.stdout.buffer
    for path in args.paths:
        with failures.about(path):
            with session.client.open(path) as remote:
                while block := remote.read(4 * 1024 * 1024):
                    _write_all(out, block)
            out.flush()
    return failures.status


def _write_all(out: Any, data: bytes) -> None:
    # A write into a pipe that its reader closed half way returns a short count
    # before it fails; write the rest, so that the failure is seen, not skipped.
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]


def run_rm(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("rm", missing_ok=args.force)
    for path in args.paths:
        with failures.about(path):
            session.client.delete(path, recursive=args.recursive)
    return failures.status


def run_mv(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("mv")
    client = session.client
    destination = args.destination
    with failures.about(args.destination):
        try:
            if client.stat(destination).is_dir:
                destination = posixpath.join(
                    destination, posixpath.basename(args.source.rstrip("/"))
                )
        except errors.FileNotFound:
            pass
    with failures.about(args.source):
        client.rename(args.source, destination)
    return failures.status


def run_stat(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("stat")
    for path in args.paths:
        with failures.about(path):
            entry = session.client.stat(path)
            kind = stat_module.S_IFDIR if entry.is_dir else stat_module.S_IFREG
            print(f"  Path: {entry.path}")
            print(f"  Type: {entry.kind}{'' if entry.complete else ' (being written)'}")
            print(f"  Size: {entry.length}")
            if not entry.is_dir:
                print(f"  Replication: {entry.replication}   Chunk size: {entry.chunk_size}")
            print(f"  Mode: ({entry.mode:04o}/{stat_module.filemode(kind | entry.mode)})")
            print(f"  Owner: {entry.owner}   Group: {entry.group}")
            print(
                f"  Modified: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(entry.mtime))}"
            )
            print(f"  Inode: {entry.inode}")
    return failures.status


def run_du(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("du")
    for path in args.paths:
        with failures.about(path):
            if args.summarize:
                _print_usage(session.client.du(path), path, args)
                continue
            entry = session.client.stat(path)
            children = session.client.listdir(path) if entry.is_dir else [entry]
            for child in children:
                _print_usage(session.client.du(child.path), child.path, args)
    return failures.status


def _print_usage(usage: dict[str, int], path: str, args: argparse.Namespace) -> None:
    plain, replicated = _size(usage["bytes"], args), _size(usage["replicated_bytes"], args)
    print(f"{plain:<12} {replicated:<12} {path}")


def run_df(session: Session, args: argparse.Namespace) -> int:
    space = session.client.df()
    capacity = space["capacity"]
    used_percent = 100.0 * space["used"] / capacity if capacity else 0.0
    print(f"{'Size':>12} {'Used':>12} {'Available':>12} {'Use%':>5}  Dataservers")
    print(
        f"{_size(capacity, args):>12} {_size(space['used'], args):>12} "
        f"{_size(space['free'], args):>12} {used_percent:>4.0f}%  "
        f"{space['dataservers_alive']} alive, {space['dataservers_dead']} dead"
    )
    return 0


def run_setrep(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("setrep")
    for path in args.paths:
        with failures.about(path):
            session.client.set_replication(path, args.replication)
    return failures.status
