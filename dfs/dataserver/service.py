"""The dataserver daemon: its AMP listener, and its links to every metaserver.

Each :class:`MetaserverLink` keeps one connection to one metaserver (reconnecting
with backoff), registers the dataserver and then heartbeats on the configured
interval, registering again whenever the metaserver no longer knows it.
"""

from __future__ import annotations

import time
from typing import Any, cast

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger

from dfs import __version__
from dfs.config import Address, ConfigError, DataserverConfig
from dfs.dataserver.space import SpaceMeasure, measure_space
from dfs.httpstatus import status_site
from dfs.node import add_all, check_name, http_listener, load_credentials, tls_listener
from dfs.protocol.commands import Heartbeat, RegisterDataserver
from dfs.protocol.errors import UnknownDataserver
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity, Role
from dfs.security.tls import NodeCredentials


@attrs.define
class Dataserver:
    """The dataserver's own state, shared by its listener and metaserver links."""

    identity: Identity
    config: DataserverConfig
    started_at: float = attrs.field(factory=time.time)
    links: list[MetaserverLink] = attrs.field(factory=list)

    @property
    def address(self) -> str:
        return str(self.config.advertise or self.config.listen)

    def chunk_count(self) -> int:
        return 0

    def space(self) -> SpaceMeasure:
        return measure_space(
            self.config.data_dir,
            capacity=self.config.capacity,
            reserved=self.config.reserved_space,
            used=0,
        )

    def report(self) -> dict[str, Any]:
        space = self.space()
        return {
            "name": self.identity.name,
            "capacity": space.capacity,
            "free": space.free,
            "used": space.used,
            "chunks": self.chunk_count(),
        }

    def status(self) -> dict[str, Any]:
        return {
            "role": Role.DATASERVER.value,
            "name": self.identity.name,
            "version": __version__,
            "address": self.address,
            "uptime": max(0.0, time.time() - self.started_at),
            "space": attrs.asdict(self.space()),
            "metaservers": [
                {"address": str(link.metaserver), "registered": link.registered}
                for link in self.links
            ],
        }


class MetaserverLink(Service):
    """Registration and heartbeats towards one metaserver."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        metaserver: Address,
        credentials: NodeCredentials,
        dataserver: Dataserver,
    ) -> None:
        self._reactor = reactor
        self.metaserver = metaserver
        self._dataserver = dataserver
        self._interval = dataserver.config.heartbeat_interval
        endpoint = wrapClientTLS(
            credentials.client_options(metaserver.host),
            HostnameEndpoint(reactor, metaserver.host, metaserver.port, timeout=10),
        )
        factory = Factory()
        factory.protocol = lambda: PeerSession(dataserver.identity)
        self._client = ClientService(
            endpoint,
            factory,
            retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=max(1.0, self._interval)),
            clock=reactor,
        )
        self._loop: Deferred[None] | None = None
        self.registered = False

    def startService(self) -> None:
        super().startService()
        self._client.startService()
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: f.trap(CancelledError))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None:
            self._loop.cancel()
        self.registered = False
        return self._client.stopService()

    async def _call(self, session: PeerSession, command: Any, **arguments: Any) -> Any:
        # A paused or wedged metaserver must not hold the link forever: give up on
        # the call and the connection, and let the ClientService dial again.
        timeout = max(5.0, 3 * self._interval)
        call = session.callRemote(command, **arguments)
        call.addTimeout(timeout, self._reactor, onTimeoutCancel=lambda *_: session.abort())
        return await call

    async def _run(self) -> None:
        while True:
            session = cast(PeerSession, await self._client.whenConnected())
            if session.peer is None or session.peer.role is not Role.METASERVER:
                # Any server certificate of the cluster matches a host name; only a
                # metaserver's may receive our registration.
                self.log.error(
                    "{address} answered as {peer}, not as a metaserver; not registering",
                    address=str(self.metaserver),
                    peer=str(session.peer),
                )
                session.abort()
                await deferLater(self._reactor, max(5.0, self._interval))
                continue
            try:
                reply = await self._call(
                    session,
                    RegisterDataserver,
                    address=self._dataserver.address,
                    **self._dataserver.report(),
                )
                self.registered = True
                self.log.info(
                    "registered with metaserver {meta} at {address}",
                    meta=reply["metaserver"],
                    address=str(self.metaserver),
                )
                while True:
                    await deferLater(self._reactor, self._interval)
                    await self._call(session, Heartbeat, **self._dataserver.report())
            except CancelledError:
                raise
            except UnknownDataserver:
                self.registered = False
                self.log.info(
                    "metaserver at {address} does not know us any more; registering again",
                    address=str(self.metaserver),
                )
            except Exception as error:
                self.registered = False
                self.log.warn(
                    "link to metaserver at {address} failed: {error}; retrying",
                    address=str(self.metaserver),
                    error=f"{type(error).__name__}: {error}",
                )
                session.abort()
                await deferLater(self._reactor, min(1.0, self._interval))


class DataserverMetrics:
    """Prometheus collector reading the dataserver's state at scrape time."""

    def __init__(self, dataserver: Dataserver) -> None:
        self._dataserver = dataserver

    def collect(self) -> Any:
        info = InfoMetricFamily("dfs_build", "DFS version and node identity")
        info.add_metric([], {"version": __version__, "role": "dataserver"})
        yield info
        space = self._dataserver.space()
        yield GaugeMetricFamily("dfs_capacity_bytes", "Capacity offered", value=space.capacity)
        yield GaugeMetricFamily("dfs_free_bytes", "Free space offered", value=space.free)
        yield GaugeMetricFamily("dfs_used_bytes", "Space used by chunks", value=space.used)
        yield GaugeMetricFamily(
            "dfs_metaservers_registered",
            "Metaservers this dataserver is registered with",
            value=sum(1 for link in self._dataserver.links if link.registered),
        )


def makeService(config: DataserverConfig, reactor: Any = None) -> MultiService:
    """Build the dataserver's services from a loaded and overridden config."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    source = str(config.source)
    credentials, identity = load_credentials(config.tls, source, Role.DATASERVER)
    check_name(config.name, identity, source)
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            file=source, key="data_dir", expected="a folder it can create", got=str(error)
        ) from None

    if config.advertise is None and config.listen.host in ("0.0.0.0", "::", ""):
        raise ConfigError(
            file=source,
            key="advertise",
            expected="the host:port clients should use, since listen is a wildcard address",
            got=None,
        )
    dataserver = Dataserver(identity=identity, config=config)
    factory = Factory()
    factory.protocol = lambda: PeerSession(identity)

    top = MultiService()
    top.setName("dfs-data")
    children = [tls_listener("dfs-data", reactor, config.listen, credentials, factory)]
    for address in config.metaservers:
        link = MetaserverLink(reactor, address, credentials, dataserver)
        dataserver.links.append(link)
        children.append(link)
    if config.http_listen is not None:
        registry = CollectorRegistry()
        registry.register(DataserverMetrics(dataserver))
        children.append(
            http_listener(
                "dfs-data", reactor, config.http_listen, status_site(dataserver.status, registry)
            )
        )
    add_all(top, children)
    return top
