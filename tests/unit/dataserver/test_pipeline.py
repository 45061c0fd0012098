"""A write pipeline of three dataservers in memory: ChunkServices with real chunk
stores behind DataserverSessions, connected by in-memory transports; control over
AMP, data on chunk streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from dfs.dataserver.access import ChunkAccess
from dfs.dataserver.chunkstore import ChunkStore
from dfs.dataserver.pipeline import ACK_DELAY, ChunkService, PeerConnections
from dfs.dataserver.service import DataserverSession
from dfs.protocol import commands
from dfs.protocol.commands import OpenChunkWrite, RecoverChunkWrite
from dfs.protocol.errors import InvalidArgument, InvalidToken, PipelineBroken
from dfs.protocol.records import Location
from dfs.protocol.session import PeerSession
from dfs.protocol.stream import ChunkStream, open_stream
from dfs.security.identity import Identity, Role
from dfs.security.tokens import WRITE, TokenKeys

CLIENT = Identity(Role.CLIENT, "alice")
KEYS = TokenKeys(b"k" * 32)


def write_token(chunk_id: int, version: int, user: str = "alice", expires: float = 600) -> str:
    return KEYS.mint(chunk_id, version, WRITE, user, expires)


PACKET = 65536
DS1, DS2, DS3 = (Location("127.0.0.1", 7200 + n) for n in range(1, 4))


class Listener:
    def __init__(self) -> None:
        self.acked = 0
        self.failed: list[str] = []

    def chunk_acked(self, length: int) -> None:
        self.acked = length

    def chunk_failed(self, address: str) -> None:
        self.failed.append(address)


class Threads:
    """Runs the chunk store's blocking calls at once, or, while ``held``, when told:
    what runs in a thread on a dataserver."""

    def __init__(self) -> None:
        self.held = False
        #: calls waiting while held: (function name, run it)
        self.waiting: list[tuple[str, Any]] = []

    def __call__(self, function: Any, *args: Any) -> Deferred[Any]:
        if not self.held:
            return maybeDeferred(function, *args)
        result: Deferred[Any] = Deferred()
        self.waiting.append(
            (function.__name__, lambda: maybeDeferred(function, *args).chainDeferred(result))
        )
        return result

    def release(self) -> None:
        self.held = False
        waiting, self.waiting = self.waiting, []
        for _, run in waiting:
            run()


class Grid:
    """Dataservers DS1, DS2, DS3 and the wires between them and a client."""

    def __init__(self, root: Path) -> None:
        self.clock = Clock()
        self.pumps: list[Any] = []
        self.services: dict[str, tuple[ChunkService, Identity]] = {}
        self.threads: dict[str, Threads] = {}
        for number, address in enumerate((DS1, DS2, DS3), start=1):
            identity = Identity(Role.DATASERVER, f"ds{number}")
            store = ChunkStore(root / identity.name, reserved_space=0, fsync=False)
            peers = PeerConnections(self.clock, lambda to, me=identity: self.connect(me, to))
            threads = self.threads[address] = Threads()
            service = ChunkService(
                self.clock, store, peers, address, lambda stored: None, run_in_thread=threads
            )
            self.services[address] = (service, identity)

    def connect(self, caller: Identity, address: Location) -> Deferred[PeerSession]:
        if address not in self.services:
            return fail(ConnectionRefusedError(address))
        service, identity = self.services[address]

        def dialling() -> PeerSession:
            session = PeerSession(caller)
            session.dialled = True  # it states its protocol version first (Hello)
            return session

        client, server, pump = connectedServerAndClient(
            lambda: DataserverSession(service, identity, ChunkAccess(KEYS, self.clock)),
            dialling,
            greet=False,
        )
        server.authenticated(caller)
        client.authenticated(identity)
        pump.flush()  # the Hello, now that the server knows who calls
        self.pumps.append(pump)
        return succeed(client)

    def settle(self) -> None:
        """Deliver everything, letting acknowledgements held back for ACK_DELAY go."""
        for _ in range(1000):
            if any([pump.pump() for pump in list(self.pumps)]):
                continue
            now = self.clock.seconds()
            if not any(call.getTime() <= now + ACK_DELAY for call in self.clock.getDelayedCalls()):
                return
            self.clock.advance(ACK_DELAY)
        raise AssertionError("the wires never went quiet")

    def outcome(self, deferred: Deferred[Any]) -> Any:
        results: list[Any] = []
        deferred.addBoth(results.append)
        self.settle()
        assert results, "no answer"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def session(self, address: str, caller: Identity = CLIENT) -> PeerSession:
        return self.outcome(self.connect(caller, address))

    def stream(self, address: str, caller: Identity = CLIENT) -> ChunkStream:
        session = self.session(address, caller)
        return self.outcome(
            Deferred.fromCoroutine(open_stream(self.clock, session, address, timeout=30))
        )

    def replica(self, address: str, chunk_id: int) -> tuple[int, int]:
        """(version, bytes written) of the replica being written at ``address``."""
        write = self.services[address][0]._writes[chunk_id]
        return write.version, write.active().length


@pytest.fixture
def grid(tmp_path: Path) -> Grid:
    return Grid(tmp_path)


def open_pipeline(grid: Grid, chunk_id: int = 5) -> tuple[ChunkStream, Listener]:
    control = grid.session(DS1)
    grid.outcome(
        control.callRemote(
            OpenChunkWrite,
            chunk_id=chunk_id,
            version=1,
            downstream=[DS2, DS3],
            token=write_token(chunk_id, 1),
        )
    )
    stream = grid.stream(DS1)
    listener = Listener()
    stream.watch(chunk_id, 1, listener)
    return stream, listener


def send(stream: ChunkStream, chunk_id: int, version: int, data: bytes, start: int = 0) -> None:
    for offset in range(0, len(data), PACKET):
        stream.send_data(chunk_id, version, start + offset, data[offset : offset + PACKET])


def test_packets_reach_every_replica_and_the_first_acknowledges_once_all_hold_them(grid):
    stream, listener = open_pipeline(grid)
    data = bytes(range(256)) * 1000
    send(stream, 5, 1, data)
    grid.settle()
    assert listener.acked == len(data)
    assert listener.failed == []
    for address in (DS1, DS2, DS3):
        assert grid.replica(address, 5) == (1, len(data))


def test_a_dataserver_lost_below_is_named_to_the_writer(grid):
    stream, listener = open_pipeline(grid)
    send(stream, 5, 1, b"x" * PACKET)
    grid.settle()
    # The stream from ds2 to ds3 drops.
    grid.services[DS2][0]._writes[5].outbound.abort()  # type: ignore[union-attr]
    grid.settle()
    assert listener.failed == [str(DS3)]
    assert listener.acked == PACKET


def test_recovery_keeps_the_acknowledged_bytes_and_goes_on_without_the_failed_one(grid):
    stream, listener = open_pipeline(grid)
    send(stream, 5, 1, b"a" * PACKET)
    grid.settle()
    grid.services[DS2][0]._writes[5].outbound.abort()  # type: ignore[union-attr]
    send(stream, 5, 1, b"b" * PACKET, start=PACKET)  # lost with the failure
    grid.settle()
    assert listener.failed == [str(DS3)]

    control = grid.session(DS1)
    grid.outcome(
        control.callRemote(
            RecoverChunkWrite,
            chunk_id=5,
            version=1,
            new_version=2,
            length=PACKET,
            downstream=[DS2],
            token=write_token(5, 2),
        )
    )
    recovered = Listener()
    stream.watch(5, 2, recovered)
    send(stream, 5, 2, b"b" * 2 * PACKET, start=PACKET)
    grid.settle()
    assert recovered.acked == 3 * PACKET and recovered.failed == []
    assert grid.replica(DS1, 5) == (2, 3 * PACKET)
    assert grid.replica(DS2, 5) == (2, 3 * PACKET)
    assert grid.replica(DS3, 5)[0] == 1  # left behind at the old version


def test_data_for_no_write_here_is_refused_naming_this_dataserver(grid):
    stream = grid.stream(DS1)
    listener = Listener()
    stream.watch(9, 1, listener)
    send(stream, 9, 1, b"x" * 3 * PACKET)
    grid.settle()
    assert listener.failed == [str(DS1)]
    assert stream.is_open  # other writes may go on on the same stream


def test_a_packet_at_the_wrong_offset_breaks_the_write_naming_this_dataserver(grid):
    stream, listener = open_pipeline(grid)
    send(stream, 5, 1, b"x" * 100)
    grid.settle()
    send(stream, 5, 1, b"y" * 100, start=500)
    grid.settle()
    assert listener.acked == 100
    assert listener.failed == [str(DS1)]


def test_only_the_writer_that_opened_it_may_send_its_data(grid):
    stream, listener = open_pipeline(grid)
    intruder = grid.stream(DS1, Identity(Role.CLIENT, "mallory"))
    refused = Listener()
    intruder.watch(5, 1, refused)
    send(intruder, 5, 1, b"evil")
    send(stream, 5, 1, b"good")
    grid.settle()
    assert refused.failed == [str(DS1)]
    assert listener.acked == 4 and listener.failed == []
    assert grid.replica(DS3, 5) == (1, 4)


def test_a_dataserver_down_at_open_is_named_in_pipeline_broken(grid):
    del grid.services[DS3]
    control = grid.session(DS1)
    with pytest.raises(PipelineBroken) as caught:
        grid.outcome(
            control.callRemote(
                OpenChunkWrite,
                chunk_id=5,
                version=1,
                downstream=[DS2, DS3],
                token=write_token(5, 1),
            )
        )
    assert caught.value.address == str(DS3)


def test_an_open_overtaken_by_the_writers_retry_leaves_the_pipeline_to_the_retry(grid):
    """DS1 forwards an open to DS2 and fails; the writer opens DS2 again itself. When
    the first open's hop below finishes last, the write it set up is gone: it must not
    take the acknowledgements of the stream below away from the retry's write."""
    service = grid.services[DS2][0]
    ds1 = grid.services[DS1][1]
    peers = service._peers
    real_connect = peers._connect
    gate: Deferred[PeerSession] = Deferred()
    dialled: list[Any] = []

    def connect(address):
        dialled.append(address)
        if len(dialled) == 1:
            return gate  # the first open's dial to DS3 hangs for now
        return real_connect(address)

    peers._connect = connect
    token = write_token(5, 1)
    first = Deferred.fromCoroutine(service.open_write(5, 1, [DS3], owner=ds1, token=token))
    retry = Deferred.fromCoroutine(service.open_write(5, 1, [DS3], owner=CLIENT, token=token))
    assert grid.outcome(retry) is None
    real_connect(dialled[0]).chainDeferred(gate)
    with pytest.raises(InvalidArgument, match="replaced by a newer write"):
        grid.outcome(first)

    stream = grid.stream(DS2)
    listener = Listener()
    stream.watch(5, 1, listener)
    send(stream, 5, 1, b"z" * 3 * PACKET)
    grid.settle()
    assert listener.failed == []
    assert listener.acked == 3 * PACKET
    assert grid.replica(DS3, 5) == (1, 3 * PACKET)


