"""The dfs command's start: what a one-shot command imports."""

from __future__ import annotations

import subprocess
import sys

#: Modules a one-shot command (``dfs ls``) has no use for.
SHELL_ONLY = ("prompt_toolkit", "dfs_shell.repl", "dfs_shell.progress", "dfs.localcluster")


def test_one_shot_command_parser_imports_no_interactive_shell() -> None:
    probe = (
        "import sys\n"
        "from dfs_shell import main\n"
        "main.build_parser().parse_args(['ls', '/'])\n"
        f"print(' '.join(m for m in {SHELL_ONLY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
