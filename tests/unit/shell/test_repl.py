"""The shell without a terminal: how a line is split, parsed and run, what a failure
prints, and what the completer offers at the cursor."""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from twisted.internet.error import ConnectionClosed

from dfs_shell import repl
from dfs_shell.errors import CommandError


def build_parser(run: Callable[[argparse.Namespace], int] = lambda args: 0) -> Any:
    """A parser shaped like dfs's: file commands, put/get, lcd, and admin sub-commands."""
    parser = argparse.ArgumentParser(prog="dfs")
    parser.add_argument("-c", "--config", metavar="CONFIG")
    commands = parser.add_subparsers(metavar="COMMAND")

    def command(name: str, parent: Any = commands) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, add_help=False)
        sub.add_argument("--help", action="help")
        sub.set_defaults(run=run, command_name=name)
        return sub

    ls = command("ls")
    ls.add_argument("-l", action="store_true")
    ls.add_argument("-h", "--human", action="store_true")
    ls.add_argument("paths", nargs="*", metavar="PATH")
    put = command("put")
    put.add_argument("-f", "--force", action="store_true")
    put.add_argument("--replication", type=int, metavar="N")
    put.add_argument("sources", nargs="+", metavar="LOCAL")
    put.add_argument("destination", metavar="REMOTE")
    get = command("get")
    get.add_argument("sources", nargs="+", metavar="REMOTE")
    get.add_argument("destination", metavar="LOCAL")
    chmod = command("chmod")
    chmod.add_argument("mode", metavar="MODE")
    chmod.add_argument("paths", nargs="+", metavar="PATH")
    command("lcd").add_argument("path", nargs="?", metavar="DIR")
    command("help").add_argument("words", nargs="*", metavar="COMMAND")
    admin = commands.add_parser("admin")
    groups = admin.add_subparsers(metavar="COMMAND")
    command("status", groups)
    command("fsck", groups).add_argument("path", nargs="?", metavar="PATH")
    return parser


TREE = {
    "/": [("data", True), ("docs", True), ("readme.txt", False), (".hidden", False)],
    "/data": [("file one.txt", False), ("logs", True)],
}


class Listings:
    def __init__(self, tree: dict[str, list[tuple[str, bool]]] = TREE) -> None:
        self.tree = tree
        self.asked: list[str] = []
        self.now = 0.0

    def remote(self, path: str) -> list[tuple[str, bool]]:
        self.asked.append(path)
        return self.tree[path]


@pytest.fixture
def listings() -> Listings:
    return Listings()


def completer(listings: Listings, cwd: str = "/", **options: Any) -> repl.ShellCompleter:
    return repl.ShellCompleter(
        build_parser(),
        remote=listings.remote,
        cwd=lambda: cwd,
        clock=lambda: listings.now,
        **options,
    )


def complete(completer: repl.ShellCompleter, text: str) -> list[tuple[str, int]]:
    found = completer.get_completions(Document(text), CompleteEvent(completion_requested=True))
    return [(c.text, c.start_position) for c in found]


def texts(completer: repl.ShellCompleter, text: str) -> list[str]:
    return [text for text, _ in complete(completer, text)]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ls /da", (["ls"], "/da", "/da")),
        ("ls ", (["ls"], "", "")),
        ("", ([], "", "")),
        ('put "my fi', (["put"], "my fi", '"my fi')),
        ("put my\\ fi", (["put"], "my fi", "my\\ fi")),
        ("put 'a b' c", (["put", "a b"], "c", "c")),
        ('cat "a\\"b" x', (["cat", 'a"b'], "x", "x")),
    ],
)
def test_split_partial_reads_the_line_as_a_posix_shell(line: str, expected: Any) -> None:
    assert repl.split_partial(line) == expected


def test_command_names_complete_with_a_space_after(listings: Listings) -> None:
    assert texts(completer(listings), "l") == ["ls ", "lcd "]
    assert texts(completer(listings), "h") == ["help "]
    assert texts(completer(listings), "ex") == ["exit "]
    assert texts(completer(listings), "admin ") == ["status ", "fsck "]
    assert texts(completer(listings), "admin fs") == ["fsck "]
    assert texts(completer(listings), "help p") == ["put "]


def test_options_of_the_current_command(listings: Listings) -> None:
    assert texts(completer(listings), "ls -") == ["--help", "--human", "-h", "-l"]
    assert texts(completer(listings), "put --f") == ["--force"]


def test_remote_paths_complete_from_the_listing_with_a_slash_after_directories(
    listings: Listings,
) -> None:
    assert complete(completer(listings), "ls /da") == [("/data/", -3)]
    assert texts(completer(listings), "ls /") == ["/data/", "/docs/", "/readme.txt"]
    assert texts(completer(listings), "ls /.") == ["/.hidden"]
    assert texts(completer(listings), "admin fsck /d") == ["/data/", "/docs/"]


def test_relative_remote_paths_follow_the_working_directory(listings: Listings) -> None:
    shell = completer(listings, cwd="/data")
    assert texts(shell, "ls l") == ["logs/"]
    assert texts(shell, "ls ../r") == ["../readme.txt"]
    assert listings.asked == ["/data", "/"]


def test_names_with_spaces_are_escaped_or_kept_in_their_quotes(listings: Listings) -> None:
    assert complete(completer(listings), "cat /data/f") == []  # cat is not a command here
    assert complete(completer(listings), "ls /data/f") == [("/data/file\\ one.txt", -7)]
    assert complete(completer(listings), 'ls "/data/f') == [('"/data/file one.txt', -8)]