def test_the_writers_token_goes_down_the_pipeline_and_every_dataserver_checks_it(grid):
    open_pipeline(grid)  # the open reached DS3 with the client's token
    control = grid.session(DS1)
    grid.outcome(
        control.callRemote(commands.AbortChunkWrite, chunk_id=5, version=1, token=write_token(5, 1))
    )
    for address in (DS1, DS2, DS3):
        assert grid.services[address][0]._writes == {}


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "no token"),
        (TokenKeys(b"other key").mint(5, 1, WRITE, "alice", 600), "forged token"),
        (write_token(6, 1), "wrong chunk"),
        (write_token(5, 2), "wrong version"),
        (KEYS.mint(5, 1, "read", "alice", 600), "wrong operation"),
        (write_token(5, 1, user="bob"), "wrong user"),
        (write_token(5, 1, expires=0), "expired token"),
    ],
)
def test_a_write_without_a_good_token_is_refused_before_the_store_is_touched(grid, token, reason):
    control = grid.session(DS1)
    with pytest.raises(InvalidToken, match=reason):
        grid.outcome(
            control.callRemote(OpenChunkWrite, chunk_id=5, version=1, downstream=[], token=token)
        )
    assert grid.services[DS1][0]._writes == {}
    assert grid.services[DS1][0].store.chunks() == []


