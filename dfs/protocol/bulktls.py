"""Bulk mode for the TLS layer of a DFS connection.

Twisted's TLS layer (:class:`twisted.protocols.tls.TLSMemoryBIOProtocol`) encrypts into
memory buffers and is general: on the way out it hands OpenSSL at most 16 KiB at a
time and writes each record to the socket as its own piece; on the way in it passes
each decrypted record up the protocol stack on its own. A 64 KiB chunk packet thus
costs five encryptions, five reads of the outgoing buffer and five socket writes at
the sender, and four or five trips through the TLS layer, the session and the chunk
stream at the receiver: on a dataserver relaying a pipeline, a tenth of its CPU.

:func:`enable` switches one connection to bulk mode, which changes only how the work is
cut, not what goes on the wire:

- a write goes to OpenSSL whole (it cuts the records itself, and the memory buffer
  takes them all) and what comes out goes to the socket as one piece;
- everything one read from the socket decrypts to goes up the stack at once.

The records go to the socket at once when nothing waits before them (Twisted's TCP
transport would buffer them, ask the reactor to watch the socket for room, and send
at its next turn: two more system calls and a turn of the loop per message, both
ends, every request); anything the kernel does not take goes through the
transport's own buffer as before.

Both replace a private method of the TLS layer (``_write`` and ``_flushReceiveBIO``)
on that one connection, keeping its handling of every other case as it is: a write
OpenSSL cannot take yet is buffered, a TLS error or shutdown ends the connection
after delivering what came before it, and the handshake, producers and closing are
untouched. Where the installed Twisted lacks what is replaced, :func:`enable` leaves
the connection as it is and says so.

pyOpenSSL checks, after every call that succeeded, for errors that only its
callbacks (certificate verification, ALPN, OCSP) can leave, and allocates a buffer
per call: at four or five records per packet that costs as much as the decryption.
Bulk mode calls the same OpenSSL functions through pyOpenSSL's own bindings, with
buffers kept per connection, and hands any result other than data or "want more
input" to pyOpenSSL to raise the exception it always raises. Where pyOpenSSL lacks
those bindings it uses pyOpenSSL's methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from OpenSSL.SSL import Connection, Error, WantReadError, ZeroReturnError
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

#: What bulk mode replaces or reads on a TLS layer.
_NEEDED = (
    "_write",
    "_flushReceiveBIO",
    "_flushSendBIO",
    "_bufferedWrite",
    "_shutdownTLS",
    "_tlsShutdownFinished",
    "_tlsConnection",
    "_lostTLSConnection",
    "_aborted",
    "_handshakeDone",
    "_appSendBuffer",
)
#: The largest plaintext of one TLS record, and what a record adds to it at most
#: (TLS 1.3 with AES-GCM: header, content type and tag; TLS 1.2 adds an explicit
#: nonce instead of the type; more comes out in a second read).
_RECORD = 16384
_RECORD_OVERHEAD = 64
#: What one decryption through pyOpenSSL's methods asks for: more than a record holds.
_RECEIVE = 65536

#: What the drain reads from OpenSSL's outgoing buffer at most at once.
_DRAIN = 256 * 1024
#: The outgoing buffer of a new connection.
_OUT_FIRST = 4096

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - a pyOpenSSL without its bindings module
    _ffi = _lib = None
#: What the write straight to the socket reads on a TCP transport.
_TCP_NEEDED = (
    "dataBuffer",
    "offset",
    "_tempDataLen",
    "_writeDisconnected",
    "connected",
    "disconnecting",
    "writeSomeData",
)
_LIB_NEEDED = ("SSL_read", "SSL_write", "SSL_get_error", "BIO_read", "SSL_ERROR_WANT_READ")
_CONNECTION_NEEDED = ("_ssl", "_from_ssl", "_raise_ssl_error")

_log = Logger()
_said: list[bool] = []


def tls_layer(transport: Any) -> TLSMemoryBIOProtocol | None:
    """The TLS layer of a session's transport: the transport itself for a connection
    that was dialled (the TLS layer wraps the session), or the protocol of the TCP
    connection for one that was accepted (a TLS listener starts TLS on the socket)."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        return transport
    protocol = getattr(transport, "protocol", None)
    if isinstance(protocol, TLSMemoryBIOProtocol):
        return protocol
    return None


