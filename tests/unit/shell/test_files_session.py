"""The session shared by the one-shot commands and the interactive shell: relative
paths, the working directory, and a connection that is dropped when it is lost."""

from __future__ import annotations

import argparse

import pytest
from twisted.internet.error import ConnectionClosed

from dfs.protocol import errors
from dfs_shell import files
from dfs_shell.errors import CommandError
from dfs_shell.files import Session


class FakeClient:
    def __init__(self, failure: BaseException | None = None) -> None:
        self.failure = failure
        self.closed = False
        self.made: list[str] = []

    def mkdir(self, path: str, parents: bool = False) -> None:
        if self.failure is not None:
            raise self.failure
        self.made.append(path)

    def close(self) -> None:
        self.closed = True


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dfs")
    parser.add_argument("-c", "--config")
    files.register(parser.add_subparsers())
    return parser.parse_args(argv)


def shell_session(client: FakeClient, cwd: str = "/") -> Session:
    session = Session(argparse.Namespace(config="unused.json"))
    session._client = client  # type: ignore[assignment]
    session.cwd = cwd
    return session


def test_a_command_in_the_shell_session_resolves_from_its_cwd_and_keeps_it_open():
    client = FakeClient()
    session = shell_session(client, "/data")
    args = parse("mkdir", "new", "/abs")
    args.shell_session = session
    assert args.run(args) == 0
    assert client.made == ["/data/new", "/abs"]
    assert not client.closed and session._client is client


def test_a_lost_connection_resets_the_shell_session(capsys):
    client = FakeClient(ConnectionClosed("gone"))
    session = shell_session(client)
    args = parse("mkdir", "/x")
    args.shell_session = session
    assert args.run(args) == 1
    assert "dfs: mkdir: /x: Lost the connection to the cluster" in capsys.readouterr().err
    assert client.closed and session._client is None


def test_a_dfs_error_keeps_the_connection():
    client = FakeClient(errors.FileExists("/x"))
    session = shell_session(client)
    args = parse("mkdir", "/x")
    args.shell_session = session
    assert args.run(args) == 1
    assert session._client is client


def test_cd_sets_the_working_directory_only_to_a_directory():
    class Stats(FakeClient):
        def stat(self, path: str) -> object:
            if path == "/data/file":
                return argparse.Namespace(is_dir=False, path=path)
            if path.startswith("/data"):
                return argparse.Namespace(is_dir=True, path=path)
            raise errors.FileNotFound(path)

    session = shell_session(Stats(), "/data")
    for argv, cwd in [(["cd", "sub"], "/data/sub"), (["cd", ".."], "/data"), (["cd"], "/")]:
        args = parse(*argv)
        args.shell_session = session
        if argv == ["cd"]:
            with pytest.raises(CommandError, match="/: No such file or directory"):
                args.run(args)
            continue
        assert args.run(args) == 0 and session.cwd == cwd
    args = parse("cd", "file")
    args.shell_session = session
    with pytest.raises(CommandError) as raised:
        args.run(args)
    assert (raised.value.command, raised.value.message) == ("cd", "file: Not a directory")
    assert session.cwd == "/data"


@pytest.mark.parametrize(
    ("path", "only_a_directory"),
    [
        ("/data/", True),
        ("/data/.", True),
        ("data//", True),
        ("/data", False),
        ("/data/..", False),  # resolved by name, as cd .. is
        ("/", False),  # the root is a directory anyway: nothing to check
        ("//", False),
        (".", False),
        ("a.txt", False),
    ],
)
def test_a_path_that_ends_in_a_slash_names_only_a_directory(path, only_a_directory):
    assert files.names_directory(path) is only_a_directory
