"""PeerSession over an in-memory connection: role checks, bad input, Ping."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient

from dfs.metaserver.registry import DataserverRegistry
from dfs.metaserver.service import Metaserver, MetaserverSession
from dfs.protocol.commands import Heartbeat, ListDataservers, Ping, RegisterDataserver
from dfs.protocol.errors import InvalidArgument, PermissionDenied, UnknownDataserver
from dfs.protocol.session import READ_SIZE, PeerSession
from dfs.security.identity import Identity, Role

META = Identity(Role.METASERVER, "meta1")


class FakeConfig:
    dataserver_dead_after = 5.0


@pytest.fixture
def connect(make_handlers):
    def connect(caller: Identity):
        return _connect(caller, make_handlers)

    return connect


def _connect(caller: Identity, make_handlers):
    clock = Clock()
    registry = DataserverRegistry(dead_after=5.0)
    metaserver = Metaserver(
        identity=META,
        config=FakeConfig(),  # type: ignore[arg-type]
        clock=clock,
        registry=registry,
        handlers=make_handlers(clock, registry=registry),
    )
    client, server, pump = connectedServerAndClient(
        lambda: MetaserverSession(metaserver), lambda: PeerSession(caller)
    )
    server.authenticated(caller)
    client.authenticated(META)
    return client, metaserver, pump, clock


def result_of(deferred, pump):
    # Attach before pumping: AMP drops the connection when an error answer
    # arrives at a Deferred that has no errback yet.
    results = []
    deferred.addBoth(results.append)
    pump.flush()
    assert results, "no answer"
    return results[0]


def register(client, name="ds1", **overrides):
    arguments = {
        "name": name,
        "address": "127.0.0.1:7200",
        "capacity": 100,
        "free": 90,
        "used": 10,
        "chunks": 0,
    }
    arguments.update(overrides)
    return client.callRemote(RegisterDataserver, **arguments)


def test_ping_tells_both_identities(connect):
    client, _, pump, _ = connect(Identity(Role.CLIENT, "alice"))
    answer = result_of(client.callRemote(Ping), pump)
    assert answer["role"] == "metaserver"
    assert answer["name"] == "meta1"
    assert (answer["peer_role"], answer["peer_name"]) == ("client", "alice")


@pytest.mark.parametrize("role", [Role.CLIENT, Role.ADMIN, Role.METASERVER])
def test_only_a_dataserver_may_register(role, connect):
    client, metaserver, pump, _ = connect(Identity(role, "ds1"))
    failure = result_of(register(client), pump)
    assert failure.check(PermissionDenied)
    assert "RegisterDataserver is not allowed" in str(failure.value)
    assert metaserver.registry.records() == []


def test_dataserver_cannot_register_under_another_name(connect):
    client, metaserver, pump, _ = connect(Identity(Role.DATASERVER, "ds1"))
    failure = result_of(register(client, name="ds2"), pump)
    assert failure.check(PermissionDenied)
    assert metaserver.registry.records() == []


def test_registration_then_listing_then_death(connect):
    client, metaserver, pump, clock = connect(Identity(Role.DATASERVER, "ds1"))
    answer = result_of(register(client), pump)
    assert answer == {"metaserver": "meta1", "dead_after": 5.0}
    clock.advance(6)
    metaserver.expire_dataservers()
    failure = result_of(
        client.callRemote(Heartbeat, name="ds1", capacity=100, free=90, used=10, chunks=0), pump
    )
    assert failure.check(UnknownDataserver)


def test_listing_is_for_people_and_metaservers(connect):
    ds, _, pump, _ = connect(Identity(Role.DATASERVER, "ds1"))
    result_of(register(ds), pump)
    failure = result_of(ds.callRemote(ListDataservers), pump)
    assert failure.check(PermissionDenied)


@pytest.mark.parametrize(
    "overrides",
    [{"address": "no port here"}, {"free": -1}, {"capacity": -5}],
)
def test_bad_registration_values_get_invalid_argument(overrides, connect):
    client, metaserver, pump, _ = connect(Identity(Role.DATASERVER, "ds1"))
    failure = result_of(register(client, **overrides), pump)
    assert failure.check(InvalidArgument)
    assert metaserver.registry.records() == []


def test_undecodable_arguments_get_invalid_argument_and_the_connection_stays(connect):
    client, _, pump, _ = connect(Identity(Role.DATASERVER, "ds1"))
    box = amp.AmpBox(
        name=b"ds1", address=b"127.0.0.1:1", capacity=b"lots", free=b"1", used=b"0", chunks=b"0"
    )
    failure = result_of(client.callRemote(_Raw, box=box), pump)
    assert failure.check(InvalidArgument)
    assert "capacity" in str(failure.value) or "invalid literal" in str(failure.value)
    assert result_of(client.callRemote(Ping), pump)["name"] == "meta1"


def test_unknown_command_is_refused_and_the_connection_stays(connect):
    client, _, pump, _ = connect(Identity(Role.CLIENT, "alice"))
    failure = result_of(client.callRemote(_Unknown), pump)
    assert failure.check(amp.UnhandledCommand)
    assert result_of(client.callRemote(Ping), pump)["name"] == "meta1"


def test_oversized_frame_closes_only_that_connection(connect):
    client, _, pump, _ = connect(Identity(Role.CLIENT, "alice"))
    client.transport.write(b"\xff\xff" + b"x" * 0xFFFF)
    pump.flush()
    assert pump.serverIO.disconnecting


class _Unknown(amp.Command):
    commandName = b"NoSuchCommand"
    arguments = []
    response = []


class _Raw(amp.Command):
    """Sends RegisterDataserver with a raw, undecodable box."""

    commandName = b"RegisterDataserver"
    errors = {InvalidArgument: InvalidArgument.code}

    @classmethod
    def makeArguments(cls, objects, proto):
        return objects["box"]


def test_a_box_beyond_the_size_limit_closes_the_connection(connect):
    from dfs.protocol.session import MAX_BOX_BYTES

    client, metaserver, pump, _ = connect(Identity(Role.DATASERVER, "ds1"))
    piece = b"\x00\x01k\xff\xff" + b"v" * 0xFFFF
    for _ in range(MAX_BOX_BYTES // 0xFFFF + 2):
        client.transport.write(piece)
    pump.flush()
    assert pump.serverIO.disconnecting
    assert metaserver.registry.records() == []


class SocketBelow:
    """The TCP transport under a TLS layer, as far as a session touches it."""

    def __init__(self) -> None:
        self.nodelay = False
        self.bufferSize = 65536

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled


def test_a_session_sets_nodelay_and_larger_reads_on_the_socket_under_tls():
    socket = SocketBelow()
    tls = StringTransport()
    tls.transport = socket  # type: ignore[attr-defined]
    PeerSession(META).makeConnection(tls)
    assert socket.nodelay
    assert socket.bufferSize == READ_SIZE > 65536
