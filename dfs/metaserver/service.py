"""The metaserver daemon: AMP responders, the dataserver registry, HTTP status.

``makeService(config)`` composes a MultiService of small services: the TLS
listener, a timer that declares silent dataservers dead, and the HTTP status site.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from dfs import __version__
from dfs.config import Address, ConfigError, MetaserverConfig
from dfs.httpstatus import status_site
from dfs.metaserver.registry import DataserverRegistry, DataserverState, SpaceReport
from dfs.node import add_all, check_name, http_listener, load_credentials, tls_listener
from dfs.protocol.commands import Heartbeat, ListDataservers, RegisterDataserver
from dfs.protocol.errors import InvalidArgument, PermissionDenied, UnknownDataserver
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity, Role


@attrs.define
class Metaserver:
    """The metaserver's state and decisions, shared by all its connections."""

    identity: Identity
    config: MetaserverConfig
    clock: IReactorTime
    registry: DataserverRegistry
    started_at: float = attrs.field(factory=time.time)
    log = Logger()

    def register_dataserver(
        self, caller: Identity, name: str, address: str, space: SpaceReport
    ) -> None:
        if name != caller.name:
            raise PermissionDenied(f"{caller} cannot register as dataserver {name!r}")
        try:
            Address.parse(address)
        except ValueError as error:
            raise InvalidArgument(f"address {address!r}: {error}") from None
        _check_space(space)
        if self.registry.register(name, address, space, self.clock.seconds()):
            self.log.info(
                "dataserver {name} registered from {address} "
                "(capacity {capacity}, free {free}, {chunks} chunks)",
                name=name,
                address=address,
                capacity=space.capacity,
                free=space.free,
                chunks=space.chunks,
            )

    def heartbeat(self, caller: Identity, name: str, space: SpaceReport) -> None:
        if name != caller.name:
            raise PermissionDenied(f"{caller} cannot heartbeat as dataserver {name!r}")
        _check_space(space)
        if not self.registry.heartbeat(name, space, self.clock.seconds()):
            raise UnknownDataserver(f"dataserver {name} is not registered here")

    def expire_dataservers(self) -> None:
        for record in self.registry.expire(self.clock.seconds()):
            self.log.warn(
                "dataserver {name} at {address} declared dead: no heartbeat for {age:.1f}s",
                name=record.name,
                address=record.address,
                age=self.clock.seconds() - record.last_heartbeat,
            )

    def dataservers(self) -> list[dict[str, Any]]:
        now = self.clock.seconds()
        return [
            {
                "name": record.name,
                "address": record.address,
                "state": record.state.value,
                "capacity": record.space.capacity,
                "free": record.space.free,
                "used": record.space.used,
                "chunks": record.space.chunks,
                "last_heartbeat_age": max(0.0, now - record.last_heartbeat),
            }
            for record in self.registry.records()
        ]

    def status(self) -> dict[str, Any]:
        return {
            "role": Role.METASERVER.value,
            "name": self.identity.name,
            "version": __version__,
            "uptime": max(0.0, time.time() - self.started_at),
            "dataservers": self.dataservers(),
        }


def _check_space(space: SpaceReport) -> None:
    for field in attrs.fields(SpaceReport):
        if getattr(space, field.name) < 0:
            raise InvalidArgument(f"{field.name} must not be negative")


class MetaserverSession(PeerSession):
    """One AMP connection to the metaserver."""

    def __init__(self, metaserver: Metaserver) -> None:
        super().__init__(metaserver.identity)
        self.metaserver = metaserver

    @RegisterDataserver.responder
    def register_dataserver(
        self, name: str, address: str, capacity: int, free: int, used: int, chunks: int
    ) -> dict[str, Any]:
        assert self.peer is not None  # role checked before responders run
        self.metaserver.register_dataserver(
            self.peer, name, address, SpaceReport(capacity, free, used, chunks)
        )
        return {
            "metaserver": self.local.name,
            "dead_after": self.metaserver.config.dataserver_dead_after,
        }

    @Heartbeat.responder
    def heartbeat(
        self, name: str, capacity: int, free: int, used: int, chunks: int
    ) -> dict[str, Any]:
        assert self.peer is not None
        self.metaserver.heartbeat(self.peer, name, SpaceReport(capacity, free, used, chunks))
        return {"delete": []}

    @ListDataservers.responder
    def list_dataservers(self) -> dict[str, Any]:
        return {"dataservers": self.metaserver.dataservers()}


class MetaserverMetrics:
    """Prometheus collector reading the metaserver's state at scrape time."""

    def __init__(self, metaserver: Metaserver) -> None:
        self._metaserver = metaserver

    def collect(self) -> Any:
        info = InfoMetricFamily("dfs_build", "DFS version and node identity")
        info.add_metric([], {"version": __version__, "role": "metaserver"})
        yield info
        records = self._metaserver.registry.records()
        count = GaugeMetricFamily(
            "dfs_dataservers", "Dataservers known to this metaserver", labels=["state"]
        )
        for state in DataserverState:
            count.add_metric([state.value], sum(1 for r in records if r.state is state))
        yield count
        alive = [r for r in records if r.state is DataserverState.ALIVE]
        for metric, help_text, attr in (
            ("dfs_cluster_capacity_bytes", "Capacity of live dataservers", "capacity"),
            ("dfs_cluster_free_bytes", "Free space on live dataservers", "free"),
            ("dfs_cluster_used_bytes", "Space used by chunks on live dataservers", "used"),
        ):
            yield GaugeMetricFamily(
                metric, help_text, value=sum(getattr(r.space, attr) for r in alive)
            )


def makeService(config: MetaserverConfig, reactor: Any = None) -> MultiService:
    """Build the metaserver's services from a loaded and overridden config."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    source = str(config.source)
    credentials, identity = load_credentials(config.tls, source, Role.METASERVER)
    check_name(config.name, identity, source)
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            file=source, key="data_dir", expected="a folder it can create", got=str(error)
        ) from None

    metaserver = Metaserver(
        identity=identity,
        config=config,
        clock=reactor,
        registry=DataserverRegistry(dead_after=config.dataserver_dead_after),
    )
    factory = Factory()
    factory.protocol = lambda: MetaserverSession(metaserver)

    top = MultiService()
    top.setName("dfs-meta")
    children = [
        tls_listener("dfs-meta", reactor, config.listen, credentials, factory),
        # Check often enough that a dead dataserver is noticed within ~10% of the timeout.
        TimerService(max(0.1, config.dataserver_dead_after / 10), metaserver.expire_dataservers),
    ]
    if config.http_listen is not None:
        registry = CollectorRegistry()
        registry.register(MetaserverMetrics(metaserver))
        children.append(
            http_listener(
                "dfs-meta", reactor, config.http_listen, status_site(metaserver.status, registry)
            )
        )
    add_all(top, children)
    return top
