"""The asynchronous DFS client: namespace operations and file streams.

    client = await DFSClient.connect(reactor, load_client_config(path))
    await client.mkdir("/data", parents=True)
    writer = await client.create("/data/a.bin")
    await writer.write(b"...")
    await writer.close()
    reader = await client.open("/data/a.bin")
    data = await reader.read()

Every method is a coroutine; wrap with ``Deferred.fromCoroutine`` where a Deferred
is wanted, or use :mod:`dfs.client.blocking` from code that does not run a reactor.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from dfs.client.admin import ClusterAdmin
from dfs.client.connection import ClientCredentials, DataserverPool
from dfs.client.leader import MetaserverChannel
from dfs.client.localstream import StreamReader
from dfs.client.reader import ChunkInfo, FileReader
from dfs.client.writer import FileWriter, request_id
from dfs.config import ClientConfig
from dfs.protocol.commands import (
    Chmod,
    Chown,
    ClusterSpace,
    Create,
    Delete,
    DiskUsage,
    GetChunks,
    ListDirectory,
    Mkdir,
    Rename,
    SetReplication,
    Stat,
)
from dfs.protocol.records import Entry

#: Bytes handed to put/get progress callbacks at most this often.
IO_SIZE = 4 * 1024 * 1024
#: Entries asked for per ListDirectory: the metaserver sends fewer when they would
#: not fit one page (dfs.protocol.records.PAGE_LIMIT).
LIST_PAGE = 10_000
CHUNK_PAGE = 400

Progress = Callable[[int], None]


class DFSClient(ClusterAdmin):
    """A connection to the cluster as the identity in the client's certificate.

    The administration methods (fsck, dataservers, decommission, safe mode, the
    balancer, the metaserver group) come from :class:`~dfs.client.admin.ClusterAdmin`.
    """

    def __init__(
        self,
        reactor: Any,
        config: ClientConfig,
        credentials: ClientCredentials,
        metaserver: MetaserverChannel,
    ) -> None:
        self._reactor = reactor
        self.config = config
        self.credentials = credentials
        #: Every namespace request goes through it, to whichever metaserver leads.
        self.metaserver = metaserver
        self.pool = DataserverPool(reactor, credentials, config.connect_timeout)
        self.client_id = f"{credentials.identity.name}/{uuid.uuid4().hex}"

    @classmethod
    async def connect(cls, reactor: Any, config: ClientConfig) -> DFSClient:
        """A client with a session open to one of the config's metaservers (the
        leader is found by the first request); NoMetaserverReachable at once if none
        of them can be reached."""
        credentials = ClientCredentials.from_config(config)
        metaserver = MetaserverChannel.for_client(reactor, config, credentials)
        await metaserver.connect()
        return cls(reactor, config, credentials, metaserver)

    @property
    def user(self) -> str:
        return self.credentials.identity.name

    def close(self) -> None:
        self.pool.close()
        self.metaserver.close()

    # -- namespace --------------------------------------------------------------

    async def mkdir(self, path: str, *, parents: bool = False, mode: int = 0o777) -> None:
        await self.metaserver.call(
            Mkdir,
            path=path,
            mode=mode & ~self.config.umask,
            parents=parents,
            request_id=request_id(),
        )

    async def stat(self, path: str) -> Entry:
        answer = await self.metaserver.call(Stat, path=path)
        entry: Entry = answer["entry"]
        return entry

    async def listdir(self, path: str) -> list[Entry]:
        entries: list[Entry] = []
        start_after = ""
        while True:
            answer = await self.metaserver.call(
                ListDirectory, path=path, start_after=start_after, limit=LIST_PAGE
            )
            entries += answer["entries"]
            if not answer["more"] or not answer["entries"]:
                return entries
            start_after = entries[-1].name

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        await self.metaserver.call(Delete, path=path, recursive=recursive, request_id=request_id())

    async def rename(self, source: str, destination: str) -> None:
        await self.metaserver.call(
            Rename, source=source, destination=destination, request_id=request_id()
        )

    async def set_replication(self, path: str, replication: int) -> None:
        await self.metaserver.call(
            SetReplication, path=path, replication=replication, request_id=request_id()
        )

    async def chmod(self, path: str, mode: int) -> None:
        """Set the mode bits of a file or directory (``0o755``)."""
        await self.metaserver.call(Chmod, path=path, mode=mode, request_id=request_id())

    async def chown(self, path: str, owner: str | None = None, group: str | None = None) -> None:
        """Set the owner and/or the group; None leaves that one as it is."""
        await self.metaserver.call(
            Chown, path=path, owner=owner or "", group=group or "", request_id=request_id()
        )

    async def du(self, path: str) -> dict[str, int]:
        return dict(await self.metaserver.call(DiskUsage, path=path))

    async def df(self) -> dict[str, int]:
        return dict(await self.metaserver.call(ClusterSpace))

    # -- files --------------------------------------------------------------------

    async def create(
        self,
        path: str,
        *,
        overwrite: bool = False,
        replication: int = 0,
        chunk_size: int = 0,
        mode: int = 0o666,
    ) -> FileWriter:
        answer = await self._create(
            path, overwrite=overwrite, replication=replication, chunk_size=chunk_size, mode=mode
        )
        return self._writer(path, answer)

    async def _create(
        self,
        path: str,
        *,
        overwrite: bool = False,
        replication: int = 0,
        chunk_size: int = 0,
        mode: int = 0o666,
        close: bool = False,
    ) -> dict[str, Any]:
        return await self.metaserver.call(
            Create,
            path=path,
            mode=mode & ~self.config.umask,
            replication=replication,
            chunk_size=chunk_size,
            overwrite=overwrite,
            client_id=self.client_id,
            request_id=request_id(),
            close=close or None,
            # Its first chunk comes with it: one round trip and one log entry less.
            first_chunk=not close or None,
        )

    def _writer(self, path: str, answer: dict[str, Any]) -> FileWriter:
        return FileWriter(
            self._reactor,
            self.metaserver,
            self.pool,
            path,
            self.client_id,
            answer["chunk_size"],
            answer["lease_period"],
            first_chunk=answer if answer.get("chunk_id") is not None else None,
            inode=answer.get("inode"),
        )

    async def open(self, path: str) -> FileReader:
        chunks: list[ChunkInfo] = []
        offset = 0
        first = 0
        while True:
            answer = await self.metaserver.call(GetChunks, path=path, first=first, limit=CHUNK_PAGE)
            for chunk in answer["chunks"]:
                chunks.append(
                    ChunkInfo(
                        chunk.chunk_id,
                        chunk.version,
                        chunk.length,
                        chunk.locations,
                        chunk.token,
                        offset=offset,
                    )
                )
                offset += chunk.length
            first += len(answer["chunks"])
            if not answer["more"] or not answer["chunks"]:
                break
        reader = FileReader(
            self._reactor,
            self.metaserver,
            self.pool,
            path,
            answer["length"],
            chunks,
        )
        reader.read_ahead()
        return reader

    async def write_file(
        self, path: str, data: bytes, *, overwrite: bool = False, **options: Any
    ) -> None:
        if not data:
            await self._write_empty(path, overwrite=overwrite, **options)
            return
        writer = await self._create_or_clean_up(path, overwrite=overwrite, **options)
        try:
            await writer.write(data)
            await writer.close()
        except BaseException:
            await self.discard(writer)
            raise

    async def _write_empty(self, path: str, **options: Any) -> None:
        """An empty file, created complete in one request and one log entry."""
        await self._create(path, close=True, **options)

    async def read_file(self, path: str) -> bytes:
        reader = await self.open(path)
        try:
            return await reader.read()
        finally:
            reader.close()

    async def put(
        self,
        local: str | Path | IO[bytes],
        remote: str,
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
        **options: Any,
    ) -> int:
        """Copy a local file into DFS; returns the bytes copied. If it fails, the
        partial file is removed, so no partial file is left visible.

        ``local`` is a path, or an open binary stream (``sys.stdin.buffer``) copied
        to its end a block at a time. A stream with a file descriptor is read from
        that descriptor, where it stands, on a thread of its own (a pipe may block:
        :class:`~dfs.client.localstream.StreamReader`); one without (``BytesIO``)
        is read here.
        """
        if isinstance(local, (str, os.PathLike)):
            # Opened first: a local file that cannot be read creates nothing.
            with open(local, "rb") as source:
                writer = await self._create_or_clean_up(remote, overwrite=overwrite, **options)

                async def read() -> bytes:
                    return source.read(IO_SIZE)

                return await self._fill(writer, read, progress)
        try:
            fd = local.fileno()
        except (AttributeError, io.UnsupportedOperation):
            stream = local

            async def read_here() -> bytes:
                return stream.read(IO_SIZE)

            writer = await self._create_or_clean_up(remote, overwrite=overwrite, **options)
            return await self._fill(writer, read_here, progress)
        reader = StreamReader(self._reactor, fd, IO_SIZE)
        try:
            writer = await self._create_or_clean_up(remote, overwrite=overwrite, **options)
            return await self._fill(writer, reader.read, progress)
        finally:
            reader.close()

    async def _fill(
        self, writer: FileWriter, read: Callable[[], Awaitable[bytes]], progress: Progress | None
    ) -> int:
        """Write what ``read`` gives until it gives nothing, then close; on any
        failure discard the file, so no partial file is left visible."""
        copied = 0
        try:
            while block := await read():
                await writer.write(block)
                copied += len(block)
                if progress:
                    progress(copied)
            await writer.close()
        except BaseException:
            await self.discard(writer)
            raise
        return copied

    async def _create_or_clean_up(self, path: str, **options: Any) -> FileWriter:
        """``create``; if the caller gives up while the metaserver is creating the
        file, the file is still created, then removed before this ends."""
        creating = Deferred.fromCoroutine(self.create(path, **options))
        # The caller's wait can be cancelled; the create itself cannot, so that its
        # outcome is known and a created file can be discarded.
        waiting: Deferred[FileWriter] = Deferred()

        def settle(result: Any) -> Any:
            if waiting.called:
                return result  # cancelled meanwhile: taken below
            if isinstance(result, Failure):
                waiting.errback(result)
            else:
                waiting.callback(result)
            return None

        creating.addBoth(settle)
        try:
            return await waiting
        except CancelledError:
            try:
                writer = await creating
            except Exception:
                raise CancelledError() from None  # nothing was created
            await self.discard(writer)
            raise

    async def discard(self, writer: FileWriter) -> None:
        """Give up a file being written: stop, and remove it (best effort; if the
        metaserver cannot be reached the lease runs out and it closes at the bytes
        committed so far)."""
        writer.abandon()
        try:
            await self.delete(writer.path)
        except Exception:
            pass

    async def copy(
        self,
        source: str,
        destination: str,
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> int:
        """Copy a DFS file to another DFS path, in pieces, with the source's replication
        and chunk size; returns the bytes copied. If it fails, the partial copy is
        removed."""
        entry = await self.stat(source)
        reader = await self.open(source)
        try:
            writer = await self._create_or_clean_up(
                destination,
                overwrite=overwrite,
                replication=entry.replication,
                chunk_size=entry.chunk_size,
            )
            return await self._fill(writer, lambda: reader.read(IO_SIZE), progress)
        finally:
            reader.close()

    async def get(self, remote: str, local: str | Path, *, progress: Progress | None = None) -> int:
        """Copy a DFS file to a local file (written under a temporary name and
        renamed, so an interrupted get leaves no partial file); returns bytes copied."""
        reader = await self.open(remote)
        target = Path(local)
        temporary = target.with_name(f".{target.name}.dfs-part")
        copied = 0
        try:
            with open(temporary, "wb") as sink:
                while copied < reader.length:
                    block = await reader.read(IO_SIZE)
                    if not block:
                        break
                    sink.write(block)
                    copied += len(block)
                    if progress:
                        progress(copied)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        finally:
            reader.close()
        return copied
