"""The chunk stream: chunk data on a raw framed stream instead of AMP boxes.

A writer (a client, or a dataserver forwarding a pipeline) dials a dataserver, and
once the TLS handshake and a Ping have passed it sends :class:`OpenChunkStream`; when
the answer arrives both ends stop speaking AMP on that connection, which stays
encrypted, and exchange frames (docs/protocols.md, "The chunk stream"):

    kind (1 byte) | chunk_id (8) | version (8) | offset (8) | length (4) | payload

``DATA`` carries at most one packet (64 KiB) of a chunk at ``offset``; ``ACK`` says
that every byte of the chunk before ``offset`` is stored on the dataserver and on
every one below it in the pipeline; ``FAIL`` says the write broke, and its payload
names the dataserver that failed (``host:port``). A stream carries any number of
chunk writes, each named by chunk id and version; it is shared by every writer of a
process that writes to the same dataserver.

The sending end keeps one watchdog per stream: when bytes are outstanding and no
acknowledgement came for ``timeout`` seconds, the connection is dropped and every
write on it learns that the dataserver it dialled failed.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, ITCPTransport
from twisted.internet.protocol import ClientFactory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from dfs.protocol import bulktls
from dfs.protocol.commands import OpenChunkStream
from dfs.protocol.records import Location
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity

#: kind, chunk id, version, offset, payload length
HEADER = struct.Struct("!BQQQI")
DATA = 1
ACK = 2
FAIL = 3
#: The largest DATA payload: one packet.
MAX_PACKET = 65536
#: The largest FAIL payload: a ``host:port``.
MAX_ADDRESS = 1024

Key = tuple[int, int]  # chunk id, version


class StreamListener(Protocol):
    """A chunk write that sent data on a stream and waits for its acknowledgements."""

    def chunk_acked(self, length: int) -> None:
        """Every replica below holds the first ``length`` bytes (never decreases)."""

    def chunk_failed(self, address: str) -> None:
        """The write broke at the dataserver at ``address``."""


class DataReceiver(Protocol):
    """The dataserver's side: where the data frames of inbound streams go."""

    def chunk_data(
        self,
        stream: ChunkStream,
        chunk_id: int,
        version: int,
        offset: int,
        data: bytes,
        frame: memoryview | None,
    ) -> None:
        """One packet of a chunk write; ``frame`` is the whole DATA frame as it came
        (header and payload, for passing on unchanged), when it came in one piece."""

    def frames_done(self, stream: ChunkStream) -> None:
        """Every complete frame that arrived was delivered: time to acknowledge."""

    def stream_lost(self, stream: ChunkStream) -> None:
        """The connection is gone; nothing more will come on it."""


class _Watch:
    __slots__ = ("acked", "listener", "sent")

    def __init__(self, listener: StreamListener) -> None:
        self.listener = listener
        self.sent = 0
        self.acked = 0


