"""The metaserver daemon: AMP responders, the dataserver registry, HTTP status.

``makeService(config)`` builds the owners of the metaserver's state once
(:func:`wire`: namespace requests, chunk allocation and tokens, replica locations,
the replication monitor, cluster control, safe mode) over the replicated log, and
composes a MultiService of small services: Raft, the TLS listener, timers for
leases, dead dataservers and replication, and the HTTP status site. Responders
decode a command, call one owner, and encode its answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from dfs import __version__
from dfs.config import (
    Address,
    ConfigError,
    MetaserverConfig,
    ReplicationConfig,
    load_replication_config,
    load_security_config,
)
from dfs.config.reload import ALL_KEYS
from dfs.httpstatus import status_site
from dfs.metaserver.allocation import ChunkAllocator, ChunkTokens
from dfs.metaserver.audit import AuditLog, open_audit_log
from dfs.metaserver.backupfolder import BackupFolder
from dfs.metaserver.control import ClusterControl
from dfs.metaserver.healing import ReplicationMonitor
from dfs.metaserver.journal import JournalCorrupt
from dfs.metaserver.log import RaftLog, ReplicatedLog
from dfs.metaserver.namespace import Namespace
from dfs.metaserver.operations import BY_PATH
from dfs.metaserver.raft import NamespaceLog, RaftService, RaftSettings
from dfs.metaserver.registry import DataserverRegistry, DataserverState, SpaceReport
from dfs.metaserver.replicas import ReplicaTracker
from dfs.metaserver.requests import NamespaceRequests
from dfs.metaserver.safemode import SafeMode
from dfs.node import (
    StartupError,
    add_all,
    check_name,
    http_listener,
    load_credentials,
    stop_at_once,
    tls_listener,
)
from dfs.protocol import commands
from dfs.protocol.commands import Heartbeat, ListDataservers, RegisterDataserver
from dfs.protocol.errors import InvalidArgument, PermissionDenied, UnknownDataserver
from dfs.protocol.limits import ServerLimits
from dfs.protocol.records import Location
from dfs.protocol.session import PeerSession
from dfs.protocol.version import ProtocolVersion
from dfs.reload import SecurityReload, apply_limits, apply_token_lifetime
from dfs.security.identity import Identity, Role
from dfs.security.secrets import read_secret
from dfs.security.tokenkeys import load_token_issuer
from dfs.security.tokens import TokenIssuer
from dfs.trust import TrustService


@attrs.frozen
class Handlers:
    """The owners of the metaserver's state, each the only one to change its part."""

    namespace: NamespaceRequests
    chunks: ChunkAllocator
    replicas: ReplicaTracker
    monitor: ReplicationMonitor
    control: ClusterControl
    safe_mode: SafeMode


def wire(
    clock: Any,
    log: ReplicatedLog,
    registry: DataserverRegistry,
    replication: ReplicationConfig,
    issuer: TokenIssuer,
    lease_period: float,
    session_for: Callable[[str], PeerSession | None],
    backups: BackupFolder,
) -> Handlers:
    """Build the owners and hand each the narrow parts of the others it needs."""
    replicas = ReplicaTracker(log, registry)
    safe_mode = SafeMode(clock, log, replication, registry, census=replicas.census)
    tokens = ChunkTokens(clock, issuer)
    monitor = ReplicationMonitor(
        clock, log, safe_mode, registry, replicas, replication, session_for, tokens=tokens
    )
    return Handlers(
        namespace=NamespaceRequests(clock, log, safe_mode, replicas, replication),
        chunks=ChunkAllocator(
            clock, log, safe_mode, registry, replicas, tokens, replication, lease_period
        ),
        replicas=replicas,
        monitor=monitor,
        control=ClusterControl(clock, log, safe_mode, registry, monitor, replication, backups),
        safe_mode=safe_mode,
    )


