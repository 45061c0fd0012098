"""``help``: every command with its one-line summary, in groups; ``help CMD`` prints
the same text as ``dfs CMD --help`` (usage, options, examples)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence

from dfs_shell.errors import CommandError
from dfs_shell.files import Session, add_command

#: The groups ``help`` shows, in order; a command in none of them is listed last.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Files in DFS",
        (
            "ls",
            "tree",
            "find",
            "stat",
            "du",
            "count",
            "df",
            "cat",
            "head",
            "tail",
            "mkdir",
            "cp",
            "mv",
            "rm",
            "setrep",
            "chmod",
            "chown",
            "chgrp",
            "cd",
            "pwd",
        ),
    ),
    ("The local side", ("put", "get", "lcd", "lls")),
    ("Administration", ("admin", "ca", "local")),
    ("The shell", ("shell", "help")),
)

#: Handled by the interactive shell itself, not by a parser: listed under "The shell".
SHELL_ONLY = (("exit", "leave the interactive shell (also quit, Ctrl-D)"),)


def register(subparsers: argparse._SubParsersAction) -> None:
    command = add_command(
        subparsers,
        "help",
        "list the commands, or show one command's usage and examples",
        run_help,
        epilog="examples:\n  help\n  help put\n  help admin fsck",
    )
    command.add_argument("words", nargs="*", metavar="COMMAND")


def summary_lines(summaries: Sequence[tuple[str, str]]) -> Iterator[str]:
    """The ``help`` listing of (command, summary) pairs, grouped as GROUPS says."""
    known = dict(summaries)
    width = max([len(name) for name in known] + [len(name) for name, _ in SHELL_ONLY])
    listed: set[str] = set()
    sections = [(title, [name for name in names if name in known]) for title, names in GROUPS]
    others = [name for name, _ in summaries if not any(name in names for _, names in GROUPS)]
    if others:
        sections.append(("Other commands", others))
    for index, (title, names) in enumerate(sections):
        if index:
            yield ""
        yield f"{title}:"
        for name in names:
            listed.add(name)
            yield f"  {name:<{width}}  {known[name]}"
        if title == "The shell":
            for name, text in SHELL_ONLY:
                yield f"  {name:<{width}}  {text}"
    yield ""
    yield "'help COMMAND' shows a command's options and examples."


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def run_help(session: Session, args: argparse.Namespace) -> int:
    # The whole parser, with every group's commands, is built by dfs_shell.main.
    from dfs_shell.main import build_parser

    parser = build_parser()
    if not args.words:
        commands = _subcommands(parser)
        assert commands is not None
        summaries = [(action.dest, action.help or "") for action in commands._choices_actions]
        for line in summary_lines(summaries):
            print(line)
        return 0
    for depth, word in enumerate(args.words):
        commands = _subcommands(parser)
        if commands is None or word not in commands.choices:
            if word in dict(SHELL_ONLY) and depth == 0:
                print(f"{word}: {dict(SHELL_ONLY)[word]}")
                return 0
            named = " ".join(args.words[: depth + 1])
            raise CommandError("help", f"{named}: no such command", exit_code=2)
        parser = commands.choices[word]
    print(parser.format_help(), end="")
    return 0
