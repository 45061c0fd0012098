"""A progress bar for transfers on a terminal: bytes, rate and time left.

Built on prompt_toolkit's ProgressBar; shown only when stderr is a terminal, and
drawn there, so that standard output stays clean for whatever it is redirected to.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any

from prompt_toolkit.formatted_text import HTML
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import create_output
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.shortcuts import ProgressBar
from prompt_toolkit.shortcuts.progress_bar import formatters

from dfs_shell.sizes import human


class Bytes(formatters.Formatter):
    """``12.5M/1.0G  48.2M/s``"""

    def format(self, progress_bar: Any, progress: Any, width: int) -> Any:
        elapsed = max(1e-6, progress.time_elapsed.total_seconds())
        rate = progress.items_completed / elapsed
        return HTML("<b>{done}</b>/{total}  {rate}/s").format(
            done=human(progress.items_completed),
            total=human(progress.total or 0),
            rate=human(rate),
        )

    def get_width(self, progress_bar: Any) -> Any:
        from prompt_toolkit.layout.dimension import D

        return D.exact(28)


class TransferProgress:
    def __init__(self, label: str, total: int) -> None:
        self._label = label
        self._total = total
        self._stack = ExitStack()
        self._bar: ProgressBar | None = None
        self._counter: Any = None

    def __enter__(self) -> TransferProgress:
        with self._stack:
            # The bar reads no keys: stdin may be a file, a pipe or /dev/null, and it
            # is not the bar's to consume. The terminal stays in cooked mode, so Ctrl-C
            # raises KeyboardInterrupt in the transfer as usual.
            keys = self._stack.enter_context(create_pipe_input())
            output = create_output(stdout=sys.stderr)
            if isinstance(output, Vt100_Output):
                # The answer to a cursor position request would come on stdin, never
                # to the pipe above; without this the bar waits and then warns.
                output.enable_cpr = False
            self._bar = ProgressBar(
                output=output,
                input=keys,
                formatters=[
                    formatters.Label(),
                    formatters.Text(" "),
                    formatters.Percentage(),
                    formatters.Text(" "),
                    formatters.Bar(),
                    formatters.Text(" "),
                    Bytes(),
                    formatters.Text(" eta "),
                    formatters.TimeLeft(),
                ],
            )
            self._bar.__enter__()
            self._stack.push(self._bar.__exit__)
            self._counter = self._bar(label=self._label, total=max(1, self._total))
            # Started whole: keep it all open until __exit__.
            self._stack = self._stack.pop_all()
        return self

    def update(self, done: int) -> None:
        if self._counter is not None and self._bar is not None:
            self._counter.items_completed = done
            self._bar.invalidate()

    def __exit__(self, *exc_info: Any) -> None:
        if self._counter is not None and exc_info[0] is None:
            self._counter.done = True
        self._stack.__exit__(*exc_info)
