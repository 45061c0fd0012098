"""A blocking facade over the async client, for scripts and notebooks.

crochet runs the Twisted reactor in a background thread; every call here hands a
coroutine to it and waits for the answer:

    from dfs.client.blocking import connect
    with connect("client_config.json") as client:
        client.mkdir("/data", parents=True)
        with client.open("/data/a.txt", "wb") as f:
            f.write(b"hello")
        print(client.open("/data/a.txt").read())
"""

from __future__ import annotations

import io
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, Generic, TypeVar, cast

import crochet
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.python.log import err
from twisted.python.threadable import isInIOThread

from dfs.client.admin import FsckReport
from dfs.client.client import DFSClient, Progress
from dfs.client.reader import FileReader
from dfs.client.writer import SMALL_CHUNK, FileWriter
from dfs.config import ClientConfig, load_client_config
from dfs.protocol.records import Entry

T = TypeVar("T")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def run(
    coroutine_function: Callable[..., Coroutine[Any, Any, T]],
    *args: Any,
    timeout: float | None = None,
    **kwargs: Any,
) -> T:
    """Run ``coroutine_function(*args, **kwargs)`` in the reactor thread and wait. On
    Ctrl-C or the timeout it is cancelled, and however it ends is not logged."""
    result: Eventual[T] = run_eventually(coroutine_function, *args, **kwargs)
    try:
        return result.wait(timeout)
    except (KeyboardInterrupt, crochet.TimeoutError):
        result.abandon()
        raise