def enable(transport: Any) -> bool:
    """Put the TLS layer under ``transport`` in bulk mode; True if it is (now or
    already), False if there is no TLS layer or this Twisted has not the parts
    bulk mode replaces."""
    tls = tls_layer(transport)
    if tls is None:
        return False
    if is_bulk(tls):
        return True
    missing = [name for name in _NEEDED if not hasattr(tls, name)]
    if missing:
        if not _said:
            _said.append(True)
            _log.warn(
                "TLS bulk mode is off: this Twisted's TLS layer has no {missing}",
                missing=", ".join(missing),
            )
        return False
    layer = _BulkLayer(tls)
    tls._write = layer.write  # type: ignore[method-assign]
    tls._flushReceiveBIO = layer.flush_receive  # type: ignore[method-assign]
    return True


def _layer(transport: Any) -> _BulkLayer | None:
    tls = tls_layer(transport)
    if tls is None:
        return None
    layer = getattr(tls.__dict__.get("_write"), "__self__", None)
    return layer if isinstance(layer, _BulkLayer) else None


def is_bulk(transport: Any) -> bool:
    """True when the TLS layer under ``transport`` is in bulk mode."""
    return _layer(transport) is not None


def is_direct(transport: Any) -> bool:
    """True when the connection under ``transport`` is in bulk mode and calls
    OpenSSL directly (not through pyOpenSSL's methods)."""
    layer = _layer(transport)
    return layer is not None and layer.direct


def sender(transport: Any) -> Callable[[bytes | memoryview], None] | None:
    """For a connection in bulk mode, a function that sends one message (bytes or a
    memoryview of bytes) straight to the TLS layer's bulk write, in order with
    everything written to ``transport`` before; None for any other connection.

    It goes the usual way, through ``transport.write``, whenever that has more to
    do than encrypt and send: before the handshake, while a write waits for the
    peer, and once the connection is closing."""
    layer = _layer(transport)
    if layer is None:
        return None
    tls = layer.tls
    # Small writes gather in the TLS layer for a moment; they go first.
    flush = getattr(getattr(tls, "_aggregator", None), "flush", None)
    write = layer.write

    def send(data: bytes | memoryview) -> None:
        if (
            tls.disconnecting
            or tls._lostTLSConnection
            or tls._appSendBuffer
            or not tls._handshakeDone
        ):
            transport.write(bytes(data))
            return
        if flush is not None:
            flush()
        write(data)

    return send


def flusher(transport: Any) -> Callable[[], None] | None:
    """For a connection in bulk mode, a function that sends at once what small writes
    have gathered in the TLS layer (Twisted holds them until the reactor's next turn,
    to send the writes of one turn together); None for any other connection.

    A session calls it when a turn's writes are done (after handling what one read
    brought, or after a write outside of that): the answers to one read still go out
    together, but no longer wait for a turn of the reactor, on both ends of every
    request."""
    layer = _layer(transport)
    aggregator = getattr(layer.tls, "_aggregator", None) if layer is not None else None
    if aggregator is None or not all(
        hasattr(aggregator, name) for name in ("_scheduled", "_buffer", "flush")
    ):
        return None

    def flush() -> None:
        scheduled = aggregator._scheduled
        if scheduled is not None:
            aggregator._scheduled = None
            scheduled.cancel()
            aggregator.flush()

    return flush


_no_zero: Any = _ffi.new_allocator(should_clear_after_alloc=False) if _ffi is not None else None


