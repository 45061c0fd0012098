"""The dataserver daemon: its AMP listener, and its links to every metaserver.

Each :class:`MetaserverLink` keeps one connection to one metaserver (reconnecting
with backoff), registers the dataserver and then heartbeats on the configured
interval, registering again whenever the metaserver no longer knows it. The leader
sends its orders (copy a replica here, check one) back on that same connection,
answered by a :class:`MetaserverLinkSession`.
"""

from __future__ import annotations

import shutil
import time
from functools import partial
from typing import Any, cast

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from twisted.application.internet import ClientService, TimerService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from dfs import __version__
from dfs.config import Address, ConfigError, DataserverConfig, load_security_config
from dfs.dataserver.access import ChunkAccess
from dfs.dataserver.chunkstore import ChunkStore, StoredChunk
from dfs.dataserver.pipeline import ChunkService, PeerConnections
from dfs.dataserver.replicator import ChunkReplicator
from dfs.dataserver.scrubber import ChunkScrubber
from dfs.dataserver.space import SpaceMeasure
from dfs.httpstatus import status_site
from dfs.node import add_all, check_name, http_listener, load_credentials, tls_listener
from dfs.protocol.commands import (
    AbortChunkWrite,
    ChunkReceived,
    FinishChunkWrite,
    Heartbeat,
    OpenChunkStream,
    OpenChunkWrite,
    Ping,
    ReadChunk,
    RecoverChunkWrite,
    RegisterDataserver,
    ReplicaCorrupt,
    ReplicateChunk,
    ReportChunks,
    StoreChunk,
    VerifyChunk,
)
from dfs.protocol.dial import dial
from dfs.protocol.errors import InvalidArgument, UnknownDataserver
from dfs.protocol.limits import ServerLimits
from dfs.protocol.records import Location
from dfs.protocol.session import PeerSession
from dfs.protocol.stream import ChunkStream
from dfs.reload import SecurityReload, apply_limits
from dfs.security.identity import Identity, Role
from dfs.security.tls import NodeCredentials
from dfs.security.tokenkeys import load_token_keys
from dfs.trust import TrustService


@attrs.define
class Dataserver:
    """The dataserver's own state, shared by its listener and metaserver links."""

    identity: Identity
    config: DataserverConfig
    store: ChunkStore
    started_at: float = attrs.field(factory=time.time)
    links: list[MetaserverLink] = attrs.field(factory=list)
    chunks: ChunkService | None = None
    replicator: ChunkReplicator | None = None
    scrubber: ChunkScrubber | None = None
    access: ChunkAccess | None = None

    @property
    def address(self) -> str:
        return str(self.config.advertise or self.config.listen)

    @property
    def location(self) -> Location:
        """Where clients and other dataservers reach this one (as it registers)."""
        address = self.config.advertise or self.config.listen
        return Location(address.host, address.port)

    def space(self) -> SpaceMeasure:
        used = self.store.used_bytes()
        capacity = self.config.capacity or shutil.disk_usage(self.config.data_dir).total
        return SpaceMeasure(capacity=capacity, free=self.store.free_bytes(), used=used)

    def report(self) -> dict[str, Any]:
        space = self.space()
        return {
            "name": self.identity.name,
            "capacity": space.capacity,
            "free": space.free,
            "used": space.used,
            "chunks": len(self.store.chunks()),
        }

    def chunk_received(self, stored: StoredChunk) -> None:
        for link in self.links:
            link.chunk_received(stored)

    def replica_corrupt(self, chunk_id: int, version: int, reason: str) -> None:
        """A replica was quarantined here: tell every metaserver."""
        for link in self.links:
            link.replica_corrupt(chunk_id, version, reason)

    def status(self) -> dict[str, Any]:
        return {
            "role": Role.DATASERVER.value,
            "name": self.identity.name,
            "version": __version__,
            "address": self.address,
            "uptime": max(0.0, time.time() - self.started_at),
            "space": attrs.asdict(self.space()),
            "chunks": len(self.store.chunks()),
            "metaservers": [
                {"address": str(link.metaserver), "registered": link.registered}
                for link in self.links
            ],
            "scrubber": self.scrubber.status() if self.scrubber is not None else None,
            "replication": self.replicator.status() if self.replicator is not None else None,
            "tokens_refused": self.access.refused if self.access is not None else 0,
        }


