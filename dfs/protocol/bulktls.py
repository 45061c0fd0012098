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

Both replace a private method of the TLS layer (``_write`` and ``_flushReceiveBIO``)
on that one connection, keeping its handling of every other case as it is: a write
OpenSSL cannot take yet is buffered, a TLS error or shutdown ends the connection
after delivering what came before it, and the handshake, producers and closing are
untouched. Where the installed Twisted lacks what is replaced, :func:`enable` leaves
the connection as it is and says so.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
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
)
#: The largest plaintext of one TLS record, and what a record adds to it at most
#: (TLS 1.3 with AES-GCM: header, content type and tag; TLS 1.2 adds an explicit
#: nonce instead of the type; more comes out in a second read).
_RECORD = 16384
_RECORD_OVERHEAD = 64
#: What one decryption asks for: more than a record holds.
_RECEIVE = 65536

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
    tls._write = MethodType(_write, tls)  # type: ignore[method-assign]
    tls._flushReceiveBIO = MethodType(_flush_receive, tls)  # type: ignore[method-assign]
    return True


def is_bulk(transport: Any) -> bool:
    """True when the TLS layer under ``transport`` is in bulk mode."""
    tls = tls_layer(transport)
    return tls is not None and getattr(tls.__dict__.get("_write"), "__func__", None) is _write


def _write(tls: Any, data: bytes) -> None:
    """Encrypt ``data`` in one call and send every record it made as one piece."""
    if tls._lostTLSConnection:
        return
    connection = tls._tlsConnection
    sent = 0
    failure = None
    while sent < len(data):
        try:
            sent += connection.send(data if not sent else memoryview(data)[sent:])
        except WantReadError:
            # Not before the peer says more (a renegotiation): keep the rest.
            _drain(tls, len(data) - sent)
            tls._bufferedWrite(data[sent:])
            return
        except Error:
            failure = Failure()
            break
    _drain(tls, sent)
    if failure is not None:
        # As the TLS layer does: the connection ends, with the error as the reason.
        tls._tlsShutdownFinished(failure)


def _drain(tls: Any, plaintext: int) -> None:
    """Send what OpenSSL has written to its outgoing buffer, in as few pieces as it
    takes (one, when ``plaintext`` bytes were encrypted since the last drain)."""
    connection = tls._tlsConnection
    size = plaintext + _RECORD_OVERHEAD * (plaintext // _RECORD + 2)
    while True:
        try:
            records = connection.bio_read(size)
        except WantReadError:
            return
        tls.transport.write(records)
        if len(records) < size:
            return


def _flush_receive(tls: Any) -> None:
    """Decrypt everything that arrived and deliver it at once; on a TLS shutdown or
    error, deliver what came before it and then end the connection as the TLS layer
    does."""
    connection = tls._tlsConnection
    pieces: list[bytes] = []
    while not tls._lostTLSConnection:
        try:
            pieces.append(connection.recv(_RECEIVE))
        except WantReadError:
            break
        except ZeroReturnError:
            # The peer shut TLS down: nothing more comes on this connection.
            _deliver(tls, pieces)
            pieces = []
            tls._shutdownTLS()
            tls._tlsShutdownFinished(None)
        except Error:
            failure = Failure()
            _deliver(tls, pieces)
            pieces = []
            tls._tlsShutdownFinished(failure)
    _deliver(tls, pieces)
    # What arrived may call for an answer at the TLS level (a key update).
    tls._flushSendBIO()


def _deliver(tls: Any, pieces: list[bytes]) -> None:
    if pieces and not tls._aborted:
        ProtocolWrapper.dataReceived(tls, pieces[0] if len(pieces) == 1 else b"".join(pieces))
