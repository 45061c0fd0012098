"""Reading a stream that may block (a pipe) on a thread of its own, block by block."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from dfs.client.localstream import StreamReader

WAIT = 10.0


class ThreadReactor:
    """callFromThread queues the call; the test runs it, as the reactor thread would."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        self.calls.put((function, args))

    def run_one(self) -> None:
        function, args = self.calls.get(timeout=WAIT)
        function(*args)


def outcome(deferred: Deferred[bytes]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "not fired"
    return results[0]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


def test_blocks_are_gathered_whole_from_a_pipe_written_in_pieces(pipe):
    read_end, write_end = pipe
    reactor = ThreadReactor()
    reader = StreamReader(reactor, read_end, 10)

    def write() -> None:
        for piece in (b"abc", b"defg", b"hijklmn", b"opq"):
            os.write(write_end, piece)
        os.close(write_end)

    writer = threading.Thread(target=write)
    writer.start()
    blocks = []
    while True:
        deferred = reader.read()
        reactor.run_one()
        block = outcome(deferred)
        blocks.append(block)
        if not block:
            break
    writer.join(WAIT)
    reader.close()
    assert blocks == [b"abcdefghij", b"klmnopq", b""]


def test_the_end_is_read_once_as_a_terminal_tells_it_once(pipe):
    read_end, write_end = pipe
    reactor = ThreadReactor()
    reader = StreamReader(reactor, read_end, 10)
    os.write(write_end, b"typed\n")
    os.close(write_end)
    first = reader.read()
    reactor.run_one()
    # A terminal would now wait for more input: the reader must not read again.
    os.close(read_end)
    second = reader.read()
    reactor.run_one()
    reader.close()
    assert (outcome(first), outcome(second)) == (b"typed\n", b"")


def test_a_cancelled_read_drops_its_block_quietly(pipe):
    read_end, write_end = pipe
    reactor = ThreadReactor()
    reader = StreamReader(reactor, read_end, 4)
    deferred = reader.read()
    deferred.cancel()
    assert outcome(deferred).check(CancelledError)
    os.write(write_end, b"late")
    reactor.run_one()  # the block arrives after the cancel: nothing is raised
    reader.close()


def test_a_read_error_fails_the_read(pipe):
    _, write_end = pipe
    reactor = ThreadReactor()
    reader = StreamReader(reactor, write_end, 4)  # the write end cannot be read
    deferred = reader.read()
    reactor.run_one()
    failure = outcome(deferred)
    assert isinstance(failure, Failure) and failure.check(OSError)
    reader.close()