class DataserverSession(PeerSession):
    """One AMP connection to the dataserver: chunk writes and reads, each on a token
    checked by ``access`` before the chunk is touched."""

    def __init__(self, chunks: ChunkService, identity: Identity, access: ChunkAccess) -> None:
        super().__init__(identity)
        self.chunks = chunks
        self.access = access

    def _check(
        self, command: str, token: str | None, chunk_id: int, version: int, *, read: bool = False
    ) -> None:
        self.access.check(
            token,
            chunk_id,
            version,
            read=read,
            peer=self.peer,
            address=self.peer_address,
            command=command,
        )

    @OpenChunkWrite.responder
    async def open_chunk_write(
        self,
        chunk_id: int,
        version: int,
        downstream: list[Location],
        expected_length: int | None = None,
        token: str | None = None,
    ) -> dict:
        self._check("OpenChunkWrite", token, chunk_id, version)
        await self.chunks.open_write(
            chunk_id,
            version,
            list(downstream),
            self.peer,
            expected_length=expected_length,
            token=token,
        )
        return {}

    @OpenChunkStream.responder
    def open_chunk_stream(self) -> ChunkStream:
        # Answered, then this connection carries chunk stream frames only. Their data
        # goes only to writes this peer opened with a valid token (ChunkService).
        return self.chunks.stream(self.peer, self.peer_address)

    @FinishChunkWrite.responder
    async def finish_chunk_write(
        self, chunk_id: int, version: int, length: int, token: str | None = None
    ) -> dict:
        self._check("FinishChunkWrite", token, chunk_id, version)
        return {"locations": await self.chunks.finish(chunk_id, version, length, token=token)}

    @StoreChunk.responder
    async def store_chunk(
        self,
        chunk_id: int,
        version: int,
        downstream: list[Location],
        data: bytes,
        token: str | None = None,
    ) -> dict:
        self._check("StoreChunk", token, chunk_id, version)
        locations = await self.chunks.store_whole(
            chunk_id, version, list(downstream), data, self.peer, token=token
        )
        return {"locations": locations}

    @RecoverChunkWrite.responder
    async def recover_chunk_write(
        self,
        chunk_id: int,
        version: int,
        new_version: int,
        length: int,
        downstream: list[Location],
        token: str | None = None,
    ) -> dict:
        # The token names the version the write becomes (BumpChunkVersion gave it).
        self._check("RecoverChunkWrite", token, chunk_id, new_version)
        await self.chunks.recover(
            chunk_id, version, new_version, length, list(downstream), self.peer, token=token
        )
        return {}

    @AbortChunkWrite.responder
    async def abort_chunk_write(
        self, chunk_id: int, version: int, token: str | None = None
    ) -> dict:
        self._check("AbortChunkWrite", token, chunk_id, version)
        await self.chunks.abort(chunk_id, version, token=token)
        return {}

    @ReadChunk.responder
    def read_chunk(
        self, chunk_id: int, version: int, offset: int, length: int, token: str | None = None
    ) -> dict:
        self._check("ReadChunk", token, chunk_id, version, read=True)
        data, checksums = self.chunks.read(chunk_id, version, offset, length)
        return {"data": data, "checksums": checksums}