class Eventual(Generic[T]):
    """An operation running in the reactor thread, which the caller polls, waits for,
    or gives up on: crochet's EventualResult cut to what the facade needs, plus
    :meth:`abandon`.

    crochet runs the reactor thread; the hop itself is done here, because crochet's
    (a decorator built anew for every call, a registry, a condition variable) cost a
    blocking call a fifth of its time on a namespace request. A lock stands for the
    outcome: held until the operation ends, released once in the reactor thread."""

    __slots__ = (
        "__weakref__",
        "_abandoned",
        "_cancelled",
        "_deferred",
        "_ended",
        "_outcome",
        "_settled",
        "_taken",
    )

    def __init__(self) -> None:
        self._outcome: Any = None
        self._ended = threading.Lock()
        self._ended.acquire()
        #: read and set in the reactor thread only: whether it ended
        self._settled = False
        #: set in the reactor thread only: the operation, once started
        self._deferred: Deferred[T] | None = None
        #: read and set in the reactor thread only
        self._cancelled = False
        self._abandoned = False
        #: set by the waiting thread: whether its outcome was taken
        self._taken = False

    def _start(
        self,
        coroutine_function: Callable[..., Coroutine[Any, Any, T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        # In the reactor thread.
        try:
            deferred = Deferred.fromCoroutine(coroutine_function(*args, **kwargs))
        except BaseException:
            self._settle(Failure())
            return
        self._deferred = deferred
        deferred.addBoth(self._settle)
        if self._cancelled:
            deferred.cancel()

    def _settle(self, outcome: object) -> None:
        # In the reactor thread, once. A failure after the caller gave up is nobody's
        # to report.
        if self._settled:
            return  # failed when the reactor stopped; this is its late end
        self._settled = True
        if self._abandoned and isinstance(outcome, Failure):
            outcome = None
        self._outcome = outcome
        _pending.discard(self)
        self._ended.release()

    def wait(self, timeout: float | None) -> T:
        """Its value, or its exception; crochet.TimeoutError if it takes longer."""
        if isInIOThread():
            raise RuntimeError("Eventual.wait() must not be called in the reactor thread")
        wait = -1 if timeout is None else min(max(timeout, 0), threading.TIMEOUT_MAX)
        if not self._ended.acquire(timeout=wait):
            raise crochet.TimeoutError()
        # Whoever waits next finds it ended too.
        self._ended.release()
        self._taken = True
        outcome = self._outcome
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return cast(T, outcome)

    def cancel(self) -> None:
        _reactor().callFromThread(self._cancel)

    def _cancel(self) -> None:
        self._cancelled = True
        if self._deferred is not None:
            self._deferred.cancel()

    def abandon(self, grace: float = 0.0) -> None:
        """Cancel it and give it up to ``grace`` seconds to end (a transfer removes
        its partial file). However it ends, then or later, nothing is logged: the
        caller has told the user why it stopped. A KeyboardInterrupt while waiting
        (a second Ctrl-C) stops the wait and is raised."""
        self.cancel()
        try:
            self.wait(grace)
        except Exception:
            pass  # its failure, or no end within the grace
        finally:
            # In the reactor thread, so that the operation ends either before this
            # (and its outcome is taken below) or after it (and dropped there).
            done = threading.Event()

            def give_up() -> None:
                self._abandoned = True
                done.set()

            _reactor().callFromThread(give_up)
            done.wait(1)
            self._taken = True

    def __del__(self) -> None:
        # As crochet does: a failure nobody took is reported, not lost.
        if not self._taken and isinstance(self._outcome, Failure):
            err(self._outcome, "Unhandled error in EventualResult")


#: Operations not yet ended: failed with ReactorStopped if the reactor stops first,
#: so that no thread waits for them forever.
_pending: weakref.WeakSet[Eventual[Any]] = weakref.WeakSet()
_watching: list[bool] = []


def _reactor_stopping() -> None:
    for eventual in list(_pending):
        eventual._settle(Failure(crochet.ReactorStopped()))


def run_eventually(
    coroutine_function: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any
) -> Eventual[T]:
    """Start it in the reactor thread; the caller polls, waits, or abandons it."""
    reactor = _reactor()
    if not _watching:
        _watching.append(True)
        reactor.callFromThread(
            reactor.addSystemEventTrigger, "before", "shutdown", _reactor_stopping
        )
    eventual: Eventual[T] = Eventual()
    _pending.add(eventual)
    reactor.callFromThread(eventual._start, coroutine_function, args, kwargs)
    return eventual


class RemoteReader(io.RawIOBase):
    """A DFS file open for reading, as a Python binary file.

    A small file's bytes come with the open (``whole``: one hop to the reactor thread
    for the file, not two) and reads are served from them."""

    def __init__(self, reader: FileReader, whole: bytes | None = None) -> None:
        super().__init__()
        self._reader = reader
        self._whole = whole

    def _from_whole(self, size: int) -> bytes | None:
        whole = self._whole
        if whole is None:
            return None
        start = self._reader.position
        end = len(whole) if size < 0 else min(len(whole), start + size)
        if start >= end:
            return b""
        self._reader.position = end
        return whole if start == 0 and end == len(whole) else whole[start:end]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._from_whole(len(buffer))
        if data is None:
            data = run(self._reader.read, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self._from_whole(size)
        return data if data is not None else run(self._reader.read, size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._reader.seek(offset, whence)

    def tell(self) -> int:
        return self._reader.tell()

    def close(self) -> None:
        if not self.closed:
            # Only cancels the requests still running ahead: nothing to wait for, and
            # whatever this thread asks the reactor next runs after it.
            _reactor().callFromThread(self._reader.close)
        super().close()


class RemoteWriter(io.RawIOBase):
    """A DFS file open for writing, as a Python binary file; close() makes it whole.

    Leaving a ``with`` block through an exception does not close it: the file is
    removed instead, so that no partial file looks complete.

    The first SMALL_CHUNK bytes wait here, in the caller's thread: a small file then
    goes to the reactor once, with its close, rather than once per write.
    """

    def __init__(self, writer: FileWriter, client: DFSClient) -> None:
        super().__init__()
        self._writer = writer
        self._client = client
        #: bytes written and not handed to the writer yet
        self._held = bytearray()
        #: whether writes go straight to the writer (the file is not a small one)
        self._streaming = False

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is None:
            self.close()
            return
        self.discard()

    def discard(self) -> None:
        """Stop writing and remove the file."""
        if self.closed:
            return
        self._held.clear()
        run(self._client.discard, self._writer)
        super().close()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        size = len(data)
        if not self._streaming:
            if len(self._held) + size <= SMALL_CHUNK:
                self._held += data
                return size
            self._streaming = True
            data = bytes(self._held) + data
            self._held.clear()
        run(self._writer.write, data)
        return size

    def close(self) -> None:
        if not self.closed:
            held = bytes(self._held)
            self._held.clear()
            run(_write_and_close, self._writer, held)
        super().close()


async def _open_to_read(client: DFSClient, path: str) -> tuple[FileReader, bytes | None]:
    """The file open for reading, and a small one's bytes (its request went out with
    the open); None when it is not small, or its read failed (it then fails again, and
    says why, when the caller reads)."""
    reader = await client.open(path)
    if reader.length == 0:
        return reader, b""
    if not reader.small:
        return reader, None
    try:
        whole = await reader.read()
    except CancelledError:
        raise
    except Exception:
        whole = None
        reader.close()  # the caller's read starts over, from every replica
    reader.seek(0)
    return reader, whole


async def _write_and_close(writer: FileWriter, data: bytes) -> None:
    if data:
        await writer.write(data)
    await writer.close()


class BlockingClient:
    """The methods of :class:`DFSClient`, blocking."""

    def __init__(self, client: DFSClient, timeout: float | None = None) -> None:
        self._client = client
        self._timeout = timeout

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def user(self) -> str:
        return self._client.user

    def close(self) -> None:
        crochet.run_in_reactor(self._client.close)().wait(10)

    def _run(self, method: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        return run(method, *args, timeout=self._timeout, **kwargs)

    def mkdir(self, path: str, *, parents: bool = False, mode: int = 0o777) -> None:
        self._run(self._client.mkdir, path, parents=parents, mode=mode)

    def stat(self, path: str) -> Entry:
        return self._run(self._client.stat, path)

    def listdir(self, path: str) -> list[Entry]:
        return self._run(self._client.listdir, path)

    def delete(self, path: str, *, recursive: bool = False) -> None:
        self._run(self._client.delete, path, recursive=recursive)

    def rename(self, source: str, destination: str) -> None:
        self._run(self._client.rename, source, destination)

    def set_replication(self, path: str, replication: int) -> None:
        self._run(self._client.set_replication, path, replication)

    def chmod(self, path: str, mode: int) -> None:
        self._run(self._client.chmod, path, mode)

    def chown(self, path: str, owner: str | None = None, group: str | None = None) -> None:
        self._run(self._client.chown, path, owner, group)

    def du(self, path: str) -> dict[str, int]:
        return self._run(self._client.du, path)

    def df(self) -> dict[str, int]:
        return self._run(self._client.df)

    def metaserver_status(self) -> list[dict[str, Any]]:
        return self._run(self._client.metaserver_status)

    def add_metaserver(self, raft_address: str) -> None:
        self._run(self._client.add_metaserver, raft_address)

    def remove_metaserver(self, raft_address: str) -> None:
        self._run(self._client.remove_metaserver, raft_address)

    def fsck(self, path: str = "/") -> FsckReport:
        return self._run(self._client.fsck, path)

    def backup(self, out: IO[bytes]) -> dict[str, Any]:
        return self._run(self._client.backup, out)

    def dataservers(self) -> list[dict[str, Any]]:
        return self._run(self._client.dataservers)

    def decommission(self, name: str) -> None:
        self._run(self._client.decommission, name)

    def recommission(self, name: str) -> None:
        self._run(self._client.recommission, name)

    def safemode(self, action: str = "get") -> dict[str, Any]:
        return self._run(self._client.safemode, action)

    def balancer(self, action: str = "status", threshold: float = 0.0) -> dict[str, Any]:
        return self._run(self._client.balancer, action, threshold)

    def groups(self) -> dict[str, list[str]]:
        return self._run(self._client.groups)

    def group_add(self, group: str, users: list[str]) -> list[str]:
        return self._run(self._client.group_add, group, users)

    def group_remove(self, group: str, users: list[str]) -> list[str]:
        return self._run(self._client.group_remove, group, users)

    def add_user(self, name: str) -> str:
        return self._run(self._client.add_user, name)

    def quota(self, path: str) -> dict[str, Any]:
        return self._run(self._client.quota, path)

    def set_quota(
        self, path: str, *, files: int | None = None, bytes: int | None = None
    ) -> dict[str, Any]:
        return self._run(self._client.set_quota, path, files=files, bytes=bytes)

    def clear_quota(self, path: str) -> dict[str, Any]:
        return self._run(self._client.clear_quota, path)

    def open(self, path: str, mode: str = "rb", **options: Any) -> io.RawIOBase:
        """``"rb"`` to read, ``"wb"`` to create (``"xb"`` to fail if it exists)."""
        if mode == "rb":
            return RemoteReader(*self._run(_open_to_read, self._client, path))
        if mode in ("wb", "xb"):
            writer = self._run(self._client.create, path, overwrite=mode == "wb", **options)
            return RemoteWriter(writer, self._client)
        raise ValueError(f"mode must be 'rb', 'wb' or 'xb', not {mode!r}")

    def read_file(self, path: str) -> bytes:
        return self._run(self._client.read_file, path)

    def write_file(
        self, path: str, data: bytes, *, overwrite: bool = False, **options: Any
    ) -> None:
        """Create ``path`` holding ``data``; options as for :meth:`DFSClient.create`."""
        self._run(self._client.write_file, path, data, overwrite=overwrite, **options)

    def put(
        self,
        local: str | Path | IO[bytes],
        remote: str,
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
        **options: Any,
    ) -> int:
        return self._run(
            self._client.put, local, remote, overwrite=overwrite, progress=progress, **options
        )

    def copy(
        self,
        source: str,
        destination: str,
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> int:
        return self._run(
            self._client.copy, source, destination, overwrite=overwrite, progress=progress
        )

    def get(self, remote: str, local: str | Path, *, progress: Progress | None = None) -> int:
        return self._run(self._client.get, remote, local, progress=progress)

    @property
    def async_client(self) -> DFSClient:
        return self._client


def connect(config: str | Path | ClientConfig, timeout: float | None = None) -> BlockingClient:
    """Start the reactor thread (once) and connect as the config says."""
    crochet.setup()
    if not isinstance(config, ClientConfig):
        config = load_client_config(config)
    client = run(DFSClient.connect, _reactor(), config, timeout=timeout)
    return BlockingClient(client, timeout)
