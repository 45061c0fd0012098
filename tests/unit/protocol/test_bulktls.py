"""Bulk mode of the TLS layer, over real TLS in memory (TLSMemoryBIOFactory over
iosim): what is written arrives whole and in order, in one piece per write below TLS
and one delivery per read above it; a TLS shutdown and a corrupt record end the
connection as they do without it; and every DFS session is in bulk mode.

The tests run both ways: calling OpenSSL directly, and through pyOpenSSL's methods (as
bulk mode does where pyOpenSSL lacks the bindings it uses)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL.SSL import Error
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOProtocol

from dfs.protocol import bulktls
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity, Role


def use(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if mode == "methods":
        monkeypatch.setattr(bulktls, "_LIB_NEEDED", (*bulktls._LIB_NEEDED, "no_such_function"))


@pytest.fixture(params=["direct", "methods"])
def mode(request, monkeypatch) -> str:
    use(request.param, monkeypatch)
    return request.param


class End(Protocol):
    """One end: keeps every delivery and how the connection ended."""

    def __init__(self, bulk: bool = True) -> None:
        self.bulk = bulk
        self.deliveries: list[bytes] = []
        self.reason = None

    def connectionMade(self) -> None:
        if self.bulk:
            assert bulktls.enable(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.deliveries.append(data)

    def connectionLost(self, reason=None) -> None:
        self.reason = reason

    @property
    def received(self) -> bytes:
        return b"".join(self.deliveries)


@pytest.fixture(scope="module")
def connect(tls_connect):
    """``connect(server, client)``: connected over TLS in memory, handshake done."""

    def connect(server: Protocol, client: Protocol):
        wire = tls_connect(server, client)
        wire.settle()
        return wire

    return connect


def count_writes(tls: TLSMemoryBIOProtocol) -> list[int]:
    """Sizes of the pieces the TLS layer hands the transport below, from now on."""
    sizes: list[int] = []
    below = tls.transport
    write = below.write

    def counted(data: bytes) -> None:
        sizes.append(len(data))
        write(data)

    below.write = counted
    return sizes


def test_a_packet_goes_out_as_one_piece_and_arrives_as_one_delivery(connect, mode):
    server, client = End(), End()
    wire = connect(server, client)
    pieces = count_writes(wire.client_tls)
    packet = random.Random(1).randbytes(65536 + 29)
    client.transport.write(packet)
    assert len(pieces) == 1
    # Five records: the plaintext and, per record, no more than header and tag.
    assert len(packet) < pieces[0] <= len(packet) + 5 * 64
    wire.settle()
    assert server.deliveries == [packet]


def test_without_bulk_mode_the_same_packet_is_cut_in_records_both_ways(connect):
    """What bulk mode saves: the TLS layer alone writes and delivers record by record."""
    server, client = End(bulk=False), End(bulk=False)
    wire = connect(server, client)
    pieces = count_writes(wire.client_tls)
    packet = random.Random(1).randbytes(65536 + 29)
    client.transport.write(packet)
    wire.settle()
    assert server.received == packet
    assert len(pieces) > 1 and len(server.deliveries) > 1


@settings(max_examples=25, deadline=None)
@given(
    writes=st.lists(st.integers(min_value=0, max_value=150_000), min_size=1, max_size=12),
    pump_every=st.integers(min_value=1, max_value=4),
)
def test_writes_of_any_size_arrive_whole_and_in_order_both_ways(connect, writes, pump_every):
    for mode in ["direct", "methods"]:
        with pytest.MonkeyPatch.context() as monkeypatch:
            use(mode, monkeypatch)
            exchange(connect, writes, pump_every)


def exchange(connect, writes: list[int], pump_every: int) -> None:
    server, client = End(), End()
    wire = connect(server, client)
    source = random.Random(len(writes))
    sent = {client: bytearray(), server: bytearray()}
    for number, size in enumerate(writes):
        sender = client if number % 2 == 0 else server
        data = source.randbytes(size)
        sender.transport.write(data)
        sent[sender] += data
        if number % pump_every == 0:
            wire.settle()
    wire.settle()
    assert server.received == sent[client]
    assert client.received == sent[server]


def test_a_tls_shutdown_ends_the_connection_cleanly_after_the_last_bytes(connect, mode):
    server, client = End(), End()
    wire = connect(server, client)
    last = random.Random(2).randbytes(100_000)
    client.transport.write(last)
    client.transport.loseConnection()
    wire.settle()
    assert server.received == last
    assert server.reason is not None and server.reason.check(ConnectionDone)
    assert client.reason is not None and client.reason.check(ConnectionDone)


def test_a_corrupt_record_ends_the_connection_with_the_tls_error_after_the_good_ones(connect, mode):
    server, client = End(), End()
    wire = connect(server, client)
    good = random.Random(3).randbytes(65536)  # four records
    client.transport.write(good)
    client.transport.write(random.Random(4).randbytes(10_000))  # one more
    wire.clock.advance(0)
    records = bytearray(wire.pump.clientIO.getOutBuffer())
    records[-10] ^= 0xFF  # inside the tag of the last record
    wire.server_tls.dataReceived(bytes(records))
    wire.settle()
    assert server.received == good
    assert server.reason is not None and server.reason.check(Error)


def test_enable_is_idempotent_and_refuses_a_transport_without_tls(connect, mode):
    server, client = End(), End()
    wire = connect(server, client)
    assert bulktls.is_bulk(client.transport) and bulktls.is_bulk(server.transport)
    assert bulktls.is_direct(client.transport) == (mode == "direct")
    assert bulktls.enable(client.transport)
    packet = b"x" * 70_000
    client.transport.write(packet)
    wire.settle()
    assert server.deliveries == [packet]
    assert not bulktls.enable(StringTransport())
    assert not bulktls.is_bulk(StringTransport())


def test_a_tls_layer_without_the_replaced_parts_stays_as_it_is_and_says_so_once(
    connect, monkeypatch
):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        monkeypatch.setattr(bulktls, "_NEEDED", (*bulktls._NEEDED, "_no_such_part"))
        monkeypatch.setattr(bulktls, "_said", [])
        for _ in range(2):
            server, client = End(bulk=False), End(bulk=False)
            wire = connect(server, client)
            assert not bulktls.enable(client.transport)
            assert not bulktls.is_bulk(client.transport)
            client.transport.write(b"y" * 70_000)
            wire.settle()
            assert server.received == b"y" * 70_000
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [formatEvent(e) for e in events if "bulk mode" in formatEvent(e)]
    assert said == ["TLS bulk mode is off: this Twisted's TLS layer has no _no_such_part"]


def test_every_session_is_in_bulk_mode_on_both_ends_and_calls_openssl_directly(connect, mode):
    server = PeerSession(Identity(Role.METASERVER, "meta1"))
    client = PeerSession(Identity(Role.CLIENT, "alice"))
    client.dialled = True
    connect(server, client)
    assert bulktls.is_bulk(server.transport) and bulktls.is_bulk(client.transport)
    if mode == "direct":
        # What this pyOpenSSL offers: a change there shows here, not as a slowdown.
        assert bulktls.is_direct(server.transport) and bulktls.is_direct(client.transport)


def test_a_connection_keeps_an_outgoing_buffer_as_large_as_its_largest_message_needs(connect):
    server, client = End(), End()
    wire = connect(server, client)
    layer = bulktls._layer(client.transport)
    assert layer is not None and layer.direct
    client.transport.write(b"small" * 100)
    wire.settle()
    assert layer._out_size == bulktls._OUT_FIRST
    packet = random.Random(6).randbytes(70_000)
    client.transport.write(packet)
    wire.settle()
    assert 70_000 < layer._out_size < 75_000  # the records of one packet
    large = random.Random(7).randbytes(3_000_000)
    client.transport.write(large)
    wire.settle()
    assert layer._out_size == bulktls._DRAIN  # and no larger: it goes out in pieces
    assert server.received.endswith(packet + large)


class FakeTCP:
    """The parts of Twisted's TCP transport the write straight to the socket reads."""

    def __init__(self, takes: int | Exception = 1 << 30, buffered: bytes = b"") -> None:
        self.takes = takes
        self.dataBuffer = buffered
        self.offset = 0
        self._tempDataLen = 0
        self._writeDisconnected = False
        self.connected = True
        self.disconnecting = False
        self.socket: list[bytes] = []  # what the kernel took
        self.buffered: list[bytes] = []  # what went through the transport's write

    def writeSomeData(self, data: bytes) -> int | Exception:
        if isinstance(self.takes, Exception):
            return self.takes
        taken = data[: self.takes]
        self.socket.append(taken)
        return len(taken)

    def write(self, data: bytes) -> None:
        self.buffered.append(data)


