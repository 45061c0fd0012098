"""Replica writes in a pipeline, and replica reads, on one dataserver.

A writer opens a pipeline on the first dataserver with the rest of the pipeline as
``downstream`` (OpenChunkWrite, over AMP), then sends the chunk's packets on a chunk
stream (:mod:`dfs.protocol.stream`). Each dataserver forwards a packet to the next
as it arrives, appends it to its replica, and acknowledges upstream the bytes that
are stored both here and below, so an acknowledgement from the first means every
replica holds the bytes. When a dataserver of the pipeline fails, the one above
reports a failure naming it (a FAIL frame, or :class:`PipelineBroken` for an AMP
command); the writer then asks the survivors to keep the acknowledged bytes under a
new chunk version and goes on.

Write state is kept per chunk, not per connection: a survivor must still hold its
partial replica when the connection from a failed upstream dataserver drops.

Both ends of a write go down the pipeline at once rather than hop by hop. A
dataserver forwards OpenChunkWrite to the next before its own replica is open (the
open runs in a thread meanwhile), so every replica opens at the same time. A writer
sends FinishChunkWrite right behind the last packet, without waiting for its
acknowledgement; each dataserver forwards it at once and completes its own replica
(fsync of data, checksums and folder) as soon as the last packet is stored here, so
the replicas' fsyncs overlap. The answer still comes only once every replica is
complete.

A chunk small enough to travel in one request (a small file) skips all of that:
StoreChunk carries its bytes, goes on down at once, and each dataserver opens, fills
and completes its replica in one visit to a thread; the answer comes once every
replica is on disk, as FinishChunkWrite's does. One trip down and up the pipeline
instead of two, and no chunk stream.

Every command of a write carries the writer's token (checked by the session before
it gets here) and passes it on to the next dataserver, which checks it too. The
chunk stream carries none: its data goes only to a write opened (or recovered) by
the same peer, so only after a token was found good.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from dfs.dataserver.chunkstore import ChunkStore, ChunkWriter, StoredChunk
from dfs.protocol.commands import (
    AbortChunkWrite,
    FinishChunkWrite,
    OpenChunkWrite,
    RecoverChunkWrite,
    StoreChunk,
)
from dfs.protocol.errors import DFSError, InvalidArgument, PipelineBroken
from dfs.protocol.records import Location
from dfs.protocol.session import PeerSession
from dfs.protocol.stream import ChunkStream, StreamPool
from dfs.protocol.version import STORE_CHUNK_SINCE
from dfs.security.identity import Identity

#: Bytes a dataserver lets wait before it acknowledges them upstream at once; fewer
#: are acknowledged after ACK_DELAY seconds.
ACK_EVERY = 256 * 1024
ACK_DELAY = 0.002
#: How long a write may sit idle before its partial replica is thrown away.
ABANDONED_AFTER = 600.0
#: How long a dataserver waits for the next one in the pipeline to answer, and for
#: the packets a FinishChunkWrite that came ahead of them names.
HOP_TIMEOUT = 30.0

#: Runs a blocking call of the chunk store in a thread: ``(function, *args)``.
RunInThread = Callable[..., "Deferred[Any]"]


class PeerConnections:
    """Sessions with other dataservers, one per location, dialled on demand."""

    def __init__(self, reactor: Any, connect: Callable[[Location], Deferred[PeerSession]]) -> None:
        self._reactor = reactor
        self._connect = connect
        self._sessions: dict[Location, PeerSession] = {}

    async def get(self, address: Location, *, fresh: bool = False) -> PeerSession:
        session = self._sessions.get(address)
        if session is not None and not fresh and session.is_open:
            return session
        session = await self.dial(address)
        self._sessions[address] = session
        return session

    async def dial(self, address: Location) -> PeerSession:
        """A new session of its own (for a chunk stream)."""
        return await self._connect(address)

    def close_all(self) -> None:
        for session in self._sessions.values():
            if session.transport is not None:
                session.transport.loseConnection()
        self._sessions.clear()


@attrs.define(eq=False)
class ReplicaWrite:
    chunk_id: int
    version: int
    #: None once the replica is complete but the pipeline is not: a recovery that
    #: came after this replica was finished gave it a new version, and the writer
    #: will finish the chunk again.
    writer: ChunkWriter | None
    downstream: list[Location]
    #: who opened (or last recovered) the write: only it may send its data
    owner: Identity | None
    last_activity: float
    complete: StoredChunk | None = None
    #: where its data comes from and acknowledgements go
    upstream: ChunkStream | None = None
    #: the stream to ``downstream[0]``, and who listens to it for this write
    outbound: ChunkStream | None = None
    listener: _Below | None = None
    #: bytes acknowledged from below (every byte, without a dataserver below)
    below: int = 0
    #: bytes acknowledged upstream
    acked: int = 0
    #: the dataserver that failed, once the write broke on its stream
    broken: str | None = None
    #: the stream last told of the break
    told: ChunkStream | None = None
    #: a pending acknowledgement of fewer than ACK_EVERY bytes, sent soon
    ack_timer: Any = None
    #: True while the replica is being opened (in a thread)
    opening: bool = False
    #: the completion of the replica (fsyncs, in a thread) while it runs
    storing: Deferred[Any] | None = None
    #: why completing the replica failed
    store_failure: Failure | None = None
    #: commands waiting for the write to change: bytes stored, acknowledged from
    #: below, the write broken, recovered, completed or given up
    waiters: list[Deferred[None]] = attrs.Factory(list)

    def changed(self) -> Deferred[None]:
        """Fires at the write's next change."""
        waiter: Deferred[None] = Deferred()
        self.waiters.append(waiter)
        return waiter

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def active(self) -> ChunkWriter:
        if self.writer is None:
            raise InvalidArgument(f"chunk {self.chunk_id} version {self.version} is finished")
        return self.writer

    def stored(self) -> int:
        if self.writer is not None:
            return self.writer.length
        return self.complete.length if self.complete is not None else 0

    def detach(self) -> None:
        """Stop listening to the stream below."""
        if self.outbound is not None and self.listener is not None:
            self.outbound.unwatch(self.chunk_id, self.listener.version, self.listener)
        self.outbound = self.listener = None

    def discard(self) -> None:
        self.detach()
        if self.writer is not None:
            self.writer.abort()
        self.wake()