class ChunkStream(TwistedProtocol):
    """One end of a chunk stream (either end: a side that sends DATA has listeners,
    a side that receives it has a :class:`DataReceiver`)."""

    log = Logger()

    def __init__(
        self,
        clock: Any,
        *,
        peer: Identity | None,
        address: str,
        timeout: float,
        receiver: DataReceiver | None = None,
    ) -> None:
        self._clock = clock
        #: who is on the other end, as its certificate says
        self.peer = peer
        #: the dataserver dialled (``host:port``), or the peer's address on a server
        self.address = address
        self._timeout = timeout
        self._receiver = receiver
        #: the start of a frame header that arrived cut
        self._head = bytearray()
        #: the header of the frame whose payload is arriving, and its pieces so far
        self._frame: tuple[int, int, int, int, int] | None = None
        self._pieces: list[bytes | memoryview] = []
        self._have = 0
        self._watches: dict[Key, _Watch] = {}
        self._watchdog: IDelayedCall | None = None
        self._progress = 0.0
        self.lost = False
        #: the last write whose data a receiver refused here (it says so once)
        self.refused: Key | None = None
        self._send: Callable[[Any], None] | None = None

    def connectionMade(self) -> None:
        # Chunk packets skip the layers a small write needs (dfs.protocol.bulktls).
        send = bulktls.sender(self.transport)
        if send is None:
            write = cast(Any, self.transport).write

            def send(data: bytes | memoryview) -> None:
                write(bytes(data))  # the same object when it is bytes already

        self._send = send

    @property
    def streaming(self) -> bool:
        """True while part of a frame has arrived and the rest is still to come: the
        sender is in the middle of sending, not pausing."""
        return self._frame is not None or bool(self._head)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.lost

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            cast(ITCPTransport, self.transport).abortConnection()

    # -- sending ----------------------------------------------------------

    def watch(self, chunk_id: int, version: int, listener: StreamListener) -> None:
        """Route the acknowledgements and failures of this write to ``listener``; on a
        stream already lost, it learns at once."""
        if self.lost:
            listener.chunk_failed(self.address)
            return
        self._watches[(chunk_id, version)] = _Watch(listener)

    def unwatch(self, chunk_id: int, version: int, listener: StreamListener) -> None:
        """Stop routing to ``listener`` (and only to it: another write of the same
        chunk and version may have taken its place since)."""
        watch = self._watches.get((chunk_id, version))
        if watch is not None and watch.listener is listener:
            del self._watches[(chunk_id, version)]

    def send_data(
        self,
        chunk_id: int,
        version: int,
        offset: int,
        data: bytes,
        frame: memoryview | None = None,
    ) -> None:
        """Send one packet; ``frame``, when given, is it already framed (a DATA frame
        received for the same chunk, version and offset, passed on)."""
        watch = self._watches.get((chunk_id, version))
        if watch is not None:
            watch.sent = offset + len(data)
        if self._watchdog is None and not self.lost:
            self._progress = self._clock.seconds()
            self._watchdog = self._clock.callLater(self._timeout, self._check)
        if self._send is not None and not self.lost:
            if frame is not None:
                self._send(frame)
            else:
                self._send(HEADER.pack(DATA, chunk_id, version, offset, len(data)) + data)

    def send_ack(self, chunk_id: int, version: int, length: int) -> None:
        if self.transport is not None:
            self.transport.write(HEADER.pack(ACK, chunk_id, version, length, 0))

    def send_failure(self, chunk_id: int, version: int, address: str) -> None:
        payload = address.encode("utf-8")[:MAX_ADDRESS]
        if self.transport is not None:
            self.transport.write(HEADER.pack(FAIL, chunk_id, version, 0, len(payload)) + payload)

    def _check(self) -> None:
        self._watchdog = None
        if self.lost or not any(w.sent > w.acked for w in self._watches.values()):
            return
        idle = self._clock.seconds() - self._progress
        if idle < self._timeout:
            self._watchdog = self._clock.callLater(self._timeout - idle, self._check)
            return
        self.log.warn(
            "no acknowledgement from {address} for {timeout:g} s; dropping the chunk stream",
            address=self.address,
            timeout=self._timeout,
        )
        self.abort()

    # -- receiving --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        frame = self._frame
        if frame is not None and self._have + len(data) < frame[4]:
            # The middle of a payload (a packet spans several TLS records): keep it.
            self._pieces.append(data)
            self._have += len(data)
            return
        size = len(data)
        position = 0
        #: where the frame being read began in ``data`` (-1: in an earlier read)
        start = -1
        acks: dict[Key, int] = {}
        failures: list[tuple[Key, str]] = []
        delivered = False
        with memoryview(data) as view:
            while True:
                if frame is None:
                    head = self._head
                    if not head and size - position >= HEADER.size:
                        frame = HEADER.unpack_from(data, position)
                        start = position
                        position += HEADER.size
                    else:
                        take = min(HEADER.size - len(head), size - position)
                        head += view[position : position + take]
                        position += take
                        if len(head) < HEADER.size:
                            break
                        frame = HEADER.unpack(head)
                        head.clear()
                        start = -1
                    if not self._well_formed(frame[0], frame[4]):
                        return
                    self._frame = frame
                kind, chunk_id, version, offset, length = frame
                take = min(length - self._have, size - position)
                if take:
                    self._pieces.append(view[position : position + take])
                    self._have += take
                    position += take
                if self._have < length:
                    break
                pieces = self._pieces
                payload = b"".join(pieces) if len(pieces) != 1 else bytes(pieces[0])
                self._frame = frame = None
                self._pieces = []
                self._have = 0
                if kind == DATA:
                    assert self._receiver is not None
                    whole = view[start:position] if start >= 0 else None
                    self._receiver.chunk_data(self, chunk_id, version, offset, payload, whole)
                    delivered = True
                elif kind == ACK:
                    key = (chunk_id, version)
                    acks[key] = max(offset, acks.get(key, 0))
                else:
                    address = payload.decode("utf-8", "replace")
                    failures.append(((chunk_id, version), address))
                if self.lost:
                    return
        if delivered and self._receiver is not None:
            self._receiver.frames_done(self)
        if acks:
            self._progress = self._clock.seconds()
            for key, length in acks.items():
                watch = self._watches.get(key)
                if watch is not None and length > watch.acked:
                    watch.acked = length
                    watch.listener.chunk_acked(length)
        for key, address in failures:
            watch = self._watches.pop(key, None)
            if watch is not None:
                watch.listener.chunk_failed(address)

    def _well_formed(self, kind: int, length: int) -> bool:
        if kind == DATA and self._receiver is not None and length <= MAX_PACKET:
            return True
        if kind == ACK and length == 0:
            return True
        if kind == FAIL and length <= MAX_ADDRESS:
            return True
        self.log.warn(
            "refused input from {peer} at {address}: malformed chunk stream frame "
            "(kind {kind}, {length} bytes); closing the connection",
            peer=str(self.peer),
            address=self.address,
            kind=kind,
            length=length,
        )
        self.abort()
        return False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        watches, self._watches = self._watches, {}
        for watch in watches.values():
            watch.listener.chunk_failed(self.address)
        if self._receiver is not None:
            self._receiver.stream_lost(self)


