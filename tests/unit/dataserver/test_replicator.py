"""ChunkReplicator: copies pulled from fake sources into a real ChunkStore, with a
Clock for read timeouts and the rate bound; one copy over in-memory AMP from a real
DataserverSession; VerifyChunk on a replica damaged on disk."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from dfs.dataserver.access import ChunkAccess
from dfs.dataserver.chunkstore import CHECKSUM_BLOCK, ChunkStore, ChunkWriter, StoredChunk
from dfs.dataserver.pipeline import ChunkService, PeerConnections
from dfs.dataserver.replicator import (
    CONNECT_TIMEOUT,
    READ_REQUEST,
    READ_TIMEOUT,
    READ_WINDOW,
    ChunkReplicator,
    Throttle,
)
from dfs.dataserver.service import DataserverSession, MetaserverLinkSession
from dfs.protocol.commands import ReadChunk, ReplicateChunk, VerifyChunk
from dfs.protocol.errors import (
    ChecksumMismatch,
    ChunkNotFound,
    InvalidToken,
    NoSpace,
    PermissionDenied,
    StaleChunk,
)
from dfs.protocol.records import Location
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity, Role
from dfs.security.tokens import COPY, READ, TokenKeys

B = CHECKSUM_BLOCK
MiB = 1024 * 1024
HERE = Location("127.0.0.1", 7200)
S1, S2, S3, S4 = (Location("127.0.0.1", 7200 + n) for n in range(1, 5))
META = Identity(Role.METASERVER, "meta1")
DS = Identity(Role.DATASERVER, "ds0")
KEYS = TokenKeys(b"cluster token key")


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def in_line(function: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    """The thread hop, done in line: the tests see each step in order."""
    return maybeDeferred(function, *args, **kwargs)


class Transport:
    def __init__(self) -> None:
        self.closed = False

    def loseConnection(self) -> None:
        self.closed = True


class FakeSource:
    """A source dataserver holding replicas in memory and answering ReadChunk as a
    real one does: bytes to the end of the last block touched, and the CRC32C stored
    for each block (computed from ``good``, so damaged bytes show)."""

    def __init__(self, clock: Clock, replicas: dict[tuple[int, int], bytes]) -> None:
        self.clock = clock
        self.replicas = dict(replicas)
        self.good = dict(replicas)
        self.reads: list[tuple[float, int, int]] = []  # (when, offset, length)
        self.hold = False  # keep answers until released
        self.held: list[tuple[Deferred[Any], dict[str, Any]]] = []
        self.silent = False  # never answer
        self.error: Exception | None = None
        self.transport = Transport()

    def damage(self, key: tuple[int, int], offset: int) -> None:
        data = bytearray(self.replicas[key])
        data[offset] ^= 0x5A
        self.replicas[key] = bytes(data)

    def callRemote(self, command: Any, **arguments: Any) -> Deferred[Any]:
        assert command is ReadChunk
        offset, length = arguments["offset"], arguments["length"]
        assert offset % B == 0
        self.reads.append((self.clock.seconds(), offset, length))
        if self.silent:
            return Deferred()
        if self.error is not None:
            return fail(self.error)
        key = (arguments["chunk_id"], arguments["version"])
        if key not in self.replicas:
            return fail(ChunkNotFound(f"chunk {key[0]} is not stored here"))
        data, good = self.replicas[key], self.good[key]
        end = min(offset + length, len(data))
        stop = min(-(-end // B) * B, len(data))
        answer = {
            "data": data[offset:stop],
            "checksums": [google_crc32c.value(good[at : at + B]) for at in range(offset, stop, B)],
        }
        if self.hold:
            waiting: Deferred[Any] = Deferred()
            self.held.append((waiting, answer))
            return waiting
        return succeed(answer)

    def release(self) -> None:
        waiting, answer = self.held.pop(0)
        waiting.callback(answer)


class Harness:
    def __init__(self, root: Path, **store_options: Any) -> None:
        self.clock = Clock()
        store_options.setdefault("reserved_space", 0)
        self.store = ChunkStore(root / "target", fsync=False, **store_options)
        self.sources: dict[str, FakeSource] = {}
        self.dialled: list[str] = []
        self.received: list[StoredChunk] = []
        self.corrupt: list[tuple[int, int, str]] = []
        self.replicator = ChunkReplicator(
            self.clock,
            self.store,
            location=HERE,
            connect=self.connect,
            on_received=self.received.append,
            on_corrupt=lambda *report: self.corrupt.append(report),
            in_thread=in_line,
        )

    def source(self, address: str, replicas: dict[tuple[int, int], bytes]) -> FakeSource:
        self.sources[address] = FakeSource(self.clock, replicas)
        return self.sources[address]

    def connect(self, address: str) -> Deferred[Any]:
        self.dialled.append(address)
        if address not in self.sources:
            return fail(ConnectionRefusedError(f"connection to {address} refused"))
        return succeed(self.sources[address])

    def replicate(self, chunk_id: int, version: int, length: int, sources: list[str], rate=0):
        return Deferred.fromCoroutine(
            self.replicator.replicate(chunk_id, version, length, sources, rate)
        )

    def outcome(self, deferred: Deferred[Any], limit: float = 3600.0) -> Any:
        """Run the clock from one timer to the next until ``deferred`` fires."""
        results: list[Any] = []
        deferred.addBoth(results.append)
        while not results:
            calls = self.clock.getDelayedCalls()
            assert calls, "stuck: nothing scheduled and no answer"
            assert self.clock.seconds() < limit, "no answer in time"
            self.clock.advance(max(0.0, min(c.getTime() for c in calls) - self.clock.seconds()))
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def files(self) -> list[str]:
        return sorted(p.name for p in self.store.chunks_dir.rglob("*") if p.is_file())


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_a_copy_lands_byte_identical_and_is_reported(harness):
    data = payload(2 * MiB + 3 * B + 17)
    source = harness.source(S1, {(9, 4): data})

    assert harness.outcome(harness.replicate(9, 4, len(data), [S1])) == S1

    assert harness.store.get(9) == StoredChunk(9, 4, len(data))
    assert harness.store.read(9, 4, 0, len(data)) == data
    assert harness.store.verify(9, 4) is True
    assert harness.received == [StoredChunk(9, 4, len(data))]
    assert harness.files() == ["9_4.chunk", "9_4.crc"]
    assert source.transport.closed, "the copy's own session is closed"
    # Whole 1 MiB reads; the last asks one byte past the end to see a longer source.
    assert [(o, n) for _, o, n in source.reads] == [
        (0, READ_REQUEST),
        (MiB, READ_REQUEST),
        (2 * MiB, 3 * B + 18),
    ]
    assert harness.replicator.counters.copies == 1
    assert harness.replicator.counters.bytes == len(data)
    assert harness.replicator.counters.in_progress == 0


def test_the_copy_keeps_a_window_of_reads_in_flight(harness):
    data = payload(8 * MiB)
    source = harness.source(S1, {(9, 4): data})
    source.hold = True
    copy = harness.replicate(9, 4, len(data), [S1])

    assert len(source.held) == READ_WINDOW
    source.release()
    assert len(source.held) == READ_WINDOW, "an answer makes room for the next read"
    while source.held:
        source.release()
    assert harness.outcome(copy) == S1
    assert harness.store.read(9, 4, 0, len(data)) == data


@pytest.mark.parametrize("length", [0, 1, B, 3 * B + 17])
def test_small_and_empty_replicas_are_copied(harness, length):
    data = payload(length, seed=length)
    harness.source(S1, {(3, 1): data})
    assert harness.outcome(harness.replicate(3, 1, length, [S1])) == S1
    assert harness.store.get(3) == StoredChunk(3, 1, length)
    assert harness.store.read(3, 1, 0, length) == data


def test_a_corrupt_block_moves_the_copy_to_the_next_source_and_never_lands(harness, monkeypatch):
    data = payload(3 * MiB + 5)
    bad = harness.source(S1, {(9, 4): data})
    bad.damage((9, 4), 2 * MiB + 100)
    harness.source(S2, {(9, 4): data})
    appended: list[tuple[int, bytes]] = []
    original_append = ChunkWriter.append

    def recording_append(writer: ChunkWriter, piece: bytes) -> None:
        appended.append((writer.length, bytes(piece)))
        original_append(writer, piece)

    monkeypatch.setattr(ChunkWriter, "append", recording_append)

    assert harness.outcome(harness.replicate(9, 4, len(data), [S1, S2])) == S2

    assert harness.store.read(9, 4, 0, len(data)) == data
    # Every byte that reached a writer was a good one: the damaged block never did.
    assert appended
    for at, piece in appended:
        assert piece == data[at : at + len(piece)]
    assert harness.received == [StoredChunk(9, 4, len(data))]
    assert bad.transport.closed
    assert harness.replicator.counters.source_failures == 1


def test_a_source_holding_more_than_the_ordered_length_is_refused(harness):
    data = payload(2 * B)
    harness.source(S1, {(9, 4): data + b"more"})
    harness.source(S2, {(9, 4): data})
    assert harness.outcome(harness.replicate(9, 4, len(data), [S1, S2])) == S2
    assert harness.store.read(9, 4, 0, 3 * B) == data


def test_all_sources_failing_gives_one_clear_error_and_leaves_no_file(harness):
    data = payload(MiB + 7)
    # S1 is not there at all, S2 lacks the chunk, S3 holds an older version only,
    # S4 sends a damaged block.
    harness.source(S2, {})
    stale = harness.source(S3, {})
    stale.error = StaleChunk("chunk 9: version 3 here, 4 asked for")
    harness.source(S4, {(9, 4): data}).damage((9, 4), 5)

    with pytest.raises(ChecksumMismatch) as caught:
        harness.outcome(harness.replicate(9, 4, len(data), [S1, S2, S3, S4]))

    message = str(caught.value)
    assert "chunk 9 version 4" in message
    assert "\n" not in message
    for address in (S1, S2, S3, S4):
        assert str(address) in message
    assert "ConnectionRefusedError" in message and "StaleChunk" in message
    assert harness.dialled == [S1, S2, S3, S4]
    assert harness.files() == [], "no replica and no temporary left"
    assert harness.store.get(9) is None
    assert harness.received == []
    assert harness.replicator.counters.failures == 1


def test_unreachable_sources_answer_chunk_not_found_naming_them(harness):
    with pytest.raises(ChunkNotFound, match=r"chunk 9 version 4: no source .*127\.0\.0\.1:7202"):
        harness.outcome(harness.replicate(9, 4, 100, [S1, S2]))
    assert harness.files() == []


def test_a_source_that_stops_answering_is_given_up_after_the_read_timeout(harness):
    data = payload(2 * MiB)
    harness.source(S1, {(9, 4): data}).silent = True
    harness.source(S2, {(9, 4): data})

    assert harness.outcome(harness.replicate(9, 4, len(data), [S1, S2])) == S2
    assert harness.clock.seconds() == pytest.approx(READ_TIMEOUT)
    assert harness.store.read(9, 4, 0, len(data)) == data


def test_a_source_that_cannot_be_reached_in_time_is_given_up(harness):
    data = payload(B)
    harness.source(S2, {(9, 4): data})
    connect = harness.connect
    harness.replicator._connect = lambda address: Deferred() if address == S1 else connect(address)
    assert harness.outcome(harness.replicate(9, 4, len(data), [S1, S2])) == S2
    assert harness.clock.seconds() == pytest.approx(CONNECT_TIMEOUT)


def test_a_replica_already_complete_here_answers_at_once(harness):
    data = payload(3 * B)
    writer = harness.store.open_writer(9, 4)
    writer.append(data)
    writer.finish()

    copy = harness.replicate(9, 4, len(data), [S1])
    assert copy.called, "answered without waiting for anything"
    assert harness.outcome(copy) == HERE
    assert harness.dialled == []
    assert harness.received == []


def test_a_stale_older_replica_is_replaced(harness):
    old = payload(5 * B, seed=1)
    writer = harness.store.open_writer(9, 3)
    writer.append(old)
    writer.finish()
    data = payload(2 * B + 1, seed=2)
    harness.source(S1, {(9, 4): data})

    assert harness.outcome(harness.replicate(9, 4, len(data), [S1])) == S1

    assert harness.store.get(9) == StoredChunk(9, 4, len(data))
    assert harness.store.read(9, 4, 0, len(data)) == data
    with pytest.raises(StaleChunk):
        harness.store.read(9, 3, 0, 1)
    assert harness.files() == ["9_4.chunk", "9_4.crc"]
    assert harness.store.used_bytes() == len(data)


def test_a_newer_replica_here_refuses_an_order_for_an_older_version(harness):
    writer = harness.store.open_writer(9, 5)
    writer.append(b"x")
    writer.finish()
    with pytest.raises(StaleChunk):
        harness.outcome(harness.replicate(9, 4, 1, [S1]))
    assert harness.dialled == []


def test_no_space_here_is_answered_without_trying_the_sources(tmp_path):
    harness = Harness(tmp_path, capacity=MiB)
    with pytest.raises(NoSpace):
        harness.outcome(harness.replicate(9, 4, 2 * MiB, [S1, S2]))
    assert harness.dialled == []
    assert harness.files() == []


@pytest.mark.parametrize("rate", [256 * 1024, 3 * MiB])
def test_the_rate_bounds_the_copy_in_reactor_time(harness, rate):
    data = payload(6 * MiB + 5)
    source = harness.source(S1, {(9, 4): data})

    assert harness.outcome(harness.replicate(9, 4, len(data), [S1], rate=rate)) == S1

    assert harness.store.read(9, 4, 0, len(data)) == data
    # No read starts before the bytes asked for earlier are paid for at the rate...
    before = 0
    for when, offset, length in source.reads:
        assert when >= before / rate - 1e-9
        before += min(length, len(data) - offset)
    # ...and the pauses are no longer than that asks.
    *_, (last_start, last_offset, _) = source.reads
    assert last_start == pytest.approx(last_offset / rate)
    assert harness.clock.seconds() >= (len(data) - (len(data) - last_offset)) / rate
    # Reads are small enough for a pause of a quarter of a second at most.
    assert max(length for _, _, length in source.reads) <= max(B, rate // 4) + 1


def test_an_unbounded_copy_takes_no_reactor_time(harness):
    data = payload(4 * MiB)
    harness.source(S1, {(9, 4): data})
    assert harness.outcome(harness.replicate(9, 4, len(data), [S1])) == S1
    assert harness.clock.seconds() == 0


def test_an_order_repeated_during_the_copy_gets_the_answer_of_that_copy(harness):
    data = payload(2 * MiB)
    source = harness.source(S1, {(9, 4): data})
    source.hold = True
    first = harness.replicate(9, 4, len(data), [S1])
    again = harness.replicate(9, 4, len(data), [S1])
    while source.held:
        source.release()
    assert harness.outcome(first) == S1
    assert harness.outcome(again) == S1
    assert harness.dialled == [S1]
    assert harness.received == [StoredChunk(9, 4, len(data))]


def test_stopping_abandons_a_copy_and_removes_its_partial_replica(harness):
    data = payload(8 * MiB)
    source = harness.source(S1, {(9, 4): data})
    source.hold = True
    harness.replicator.startService()
    copy = harness.replicate(9, 4, len(data), [S1])
    source.release()
    assert harness.files() == ["9_4.chunk.tmp"]

    stopped = harness.replicator.stopService()

    assert stopped.called
    with pytest.raises(CancelledError):
        harness.outcome(copy)
    assert harness.files() == []
    assert harness.received == []
    assert harness.replicator.counters.in_progress == 0


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def test_verify_answers_intact_for_a_good_replica(harness):
    writer = harness.store.open_writer(9, 4)
    writer.append(payload(3 * B))
    writer.finish()
    assert harness.outcome(Deferred.fromCoroutine(harness.replicator.verify(9, 4))) is True
    assert harness.corrupt == []
    assert harness.store.get(9) is not None


def test_verify_quarantines_and_reports_a_corrupt_replica(harness):
    writer = harness.store.open_writer(9, 4)
    writer.append(payload(3 * B))
    writer.finish()
    flip_byte(harness.store.data_path(9, 4), 2 * B + 5)

    assert harness.outcome(Deferred.fromCoroutine(harness.replicator.verify(9, 4))) is False

    assert harness.store.get(9) is None
    assert harness.files() == []
    assert sorted(p.name for p in harness.store.quarantine_dir.iterdir()) == [
        "9_4.chunk",
        "9_4.crc",
    ]
    assert [(c, v) for c, v, _ in harness.corrupt] == [(9, 4)]
    assert harness.replicator.counters.corrupt == 1


def test_verify_of_a_replica_not_here_says_so(harness):
    with pytest.raises(ChunkNotFound):
        harness.outcome(Deferred.fromCoroutine(harness.replicator.verify(9, 4)))


def test_throttle_books_each_reservation_after_the_previous_one():
    throttle = Throttle(100)
    assert throttle.reserve(50, now=10.0) == 0
    assert throttle.reserve(50, now=10.0) == pytest.approx(0.5)
    assert throttle.reserve(100, now=10.2) == pytest.approx(0.8)
    assert throttle.reserve(10, now=100.0) == 0, "no credit for idle time past the bookings"
    assert Throttle(0).reserve(10**9, now=0.0) == 0


# -- the orders over AMP, from a real DataserverSession source ------------------------


class Wires:
    """The target's link session with a metaserver, and a real source dataserver,
    on in-memory AMP connections."""

    def __init__(self, root: Path) -> None:
        self.clock = Clock()
        self.pumps: list[Any] = []
        source_store = ChunkStore(root / "source", reserved_space=0, fsync=False)
        source_identity = Identity(Role.DATASERVER, "ds1")
        self.source_store = source_store
        chunks = ChunkService(
            self.clock,
            source_store,
            PeerConnections(self.clock, lambda _: fail(ConnectionRefusedError())),
            S1,
            lambda stored: None,
        )
        access = ChunkAccess(KEYS, self.clock)
        self.source_session = lambda: DataserverSession(chunks, source_identity, access)
        self.store = ChunkStore(root / "target", reserved_space=0, fsync=False)
        self.replicator = ChunkReplicator(
            self.clock,
            self.store,
            location=HERE,
            connect=self.dial,
            on_received=lambda stored: None,
            on_corrupt=lambda *report: None,
            in_thread=in_line,
        )

    def dial(self, address: str) -> Deferred[PeerSession]:
        assert address == S1
        return succeed(self.pair(self.source_session, DS, Identity(Role.DATASERVER, "ds1")))

    def pair(self, serve: Any, caller: Identity, callee: Identity) -> PeerSession:
        client, server, pump = connectedServerAndClient(serve, lambda: PeerSession(caller))
        server.authenticated(caller)
        client.authenticated(callee)
        self.pumps.append(pump)
        return client

    def link(self, caller: Identity) -> PeerSession:
        return self.pair(lambda: MetaserverLinkSession(DS, self.replicator), caller, DS)

    def outcome(self, deferred: Deferred[Any]) -> Any:
        results: list[Any] = []
        deferred.addBoth(results.append)
        for _ in range(10_000):
            if results:
                break
            if not any([pump.pump() for pump in list(self.pumps)]):
                self.clock.advance(0.01)
        assert results, "no answer"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]


def test_replicate_chunk_over_amp_copies_from_a_real_dataserver(tmp_path):
    wires = Wires(tmp_path)
    data = payload(2 * MiB + 99)
    writer = wires.source_store.open_writer(9, 4)
    writer.append(data)
    writer.finish()
    leader = wires.link(META)

    answer = wires.outcome(
        leader.callRemote(
            ReplicateChunk,
            chunk_id=9,
            version=4,
            length=len(data),
            sources=[S1],
            rate=0,
            token=KEYS.mint(9, 4, COPY, DS.name, 600),
        )
    )

    assert answer == {"source": S1}
    assert wires.store.read(9, 4, 0, len(data)) == data
    assert wires.outcome(leader.callRemote(VerifyChunk, chunk_id=9, version=4)) == {"intact": True}
    with pytest.raises(ChunkNotFound):
        wires.outcome(leader.callRemote(VerifyChunk, chunk_id=10, version=1))


@pytest.mark.parametrize("role", [Role.CLIENT, Role.ADMIN, Role.DATASERVER])
def test_only_a_metaserver_may_order_a_copy_or_a_check(tmp_path, role):
    wires = Wires(tmp_path)
    caller = wires.link(Identity(role, "someone"))
    with pytest.raises(PermissionDenied):
        wires.outcome(
            caller.callRemote(ReplicateChunk, chunk_id=9, version=4, length=1, sources=[S1], rate=0)
        )
    with pytest.raises(PermissionDenied):
        wires.outcome(caller.callRemote(VerifyChunk, chunk_id=9, version=4))
    assert wires.store.chunks() == []


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "no token"),
        (KEYS.mint(9, 4, COPY, "ds7", 600), "wrong user"),
        (KEYS.mint(9, 4, READ, DS.name, 600), "wrong operation"),
        (TokenKeys(b"another cluster").mint(9, 4, COPY, DS.name, 600), "forged token"),
    ],
)
def test_a_source_serves_a_copy_only_on_a_copy_token_minted_for_the_target(tmp_path, token, reason):
    wires = Wires(tmp_path)
    writer = wires.source_store.open_writer(9, 4)
    writer.append(b"data")
    writer.finish()
    leader = wires.link(META)
    with pytest.raises(InvalidToken, match=reason):
        wires.outcome(
            leader.callRemote(
                ReplicateChunk, chunk_id=9, version=4, length=4, sources=[S1], rate=0, token=token
            )
        )
    assert wires.store.chunks() == []


def test_the_copy_token_goes_with_every_read_to_the_sources(harness):
    data = payload(3 * MiB)
    source = harness.source(S1, {(9, 4): data})
    tokens: list[str] = []
    answer = source.callRemote

    def recording(command: Any, **arguments: Any) -> Deferred[Any]:
        tokens.append(arguments["token"])
        return answer(command, **arguments)

    source.callRemote = recording  # type: ignore[method-assign]
    copy = harness.replicator.replicate(9, 4, len(data), [S1], 0, token="the copy token")
    assert harness.outcome(Deferred.fromCoroutine(copy)) == S1
    assert len(tokens) >= 3 and set(tokens) == {"the copy token"}