def layer_over(transport: FakeTCP) -> bulktls._BulkLayer:
    layer = bulktls._BulkLayer.__new__(bulktls._BulkLayer)
    layer.tls = type("TLS", (), {"transport": transport})()
    layer.through = None
    return layer


def test_records_go_to_the_socket_at_once_when_nothing_waits_before_them():
    transport = FakeTCP()
    layer_over(transport)._send(b"records")
    assert (transport.socket, transport.buffered) == ([b"records"], [])


def test_what_the_kernel_does_not_take_goes_to_the_transports_buffer():
    transport = FakeTCP(takes=3)
    layer_over(transport)._send(b"records")
    assert (transport.socket, transport.buffered) == ([b"rec"], [b"ords"])


def test_records_wait_behind_what_the_transport_already_holds():
    transport = FakeTCP(buffered=b"earlier")
    layer_over(transport)._send(b"records")
    assert (transport.socket, transport.buffered) == ([], [b"records"])


def test_a_lost_connection_is_left_to_the_transports_own_write():
    transport = FakeTCP(takes=ConnectionDone())
    layer_over(transport)._send(b"records")
    assert transport.buffered == [b"records"]


def test_a_transport_without_the_parts_read_gets_every_write():
    transport = StringTransport()
    layer = layer_over(transport)  # type: ignore[arg-type]
    layer._send(b"records")
    assert transport.value() == b"records" and layer.through is False
