"""Reading a file: chunk locations from the metaserver, bytes from the best replica,
every 64 KiB block checked against its CRC32C here, on the client.

On a checksum mismatch, a timeout, a stale or missing replica or a dataserver that
does not answer, the reader moves on to the next replica (reporting a bad one to the
metaserver in the background); only when no replica of a chunk can be read does the read fail, with
an error naming the chunk.

Every ReadChunk carries the chunk's read token. A read that outlasts it renews it
(RenewChunkTokens) shortly before it runs out, or when a dataserver refuses it, and
asks again from where it was: the user never sees an expired token.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

import attrs
import google_crc32c
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger

from dfs.client.connection import DataserverPool
from dfs.client.grants import ChunkGrant
from dfs.client.leader import MetaserverChannel
from dfs.protocol.commands import ReadChunk, RenewChunkTokens, ReportBadReplica
from dfs.protocol.errors import ChecksumMismatch, ChunkNotFound, DFSError, InvalidToken, StaleChunk
from dfs.protocol.records import ChunkRecord, Location
from dfs.protocol.session import PeerSession
from dfs.security.tokens import READ

#: Answers that show the replica itself is bad, as opposed to its dataserver.
BAD_REPLICA = (ChecksumMismatch, ChunkNotFound, StaleChunk)

BLOCK = 65536
#: Bytes asked for in one ReadChunk (whole blocks), and how many such requests are
#: in flight to one replica: large requests keep the per-command cost small.
REQUEST = 8 * BLOCK
WINDOW = 8
READ_TIMEOUT = 30.0


class ChunkUnavailable(DFSError):
    """No replica of a chunk could be read."""

    user_text = "No readable replica"


@attrs.frozen
class ChunkInfo(ChunkRecord):
    """A chunk as GetChunks gave it (its replicas best first, with a read token),
    and where it starts in the file."""

    offset: int


class FileReader:
    """A file open for reading, with a position: ``read``, ``seek``, ``read_range``."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        metaserver: MetaserverChannel,
        pool: DataserverPool,
        path: str,
        length: int,
        chunks: list[ChunkInfo],
    ) -> None:
        self._reactor = reactor
        self._metaserver = metaserver
        self._pool = pool
        self.path = path
        self.length = length
        self._chunks = chunks
        self.position = 0
        self._stream: _ChunkStream | None = None
        now = reactor.seconds()
        #: chunk id -> its read token, renewed as the read goes on
        self._grants = {chunk.chunk_id: ChunkGrant(chunk.token, now) for chunk in chunks}

    @property
    def small(self) -> bool:
        """Whether the file is read in one request."""
        return 0 < self.length <= REQUEST

    def read_ahead(self) -> None:
        """Ask for a small file (one request) now, where its first replica's session
        is open already: a reader that opens it to read it finds the answer on its
        way, the round trip overlapping the caller's return from open."""
        if self._stream is not None or not self.small:
            return  # only a small file: a reader that seeks first wastes little
        chunk = self._chunks[0]
        if not chunk.locations:
            return
        session = self._pool.open_session(chunk.locations[0])
        if session is None:
            return
        stream = self._stream = _ChunkStream(self, chunk, 0)
        stream.start(session)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    async def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from the position (the rest of the file with -1).

        Reading on from where the last read stopped streams: requests run ahead of
        the position, so a reader taking the file in pieces keeps the dataserver and
        the connection busy between its calls.
        """
        if size < 0:
            size = self.length - self.position
        end = min(self.length, self.position + size)
        pieces = []
        while self.position < end:
            chunk = self._chunk_at(self.position)
            stream = self._stream
            if (
                stream is None
                or stream.chunk is not chunk
                or stream.offset != self.position - chunk.offset
            ):
                if stream is not None:
                    stream.close()
                stream = self._stream = _ChunkStream(self, chunk, self.position - chunk.offset)
            piece = await stream.read(min(end, chunk.offset + chunk.length) - self.position)
            pieces.append(piece)
            self.position += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _chunk_at(self, offset: int) -> ChunkInfo:
        for chunk in self._chunks:
            if chunk.offset <= offset < chunk.offset + chunk.length:
                return chunk
        raise ValueError(f"offset {offset} is outside {self.path}")

    async def read_range(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer only at the end of the file),
        without moving the position."""
        end = min(self.length, offset + max(0, length))
        pieces = []
        for chunk in self._chunks:
            chunk_end = chunk.offset + chunk.length
            if chunk_end <= offset or chunk.offset >= end:
                continue
            start_in = max(offset, chunk.offset) - chunk.offset
            stop_in = min(end, chunk_end) - chunk.offset
            stream = _ChunkStream(self, chunk, start_in, stop=stop_in)
            try:
                while stream.offset < stop_in:
                    pieces.append(await stream.read(stop_in - stream.offset))
            finally:
                stream.close()
        return b"".join(pieces)

    def _grant(self, chunk: ChunkInfo) -> ChunkGrant:
        return self._grants.setdefault(
            chunk.chunk_id, ChunkGrant(chunk.token, self._reactor.seconds())
        )

    def token(self, chunk: ChunkInfo) -> str:
        return self._grant(chunk).token

    def renewal_due(self, chunk: ChunkInfo) -> bool:
        return self._grant(chunk).renewal_due(self._reactor.seconds())

    async def renew(self, chunk: ChunkInfo) -> None:
        """A fresh read token for ``chunk`` from the metaserver (its errors, such as
        the file being gone, are the read's)."""
        answer = await self._metaserver.call(
            RenewChunkTokens,
            path=self.path,
            operation=READ,
            chunk_ids=[chunk.chunk_id],
            client_id="",
        )
        for renewed in answer["tokens"]:
            if renewed["chunk_id"] == chunk.chunk_id and renewed["version"] == chunk.version:
                self._grants[chunk.chunk_id] = ChunkGrant(renewed["token"], self._reactor.seconds())
                return
        raise StaleChunk(
            f"{self.path}: chunk {chunk.chunk_id} version {chunk.version} is no longer "
            "the file's (it was rewritten)"
        )

    async def renew_early(self, chunk: ChunkInfo) -> None:
        """Renew a token about to run out; on failure go on with it (a refusal will
        renew it again, or tell why) and try again only a margin later."""
        try:
            await self.renew(chunk)
        except CancelledError:
            raise
        except Exception as error:
            self._grant(chunk).received = self._reactor.seconds()
            self.log.info(
                "{path}: early renewal of the token of chunk {chunk_id} failed: {error}",
                path=self.path,
                chunk_id=chunk.chunk_id,
                error=f"{type(error).__name__}: {error}",
            )

    def _report(self, chunk: ChunkInfo, address: Location, reason: str) -> None:
        """Tell the metaserver a replica is bad, in the background: reporting is a
        courtesy to it, and the read goes on meanwhile, even while no metaserver
        answers."""
        report = Deferred.fromCoroutine(
            self._metaserver.call(
                ReportBadReplica,
                chunk_id=chunk.chunk_id,
                version=chunk.version,
                address=address,
                reason=reason[:1000],
            )
        )
        report.addErrback(lambda _: None)

    def close(self) -> None:
        """Stop reading ahead. Dataserver sessions belong to the client and stay."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _checked(chunk: ChunkInfo, at: int, size: int, data: bytes, checksums: list[int]) -> bytes:
    """``data`` if it is the ``size`` bytes asked for and every block matches its
    CRC32C; ChecksumMismatch otherwise."""
    blocks = -(-size // BLOCK)
    if len(data) != size or len(checksums) != blocks:
        raise ChecksumMismatch(
            f"chunk {chunk.chunk_id} at {at}: {len(data)} bytes and {len(checksums)} "
            f"checksums for a request of {size} bytes"
        )
    value = google_crc32c.value
    if blocks == 1:
        if value(data) != checksums[0]:
            raise ChecksumMismatch(
                f"chunk {chunk.chunk_id} block at {at}: data does not match its checksum"
            )
        return data
    for i, crc in enumerate(checksums):
        if value(data[i * BLOCK : (i + 1) * BLOCK]) != crc:
            raise ChecksumMismatch(
                f"chunk {chunk.chunk_id} block at {at + i * BLOCK}: "
                "data does not match its checksum"
            )
    return data


class _ChunkStream:
    """Sequential reading of one chunk with requests running ahead of the reader.

    Reads from one replica at a time; on a failure it reports a bad replica, moves to
    the next and asks again from the block holding the next byte wanted, so the
    caller sees a failover only as a pause.
    """

    def __init__(
        self, reader: FileReader, chunk: ChunkInfo, offset: int, *, stop: int | None = None
    ) -> None:
        self._reader = reader
        self.chunk = chunk
        #: Nothing is asked for past this byte of the chunk (a range read's end).
        self._stop = chunk.length if stop is None else stop
        #: The next byte (in the chunk) that read() hands out.
        self.offset = offset
        self._requested = offset - offset % BLOCK
        self._data = b""
        self._data_at = self._requested
        self._pending: deque[tuple[int, int, Deferred[Any]]] = deque()
        self._replicas = list(chunk.locations)
        self._problems: list[str] = []
        self._session: PeerSession | None = None
        #: the token was renewed after a refusal, and no answer came since
        self._renewed = False
        #: dialled again after the dataserver closed the connection, no answer since
        self._redialled = False

    def start(self, session: PeerSession) -> None:
        """Send the first requests on ``session``, the first replica's, now."""
        self._session = session
        self._top_up()

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``; at least one unless the chunk ended."""
        while True:
            start = self.offset - self._data_at
            if 0 <= start < len(self._data):
                piece = self._data[start : start + size]
                self.offset += len(piece)
                self._top_up()
                return piece
            if self.offset >= self.chunk.length:
                return b""
            try:
                await self._next_answer()
            except (CancelledError, ChunkUnavailable):
                raise  # the caller gave up, or no replica is left
            except InvalidToken as error:
                if self._renewed:
                    self._fail(error)  # refused even fresh: that replica's problem
                else:
                    await self._renew()
            except ConnectionDone as error:
                # Closed cleanly: most likely an idle connection the dataserver closed
                # (its idle_timeout) as this request went out. Dial it once more
                # before counting the replica as failed.
                if self._redialled:
                    self._fail(error)
                else:
                    self._redial()
            except Exception as error:
                self._fail(error)

    async def _next_answer(self) -> None:
        if self._reader.renewal_due(self.chunk):
            # The requests in flight still carry the old token, good for a while yet.
            await self._reader.renew_early(self.chunk)
        if self._session is not None and not self._session.is_open:
            # The dataserver closed an idle connection while the reader paused (its
            # idle_timeout): dial it again rather than count the replica as failed.
            # Answers already received stay in _pending; a failed call still fails.
            self._session = None
        if self._session is None:
            if not self._replicas:
                raise self._unavailable()
            self._session = await self._reader._pool.get(self._replicas[0])
        self._top_up()
        at, size, call = self._pending[0]
        answer = await call
        self._renewed = self._redialled = False
        self._pending.popleft()
        self._data = _checked(self.chunk, at, size, answer["data"], answer["checksums"])
        self._data_at = at
        self._top_up()

    def _top_up(self) -> None:
        session = self._session
        if session is None or not session.is_open:
            return  # (a closed one is dialled again by _next_answer)
        # Whole blocks: a range read's last request runs to the end of its block.
        limit = min(self.chunk.length, -(-self._stop // BLOCK) * BLOCK)
        while len(self._pending) < WINDOW and self._requested < limit:
            size = min(REQUEST, limit - self._requested)
            call = session.callRemote(
                ReadChunk,
                chunk_id=self.chunk.chunk_id,
                version=self.chunk.version,
                offset=self._requested,
                length=size,
                token=self._reader.token(self.chunk),
            )
            call.addTimeout(READ_TIMEOUT, self._reader._reactor)
            self._pending.append((self._requested, size, call))
            self._requested += size

    async def _renew(self) -> None:
        """The replica refused the token (it ran out): renew it and ask the same
        replica again from the block holding the next byte wanted."""
        session = self._session
        self.close()
        await self._reader.renew(self.chunk)
        self._renewed = True
        self._session = session if session is not None and session.is_open else None
        self._requested = self.offset - self.offset % BLOCK
        self._data = b""
        self._data_at = self._requested

    def _redial(self) -> None:
        """Ask the same replica again, on a new connection, from the block holding
        the next byte wanted."""
        self.close()
        self._redialled = True
        self._requested = self.offset - self.offset % BLOCK
        self._data = b""
        self._data_at = self._requested

    def _fail(self, error: Exception) -> None:
        self.close()
        address = self._replicas.pop(0)
        reason = f"{type(error).__name__}: {error}"
        self._problems.append(f"{address}: {reason}")
        if isinstance(error, BAD_REPLICA):
            self._reader._report(self.chunk, address, reason)
        if not self._replicas:
            raise self._unavailable()
        # Ask the next replica from the block that holds the next byte wanted.
        self._requested = self.offset - self.offset % BLOCK
        self._data = b""
        self._data_at = self._requested

    def _unavailable(self) -> ChunkUnavailable:
        detail = (
            "; ".join(self._problems)
            if self._problems
            else "the metaserver knows no replica of it on a live dataserver"
        )
        return ChunkUnavailable(
            f"{self._reader.path}: chunk {self.chunk.chunk_id} unreadable ({detail})"
        )

    def close(self) -> None:
        """Cancel the requests still running ahead."""
        self._session = None
        pending, self._pending = self._pending, deque()
        for *_, call in pending:
            call.addErrback(lambda _: None)
            call.cancel()
