"""The file commands: ``dfs [-c CONFIG] ls|mkdir|put|get|cat|rm|mv|stat|du|df|setrep``,
and the :class:`Session` every command (and the interactive shell) runs in.

Each runs against the cluster named by the client config (``-c``, else the
environment variable DFS_CONFIG, else ~/.config/dfs/client_config.json, else
/etc/dfs/client_config.json). Failures print ``dfs: CMD: PATH: reason`` and exit 1;
a wrong command line exits 2.

The same commands run one-shot (``dfs ls /``: a session per command) and in the
interactive shell, which sets ``args.shell_session`` to its long-lived session: its
connection and its working directory (``cd``) then carry over from one command to the
next. DFS paths that do not start with ``/`` are taken from that working directory
(``/`` in the one-shot form).
"""

from __future__ import annotations

import argparse
import errno
import os
import posixpath
import signal
import stat as stat_module
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, TypeVar

import crochet
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionClosed

from dfs.client import transfer as tree
from dfs.client.blocking import BlockingClient, Eventual, connect, run, run_eventually
from dfs.client.connection import NoMetaserverReachable
from dfs.config import ConfigError
from dfs.protocol import errors, paths
from dfs.protocol.records import Entry
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

#: Failures after which the connection is not worth keeping: the session reconnects.
LOST = (ConnectionClosed, ConnectError, defer.TimeoutError, NoMetaserverReachable)

T = TypeVar("T")

#: Seconds an interrupted put or get may take to remove its partial file.
CANCEL_GRACE = 5.0


