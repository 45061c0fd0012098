"""Connections over real TLS in memory (TLSMemoryBIOFactory over iosim): a CA with a
server and a client certificate, and a way to connect two protocols through them, so
that what starts at the end of the handshake starts there as in production."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test.iosim import IOPump, connectedServerAndClient

from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Role
from dfs.security.tls import NodeCredentials


@attrs.frozen
class Pki:
    #: meta1's, for the name localhost
    server: NodeCredentials
    #: alice's
    client: NodeCredentials


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder: Path = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(folder / "ca")
    issued = [
        ca.issue(Role.METASERVER, "meta1", ["localhost"], out_dir=folder),
        ca.issue(Role.CLIENT, "alice", out_dir=folder),
    ]
    server, client = (
        NodeCredentials.load(item.certificate_path, item.key_path, ca.certificate_path)
        for item in issued
    )
    return Pki(server, client)


@attrs.define
class TLSWire:
    pump: IOPump
    #: TLS gathers small writes and sends them on the next turn of this clock
    clock: Clock
    server_tls: TLSMemoryBIOProtocol
    client_tls: TLSMemoryBIOProtocol

    def settle(self) -> None:
        for _ in range(10):
            self.clock.advance(0)
            self.pump.flush()


@pytest.fixture(scope="module")
def tls_connect(pki: Pki) -> Callable[[IProtocol, IProtocol], TLSWire]:
    """``connect(server, client)``: ``client`` dials ``server`` over TLS in memory
    (nothing moves before ``settle``)."""

    def connect(server: IProtocol, client: IProtocol) -> TLSWire:
        clock = Clock()
        server_side = TLSMemoryBIOFactory(
            pki.server.server_options(), False, Factory.forProtocol(lambda: server), clock
        )
        client_side = TLSMemoryBIOFactory(
            pki.client.client_options("localhost"),
            True,
            Factory.forProtocol(lambda: client),
            clock,
        )
        client_tls, server_tls, pump = connectedServerAndClient(
            lambda: server_side.buildProtocol(None), lambda: client_side.buildProtocol(None)
        )
        return TLSWire(pump, clock, server_tls, client_tls)

    return connect
