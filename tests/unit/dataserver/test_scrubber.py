"""ChunkScrubber over a real ChunkStore: passes driven by a Clock, the scrubbing
thread's pauses counted as reactor time; one test with a real thread and reactor for
a prompt stop."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock, deferLater

from dfs.dataserver.chunkstore import ChunkStore, StoredChunk
from dfs.dataserver.scrubber import ChunkScrubber

MiB = 1024 * 1024
PIECE = 4 * MiB  # ChunkStore.verify's on_progress step


def in_line(function: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    return maybeDeferred(function, *args, **kwargs)


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


class Harness:
    def __init__(self, root: Path, *, bandwidth: int = 64 * MiB, interval: float = 3600.0):
        self.clock = Clock()
        self.store = ChunkStore(root, reserved_space=0, fsync=False)
        self.reports: list[tuple[int, int, str]] = []
        self.waits: list[float] = []
        #: called from the scrubbing "thread" at each pause, before the clock moves
        self.on_wait: Any = None
        self.scrubber = ChunkScrubber(
            self.clock,
            self.store,
            bandwidth=bandwidth,
            interval=interval,
            on_corrupt=lambda *report: self.reports.append(report),
            in_thread=in_line,
            wait=self.wait,
            first_pass_delay=10.0,
        )

    def wait(self, seconds: float) -> None:
        """The scrubbing thread pausing: reactor time goes by meanwhile."""
        self.waits.append(seconds)
        if self.on_wait is not None:
            self.on_wait()
        self.clock.advance(seconds)

    def add(self, chunk_id: int, size: int, version: int = 1) -> bytes:
        data = payload(size, chunk_id)
        writer = self.store.open_writer(chunk_id, version)
        writer.append(data)
        writer.finish()
        return data

    @property
    def counters(self) -> Any:
        return self.scrubber.counters


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_a_flipped_byte_is_quarantined_and_reported_once_and_the_pass_goes_on(harness):
    for chunk_id in (1, 2, 3):
        harness.add(chunk_id, 300_000)
    flip_byte(harness.store.data_path(2, 1), 200_000)
    harness.scrubber.startService()

    harness.clock.advance(10.0)  # the first pass

    assert harness.counters.passes == 1
    assert harness.counters.replicas_checked == 3
    assert harness.counters.corrupt_found == 1
    assert [(c, v) for c, v, _ in harness.reports] == [(2, 1)]
    assert "CRC32C" in harness.reports[0][2]
    assert [c.chunk_id for c in harness.store.chunks()] == [1, 3]
    assert sorted(p.name for p in harness.store.quarantine_dir.iterdir()) == [
        "2_1.chunk",
        "2_1.crc",
    ]
    assert not harness.store.data_path(2, 1).exists()

    harness.clock.advance(3600.0)  # the next pass finds nothing new

    assert harness.counters.passes == 2
    assert harness.counters.replicas_checked == 5
    assert len(harness.reports) == 1
    harness.scrubber.stopService()


def test_a_damaged_sidecar_is_found_too(harness):
    harness.add(1, 100_000)
    flip_byte(harness.store.sidecar_path(1, 1), 40)
    harness.scrubber.startService()
    harness.clock.advance(10.0)
    assert [(c, v) for c, v, _ in harness.reports] == [(1, 1)]
    assert harness.store.chunks() == []


def test_the_scrubber_holds_its_bandwidth_in_reactor_time(tmp_path):
    harness = Harness(tmp_path, bandwidth=MiB)
    for chunk_id in range(1, 9):
        harness.add(chunk_id, MiB)
    harness.add(9, 9 * MiB + 5)  # three pieces
    total = 17 * MiB + 5
    harness.scrubber.startService()

    harness.clock.advance(10.0)

    counters = harness.counters
    assert counters.passes == 1 and counters.replicas_checked == 9
    assert counters.bytes_checked == total
    elapsed = counters.last_pass_end - counters.last_pass_start
    # Each piece waits for the ones before it at 1 MiB/s: all but the last piece.
    assert elapsed == pytest.approx((total - (total - 16 * MiB)) / MiB)
    assert elapsed >= (total - PIECE) / MiB
    assert sum(harness.waits) == pytest.approx(elapsed)


def test_passes_start_every_interval_from_the_start_of_the_previous_one(tmp_path):
    harness = Harness(tmp_path, bandwidth=MiB, interval=100.0)
    for chunk_id in range(1, 31):
        harness.add(chunk_id, MiB)  # a pass takes 29 s at 1 MiB/s
    harness.scrubber.startService()

    harness.clock.advance(10.0)
    assert harness.counters.last_pass_start == 10.0
    assert harness.counters.last_pass_end == pytest.approx(39.0)
    harness.clock.advance(70.9)
    assert harness.counters.passes == 1, "not before 100 s after the first began"
    harness.clock.advance(0.1)
    assert harness.counters.passes == 2
    assert harness.counters.last_pass_start == pytest.approx(110.0)
    assert harness.counters.last_pass_end == pytest.approx(139.0)
    harness.scrubber.stopService()


def test_a_replica_gone_during_the_pass_is_skipped(harness):
    for chunk_id in (1, 2, 3):
        harness.add(chunk_id, 100_000)
    harness.scrubber.bandwidth = MiB
    harness.scrubber._throttle.rate = MiB

    def delete_the_last() -> None:
        harness.store.delete(3)

    harness.on_wait = delete_the_last
    harness.scrubber.startService()
    harness.clock.advance(10.0)

    assert harness.counters.passes == 1
    assert harness.counters.replicas_checked == 2
    assert harness.reports == []


def test_stopping_ends_a_pass_between_pieces(tmp_path):
    harness = Harness(tmp_path, bandwidth=MiB)
    for chunk_id in range(1, 6):
        harness.add(chunk_id, MiB)
    stops: list[Deferred[None]] = []
    harness.on_wait = lambda: stops.append(harness.scrubber.stopService())
    harness.scrubber.startService()

    harness.clock.advance(10.0)

    assert len(stops) == 1 and stops[0].called, "stopped after the piece being read"
    assert harness.counters.replicas_checked < 5
    assert harness.counters.passes == 0
    assert harness.counters.in_pass is False
    harness.clock.advance(10 * 3600.0)
    assert harness.counters.passes == 0, "no pass after the stop"
    assert harness.clock.getDelayedCalls() == []


def test_stopping_between_passes_is_immediate(harness):
    harness.add(1, 1000)
    harness.scrubber.startService()
    harness.clock.advance(10.0)
    stopped = harness.scrubber.stopService()
    assert stopped.called
    assert harness.clock.getDelayedCalls() == []


def test_scrub_bandwidth_zero_turns_the_scrubber_off(tmp_path):
    harness = Harness(tmp_path, bandwidth=0)
    harness.add(1, 1000)
    flip_byte(harness.store.data_path(1, 1), 10)
    harness.scrubber.startService()
    harness.clock.advance(10 * 3600.0)
    assert harness.clock.getDelayedCalls() == []
    assert harness.counters.passes == 0
    assert harness.store.get(1) == StoredChunk(1, 1, 1000)
    assert harness.scrubber.status()["enabled"] is False
    assert harness.scrubber.stopService().called


@pytest_twisted.ensureDeferred
async def test_a_real_scrubbing_thread_stops_promptly_when_its_pause_is_long(tmp_path):
    store = ChunkStore(tmp_path, reserved_space=0, fsync=False)
    for chunk_id in (1, 2):
        writer = store.open_writer(chunk_id, 1)
        writer.append(payload(PIECE, chunk_id))
        writer.finish()
    # 1 KiB/s: the second replica would wait more than an hour for its turn.
    scrubber = ChunkScrubber(
        reactor,
        store,
        bandwidth=1024,
        interval=3600.0,
        on_corrupt=lambda *report: None,
        first_pass_delay=0.0,
    )
    scrubber.startService()
    deadline = time.monotonic() + 30
    while scrubber.counters.bytes_checked == 0:
        assert time.monotonic() < deadline, "the first pass never began"
        await deferLater(reactor, 0.01)

    began = time.monotonic()
    await scrubber.stopService()

    assert time.monotonic() - began < 5.0
    # The first replica went at once; the second waits (or never began).
    assert scrubber.counters.bytes_checked in (PIECE, 2 * PIECE)
    assert scrubber.counters.replicas_checked == 1
    assert scrubber.counters.passes == 0
