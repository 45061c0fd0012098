"""The blocking facade's hop to the reactor thread and back (dfs.client.blocking.run and
Eventual): values, exceptions, timeouts, cancellation and a reactor that stops while a
caller waits. crochet runs its own reactor thread, so the cases run in a process of
their own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import threading, time
    import crochet
    crochet.setup()
    from twisted.internet import reactor
    from twisted.internet.defer import CancelledError, Deferred
    from twisted.internet.task import deferLater
    from dfs.client.blocking import run, run_eventually

    async def value(x, *, plus=0):
        await deferLater(reactor, 0)
        return x + plus

    async def fails():
        raise KeyError("no such thing")

    def not_a_coroutine():
        raise ValueError("refused before it started")

    assert run(value, 40, plus=2) == 42
    try:
        run(fails)
    except KeyError as error:
        assert "no such thing" in str(error)
    else:
        raise AssertionError("the exception was not raised")
    try:
        run(not_a_coroutine)
    except ValueError:
        pass
    else:
        raise AssertionError("an exception at the start was not raised")

    # A timeout cancels what runs: the coroutine sees CancelledError.
    seen = threading.Event()

    async def slow():
        try:
            await Deferred()
        except CancelledError:
            seen.set()
            raise

    try:
        run(slow, timeout=0.05)
    except crochet.TimeoutError:
        pass
    else:
        raise AssertionError("no timeout")
    assert seen.wait(10), "the timed-out operation was not cancelled"

    # Waiting twice gives the same outcome; polling with a zero timeout works.
    eventual = run_eventually(value, 1)
    assert eventual.wait(10) == 1 and eventual.wait(0) == 1

    # Waiting in the reactor thread is refused rather than deadlocking.
    async def waits_in_reactor():
        inner = run_eventually(value, 1)
        try:
            inner.wait(1)
        except RuntimeError:
            return "refused"
        return "waited"
    assert run(waits_in_reactor) == "refused"

    # A reactor that stops while someone waits ends the wait.
    pending = run_eventually(slow)
    reactor.callFromThread(reactor.stop)
    try:
        pending.wait(20)
    except crochet.ReactorStopped:
        print("done", flush=True)
    """
)


def test_the_hop_gives_values_exceptions_timeouts_and_ends_when_the_reactor_stops():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0 and done.stdout == "done\n", done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
