"""An operation the blocking facade gave up on (Ctrl-C, a timeout) may fail later, as
its connections close: that failure is nobody's to report and must not print a
traceback ("Unhandled error in EventualResult") after the user was told why the
command stopped. crochet runs its own reactor thread, so each case runs in a
process of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import gc, sys, threading
    import crochet
    crochet.setup()
    from twisted.internet import reactor
    from twisted.internet.defer import CancelledError
    from twisted.internet.task import deferLater
    from dfs.client.blocking import run, run_eventually

    ended = threading.Event()

    async def fails_later():
        # Cancelling does not stop it at once (as a read that ends only when its
        # connection is closed): it winds down, then fails.
        try:
            try:
                await deferLater(reactor, 0.2)
            except CancelledError:
                await deferLater(reactor, 0.2)
        finally:
            reactor.callLater(0, ended.set)
        raise ValueError("connection lost after the caller gave up")

    MODE = sys.argv[1]
    if MODE == "run-timeout":
        try:
            run(fails_later, timeout=0.01)
        except crochet.TimeoutError:
            pass
    else:
        result = run_eventually(fails_later)
        if MODE == "abandon":
            result.abandon(0.01)
        del result
    assert ended.wait(10), "the operation never ended"
    # Let the reactor thread pass the failure on, then collect what is left.
    crochet.run_in_reactor(lambda: None)().wait(5)
    gc.collect()
    print("done", flush=True)
    """
)


def run_case(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("mode", ["abandon", "run-timeout"])
def test_a_failure_after_the_caller_gave_up_prints_nothing(mode):
    done = run_case(mode)
    assert done.returncode == 0 and done.stdout == "done\n", done.stdout + done.stderr
    assert "Unhandled error" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_without_giving_up_the_failure_is_reported():
    # The case above is not vacuous: an operation dropped without abandon() is logged.
    done = run_case("dropped")
    assert done.returncode == 0, done.stderr
    assert "Unhandled error in EventualResult" in done.stderr