@attrs.define
class Metaserver:
    """The dataservers as this metaserver knows them (registrations, heartbeats, the
    connection each is reached on), and the owners the sessions call."""

    identity: Identity
    config: MetaserverConfig
    clock: IReactorTime
    registry: DataserverRegistry
    handlers: Handlers
    raft: RaftService | None = None
    #: records every namespace and admin operation, while security_config names a file
    audit: AuditLog | None = None
    started_at: float = attrs.field(factory=time.time)
    #: dataserver name -> the connection it registered on (orders go back on it)
    sessions: dict[str, MetaserverSession] = attrs.field(factory=dict)
    log = Logger()

    def register_dataserver(
        self, caller: Identity, name: str, address: str, space: SpaceReport
    ) -> None:
        if name != caller.name:
            raise PermissionDenied(f"{caller} cannot register as dataserver {name!r}")
        try:
            parsed = Address.parse(address)
        except ValueError as error:
            raise InvalidArgument(f"address {address!r}: {error}") from None
        _check_space(space)
        location = Location(parsed.host, parsed.port)
        if self.registry.register(name, location, space, self.clock.seconds()):
            self.log.info(
                "dataserver {name} registered from {address} "
                "(capacity {capacity}, free {free}, {chunks} chunks)",
                name=name,
                address=address,
                capacity=space.capacity,
                free=space.free,
                chunks=space.chunks,
            )

    def heartbeat(self, caller: Identity, name: str, space: SpaceReport) -> list[dict[str, int]]:
        """Record ``name``'s heartbeat; the replicas it is to delete."""
        if name != caller.name:
            raise PermissionDenied(f"{caller} cannot heartbeat as dataserver {name!r}")
        _check_space(space)
        if not self.registry.heartbeat(name, space, self.clock.seconds()):
            raise UnknownDataserver(f"dataserver {name} is not registered here")
        self.handlers.chunks.space_reported(name)
        # No deletion leaves a leader still in safe mode (nor a follower): what it
        # scheduled waits.
        if not self.handlers.safe_mode.deciding:
            return []
        return self.handlers.replicas.deletions_for(name)

    def expire_dataservers(self) -> None:
        for record in self.registry.expire(self.clock.seconds()):
            self.handlers.replicas.dataserver_dead(record.name)
            self.log.warn(
                "dataserver {name} at {address} declared dead: no heartbeat for {age:.1f}s",
                name=record.name,
                address=record.address,
                age=self.clock.seconds() - record.last_heartbeat,
            )

    def space(self) -> dict[str, int]:
        records = self.registry.records()
        alive = [record for record in records if record.state is DataserverState.ALIVE]
        return {
            "capacity": sum(record.space.capacity for record in alive),
            "used": sum(record.space.used for record in alive),
            "free": sum(record.space.free for record in alive),
            "dataservers_alive": len(alive),
            "dataservers_dead": len(records) - len(alive),
        }

    def dataservers(self) -> list[dict[str, Any]]:
        now = self.clock.seconds()
        control = self.handlers.control
        answer = []
        for record in self.registry.records():
            state = str(record.state.value)
            if record.state is DataserverState.ALIVE:
                state = control.drain_state(record.name) or state
            answer.append(
                {
                    "name": record.name,
                    "address": str(record.address),
                    "state": state,
                    "capacity": record.space.capacity,
                    "free": record.space.free,
                    "used": record.space.used,
                    "chunks": record.space.chunks,
                    "last_heartbeat_age": max(0.0, now - record.last_heartbeat),
                    "drain_remaining": control.drain_remaining(record.name),
                }
            )
        return answer

    def status(self) -> dict[str, Any]:
        return {
            "role": Role.METASERVER.value,
            "name": self.identity.name,
            "version": __version__,
            "uptime": max(0.0, time.time() - self.started_at),
            "namespace_ready": self.raft is not None and self.raft.ready,
            "raft": self.raft.status() if self.raft is not None else None,
            "replication": self.handlers.monitor.status(),
            "dataservers": self.dataservers(),
        }


