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
from twisted.internet.defer import Deferred, gatherResults
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
    writer: ChunkWriter
    downstream: list[str]
    next_hop: PeerSession | None
    last_activity: float


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
            existing.writer.abort()
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
        write = self._write(chunk_id, version)
        if offset != write.writer.length:
            raise InvalidArgument(
                f"chunk {chunk_id}: packet at offset {offset}, expected {write.writer.length}"
            )
        write.writer.append(data)
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
        if length != write.writer.length:
            raise InvalidArgument(
                f"chunk {chunk_id}: finished at {length} bytes "
                f"but {write.writer.length} were written"
            )
        local = deferToThread(write.writer.finish)
        locations = [self.address]
        if write.downstream:
            remote = Deferred.fromCoroutine(
                self._hop(
                    write.downstream,
                    FinishChunkWrite,
                    chunk_id=chunk_id,
                    version=version,
                    length=length,
                )
            )
            stored, answer = await gatherResults([local, remote], consumeErrors=True).addErrback(
                _first_error
            )
            locations += answer["locations"]
        else:
            stored = await local
        self._writes.pop(chunk_id, None)
        self.log.info(
            "chunk {chunk_id} version {version} stored ({length} bytes)",
            chunk_id=chunk_id,
            version=version,
            length=length,
        )
        self._on_received(stored)
        return locations

    async def recover(
        self, chunk_id: int, version: int, new_version: int, length: int, downstream: list[str]
    ) -> None:
        write = self._writes.get(chunk_id)
        # A survivor may still be at any older version: a recovery that failed
        # half-way already moved the ones above it on.
        if write is None or not write.version <= version < new_version:
            raise InvalidArgument(f"no write of chunk {chunk_id} to recover here")
        write.last_activity = self._reactor.seconds()
        if length > write.writer.length:
            raise InvalidArgument(
                f"chunk {chunk_id}: asked to keep {length} bytes, only {write.writer.length} here"
            )
        write.writer.truncate(length)
        write.writer.rebase(new_version)
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
        write.writer.abort()
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
                write.writer.abort()
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


def _first_error(failure: Any) -> Any:
    # gatherResults wraps the first failure in FirstError: hand on the real one.
    return failure.value.subFailure