class MetaserverLinkSession(PeerSession):
    """The dataserver's end of the connection it opened to a metaserver: besides
    the calls the link makes, it carries out the leader's orders (only a peer with a
    metaserver certificate may send them: PeerSession checks ``allowed_roles``)."""

    def __init__(self, identity: Identity, replicator: ChunkReplicator | None) -> None:
        super().__init__(identity)
        self.dialled = True  # so it states its protocol version first (Hello)
        self.replicator = replicator

    def _orders(self) -> ChunkReplicator:
        if self.replicator is None:
            raise InvalidArgument("this dataserver takes no orders")
        return self.replicator

    @ReplicateChunk.responder
    async def replicate_chunk(
        self,
        chunk_id: int,
        version: int,
        length: int,
        sources: list[Location],
        rate: int,
        token: str | None = None,
    ) -> dict:
        source = await self._orders().replicate(
            chunk_id, version, length, list(sources), rate, token=token or ""
        )
        return {"source": source}

    @VerifyChunk.responder
    async def verify_chunk(self, chunk_id: int, version: int) -> dict:
        return {"intact": await self._orders().verify(chunk_id, version)}


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
        factory.protocol = lambda: MetaserverLinkSession(dataserver.identity, dataserver.replicator)
        self._client = ClientService(
            endpoint,
            factory,
            retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=max(1.0, self._interval)),
            clock=reactor,
        )
        self._loop: Deferred[None] | None = None
        self._session: PeerSession | None = None
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

    async def _report_chunks(self, session: PeerSession) -> None:
        """A full report of the replicas here, in batches that fit an AMP value."""
        replicas = [
            {"chunk_id": stored.chunk_id, "version": stored.version, "length": stored.length}
            for stored in self._dataserver.store.chunks()
        ]
        batches = [replicas[i : i + REPORT_BATCH] for i in range(0, len(replicas), REPORT_BATCH)]
        for index, batch in enumerate(batches or [[]]):
            await self._call(
                session,
                ReportChunks,
                name=self._dataserver.identity.name,
                chunks=batch,
                last=index == len(batches or [[]]) - 1,
            )

    async def _delete(self, replicas: list[dict[str, int]]) -> None:
        store = self._dataserver.store

        def delete_all() -> int:
            return sum(store.delete(r["chunk_id"], r["version"]) for r in replicas)

        deleted = await deferToThread(delete_all)
        self.log.info(
            "deleted {deleted} of {asked} replicas as metaserver {address} asked",
            deleted=deleted,
            asked=len(replicas),
            address=str(self.metaserver),
        )

    def chunk_received(self, stored: StoredChunk) -> None:
        """Tell the metaserver at once; if it misses this, the full report that
        follows the next registration carries it."""
        self._report(
            "a chunk report",
            ChunkReceived,
            chunk_id=stored.chunk_id,
            version=stored.version,
            length=stored.length,
        )

    def replica_corrupt(self, chunk_id: int, version: int, reason: str) -> None:
        """Tell the metaserver a replica was quarantined here; if it misses this, the
        full report that follows the next registration no longer lists it."""
        self._report(
            "a corrupt replica report",
            ReplicaCorrupt,
            chunk_id=chunk_id,
            version=version,
            reason=reason[:1000],
        )

    def _report(self, what: str, command: Any, **arguments: Any) -> None:
        session = self._session
        if session is None or not self.registered:
            return
        call = session.callRemote(command, name=self._dataserver.identity.name, **arguments)
        call.addErrback(
            lambda failure: self.log.info(
                "metaserver at {address} missed {what}: {error}",
                address=str(self.metaserver),
                what=what,
                error=failure.value,
            )
        )

    async def _run(self) -> None:
        while True:
            session = cast(PeerSession, await self._client.whenConnected())
            try:
                # The TLS handshake completes after the TCP connection: a Ping
                # waits for it and so for the peer's identity.
                await self._call(session, Ping)
            except CancelledError:
                raise
            except Exception as error:
                self.log.warn(
                    "metaserver at {address} did not answer: {error}; retrying",
                    address=str(self.metaserver),
                    error=f"{type(error).__name__}: {error}",
                )
                session.abort()
                await deferLater(self._reactor, min(1.0, self._interval))
                continue
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
                await self._report_chunks(session)
                self._session = session
                self.registered = True
                self.log.info(
                    "registered with metaserver {meta} at {address}",
                    meta=reply["metaserver"],
                    address=str(self.metaserver),
                )
                while True:
                    await deferLater(self._reactor, self._interval)
                    answer = await self._call(session, Heartbeat, **self._dataserver.report())
                    if answer["delete"]:
                        await self._delete(answer["delete"])
            except CancelledError:
                raise
            except UnknownDataserver:
                self.registered = False
                self._session = None
                self.log.info(
                    "metaserver at {address} does not know us any more; registering again",
                    address=str(self.metaserver),
                )
            except Exception as error:
                self.registered = False
                self._session = None
                self.log.warn(
                    "link to metaserver at {address} failed: {error}; retrying",
                    address=str(self.metaserver),
                    error=f"{type(error).__name__}: {error}",
                )
                session.abort()
                await deferLater(self._reactor, min(1.0, self._interval))