def data_dir() -> Path:
    """Where dfs keeps a user's data: ``$XDG_DATA_HOME/dfs`` or ``~/.local/share/dfs``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "dfs"


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


def names_directory(path: str) -> bool:
    """Whether ``path`` can name only a directory: POSIX path resolution takes a path
    that ends in a slash (or in ``/.``) as ``path/.``, so ``ls file/`` is an error."""
    return path.rstrip("/") != "" and path.endswith(("/", "/."))


class Session:
    """The connection commands use (opened on first need) and the remote working
    directory. One-shot, a command has its own; the interactive shell keeps one."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._client: BlockingClient | None = None
        #: The remote working directory, absolute and normalised.
        self.cwd = "/"
        #: The command being run, named in connection errors.
        self.command = getattr(args, "command_name", "dfs")

    def resolve(self, path: str) -> str:
        """``path`` as an absolute DFS path: relative paths are taken from ``cwd``."""
        return paths.resolve(self.cwd, path)

    def stat(self, path: str) -> Entry:
        """The entry ``path`` names; NotADirectory for a file named with a trailing
        slash (:func:`names_directory`)."""
        entry = self.client.stat(self.resolve(path))
        if not entry.is_dir and names_directory(path):
            raise errors.NotADirectory(entry.path)
        return entry

    def check_directory(self, path: str) -> None:
        """For a command that does not look ``path`` up itself: NotADirectory if it
        ends in a slash and names a file. A path that names nothing is left to the
        command (``mkdir new/`` makes it)."""
        if names_directory(path):
            try:
                self.stat(path)
            except errors.FileNotFound:
                pass

    @property
    def client(self) -> BlockingClient:
        if self._client is None:
            config = self._args.config or default_config()
            if config is None:
                raise CommandError(
                    self.command,
                    "no client config: give -c CONFIG or set DFS_CONFIG",
                )
            try:
                self._client = connect(config)
            except ConfigError as error:
                raise CommandError(self.command, str(error)) from None
            except Exception as error:
                raise CommandError(
                    self.command, f"cannot reach the cluster: {reason(error)}"
                ) from None
        return self._client

    def reset(self) -> None:
        """Drop the connection (it was lost); the next use of ``client`` reconnects."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass  # it is gone already, which is what we want

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    summary: str,
    run: Callable[..., int],
    *,
    epilog: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand running ``run(session, args)``: ``summary`` is its line in ``help``,
    ``epilog`` its examples in ``help NAME`` and ``dfs NAME --help``."""
    # -h means human sizes (as in ls -h and du -h), so help is --help only.
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=description or summary,
        epilog=epilog,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.set_defaults(run=_runner(name, run), command_name=name)
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    def command(name: str, summary: str, run: Callable[..., int], epilog: str) -> Any:
        return add_command(subparsers, name, summary, run, epilog=epilog)

    ls = command(
        "ls",
        "list directories (or show files)",
        run_ls,
        "examples:\n  dfs ls /data\n  dfs ls -lh /data/logs\n  dfs ls -R /data\n  dfs ls -ld /data",
    )
    ls.add_argument("-l", action="store_true", help="long format: mode, owner, size, time")
    ls.add_argument("-h", "--human", action="store_true", help="sizes like 1.5K 20.0M")
    ls.add_argument("-d", action="store_true", help="list directories themselves")
    ls.add_argument(
        "-R", "--recursive", action="store_true", help="list subdirectories, recursively"
    )
    ls.add_argument("paths", nargs="*", metavar="PATH", help="default: the working directory")

    mkdir = command(
        "mkdir",
        "make directories",
        run_mkdir,
        "examples:\n  dfs mkdir /data\n  dfs mkdir -p /a/b/c",
    )
    mkdir.add_argument(
        "-p", "--parents", action="store_true", help="make parents, no error if it exists"
    )
    mkdir.add_argument("paths", nargs="+", metavar="PATH")

    put = command(
        "put",
        "copy local files into DFS",
        run_put,
        "examples:\n  dfs put app.log /data/logs/app.log\n  dfs put a.txt b.txt /data/\n"
        "  dfs put -r photos /backup\n  dfs put -r -j 16 photos /backup\n"
        "  dfs put -f --replication 2 app.log /data/app.log\n"
        "  tar c photos | dfs put - /backup/photos.tar",
    )
    put.add_argument("-f", "--force", action="store_true", help="overwrite existing files")
    put.add_argument(
        "-r", "--recursive", action="store_true", help="copy directories and their contents"
    )
    put.add_argument(
        "--replication", type=int, default=0, metavar="N", help="replicas (default: cluster's)"
    )
    _jobs_option(put)
    put.add_argument(
        "sources", nargs="+", metavar="LOCAL", help="a local file or folder; - for standard input"
    )
    put.add_argument("destination", metavar="REMOTE")

    get = command(
        "get",
        "copy DFS files to local files",
        run_get,
        "examples:\n  dfs get /data/logs/app.log .\n  dfs get -f /data/a.txt copy.txt\n"
        "  dfs get -r /backup/photos restored",
    )
    get.add_argument("-f", "--force", action="store_true", help="overwrite existing local files")
    get.add_argument(
        "-r", "--recursive", action="store_true", help="copy directories and their contents"
    )
    _jobs_option(get)
    get.add_argument("sources", nargs="+", metavar="REMOTE")
    get.add_argument("destination", metavar="LOCAL")

    cat = command("cat", "print files", run_cat, "examples:\n  dfs cat /data/a.txt | wc -l")
    cat.add_argument("paths", nargs="+", metavar="PATH")

    rm = command(
        "rm",
        "remove files or directories",
        run_rm,
        "examples:\n  dfs rm /data/a.txt\n  dfs rm -r /data/old\n  dfs rm -f /maybe/there",
    )
    rm.add_argument(
        "-r", "--recursive", action="store_true", help="remove directories and their contents"
    )
    rm.add_argument("-f", "--force", action="store_true", help="no error for missing paths")
    rm.add_argument("paths", nargs="+", metavar="PATH")

    mv = command(
        "mv",
        "move or rename",
        run_mv,
        "examples:\n  dfs mv /data/a.txt /data/b.txt\n  dfs mv /data/b.txt /archive",
    )
    mv.add_argument("source", metavar="SOURCE")
    mv.add_argument("destination", metavar="DESTINATION")

    stat = command("stat", "show an entry's details", run_stat, "examples:\n  dfs stat /data/a.txt")
    stat.add_argument("paths", nargs="+", metavar="PATH")

    du = command(
        "du",
        "space used under paths",
        run_du,
        "examples:\n  dfs du /data\n  dfs du -sh /data",
    )
    du.add_argument("-s", "--summarize", action="store_true", help="one total per path")
    du.add_argument("-h", "--human", action="store_true", help="sizes like 1.5K 20.0M")
    du.add_argument("paths", nargs="*", metavar="PATH", help="default: the working directory")

    count = command(
        "count",
        "directories, files and bytes under paths; with -q their quotas",
        run_count,
        "columns: DIR_COUNT FILE_COUNT CONTENT_SIZE PATH; with -q first QUOTA REM_QUOTA "
        "SPACE_QUOTA REM_SPACE_QUOTA (none and inf where there is no quota)\n"
        "examples:\n  dfs count /data\n  dfs count -q -h /user/alice",
    )
    count.add_argument("-q", "--quota", action="store_true", help="show quotas and what is left")
    count.add_argument("-h", "--human", action="store_true", help="sizes like 1.5K 20.0M")
    count.add_argument("-v", "--header", action="store_true", help="print a header line")
    count.add_argument("paths", nargs="*", metavar="PATH", help="default: the working directory")

    df = command("df", "cluster capacity", run_df, "examples:\n  dfs df -h")
    df.add_argument("-h", "--human", action="store_true", help="sizes like 1.5K 20.0M")

    setrep = command(
        "setrep",
        "set the replication factor of files",
        run_setrep,
        "examples:\n  dfs setrep 2 /data/a.txt",
    )
    setrep.add_argument("replication", type=int, metavar="N")
    setrep.add_argument("paths", nargs="+", metavar="PATH")

    # The commands that came with the interactive shell, each group in its module.
    from dfs_shell import attributes, content, navigation
    from dfs_shell import help as help_command

    for group in (navigation, content, attributes, help_command):
        group.register(subparsers)


