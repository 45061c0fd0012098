"""The leader's orders to a dataserver: copy a replica here, check a replica here.

The leader metaserver keeps every chunk at its replication factor by ordering a
target dataserver (``ReplicateChunk``, on the connection the dataserver opened to
it) to pull a replica from other dataservers: data never passes through a
metaserver. The target reads the replica with ``ReadChunk`` (bytes plus the CRC32C
the source stored for each 64 KiB block) with several reads in flight, checks every
block before a byte of it reaches the disk, writes the replica through the chunk
store (a temporary name, fsynced, renamed) and reports it to every metaserver as a
pipeline write does. A source that fails in any way (unreachable, no such replica,
a stale one, a block that fails its CRC, too slow) is left for the next one, and
what it sent is thrown away. The order carries a copy token minted for this
dataserver, which every ReadChunk to a source presents.

``VerifyChunk`` re-reads a replica a reader reported bad; a corrupt one is
quarantined and reported (``ReplicaCorrupt``), as the scrubber does.

Everything that touches the network or the clock is injected, so the logic runs in
tests on a :class:`~twisted.internet.task.Clock` with fake sources.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
import google_crc32c
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from dfs.dataserver.chunkstore import CHECKSUM_BLOCK, ChunkStore, ChunkWriter, StoredChunk
from dfs.protocol.commands import ReadChunk
from dfs.protocol.errors import (
    ChecksumMismatch,
    ChunkNotFound,
    DFSError,
    InvalidArgument,
    StaleChunk,
)
from dfs.protocol.records import Location

#: Bytes asked for in one ReadChunk, and how many such reads are in flight to a
#: source. Measured on a 2-CPU machine, a 64 MiB chunk over TLS between two local
#: dataservers (best of 3, two runs): 1 MiB x 4 about 320-350 MiB/s (0.2 s a chunk);
#: 1 MiB x 8, 2 MiB x 2 or x 4 and 256 KiB x 8 within the noise of it, 1 MiB x 1 or
#: x 2 a quarter slower. An answer of 1 MiB stays well under the 4 MiB box a session
#: accepts.
READ_REQUEST = 1024 * 1024
READ_WINDOW = 4
#: How long one read, or reaching a source, may take before the source is given up.
READ_TIMEOUT = 30.0
CONNECT_TIMEOUT = 15.0

#: Runs a blocking call in a thread and answers its result (deferToThread).
InThread = Callable[..., Deferred[Any]]


class SourceSession(Protocol):
    """What the replicator needs of a session with a source dataserver."""

    transport: Any

    def callRemote(self, command: Any, /, *arguments: Any, **keywords: Any) -> Any: ...


@attrs.define
class Throttle:
    """Holds a flow of bytes to ``rate`` per second (0: no bound).

    Each :meth:`reserve` books the next bytes right after those booked before, so
    over any stretch of time the flow moves at most ``rate`` bytes per second plus
    the one reservation in progress.
    """

    rate: int
    _free_at: float | None = None

    def reserve(self, nbytes: int, now: float) -> float:
        """Seconds to wait before moving ``nbytes`` more (0 when under the rate)."""
        if self.rate <= 0:
            return 0.0
        start = now if self._free_at is None else max(self._free_at, now)
        self._free_at = start + nbytes / self.rate
        return start - now


async def quarantine_replica(
    store: ChunkStore,
    in_thread: InThread,
    chunk_id: int,
    version: int,
    reason: str,
    on_corrupt: Callable[[int, int, str], None],
) -> bool:
    """Move a corrupt replica aside and report it, once: False if it was gone
    already (deleted, replaced, or quarantined by another check meanwhile)."""
    try:
        await in_thread(store.quarantine, chunk_id, version)
    except ChunkNotFound:
        return False
    on_corrupt(chunk_id, version, reason)
    return True


@attrs.define
class ReplicationCounters:
    """What the status document and /metrics show of copies and checks."""

    copies: int = 0  # replicas copied here
    failures: int = 0  # orders answered with an error
    bytes: int = 0  # bytes received from sources and stored (including failed attempts)
    in_progress: int = 0
    source_failures: int = 0  # sources given up (a copy may then succeed from the next)
    verifications: int = 0
    corrupt: int = 0  # replicas VerifyChunk found corrupt


class _SourceFailed(Exception):
    """A source failed; the copy moves to the next one. Local failures (no space
    here, a disk error) are not wrapped: trying another source would not help."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@attrs.define(eq=False)