#: Replicas per ReportChunks batch: about 40 bytes each on the wire, well under 64 KiB.
REPORT_BATCH = 1000


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
        access = self._dataserver.access
        if access is not None:
            yield CounterMetricFamily(
                "dfs_chunk_tokens_refused",
                "Chunk commands refused for a missing, bad or expired token",
                value=access.refused,
            )
        scrubber = self._dataserver.scrubber
        if scrubber is not None:
            scrub = scrubber.counters
            for name, text, value in (
                ("dfs_scrub_passes", "Scrub passes completed", scrub.passes),
                ("dfs_scrub_replicas", "Replicas the scrubber checked", scrub.replicas_checked),
                ("dfs_scrub_bytes", "Bytes the scrubber read and checked", scrub.bytes_checked),
                ("dfs_scrub_corrupt", "Corrupt replicas the scrubber found", scrub.corrupt_found),
            ):
                yield CounterMetricFamily(name, text, value=value)
            for name, text, when in (
                (
                    "dfs_scrub_last_pass_start_seconds",
                    "When the last pass began",
                    scrub.last_pass_start,
                ),
                (
                    "dfs_scrub_last_pass_end_seconds",
                    "When the last pass ended",
                    scrub.last_pass_end,
                ),
            ):
                if when is not None:
                    yield GaugeMetricFamily(name, text + " (Unix time)", value=when)
        replicator = self._dataserver.replicator
        if replicator is not None:
            copies = replicator.counters
            for name, text, value in (
                ("dfs_replications", "Replicas copied here on the leader's order", copies.copies),
                ("dfs_replication_failures", "Copy orders answered with an error", copies.failures),
                ("dfs_replication_bytes", "Bytes copied here from other dataservers", copies.bytes),
                (
                    "dfs_replication_source_failures",
                    "Copy sources given up",
                    copies.source_failures,
                ),
                (
                    "dfs_verifications",
                    "Replicas checked on the leader's order",
                    copies.verifications,
                ),
                ("dfs_verification_corrupt", "Replicas those checks found corrupt", copies.corrupt),
            ):
                yield CounterMetricFamily(name, text, value=value)
            yield GaugeMetricFamily(
                "dfs_replications_in_progress", "Copies running here", value=copies.in_progress
            )


#: The keys of security_config.json a dataserver reads (all applied again on SIGHUP):
#: it checks chunk tokens and peers, and limits its connections.
SECURITY_KEYS = frozenset(
    {"token_key_file", "token_previous_key_file", "crl", "crl_check_interval", "limits"}
)


def makeService(config: DataserverConfig, reactor: Any = None) -> MultiService:
    """Build the dataserver's services from a loaded and overridden config."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    source = str(config.source)
    credentials, identity = load_credentials(config.tls, source, Role.DATASERVER)
    check_name(config.name, identity, source)
    security = load_security_config(config.security_config)
    access = ChunkAccess(load_token_keys(security), reactor)
    trust = TrustService(
        reactor,
        credentials,
        identity,
        config.tls,
        source,
        security,
        tokens=access,
    )
    limits = ServerLimits(security.limits, reactor)
    reload = SecurityReload(
        reactor,
        trust,
        security,
        [trust.apply_security, partial(apply_limits, limits)],
        used=SECURITY_KEYS,
    )
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
    store = ChunkStore(
        config.data_dir,
        reserved_space=config.reserved_space,
        capacity=config.capacity,
        direct_io=config.direct_io,
        drop_behind_reads=config.drop_behind_reads,
    )
    scan = store.scan()
    dataserver = Dataserver(identity=identity, config=config, store=store, access=access)
    Logger().info(
        "chunk store {root}: {count} replicas, {used} bytes",
        root=str(config.data_dir),
        count=len(scan.chunks),
        used=store.used_bytes(),
    )
    peers = PeerConnections(
        reactor,
        lambda address: Deferred.fromCoroutine(dial(reactor, address, credentials, identity)),
    )
    chunks = ChunkService(reactor, store, peers, dataserver.location, dataserver.chunk_received)
    dataserver.chunks = chunks
    dataserver.replicator = ChunkReplicator(
        reactor,
        store,
        location=dataserver.location,
        connect=peers.dial,
        on_received=dataserver.chunk_received,
        on_corrupt=dataserver.replica_corrupt,
    )
    dataserver.scrubber = ChunkScrubber(
        reactor,
        store,
        bandwidth=config.scrub_bandwidth,
        interval=config.scrub_interval,
        on_corrupt=dataserver.replica_corrupt,
    )
    factory = Factory()
    factory.protocol = lambda: DataserverSession(chunks, identity, access)

    top = MultiService()
    top.setName("dfs-data")
    children: list[Any] = [
        trust,
        reload,
        tls_listener("dfs-data", reactor, config.listen, credentials, factory, limits=limits),
        TimerService(60, chunks.expire_abandoned),
        dataserver.replicator,
        dataserver.scrubber,
    ]
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