def test_a_dataserver_below_refuses_a_token_the_first_did_not_check(grid):
    """A dataserver forwarding a pipeline is trusted with another user's token, not
    with none: the one below checks what it is given."""
    ds1 = grid.services[DS1][1]
    control = grid.session(DS2, ds1)
    grid.outcome(
        control.callRemote(
            OpenChunkWrite, chunk_id=5, version=1, downstream=[], token=write_token(5, 1)
        )
    )
    with pytest.raises(InvalidToken, match="no token"):
        grid.outcome(control.callRemote(OpenChunkWrite, chunk_id=6, version=1, downstream=[]))


# -- both ends of a write go down the pipeline at once ------------------------


def finish_call(grid: Grid, chunk_id: int, version: int, length: int) -> Deferred[Any]:
    control = grid.session(DS1)
    return control.callRemote(
        commands.FinishChunkWrite,
        chunk_id=chunk_id,
        version=version,
        length=length,
        token=write_token(chunk_id, version),
    )


def test_an_open_goes_down_the_pipeline_before_this_replica_is_open(grid):
    for threads in grid.threads.values():
        threads.held = True
    control = grid.session(DS1)
    answer = control.callRemote(
        OpenChunkWrite, chunk_id=5, version=1, downstream=[DS2, DS3], token=write_token(5, 1)
    )
    answers: list[Any] = []
    answer.addBoth(answers.append)
    grid.settle()
    # Every replica is being opened at once, and none is open yet: no answer.
    for address in (DS1, DS2, DS3):
        assert [name for name, _ in grid.threads[address].waiting] == ["open_writer"]
    assert answers == []
    for threads in grid.threads.values():
        threads.release()
    grid.settle()
    assert answers == [{}]
    for address in (DS1, DS2, DS3):
        assert grid.replica(address, 5) == (1, 0)


