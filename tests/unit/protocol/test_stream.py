"""The chunk stream over StringTransport and an in-memory AMP connection: framing,
acknowledgements, failures, the watchdog, and the switch from AMP."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from dfs.protocol.commands import OpenChunkStream
from dfs.protocol.errors import PermissionDenied
from dfs.protocol.session import PeerSession
from dfs.protocol.stream import ACK, DATA, FAIL, HEADER, ChunkStream, open_stream
from dfs.security.identity import Identity, Role

CLIENT = Identity(Role.CLIENT, "alice")
DATASERVER = Identity(Role.DATASERVER, "ds1")


class Received:
    """A DataReceiver that keeps what arrives."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, int, int, bytes]] = []
        self.frames: list[bytes | None] = []
        self.batches = 0
        self.lost = False

    def chunk_data(self, stream, chunk_id, version, offset, data, frame=None):
        self.packets.append((chunk_id, version, offset, data))
        self.frames.append(None if frame is None else bytes(frame))

    def frames_done(self, stream):
        self.batches += 1

    def stream_lost(self, stream):
        self.lost = True


class Listener:
    """A StreamListener that keeps what it is told."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.failed: list[str] = []

    def chunk_acked(self, length):
        self.acked.append(length)

    def chunk_failed(self, address):
        self.failed.append(address)


def frame(kind: int, chunk_id: int, version: int, offset: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, chunk_id, version, offset, len(payload)) + payload


def receiving_end(clock=None):
    received = Received()
    stream = ChunkStream(
        clock or Clock(), peer=CLIENT, address="10.0.0.9:5000", timeout=30, receiver=received
    )
    transport = StringTransport()
    stream.makeConnection(transport)
    return stream, transport, received


def sending_end(clock=None):
    stream = ChunkStream(clock or Clock(), peer=DATASERVER, address="10.0.0.1:7200", timeout=30)
    transport = StringTransport()
    stream.makeConnection(transport)
    return stream, transport


@given(
    packets=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=20),
)
def test_packets_arrive_whole_and_in_order_however_the_bytes_are_cut(packets, cuts):
    stream, _, received = receiving_end()
    wire = b""
    offset = 0
    for packet in packets:
        wire += frame(DATA, 7, 2, offset, packet)
        offset += len(packet)
    position = 0
    for cut in cuts:
        stream.dataReceived(wire[position : position + cut])
        position += cut
    stream.dataReceived(wire[position:])
    assert [p[3] for p in received.packets] == packets
    assert [p[2] for p in received.packets] == [
        sum(len(p) for p in packets[:i]) for i in range(len(packets))
    ]
    assert all(p[:2] == (7, 2) for p in received.packets)


def test_a_frame_that_came_in_one_read_is_handed_on_as_it_came_to_be_passed_on():
    stream, _, received = receiving_end()
    first, second, third = (frame(DATA, 7, 2, 100 * n, bytes([n]) * 100) for n in range(3))
    stream.dataReceived(first + second[:50])
    stream.dataReceived(second[50:] + third)
    assert received.frames == [first, None, third]  # the second was cut: built again
    sender, transport = sending_end()
    for (chunk_id, version, offset, data), whole in zip(
        received.packets, received.frames, strict=True
    ):
        sender.send_data(
            chunk_id, version, offset, data, None if whole is None else memoryview(whole)
        )
    assert transport.value() == first + second + third


def test_a_packet_goes_out_as_one_frame():
    stream, transport = sending_end()
    stream.send_data(7, 2, 65536, b"x" * 10)
    assert transport.value() == frame(DATA, 7, 2, 65536, b"x" * 10)


def test_acknowledgements_reach_the_write_they_name_once_each_at_their_highest():
    stream, _ = sending_end()
    mine, other = Listener(), Listener()
    stream.watch(7, 2, mine)
    stream.watch(8, 1, other)
    stream.send_data(7, 2, 0, b"x" * 300)
    stream.dataReceived(frame(ACK, 7, 2, 100) + frame(ACK, 7, 2, 300) + frame(ACK, 7, 1, 999))
    assert mine.acked == [300]  # cumulative: the highest of one read counts
    stream.dataReceived(frame(ACK, 7, 2, 200))
    assert mine.acked == [300]  # never backwards
    assert other.acked == []


def test_unwatch_removes_only_the_listener_named():
    stream, _ = sending_end()
    old, new = Listener(), Listener()
    stream.watch(7, 2, old)
    stream.watch(7, 2, new)  # a newer write of the same chunk and version
    stream.unwatch(7, 2, old)  # the old one leaving must not take the new one along
    stream.dataReceived(frame(ACK, 7, 2, 100))
    assert new.acked == [100] and old.acked == []
    stream.unwatch(7, 2, new)
    stream.dataReceived(frame(ACK, 7, 2, 200))
    assert new.acked == [100]


def test_a_failure_frame_names_the_failed_dataserver_and_ends_the_watch():
    stream, _ = sending_end()
    listener = Listener()
    stream.watch(7, 2, listener)
    stream.dataReceived(frame(FAIL, 7, 2, 0, b"10.0.0.3:7200"))
    stream.dataReceived(frame(ACK, 7, 2, 100))
    assert listener.failed == ["10.0.0.3:7200"]
    assert listener.acked == []


def test_a_lost_connection_fails_every_write_on_it_naming_the_dataserver_dialled():
    stream, _ = sending_end()
    first, second = Listener(), Listener()
    stream.watch(7, 2, first)
    stream.watch(8, 1, second)
    stream.connectionLost(Failure(ConnectionError("gone")))
    assert first.failed == second.failed == ["10.0.0.1:7200"]
    late = Listener()
    stream.watch(9, 1, late)
    assert late.failed == ["10.0.0.1:7200"]


def test_the_watchdog_drops_a_stream_whose_data_goes_unacknowledged():
    clock = Clock()
    stream, transport = sending_end(clock)
    listener = Listener()
    stream.watch(7, 2, listener)
    stream.send_data(7, 2, 0, b"x" * 100)
    clock.advance(20)
    stream.dataReceived(frame(ACK, 7, 2, 50))  # progress: the clock starts again
    clock.advance(20)
    assert not transport.disconnecting
    clock.advance(11)
    assert transport.disconnecting


def test_the_watchdog_leaves_an_idle_stream_alone():
    clock = Clock()
    stream, transport = sending_end(clock)
    stream.watch(7, 2, Listener())
    stream.send_data(7, 2, 0, b"x" * 100)
    stream.dataReceived(frame(ACK, 7, 2, 100))
    clock.advance(3600)
    assert not transport.disconnecting
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize(
    "wire",
    [
        frame(DATA, 1, 1, 0, b"x" * 65537),  # more than a packet
        frame(ACK, 1, 1, 0, b"x"),  # an acknowledgement with a payload
        frame(9, 1, 1, 0),  # no such kind
    ],
    ids=["oversized packet", "ack with payload", "unknown kind"],
)
def test_a_malformed_frame_closes_the_connection(wire):
    stream, transport, received = receiving_end()
    stream.dataReceived(wire[: HEADER.size])
    assert transport.disconnecting
    assert received.packets == []


def test_a_writer_refuses_chunk_data_sent_to_it():
    stream, transport = sending_end()
    stream.dataReceived(frame(DATA, 1, 1, 0, b"x"))
    assert transport.disconnecting


# -- the switch from AMP ----------------------------------------------------------


class StreamServer(PeerSession):
    """Answers OpenChunkStream with a stream into ``received``."""

    def __init__(self, identity: Identity, received: Received) -> None:
        super().__init__(identity)
        self.received = received

    @OpenChunkStream.responder
    def open_chunk_stream(self) -> ChunkStream:
        return ChunkStream(
            Clock(), peer=self.peer, address="client", timeout=30, receiver=self.received
        )


def switched(caller: Identity):
    received = Received()
    client, server, pump = connectedServerAndClient(
        lambda: StreamServer(DATASERVER, received), lambda: PeerSession(caller)
    )
    server.authenticated(caller)
    client.authenticated(DATASERVER)
    outcome: list = []
    opening = open_stream(Clock(), client, "10.0.0.1:7200", timeout=30)
    Deferred.fromCoroutine(opening).addBoth(outcome.append)
    pump.flush()
    assert outcome, "no answer"
    return outcome[0], received, pump


def test_amp_hands_the_connection_over_to_a_chunk_stream():
    stream, received, pump = switched(CLIENT)
    assert isinstance(stream, ChunkStream) and stream.is_open
    assert stream.peer == DATASERVER
    listener = Listener()
    stream.watch(3, 1, listener)
    stream.send_data(3, 1, 0, b"hello")
    pump.flush()
    assert received.packets == [(3, 1, 0, b"hello")]


def test_a_metaserver_may_not_open_a_chunk_stream():
    outcome, _, _ = switched(Identity(Role.METASERVER, "meta1"))
    assert isinstance(outcome, Failure) and outcome.check(PermissionDenied)
