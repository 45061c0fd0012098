"""The one error type the dfs command prints as a single line."""

from __future__ import annotations


class CommandError(Exception):
    """A failure the user can act on: printed as ``dfs: COMMAND: MESSAGE``."""

    def __init__(self, command: str, message: str, exit_code: int = 1) -> None:
        super().__init__(f"{command}: {message}")
        self.command = command
        self.message = message
        self.exit_code = exit_code
