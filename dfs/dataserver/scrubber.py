"""The scrubber: every replica on this dataserver re-read from disk, on a schedule.

Bits rot on disks and files get damaged behind the dataserver's back; a replica
nobody reads would only be found bad when it is the last one left. A pass re-reads
every replica the store held when the pass began (skipping those deleted or
replaced since) and checks its sidecar and every block against their CRC32C. A
corrupt replica is moved to the quarantine folder (no longer served, reported or
counted) and reported to every metaserver with ReplicaCorrupt, so the leader copies
a good replica elsewhere.

Reads are held to ``scrub_bandwidth`` bytes per second, so that scrubbing never
competes with clients for the disk; a pass starts every ``scrub_interval`` seconds
(counted from the start of the previous one), the first shortly after startup.
``scrub_bandwidth`` 0 turns the scrubber off.

The check runs in a thread (:meth:`ChunkStore.verify`), which waits there between
4 MiB pieces to hold the rate; stopping the service wakes it, and the pass ends
after the piece being read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from dfs.dataserver.chunkstore import ChunkStore, StoredChunk
from dfs.dataserver.replicator import InThread, Throttle, quarantine_replica
from dfs.protocol.errors import ChunkNotFound, StaleChunk

#: Seconds after startup before the first pass (or scrub_interval, if shorter): the
#: dataserver registers and reports its chunks first.
FIRST_PASS_DELAY = 30.0


#: What a check answers for a replica deleted or replaced while it was being checked.
_GONE = "gone"


class _Stopped(Exception):
    """Raised in the scrubbing thread to end a pass when the service stops."""


@attrs.define
class ScrubCounters:
    """What the status document and /metrics show of the scrubber."""

    passes: int = 0  # passes completed
    replicas_checked: int = 0
    bytes_checked: int = 0
    corrupt_found: int = 0
    last_pass_start: float | None = None  # reactor time (seconds since the epoch)
    last_pass_end: float | None = None
    in_pass: bool = False


class ChunkScrubber(Service):
    """Periodic passes over every replica of a :class:`ChunkStore`.

    ``on_corrupt(chunk_id, version, reason)`` reports a replica the scrubber
    quarantined. ``in_thread`` runs a blocking call off the reactor and ``wait``
    pauses that thread for a number of seconds (returning early once the service
    stops); tests pass synchronous ones driven by a Clock.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        store: ChunkStore,
        *,
        bandwidth: int,
        interval: float,
        on_corrupt: Callable[[int, int, str], None],
        in_thread: InThread = deferToThread,
        wait: Callable[[float], object] | None = None,
        first_pass_delay: float = FIRST_PASS_DELAY,
    ) -> None:
        if bandwidth < 0 or interval <= 0:
            raise ValueError(f"bad scrub settings: {bandwidth} B/s every {interval} s")
        self._reactor = reactor
        self.store = store
        self.bandwidth = bandwidth
        self.interval = interval
        self._on_corrupt = on_corrupt
        self._in_thread = in_thread
        self._stopping = threading.Event()
        self._wait = wait if wait is not None else self._stopping.wait
        self._first_pass_delay = min(first_pass_delay, interval)
        self.counters = ScrubCounters()
        self._throttle = Throttle(bandwidth)
        self._loop: Deferred[None] | None = None
        #: the pause between passes, cancelled by a stop
        self._pause: Deferred[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.bandwidth > 0

    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            self.log.info("scrubber off (scrub_bandwidth is 0)")
            return
        self._stopping.clear()
        self.log.info(
            "scrubber on: a pass every {interval:g}s at {bandwidth} bytes/s, "
            "the first in {delay:g}s",
            interval=self.interval,
            bandwidth=self.bandwidth,
            delay=self._first_pass_delay,
        )
        self._loop = Deferred.fromCoroutine(self._run())

    def stopService(self) -> Deferred[None]:
        """Stop at once between passes, or after the piece being read in a pass."""
        super().stopService()
        self._stopping.set()
        if self._pause is not None:
            self._pause.cancel()
        loop, self._loop = self._loop, None
        return loop if loop is not None else succeed(None)

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "bandwidth": self.bandwidth,
            "interval": self.interval,
            **attrs.asdict(self.counters),
        }

    async def _run(self) -> None:
        delay = self._first_pass_delay
        try:
            while not self._stopping.is_set():
                self._pause = deferLater(self._reactor, delay)
                try:
                    await self._pause
                finally:
                    self._pause = None
                started = self._reactor.seconds()
                try:
                    await self.scrub()
                except (CancelledError, _Stopped):
                    raise
                except Exception:
                    # A disk error moving a replica aside, say: the next pass tries again.
                    self.log.failure("scrub pass failed")
                delay = max(0.0, started + self.interval - self._reactor.seconds())
        except (CancelledError, _Stopped):
            pass

    async def scrub(self) -> None:
        """One pass over the replicas held now. Raises _Stopped if the service stops."""
        counters = self.counters
        snapshot = self.store.chunks()
        counters.in_pass = True
        counters.last_pass_start = self._reactor.seconds()
        checked = corrupt = 0
        self.log.info("scrub pass over {count} replicas begins", count=len(snapshot))
        try:
            for stored in snapshot:
                if self._stopping.is_set():
                    raise _Stopped()
                if self.store.get(stored.chunk_id) != stored:
                    continue  # deleted or replaced since the pass began
                problem = await self._check(stored)
                if problem == _GONE:
                    continue
                checked += 1
                counters.replicas_checked += 1
                if problem is not None:
                    corrupt += 1
                    counters.corrupt_found += 1
                    await quarantine_replica(
                        self.store,
                        self._in_thread,
                        stored.chunk_id,
                        stored.version,
                        problem,
                        self._on_corrupt,
                    )
        finally:
            counters.in_pass = False
        counters.passes += 1
        counters.last_pass_end = self._reactor.seconds()
        self.log.info(
            "scrub pass done: {checked} replicas checked, {corrupt} corrupt, in {seconds:.0f}s",
            checked=checked,
            corrupt=corrupt,
            seconds=counters.last_pass_end - counters.last_pass_start,
        )

    async def _check(self, stored: StoredChunk) -> str | None:
        """None when the replica is intact, why it is not otherwise, or _GONE when it
        was deleted or replaced during the check."""
        try:
            intact = await self._in_thread(
                self.store.verify, stored.chunk_id, stored.version, on_progress=self._progress
            )
        except (ChunkNotFound, StaleChunk):
            return _GONE
        except OSError as error:
            # A disk that cannot read the replica back has lost it as surely.
            self.log.warn(
                "scrub: chunk {chunk_id} version {version} unreadable: {error}",
                chunk_id=stored.chunk_id,
                version=stored.version,
                error=str(error),
            )
            return f"scrubber could not read it: {error}"
        if intact:
            return None
        return "scrubber found a block or its sidecar failing its CRC32C"

    def _progress(self, nbytes: int) -> None:
        """In the scrubbing thread, after each piece read: count it, and wait as
        long as the bandwidth asks (or end the pass if the service stops)."""
        self.counters.bytes_checked += nbytes
        if self._stopping.is_set():
            raise _Stopped()
        delay = self._throttle.reserve(nbytes, self._reactor.seconds())
        if delay > 0:
            self._wait(delay)
            if self._stopping.is_set():
                raise _Stopped()