def _jobs(value: str) -> int:
    jobs = int(value)
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {jobs}")
    return jobs


def _jobs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-j",
        "--jobs",
        type=_jobs,
        default=tree.DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"with -r, files copied at once (default {tree.DEFAULT_CONCURRENCY})",
    )


def _runner(name: str, run: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
    """``run(session, args)`` in the interactive shell's session (``args.shell_session``,
    kept open) or in a session of its own (closed after)."""

    def runner(args: argparse.Namespace) -> int:
        shared = getattr(args, "shell_session", None)
        session = shared if shared is not None else Session(args)
        session.command = name
        try:
            return int(run(session, args))
        except (CommandError, BrokenPipeError):
            raise
        except FAILURES as error:
            if isinstance(error, LOST):
                session.reset()
            raise CommandError(name, reason(error)) from None
        finally:
            if shared is None:
                session.close()

    return runner


class Failures:
    """Collects per-path failures: each printed at once, the exit status at the end.

    With ``missing_ok`` (``rm -f``) a path that does not exist is no failure at all.
    A put or get names its ``local`` file when the local side fails (OSError), the
    DFS path otherwise. A lost connection resets ``session``, so that the interactive
    shell's next command reconnects.
    """

    def __init__(
        self, command: str, session: Session | None = None, *, missing_ok: bool = False
    ) -> None:
        self.command = command
        self.session = session
        self.missing_ok = missing_ok
        self.count = 0

    @contextmanager
    def about(
        self, path: str, local: str | None = None, remote: str | None = None
    ) -> Iterator[None]:
        """``path`` is named in the message; ``remote`` (the resolved DFS path, which
        the metaserver's messages name) is not repeated after it."""
        try:
            yield
        except (CommandError, BrokenPipeError):
            raise
        except FAILURES as error:
            self.report(error, path, local=local, remote=remote)

    def report(
        self, error: BaseException, path: str, local: str | None = None, remote: str | None = None
    ) -> None:
        """Print one failure as :meth:`about` does, and count it."""
        if isinstance(error, LOST) and self.session is not None:
            self.session.reset()
        if self.missing_ok and isinstance(error, errors.FileNotFound):
            return
        self.count += 1
        if local is not None and isinstance(error, OSError):
            path = local
        text = reason(error, remote or path)
        if remote and remote != path and text.startswith(f"{path}: "):
            text = text[len(path) + 2 :]
        print(f"dfs: {self.command}: {path}: {text}", file=sys.stderr)

    @property
    def status(self) -> int:
        return 1 if self.count else 0


def _size(value: int, args: argparse.Namespace) -> str:
    return human(value) if getattr(args, "human", False) else str(value)


# A listing of thousands of entries shows a few modes and minutes many times over:
# each is formatted once.
@lru_cache(maxsize=256)
def _file_mode(kind_and_mode: int) -> str:
    return stat_module.filemode(kind_and_mode)


@lru_cache(maxsize=4096)
def _minute(minute: int) -> str:
    # Time zones and their changes fall on whole minutes: every second of a minute
    # shows as its first does.
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(minute * 60))


