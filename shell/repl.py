"""The interactive dfs shell: ``dfs`` with no command, ``dfs shell``, ``dfs local``.

A prompt-toolkit loop over the very parser and runners of the one-shot form: each
line is split as a POSIX shell splits it, parsed by :func:`dfs_shell.main.build_parser`
and run with ``args.shell_session`` set to the one long-lived :class:`Session`, so
that a command, its options, its messages and its exit status are the same in both
forms. Failures are one line ``dfs: CMD: reason``; nothing ends the loop but
``exit``, ``quit`` and Ctrl-D.

:class:`ShellCompleter` completes command names, options, DFS paths (listed by the
metaserver, cached a few seconds per directory) and local paths; it is plain logic
over two listing functions, testable without a terminal.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import crochet
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, ThreadedCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionClosed

from dfs.client.blocking import run_eventually
from dfs.client.connection import NoMetaserverReachable
from dfs.config import ConfigError, load_client_config
from dfs.protocol import paths
from dfs_shell import files
from dfs_shell.errors import CommandError

#: Words that leave the shell (besides Ctrl-D).
EXIT_WORDS = ("exit", "quit")

#: Seconds the completer waits for a directory listing before it offers nothing.
LISTING_TIMEOUT = 2.0

#: Seconds a directory listing serves completions before it is asked for again.
LISTING_TTL = 5.0

#: Failures that mean the connection to the cluster is gone, not that a command failed.
CONNECTION_LOST = (ConnectionClosed, ConnectError, NoMetaserverReachable, defer.TimeoutError)

#: Commands whose every argument is a local path.
LOCAL_COMMANDS = frozenset({"lcd", "lls"})

#: Commands that take directories only: files are not offered.
DIRECTORY_COMMANDS = frozenset({"cd", "lcd"})

#: Positional metavars naming a DFS path, and those naming a local path.
REMOTE_METAVARS = frozenset({"PATH", "REMOTE", "SOURCE", "DESTINATION", "DIR", "SRC", "DEST"})
LOCAL_METAVARS = frozenset({"LOCAL", "LOCAL_PATH"})

#: Option values completed as local paths (``-c CONFIG``, ``local up --dir DIR``).
LOCAL_OPTION_METAVARS = frozenset({"CONFIG", "DIR", "FILE", "LOCAL"})

#: Characters a completion escapes with a backslash, so that the line splits as shown.
SPECIAL = frozenset(" \t\n\\'\"$`!*?[]{}()<>|&;#")

#: A listing function: the names in a directory, each with whether it is a directory.
Listing = Callable[[str], Sequence[tuple[str, bool]]]


def history_path() -> Path:
    return files.data_dir() / "history"


def run_shell(args: argparse.Namespace) -> int:
    """Open the shell on the cluster of the client config (``-c``, DFS_CONFIG, ...)."""
    if getattr(args, "shell_session", None) is not None:
        raise CommandError("shell", "already in the shell")
    # main builds the parser from every command module, this one included.
    from dfs_shell.main import build_parser

    args.command_name = "shell"
    config = args.config or files.default_config()
    if config is None:
        raise CommandError("shell", "no client config: give -c CONFIG or set DFS_CONFIG")
    try:
        cluster = str(load_client_config(config).metaservers[0])
    except ConfigError as error:
        raise CommandError("shell", str(error)) from None
    args.config = str(config)
    session = files.Session(args)
    try:
        user = session.client.user
        shell = Shell(build_parser(), session, config=str(config), user=user, cluster=cluster)
        if sys.stdin.isatty() and sys.stdout.isatty():
            return shell.interact()
        return shell.run_lines(sys.stdin)
    finally:
        session.close()


class Shell:
    """The loop: read a line, run it as ``dfs LINE`` would, print a failure as one line."""

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        session: files.Session,
        *,
        config: str,
        user: str,
        cluster: str,
        stderr: TextIO | None = None,
    ) -> None:
        self.parser = parser
        self.session = session
        self.config = config
        self.user = user
        self.cluster = cluster
        self.status = 0
        self._stderr = stderr
        self.completer = ShellCompleter(parser, remote=self.listdir, cwd=lambda: self.cwd)

    @property
    def cwd(self) -> str:
        return self.session.cwd

    def prompt(self) -> str:
        return f"{self.user}@{self.cluster}:{self.cwd}> "

    def _error(self, text: str) -> None:
        print(text, file=self._stderr or sys.stderr, flush=True)

    def execute(self, line: str) -> bool:
        """Run one line; False when it asks to leave the shell."""
        try:
            words = shlex.split(line)
        except ValueError as error:  # an unclosed quote, a trailing backslash
            self._error(f"dfs: {error}")
            self.status = 2
            return True
        if not words:
            return True
        if words[0] in EXIT_WORDS:
            return False
        try:
            args = self.parser.parse_args(words)
        except SystemExit as stop:
            # argparse has printed the usage and the error (or the help asked for).
            self.status = stop.code if isinstance(stop.code, int) else 2
            return True
        run = getattr(args, "run", None)
        if run is None:
            self._error("dfs: no command given (try 'help' or '--help')")
            self.status = 2
            return True
        if args.config is None:
            args.config = self.config
        args.shell_session = self.session
        name = getattr(args, "command_name", words[0])
        try:
            self.status = int(run(args) or 0)
        except CommandError as error:
            self._error(f"dfs: {error.command}: {error.message}")
            self.status = error.exit_code
        except KeyboardInterrupt:
            self._error(f"dfs: {name}: interrupted")
            self.status = 130
        except CONNECTION_LOST as error:
            self._error(f"dfs: {name}: {files.reason(error)} (the next command reconnects)")
            self.reset()
            self.status = 1
        except Exception as error:  # never a traceback in the shell
            self._error(f"dfs: {name}: unexpected error: {type(error).__name__}: {error}")
            self.status = 1
        finally:
            sys.stdout.flush()
            # The command may have changed what is there: complete from fresh listings.
            self.completer.forget()
        return True

    def reset(self) -> None:
        """Drop the connection: the next command connects again."""
        self.session.reset()

    def listdir(self, path: str) -> list[tuple[str, bool]]:
        """A DFS directory for the completer: quick, or nothing."""
        result = run_eventually(self.session.client.async_client.listdir, path)
        try:
            entries = result.wait(LISTING_TIMEOUT)
        except crochet.TimeoutError:
            result.abandon()
            raise
        return [(entry.name, entry.is_dir) for entry in entries]

    def interact(self) -> int:
        """The prompt on a terminal, until exit, quit or Ctrl-D."""
        history = history_path()
        history.parent.mkdir(parents=True, exist_ok=True)
        prompt: PromptSession[str] = PromptSession(
            history=FileHistory(str(history)),
            completer=ThreadedCompleter(self.completer),
            complete_while_typing=False,
        )
        while True:
            try:
                line = prompt.prompt(self.prompt())
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line
                continue
            except EOFError:  # Ctrl-D
                print()
                return 0
            try:
                if not self.execute(line):
                    return 0
            except KeyboardInterrupt:  # between the command and the prompt
                self._error("dfs: interrupted")

    def run_lines(self, lines: Iterable[str]) -> int:
        """Lines from a pipe or a file, without a prompt: the last command's status."""
        for line in lines:
            if not self.execute(line):
                break
        return self.status