class _BulkLayer:
    """Bulk mode for one TLS layer: its write and its receive loop."""

    def __init__(self, tls: Any) -> None:
        self.tls = tls
        #: whether the transport is one _send can write through (known at first use)
        self.through: bool | None = None
        connection: Connection = tls._tlsConnection
        self.connection = connection
        self.direct = (
            _lib is not None
            and all(hasattr(_lib, name) for name in _LIB_NEEDED)
            and all(hasattr(connection, name) for name in _CONNECTION_NEEDED)
        )
        if self.direct:
            self._ssl = cast(Any, connection)._ssl
            self._outgoing = cast(Any, connection)._from_ssl
            # One record's plaintext at most comes out of one SSL_read.
            self._in = _no_zero("char[]", _RECORD)
            # Grown to what the largest message needed, up to _DRAIN: a connection
            # that carries small messages only keeps a small buffer.
            self._out = _no_zero("char[]", _OUT_FIRST)
            self._out_size = _OUT_FIRST

    def _send(self, records: bytes) -> None:
        """Hand ``records`` to the socket now if nothing is waiting to go before them,
        the rest (or all, on any doubt) to the transport's buffer."""
        transport = self.tls.transport
        if self.through is None:
            self.through = all(hasattr(transport, name) for name in _TCP_NEEDED)
        if (
            self.through
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and not transport._tempDataLen
            and len(transport.dataBuffer) == transport.offset
        ):
            sent = transport.writeSomeData(records)
            # A lost connection comes back as an exception: the transport's own
            # write meets it again and reports it as it always does.
            if isinstance(sent, int) and sent > 0:
                if sent == len(records):
                    return
                records = records[sent:]
        transport.write(records)

    def write(self, data: bytes | memoryview) -> None:
        """Encrypt ``data`` in one call and send every record it made as one piece."""
        tls = self.tls
        if tls._lostTLSConnection:
            return
        sent = 0
        failure = None
        while sent < len(data):
            try:
                sent += self._encrypt(data if not sent else memoryview(data)[sent:])
            except WantReadError:
                # Not before the peer says more (a renegotiation): keep the rest.
                self._drain(len(data) - sent)
                tls._bufferedWrite(bytes(data[sent:]))
                return
            except Error:
                failure = Failure()
                break
        self._drain(sent)
        if failure is not None:
            # As the TLS layer does: the connection ends, with the error as the reason.
            tls._tlsShutdownFinished(failure)

    def _encrypt(self, data: bytes | memoryview) -> int:
        if not self.direct:
            return self.connection.send(data)
        with _ffi.from_buffer(data) as pointer:
            result: int = _lib.SSL_write(self._ssl, pointer, len(data))
        if result <= 0:
            cast(Any, self.connection)._raise_ssl_error(self._ssl, result)
        return result

    def _drain(self, plaintext: int) -> None:
        """Send what OpenSSL has written to its outgoing buffer, in as few pieces as
        it takes (one, when ``plaintext`` bytes were encrypted since the last drain
        and they make no more than _DRAIN bytes)."""
        size = min(_DRAIN, plaintext + _RECORD_OVERHEAD * (plaintext // _RECORD + 2))
        write = self._send
        while True:
            if self.direct:
                if size > self._out_size:
                    self._out = _no_zero("char[]", size)
                    self._out_size = size
                count = _lib.BIO_read(self._outgoing, self._out, size)
                if count <= 0:
                    return  # a memory buffer that is empty
                records = _ffi.buffer(self._out, count)[:]
            else:
                try:
                    records = self.connection.bio_read(size)
                except WantReadError:
                    return
            write(records)
            if len(records) < size:
                return

    def _decrypt(self) -> bytes | None:
        """The plaintext of the next record, None when more input is needed; raises
        what pyOpenSSL raises for anything else."""
        if not self.direct:
            try:
                return self.connection.recv(_RECEIVE)
            except WantReadError:
                return None
        ssl = self._ssl
        count = _lib.SSL_read(ssl, self._in, _RECORD)
        if count > 0:
            return _ffi.buffer(self._in, count)[:]
        if _lib.SSL_get_error(ssl, count) == _lib.SSL_ERROR_WANT_READ:
            return None
        cast(Any, self.connection)._raise_ssl_error(ssl, count)
        raise Error([("", "SSL_read", f"failed ({count}) with no error to report")])

    def flush_receive(self) -> None:
        """Decrypt everything that arrived and deliver it at once; on a TLS shutdown
        or error, deliver what came before it and then end the connection as the TLS
        layer does."""
        tls = self.tls
        pieces: list[bytes] = []
        while not tls._lostTLSConnection:
            try:
                plaintext = self._decrypt()
            except ZeroReturnError:
                # The peer shut TLS down: nothing more comes on this connection.
                _deliver(tls, pieces)
                pieces = []
                tls._shutdownTLS()
                tls._tlsShutdownFinished(None)
                continue
            except Error:
                failure = Failure()
                _deliver(tls, pieces)
                pieces = []
                tls._tlsShutdownFinished(failure)
                continue
            if plaintext is None:
                break
            pieces.append(plaintext)
        _deliver(tls, pieces)
        # What arrived may call for an answer at the TLS level (a key update).
        if not tls._lostTLSConnection:
            self._drain(0)


def _deliver(tls: Any, pieces: list[bytes]) -> None:
    if pieces and not tls._aborted:
        ProtocolWrapper.dataReceived(tls, pieces[0] if len(pieces) == 1 else b"".join(pieces))
