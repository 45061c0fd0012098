"""The namespace side of the metaserver: files, chunks, leases, locations.

Mutations become operations of :mod:`dfs.metaserver.namespace`, replicated through
Raft and answered once committed; reads look at the local namespace under the
Raft lock. Where replicas are and where new ones go (soft state, never replicated)
is decided here too: placement for new chunks, locations from dataserver reports,
and the replicas dataservers should delete (sent with their heartbeat answers).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger

from dfs.config import Address, ReplicationConfig
from dfs.metaserver import backup
from dfs.metaserver import namespace as ns
from dfs.metaserver.healing import ReplicationMonitor
from dfs.metaserver.locations import ChunkLocations
from dfs.metaserver.placement import Placement
from dfs.metaserver.raft import NamespaceLog, RaftService
from dfs.metaserver.registry import DataserverRegistry, DataserverState
from dfs.protocol import records
from dfs.protocol.errors import (
    InvalidArgument,
    IsADirectory,
    NoSpace,
    PermissionDenied,
    SafeMode,
    UnknownDataserver,
)
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity, Role
from dfs.security.tokens import READ, WRITE, TokenIssuer, TokenKeys

#: A page of a listing stops growing past this many bytes of entries, so that the
#: answer fits one AMP value (65,535 bytes) whatever the names are like.
PAGE_BYTES = 40_000
#: Entries of a directory one ListDirectory answers at most (fewer when they would
#: not fit one packed page, records.PAGE_LIMIT bytes).
LIST_LIMIT = 10_000
#: Chunks whose tokens one RenewChunkTokens renews: ~200 bytes each on the wire.
MAX_RENEWALS = 100


def _stat_entry(stat: ns.Stat) -> records.Entry:
    # A Stat is an Entry with the lease holder, which stays here.
    fields = attrs.fields(records.Entry)
    return records.Entry(*(getattr(stat, field.name) for field in fields))


def _quota_entry(usage: ns.QuotaUsage) -> dict[str, Any]:
    return {
        "path": usage.path,
        "files_quota": -1 if usage.files is None else usage.files,
        "bytes_quota": -1 if usage.bytes is None else usage.bytes,
        "names": usage.names,
        "space": usage.space,
    }


class FileService:
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        raft: RaftService,
        namespace: NamespaceLog,
        registry: DataserverRegistry,
        replication: ReplicationConfig,
        placement: Placement | None = None,
        lease_period: float = 60.0,
        session_for: Callable[[str], PeerSession | None] = lambda name: None,
        tokens: TokenIssuer | None = None,
    ) -> None:
        self._reactor = reactor
        #: mints the chunk access tokens handed out with locations and allocations
        #: (without one, as in tests that never reach a dataserver, a key of its own
        #: that no dataserver knows)
        self.tokens = tokens or TokenIssuer(TokenKeys(os.urandom(32)), 300.0)
        #: How long a writer's lease lasts without renewal (the client renews at a third).
        self.lease_period = lease_period
        self._raft = raft
        self._namespace = namespace
        self.registry = registry
        self.replication = replication
        self.locations = ChunkLocations()
        self.placement = placement or Placement()
        self._reports: dict[str, list[tuple[int, int]]] = {}
        self._loaded = False
        self._rng = random.Random()
        #: re-replication, removals, drains, balance, safe mode (leader decisions)
        self.healing = ReplicationMonitor(
            reactor,
            raft,
            namespace,
            registry,
            self.locations,
            replication,
            session_for,
            tokens=self.tokens,
        )
        #: backups taken here, held while an administrator fetches them
        self.backups = backup.BackupStore(reactor)

    # -- plumbing -------------------------------------------------------------------

    @staticmethod
    def caller(identity: Identity) -> ns.Caller:
        return ns.Caller(user=identity.name, superuser=identity.role is Role.ADMIN)

    @staticmethod
    def holder(identity: Identity, client_id: str) -> str:
        # The lease belongs to this identity's client: another identity presenting
        # the same client id is another holder.
        return f"{identity.name}|{client_id}"

    @property
    def ready(self) -> bool:
        """True once the namespace is replayed from the journal and can be served."""
        if self._loaded:
            return True
        if not self._raft.ready:
            return False
        # Reports that came in while the namespace was loading could not be told
        # stale from current then: sort them now, once.
        self._loaded = True
        for chunk_id, replicas in self.locations.items():
            for server, version in replicas.items():
                self._place_reported(server, chunk_id, version)
        return True

    def _check_ready(self) -> None:
        # Only the leader, settled in its term and within its lease, answers from
        # the namespace: a follower's copy may lag, so it sends the client on.
        self._raft.check_serving()
        if not self.ready:
            raise SafeMode("the metaserver is still loading the namespace; retry shortly")

    async def _mutate(self, operation: ns.Operation, *, in_safe_mode: bool = False) -> Any:
        self._check_ready()
        if not in_safe_mode:
            self.healing.check_mutation()
        result = await self._raft.submit(operation)
        if isinstance(result, ns.Err):
            raise result.exception()
        return result.value

    def _read(self, query: Any) -> Any:
        self._check_ready()
        result = self._namespace.read(query)
        if isinstance(result, ns.Err):
            raise result.exception()
        return result.value

    def _common(self, identity: Identity, request_id: str) -> dict[str, Any]:
        return {
            "caller": self.caller(identity),
            "now": self._reactor.seconds(),
            "request_id": request_id,
        }

    # -- namespace --------------------------------------------------------------------

    async def mkdir(
        self, identity: Identity, path: str, mode: int, parents: bool, request_id: str
    ) -> None:
        await self._mutate(ns.Mkdir(path, mode, parents, **self._common(identity, request_id)))

    async def create(
        self,
        identity: Identity,
        path: str,
        mode: int,
        replication: int,
        chunk_size: int,
        overwrite: bool,
        client_id: str,
        request_id: str,
    ) -> dict[str, Any]:
        replication = replication or self.replication.default_replication
        chunk_size = chunk_size or self.replication.chunk_size
        if not (
            self.replication.min_replication <= replication <= self.replication.max_replication
        ):
            raise InvalidArgument(
                f"{path}: replication {replication} is outside "
                f"{self.replication.min_replication}..{self.replication.max_replication}"
            )
        common = self._common(identity, request_id)
        result = await self._mutate(
            ns.Create(
                path,
                mode,
                replication,
                chunk_size,
                overwrite,
                lease_holder=self.holder(identity, client_id),
                lease_expires=common["now"] + self.lease_period,
                **common,
            )
        )
        self._drop_replicas(result.freed)
        return {
            "replication": result.stat.replication,
            "chunk_size": result.stat.chunk_size,
            "lease_period": self.lease_period,
        }

    async def add_chunk(
        self, identity: Identity, path: str, client_id: str, request_id: str
    ) -> dict[str, Any]:
        stat = self._read(lambda namespace: namespace.stat(path))
        if stat.kind != ns.FILE:
            raise InvalidArgument(f"{path} is not a file")
        draining = self._namespace.read(lambda namespace: namespace.decommissioned)
        targets = self.placement.choose(
            [record for record in self.registry.records() if record.name not in draining],
            stat.replication,
            stat.chunk_size,
        )
        needed = self._min_replicas(stat)
        if len(targets) < needed:
            raise NoSpace(
                f"{path}: {len(targets)} live dataservers have room for a chunk, "
                f"{needed} needed (min_replication)"
            )
        common = self._common(identity, request_id)
        chunk = await self._mutate(
            ns.AddChunk(
                path,
                self.holder(identity, client_id),
                common["now"] + self.lease_period,
                **common,
            )
        )
        if len(targets) < stat.replication:
            self.log.warn(
                "{path}: chunk {chunk_id} gets {count} of {wanted} replicas "
                "(not enough live dataservers with room)",
                path=path,
                chunk_id=chunk.chunk_id,
                count=len(targets),
                wanted=stat.replication,
            )
        return {
            "chunk_id": chunk.chunk_id,
            "version": chunk.version,
            "targets": [record.address for record in targets],
            "token": self.chunk_token(identity, chunk.chunk_id, chunk.version, WRITE),
        }

    def _min_replicas(self, stat: ns.Stat) -> int:
        """Replicas a chunk needs before it is committed: min_replication, or the
        file's own factor if that is lower."""
        return max(1, min(self.replication.min_replication, stat.replication))

    async def bump_chunk_version(
        self, identity: Identity, path: str, client_id: str, chunk_id: int, request_id: str
    ) -> int:
        chunk = await self._mutate(
            ns.BumpChunkVersion(
                path,
                self.holder(identity, client_id),
                chunk_id,
                **self._common(identity, request_id),
            )
        )
        return int(chunk.version)

    async def commit_chunk(
        self,
        identity: Identity,
        path: str,
        client_id: str,
        chunk_id: int,
        version: int,
        length: int,
        locations: list[str],
        request_id: str,
    ) -> None:
        stat = self._read(lambda namespace: namespace.stat(path))
        needed = self._min_replicas(stat)
        if stat.kind == ns.FILE and len(set(locations)) < needed:
            raise InvalidArgument(
                f"{path}: chunk {chunk_id} is on {len(set(locations))} dataservers, "
                f"fewer than min_replication ({needed})"
            )
        await self._mutate(
            ns.CommitChunk(
                path,
                self.holder(identity, client_id),
                chunk_id,
                version,
                length,
                **self._common(identity, request_id),
            )
        )
        # The dataservers report it too; recording it now lets a reader find it
        # even if those reports are a moment late.
        by_address = {record.address: record.name for record in self.registry.records()}
        for address in locations:
            name = by_address.get(address)
            if name is not None:
                self.locations.add(name, chunk_id, version)

    async def renew_lease(self, identity: Identity, path: str, client_id: str) -> None:
        common = self._common(identity, "")
        # Writers keep their leases through safe mode, so they can carry on after.
        await self._mutate(
            ns.RenewLease(
                path, self.holder(identity, client_id), common["now"] + self.lease_period, **common
            ),
            in_safe_mode=True,
        )

    async def close(
        self, identity: Identity, path: str, client_id: str, length: int, request_id: str
    ) -> None:
        await self._mutate(
            ns.Close(
                path, self.holder(identity, client_id), length, **self._common(identity, request_id)
            )
        )

    async def delete(self, identity: Identity, path: str, recursive: bool, request_id: str) -> None:
        result = await self._mutate(
            ns.Delete(path, recursive, **self._common(identity, request_id))
        )
        self._drop_replicas(result.freed)

    async def rename(
        self, identity: Identity, source: str, destination: str, request_id: str
    ) -> None:
        result = await self._mutate(
            ns.Rename(source, destination, **self._common(identity, request_id))
        )
        self._drop_replicas(result.freed)

    async def set_replication(
        self, identity: Identity, path: str, replication: int, request_id: str
    ) -> None:
        if not (
            self.replication.min_replication <= replication <= self.replication.max_replication
        ):
            raise InvalidArgument(
                f"{path}: replication {replication} is outside "
                f"{self.replication.min_replication}..{self.replication.max_replication}"
            )
        await self._mutate(
            ns.SetReplication(path, replication, **self._common(identity, request_id))
        )

    async def chmod(self, identity: Identity, path: str, mode: int, request_id: str) -> None:
        await self._mutate(ns.Chmod(path, mode, **self._common(identity, request_id)))

    async def chown(
        self, identity: Identity, path: str, owner: str, group: str, request_id: str
    ) -> None:
        """``owner`` or ``group`` empty: that one is left as it is."""
        await self._mutate(
            ns.Chown(path, owner or None, group or None, **self._common(identity, request_id))
        )

    async def change_group(
        self, identity: Identity, group: str, users: list[str], add: bool
    ) -> list[str]:
        if len(users) > ns.MAX_GROUP_MEMBERS:
            raise InvalidArgument(f"at most {ns.MAX_GROUP_MEMBERS} users at once")
        members = await self._mutate(
            ns.ChangeGroup(group, tuple(users), add, **self._common(identity, ""))
        )
        self.log.info(
            "{admin}: group {group} {change} {users}",
            admin=identity.name,
            group=group,
            change="gains" if add else "loses",
            users=", ".join(users),
        )
        return list(members)

    def groups(self) -> list[dict[str, Any]]:
        self._check_ready()
        listing = self._namespace.read(lambda namespace: namespace.groups())
        return [{"name": name, "members": list(members)} for name, members in listing.items()]

    async def add_user(self, identity: Identity, name: str) -> str:
        stat = await self._mutate(ns.AddUser(name, **self._common(identity, "")))
        self.log.info("{admin}: added user {name}", admin=identity.name, name=name)
        return str(stat.path)

    async def set_quota(
        self, identity: Identity, path: str, files: int | None, size: int | None, clear: bool
    ) -> dict[str, Any]:
        usage = await self._mutate(
            ns.SetQuota(path, files, size, clear, **self._common(identity, ""))
        )
        self.log.info(
            "{admin}: quota of {path}: files {files}, bytes {size}",
            admin=identity.name,
            path=path,
            files=usage.files,
            size=usage.bytes,
        )
        return _quota_entry(usage)

    def quota(self, identity: Identity, path: str) -> dict[str, Any]:
        caller = self.caller(identity)
        return _quota_entry(self._read(lambda namespace: namespace.quota(path, caller)))

    async def recover_expired_leases(self) -> None:
        """Close files whose writer stopped renewing, at their committed length."""
        if not (self._raft.serving and self.ready) or self.healing.in_safe_mode:
            return
        now = self._reactor.seconds()
        admin = ns.Caller(user="dfs", superuser=True)
        for path in self._namespace.read(lambda namespace: namespace.expired_leases(now)):
            result = await self._raft.submit(ns.RecoverLease(path, caller=admin, now=now))
            self.log.info(
                "lease on {path} expired: {outcome}",
                path=path,
                outcome="closed at its committed length" if result.ok else result.message,
            )

    # -- queries ------------------------------------------------------------------------

    def stat(self, identity: Identity, path: str) -> dict[str, Any]:
        caller = self.caller(identity)
        return {"entry": _stat_entry(self._read(lambda namespace: namespace.stat(path, caller)))}

    def list_directory(
        self, identity: Identity, path: str, start_after: str, limit: int
    ) -> dict[str, Any]:
        caller = self.caller(identity)
        limit = max(1, min(limit, LIST_LIMIT))
        # One read: the page is one consistent view, however the directory changes.
        found = self._read(lambda namespace: namespace.list_page(path, caller, start_after, limit))
        # Its stats are entries as they are (the lease holder is not packed); the page
        # stops short where the next entry would not fit one packed value.
        page: list[records.Entry] = []
        size = records.PAGE_HEADER_BYTES
        for stat in found.entries:
            size += records.entry_size(stat)
            if size > records.PAGE_LIMIT:
                break
            page.append(stat)
        return {"entries": page, "more": found.more or len(page) < len(found.entries)}

    def get_chunks(
        self,
        identity: Identity,
        path: str,
        first: int,
        limit: int,
        client_host: str | None = None,
    ) -> dict[str, Any]:
        """A page of the file's chunks with their live replicas, best first for a
        reader on ``client_host``: those on its own host, then the rest in random
        order so that readers spread over the replicas. Each comes with a read token
        for ``identity``."""
        caller = self.caller(identity)
        stat = self._read(lambda namespace: namespace.stat(path, caller))
        if stat.kind != ns.FILE:
            raise IsADirectory(f"{path}: is a directory")
        chunks = self._read(lambda namespace: namespace.chunks(path, caller))
        alive = {
            record.name: record.address
            for record in self.registry.records()
            if record.state is DataserverState.ALIVE
        }
        page: list[records.ChunkRecord] = []
        size = 0
        limit = max(1, min(limit, 1000))
        index = first
        for chunk in chunks[first:]:
            if len(page) >= limit or size > PAGE_BYTES:
                break
            # A reader sees only committed bytes: the last chunk of a file being
            # written may still be growing and is left out until committed.
            if chunk.length == 0 and not stat.complete:
                index += 1
                continue
            addresses = [
                alive[name]
                for name in self.locations.holders(chunk.chunk_id, chunk.version)
                if name in alive
            ]
            self._rng.shuffle(addresses)
            addresses.sort(key=lambda address: Address.parse(address).host != client_host)
            token = self.chunk_token(identity, chunk.chunk_id, chunk.version, READ)
            record = records.ChunkRecord(
                chunk.chunk_id, chunk.version, chunk.length, tuple(addresses), token
            )
            page.append(record)
            size += records.chunk_record_size(record)
            index += 1
        return {"length": stat.length, "chunks": page, "more": index < len(chunks)}

    # -- chunk access tokens ------------------------------------------------------------

    def chunk_token(self, identity: Identity, chunk_id: int, version: int, operation: str) -> str:
        """A token for ``identity`` to ``operation`` (read or write) ``version`` of
        ``chunk_id`` on the dataservers; the caller has done the permission check."""
        return self.tokens.issue(
            chunk_id, version, operation, identity.name, self._reactor.seconds()
        )

    def renew_chunk_tokens(
        self, identity: Identity, path: str, operation: str, chunk_ids: list[int], client_id: str
    ) -> dict[str, Any]:
        """Fresh tokens for chunks of the file at ``path``, for a reader or writer
        whose tokens run out during a long transfer. A read token is given after the
        same checks as GetChunks; a write token only to the holder of the file's
        write lease (which it got from Create, after the permission checks)."""
        if operation not in (READ, WRITE):
            raise InvalidArgument(f"token operation {operation!r}: expected read or write")
        if len(chunk_ids) > MAX_RENEWALS:
            raise InvalidArgument(
                f"{len(chunk_ids)} chunks at once: at most {MAX_RENEWALS} per request"
            )
        # Reading: the same permission checks as get_chunks (keep the two alike).
        # Writing: the lease is the permission (a file may be write-only to its writer).
        caller = self.caller(identity)
        stat = self._read(lambda namespace: namespace.stat(path, caller))
        if stat.kind != ns.FILE:
            raise IsADirectory(f"{path}: is a directory")
        if operation == WRITE and stat.under_construction != self.holder(identity, client_id):
            raise PermissionDenied(f"{path}: {identity} does not hold its write lease")
        reader = caller if operation == READ else None
        versions = {
            chunk.chunk_id: chunk.version
            for chunk in self._read(lambda namespace: namespace.chunks(path, reader))
        }
        tokens = []
        for chunk_id in dict.fromkeys(chunk_ids):
            version = versions.get(chunk_id)
            if version is None:
                raise InvalidArgument(f"{path}: has no chunk {chunk_id}")
            token = self.chunk_token(identity, chunk_id, version, operation)
            tokens.append({"chunk_id": chunk_id, "version": version, "token": token})
        return {"tokens": tokens}

    def du(self, identity: Identity, path: str) -> dict[str, int]:
        caller = self.caller(identity)
        usage = self._read(lambda namespace: namespace.du(path, caller))
        return {
            "files": usage.files,
            "directories": usage.directories,
            "bytes": usage.bytes,
            "replicated_bytes": usage.replicated_bytes,
        }

    def df(self) -> dict[str, int]:
        records = self.registry.records()
        alive = [record for record in records if record.state is DataserverState.ALIVE]
        return {
            "capacity": sum(record.space.capacity for record in alive),
            "used": sum(record.space.used for record in alive),
            "free": sum(record.space.free for record in alive),
            "dataservers_alive": len(alive),
            "dataservers_dead": len(records) - len(alive),
        }

    # -- replicas: reports from dataservers and readers ------------------------------------

    def _current_version(self, chunk_id: int) -> int | None:
        return self._namespace.read(lambda namespace: namespace.chunk_version(chunk_id))

    def _drop_replicas(self, freed: Any) -> None:
        for chunk in freed:
            # Each dataserver deletes the version it holds, which may be older.
            for server, held in self.locations.replicas(chunk.chunk_id).items():
                self.locations.schedule_deletion(server, chunk.chunk_id, held)

    def _place_reported(self, server: str, chunk_id: int, version: int) -> None:
        current = self._current_version(chunk_id)
        if current is not None and version < current:
            # Stale: a newer version was written without this replica.
            self.locations.schedule_deletion(server, chunk_id, version)
            self.log.info(
                "stale replica of chunk {chunk_id} (version {version} < {current}) "
                "on {server} will be deleted",
                chunk_id=chunk_id,
                version=version,
                current=current,
                server=server,
            )
        else:
            # Unknown chunks (orphans) are kept on record for now: a file being
            # written may not have committed them yet.
            self.locations.add(server, chunk_id, version)

    def report_chunks(
        self, identity: Identity, name: str, chunks: list[dict[str, int]], last: bool
    ) -> None:
        if name != identity.name:
            raise PermissionDenied(f"{identity} cannot report for dataserver {name!r}")
        pending = self._reports.setdefault(name, [])
        pending.extend((chunk["chunk_id"], chunk["version"]) for chunk in chunks)
        if last:
            replicas = self._reports.pop(name)
            self.locations.forget_server(name)
            for chunk_id, version in replicas:
                self._place_reported(name, chunk_id, version)
            self.log.info(
                "dataserver {name} reported {count} replicas", name=name, count=len(replicas)
            )

    def chunk_received(self, identity: Identity, name: str, chunk_id: int, version: int) -> None:
        if name != identity.name:
            raise PermissionDenied(f"{identity} cannot report for dataserver {name!r}")
        self._place_reported(name, chunk_id, version)

    def bad_replica(self, chunk_id: int, version: int, address: str, reason: str) -> None:
        for record in self.registry.records():
            if record.address == address:
                self.healing.suspect(record.name, chunk_id, version, reason)

    def replica_corrupt(
        self, identity: Identity, name: str, chunk_id: int, version: int, reason: str
    ) -> None:
        if name != identity.name:
            raise PermissionDenied(f"{identity} cannot report for dataserver {name!r}")
        self.healing.replica_corrupt(name, chunk_id, version, reason)

    def dataserver_dead(self, name: str) -> None:
        self.locations.forget_server(name)

    def deletions_for(self, name: str) -> list[dict[str, int]]:
        # No deletion leaves a leader still in safe mode (nor a follower): what it
        # scheduled waits.
        if self.healing.in_safe_mode or not self._raft.serving:
            return []
        return [
            {"chunk_id": chunk_id, "version": version}
            for chunk_id, version in self.locations.take_deletions(name)
        ]

    # -- cluster management (admins) ---------------------------------------------------

    def fsck(self, path: str, start: int, limit: int) -> dict[str, Any]:
        tree = self._read(lambda namespace: namespace.tree(path))
        problems, summary = self.healing.fsck(tree)
        start = max(0, start)
        limit = max(1, min(limit, 1000))
        page: list[dict[str, Any]] = []
        size = 0
        for entry in problems[start:]:
            entry_size = 150 + len(entry["path"].encode()) + 20 * len(entry["locations"])
            if len(page) >= limit or size + entry_size > PAGE_BYTES:
                break
            page.append(entry)
            size += entry_size
        return {"problems": page, "more": start + len(page) < len(problems), **summary}

    async def set_decommission(self, identity: Identity, name: str, on: bool) -> None:
        if on and self.registry.get(name) is None:
            raise UnknownDataserver(f"no dataserver named {name!r} has registered")
        self.healing.drain_remaining.pop(name, None)
        await self._mutate(
            ns.SetDecommission(name, on, **self._common(identity, "")), in_safe_mode=True
        )
        self.log.info(
            "{admin} {action} dataserver {name}",
            admin=identity.name,
            action="decommissioned" if on else "recommissioned",
            name=name,
        )

    def drain_state(self, name: str) -> str | None:
        """ "decommissioning" or "decommissioned" for a dataserver being drained."""
        draining = self._namespace.read(lambda namespace: namespace.decommissioned)
        if name not in draining:
            return None
        return (
            "decommissioned" if self.healing.drain_remaining.get(name) == 0 else "decommissioning"
        )

    async def control_safe_mode(self, identity: Identity, action: str) -> dict[str, Any]:
        self._raft.check_serving()
        if action == "enter":
            await self._mutate(
                ns.SetSafeMode(True, **self._common(identity, "")), in_safe_mode=True
            )
        elif action == "leave":
            await self._mutate(
                ns.SetSafeMode(False, **self._common(identity, "")), in_safe_mode=True
            )
            self.healing.leave_auto_safe_mode()
        elif action != "get":
            raise InvalidArgument(f"safe mode action {action!r}: expected get, enter or leave")
        self.healing.refresh()
        if action != "get":
            self.log.info("{admin}: safe mode {action}", admin=identity.name, action=action)
        return self.healing.safe_mode_state()

    def start_backup(self, leader: str) -> dict[str, Any]:
        """Snapshot the namespace into a backup file held for ReadBackup. Only the
        serving leader takes one: its state holds everything committed. The
        snapshot is taken under the namespace's lock, in one go, so it is one
        consistent state however long the pages take to fetch."""
        self._check_ready()
        status = self._raft.status()
        payload = self._namespace.read(lambda namespace: namespace.snapshot())
        data = backup.encode(
            payload,
            leader=leader,
            # Read before the snapshot: it holds at least the entries up to here.
            raft_index=int(status.get("last_applied", 0)),
            raft_term=int(status.get("term", 0)),
            created=self._reactor.seconds(),
        )
        backup_id, held = self.backups.add(data)
        self.log.info(
            "backup {backup_id} taken: {size} bytes at Raft index {index}",
            backup_id=backup_id,
            size=len(data),
            index=status.get("last_applied", 0),
        )
        return {"backup_id": backup_id, "size": len(data), "sha256": held.sha256}

    def read_backup(self, backup_id: str, offset: int, length: int) -> dict[str, Any]:
        if offset < 0 or not 0 < length <= backup.MAX_PAGE:
            raise InvalidArgument(
                f"offset {offset}, length {length}: expected offset >= 0 and "
                f"0 < length <= {backup.MAX_PAGE}"
            )
        data = self.backups.page(backup_id, offset, length)
        if data is None:
            raise InvalidArgument(
                f"backup {backup_id!r} is not held here (the leader changed, or it "
                "expired): take the backup again"
            )
        return {"data": data}

    def control_balancer(self, identity: Identity, action: str, threshold: float) -> dict[str, Any]:
        self._raft.check_serving()
        if action == "start":
            if not 0 <= threshold < 100:
                raise InvalidArgument(f"threshold {threshold}: expected a percentage in 0..100")
            self.healing.balancer.start(threshold or self.replication.balancer_threshold)
        elif action == "stop":
            self.healing.balancer.stop()
        elif action != "status":
            raise InvalidArgument(f"balancer action {action!r}: expected start, stop or status")
        if action != "status":
            self.log.info("{admin}: balancer {action}", admin=identity.name, action=action)
        return self.healing.balancer_state()