class ShellCompleter(Completer):
    """Completes what a line of the shell expects at the cursor.

    ``remote(path)`` and ``local(path)`` list a directory as (name, is_dir) pairs;
    ``cwd()`` is the DFS working directory that relative paths start from. DFS
    listings are kept ``ttl`` seconds; a listing that fails offers nothing.
    """

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        *,
        remote: Listing,
        cwd: Callable[[], str] = lambda: "/",
        local: Listing | None = None,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = LISTING_TTL,
    ) -> None:
        self._parser = parser
        self._remote = remote
        self._local = local or list_local
        self._cwd = cwd
        self._clock = clock
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Sequence[tuple[str, bool]]]] = {}

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        words, current, raw = split_partial(document.text_before_cursor)
        if current.startswith("-") and not raw.startswith(("'", '"')):
            candidates = [(option, "") for option in self._options(words)]
            yield from _completions(candidates, current, raw)
            return
        kinds = self.kinds(words)
        directories_only = self._command(words)[2] in DIRECTORY_COMMANDS
        if "command" in kinds:
            yield from _completions(
                [(name, "") for name in self._commands(words)], current, raw, space=True
            )
        if "topic" in kinds:  # help COMMAND
            yield from _completions(
                [(name, "") for name in _subcommands(self._parser)], current, raw, space=True
            )
        for kind in ("remote", "local"):
            if kind in kinds:
                listing = self._list_remote if kind == "remote" else self._local
                meta = ("dfs" if kind == "remote" else "local") if len(kinds) > 1 else ""
                paths = _paths(current, listing, meta)
                if directories_only:
                    paths = [(path, meta) for path, meta in paths if path.endswith("/")]
                yield from _completions(paths, current, raw)

    def kinds(self, words: Sequence[str]) -> set[str]:
        """What the next word may be: a "command" of this level, a "topic" (any top-level
        command, for help), a "remote" or a "local" path, a mix of those, or nothing."""
        parser, rest, name = self._command(words)
        if parser is None:
            return set()
        index = 0
        expects_value: argparse.Action | None = None
        for word in rest:
            if expects_value is not None:
                expects_value = None
            elif word.startswith("-"):
                action = _option(parser, word)
                if action is not None and action.nargs != 0:
                    expects_value = action
            else:
                index += 1
        if expects_value is not None:
            return {"local"} if expects_value.metavar in LOCAL_OPTION_METAVARS else set()
        if _subcommands(parser):
            return {"command"}
        if name in LOCAL_COMMANDS:
            return {"local"}
        kinds = set()
        for action in _positionals_at(parser, index):
            if action.metavar in LOCAL_METAVARS:
                kinds.add("local")
            elif action.metavar in REMOTE_METAVARS:
                kinds.add("remote")
            elif action.metavar == "COMMAND":
                kinds.add("topic")
        return kinds

    def _command(
        self, words: Sequence[str]
    ) -> tuple[argparse.ArgumentParser | None, list[str], str]:
        """The deepest parser the words reach, the words after it, and its name."""
        parser: argparse.ArgumentParser = self._parser
        rest = list(words)
        names: list[str] = []
        while True:
            subcommands = _subcommands(parser)
            if not subcommands:
                return parser, rest, " ".join(names)
            # Options of this level (-c CONFIG) come before its command word.
            while rest and rest[0].startswith("-"):
                action = _option(parser, rest[0])
                if action is not None and action.nargs != 0:
                    if len(rest) == 1:  # the word at the cursor is its value
                        return parser, rest, " ".join(names)
                    rest.pop(0)
                rest.pop(0)
            if not rest:
                return parser, rest, " ".join(names)
            word = rest.pop(0)
            if word not in subcommands:
                return None, rest, word
            names.append(word)
            parser = subcommands[word]

    def _commands(self, words: Sequence[str]) -> list[str]:
        parser, _, name = self._command(words)
        if parser is None:
            return []
        commands = list(_subcommands(parser))
        return commands + list(EXIT_WORDS) if not name else commands

    def _options(self, words: Sequence[str]) -> list[str]:
        parser, _, _ = self._command(words)
        if parser is None:
            return []
        return sorted({option for action in parser._actions for option in action.option_strings})

    def forget(self) -> None:
        """Drop the cached listings."""
        self._cache.clear()

    def _list_remote(self, directory: str) -> Sequence[tuple[str, bool]]:
        path = paths.resolve(self._cwd(), directory or ".")
        now = self._clock()
        cached = self._cache.get(path)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        try:
            entries: Sequence[tuple[str, bool]] = self._remote(path)
        except Exception:  # no connection, no such directory, too slow: no completions
            entries = []
        self._cache[path] = (now, entries)
        return entries


