"""Ctrl-C around the start of a transfer: held back until the transfer is known (so
that it can be cancelled), and ignored throughout by a process that ignores SIGINT."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from dfs_shell.files import _interrupt_after


@pytest.fixture
def sigint() -> Iterator[None]:
    """Whatever a test does to SIGINT's disposition is undone after it."""
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_in_the_block_is_raised_after_it(sigint):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with _interrupt_after():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("end of the block")
    assert reached == ["end of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_process_that_ignores_sigint_ignores_it_in_the_block_too(sigint):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with _interrupt_after():
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_with_sigint_at_its_default_a_held_back_ctrl_c_still_ends_the_command(sigint):
    # SIG_DFL would have killed the process: a KeyboardInterrupt lets it clean up first.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with pytest.raises(KeyboardInterrupt):
        with _interrupt_after():
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
