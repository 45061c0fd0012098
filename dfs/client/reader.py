"""Reading a file: chunk locations from the metaserver, bytes from the best replica,
every 64 KiB block checked against its CRC32C here, on the client.

On a checksum mismatch, a timeout, a stale or missing replica or a dataserver that
does not answer, the reader reports the replica to the metaserver and moves on to
the next one; only when no replica of a chunk can be read does the read fail, with
an error naming the chunk.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import google_crc32c
from twisted.internet.defer import CancelledError

from dfs.client.connection import DataserverPool
from dfs.protocol.commands import ReadChunk, ReportBadReplica
from dfs.protocol.errors import ChecksumMismatch, ChunkNotFound, DFSError, StaleChunk
from dfs.protocol.session import PeerSession

#: Answers that show the replica itself is bad, as opposed to its dataserver.
BAD_REPLICA = (ChecksumMismatch, ChunkNotFound, StaleChunk)

BLOCK = 65536
WINDOW = 16
READ_TIMEOUT = 30.0


class ChunkUnavailable(DFSError):
    """No replica of a chunk could be read."""

    user_text = "No readable replica"


@attrs.frozen
class ChunkInfo:
    chunk_id: int
    version: int
    length: int
    offset: int  # where the chunk starts in the file
    locations: tuple[str, ...]


class FileReader:
    """A file open for reading, with a position: ``read``, ``seek``, ``read_range``."""

    def __init__(
        self,
        reactor: Any,
        meta: PeerSession,
        pool: DataserverPool,
        path: str,
        length: int,
        chunks: list[ChunkInfo],
    ) -> None:
        self._reactor = reactor
        self._meta = meta
        self._pool = pool
        self.path = path
        self.length = length
        self._chunks = chunks
        self.position = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    async def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = self.length - self.position
        data = await self.read_range(self.position, size)
        self.position += len(data)
        return data

    async def read_range(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer only at the end of the file)."""
        end = min(self.length, offset + max(0, length))
        pieces = []
        for chunk in self._chunks:
            chunk_end = chunk.offset + chunk.length
            if chunk_end <= offset or chunk.offset >= end:
                continue
            start_in = max(offset, chunk.offset) - chunk.offset
            stop_in = min(end, chunk_end) - chunk.offset
            pieces.append(await self._read_chunk(chunk, start_in, stop_in))
        return b"".join(pieces)

    async def _read_chunk(self, chunk: ChunkInfo, start: int, stop: int) -> bytes:
        problems = []
        for address in chunk.locations:
            try:
                data = await self._read_replica(address, chunk, start, stop)
            except CancelledError:
                raise  # the caller gave up: not the replica's fault
            except Exception as error:
                reason = f"{type(error).__name__}: {error}"
                problems.append(f"{address}: {reason}")
                if isinstance(error, BAD_REPLICA):
                    # The dataserver answered, and its replica is damaged, missing or
                    # old. A dataserver that does not answer is not reported: the
                    # metaserver learns that from its heartbeats.
                    await self._report(chunk, address, reason)
                continue
            return data
        detail = (
            "; ".join(problems)
            if problems
            else "the metaserver knows no replica of it on a live dataserver"
        )
        raise ChunkUnavailable(f"{self.path}: chunk {chunk.chunk_id} unreadable ({detail})")

    async def _read_replica(self, address: str, chunk: ChunkInfo, start: int, stop: int) -> bytes:
        session = await self._pool.get(address)
        first = start - start % BLOCK
        requests = []
        blocks = []
        for block_start in range(first, stop, BLOCK):
            size = min(BLOCK, chunk.length - block_start)
            requests.append((block_start, size))
        pending: list[Any] = []
        index = 0
        while index < len(requests) or pending:
            while index < len(requests) and len(pending) < WINDOW:
                block_start, size = requests[index]
                call = session.callRemote(
                    ReadChunk,
                    chunk_id=chunk.chunk_id,
                    version=chunk.version,
                    offset=block_start,
                    length=size,
                )
                call.addTimeout(READ_TIMEOUT, self._reactor)
                call.addErrback(lambda failure: failure.value)
                pending.append((block_start, size, call))
                index += 1
            block_start, size, call = pending.pop(0)
            answer = await call
            if isinstance(answer, Exception):
                for *_, rest in pending:
                    rest.cancel()
                raise answer
            data = answer["data"]
            [crc] = answer["checksums"] or [None]
            if len(data) != size or crc is None or google_crc32c.value(data) != crc:
                for *_, rest in pending:
                    rest.cancel()
                raise ChecksumMismatch(
                    f"chunk {chunk.chunk_id} block at {block_start}: "
                    "data does not match its checksum"
                )
            blocks.append(data)
        joined = b"".join(blocks)
        return joined[start - first : stop - first]

    async def _report(self, chunk: ChunkInfo, address: str, reason: str) -> None:
        try:
            await self._meta.callRemote(
                ReportBadReplica,
                chunk_id=chunk.chunk_id,
                version=chunk.version,
                address=address,
                reason=reason[:1000],
            )
        except Exception:
            pass  # reporting is a courtesy to the metaserver; the read goes on

    def close(self) -> None:
        """Nothing to release: dataserver sessions belong to the client."""
