"""PeerSession's own box parser, dispatch and calls, against Twisted's AMP: the same
boxes from the same bytes however they are split, the same bytes on the wire, the
same answers and errors, and the same refusals."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols import amp
from twisted.python.failure import Failure

from dfs.protocol.commands import ANY_ROLE, DFSCommand
from dfs.protocol.errors import FileNotFound, InvalidArgument, NotLeader
from dfs.protocol.session import MAX_BOX_BYTES, MAX_BOX_KEYS, PeerSession, serialize_box
from dfs.security.identity import Identity, Role

META = Identity(Role.METASERVER, "meta1")
ALICE = Identity(Role.CLIENT, "alice")

keys = st.binary(min_size=1, max_size=255)
# Long values are made, not drawn byte by byte: a value near the limit of 65,535.
values = st.binary(max_size=300) | st.builds(
    lambda size, fill: fill * size, st.integers(65000, 65535), st.sampled_from([b"\x00", b"v"])
)
boxes = st.dictionaries(keys, values, min_size=1, max_size=8).map(amp.AmpBox)


class Recorder(PeerSession):
    """A session that keeps the boxes it receives instead of dispatching them."""

    def __init__(self) -> None:
        super().__init__(META)
        self.boxes: list[dict[bytes, bytes]] = []

    def _box_received(self, box: amp.AmpBox) -> None:
        assert type(box) is amp.AmpBox
        self.boxes.append(dict(box))


def recorder() -> tuple[Recorder, StringTransport]:
    session, transport = Recorder(), StringTransport()
    session.makeConnection(transport)
    session.authenticated(ALICE)
    return session, transport


def logged(events: list[dict[str, Any]], fragment: str) -> bool:
    return any(fragment in formatEvent(event) for event in events)


# -- writing and cutting boxes ------------------------------------------------------


@given(boxes)
def test_a_box_is_written_byte_for_byte_as_twisted_writes_it(box):
    assert serialize_box(box) == box.serialize()


def test_a_box_twisted_refuses_to_write_is_refused_the_same_way():
    for bad in ({b"k": "text"}, {b"k" * 256: b"v"}, {b"k": b"v" * 65536}):
        with pytest.raises((TypeError, amp.TooLong)):
            serialize_box(amp.AmpBox(bad))


@settings(max_examples=40, deadline=None)
@given(st.lists(boxes, min_size=1, max_size=4), st.data())
def test_boxes_cut_at_any_point_arrive_whole_and_in_order(sent, data):
    wire = b"".join(box.serialize() for box in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    session, transport = recorder()
    start = 0
    for cut in [*cuts, len(wire)]:
        session.dataReceived(wire[start:cut])
        start = cut
    assert session.boxes == [dict(box) for box in sent]
    assert session.boxes == [dict(box) for box in amp.parseString(wire)]
    assert not transport.disconnecting


def test_boxes_split_at_every_offset_arrive_whole():
    wire = b"".join(
        amp.AmpBox(_command=b"Ping", _ask=b"%x" % tag, pad=b"p" * tag).serialize()
        for tag in range(1, 4)
    )
    expected = [dict(box) for box in amp.parseString(wire)]
    for offset in range(len(wire) + 1):
        session, _ = recorder()
        session.dataReceived(wire[:offset])
        session.dataReceived(wire[offset:])
        assert session.boxes == expected, offset
    session, _ = recorder()
    for index in range(len(wire)):
        session.dataReceived(wire[index : index + 1])
    assert session.boxes == expected


def test_a_key_longer_than_255_bytes_is_a_malformed_frame():
    session, transport = recorder()
    with capturedLogs() as events:
        session.dataReceived(b"\x00\x01k\x00\x01v\x01\x00")
    assert transport.disconnecting and not session.boxes
    assert logged(events, "malformed AMP frame (a key of 256 bytes)")


def test_too_many_keys_over_several_reads_drop_the_connection():
    session, transport = recorder()
    pairs = b"".join(b"\x00\x04%04d\x00\x00" % index for index in range(MAX_BOX_KEYS + 1))
    with capturedLogs() as events:
        for start in range(0, len(pairs), 1000):
            session.dataReceived(pairs[start : start + 1000])
    assert transport.disconnected and not session.boxes
    assert logged(events, f"a box of more than {MAX_BOX_KEYS} keys")


def test_exactly_the_most_keys_is_a_box():
    session, transport = recorder()
    pairs = b"".join(b"\x00\x04%04d\x00\x00" % index for index in range(MAX_BOX_KEYS))
    session.dataReceived(pairs + b"\x00\x00")
    assert len(session.boxes) == 1 and len(session.boxes[0]) == MAX_BOX_KEYS
    assert not transport.disconnected


def test_a_box_beyond_the_size_limit_drops_the_connection_and_what_follows():
    session, transport = recorder()
    value = b"v" * 65535
    pieces = MAX_BOX_BYTES // (65535 + 8) + 1
    with capturedLogs() as events:
        for index in range(pieces):
            session.dataReceived(b"\x00\x04k%03d\xff\xff" % index + value)
        session.dataReceived(b"\x00\x00" + amp.AmpBox(_command=b"Ping").serialize())
    assert transport.disconnected and not session.boxes
    assert logged(events, f"a box of more than {MAX_BOX_BYTES} bytes")


def test_an_empty_box_is_malformed():
    session, transport = PeerSession(META), StringTransport()
    session.makeConnection(transport)
    with capturedLogs() as events:
        session.dataReceived(b"\x00\x00")
    assert transport.disconnecting
    assert logged(events, "malformed AMP box (NoEmptyBoxes)")


# -- answering and calling ---------------------------------------------------------


class Lookup(DFSCommand):
    commandName = b"Lookup"
    arguments: ClassVar[list] = [(b"path", amp.Unicode()), (b"depth", amp.Integer(optional=True))]
    response: ClassVar[list] = [(b"size", amp.Integer())]
    allowed_roles = ANY_ROLE


class Server(PeerSession):
    def __init__(self) -> None:
        super().__init__(META)
        self.later: Deferred[dict[str, int]] | None = None
        self.told: list[str] = []

    @Lookup.responder
    def lookup(self, path: str, depth: int | None = None) -> Any:
        self.told.append(path)
        if path == "/missing":
            raise FileNotFound(path)
        if path == "/leader":
            raise NotLeader("10.0.0.2:7000")
        if path == "/bug":
            raise RuntimeError("a bug")
        if path == "/later":
            self.later = Deferred()
            return self.later
        if path == "/fired":
            return succeed({"size": 3})
        if path == "/coroutine":
            return self.answer_later()
        if path == "/bad answer":
            return {"size": "not a number"}
        return {"size": len(path)}

    async def answer_later(self) -> dict[str, int]:
        return {"size": 9}


def server() -> tuple[Server, StringTransport]:
    session, transport = Server(), StringTransport()
    session.makeConnection(transport)
    session.authenticated(ALICE)
    return session, transport


def ask(path: str, tag: bytes = b"1") -> bytes:
    return amp.AmpBox(_command=b"Lookup", _ask=tag, path=path.encode()).serialize()


def answer_of(transport: StringTransport) -> dict[bytes, bytes]:
    (box,) = amp.parseString(transport.value())
    transport.clear()
    return dict(box)


def test_a_plain_answer_goes_out_at_once():
    session, transport = server()
    session.dataReceived(ask("/abc", b"7"))
    assert answer_of(transport) == {b"_answer": b"7", b"size": b"4"}


@pytest.mark.parametrize("path", ["/fired", "/coroutine"])
def test_a_fired_deferred_or_a_coroutine_is_answered(path):
    session, transport = server()
    session.dataReceived(ask(path))
    assert answer_of(transport)[b"size"] in (b"3", b"9")


def test_a_deferred_answer_goes_out_when_it_fires():
    session, transport = server()
    session.dataReceived(ask("/later", b"2"))
    assert transport.value() == b""
    assert session.later is not None
    session.later.callback({"size": 5})
    assert answer_of(transport) == {b"_answer": b"2", b"size": b"5"}


def test_a_declared_error_answers_with_its_code_and_the_connection_stays():
    session, transport = server()
    session.dataReceived(ask("/missing", b"3"))
    assert answer_of(transport) == {
        b"_error": b"3",
        b"_error_code": FileNotFound.code,
        b"_error_description": b"/missing",
    }
    assert not transport.disconnecting


def test_a_later_failure_answers_with_its_code():
    session, transport = server()
    session.dataReceived(ask("/later"))
    assert session.later is not None
    session.later.errback(FileNotFound("/later"))
    assert answer_of(transport)[b"_error_code"] == FileNotFound.code


def test_a_bug_answers_unknown_error_and_closes_the_connection():
    session, transport = server()
    with capturedLogs() as events:
        session.dataReceived(ask("/bug"))
    assert answer_of(transport)[b"_error_code"] == amp.UNKNOWN_ERROR_CODE
    assert transport.disconnecting
    assert logged(events, "while receiving response to command")


def test_an_answer_that_cannot_be_written_is_an_unknown_error():
    session, transport = server()
    with capturedLogs():
        session.dataReceived(ask("/bad answer"))
    assert answer_of(transport)[b"_error_code"] == amp.UNKNOWN_ERROR_CODE


def test_bad_arguments_answer_invalid_argument():
    session, transport = server()
    with capturedLogs() as events:
        session.dataReceived(amp.AmpBox(_command=b"Lookup", _ask=b"1").serialize())
    assert answer_of(transport)[b"_error_code"] == InvalidArgument.code
    assert logged(events, "bad arguments")
    assert not transport.disconnecting


def test_an_unknown_command_answers_unhandled():
    session, transport = server()
    with capturedLogs():
        session.dataReceived(amp.AmpBox(_command=b"Nope", _ask=b"1").serialize())
    assert answer_of(transport)[b"_error_code"] == amp.UNHANDLED_ERROR_CODE
    assert not transport.disconnecting


def test_a_failing_command_that_wants_no_answer_is_logged_not_answered():
    session, transport = server()
    with capturedLogs() as events:
        session.dataReceived(amp.AmpBox(_command=b"Lookup", path=b"/bug").serialize())
    assert transport.value() == b""
    assert logged(events, "from client:alice failed")


def pair(server_session: amp.AMP, client_session: amp.AMP) -> Any:
    to_server, to_client = StringTransport(), StringTransport()
    server_session.makeConnection(to_client)
    client_session.makeConnection(to_server)

    def pump() -> None:
        while to_server.value() or to_client.value():
            up, down = to_server.value(), to_client.value()
            to_server.clear()
            to_client.clear()
            server_session.dataReceived(up)
            client_session.dataReceived(down)

    return pump


def connected() -> tuple[Server, PeerSession, Any]:
    session, client = Server(), PeerSession(ALICE)
    pump = pair(session, client)
    session.authenticated(ALICE)
    client.authenticated(META)
    return session, client, pump


def outcome(deferred: Deferred[Any], pump: Any) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    pump()
    assert results, "no answer"
    return results[0]


def test_a_call_gets_the_converted_answer():
    _, client, pump = connected()
    assert outcome(client.callRemote(Lookup, path="/abcd", depth=2), pump) == {"size": 5}


@pytest.mark.parametrize(("path", "error"), [("/missing", FileNotFound), ("/leader", NotLeader)])
def test_a_call_fails_with_the_declared_class(path, error):
    _, client, pump = connected()
    result = outcome(client.callRemote(Lookup, path=path), pump)
    assert isinstance(result, Failure) and result.check(error)
    if error is NotLeader:
        assert result.value.leader == "10.0.0.2:7000"


def test_a_call_answered_with_an_unknown_code_fails_with_unknown_remote_error():
    _, client, pump = connected()
    with capturedLogs():
        result = outcome(client.callRemote(Lookup, path="/bug"), pump)
    assert result.check(amp.UnknownRemoteError)


def test_a_call_missing_an_argument_fails_and_one_with_a_stray_argument_raises():
    _, client, _ = connected()
    result = outcome(client.callRemote(Lookup), lambda: None)
    assert result.check(amp.InvalidSignature)
    with pytest.raises(amp.InvalidSignature):
        client.callRemote(Lookup, path="/", colour="red")


def test_calls_after_the_connection_is_lost_fail_and_pending_ones_fail():
    _, client, pump = connected()
    pending = client.callRemote(Lookup, path="/later")
    pump()
    client.connectionLost(Failure(ConnectionError("gone")))
    assert outcome(pending, pump).check(ConnectionError)
    assert outcome(client.callRemote(Lookup, path="/"), pump).check(ConnectionError)


def test_an_error_no_callback_takes_drops_the_connection_as_amp_does():
    _, client, pump = connected()
    client.callRemote(Lookup, path="/missing")
    with capturedLogs() as events:
        pump()
    assert client.transport.disconnecting  # type: ignore[attr-defined]
    assert logged(events, "Dropping connection")


def test_requests_are_written_as_twisted_writes_them():
    ours, theirs = PeerSession(ALICE), amp.AMP()
    wires = []
    for session in (ours, theirs):
        transport = StringTransport()
        session.makeConnection(transport)
        session.callRemote(Lookup, path="/a/b", depth=3)
        session.callRemote(Lookup, path="/c")
        wires.append(transport.value())
    assert wires[0] == wires[1]


def test_a_plain_twisted_peer_calls_a_session_and_is_called_by_one():
    session, plain = Server(), amp.AMP()
    pump = pair(session, plain)
    session.authenticated(ALICE)
    assert outcome(plain.callRemote(Lookup, path="/xyz"), pump) == {"size": 4}
    assert outcome(plain.callRemote(Lookup, path="/missing"), pump).check(FileNotFound)

    class PlainServer(amp.AMP):
        @Lookup.responder
        def lookup(self, path: str, depth: int | None = None) -> dict[str, int]:
            if path == "/missing":
                raise FileNotFound(path)
            return {"size": 2 * len(path)}

    client = PeerSession(ALICE)
    pump = pair(PlainServer(), client)
    assert outcome(client.callRemote(Lookup, path="/xyz"), pump) == {"size": 8}
    assert outcome(client.callRemote(Lookup, path="/missing"), pump).check(FileNotFound)
