"""The dfs command: one-shot subcommands (ca, local, ...) behind one parser.

``dfs`` with no command opens the interactive shell (:mod:`dfs_shell.repl`), which
parses and runs each of its lines with this same parser.

A one-shot command runs in a fresh process whose start is most of its cost, so the
shell (prompt-toolkit) and other heavy modules are imported by the commands that use
them, not here.

Each command group lives in its own module with a ``register(subparsers)``
function; a parsed command carries ``run(args) -> int`` as its handler. Errors
a user can cause are raised as :class:`CommandError` and printed as one line
``dfs: <command>: <message>``, never as a traceback.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence

# Importing the client library (Twisted, the TLS stack, the commands) makes some
# 50,000 objects and hardly any garbage, yet sets off a hundred collections, a tenth
# of a one-shot command's start: collect after, not during. What is loaded then lives as
# long as the process, so later collections (a listing builds thousands of entries)
# leave it out (gc.freeze).
_collecting = gc.isenabled()
gc.disable()

from dfs import __version__  # noqa: E402
from dfs_shell import admin, ca, files, local  # noqa: E402
from dfs_shell.errors import CommandError  # noqa: E402

gc.freeze()
if _collecting:
    gc.enable()

COMMAND_GROUPS = (files, admin, ca, local)

#: The status of a command whose standard output was closed by its reader: that of a
#: process killed by SIGPIPE, as a shell reports it (128 + 13).
BROKEN_PIPE_STATUS = 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfs",
        description="DFS: a distributed file system. Files, a cluster CA, a local cluster.",
    )
    parser.add_argument("--version", action="version", version=f"dfs {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        metavar="CONFIG",
        help="client config (default: $DFS_CONFIG, ~/.config/dfs/client_config.json, "
        "/etc/dfs/client_config.json)",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    shell = subparsers.add_parser(
        "shell",
        help="open the interactive shell (also: dfs with no command)",
        description="An interactive prompt for every dfs command, with completion and history.",
    )
    shell.set_defaults(run=run_shell, command_name="shell")
    return parser


def run_shell(args: argparse.Namespace) -> int:
    """Open the interactive shell; prompt-toolkit is imported only then."""
    from dfs_shell import repl

    return repl.run_shell(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        run = run_shell
    try:
        status = int(run(args) or 0)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # Whoever read our output stopped reading (dfs cat FILE | head): stop quietly,
        # as cat does, and keep the interpreter from flushing into the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_STATUS
    except CommandError as error:
        print(f"dfs: {error.command}: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("dfs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