def _raft_address(raft: str) -> str:
    try:
        return str(Address.parse(raft))
    except ValueError as error:
        raise InvalidArgument(f"raft address {raft!r}: {error}") from None


def _check_space(space: SpaceReport) -> None:
    for field in attrs.fields(SpaceReport):
        if getattr(space, field.name) < 0:
            raise InvalidArgument(f"{field.name} must not be negative")


#: The first protocol whose StartBackup answers with an id, the backup on the leader's disk.
DISK_BACKUPS = ProtocolVersion(2, 1)


class MetaserverSession(PeerSession):
    """One AMP connection to the metaserver."""

    #: Bytes of answers one read may gather (they leave together at its end) before
    #: the audit records waiting are written: well under the 64,000 bytes at which
    #: the TLS layer sends what it gathered at once.
    GATHERED_ANSWERS = 16_000

    def __init__(self, metaserver: Metaserver) -> None:
        super().__init__(metaserver.identity)
        self.metaserver = metaserver
        #: the peer's address as audit records name it
        self._remote: str | None = None
        #: about how many bytes of answers this read has gathered so far
        self._gathered = 0

    # A record of an answered request is in the audit log before the answer leaves:
    # the records of what one read asked are written in one write just before the
    # answers of that read go out together (or at once, for an answer sent later).

    def connectionMade(self) -> None:
        super().connectionMade()
        send_answers = self._flush
        if send_answers is not None:

            def flush() -> None:
                audit = self.metaserver.audit
                if audit is not None:
                    audit.flush()
                send_answers()

            self._flush = flush

    def dataReceived(self, data: bytes) -> None:
        self._gathered = 0
        super().dataReceived(data)

    def sendBox(self, box: amp.AmpBox) -> None:
        audit = self.metaserver.audit
        if audit is not None:
            if not self._receiving or self._flush is None:
                audit.flush()  # this answer leaves now
            else:
                self._gathered += sum(len(key) + len(value) + 4 for key, value in box.items())
                if self._gathered > self.GATHERED_ANSWERS:
                    audit.flush()  # the TLS layer may send what gathered now
        super().sendBox(box)

    def locateResponder(self, name: bytes) -> Callable[[amp.AmpBox], Any] | None:
        # One hook for every command, role refusals included: the audit log decides
        # from the command class what to record once the answer is known.
        responder = super().locateResponder(name)
        audit = self.metaserver.audit
        if responder is None or audit is None or not audit.enabled:
            return responder
        command = self._commandDispatch[name][0]  # type: ignore[attr-defined]
        if self._remote is None:
            self._remote = self.peer_address  # the same for the connection's life
        return audit.wrap(command, self.peer, self._remote, responder)

    @RegisterDataserver.responder
    def register_dataserver(
        self, name: str, address: str, capacity: int, free: int, used: int, chunks: int
    ) -> dict[str, Any]:
        assert self.peer is not None  # role checked before responders run
        self.metaserver.register_dataserver(
            self.peer, name, address, SpaceReport(capacity, free, used, chunks)
        )
        self.metaserver.sessions[name] = self
        return {
            "metaserver": self.local.name,
            "dead_after": self.metaserver.config.dataserver_dead_after,
        }

    @Heartbeat.responder
    def heartbeat(
        self, name: str, capacity: int, free: int, used: int, chunks: int
    ) -> dict[str, Any]:
        assert self.peer is not None
        space = SpaceReport(capacity, free, used, chunks)
        return {"delete": self.metaserver.heartbeat(self.peer, name, space)}

    @ListDataservers.responder
    def list_dataservers(self) -> dict[str, Any]:
        # Only the leader knows how far drains have gone: send the asker there.
        if self.metaserver.raft is not None:
            self.metaserver.raft.check_serving()
        return {"dataservers": self.metaserver.dataservers()}

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        sessions = self.metaserver.sessions
        for name in [name for name, session in sessions.items() if session is self]:
            del sessions[name]
        super().connectionLost(reason)

    # -- cluster management --------------------------------------------------------------

    @commands.Fsck.responder
    def fsck(self, path: str, start: int, limit: int) -> dict:
        return self.handlers.control.fsck(path, start, limit)

    @commands.Decommission.responder
    async def decommission(self, name: str) -> dict:
        await self.handlers.control.set_decommission(self.caller, name, True)
        return {}

    @commands.Recommission.responder
    async def recommission(self, name: str) -> dict:
        await self.handlers.control.set_decommission(self.caller, name, False)
        return {}

    @commands.ControlSafeMode.responder
    async def control_safe_mode(self, action: str) -> dict:
        return await self.handlers.safe_mode.control(self.caller, action)

    @commands.ControlBalancer.responder
    def control_balancer(self, action: str, threshold: float) -> dict:
        return self.handlers.control.control_balancer(self.caller, action, threshold)

    @commands.StartBackup.responder
    def start_backup(self) -> dict:
        peer = self.peer_protocol
        if peer is not None and peer < DISK_BACKUPS:
            # Its StartBackup expects the whole backup's size in the answer: tell it
            # why not, rather than give it an answer it cannot read.
            raise InvalidArgument(
                f"this metaserver speaks DFS protocol {self.protocol_version} and writes "
                f"backups to its disk first; a client of protocol {peer} cannot fetch "
                f"them: run dfs admin backup from a DFS of protocol {DISK_BACKUPS} or later"
            )
        return self.handlers.control.start_backup(self.metaserver.identity.name)

    @commands.BackupStatus.responder
    def backup_status(self, backup_id: str) -> dict:
        return self.handlers.control.backup_status(backup_id)

    @commands.ReadBackup.responder
    def read_backup(self, backup_id: str, offset: int, length: int) -> dict:
        return self.handlers.control.read_backup(backup_id, offset, length)

    @commands.EndBackup.responder
    def end_backup(self, backup_id: str) -> dict:
        return self.handlers.control.end_backup(backup_id)

    @commands.ReplicaCorrupt.responder
    def replica_corrupt(self, name: str, chunk_id: int, version: int, reason: str) -> dict:
        self.handlers.monitor.report_corrupt(self.caller, name, chunk_id, version, reason)
        return {}

    # -- the metaserver group ----------------------------------------------------------

    @property
    def raft(self) -> RaftService:
        assert self.metaserver.raft is not None
        return self.metaserver.raft

    @commands.MetaserverStatus.responder
    def metaserver_status(self) -> dict[str, Any]:
        status = self.raft.status()
        return {
            "name": self.metaserver.identity.name,
            "raft": str(self.metaserver.config.raft_listen),
            "role": status["role"],
            "serving": status.get("serving", False),
            "leader": status.get("leader", ""),
            "term": status.get("term", 0),
            "commit_index": status.get("commit_index", 0),
            "last_applied": status.get("last_applied", 0),
            "members": status.get("members", []),
        }

    @commands.AddMetaserver.responder
    async def add_metaserver(self, raft: str) -> dict:
        await self.raft.change_membership(True, _raft_address(raft))
        self.metaserver.log.info(
            "{admin} added metaserver {raft} to the group", admin=str(self.caller), raft=raft
        )
        return {}

    @commands.RemoveMetaserver.responder
    async def remove_metaserver(self, raft: str) -> dict:
        await self.raft.change_membership(False, _raft_address(raft))
        self.metaserver.log.info(
            "{admin} removed metaserver {raft} from the group", admin=str(self.caller), raft=raft
        )
        return {}

    # -- the namespace ---------------------------------------------------------------

    @property
    def handlers(self) -> Handlers:
        return self.metaserver.handlers

    @property
    def caller(self) -> Identity:
        assert self.peer is not None  # roles are checked before responders run
        return self.peer

    @commands.Mkdir.responder
    async def mkdir(self, path: str, mode: int, parents: bool, request_id: str) -> dict:
        await self.handlers.namespace.mkdir(self.caller, path, mode, parents, request_id)
        return {}

    @commands.Create.responder
    async def create(
        self, close: bool | None = None, first_chunk: bool | None = None, **arguments: Any
    ) -> dict:
        return await self.handlers.chunks.create(
            self.caller, **arguments, close=bool(close), first_chunk=bool(first_chunk)
        )

    @commands.AddChunk.responder
    async def add_chunk(
        self, path: str, client_id: str, request_id: str, inode: int | None = None
    ) -> dict:
        return await self.handlers.chunks.add_chunk(
            self.caller, path, client_id, request_id, inode or BY_PATH
        )

    @commands.BumpChunkVersion.responder
    async def bump_chunk_version(
        self, path: str, client_id: str, chunk_id: int, request_id: str, inode: int | None = None
    ) -> dict:
        return await self.handlers.chunks.bump_chunk_version(
            self.caller, path, client_id, chunk_id, request_id, inode or BY_PATH
        )

    @commands.CommitChunk.responder
    async def commit_chunk(self, inode: int | None = None, **arguments: Any) -> dict:
        await self.handlers.chunks.commit_chunk(self.caller, **arguments, inode=inode or BY_PATH)
        return {}

    @commands.RenewLease.responder
    async def renew_lease(self, path: str, client_id: str, inode: int | None = None) -> dict:
        await self.handlers.chunks.renew_lease(self.caller, path, client_id, inode or BY_PATH)
        return {}

    @commands.CloseFile.responder
    async def close_file(
        self,
        path: str,
        client_id: str,
        length: int,
        request_id: str,
        chunk_id: int | None = None,
        version: int | None = None,
        chunk_length: int | None = None,
        locations: list[Location] | None = None,
        inode: int | None = None,
    ) -> dict:
        await self.handlers.chunks.close(
            self.caller,
            path,
            client_id,
            length,
            request_id,
            chunk_id,
            version or 0,
            chunk_length or 0,
            locations,
            inode or BY_PATH,
        )
        return {}

    @commands.Stat.responder
    def stat(self, path: str) -> dict:
        return self.handlers.namespace.stat(self.caller, path)

    @commands.ListDirectory.responder
    def list_directory(self, path: str, start_after: str, limit: int) -> dict:
        return self.handlers.namespace.list_directory(self.caller, path, start_after, limit)

    @commands.GetChunks.responder
    def get_chunks(self, path: str, first: int, limit: int) -> dict:
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        return self.handlers.chunks.get_chunks(self.caller, path, first, limit, host)

    @commands.RenewChunkTokens.responder
    def renew_chunk_tokens(
        self,
        path: str,
        operation: str,
        chunk_ids: list[int],
        client_id: str,
        inode: int | None = None,
    ) -> dict:
        return self.handlers.chunks.renew_chunk_tokens(
            self.caller, path, operation, list(chunk_ids), client_id, inode or BY_PATH
        )

    @commands.Delete.responder
    async def delete(self, path: str, recursive: bool, request_id: str) -> dict:
        await self.handlers.namespace.delete(self.caller, path, recursive, request_id)
        return {}

    @commands.Rename.responder
    async def rename(self, source: str, destination: str, request_id: str) -> dict:
        await self.handlers.namespace.rename(self.caller, source, destination, request_id)
        return {}

    @commands.SetReplication.responder
    async def set_replication(self, path: str, replication: int, request_id: str) -> dict:
        await self.handlers.namespace.set_replication(self.caller, path, replication, request_id)
        return {}

    @commands.Chmod.responder
    async def chmod(self, path: str, mode: int, request_id: str) -> dict:
        await self.handlers.namespace.chmod(self.caller, path, mode, request_id)
        return {}

    @commands.Chown.responder
    async def chown(self, path: str, owner: str, group: str, request_id: str) -> dict:
        await self.handlers.namespace.chown(self.caller, path, owner, group, request_id)
        return {}

    @commands.ChangeGroup.responder
    async def change_group(self, group: str, users: list[str], add: bool) -> dict:
        return {
            "members": await self.handlers.namespace.change_group(self.caller, group, users, add)
        }

    @commands.ListGroups.responder
    def list_groups(self) -> dict:
        return {"groups": self.handlers.namespace.groups()}

    @commands.AddUser.responder
    async def add_user(self, name: str) -> dict:
        return {"path": await self.handlers.namespace.add_user(self.caller, name)}

    @commands.SetQuota.responder
    async def set_quota(
        self, path: str, clear: bool, files: int | None = None, bytes: int | None = None
    ) -> dict:
        return await self.handlers.namespace.set_quota(self.caller, path, files, bytes, clear)

    @commands.GetQuota.responder
    def get_quota(self, path: str) -> dict:
        return self.handlers.namespace.quota(self.caller, path)

    @commands.DiskUsage.responder
    def disk_usage(self, path: str) -> dict:
        return self.handlers.namespace.du(self.caller, path)

    @commands.ClusterSpace.responder
    def cluster_space(self) -> dict:
        return self.metaserver.space()

    @commands.ReportBadReplica.responder
    def report_bad_replica(
        self, chunk_id: int, version: int, address: Location, reason: str
    ) -> dict:
        self.handlers.monitor.bad_replica(chunk_id, version, address, reason)
        return {}

    # -- replica reports from dataservers ---------------------------------------------

    @commands.ReportChunks.responder
    def report_chunks(self, name: str, chunks: list[dict[str, int]], last: bool) -> dict:
        self.handlers.replicas.report_chunks(self.caller, name, chunks, last)
        return {}

    @commands.ChunkReceived.responder
    def chunk_received(self, name: str, chunk_id: int, version: int, length: int) -> dict:
        self.handlers.replicas.chunk_received(self.caller, name, chunk_id, version)
        return {}


