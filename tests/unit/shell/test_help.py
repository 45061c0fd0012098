"""help: every command in its group, and help CMD as CMD --help."""

from __future__ import annotations

import argparse

import pytest

from dfs_shell import help as help_command
from dfs_shell import main
from dfs_shell.errors import CommandError


def run(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    capsys.readouterr()
    args = main.build_parser().parse_args(["help", *words])
    assert args.run(args) == 0
    return capsys.readouterr().out


def test_help_lists_every_command_once_in_its_group(capsys):
    text = run(capsys)
    parser = main.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted([*commands.choices, "exit"])
    assert text.index("Files in DFS:") < text.index("The local side:") < text.index("The shell:")
    assert "  put     copy local files into DFS" in text


@pytest.mark.parametrize("words", [["ls"], ["tail"], ["chown"], ["admin", "fsck"]])
def test_help_command_is_the_command_s_own_help(capsys, words):
    parser = main.build_parser()
    for word in words:
        parser = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        ).choices[word]
    assert run(capsys, *words) == parser.format_help()


def test_every_file_command_shows_examples(capsys):
    for name in ["ls", "cd", "pwd", "lcd", "lls", "tree", "find", "head", "tail", "cp",
                 "chmod", "chown", "chgrp", "put", "get", "rm", "du", "help"]:  # fmt: skip
        assert "examples:\n" in run(capsys, name), name


def test_help_for_an_unknown_command_is_a_usage_error():
    args = main.build_parser().parse_args(["help", "nonsense"])
    with pytest.raises(CommandError) as raised:
        args.run(args)
    assert raised.value.exit_code == 2 and raised.value.message == "nonsense: no such command"


def test_the_listing_puts_unknown_commands_last():
    lines = list(help_command.summary_lines([("ls", "list"), ("zap", "new")]))
    assert lines[-4:] == ["Other commands:", "  zap   new", "", lines[-1]]