def list_local(directory: str) -> list[tuple[str, bool]]:
    try:
        with os.scandir(os.path.expanduser(directory or ".")) as scan:
            return [(entry.name, entry.is_dir()) for entry in scan]
    except OSError:
        return []


def split_partial(text: str) -> tuple[list[str], str, str]:
    """Split a line up to the cursor as a POSIX shell would, leniently.

    Returns the complete words, then the word being typed twice: as the shell will
    read it (quotes and escapes removed) and as typed (what a completion replaces).
    An unclosed quote is the word being typed.
    """
    words: list[str] = []
    value: list[str] = []
    raw: list[str] = []
    quote = ""
    started = False
    escaped = False
    for char in text:
        if escaped:
            value.append(char)
            raw.append(char)
            escaped = False
            continue
        if char == "\\" and quote != "'":
            escaped = True
            started = True
            raw.append(char)
            continue
        if quote:
            raw.append(char)
            if char == quote:
                quote = ""
            else:
                value.append(char)
            continue
        if char in " \t\n":
            if started:
                words.append("".join(value))
            value, raw, started = [], [], False
            continue
        started = True
        raw.append(char)
        if char in "'\"":
            quote = char
        else:
            value.append(char)
    return words, "".join(value), "".join(raw)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option(parser: argparse.ArgumentParser, word: str) -> argparse.Action | None:
    option = word.split("=", 1)[0]
    for action in parser._actions:
        if option in action.option_strings:
            # --name=VALUE carries its value in the same word.
            return action if "=" not in word else None
    return None


def _positionals_at(parser: argparse.ArgumentParser, index: int) -> list[argparse.Action]:
    """The positional arguments the word at ``index`` (counting positionals) may fill."""
    found = []
    least = most = 0.0
    for action in parser._actions:
        if action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        low, high = _counts(action.nargs)
        if least <= index < most + high:
            found.append(action)
        least += low
        most += high
    return found


def _counts(nargs: Any) -> tuple[float, float]:
    if nargs is None:
        return 1, 1
    if isinstance(nargs, int):
        return nargs, nargs
    return {"?": (0, 1), "*": (0, float("inf")), "+": (1, float("inf"))}.get(nargs, (0, 0))


def _paths(current: str, listing: Listing, meta: str) -> list[tuple[str, str]]:
    """Paths that complete ``current``: directories end with "/"."""
    directory, slash, prefix = current.rpartition("/")
    base = directory + slash
    found = []
    for name, is_dir in sorted(listing(base or ".")):
        if name.startswith(prefix) and (prefix.startswith(".") or not name.startswith(".")):
            found.append((base + name + ("/" if is_dir else ""), meta))
    return found


def _completions(
    candidates: Iterable[tuple[str, str]], current: str, raw: str, *, space: bool = False
) -> Iterator[Completion]:
    quote = raw[:1] if raw[:1] in ("'", '"') else ""
    for text, meta in candidates:
        if not text.startswith(current):
            continue
        if quote:
            inserted = quote + text.replace(quote, "")
        else:
            inserted = "".join("\\" + char if char in SPECIAL else char for char in text)
        display = text.rstrip("/").rpartition("/")[2] + ("/" if text.endswith("/") else "")
        yield Completion(
            inserted + (" " if space else ""),
            start_position=-len(raw),
            display=display,
            display_meta=meta,
        )