class MetaserverMetrics:
    """Prometheus collector reading the metaserver's state at scrape time."""

    def __init__(self, metaserver: Metaserver) -> None:
        self._metaserver = metaserver

    def collect(self) -> Any:
        info = InfoMetricFamily("dfs_build", "DFS version and node identity")
        info.add_metric([], {"version": __version__, "role": "metaserver"})
        yield info
        audit = self._metaserver.audit
        if audit is not None:
            yield CounterMetricFamily(
                "dfs_audit_records_lost",
                "Audit records that could not be written to the audit log",
                value=audit.lost,
            )
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
        healing = self._metaserver.handlers.monitor
        safe_mode = self._metaserver.handlers.safe_mode
        for metric, help_text, value in (
            ("dfs_safe_mode", "1 while this metaserver is in safe mode", safe_mode.on),
            ("dfs_chunks", "Committed chunks in the namespace", healing.total_chunks),
            (
                "dfs_chunks_reported",
                "Committed chunks with at least one live replica",
                healing.reported_chunks,
            ),
            (
                "dfs_chunks_under_replicated",
                "Chunks with fewer replicas than their factor (missing ones included)",
                healing.under_replicated,
            ),
            (
                "dfs_chunks_missing",
                "Committed chunks with no live replica",
                healing.total_chunks - healing.reported_chunks,
            ),
            ("dfs_replica_copies_in_flight", "Replica copies under way", healing.copies_in_flight),
            ("dfs_balancer_running", "1 while the balancer runs", healing.balancer.running),
        ):
            yield GaugeMetricFamily(metric, help_text, value=float(value))
        for metric, help_text, value in (
            ("dfs_replica_copies", "Replica copies completed", healing.copies_done),
            ("dfs_replica_copies_failed", "Replica copies that failed", healing.copies_failed),
            ("dfs_replica_copied_bytes", "Bytes of replicas copied", healing.copied_bytes),
            (
                "dfs_replica_removals",
                "Replicas removed (surplus, stale, orphan, moved)",
                healing.removals,
            ),
            (
                "dfs_balancer_moved_bytes",
                "Bytes moved by the balancer",
                healing.balancer.moved_bytes,
            ),
        ):
            yield CounterMetricFamily(metric, help_text, value=value)