def test_a_dataserver_lost_below_while_this_replica_opens_is_named_and_the_replica_dropped(grid):
    del grid.services[DS3]
    grid.threads[DS1].held = True
    control = grid.session(DS1)
    answer = control.callRemote(
        OpenChunkWrite, chunk_id=5, version=1, downstream=[DS2, DS3], token=write_token(5, 1)
    )
    answers: list[Any] = []
    answer.addBoth(answers.append)
    grid.settle()
    assert answers == []  # the answer waits for this replica's open too
    grid.threads[DS1].release()
    grid.settle()
    [failure] = answers
    assert failure.check(PipelineBroken) and failure.value.address == str(DS3)
    service = grid.services[DS1][0]
    assert service._writes == {} and service.store.writer(5) is None


def test_a_finish_sent_ahead_of_the_packets_completes_every_replica_once_they_arrive(grid):
    stream, _listener = open_pipeline(grid)
    data = b"f" * (2 * PACKET + 100)
    finished = finish_call(grid, 5, 1, len(data))
    grid.settle()
    send(stream, 5, 1, data)
    assert grid.outcome(finished) == {"locations": [DS1, DS2, DS3]}
    for address in (DS1, DS2, DS3):
        stored = grid.services[address][0].store.get(5)
        assert stored is not None and (stored.version, stored.length) == (1, len(data))
        assert grid.services[address][0]._writes == {}


def test_the_replicas_are_completed_together_not_one_after_another(grid):
    stream, _listener = open_pipeline(grid)
    for threads in grid.threads.values():
        threads.held = True
    send(stream, 5, 1, b"t" * PACKET)
    finished = finish_call(grid, 5, 1, PACKET)
    answers: list[Any] = []
    finished.addBoth(answers.append)
    grid.settle()
    # Every dataserver's fsyncs run at the same time.
    for address in (DS1, DS2, DS3):
        assert [name for name, _ in grid.threads[address].waiting] == ["finish"]
    assert answers == []
    for threads in grid.threads.values():
        threads.release()
    grid.settle()
    assert answers == [{"locations": [DS1, DS2, DS3]}]


def test_a_finish_ahead_of_the_packets_fails_naming_the_dataserver_lost_below(grid):
    stream, listener = open_pipeline(grid)
    finished = finish_call(grid, 5, 1, PACKET)
    grid.settle()
    grid.services[DS2][0]._writes[5].outbound.abort()  # type: ignore[union-attr]
    send(stream, 5, 1, b"x" * PACKET)
    with pytest.raises(PipelineBroken) as caught:
        grid.outcome(finished)
    assert caught.value.address == str(DS3)
    assert listener.failed == [str(DS3)]


