"""Every connection states its protocol version first (Hello): same major accepted,
another refused naming both versions on both sides, a command before Hello refused.

Sessions talk over real TLS in memory (TLSMemoryBIOFactory over iosim), so the
version exchange starts where it does in production: at the end of the handshake.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient

from dfs.client.leader import MetaserverChannel
from dfs.protocol.commands import Ping
from dfs.protocol.errors import InvalidArgument
from dfs.protocol.session import PeerSession
from dfs.protocol.version import (
    PROTOCOL_VERSION,
    IncompatibleProtocol,
    ProtocolVersion,
)
from dfs.security.identity import Identity, Role


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def warnings(events: list[dict]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level").name == "warn"]


def session(*, version: ProtocolVersion = PROTOCOL_VERSION, dialled: bool) -> PeerSession:
    identity = Identity(Role.CLIENT, "alice") if dialled else Identity(Role.METASERVER, "meta1")
    peer = PeerSession(identity)
    peer.dialled = dialled
    peer.protocol_version = version
    return peer


def outcome(deferred: Deferred, wire: Any):
    results: list = []
    deferred.addBoth(results.append)
    if hasattr(wire, "settle"):  # over TLS: the clock turns too
        wire.settle()
    else:
        wire.flush()
    assert results, "no outcome"
    return results[0]


def test_versions_parse_and_talk_when_the_major_is_the_same():
    assert ProtocolVersion.parse("1.0") == ProtocolVersion(1, 0)
    assert str(ProtocolVersion(2, 13)) == "2.13"
    assert ProtocolVersion(1, 0).compatible_with(ProtocolVersion(1, 7))
    assert not ProtocolVersion(1, 0).compatible_with(ProtocolVersion(2, 0))
    for text in ["", "1", "1.0.0", "01.0", "v1.0", "1.-1", "9999999.0"]:
        with pytest.raises(ValueError, match="not a DFS protocol version"):
            ProtocolVersion.parse(text)


def test_the_same_major_is_accepted_and_the_first_request_goes_with_the_hello(tls_connect, events):
    server = session(dialled=False, version=ProtocolVersion(PROTOCOL_VERSION.major, 3))
    client = session(dialled=True)
    pump = tls_connect(server, client)
    # Asked at once, before the handshake: it travels right behind the Hello.
    ping = client.callRemote(Ping)
    assert outcome(client.introduced(), pump) is None
    answer = outcome(ping, pump)
    assert answer["name"] == "meta1" and answer["peer_name"] == "alice"
    assert client.is_open and server.is_open
    assert warnings(events) == []
    # The dialling side keeps the version its peer stated.
    assert client.peer_protocol == ProtocolVersion(PROTOCOL_VERSION.major, 3)


@pytest.mark.parametrize("who", ["client", "server"])
def test_another_major_is_refused_naming_both_versions_on_both_sides(tls_connect, events, who):
    newer = ProtocolVersion(PROTOCOL_VERSION.major + 1, 0)
    server = session(dialled=False, version=newer if who == "server" else PROTOCOL_VERSION)
    client = session(dialled=True, version=newer if who == "client" else PROTOCOL_VERSION)
    pump = tls_connect(server, client)
    failure = outcome(client.callRemote(Ping), pump)
    # The caller gets one line naming both versions, not a lost connection.
    assert failure.check(IncompatibleProtocol)
    server_v, client_v = str(server.protocol_version), str(client.protocol_version)
    assert str(failure.value) == (
        f"the metaserver at {client.peer_address} speaks DFS protocol {server_v}, "
        f"this client {client_v}"
    )
    assert outcome(client.introduced(), pump).check(IncompatibleProtocol)
    assert not client.is_open and not server.is_open
    refusals = [line for line in warnings(events) if line.startswith("refused connection")]
    # The server refused as well: its log names both versions too.
    assert refusals == [
        f"refused connection: client:alice at {server.peer_address} speaks DFS "
        f"protocol {client_v}, this metaserver {server_v}"
    ]


def test_a_command_before_hello_is_refused_and_the_connection_closed(tls_connect, events):
    server = session(dialled=False)
    client = session(dialled=False)  # states no version: dials like an old client
    pump = tls_connect(server, client)
    failure = outcome(client.callRemote(Ping), pump)
    assert failure.check(InvalidArgument)
    assert "Ping before Hello" in str(failure.value)
    assert f"speaks {PROTOCOL_VERSION}" in str(failure.value)
    assert not server.is_open
    assert any("refused connection from client:alice" in line for line in warnings(events))


def test_a_server_that_knows_no_hello_is_refused_by_the_dialling_side(events):
    client = PeerSession(Identity(Role.CLIENT, "alice"))
    client.dialled = True
    _, _, pump = connectedServerAndClient(amp.AMP, lambda: client)
    failure = outcome(client.introduced(), pump)
    assert failure.check(IncompatibleProtocol)
    assert "states no DFS protocol version" in str(failure.value)
    assert not client.is_open


def test_the_client_channel_reports_an_incompatible_metaserver_at_once():
    dials: list[str] = []

    async def connect(address: str):
        dials.append(address)
        return await fail(IncompatibleProtocol("the metaserver speaks DFS protocol 2.0"))

    channel = MetaserverChannel(Clock(), ["10.0.0.1:7000", "10.0.0.2:7000"], connect, 60.0)
    result: list = []
    Deferred.fromCoroutine(channel.call(Ping)).addBoth(result.append)
    assert result and result[0].check(IncompatibleProtocol), result
    assert dials == ["10.0.0.1:7000"]  # no retry loop, no other metaserver asked


class RawHello(amp.Command):
    """Hello as a hostile or broken peer might send it: any bytes, any keys."""

    commandName = b"Hello"
    arguments: ClassVar[list] = [
        (b"protocol", amp.String(optional=True)),
        (b"software", amp.String(optional=True)),
        (b"extra", amp.String(optional=True)),
    ]
    response: ClassVar[list] = []
    errors: ClassVar[dict] = {InvalidArgument: InvalidArgument.code}


@pytest.mark.parametrize(
    "arguments",
    [
        {"software": b"0.1.0"},
        {"protocol": b"1.0"},
        {"protocol": b"banana", "software": b"0.1.0"},
        {"protocol": b"", "software": b"0.1.0"},
        {"protocol": b"1", "software": b"0.1.0"},
        {"protocol": b"1.0.0", "software": b"0.1.0"},
        {"protocol": b"-1.0", "software": b"0.1.0"},
        {"protocol": b"\xff\xfe.\x00", "software": b"0.1.0"},
        {"protocol": b"9" * 60000 + b".0", "software": b"0.1.0"},
        {"protocol": b"1.0", "software": b"\xff" * 100},
    ],
    ids=[
        "no-protocol",
        "no-software",
        "word",
        "empty",
        "major-only",
        "three-parts",
        "negative",
        "not-utf8",
        "huge",
        "software-not-utf8",
    ],
)
def test_a_malformed_hello_is_refused_in_one_line_without_a_traceback(
    tls_connect, events, arguments
):
    server = session(dialled=False)
    client = session(dialled=False)  # sends what the test says, not a Hello of its own
    wire = tls_connect(server, client)
    failure = outcome(client.callRemote(RawHello, **arguments), wire)
    assert failure.check(InvalidArgument), failure
    assert "malformed Hello" in str(failure.value)
    assert not server.is_open
    refusals = [line for line in warnings(events) if "a malformed Hello" in line]
    assert len(refusals) == 1 and "\n" not in refusals[0], refusals
    assert len(refusals[0]) < 400, refusals[0]
    assert not [e for e in events if e.get("log_failure") is not None or e.get("isError")]