#: Seconds between looks for expired write leases.
LEASE_CHECK = 5.0


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

    replication = load_replication_config(config.replication_config)
    security = load_security_config(config.security_config)
    tokens = load_token_issuer(security)
    trust = TrustService(
        reactor,
        credentials,
        identity,
        config.tls,
        source,
        security,
        tokens=tokens,
    )
    password = read_secret(
        security.raft_password_file, str(security.source), "raft_password_file", "the Raft password"
    ).decode("utf-8", "replace")
    audit = open_audit_log(security, reactor)
    limits = ServerLimits(security.limits, reactor)
    # SIGHUP: every key of security_config.json but raft_password_file and
    # superusergroup applies without a restart.
    reload = SecurityReload(
        reactor,
        trust,
        security,
        [
            trust.apply_security,
            partial(apply_token_lifetime, tokens),
            partial(apply_limits, limits),
            audit.apply_security,
        ],
        used=ALL_KEYS,
    )
    raft_dir = config.data_dir / "raft"
    raft_dir.mkdir(mode=0o700, exist_ok=True)
    if not config.raft_fsync:
        Metaserver.log.warn(
            "raft_fsync is off: a power loss can lose acknowledged namespace changes "
            "(for measurements only)"
        )
    namespace = NamespaceLog(Namespace(root_owner="dfs", root_group=security.superusergroup))
    raft = RaftService(
        reactor,
        RaftSettings(
            self_address=str(config.raft_listen),
            partners=tuple(str(partner) for partner in config.raft_partners),
            data_dir=raft_dir,
            password=password,
            listen=str(config.advertise or config.listen),
            fsync=config.raft_fsync,
            compaction_entries=config.raft_snapshot_entries,
            compaction_seconds=config.raft_snapshot_interval,
        ),
        namespace,
        on_fatal=lambda message: stop_at_once("dfs-meta", message),
    )
    try:
        raft.open_journal()
    except (JournalCorrupt, OSError) as error:
        raise StartupError(f"cannot open the Raft journal: {error}") from None
    registry = DataserverRegistry(dead_after=config.dataserver_dead_after)
    sessions: dict[str, MetaserverSession] = {}
    log = RaftLog(raft, namespace)
    backups = BackupFolder(reactor, log, config.data_dir / "backups")
    handlers = wire(
        reactor,
        log,
        registry,
        replication,
        tokens,
        config.lease_period,
        sessions.get,
        backups,
    )
    metaserver = Metaserver(
        identity=identity,
        config=config,
        clock=reactor,
        registry=registry,
        handlers=handlers,
        raft=raft,
        audit=audit,
        sessions=sessions,
    )
    factory = Factory()
    factory.protocol = lambda: MetaserverSession(metaserver)

    top = MultiService()
    top.setName("dfs-meta")
    children: list[Any] = [
        raft,
        backups,
        trust,
        reload,
        tls_listener("dfs-meta", reactor, config.listen, credentials, factory, limits=limits),
        TimerService(
            min(LEASE_CHECK, config.lease_period / 4),
            lambda: Deferred.fromCoroutine(handlers.chunks.recover_expired_leases()),
        ),
        # Check often enough that a dead dataserver is noticed within ~10% of the timeout.
        TimerService(max(0.1, config.dataserver_dead_after / 10), metaserver.expire_dataservers),
        TimerService(replication.replication_interval, handlers.monitor.tick),
    ]
    if config.http_listen is not None:
        metrics = CollectorRegistry()
        metrics.register(MetaserverMetrics(metaserver))
        children.append(
            http_listener(
                "dfs-meta", reactor, config.http_listen, status_site(metaserver.status, metrics)
            )
        )
    # Stopped last (children stop in reverse order): operations answered while the
    # others stop are still recorded.
    children.insert(0, audit)
    add_all(top, children)
    return top