def test_a_replica_completed_ahead_of_its_acknowledgements_survives_a_recovery(grid):
    """A recovery asks the survivors to keep the acknowledged bytes; one that was
    complete already keeps all of them, and takes the resent packets as held."""
    control = grid.session(DS3)
    grid.outcome(
        control.callRemote(
            OpenChunkWrite, chunk_id=5, version=1, downstream=[], token=write_token(5, 1)
        )
    )
    stream = grid.stream(DS3)
    send(stream, 5, 1, b"r" * 2 * PACKET)
    grid.outcome(
        control.callRemote(
            commands.FinishChunkWrite,
            chunk_id=5,
            version=1,
            length=2 * PACKET,
            token=write_token(5, 1),
        )
    )
    grid.outcome(
        control.callRemote(
            RecoverChunkWrite,
            chunk_id=5,
            version=1,
            new_version=2,
            length=PACKET,
            downstream=[],
            token=write_token(5, 2),
        )
    )
    recovered = Listener()
    stream.watch(5, 2, recovered)
    send(stream, 5, 2, b"r" * PACKET, start=PACKET)
    grid.settle()
    assert recovered.acked == 2 * PACKET and recovered.failed == []
    answer = grid.outcome(
        control.callRemote(
            commands.FinishChunkWrite,
            chunk_id=5,
            version=2,
            length=2 * PACKET,
            token=write_token(5, 2),
        )
    )
    assert answer == {"locations": [DS3]}
    stored = grid.services[DS3][0].store.get(5)
    assert stored is not None and (stored.version, stored.length) == (2, 2 * PACKET)


# -- a whole chunk in one request (StoreChunk) ----------------------------------------


def store_call(grid: Grid, chunk_id: int, version: int, data: bytes, **extra: Any) -> Deferred:
    arguments: dict[str, Any] = {"token": write_token(chunk_id, version), **extra}
    return grid.session(DS1).callRemote(
        commands.StoreChunk,
        chunk_id=chunk_id,
        version=version,
        downstream=[DS2, DS3],
        data=data,
        **arguments,
    )


def test_a_whole_chunk_in_one_request_is_complete_on_every_replica_when_answered(grid):
    data = bytes(range(256)) * 300
    assert grid.outcome(store_call(grid, 9, 1, data)) == {"locations": [DS1, DS2, DS3]}
    for address in (DS1, DS2, DS3):
        service = grid.services[address][0]
        stored = service.store.get(9)
        assert stored is not None and (stored.version, stored.length) == (1, len(data))
        assert service.store.read(9, 1, 0, len(data)) == data
        assert service._writes == {}


def test_a_whole_chunk_goes_down_the_pipeline_before_this_replica_is_stored(grid):
    for threads in grid.threads.values():
        threads.held = True
    answers: list[Any] = []
    store_call(grid, 9, 1, b"w" * 1000).addBoth(answers.append)
    grid.settle()
    # Every dataserver's open, append and fsyncs run at the same time.
    for address in (DS1, DS2, DS3):
        assert [name for name, _ in grid.threads[address].waiting] == ["store_whole"]
    assert answers == []
    for threads in grid.threads.values():
        threads.release()
    grid.settle()
    assert answers == [{"locations": [DS1, DS2, DS3]}]


def test_a_whole_chunk_with_a_dataserver_down_below_names_it(grid):
    del grid.services[DS3]
    with pytest.raises(PipelineBroken) as caught:
        grid.outcome(store_call(grid, 9, 1, b"x" * 100))
    assert caught.value.address == str(DS3)


def test_a_whole_chunk_is_refused_without_a_good_token_before_the_store_is_touched(grid):
    with pytest.raises(InvalidToken):
        grid.outcome(store_call(grid, 9, 1, b"x" * 100, token=write_token(9, 2)))
    assert grid.services[DS1][0].store.get(9) is None


def test_a_whole_chunk_is_not_sent_to_a_dataserver_below_of_an_older_protocol(grid):
    from dfs.protocol.version import ProtocolVersion

    service = grid.services[DS1][0]
    below = grid.outcome(Deferred.fromCoroutine(service._peers.get(DS2)))
    below.peer_protocol = ProtocolVersion(2, 1)
    with pytest.raises(InvalidArgument, match="no StoreChunk"):
        grid.outcome(store_call(grid, 9, 1, b"x" * 100))
    # Nothing stored anywhere: the writer writes it through the pipeline instead.
    for address in (DS1, DS2, DS3):
        assert grid.services[address][0].store.get(9) is None
