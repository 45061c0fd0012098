"""A progress bar for transfers on a terminal: bytes, rate and time left.

Built on prompt_toolkit's ProgressBar; shown only when stderr is a terminal.
"""

from __future__ import annotations

from typing import Any

from prompt_toolkit.formatted_text import HTML
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
        self._bar: ProgressBar | None = None
        self._counter: Any = None

    def __enter__(self) -> TransferProgress:
        self._bar = ProgressBar(
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
            ]
        )
        self._bar.__enter__()
        self._counter = self._bar(label=self._label, total=max(1, self._total))
        return self

    def update(self, done: int) -> None:
        if self._counter is not None and self._bar is not None:
            self._counter.items_completed = done
            self._bar.invalidate()

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            if self._counter is not None and exc_info[0] is None:
                self._counter.done = True
            self._bar.__exit__(*exc_info)