def test_arguments_that_are_not_paths_complete_nothing(listings: Listings) -> None:
    assert texts(completer(listings), "chmod ") == []
    assert texts(completer(listings), "chmod 755 /d") == ["/data/", "/docs/"]
    assert texts(completer(listings), "put --replication ") == []
    assert texts(completer(listings), "nosuch /d") == []


def test_put_and_get_complete_local_and_remote_sides(
    listings: Listings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dataset").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    shell = completer(listings)
    # put LOCAL... REMOTE: the first word is local, later ones may be either.
    assert texts(shell, "put d") == ["dataset/"]
    found = shell.get_completions(Document("put notes.txt d"), CompleteEvent())
    assert [(c.text, c.display_meta_text) for c in found] == [
        ("data/", "dfs"),
        ("docs/", "dfs"),
        ("dataset/", "local"),
    ]
    assert listings.asked == ["/"]
    # get REMOTE... LOCAL: the other way round.
    assert texts(shell, "get /r") == ["/readme.txt"]
    assert texts(shell, "get /readme.txt n") == ["notes.txt"]
    assert texts(shell, "lcd ") == ["dataset/"]
    assert texts(shell, "-c n") == ["notes.txt"]


def test_listings_are_cached_for_a_few_seconds(listings: Listings) -> None:
    shell = completer(listings, ttl=5.0)
    texts(shell, "ls /d")
    texts(shell, "ls /r")
    assert listings.asked == ["/"]
    listings.now = 6.0
    texts(shell, "ls /r")
    assert listings.asked == ["/", "/"]


def test_listings_are_asked_again_after_a_command(listings: Listings) -> None:
    loop, _ = shell(lambda args: 0)
    loop.completer = completer(listings)
    texts(loop.completer, "ls /d")
    loop.execute("ls /data")
    texts(loop.completer, "ls /d")
    assert listings.asked == ["/", "/"]


def test_a_failing_listing_offers_nothing(listings: Listings) -> None:
    def broken(path: str) -> list[tuple[str, bool]]:
        raise TimeoutError("too slow")

    shell = repl.ShellCompleter(build_parser(), remote=broken)
    assert texts(shell, "ls /d") == []


class FakeSession:
    cwd = "/data"

    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1


def shell(run: Callable[[argparse.Namespace], int]) -> tuple[repl.Shell, io.StringIO]:
    stderr = io.StringIO()
    loop = repl.Shell(
        build_parser(run),
        FakeSession(),  # type: ignore[arg-type]
        config="/etc/client.json",
        user="alice",
        cluster="127.0.0.1:7000",
        stderr=stderr,
    )
    return loop, stderr


def test_the_prompt_shows_user_cluster_and_working_directory() -> None:
    loop, _ = shell(lambda args: 0)
    assert loop.prompt() == "alice@127.0.0.1:7000:/data> "


def test_a_line_runs_with_the_shell_session_and_config() -> None:
    seen: list[argparse.Namespace] = []
    loop, stderr = shell(lambda args: seen.append(args) or 3)
    assert loop.execute("ls -l 'my dir' other\\ dir  a#b")
    assert loop.status == 3
    (args,) = seen
    assert args.paths == ["my dir", "other dir", "a#b"] and args.l
    assert args.shell_session is loop.session
    assert args.config == "/etc/client.json"
    assert stderr.getvalue() == ""


def test_exit_and_quit_leave_and_blank_lines_do_nothing() -> None:
    loop, _ = shell(lambda args: 0)
    assert loop.execute("   ")
    assert not loop.execute("exit")
    assert not loop.execute("quit")


@pytest.mark.parametrize(
    ("failure", "line"),
    [
        (
            CommandError("ls", "/x: No such file or directory"),
            "dfs: ls: /x: No such file or directory",
        ),
        (KeyboardInterrupt(), "dfs: ls: interrupted"),
        (RuntimeError("boom"), "dfs: ls: unexpected error: RuntimeError: boom"),
    ],
)
def test_a_failure_is_one_line_and_the_loop_goes_on(failure: BaseException, line: str) -> None:
    def run(args: argparse.Namespace) -> int:
        raise failure

    loop, stderr = shell(run)
    assert loop.execute("ls /x")
    assert stderr.getvalue() == line + "\n"
    assert loop.status != 0


def test_a_lost_connection_is_reported_and_dropped_for_the_next_command() -> None:
    def run(args: argparse.Namespace) -> int:
        raise ConnectionClosed()

    loop, stderr = shell(run)
    assert loop.execute("ls")
    assert stderr.getvalue().startswith("dfs: ls: Lost the connection to the cluster")
    assert loop.session.resets == 1  # type: ignore[attr-defined]


def test_usage_errors_and_bad_quoting_keep_the_loop(capsys: pytest.CaptureFixture[str]) -> None:
    loop, stderr = shell(lambda args: 0)
    assert loop.execute("put onlyone")
    assert loop.status == 2
    assert "dfs put: error:" in capsys.readouterr().err
    assert loop.execute("ls 'unclosed")
    assert stderr.getvalue() == "dfs: No closing quotation\n"
    assert loop.execute("ls --help")
    assert loop.status == 0


def test_lines_from_a_pipe_run_in_turn_until_exit() -> None:
    seen: list[list[str]] = []
    loop, _ = shell(lambda args: seen.append(args.paths) or 0)
    assert loop.run_lines(["ls /a\n", "\n", "ls /b\n", "exit\n", "ls /c\n"]) == 0
    assert seen == [["/a"], ["/b"]]


def test_history_lives_in_the_users_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert repl.history_path() == tmp_path / "dfs" / "history"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert repl.history_path() == tmp_path / ".local" / "share" / "dfs" / "history"