class _Switch(ClientFactory):
    """Hands the one stream prepared for a connection to AMP's protocol switch."""

    def __init__(self, stream: ChunkStream) -> None:
        self._stream = stream

    def buildProtocol(self, addr: IAddress | None) -> ChunkStream:
        return self._stream


async def open_stream(
    clock: Any, session: PeerSession, address: str, timeout: float
) -> ChunkStream:
    """Turn ``session`` (a fresh connection to the dataserver at ``address``, used for
    nothing else) into a chunk stream."""
    stream = ChunkStream(clock, peer=session.peer, address=address, timeout=timeout)
    call: Deferred[Any] = session.callRemote(OpenChunkStream, _Switch(stream))
    try:
        await call.addTimeout(timeout, clock)
    except BaseException:
        session.abort()
        raise
    return stream


class StreamPool:
    """One chunk stream per dataserver, dialled on first use and shared by every
    write of this process to it; one that was lost is dialled again."""

    def __init__(
        self,
        clock: Any,
        dial: Callable[[Location], Awaitable[PeerSession]],
        timeout: float,
    ) -> None:
        self._clock = clock
        self._dial = dial
        self._timeout = timeout
        self._streams: dict[Location, ChunkStream] = {}
        #: dataserver -> callers waiting for the dial in progress
        self._waiting: dict[Location, list[Deferred[ChunkStream]]] = {}

    async def get(self, address: Location) -> ChunkStream:
        stream = self._streams.get(address)
        if stream is not None and stream.is_open:
            return stream
        if address in self._waiting:
            waiter: Deferred[ChunkStream] = Deferred()
            self._waiting[address].append(waiter)
            return await waiter
        waiting: list[Deferred[ChunkStream]] = []
        self._waiting[address] = waiting
        try:
            session = await self._dial(address)
            stream = await open_stream(self._clock, session, str(address), self._timeout)
        except BaseException as error:
            del self._waiting[address]
            if isinstance(error, CancelledError):
                # The caller that dialled gave up; the others did not.
                error = ConnectionError(f"dialling {address} was given up")
            for waiter in waiting:
                waiter.errback(Failure(error))
            raise
        del self._waiting[address]
        self._streams[address] = stream
        for waiter in waiting:
            waiter.callback(stream)
        return stream

    def close(self) -> None:
        for stream in self._streams.values():
            if stream.transport is not None:
                stream.transport.loseConnection()
        self._streams.clear()