@attrs.define(eq=False)
class _Below:
    """What the stream to the next dataserver says about one write."""

    service: ChunkService
    write: ReplicaWrite
    version: int

    def chunk_acked(self, length: int) -> None:
        self.service.acked_below(self.write, self.version, length)

    def chunk_failed(self, address: str) -> None:
        self.service.failed_below(self.write, self.version, address)


class ChunkService:
    """The chunk side of a dataserver: its store, the writes in progress, reads.

    It is also the :class:`~dfs.protocol.stream.DataReceiver` of every chunk stream
    opened to this dataserver."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        store: ChunkStore,
        peers: PeerConnections,
        location: Location,
        on_received: Callable[[StoredChunk], None],
        run_in_thread: RunInThread = deferToThread,
    ) -> None:
        self._reactor = reactor
        self._run = run_in_thread
        self.store = store
        self._peers = peers
        #: where this dataserver is, as the FinishChunkWrite answers name it
        self.location = location
        #: the same as text, as failures going upstream name it
        self.address = str(location)
        self._on_received = on_received
        self._writes: dict[int, ReplicaWrite] = {}
        self._streams = StreamPool(reactor, peers.dial, HOP_TIMEOUT)
        #: writes that stored packets since the last acknowledgements went out
        self._to_ack: set[ReplicaWrite] = set()

    def stream(self, peer: Identity | None, address: str) -> ChunkStream:
        """The receiving end of a chunk stream opened by ``peer``."""
        return ChunkStream(
            self._reactor, peer=peer, address=address, timeout=HOP_TIMEOUT, receiver=self
        )

    # -- writes ---------------------------------------------------------------

    def _write(self, chunk_id: int, version: int) -> ReplicaWrite:
        write = self._writes.get(chunk_id)
        if write is None or write.version != version:
            raise InvalidArgument(
                f"no write of chunk {chunk_id} version {version} in progress here"
            )
        write.last_activity = self._reactor.seconds()
        return write

    def _forget(self, write: ReplicaWrite) -> None:
        if self._writes.get(write.chunk_id) is write:
            del self._writes[write.chunk_id]
        write.detach()
        write.wake()

    def _current(self, write: ReplicaWrite, version: int) -> bool:
        """Whether ``write`` is still this chunk's write, at ``version``."""
        return self._writes.get(write.chunk_id) is write and write.version == version

    async def _until(
        self, write: ReplicaWrite, version: int, condition: Callable[[], bool], what: str
    ) -> None:
        """Wait until ``condition()`` holds for the write: PipelineBroken naming the
        dataserver that failed if the write breaks first, InvalidArgument if it is
        recovered, replaced or given up, or if ``what`` does not happen within
        HOP_TIMEOUT."""
        deadline = self._reactor.seconds() + HOP_TIMEOUT
        while True:
            if not self._current(write, version):
                raise InvalidArgument(
                    f"chunk {write.chunk_id} version {version}: recovered, replaced or "
                    f"given up while waiting for {what}"
                )
            if condition():
                return
            if write.broken is not None:
                raise PipelineBroken(write.broken)
            left = deadline - self._reactor.seconds()
            waiter = write.changed()
            waiter.addTimeout(max(0.0, left), self._reactor)
            try:
                await waiter
            except TimeoutError:
                raise InvalidArgument(
                    f"chunk {write.chunk_id} version {version}: no {what} within {HOP_TIMEOUT:g} s"
                ) from None

    async def _settled(self, write: ReplicaWrite) -> None:
        """Wait until no thread works on the replica (being opened or completed)."""
        while write.opening or write.storing is not None:
            await write.changed()

    async def _hop(
        self, chain: Sequence[Location], command: Any, *, fresh: bool = False, **arguments: Any
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
            self._hop_failed(address, error)
            raise PipelineBroken(str(address)) from None

    def _hop_failed(self, address: Location, error: object) -> None:
        self.log.warn(
            "pipeline hop to {address} failed: {error}",
            address=address,
            error=f"{type(error).__name__}: {error}",
        )

    async def _connect_below(self, write: ReplicaWrite) -> None:
        """Send the write's data on to ``downstream[0]`` on the chunk stream to it."""
        write.detach()
        if not write.downstream:
            return
        address = write.downstream[0]
        version = write.version
        try:
            stream = await self._streams.get(address)
        except Exception as error:
            self._hop_failed(address, error)
            raise PipelineBroken(str(address)) from None
        self._check_current(write, version)
        write.outbound = stream
        write.listener = _Below(self, write, version)
        stream.watch(write.chunk_id, version, write.listener)

    async def open_write(
        self,
        chunk_id: int,
        version: int,
        downstream: Sequence[Location],
        owner: Identity | None = None,
        *,
        expected_length: int | None = None,
        token: str | None = None,
    ) -> None:
        """Start this replica and the pipeline below it. ``expected_length`` (the
        file's chunk size) is set aside in the store at once, so that open writes
        count against the reserved space and the free space reported. ``token`` (the
        writer's, checked by the caller) goes down the pipeline with every command.

        The open goes on to the next dataserver before this replica is open (that
        runs in a thread meanwhile), so the replicas of a pipeline open together; the
        answer waits for both."""
        existing = self._writes.pop(chunk_id, None)
        write = ReplicaWrite(
            chunk_id, version, None, list(downstream), owner, self._reactor.seconds()
        )
        self._writes[chunk_id] = write
        if existing is not None:
            # A writer starting over (after a failure before any recovery) replaces
            # whatever partial replica an earlier attempt left, once no thread works
            # on it any more.
            await self._settled(existing)
            existing.discard()
            self._check_current(write, version)
        remote: Deferred[Any] = (
            Deferred.fromCoroutine(
                self._hop(
                    downstream,
                    OpenChunkWrite,
                    chunk_id=chunk_id,
                    version=version,
                    downstream=downstream[1:],
                    expected_length=expected_length,
                    token=token,
                )
            )
            if downstream
            else succeed(None)
        )
        local = self._open_here(write, expected_length or None)
        [(local_ok, opened), (remote_ok, answer)] = await DeferredList(
            [local, remote], consumeErrors=True
        )
        if not local_ok:
            self._forget(write)
            opened.raiseException()
        if not remote_ok:
            self._forget(write)
            write.discard()
            answer.raiseException()
        if downstream:
            try:
                await self._connect_below(write)
            except DFSError:
                self._forget(write)
                write.discard()
                raise

    def _check_current(self, write: ReplicaWrite, version: int) -> None:
        if not self._current(write, version):
            # The writer opened or recovered the chunk again meanwhile (after a loss
            # further up): that write owns the pipeline now, not this one.
            raise InvalidArgument(
                f"chunk {write.chunk_id} version {version}: replaced by a newer write "
                "while its pipeline was set up"
            )

    def _open_here(self, write: ReplicaWrite, expected_length: int | None) -> Deferred[None]:
        """Open this replica in a thread; InvalidArgument if the write was replaced or
        given up meanwhile (the replica is then thrown away at once)."""
        version = write.version
        write.opening = True

        def opened(result: ChunkWriter | Failure) -> None:
            write.opening = False
            write.wake()
            if isinstance(result, Failure):
                result.raiseException()
            assert isinstance(result, ChunkWriter)
            if not self._current(write, version):
                result.abort()
            else:
                write.writer = result
            self._check_current(write, version)

        running: Deferred[Any] = self._run(
            self.store.open_writer, write.chunk_id, version, expected_length
        )
        return running.addBoth(opened)

    # The chunk stream: packets in, acknowledgements and failures out.

    def chunk_data(
        self,
        stream: ChunkStream,
        chunk_id: int,
        version: int,
        offset: int,
        data: bytes,
        frame: memoryview | None = None,
    ) -> None:
        write = self._writes.get(chunk_id)
        if write is None or write.version != version:
            if write is not None and write.version > version:
                return  # sent before a recovery moved the write on; resent under it
            self._refuse(stream, chunk_id, version, "no write of it in progress here")
            return
        if write.owner != stream.peer:
            self._refuse(stream, chunk_id, version, f"the write belongs to {write.owner}")
            return
        if write.broken is not None:
            if write.told is not stream:
                write.told = stream
                stream.send_failure(chunk_id, version, write.broken)
            return
        writer = write.writer
        complete = write.complete
        if writer is None and complete is not None and offset + len(data) <= complete.length:
            # Resent after a recovery that found this replica complete already (its
            # FinishChunkWrite went ahead of the acknowledgements): the same bytes,
            # held here; the replicas below may still need them.
            write.upstream = stream
            if write.outbound is not None:
                write.outbound.send_data(chunk_id, version, offset, data, frame)
            self._to_ack.add(write)
            return
        if writer is None or offset != writer.length:
            expected = "none, it is finished" if writer is None else writer.length
            self.log.warn(
                "chunk {chunk_id}: packet at offset {offset}, expected {expected}",
                chunk_id=chunk_id,
                offset=offset,
                expected=expected,
            )
            write.upstream = stream
            self._break(write, self.address)
            return
        write.upstream = stream
        write.last_activity = self._reactor.seconds()
        if write.outbound is not None:
            # Cut-through: the next dataserver gets the packet before the disk does.
            write.outbound.send_data(chunk_id, version, offset, data, frame)
        try:
            writer.append(data)
        except Exception as error:
            self.log.warn(
                "chunk {chunk_id}: cannot store a packet: {error}",
                chunk_id=chunk_id,
                error=f"{type(error).__name__}: {error}",
            )
            self._break(write, self.address)
            return
        self._to_ack.add(write)
        if write.waiters:
            write.wake()  # a FinishChunkWrite that came ahead of this packet

    def frames_done(self, stream: ChunkStream) -> None:
        # One acknowledgement per write for all the packets of one read; held back
        # a moment only while more data is on its way.
        writes, self._to_ack = self._to_ack, set()
        for write in writes:
            self._acknowledge(write, now=not stream.streaming)

    def stream_lost(self, stream: ChunkStream) -> None:
        for write in list(self._writes.values()):
            if write.upstream is stream:
                write.upstream = None
            if write.told is stream:
                write.told = None
                continue
            if (
                write.waiters
                and write.writer is not None
                and write.upstream is None
                and write.owner == stream.peer
            ):
                # A FinishChunkWrite waits for packets that can no longer come (only
                # a recovery sends more): it fails now, not after HOP_TIMEOUT.
                self._break(write, self.address)

    def acked_below(self, write: ReplicaWrite, version: int, length: int) -> None:
        if write.version == version and self._writes.get(write.chunk_id) is write:
            write.below = max(write.below, length)
            upstream = write.upstream
            self._acknowledge(write, now=upstream is None or not upstream.streaming)
            if write.waiters:
                write.wake()

    def failed_below(self, write: ReplicaWrite, version: int, address: str) -> None:
        if write.version != version or self._writes.get(write.chunk_id) is not write:
            return
        write.outbound = write.listener = None
        self.log.warn(
            "pipeline hop failed: chunk {chunk_id} version {version} broke at {address}",
            chunk_id=write.chunk_id,
            version=version,
            address=address,
        )
        self._break(write, address)

    def _acknowledge(self, write: ReplicaWrite, *, now: bool = False) -> None:
        """Tell upstream how many bytes are stored here and on every replica below:
        at once when ``now`` (the writer paused) or when ACK_EVERY bytes are waiting
        for it, otherwise within ACK_DELAY (while data streams in, acknowledging each
        packet would cost every hop a small TLS record per packet)."""
        if write.broken is not None or write.upstream is None:
            return
        length = write.stored()
        if write.downstream:
            length = min(length, write.below)
        if length <= write.acked:
            return
        if not now and length - write.acked < ACK_EVERY:
            if write.ack_timer is None:
                write.ack_timer = self._reactor.callLater(ACK_DELAY, self._ack_soon, write)
            return
        if write.ack_timer is not None:
            if write.ack_timer.active():
                write.ack_timer.cancel()
            write.ack_timer = None
        write.acked = length
        write.upstream.send_ack(write.chunk_id, write.version, length)

    def _ack_soon(self, write: ReplicaWrite) -> None:
        write.ack_timer = None
        self._acknowledge(write, now=True)

    def _break(self, write: ReplicaWrite, address: str) -> None:
        """The write failed at ``address`` (here, or below): say so upstream and take
        no more of its data until the writer recovers it."""
        if write.broken is not None:
            return
        write.broken = address
        write.detach()
        if write.upstream is not None:
            write.told = write.upstream
            write.upstream.send_failure(write.chunk_id, write.version, address)
        write.wake()

    def _refuse(self, stream: ChunkStream, chunk_id: int, version: int, reason: str) -> None:
        if stream.refused == (chunk_id, version):
            return  # said once on this stream
        stream.refused = (chunk_id, version)
        self.log.warn(
            "refused chunk data from {peer} at {address} for chunk {chunk_id} "
            "version {version}: {reason}",
            peer=str(stream.peer),
            address=stream.address,
            chunk_id=chunk_id,
            version=version,
            reason=reason,
        )
        stream.send_failure(chunk_id, version, self.address)

    async def finish(
        self, chunk_id: int, version: int, length: int, *, token: str | None = None
    ) -> list[Location]:
        """Complete the replica here and on every dataserver below at ``length`` bytes;
        the addresses of the replicas, once every one is on disk. It may arrive ahead
        of its last packets: it goes on down at once, and this replica is completed as
        soon as they are stored here."""
        write = self._write(chunk_id, version)
        done = write.stored()
        if length < done or (write.writer is None and length != done):
            raise InvalidArgument(
                f"chunk {chunk_id}: finished at {length} bytes but {done} were written"
            )
        local: Deferred[Any] = Deferred.fromCoroutine(self._finish_here(write, version, length))
        remote: Deferred[Any] = (
            Deferred.fromCoroutine(self._finish_below(write, version, length, token))
            if write.downstream
            else succeed([])
        )
        # Wait for both: a failure below must not leave this replica half-way through
        # its finish when the writer's recovery arrives.
        [(stored_ok, stored), (remote_ok, below)] = await DeferredList(
            [local, remote], consumeErrors=True
        )
        if not stored_ok:
            stored.raiseException()
        if not remote_ok:
            below.raiseException()
        self._forget(write)
        return [self.location, *below]

    async def _finish_here(self, write: ReplicaWrite, version: int, length: int) -> None:
        """Complete this replica once its first ``length`` bytes are stored here."""
        if write.writer is not None and write.storing is None:
            await self._until(write, version, lambda: write.stored() >= length, "last packet")
            if write.stored() != length:
                raise InvalidArgument(
                    f"chunk {write.chunk_id}: finished at {length} bytes but "
                    f"{write.stored()} were written"
                )
            if write.writer is not None and write.storing is None:
                self._store(write)
        while write.complete is None:
            if write.store_failure is not None:
                write.store_failure.raiseException()
            if not self._current(write, version):
                raise InvalidArgument(
                    f"chunk {write.chunk_id} version {version}: given up while completed"
                )
            await write.changed()

    def _store(self, write: ReplicaWrite) -> None:
        """Complete the replica (fsyncs and renames) in a thread."""
        writer = write.active()

        def stored(chunk: StoredChunk) -> None:
            write.storing = None
            write.writer, write.complete = None, chunk
            self.log.info(
                "chunk {chunk_id} version {version} stored ({length} bytes)",
                chunk_id=chunk.chunk_id,
                version=chunk.version,
                length=chunk.length,
            )
            self._on_received(chunk)
            write.wake()

        def failed(failure: Failure) -> None:
            write.storing = None
            write.store_failure = failure
            self._forget(write)

        write.storing = self._run(writer.finish)
        write.storing.addCallbacks(stored, failed)

    async def _finish_below(
        self, write: ReplicaWrite, version: int, length: int, token: str | None
    ) -> list[Location]:
        """FinishChunkWrite to the next dataserver at once, ahead of the data it may
        still be waiting for. Its answer is awaited even when the write breaks
        meanwhile: it comes soon (a dataserver waiting for packets gives up when its
        stream from here is lost or the write breaks there), and the writer must not
        recover before every replica that could be completed reported it, or the
        metaservers would take it for stale."""
        answer = await self._hop(
            write.downstream,
            FinishChunkWrite,
            chunk_id=write.chunk_id,
            version=version,
            length=length,
            token=token,
        )
        return list(answer["locations"])

    async def store_whole(
        self,
        chunk_id: int,
        version: int,
        downstream: Sequence[Location],
        data: bytes,
        owner: Identity | None = None,
        *,
        token: str | None = None,
    ) -> list[Location]:
        """Store a whole chunk here and on every dataserver below (StoreChunk); the
        addresses of the replicas, once every one is on disk. Forwarded before this
        replica is written (in a thread meanwhile), so the replicas' fsyncs overlap.
        A dataserver below that speaks a protocol without StoreChunk fails it with
        InvalidArgument before anything is stored here: the writer then writes the
        chunk through the pipeline under a new version."""
        below: PeerSession | None = None
        if downstream:
            address = downstream[0]
            try:
                below = await self._peers.get(address)
                await below.introduced()  # its protocol version is known
            except Exception as error:
                self._hop_failed(address, error)
                raise PipelineBroken(str(address)) from None
            if below.peer_protocol is None or below.peer_protocol < STORE_CHUNK_SINCE:
                raise InvalidArgument(
                    f"dataserver {address} speaks DFS protocol {below.peer_protocol}, "
                    f"which has no StoreChunk"
                )
        existing = self._writes.get(chunk_id)
        if existing is not None:
            # An earlier attempt's partial replica goes, once no thread works on it.
            await self._settled(existing)
            if self._writes.get(chunk_id) is existing:
                del self._writes[chunk_id]
            existing.discard()
        write = ReplicaWrite(
            chunk_id, version, None, list(downstream), owner, self._reactor.seconds()
        )
        self._writes[chunk_id] = write
        remote: Deferred[Any] = (
            Deferred.fromCoroutine(
                self._hop(
                    downstream,
                    StoreChunk,
                    chunk_id=chunk_id,
                    version=version,
                    downstream=downstream[1:],
                    data=data,
                    token=token,
                )
            )
            if downstream
            else succeed({"locations": []})
        )
        write.storing = self._run(self.store.store_whole, chunk_id, version, data)
        local = write.storing
        [(stored_ok, stored), (remote_ok, answer)] = await DeferredList(
            [local, remote], consumeErrors=True
        )
        write.storing = None
        self._forget(write)
        if not stored_ok:
            stored.raiseException()
        self.log.info(
            "chunk {chunk_id} version {version} stored ({length} bytes)",
            chunk_id=chunk_id,
            version=version,
            length=stored.length,
        )
        self._on_received(stored)
        if not remote_ok:
            answer.raiseException()
        return [self.location, *answer["locations"]]

    async def recover(
        self,
        chunk_id: int,
        version: int,
        new_version: int,
        length: int,
        downstream: Sequence[Location],
        owner: Identity | None = None,
        *,
        token: str | None = None,
    ) -> None:
        write = self._writes.get(chunk_id)
        while write is not None and (write.opening or write.storing is not None):
            # Never under a thread still opening or completing the replica.
            await self._settled(write)
            write = self._writes.get(chunk_id)
        if write is None or write.writer is None:
            # Finished here before the failure showed: the complete replica takes the
            # new version, and a second FinishChunkWrite finds it done. It keeps every
            # byte even when the writer keeps fewer (its FinishChunkWrite went ahead
            # of their acknowledgement): the writer resends the same bytes.
            held = self.store.get(chunk_id)
            keep = length
            if held is not None and held.version <= version and held.length > length:
                keep = held.length
            stored = await self._run(
                self.store.rebase_complete, chunk_id, version, new_version, keep
            )
            if write is not None:
                write.detach()
                write.wake()
            write = ReplicaWrite(
                chunk_id, new_version, None, [], owner, self._reactor.seconds(), stored
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
            write.detach()
            write.store_failure = None
        write.last_activity = self._reactor.seconds()
        write.version = new_version
        write.downstream = list(downstream)
        write.owner = owner
        write.upstream = write.told = None
        write.broken = None
        write.below = write.acked = length
        write.wake()  # a FinishChunkWrite of the old version waits no more
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
                token=token,
            )
            await self._connect_below(write)

    async def abort(self, chunk_id: int, version: int, *, token: str | None = None) -> None:
        write = self._writes.get(chunk_id)
        if write is None or write.version != version:
            return
        del self._writes[chunk_id]
        write.discard()
        if write.downstream:
            try:
                await self._hop(
                    write.downstream,
                    AbortChunkWrite,
                    chunk_id=chunk_id,
                    version=version,
                    token=token,
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
