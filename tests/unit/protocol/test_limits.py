"""The limits a server puts on each connection, over StringTransport and task.Clock."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols import amp

from dfs.config.model import ConnectionLimits
from dfs.protocol.commands import ANY_ROLE, Bulk, DFSCommand, Ping
from dfs.protocol.limits import LimitedFactory, ServerLimits, unsent_bytes
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity, Role

SERVER = Identity(Role.METASERVER, "meta1")
ALICE = Identity(Role.CLIENT, "alice")
BOB = Identity(Role.CLIENT, "bob")


class Wait(DFSCommand):
    """A command whose answer the test gives (see Server.pending)."""

    commandName = b"Wait"
    arguments: ClassVar[list] = [(b"n", amp.Integer())]
    response: ClassVar[list] = [(b"n", amp.Integer())]
    allowed_roles = ANY_ROLE


class Server(PeerSession):
    def __init__(self) -> None:
        super().__init__(SERVER)
        self.pending: list[tuple[int, Deferred[dict[str, int]]]] = []

    @Wait.responder
    def wait(self, n: int) -> Deferred[dict[str, int]]:
        answer: Deferred[dict[str, int]] = Deferred()
        self.pending.append((n, answer))
        return answer

    def answer_all(self) -> None:
        while self.pending:
            n, answer = self.pending.pop(0)
            answer.callback({"n": n})


class Socket(StringTransport):
    """A TCP transport as far as the limits look at it: its unsent output."""

    def __init__(self) -> None:
        super().__init__()
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def write(self, data: bytes) -> None:
        super().write(data)
        self._tempDataLen += len(data)  # a peer that reads nothing


def limits(**settings: Any) -> tuple[ServerLimits, Clock]:
    clock = Clock()
    return ServerLimits(ConnectionLimits(**settings), clock), clock


def server(shared: ServerLimits, transport: StringTransport | None = None) -> Server:
    session = Server()
    session.apply_limits(shared)
    session.makeConnection(transport or StringTransport())
    return session


def ask(tag: int, command: bytes = b"Wait", **arguments: bytes) -> bytes:
    box = amp.AmpBox(_command=command, _ask=b"%d" % tag, **arguments)
    return box.serialize()


def answers(transport: StringTransport) -> list[amp.AmpBox]:
    return list(amp.parseString(transport.value()))


def logged(events: list[dict[str, Any]], fragment: str) -> bool:
    from twisted.logger import formatEvent

    return any(fragment in formatEvent(event) for event in events)


# -- the handshake -----------------------------------------------------------


def test_a_connection_without_a_handshake_is_aborted_at_the_timeout():
    shared, clock = limits(handshake_timeout=5)
    transport = StringTransport()
    with capturedLogs() as events:
        server(shared, transport)
        clock.advance(4.9)
        assert not transport.disconnecting
        clock.advance(0.2)
    assert transport.disconnected  # aborted, not closed politely
    assert logged(events, "no TLS handshake within 5 s")
    assert not logged(events, "TLS handshake failed")


def test_a_completed_handshake_stops_the_handshake_timer():
    shared, clock = limits(handshake_timeout=5)
    transport = StringTransport()
    session = server(shared, transport)
    session.authenticated(ALICE)
    clock.advance(60)
    assert not transport.disconnecting
    assert clock.getDelayedCalls()  # only the idle timer is left
    assert all(call.getTime() >= 900 for call in clock.getDelayedCalls())


# -- idleness ------------------------------------------------------------------


def test_an_idle_connection_is_closed_and_logged():
    shared, clock = limits(idle_timeout=30)
    transport = StringTransport()
    session = server(shared, transport)
    session.authenticated(ALICE)
    with capturedLogs() as events:
        clock.advance(29)
        assert not transport.disconnecting
        clock.advance(1)
    assert transport.disconnecting and not transport.disconnected  # closed, not aborted
    assert logged(events, "closed connection with client:alice")
    assert logged(events, "nothing received for 30 s")


def test_bytes_received_keep_a_connection_open():
    shared, clock = limits(idle_timeout=30)
    transport = StringTransport()
    session = server(shared, transport)
    session.authenticated(ALICE)
    for _ in range(10):
        clock.advance(20)
        session.dataReceived(ask(1, b"Ping"))
    assert not transport.disconnecting
    clock.advance(30)
    assert transport.disconnecting


def test_a_peer_waiting_for_an_answer_is_not_idle():
    shared, clock = limits(idle_timeout=30)
    transport = StringTransport()
    session = server(shared, transport)
    session.authenticated(ALICE)
    session.dataReceived(ask(1, n=b"1"))
    clock.advance(300)
    assert not transport.disconnecting
    session.answer_all()
    clock.advance(29)
    assert not transport.disconnecting  # idleness counts from the answer
    clock.advance(31)
    assert transport.disconnecting


# -- connections per identity ------------------------------------------------


def test_one_connection_past_the_limit_per_identity_is_refused():
    shared, _ = limits(connections_per_identity=2)
    transports = [StringTransport() for _ in range(3)]
    sessions = [server(shared, transport) for transport in transports]
    with capturedLogs() as events:
        for session in sessions:
            session.authenticated(ALICE)
    assert [t.disconnected for t in transports] == [False, False, True]
    assert logged(events, "client:alice already has 2 connections open (limit 2)")
    assert sessions[2].peer is None
    # Another identity is counted apart.
    other = server(shared, StringTransport())
    other.authenticated(BOB)
    assert other.peer == BOB
    assert shared.connections(ALICE) == 2


def test_a_closed_connection_makes_room_for_another():
    shared, _ = limits(connections_per_identity=1)
    first = server(shared)
    first.authenticated(ALICE)
    refused = server(shared)
    refused.authenticated(ALICE)
    refused.connectionLost(amp.Failure(ConnectionError("aborted")))  # type: ignore[attr-defined]
    assert shared.connections(ALICE) == 1  # the refused one was never counted
    first.connectionLost(amp.Failure(ConnectionError("closed")))  # type: ignore[attr-defined]
    assert shared.connections(ALICE) == 0
    again = server(shared)
    again.authenticated(ALICE)
    assert again.peer == ALICE


def test_new_limits_hold_new_connections_and_open_ones_keep_theirs():
    shared, clock = limits(connections_per_identity=3, idle_timeout=30)
    transports = [StringTransport() for _ in range(3)]
    sessions = [server(shared, transport) for transport in transports]
    for session in sessions:
        session.authenticated(ALICE)

    # SIGHUP: fewer connections per identity, a shorter idle timeout.
    shared.use(ConnectionLimits(connections_per_identity=2, idle_timeout=5))
    assert shared.connections(ALICE) == 3  # nothing open is closed
    refused_transport = StringTransport()
    refused = server(shared, refused_transport)
    with capturedLogs() as events:
        refused.authenticated(ALICE)
    assert refused_transport.disconnected
    assert logged(events, "client:alice already has 3 connections open (limit 2)")

    # The open connections keep the idle timeout they were accepted with...
    newer_transport = StringTransport()
    newer = server(shared, newer_transport)
    newer.authenticated(BOB)
    clock.advance(5)
    assert newer_transport.disconnecting  # ...a new one has the new one
    assert not any(transport.disconnecting for transport in transports)
    clock.advance(25)
    assert all(transport.disconnecting for transport in transports)

    # Once the identity is under the new limit, it is admitted again.
    for session in sessions:
        session.connectionLost(amp.Failure(ConnectionError("closed")))  # type: ignore[attr-defined]
    again = server(shared)
    again.authenticated(ALICE)
    assert again.peer == ALICE and shared.connections(ALICE) == 1


# -- commands in flight ----------------------------------------------------------


def test_reading_pauses_at_the_commands_in_flight_limit_and_resumes():
    shared, _ = limits(commands_in_flight=2)
    transport = StringTransport()
    session = server(shared, transport)
    session.authenticated(ALICE)
    session.dataReceived(b"".join(ask(tag, n=b"%d" % tag) for tag in range(1, 6)))
    assert [n for n, _ in session.pending] == [1, 2]  # the rest is held back
    assert transport.producerState == "paused"
    session.pending.pop(0)[1].callback({"n": 1})
    assert [n for n, _ in session.pending] == [2, 3]
    assert transport.producerState == "paused"
    for _ in range(2):
        session.pending.pop(0)[1].callback({"n": 0})
    assert [n for n, _ in session.pending] == [4, 5]
    assert transport.producerState == "paused"  # nothing held, but two in flight
    session.pending.pop(0)[1].callback({"n": 4})
    assert transport.producerState == "producing"
    session.answer_all()
    assert transport.producerState == "producing"
    assert sorted(int(box[b"_answer"]) for box in answers(transport)) == [1, 2, 3, 4, 5]
    assert session.guard is not None and session.guard.in_flight == 0
    assert not transport.disconnecting


def test_commands_answered_at_once_never_pause_reading():
    shared, _ = limits(commands_in_flight=1)
    transport = StringTransport()
    session = server(shared, transport)
    session.authenticated(ALICE)
    session.dataReceived(b"".join(ask(tag, b"Ping") for tag in range(100)))
    assert len(answers(transport)) == 100
    assert transport.producerState == "producing"


# -- bytes buffered --------------------------------------------------------------


def test_answers_piling_up_pause_reading_until_the_peer_takes_them():
    shared, clock = limits(buffered_bytes=1 << 20)
    socket = Socket()
    session = server(shared, socket)
    session.authenticated(ALICE)
    with capturedLogs() as events:
        while socket.producerState != "paused":
            session.dataReceived(ask(1, b"Ping"))
    assert logged(events, "bytes of answers it has not taken")
    waiting = unsent_bytes(socket)
    assert (1 << 19) < waiting < (1 << 19) + 1000  # half the limit
    # What arrives meanwhile (already read from the socket) is held, not answered.
    session.dataReceived(b"".join(ask(tag, b"Ping") for tag in range(10)))
    assert unsent_bytes(socket) == waiting
    clock.advance(5)
    assert socket.producerState == "paused"
    socket._tempDataLen = 1000  # the peer took its answers
    clock.advance(0.1)
    assert socket.producerState == "producing"
    assert unsent_bytes(socket) > 1000  # the held requests were answered
    assert not socket.disconnecting


def test_a_peer_that_takes_none_of_its_answers_is_dropped_at_the_idle_timeout():
    shared, clock = limits(buffered_bytes=1 << 20, idle_timeout=30)
    socket = Socket()
    session = server(shared, socket)
    session.authenticated(ALICE)
    while socket.producerState != "paused":
        session.dataReceived(ask(1, b"Ping"))
    with capturedLogs() as events:
        clock.advance(31)
    assert socket.disconnected  # aborted: its answers are of no use any more
    assert logged(events, "it took none of its answers for 3")


class Big(DFSCommand):
    commandName = b"Big"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = [(b"data", Bulk())]
    allowed_roles = ANY_ROLE


class BigServer(Server):
    @Big.responder
    def big(self) -> dict[str, bytes]:
        return {"data": b"x" * (2 << 20)}


def test_an_answer_past_the_buffer_limit_drops_a_peer_that_does_not_read():
    shared, _ = limits(buffered_bytes=1 << 20)
    socket = Socket()
    session = BigServer()
    session.apply_limits(shared)
    session.makeConnection(socket)
    session.authenticated(ALICE)
    with capturedLogs() as events:
        session.dataReceived(ask(1, b"Big"))
    assert socket.disconnected
    assert logged(events, "unsent to a peer not reading")


def test_a_partial_box_past_the_buffer_limit_drops_the_connection():
    shared, _ = limits(buffered_bytes=1 << 20)
    transport = StringTransport()
    session = server(shared, transport)
    session.authenticated(ALICE)
    with capturedLogs() as events:
        for index in range(20):  # 20 values of 64 KiB: 1.25 MiB, under MAX_BOX_BYTES
            session.dataReceived(b"\x00\x02k%c\xff\xff" % (65 + index) + b"v" * 0xFFFF)
    assert transport.disconnected
    assert logged(events, "received and not yet handled")


def test_held_commands_count_as_buffered():
    shared, _ = limits(commands_in_flight=1, buffered_bytes=1 << 20)
    transport = StringTransport()
    session = server(shared, transport)
    session.authenticated(ALICE)
    padding = b"p" * 60_000
    with capturedLogs() as events:
        for tag in range(40):  # 40 held requests of 60 KB each: 2.4 MB
            session.dataReceived(ask(tag, n=b"1", pad=padding))
            if transport.disconnected:
                break
    assert transport.disconnected
    assert 15 < tag < 20
    assert logged(events, "received and not yet handled")


def test_a_box_of_too_many_keys_drops_the_connection():
    shared, _ = limits()
    transport = StringTransport()
    session = server(shared, transport)
    session.authenticated(ALICE)
    session.dataReceived(b"".join(b"\x00\x04%04d\x00\x00" % i for i in range(2000)))
    assert transport.disconnected


# -- wiring ------------------------------------------------------------------------


def test_the_limited_factory_puts_the_limits_on_every_session():
    shared, clock = limits(handshake_timeout=1)
    factory = Factory.forProtocol(Server)
    limited = LimitedFactory(factory, shared)
    session = limited.buildProtocol(None)
    assert isinstance(session, Server) and session.guard is not None
    transport = StringTransport()
    session.makeConnection(transport)
    clock.advance(1)
    assert transport.disconnected


def test_a_dialled_session_has_no_limits():
    session = PeerSession(ALICE)
    transport = StringTransport()
    session.makeConnection(transport)
    session.authenticated(SERVER)
    session.dataReceived(ask(1, b"Ping"))
    assert session.guard is None
    assert answers(transport)[0][b"name"] == b"alice"
    assert Ping  # the command answered above


def test_an_answer_to_nothing_closes_the_connection_with_a_reason():
    for stray in (
        amp.AmpBox(_answer=b"7", name=b"x"),
        amp.AmpBox(_error=b"7", _error_code=b"X", _error_description=b"no"),
        amp.AmpBox(_error=b"7"),
    ):
        transport = StringTransport()
        session = Server()
        session.makeConnection(transport)
        session.authenticated(ALICE)
        with capturedLogs() as events:
            session.dataReceived(stray.serialize())
        assert transport.disconnecting
        assert logged(events, "malformed AMP box")
        assert not logged(events, "Traceback") and not logged(events, "Unhandled")