def long_line(entry: Entry, name: str, human_sizes: bool = False) -> str:
    """One ``ls -l`` line for ``entry``, showing it as ``name``."""
    kind = stat_module.S_IFDIR if entry.is_dir else stat_module.S_IFREG
    mode = _file_mode(kind | entry.mode)
    replication = "-" if entry.is_dir else str(entry.replication)
    when = _minute(int(entry.mtime // 60))
    size = human(entry.length) if human_sizes else str(entry.length)
    return f"{mode} {replication:>3} {entry.owner:<10} {entry.group:<10} {size:>12} {when} {name}"


def run_ls(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("ls", session)
    paths = args.paths or ["."]
    client = session.client
    headers = len(paths) > 1 or args.recursive
    first = [True]

    def show(entries: list[Entry], names: list[str]) -> None:
        if args.l:
            lines = [
                long_line(entry, name, args.human)
                for entry, name in zip(entries, names, strict=True)
            ]
        else:
            lines = names
        # One write for the lot, not one print a line.
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")

    def listing(shown: str, path: str) -> None:
        entries = client.listdir(path)
        if headers:
            print(("" if first[0] else "\n") + f"{shown}:")
        first[0] = False
        show(entries, [entry.name for entry in entries])
        if args.recursive:
            for entry in entries:
                if entry.is_dir:
                    child = posixpath.join(shown, entry.name)
                    with failures.about(child, remote=entry.path):
                        listing(child, entry.path)

    # Files first, then directories, as ls does.
    files: list[tuple[str, Entry]] = []
    directories: list[tuple[str, Entry]] = []
    for path in paths:
        with failures.about(path, remote=session.resolve(path)):
            entry = session.stat(path)
            (directories if entry.is_dir and not args.d else files).append((path, entry))
    show([entry for _, entry in files], [shown for shown, _ in files])
    if files:
        first[0] = False
    for shown, entry in directories:
        with failures.about(shown, remote=entry.path):
            listing(shown, entry.path)
    return failures.status


def run_mkdir(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("mkdir", session)
    for path in args.paths:
        with failures.about(path, remote=session.resolve(path)):
            session.client.mkdir(session.resolve(path), parents=args.parents)
    return failures.status


def _progress(label: str, total: int | None) -> Any:
    """A progress bar on a terminal; none when ``total`` is unknown (a pipe)."""
    if total is None or not sys.stderr.isatty():
        return None
    from dfs_shell.progress import TransferProgress

    return TransferProgress(label, total)


@contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C back for the length of the block and take it after: an operation
    started in the block is then known, and can be cancelled, whenever it comes.

    A process that ignores SIGINT (started in the background by a script: its shell
    ignores SIGINT for it) goes on ignoring it, in the block as outside it. Taking
    the ones that happen to come in the block and no other would make Ctrl-C work
    or not by the timing of a few milliseconds.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, caught[0])
            else:
                raise KeyboardInterrupt


def transfer(start: Callable[..., Eventual[T]], label: str, total: int | None) -> T:
    """Run a put/get/cp in the reactor thread, showing progress here; Ctrl-C cancels it
    (which removes its partial file) and is raised again."""
    done = [0]

    def progress(count: int) -> None:
        done[0] = count

    with ExitStack() as stack:
        result: Eventual[T] | None = None
        try:
            # A Ctrl-C is held back until the bar is up and the transfer started:
            # it then finds both to end. (One that came while the bar was being set
            # up would leave its thread running, and the process could not exit.)
            with _interrupt_after():
                # The bar is up before the first byte moves, so that it shows the
                # whole transfer.
                bar = _progress(label, total)
                if bar is not None:
                    stack.enter_context(bar)
                result = start(progress=progress)
            if bar is None:
                return result.wait(None)
            while True:
                try:
                    value = result.wait(0.1)
                except crochet.TimeoutError:
                    bar.update(done[0])
                    continue
                bar.update(done[0])
                return value
        except KeyboardInterrupt:
            # A cancelled transfer removes its partial file; give it the moment that
            # takes, or the process would end first. A second Ctrl-C stops waiting.
            if result is not None:
                result.abandon(CANCEL_GRACE)
            raise


def into_directory(session: Session, command: str, args: argparse.Namespace) -> bool:
    """Whether SOURCE... DESTINATION puts the sources inside DESTINATION (several
    sources, a trailing slash, or an existing directory) rather than at it."""
    if len(args.sources) > 1 or args.destination.endswith("/"):
        return True
    destination = session.resolve(args.destination)
    try:
        return session.client.stat(destination).is_dir
    except errors.FileNotFound:
        return False
    except FAILURES as error:
        if isinstance(error, LOST):
            session.reset()
        raise CommandError(command, f"{args.destination}: {reason(error, destination)}") from None


#: The LOCAL that stands for standard input (``dfs put - PATH``); a local file named
#: ``-`` is ``./-``.
STDIN = "-"


def run_put(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("put", session)
    destination = session.resolve(args.destination)
    if STDIN in args.sources:
        return _put_stdin(session, failures, args, destination)
    inside = into_directory(session, "put", args)
    for source in args.sources:
        local = Path(source)
        target = posixpath.join(destination, local.name) if inside else destination
        if names_directory(source) and not local.is_dir():
            # Path drops the slash; the system does not: ENOTDIR, or ENOENT.
            with failures.about(source, local=source):
                os.stat(source)
            continue
        _put(session, failures, args, local, target)
    return failures.status


def _put(
    session: Session, failures: Failures, args: argparse.Namespace, local: Path, target: str
) -> None:
    """Copy ``local`` to ``target``; a directory with its contents (``-r``), merged into
    a directory that exists already."""
    client = session.client
    with failures.about(target, local=str(local)):
        if local.is_dir():
            if not args.recursive:
                raise IsADirectoryError(21, "Is a directory (use -r)")
            _put_tree(session, failures, args, local, target)
        else:
            total = local.stat().st_size
            options = {"replication": args.replication} if args.replication else {}
            transfer(
                partial(
                    run_eventually,
                    client.async_client.put,
                    local,
                    target,
                    overwrite=args.force,
                    **options,
                ),
                target,
                total,
            )


def _put_stdin(
    session: Session, failures: Failures, args: argparse.Namespace, destination: str
) -> int:
    """``put - PATH``: standard input, streamed to its end, to the file PATH."""
    if len(args.sources) > 1:
        raise CommandError("put", "-: standard input can only be copied on its own")
    if getattr(args, "shell_session", None) is not None:
        raise CommandError(
            "put", "-: standard input is the shell's terminal here; run dfs put - PATH instead"
        )
    if into_directory(session, "put", args):
        raise CommandError("put", f"{args.destination}: Is a directory (name the file to write to)")
    if sys.stdin is None:
        raise CommandError("put", "-: there is no standard input")
    stdin = sys.stdin.buffer
    options = {"replication": args.replication} if args.replication else {}
    with failures.about(args.destination, local=STDIN, remote=destination):
        transfer(
            partial(
                run_eventually,
                session.client.async_client.put,
                stdin,
                destination,
                overwrite=args.force,
                **options,
            ),
            destination,
            _known_size(stdin.fileno()),
        )
    return failures.status


def _known_size(fd: int) -> int | None:
    """The bytes left to read from ``fd`` if it is a regular file (``< file``); None
    for a pipe or a terminal, whose end nobody knows in advance."""
    try:
        info = os.fstat(fd)
        if not stat_module.S_ISREG(info.st_mode):
            return None
        return max(0, info.st_size - os.lseek(fd, 0, os.SEEK_CUR))
    except OSError:
        return None


def _put_tree(
    session: Session, failures: Failures, args: argparse.Namespace, local: Path, target: str
) -> None:
    """Every directory first, then the files, ``--jobs`` at a time."""
    client = session.client.async_client
    plan = run(tree.plan_put, client, local, target)
    options = {"replication": args.replication} if args.replication else {}
    copied = transfer(
        partial(
            run_eventually,
            tree.put_files,
            client,
            plan.files,
            overwrite=args.force,
            concurrency=args.jobs,
            **options,
        ),
        _tree_label(target, plan),
        plan.total,
    )
    for failure in sorted([*plan.failures, *copied], key=lambda failure: failure.destination):
        failures.report(failure.error, failure.destination, local=failure.source)


def _tree_label(top: str, plan: tree.TreePlan) -> str:
    return f"{top} ({len(plan.files)} files)"


def run_get(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("get", session)
    local_dir = Path(args.destination).is_dir()
    if len(args.sources) > 1 and not local_dir:
        raise CommandError("get", f"{args.destination}: Not a directory")
    if args.destination.endswith("/") and not local_dir:
        missing = not os.path.lexists(args.destination.rstrip("/"))
        reason_text = "No such file or directory" if missing else "Not a directory"
        raise CommandError("get", f"{args.destination}: {reason_text}")
    for source in args.sources:
        remote = session.resolve(source)
        target = (
            Path(args.destination) / (posixpath.basename(remote) or "root")
            if local_dir
            else Path(args.destination)
        )
        _get(session, failures, args, source, remote, target)
    return failures.status


def _get(
    session: Session,
    failures: Failures,
    args: argparse.Namespace,
    shown: str,
    remote: str,
    target: Path,
) -> None:
    """Copy ``remote`` to ``target``; a directory with its contents (``-r``), merged
    into a local folder that exists already."""
    client = session.client
    with failures.about(shown, local=str(target), remote=remote):
        entry = session.stat(shown)
        if entry.is_dir:
            if not args.recursive:
                raise errors.IsADirectory(f"{remote}: use -r")
            _get_tree(session, failures, args, shown, remote, target)
        else:
            if target.exists() and not args.force:
                raise FileExistsError(17, "File exists (use -f to overwrite)")
            transfer(
                partial(run_eventually, client.async_client.get, remote, target),
                shown,
                entry.length,
            )


def _get_tree(
    session: Session,
    failures: Failures,
    args: argparse.Namespace,
    shown: str,
    remote: str,
    target: Path,
) -> None:
    """Every folder first, then the files, ``--jobs`` at a time."""
    client = session.client.async_client
    plan = run(tree.plan_get, client, remote, target)
    copied = transfer(
        partial(
            run_eventually,
            tree.get_files,
            client,
            plan.files,
            overwrite=args.force,
            concurrency=args.jobs,
        ),
        _tree_label(shown, plan),
        plan.total,
    )
    for failure in sorted([*plan.failures, *copied], key=lambda failure: failure.source):
        # Named as the user named the top: SHOWN/relative/path.
        path = shown.rstrip("/") + failure.source[len(remote.rstrip("/")) :]
        error = failure.error
        if isinstance(error, FileExistsError):
            error = FileExistsError(errno.EEXIST, "File exists (use -f to overwrite)")
        failures.report(error, path, local=failure.destination, remote=failure.source)


def run_cat(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("cat", session)
    out = sys.stdout.buffer
    for path in args.paths:
        with failures.about(path, remote=session.resolve(path)):
            session.check_directory(path)
            with session.client.open(session.resolve(path)) as remote:
                while block := remote.read(4 * 1024 * 1024):
                    write_all(out, block)
            out.flush()
    return failures.status


def write_all(out: Any, data: bytes) -> None:
    """Write all of ``data`` to the binary stream ``out``."""
    # A write into a pipe that its reader closed half way returns a short count
    # before it fails; write the rest, so that the failure is seen, not skipped.
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]


def run_rm(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("rm", session, missing_ok=args.force)
    for path in args.paths:
        with failures.about(path, remote=session.resolve(path)):
            session.check_directory(path)
            session.client.delete(session.resolve(path), recursive=args.recursive)
    return failures.status


def run_mv(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("mv", session)
    client = session.client
    source = session.resolve(args.source)
    destination = session.resolve(args.destination)
    with failures.about(args.destination, remote=destination):
        try:
            # Into DESTINATION when it is a directory, or when it ends in a slash (as
            # for put and cp: a file there, or nothing, is then an error).
            if args.destination.endswith("/") or client.stat(destination).is_dir:
                destination = posixpath.join(destination, posixpath.basename(source))
        except errors.FileNotFound:
            pass
    with failures.about(args.source, remote=source):
        session.check_directory(args.source)
        client.rename(source, destination)
    return failures.status


def run_stat(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("stat", session)
    for path in args.paths:
        with failures.about(path, remote=session.resolve(path)):
            entry = session.stat(path)
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
    failures = Failures("du", session)
    for path in args.paths or ["."]:
        remote = session.resolve(path)
        with failures.about(path, remote=remote):
            if args.summarize:
                session.check_directory(path)
                _print_usage(session.client.du(remote), path, args)
                continue
            entry = session.stat(path)
            children = session.client.listdir(remote) if entry.is_dir else [entry]
            for child in children:
                shown = posixpath.join(path, child.name) if entry.is_dir else path
                _print_usage(session.client.du(child.path), shown, args)
    return failures.status


def _print_usage(usage: dict[str, int], path: str, args: argparse.Namespace) -> None:
    plain, replicated = _size(usage["bytes"], args), _size(usage["replicated_bytes"], args)
    print(f"{plain:<12} {replicated:<12} {path}")


COUNT_HEADER = ("DIR_COUNT", "FILE_COUNT", "CONTENT_SIZE")
QUOTA_HEADER = ("QUOTA", "REM_QUOTA", "SPACE_QUOTA", "REM_SPACE_QUOTA")


def count_line(
    usage: dict[str, int], quota: dict[str, Any] | None, path: str, args: argparse.Namespace
) -> str:
    """One ``count`` line, HDFS's columns: the quotas first with -q."""
    cells = [str(usage["directories"]), str(usage["files"]), _size(usage["bytes"], args)]
    if quota is not None:
        files, space = quota["files_quota"], quota["bytes_quota"]
        cells = [
            "none" if files is None else str(files),
            "inf" if files is None else str(files - quota["names"]),
            "none" if space is None else _size(space, args),
            "inf" if space is None else _size(space - quota["space"], args),
            *cells,
        ]
    return " ".join(f"{cell:>12}" for cell in cells) + f" {path}"


def run_count(session: Session, args: argparse.Namespace) -> int:
    failures = Failures("count", session)
    if args.header:
        header = (*QUOTA_HEADER, *COUNT_HEADER) if args.quota else COUNT_HEADER
        print(" ".join(f"{cell:>12}" for cell in header) + " PATHNAME")
    for path in args.paths or ["."]:
        remote = session.resolve(path)
        with failures.about(path, remote=remote):
            session.check_directory(path)
            usage = session.client.du(remote)
            quota = None
            if args.quota and session.client.stat(remote).is_dir:
                quota = session.client.quota(remote)
            elif args.quota:
                quota = {"files_quota": None, "bytes_quota": None, "names": 1, "space": 0}
            print(count_line(usage, quota, path, args))
    return failures.status


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
    failures = Failures("setrep", session)
    for path in args.paths:
        with failures.about(path, remote=session.resolve(path)):
            session.check_directory(path)
            session.client.set_replication(session.resolve(path), args.replication)
    return failures.status