class _Copy:
    """One copy in progress, and the orders waiting for its outcome (the leader
    resends an order whose answer it lost)."""

    chunk_id: int
    version: int
    #: the copy token the leader minted for this dataserver, shown to the sources
    token: str = ""
    waiters: list[Deferred[Location]] = attrs.field(factory=list)
    task: Deferred[None] | None = None
    #: The replica is being made durable in a thread: it is no longer cancelled
    #: (the thread would go on under an aborted writer).
    finishing: bool = False

    def wait(self) -> Deferred[Location]:
        waiter: Deferred[Location] = Deferred()
        self.waiters.append(waiter)
        return waiter

    def ended(self) -> Deferred[None]:
        """Fires once the copy is over, whatever its outcome."""
        ending = self.wait()
        ending.addErrback(lambda _: None)
        return ending.addCallback(lambda _: None)

    def cancel(self) -> None:
        if self.task is not None and not self.finishing:
            self.task.cancel()

    def settle(self, outcome: Location | Failure) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)


class ChunkReplicator(Service):
    """Carries out the leader's ReplicateChunk and VerifyChunk orders.

    ``connect`` opens a session of its own with a source dataserver (one per copy:
    a copy's bulk reads then never queue behind, or in front of, a pipeline's
    control calls to the same dataserver); ``on_received`` reports a stored replica
    to every metaserver, ``on_corrupt`` a quarantined one.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        store: ChunkStore,
        *,
        location: Location,
        connect: Callable[[Location], Awaitable[SourceSession]],
        on_received: Callable[[StoredChunk], None],
        on_corrupt: Callable[[int, int, str], None],
        in_thread: InThread = deferToThread,
        request: int = READ_REQUEST,
        window: int = READ_WINDOW,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        if request <= 0 or request % CHECKSUM_BLOCK or window < 1:
            raise ValueError(f"bad read plan: {window} reads of {request} bytes")
        self._reactor = reactor
        self.store = store
        self.location = location
        self._connect = connect
        self._on_received = on_received
        self._on_corrupt = on_corrupt
        self._in_thread = in_thread
        self._request = request
        self._window = window
        self._timeout = timeout
        self.counters = ReplicationCounters()
        self._copies: dict[int, _Copy] = {}

    def stopService(self) -> Deferred[Any]:
        """Abandon the copies in progress (their partial replicas are removed; one
        already being made durable completes): the leader orders them again."""
        super().stopService()
        copies = list(self._copies.values())
        ended = DeferredList([copy.ended() for copy in copies])
        for copy in copies:
            copy.cancel()
        return ended

    def status(self) -> dict[str, Any]:
        return attrs.asdict(self.counters)

    # -- ReplicateChunk ------------------------------------------------------------

    async def replicate(
        self,
        chunk_id: int,
        version: int,
        length: int,
        sources: Sequence[Location],
        rate: int,
        *,
        token: str = "",
    ) -> Location:
        """Copy the replica here; answers the address it was copied from (this
        dataserver's own when the replica was here already)."""
        if length < 0 or rate < 0:
            raise InvalidArgument(
                f"chunk {chunk_id}: length {length} and rate {rate} must not be negative"
            )
        while (copy := self._copies.get(chunk_id)) is not None:
            if copy.version == version:
                # The order again (its answer was lost): its token lasts longer.
                copy.token = token or copy.token
                self.log.info(
                    "chunk {chunk_id} version {version} ordered again while it is being "
                    "copied: answering when that copy ends",
                    chunk_id=chunk_id,
                    version=version,
                )
                return await copy.wait()
            if copy.version > version:
                raise StaleChunk(
                    f"chunk {chunk_id}: version {version} ordered while version "
                    f"{copy.version} is being copied here"
                )
            # The chunk moved on: the copy of the older version is of no use.
            copy.cancel()
            await copy.ended()
        copy = _Copy(chunk_id, version, token)
        self._copies[chunk_id] = copy
        waiter = copy.wait()  # before it starts: a copy may end at once
        copy.task = Deferred.fromCoroutine(self._run(copy, length, list(sources), rate))
        return await waiter

    async def _run(self, copy: _Copy, length: int, sources: list[Location], rate: int) -> None:
        chunk_id = copy.chunk_id
        outcome: Location | Failure
        self.counters.in_progress += 1
        try:
            outcome = await self._copy(copy, length, sources, rate)
        except Exception:
            outcome = Failure()
            self.counters.failures += 1
        finally:
            self.counters.in_progress -= 1
            if self._copies.get(chunk_id) is copy:
                del self._copies[chunk_id]
        copy.settle(outcome)

    async def _copy(self, copy: _Copy, length: int, sources: list[Location], rate: int) -> Location:
        chunk_id, version = copy.chunk_id, copy.version
        stored = self.store.get(chunk_id)
        if stored is not None and stored.version == version:
            if stored.length != length:
                raise InvalidArgument(
                    f"chunk {chunk_id} version {version} is here with {stored.length} "
                    f"bytes, not the {length} ordered"
                )
            return self.location  # done before: the leader resent a lost answer
        if stored is not None and stored.version > version:
            raise StaleChunk(
                f"chunk {chunk_id}: version {version} ordered, newer version {stored.version} here"
            )
        if stored is not None:
            # Stale: never served again, and its space is better used by the copy.
            await self._in_thread(self.store.delete, chunk_id, stored.version)
            self.log.info(
                "chunk {chunk_id}: stale version {old} removed to copy version {version}",
                chunk_id=chunk_id,
                old=stored.version,
                version=version,
            )
        if not sources:
            raise InvalidArgument(f"chunk {chunk_id} version {version}: no source to copy from")
        began = self._reactor.seconds()
        problems: list[str] = []
        last: Exception | None = None
        for address in sources:
            try:
                stored = await self._copy_from(copy, address, length, rate)
            except _SourceFailed as failed:
                last = failed.error
                reason = f"{type(failed.error).__name__}: {failed.error}"
                problems.append(f"{address}: {reason}")
                self.counters.source_failures += 1
                self.log.warn(
                    "copy of chunk {chunk_id} version {version} from {source} failed: "
                    "{error}; its bytes are discarded",
                    chunk_id=chunk_id,
                    version=version,
                    source=address,
                    error=reason,
                )
                continue
            self.counters.copies += 1
            seconds = self._reactor.seconds() - began
            self.log.info(
                "chunk {chunk_id} version {version} copied from {source} "
                "({length} bytes in {seconds:.2f}s)",
                chunk_id=chunk_id,
                version=version,
                source=address,
                length=stored.length,
                seconds=seconds,
            )
            self._on_received(stored)
            return address
        assert last is not None
        message = (
            f"chunk {chunk_id} version {version}: no source could be copied from "
            f"({'; '.join(problems)})"
        )
        # The last source's own error class when it has one on the wire; a source
        # that could not be reached at all leaves none, and counts as not holding it.
        kind = type(last) if isinstance(last, DFSError) else ChunkNotFound
        raise kind(message)

    async def _copy_from(
        self, copy: _Copy, address: Location, length: int, rate: int
    ) -> StoredChunk:
        """One attempt from one source; on any failure nothing of it stays on disk."""
        chunk_id, version = copy.chunk_id, copy.version
        writer = self.store.open_writer(chunk_id, version, expected_length=length)
        session: SourceSession | None = None
        try:
            try:
                opening = Deferred.fromCoroutine(_awaited(self._connect(address)))
                opening.addTimeout(CONNECT_TIMEOUT, self._reactor)
                session = await opening
            except CancelledError:
                raise
            except Exception as error:
                raise _SourceFailed(error) from None
            await self._pull(session, address, writer, length, rate, copy)
            copy.finishing = True
            try:
                return await self._in_thread(writer.finish)
            finally:
                copy.finishing = False
        except BaseException:
            writer.abort()
            raise
        finally:
            if session is not None and session.transport is not None:
                session.transport.loseConnection()

    def _plan(self, length: int, rate: int) -> deque[tuple[int, int, int]]:
        """(offset, bytes asked, bytes expected) of every read. The last read asks
        one byte more than the chunk holds: a source holding more than ``length``
        bytes then shows it (its answer runs on to the end of the next block)."""
        size = self._request
        if rate:
            # Smaller reads under a low rate: the pauses between them stay short.
            size = max(CHECKSUM_BLOCK, min(size, rate // 4 // CHECKSUM_BLOCK * CHECKSUM_BLOCK))
        plan = deque(
            (offset, min(size, length - offset), min(size, length - offset))
            for offset in range(0, length, size)
        )
        offset, ask, expect = plan.pop() if plan else (0, 0, 0)
        plan.append((offset, ask + 1, expect))
        return plan

    async def _pull(
        self,
        session: SourceSession,
        address: Location,
        writer: ChunkWriter,
        length: int,
        rate: int,
        copy: _Copy,
    ) -> None:
        """Read the replica from ``session`` into ``writer``, ``window`` reads in
        flight, never starting a read before ``rate`` allows it."""
        chunk_id, version = writer.chunk_id, writer.version
        plan = self._plan(length, rate)
        throttle = Throttle(rate)
        pending: deque[tuple[int, int, Deferred[Any]]] = deque()
        start_at: float | None = None  # when the next read may start
        try:
            while plan or pending:
                now = self._reactor.seconds()
                while plan and len(pending) < self._window:
                    offset, ask, expect = plan[0]
                    if start_at is None:
                        start_at = now + throttle.reserve(expect, now)
                    if start_at > now:
                        break
                    plan.popleft()
                    start_at = None
                    call = session.callRemote(
                        ReadChunk,
                        chunk_id=chunk_id,
                        version=version,
                        offset=offset,
                        length=ask,
                        token=copy.token,
                    )
                    call.addTimeout(self._timeout, self._reactor)
                    pending.append((offset, expect, call))
                if not pending:
                    assert start_at is not None
                    await deferLater(self._reactor, start_at - now)
                    continue
                offset, expect, call = pending.popleft()
                try:
                    answer = await call
                except CancelledError:
                    raise
                except Exception as error:
                    raise _SourceFailed(error) from None
                data = _checked(
                    address, chunk_id, version, offset, expect, answer["data"], answer["checksums"]
                )
                writer.append(data)
                self.counters.bytes += len(data)
        finally:
            for *_, call in pending:
                call.addErrback(lambda _: None)
                call.cancel()
        if writer.length != length:  # the plan covers the chunk: a bug if not
            raise AssertionError(f"chunk {chunk_id}: copied {writer.length} of {length} bytes")

    # -- VerifyChunk --------------------------------------------------------------

    async def verify(self, chunk_id: int, version: int) -> bool:
        """Re-read the replica against its checksums; quarantine and report it if it
        fails. ChunkNotFound / StaleChunk when this version is not here."""
        intact = await self._in_thread(self.store.verify, chunk_id, version)
        self.counters.verifications += 1
        if intact:
            self.log.info(
                "chunk {chunk_id} version {version} checked on request: intact",
                chunk_id=chunk_id,
                version=version,
            )
            return True
        self.counters.corrupt += 1
        await quarantine_replica(
            self.store,
            self._in_thread,
            chunk_id,
            version,
            "failed its checksums when checked on the leader's request",
            self._on_corrupt,
        )
        return False


async def _awaited(value: Awaitable[SourceSession]) -> SourceSession:
    return await value


def _checked(
    address: Location,
    chunk_id: int,
    version: int,
    offset: int,
    expect: int,
    data: bytes,
    checksums: list[int],
) -> bytes:
    """``data`` if it is the ``expect`` bytes wanted and every block matches the CRC32C
    the source sent; otherwise the source fails with ChecksumMismatch."""
    where = f"chunk {chunk_id} version {version} from {address} at {offset}"
    blocks = -(-expect // CHECKSUM_BLOCK)
    if len(data) != expect or len(checksums) != blocks:
        raise _SourceFailed(
            ChecksumMismatch(
                f"{where}: {len(data)} bytes and {len(checksums)} checksums where "
                f"{expect} bytes were expected (the replica there has another length)"
            )
        )
    value = google_crc32c.value
    for i, crc in enumerate(checksums):
        block = data if blocks == 1 else data[i * CHECKSUM_BLOCK : (i + 1) * CHECKSUM_BLOCK]
        if value(block) != crc:
            raise _SourceFailed(
                ChecksumMismatch(
                    f"{where}: block at {offset + i * CHECKSUM_BLOCK} fails its CRC32C"
                )
            )
    return data
