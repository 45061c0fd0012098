"""The connection limits of security_config.json on real servers: a connection that
never starts TLS, one connection too many for an identity, an idle connection (and
the client library dialling again after it was closed), a peer that never reads its
answers."""

from __future__ import annotations

import os
import socket
import ssl

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.protocols import amp

from dfs.client.client import DFSClient
from dfs.client.connection import ClientCredentials, connect_server
from dfs.config import Address, load_client_config
from dfs.localcluster import LocalCluster
from dfs.protocol.commands import Ping
from dfs.protocol.version import PROTOCOL_VERSION


class Silent(Protocol):
    """A TCP peer that never says a word, and notes when it is cut off."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: object) -> None:
        self.lost.callback(None)


def small_cluster(make_cluster, **limits: object) -> LocalCluster:
    return make_cluster(
        dataservers=1,
        replication={"default_replication": 1, "min_replication": 1},
        security_options={"limits": limits},
    )


@pytest_twisted.ensureDeferred
async def test_a_connection_that_never_starts_tls_is_closed_at_the_handshake_timeout(
    make_cluster, poll, log_contains
):
    cluster = small_cluster(make_cluster, handshake_timeout=1)
    for node in (cluster.metaservers[0], cluster.dataservers[0]):
        address = Address.parse(node.address)
        silent = Silent()
        await connectProtocol(TCP4ClientEndpoint(reactor, address.host, address.port), silent)
        await silent.lost.addTimeout(15, reactor)
        await poll(
            lambda node=node: (
                log_contains(node.logfile, "refused connection from 127.0.0.1:")
                and log_contains(node.logfile, "no TLS handshake within 1 s")
            ),
            what=f"{node.name} logs the handshake timeout",
        )


@pytest_twisted.ensureDeferred
async def test_one_connection_past_the_limit_per_identity_is_refused(
    make_cluster, poll, log_contains
):
    cluster = small_cluster(make_cluster, connections_per_identity=3)
    credentials = ClientCredentials.from_config(load_client_config(cluster.client_config))
    address = Address.parse(cluster.metaservers[0].address)
    sessions = [await connect_server(reactor, address, credentials) for _ in range(3)]
    try:
        await connect_server(reactor, address, credentials, timeout=10)
    except Exception as error:
        refusal: Exception | None = error
    else:
        refusal = None
    assert refusal is not None, "a fourth connection of admin:admin was accepted"
    await poll(
        lambda: log_contains(
            cluster.metaservers[0].logfile, "admin:admin already has 3 connections open (limit 3)"
        ),
        what="the refusal is logged",
    )
    # The three still work; closing one makes room for a new one.
    for session in sessions:
        assert (await session.callRemote(Ping))["name"] == "meta1"
    sessions.pop().transport.loseConnection()

    async def room() -> bool:
        try:
            sessions.append(await connect_server(reactor, address, credentials))
        except Exception:
            return False
        return True

    await poll(room, what="a connection is accepted again once one closed")
    for session in sessions:
        session.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_an_idle_connection_is_closed_and_the_client_dials_again(
    make_cluster, poll, log_contains
):
    cluster = small_cluster(make_cluster, idle_timeout=2)
    client = await DFSClient.connect(reactor, load_client_config(cluster.client_config))
    # Larger than the window of reads a reader keeps in flight (8 requests of 512 KiB).
    data = os.urandom(6 * 1024 * 1024)
    try:
        await client.write_file("/idle.bin", data)
        reader = await client.open("/idle.bin")
        assert await reader.read(5) == data[:5]
        meta, dataserver = cluster.metaservers[0], cluster.dataservers[0]
        await poll(
            lambda: (
                log_contains(meta.logfile, "closed connection with admin:admin", "nothing")
                and log_contains(
                    dataserver.logfile, "closed connection with admin:admin", "nothing"
                )
            ),
            what="both servers close the client's idle connections",
        )
        # The dataservers' heartbeats keep their links to the metaserver open.
        assert not log_contains(meta.logfile, "closed connection with dataserver:")
        # Every call after that dials again, on the metaserver and on the dataserver,
        # even a reader that paused in the middle of a chunk.
        rest = b""
        while piece := await reader.read(1024 * 1024):
            rest += piece
        reader.close()
        assert rest == data[5:]
        assert (await client.stat("/idle.bin")).length == len(data)
        assert await client.read_file("/idle.bin") == data
    finally:
        client.close()


def test_a_peer_that_never_reads_its_answers_is_dropped(make_cluster, log_contains):
    cluster = small_cluster(make_cluster, buffered_bytes=1024 * 1024, idle_timeout=2)
    config = load_client_config(cluster.client_config)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(config.tls.ca)
    context.load_cert_chain(config.tls.certificate, config.tls.key)
    address = Address.parse(cluster.metaservers[0].address)
    raw = socket.create_connection((address.host, address.port), timeout=30)
    pings = b"".join(
        amp.AmpBox(_command=b"Ping", _ask=b"%d" % tag).serialize() for tag in range(1000)
    )
    sent = 0
    with context.wrap_socket(raw, server_hostname=address.host) as tls:
        # Every connection states its protocol version first.
        version = str(PROTOCOL_VERSION).encode()
        tls.sendall(
            amp.AmpBox(_command=b"Hello", _ask=b"0", protocol=version, software=b"raw").serialize()
        )
        # Ask and ask, and never read: the answers pile up in the kernel's buffers,
        # then in the server's; it stops reading, and drops the peer once it has
        # taken nothing for idle_timeout.
        with pytest.raises(OSError):
            for _ in range(2000):
                tls.sendall(pings)
                sent += 1000
    meta = cluster.metaservers[0]
    assert log_contains(meta.logfile, "paused: ", "bytes of answers it has not taken")
    assert log_contains(meta.logfile, "it took none of its answers for 2 s"), (
        f"no refusal logged after {sent} requests"
    )
