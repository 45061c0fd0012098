"""Writing a file: chunk by chunk through a pipeline of dataservers.

For each chunk the writer asks the metaserver for a chunk id and a pipeline
(AddChunk; the first chunk comes with Create), opens the pipeline on its first
dataserver, sends packets of at most 64 KiB on the chunk stream to it with a window
of bytes in flight, and on a full chunk finishes it (every replica fsynced) and
commits its length (the last chunk's commit goes with CloseFile). FinishChunkWrite
follows the last packet at once, without waiting for its acknowledgement: the
dataservers complete their replicas together, each as soon as the last packet
reached it. A full chunk is finished and committed in the background while the next
one fills (one at a time: the namespace lets a file have two chunks pending), so the
pipelines never drain at a chunk boundary; close waits for both. When a dataserver
of the pipeline fails, the writer gets a new chunk version from the metaserver, asks
the survivors to keep the acknowledged bytes under that version, and resends what
was not acknowledged: the user sees no error as long as one replica survives.

Every command to a dataserver carries the chunk's write token (from AddChunk or
Create, then from each BumpChunkVersion). A chunk that takes longer than the token
lasts has it renewed (RenewChunkTokens) before a command, and once more on a
refusal: an expired token never fails a write.

A file that ends before SMALL_CHUNK bytes is held until close, then goes to its
dataservers in one StoreChunk carrying the whole chunk (protocol 2.2): one trip down
and up the pipeline instead of an open and a finish. If that fails, or the first
dataserver predates it, the chunk goes through the pipeline as any other, under a new
version after a failure (a replica may be complete under the old one).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dfs.client.connection import DATASERVER_TIMEOUT, DataserverPool
from dfs.client.grants import ChunkGrant
from dfs.client.leader import MetaserverChannel
from dfs.protocol.commands import (
    AbortChunkWrite,
    AddChunk,
    BumpChunkVersion,
    CloseFile,
    CommitChunk,
    FinishChunkWrite,
    OpenChunkWrite,
    RecoverChunkWrite,
    RenewChunkTokens,
    RenewLease,
    StoreChunk,
)
from dfs.protocol.errors import DFSError, InvalidToken, MalformedRecord, PipelineBroken
from dfs.protocol.records import Location
from dfs.protocol.session import PeerSession
from dfs.protocol.stream import ChunkStream
from dfs.protocol.version import STORE_CHUNK_SINCE
from dfs.security.tokens import WRITE

PACKET = 65536
#: Bytes sent on the chunk stream and not yet acknowledged by every replica.
WINDOW_BYTES = 2 * 1024 * 1024
#: A file of at most this many bytes (and one chunk) is held until close and stored
#: with one StoreChunk: as much as one ReadChunk answer.
SMALL_CHUNK = 8 * PACKET


class WriteFailed(DFSError):
    """Every replica of a chunk was lost while it was being written."""

    user_text = "Write failed"


def request_id() -> str:
    return uuid.uuid4().hex


class _RenewalFailed(Exception):
    """The metaserver did not renew a token: its error ends the write (it is not
    a dataserver's fault, so no dataserver is left out for it)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class ChunkPipeline:
    """One chunk being written through a pipeline of dataservers: control over AMP,
    data on the chunk stream to the first dataserver (a StreamListener)."""

    log = Logger()

    def __init__(
        self,
        file: FileWriter,
        chunk_id: int,
        version: int,
        targets: Sequence[Location],
        token: str = "",
    ) -> None:
        self._file = file
        self.chunk_id = chunk_id
        self.version = version
        self.targets = list(targets)
        #: the write token for ``version``
        self.grant = ChunkGrant(token, file.now())
        self.length = 0  # bytes handed to the pipeline
        self.acked = 0  # bytes every replica acknowledged
        self._session: PeerSession | None = None
        self._stream: ChunkStream | None = None
        #: packets sent and not yet acknowledged: (offset, data)
        self._unacked: deque[tuple[int, bytes]] = deque()
        #: the dataserver the stream reported failed, until the pipeline recovers
        self._failed: Location | None = None
        self._wake: Deferred[None] | None = None

    async def open(self) -> None:
        while True:
            try:
                self._session = await self._file.dial(self.targets[0])
                await self._ask(
                    OpenChunkWrite,
                    chunk_id=self.chunk_id,
                    version=self.version,
                    downstream=self.targets[1:],
                    expected_length=self._file.chunk_size,
                )
                await self._attach()
                return
            except CancelledError:
                raise  # the caller gave up: not the dataserver's fault
            except _RenewalFailed as failed:
                raise failed.error from None
            except Exception as error:
                await self._lose(self._failed_address(error))

    async def store_whole(self, data: bytes) -> list[Location]:
        """The whole chunk, ``data``, on every replica; their addresses. Sent in one
        StoreChunk; when the first dataserver predates it, or it fails, written
        through the pipeline instead (after a failure under a new version, leaving
        out a dataserver the failure names)."""
        try:
            self._session = await self._file.dial(self.targets[0])
            await self._session.introduced()  # its protocol version is known
            peer = self._session.peer_protocol
            if peer is not None and peer >= STORE_CHUNK_SINCE:
                answer = await self._ask(
                    StoreChunk,
                    chunk_id=self.chunk_id,
                    version=self.version,
                    downstream=self.targets[1:],
                    data=data,
                )
                self.length = self.acked = len(data)
                return list(answer["locations"])
        except CancelledError:
            raise
        except _RenewalFailed as failed:
            raise failed.error from None
        except Exception as error:
            self.log.info(
                "chunk {chunk_id}: StoreChunk failed ({error}), writing it through the pipeline",
                chunk_id=self.chunk_id,
                error=f"{type(error).__name__}: {error}",
            )
            if isinstance(error, PipelineBroken):
                named = self._target_at(error.address)
                if named is not None:
                    await self._lose(named)
            self.version, token = await self._file.bump_version(self.chunk_id)
            self.grant = ChunkGrant(token, self._file.now())
        await self.open()
        with memoryview(data) as view:
            for start in range(0, len(data), PACKET):
                await self.write(bytes(view[start : start + PACKET]))
        return await self.finish()

    async def _ask(self, command: Any, **arguments: Any) -> Any:
        """``command`` to the first dataserver with the write token, renewed first
        when it is about to run out, and once more if the dataserver refuses it."""
        assert self._session is not None
        if self.grant.renewal_due(self._file.now()):
            await self._renew()
        try:
            return await self._file.ask(self._session, command, token=self.grant.token, **arguments)
        except InvalidToken:
            await self._renew()
        return await self._file.ask(self._session, command, token=self.grant.token, **arguments)

    async def _renew(self) -> None:
        try:
            version, token = await self._file.renew_token(self.chunk_id)
        except CancelledError:
            raise
        except Exception as error:
            raise _RenewalFailed(error) from None
        if version != self.version:
            raise _RenewalFailed(
                WriteFailed(
                    f"chunk {self.chunk_id}: version {self.version} is being written, "
                    f"the metaserver knows version {version}"
                )
            )
        self.grant = ChunkGrant(token, self._file.now())

    async def _attach(self) -> None:
        """Send data, from now on, on the chunk stream to the first dataserver."""
        self._stream = await self._file.stream(self.targets[0])
        self._stream.watch(self.chunk_id, self.version, self)

    def _detach(self) -> None:
        if self._stream is not None:
            self._stream.unwatch(self.chunk_id, self.version, self)
            self._stream = None

    def _failed_address(self, error: BaseException | None) -> Location:
        named = self._target_at(error.address) if isinstance(error, PipelineBroken) else None
        return named or self.targets[0]

    def _target_at(self, address: str) -> Location | None:
        """The dataserver of the pipeline a failure names by its ``host:port``."""
        try:
            location = Location.decode(address)
        except MalformedRecord:
            return None
        return location if location in self.targets else None

    # -- what the stream says ---------------------------------------------

    def chunk_acked(self, length: int) -> None:
        self.acked = length
        unacked = self._unacked
        while unacked and unacked[0][0] + len(unacked[0][1]) <= length:
            unacked.popleft()
        self._wake_up()

    def chunk_failed(self, address: str) -> None:
        if self._failed is None:
            self._failed = self._target_at(address) or self.targets[0]
        self._wake_up()

    def _wake_up(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.called:
            wake.callback(None)

    async def _settle(self, until: Callable[[], bool]) -> None:
        """Wait until ``until()`` holds, recovering the pipeline whenever it breaks."""
        while True:
            if self._failed is not None:
                await self._recover(self._failed)
            elif until():
                return
            else:
                self._wake = Deferred()
                await self._wake

    # -- sending -------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Send one packet; waits only when the window is full."""
        size = len(data)
        await self._settle(lambda: self.length + size - self.acked <= WINDOW_BYTES)
        self._send(self.length, data)
        self.length += size

    def _send(self, offset: int, data: bytes) -> None:
        assert self._stream is not None
        self._unacked.append((offset, data))
        self._stream.send_data(self.chunk_id, self.version, offset, data)

    async def _recover(self, failed: Location) -> None:
        """Drop ``failed`` from the pipeline, keep the acknowledged bytes on the
        survivors under a new version, and resend everything not acknowledged."""
        self._detach()
        self._failed = None
        await self._lose(failed)
        while True:
            # A metaserver error here (the lease lost, say) ends the write: it is not
            # the dataservers' fault.
            old = self.version
            self.version, token = await self._file.bump_version(self.chunk_id)
            self.grant = ChunkGrant(token, self._file.now())
            try:
                self._session = await self._file.dial(self.targets[0])
                await self._ask(
                    RecoverChunkWrite,
                    chunk_id=self.chunk_id,
                    version=old,
                    new_version=self.version,
                    length=self.acked,
                    downstream=self.targets[1:],
                )
                await self._attach()
                break
            except CancelledError:
                raise  # the caller gave up: not the dataserver's fault
            except _RenewalFailed as failed:
                raise failed.error from None
            except Exception as error:
                self._detach()
                await self._lose(self._failed_address(error))
        resend, self._unacked = self._unacked, deque()
        for offset, data in resend:
            self._send(offset, data)

    async def _lose(self, failed: Location) -> None:
        self.log.warn(
            "dataserver {address} left the pipeline of chunk {chunk_id}",
            address=failed,
            chunk_id=self.chunk_id,
        )
        self.targets = [target for target in self.targets if target != failed]
        if not self.targets:
            raise WriteFailed(f"chunk {self.chunk_id}: every dataserver of its pipeline failed")

    def abort(self) -> None:
        self._detach()
        session = self._session
        if session is None or not session.is_open:
            return
        session.callRemote(
            AbortChunkWrite, chunk_id=self.chunk_id, version=self.version, token=self.grant.token
        ).addErrback(lambda _: None)

    async def finish(self) -> list[Location]:
        """Complete every replica; their addresses. Sent right behind the last packet,
        once a pipeline that broke is recovered. On a failure its answer is still
        awaited (it comes once every replica that could be completed is, and was
        reported to the metaservers), then the pipeline is recovered."""
        while True:
            await self._settle(lambda: True)
            assert self._session is not None
            try:
                answer = await self._ask(
                    FinishChunkWrite,
                    chunk_id=self.chunk_id,
                    version=self.version,
                    length=self.length,
                )
            except CancelledError:
                raise  # the caller gave up: not the dataserver's fault
            except _RenewalFailed as failed:
                raise failed.error from None
            except Exception as error:
                await self._recover(self._failed_address(error))
                continue
            self._detach()
            return list(answer["locations"])


class FileWriter:
    """A file open for writing: ``await write(data)`` any number of times, then
    ``await close()``. Nothing is visible as complete until close returns."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        metaserver: MetaserverChannel,
        pool: DataserverPool,
        path: str,
        client_id: str,
        chunk_size: int,
        lease_period: float,
        first_chunk: dict[str, Any] | None = None,
        inode: int | None = None,
    ) -> None:
        self._reactor = reactor
        self._metaserver = metaserver
        #: the first chunk, handed out with Create (AddChunk's answer): used for the
        #: first packet, or dropped by the close if nothing is written
        self._first_chunk = first_chunk
        self._pool = pool
        #: where the file was created; a rename meanwhile does not change it
        self.path = path
        #: how every request names the file: by its inode too (from a metaserver of
        #: protocol 2.1 or later), so that the writer follows it through renames
        self._names: dict[str, Any] = {"path": path}
        if inode is not None:
            self._names["inode"] = inode
        self._client_id = client_id
        self.chunk_size = chunk_size
        self._lease_period = lease_period
        self._buffer = bytearray()
        #: whether a chunk was started: until then a small file is held in _buffer
        self._started = False
        self._chunk: ChunkPipeline | None = None
        self._committed = 0  # bytes of the file in committed chunks
        #: the previous chunk, full, being finished and committed meanwhile
        self._finishing: Deferred[None] | None = None
        self._finishing_length = 0
        self.closed = False
        #: the renewal in progress, cancelled when the writer stops
        self._renewal: Deferred[None] | None = None
        self._lease = LoopingCall(self._start_renewal)
        self._lease.clock = reactor
        self._lease.start(max(0.5, lease_period / 3), now=False)

    @property
    def length(self) -> int:
        current = self._chunk.length if self._chunk else 0
        return self._committed + self._finishing_length + current + len(self._buffer)

    async def dial(self, address: Location) -> PeerSession:
        # Sessions are the client's, shared with its other files; a dropped one is
        # dialled again.
        return await self._pool.get(address)

    async def stream(self, address: Location) -> ChunkStream:
        # So are chunk streams.
        return await self._pool.streams.get(address)

    def ask(self, session: PeerSession, command: Any, **arguments: Any) -> Deferred[Any]:
        """A request to a dataserver of the pipeline, with a deadline."""
        call = session.callRemote(command, **arguments)
        call.addTimeout(DATASERVER_TIMEOUT, self._reactor)
        return call

    async def _ask_meta(self, command: Any, **arguments: Any) -> Any:
        # Through the channel, which follows the leader and repeats the request with
        # the same request id.
        return await self._metaserver.call(command, **arguments)

    def now(self) -> float:
        return float(self._reactor.seconds())

    async def bump_version(self, chunk_id: int) -> tuple[int, str]:
        """The chunk's new version, and the write token for it."""
        answer = await self._ask_meta(
            BumpChunkVersion,
            **self._names,
            client_id=self._client_id,
            chunk_id=chunk_id,
            request_id=request_id(),
        )
        return int(answer["version"]), answer["token"]

    async def renew_token(self, chunk_id: int) -> tuple[int, str]:
        """A fresh write token for the chunk being written: its version and token."""
        answer = await self._ask_meta(
            RenewChunkTokens,
            **self._names,
            operation=WRITE,
            chunk_ids=[chunk_id],
            client_id=self._client_id,
        )
        [renewed] = [t for t in answer["tokens"] if t["chunk_id"] == chunk_id]
        return int(renewed["version"]), renewed["token"]

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``; returns once it is handed to the pipeline (waiting only when
        the window of packets in flight is full). Bytes short of a whole packet wait
        in a buffer for more, or for close."""
        if self.closed:
            raise ValueError("write to a closed file")
        view = memoryview(data).cast("B")
        if not self._started:
            if len(self._buffer) + len(view) <= min(SMALL_CHUNK, self.chunk_size):
                self._buffer += view  # perhaps a small file: held until close
                return
            if self._buffer:
                # It is not: what was held goes out first, as any other bytes.
                view = memoryview(bytes(self._buffer) + bytes(view))
                self._buffer.clear()
        position = 0
        while True:
            room = self.chunk_size - (self._chunk.length if self._chunk else 0)
            size = min(PACKET, room)
            if len(self._buffer) + len(view) - position < size:
                break
            if self._buffer:
                # Complete the packet started by an earlier write.
                take = size - len(self._buffer)
                packet = bytes(self._buffer + view[position : position + take])
                self._buffer.clear()
            else:
                take = size
                packet = bytes(view[position : position + take])
            position += take
            await self._send(packet)
        self._buffer += view[position:]

    async def _send(self, packet: bytes) -> None:
        if self._chunk is None:
            await self._start_chunk()
        assert self._chunk is not None
        await self._chunk.write(packet)
        if self._chunk.length == self.chunk_size:
            await self._hand_off()

    async def _start_chunk(self) -> None:
        self._chunk = await self._new_chunk()
        await self._chunk.open()

    async def _new_chunk(self) -> ChunkPipeline:
        self._started = True
        answer, self._first_chunk = self._first_chunk, None
        if answer is None:
            answer = await self._ask_meta(
                AddChunk, **self._names, client_id=self._client_id, request_id=request_id()
            )
        return ChunkPipeline(
            self, answer["chunk_id"], answer["version"], list(answer["targets"]), answer["token"]
        )

    async def _hand_off(self) -> None:
        """Finish and commit the current chunk in the background, once the previous
        one is committed (its failure, if any, is raised here)."""
        await self._settle()
        chunk, self._chunk = self._chunk, None
        assert chunk is not None
        self._finishing_length = chunk.length
        self._finishing = Deferred.fromCoroutine(self._end_chunk(chunk))

    async def _settle(self) -> None:
        finishing, self._finishing = self._finishing, None
        if finishing is not None:
            await finishing

    async def _end_chunk(self, chunk: ChunkPipeline) -> None:
        locations = await chunk.finish()
        await self._ask_meta(
            CommitChunk,
            **self._names,
            client_id=self._client_id,
            chunk_id=chunk.chunk_id,
            version=chunk.version,
            length=chunk.length,
            locations=locations,
            request_id=request_id(),
        )
        self._committed += chunk.length
        self._finishing_length = 0

    async def close(self) -> None:
        """Finish the last chunk and complete the file: the last chunk's commit goes
        with the close, in one request."""
        if self.closed:
            return
        whole: list[Location] | None = None
        if self._buffer and not self._started:
            # A small file, whole: its one chunk in one request.
            data = bytes(self._buffer)
            self._buffer.clear()
            self._chunk = await self._new_chunk()
            whole = await self._chunk.store_whole(data)
        elif self._buffer:
            packet = bytes(self._buffer)
            self._buffer.clear()
            await self._send(packet)
        await self._settle()
        last: dict[str, Any] = {}
        chunk = self._chunk
        if chunk is not None:
            # Still the writer's chunk meanwhile: a writer given up aborts it.
            locations = whole if whole is not None else await chunk.finish()
            last = {
                "chunk_id": chunk.chunk_id,
                "version": chunk.version,
                "chunk_length": chunk.length,
                "locations": locations,
            }
        elif self._first_chunk is not None:
            # Handed out with Create and never written to: it goes with the close.
            unused, self._first_chunk = self._first_chunk, None
            last = {"chunk_id": unused["chunk_id"], "version": unused["version"], "chunk_length": 0}
        await self._ask_meta(
            CloseFile,
            **self._names,
            client_id=self._client_id,
            length=self._committed + last.get("chunk_length", 0),
            request_id=request_id(),
            **last,
        )
        self._committed += last.get("chunk_length", 0)
        self._chunk = None
        self.closed = True
        self._stop()

    def _stop(self) -> None:
        if self._lease.running:
            self._lease.stop()
        # A renewal still trying to reach a leader must not renew the lease of a file
        # closed or given up meanwhile.
        renewal, self._renewal = self._renewal, None
        if renewal is not None and not renewal.called:
            renewal.cancel()

    def abandon(self) -> None:
        """Stop writing without closing: the lease expires and the metaserver closes
        the file at its last committed length. The chunk being written is aborted on
        its dataservers (best effort; they also discard it when it sits idle)."""
        self.closed = True
        self._stop()
        finishing, self._finishing = self._finishing, None
        if finishing is not None:
            finishing.addErrback(lambda _: None)
            finishing.cancel()
        chunk, self._chunk = self._chunk, None
        if chunk is not None:
            chunk.abort()

    def _start_renewal(self) -> Deferred[None]:
        self._renewal = Deferred.fromCoroutine(self._renew())
        return self._renewal

    async def _renew(self) -> None:
        # A renewal goes on trying (across a change of leader) for up to a lease
        # period: by then the lease is lost anyway, and the renewals never overlap (the
        # next one waits for this one). A failed renewal is logged and the next one tried
        # on time: one lost answer must not end the renewals while the lease may still
        # be saved.
        try:
            await self._metaserver.call_within(
                self._lease_period, RenewLease, **self._names, client_id=self._client_id
            )
        except CancelledError:
            pass  # the writer stopped
        except Exception as error:
            self.log.warn(
                "lease renewal for {path} failed: {error}",
                path=self.path,
                error=f"{type(error).__name__}: {error}",
            )
