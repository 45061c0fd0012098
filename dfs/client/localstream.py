"""Reading a local stream that may block (standard input, a pipe, a terminal) for a
put, without blocking the reactor.

A file on disk is read in the reactor thread: a read of a few MiB from the page cache
or a disk is short. A pipe is another matter: its writer may take minutes to produce
the next block, and the reactor must go on renewing leases and answering dataservers
meanwhile. :class:`StreamReader` reads such a stream on a thread of its own, one
block per request, so that a put streams it with one block in memory at a time.

The thread is a daemon and reads the file descriptor with ``os.read``, not through
the stream's buffered object: a process that ends (Ctrl-C, a failed put) while the
thread waits for input does not wait for it, and leaves no lock of ``sys.stdin``
held at interpreter exit.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

from twisted.internet.defer import Deferred


class StreamReader:
    """Blocks of ``block_size`` bytes (fewer only at the end, then ``b""``) read from
    the file descriptor ``fd`` on a daemon thread, delivered in the reactor thread.

    One :meth:`read` at a time. Cancelling a read abandons its block; :meth:`close`
    ends the thread once the read under way, if any, returns.
    """

    def __init__(self, reactor: Any, fd: int, block_size: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._block_size = block_size
        self._requests: queue.SimpleQueue[Deferred[bytes] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: read in the reader's thread only
        self._ended = False

    def read(self) -> Deferred[bytes]:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name="dfs-stream-reader", daemon=True
            )
            self._thread.start()
        request: Deferred[bytes] = Deferred()
        self._requests.put(request)
        return request

    def close(self) -> None:
        if self._thread is not None:
            self._requests.put(None)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            try:
                outcome: bytes | OSError = self._read_block()
            except OSError as error:
                outcome = error
            self._reactor.callFromThread(self._deliver, request, outcome)

    def _read_block(self) -> bytes:
        # A pipe gives at most what its writer wrote so far (often 64 KiB): gather a
        # whole block, so that the writer sends whole packets.
        parts: list[bytes] = []
        size = 0
        # An end seen is kept: a terminal's (Ctrl-D) is told once, and a second read
        # would wait for more input.
        while size < self._block_size and not self._ended:
            part = os.read(self._fd, self._block_size - size)
            if not part:
                self._ended = True
                break
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    @staticmethod
    def _deliver(request: Deferred[bytes], outcome: bytes | OSError) -> None:
        if request.called:
            return  # cancelled meanwhile: the block goes with it
        if isinstance(outcome, OSError):
            request.errback(outcome)
        else:
            request.callback(outcome)
