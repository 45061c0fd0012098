"""Replica writes in a pipeline, and replica reads, on one dataserver.

A writer opens a pipeline on the first dataserver with the rest of the pipeline as
``downstream``; each dataserver stores a packet and forwards it to the next, and
answers only when the next one has answered, so an acknowledgement from the first
means every replica holds the packet. When a dataserver of the pipeline fails,
the one above answers :class:`PipelineBroken` naming it; the writer then asks the
survivors to keep the acknowledged bytes under a new chunk version and goes on.

Write state is kept per chunk, not per connection: a survivor must still hold its
partial replica when the connection from a failed upstream dataserver drops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from dfs.config import Address
from dfs.dataserver.chunkstore import ChunkStore, ChunkWriter, StoredChunk
from dfs.protocol.commands import (
    AbortChunkWrite,
    FinishChunkWrite,
    OpenChunkWrite,
    RecoverChunkWrite,
    WriteChunkData,
)
from dfs.protocol.errors import DFSError, InvalidArgument, PipelineBroken
from dfs.protocol.session import PeerSession

#: How long a write may sit idle before its partial replica is thrown away.
ABANDONED_AFTER = 600.0
#: How long a dataserver waits for the next one in the pipeline to answer.
HOP_TIMEOUT = 30.0


class PeerConnections:
    """Sessions with other dataservers, one per address, dialled on demand."""

    def __init__(self, reactor: Any, connect: Callable[[Address], Deferred[PeerSession]]) -> None:
        self._reactor = reactor
        self._connect = connect
        self._sessions: dict[str, PeerSession] = {}

    async def get(self, address: str, *, fresh: bool = False) -> PeerSession:
        session = self._sessions.get(address)
        if session is not None and not fresh and session.is_open:
            return session
        session = await self._connect(Address.parse(address))
        self._sessions[address] = session
        return session

    def close_all(self) -> None:
        for session in self._sessions.values():
            if session.transport is not None:
                session.transport.loseConnection()
        self._sessions.clear()


@attrs.define
class ReplicaWrite:
    chunk_id: int
    version: int
    #: None once the replica is complete but the pipeline is not: a recovery that
    #: came after this replica was finished gave it a new version, and the writer
    #: will finish the chunk again.
    writer: ChunkWriter | None
    downstream: list[str]
    next_hop: PeerSession | None
    last_activity: float
    complete: StoredChunk | None = None

    def active(self) -> ChunkWriter:
        if self.writer is None:
            raise InvalidArgument(f"chunk {self.chunk_id} version {self.version} is finished")
        return self.writer

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.abort()


class ChunkService:
    """The chunk side of a dataserver: its store, the writes in progress, reads."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        store: ChunkStore,
        peers: PeerConnections,
        address: str,
        on_received: Callable[[StoredChunk], None],
    ) -> None:
        self._reactor = reactor
        self.store = store
        self._peers = peers
        self.address = address
        self._on_received = on_received
        self._writes: dict[int, ReplicaWrite] = {}

    # -- writes ---------------------------------------------------------------

    def _write(self, chunk_id: int, version: int) -> ReplicaWrite:
        write = self._writes.get(chunk_id)
        if write is None or write.version != version:
            raise InvalidArgument(
                f"no write of chunk {chunk_id} version {version} in progress here"
            )
        write.last_activity = self._reactor.seconds()
        return write

    async def _hop(
        self, chain: list[str], command: Any, *, fresh: bool = False, **arguments: Any
    ) -> Any:
        """Call the next dataserver, ``chain[0]``; any failure there is PipelineBroken
        naming it (or naming the one further down that it reports)."""
        address = chain[0]
        try:
            session = await self._peers.get(address, fresh=fresh)
            call = session.callRemote(command, **arguments)
            call.addTimeout(HOP_TIMEOUT, self._reactor)
            return await call
        except PipelineBroken:
            raise
        except Exception as error:
            self.log.warn(
                "pipeline hop to {address} failed: {error}",
                address=address,
                error=f"{type(error).__name__}: {error}",
            )
            raise PipelineBroken(address) from None

    async def open_write(self, chunk_id: int, version: int, downstream: list[str]) -> None:
        existing = self._writes.pop(chunk_id, None)
        if existing is not None:
            # A writer starting over (after a failure before any recovery) replaces
            # whatever partial replica an earlier attempt left.
            existing.discard()
        writer = self.store.open_writer(chunk_id, version)
        write = ReplicaWrite(
            chunk_id, version, writer, list(downstream), None, self._reactor.seconds()
        )
        self._writes[chunk_id] = write
        if downstream:
            try:
                await self._hop(
                    downstream,
                    OpenChunkWrite,
                    chunk_id=chunk_id,
                    version=version,
                    downstream=downstream[1:],
                )
            except DFSError:
                self._writes.pop(chunk_id, None)
                writer.abort()
                raise
            write.next_hop = await self._peers.get(downstream[0])

    async def write(self, chunk_id: int, version: int, offset: int, data: bytes) -> None:
        writer = self._write(chunk_id, version).active()
        if offset != writer.length:
            raise InvalidArgument(
                f"chunk {chunk_id}: packet at offset {offset}, expected {writer.length}"
            )
        writer.append(data)
        write = self._writes[chunk_id]
        if write.downstream:
            await self._hop(
                write.downstream,
                WriteChunkData,
                chunk_id=chunk_id,
                version=version,
                offset=offset,
                data=data,
            )

    async def finish(self, chunk_id: int, version: int, length: int) -> list[str]:
        write = self._write(chunk_id, version)
        done = write.complete.length if write.complete else write.active().length
        if length != done:
            raise InvalidArgument(
                f"chunk {chunk_id}: finished at {length} bytes but {done} were written"
            )
        local: Deferred[StoredChunk] = (
            succeed(write.complete) if write.complete else deferToThread(write.active().finish)
        )
        remote: Deferred[Any] = (
            Deferred.fromCoroutine(
                self._hop(
                    write.downstream,
                    FinishChunkWrite,
                    chunk_id=chunk_id,
                    version=version,
                    length=length,
                )
            )
            if write.downstream
            else succeed({"locations": []})
        )
        # Wait for both: a failure below must not leave this replica half-way through
        # its finish when the writer's recovery arrives.
        [(stored_ok, stored), (remote_ok, answer)] = await DeferredList(
            [local, remote], consumeErrors=True
        )
        if not stored_ok:
            self._writes.pop(chunk_id, None)
            stored.raiseException()
        if write.complete is None:
            write.writer, write.complete = None, stored
            self.log.info(
                "chunk {chunk_id} version {version} stored ({length} bytes)",
                chunk_id=chunk_id,
                version=version,
                length=length,
            )
            self._on_received(stored)
        if not remote_ok:
            answer.raiseException()
        self._writes.pop(chunk_id, None)
        return [self.address, *answer["locations"]]

    async def recover(
        self, chunk_id: int, version: int, new_version: int, length: int, downstream: list[str]
    ) -> None:
        write = self._writes.get(chunk_id)
        if write is None or write.writer is None:
            # Finished here before the failure showed: the complete replica takes the
            # new version, and a second FinishChunkWrite finds it done.
            stored = await deferToThread(
                self.store.rebase_complete, chunk_id, version, new_version, length
            )
            write = ReplicaWrite(
                chunk_id, new_version, None, [], None, self._reactor.seconds(), stored
            )
            self._writes[chunk_id] = write
            self._on_received(stored)
        else:
            # A survivor may still be at any older version: a recovery that failed
            # half-way already moved the ones above it on.
            if not write.version <= version < new_version:
                raise InvalidArgument(f"no write of chunk {chunk_id} to recover here")
            writer = write.active()
            if length > writer.length:
                raise InvalidArgument(
                    f"chunk {chunk_id}: asked to keep {length} bytes, only {writer.length} here"
                )
            writer.truncate(length)
            writer.rebase(new_version)
        write.last_activity = self._reactor.seconds()
        write.version = new_version
        write.downstream = list(downstream)
        write.next_hop = None
        self.log.info(
            "chunk {chunk_id} recovered at {length} bytes as version {version}",
            chunk_id=chunk_id,
            length=length,
            version=new_version,
        )
        if downstream:
            await self._hop(
                downstream,
                RecoverChunkWrite,
                fresh=True,
                chunk_id=chunk_id,
                version=version,
                new_version=new_version,
                length=length,
                downstream=downstream[1:],
            )

    async def abort(self, chunk_id: int, version: int) -> None:
        write = self._writes.get(chunk_id)
        if write is None or write.version != version:
            return
        del self._writes[chunk_id]
        write.discard()
        if write.downstream:
            try:
                await self._hop(
                    write.downstream, AbortChunkWrite, chunk_id=chunk_id, version=version
                )
            except PipelineBroken:
                pass  # the one below throws its partial replica away when it expires

    def expire_abandoned(self) -> None:
        now = self._reactor.seconds()
        for chunk_id, write in list(self._writes.items()):
            if now - write.last_activity > ABANDONED_AFTER:
                del self._writes[chunk_id]
                write.discard()
                self.log.info(
                    "abandoned write of chunk {chunk_id} version {version} discarded",
                    chunk_id=chunk_id,
                    version=write.version,
                )

    # -- reads ----------------------------------------------------------------

    def read(
        self, chunk_id: int, version: int, offset: int, length: int
    ) -> tuple[bytes, list[int]]:
        return self.store.read_with_checksums(chunk_id, version, offset, length)
