"""An AMP connection that knows who is on the other end, and refuses what it must.

Both ends of every DFS connection use :class:`PeerSession`. When the TLS handshake
completes, the peer's certificate (already verified against the cluster CA by
OpenSSL) gives its :class:`~dfs.security.identity.Identity`. Before any responder
runs, the command's ``allowed_roles`` is checked against that identity. Refused
handshakes, refused commands and malformed input are logged with their reason and
affect only the connection they came on.

Then both sides state their protocol version (:mod:`dfs.protocol.version`): the
dialling side sends Hello as its first box, pipelined with whatever it asks next, and
the accepting side answers it before dispatching anything else. A peer that speaks an
incompatible version, or sends another command first, is refused.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from types import CoroutineType
from typing import Any, cast

from cryptography import x509
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, ITCPTransport
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from dfs import __version__
from dfs.protocol import bulktls
from dfs.protocol.commands import DFSCommand, Ping
from dfs.protocol.errors import InvalidArgument, PermissionDenied
from dfs.protocol.limits import ConnectionGuard, ServerLimits, unsent_bytes
from dfs.protocol.version import (
    PROTOCOL_VERSION,
    Hello,
    IncompatibleProtocol,
    ProtocolVersion,
    mismatch,
)
from dfs.security.identity import Identity, InvalidIdentity, Role, identity_from_certificate
from dfs.security.tls import attachment, peer_certificate, verify_failure

#: The largest box a peer may send: a data packet is 64 KiB, a page of a listing
#: well under one MiB; anything much larger is an attempt to exhaust memory.
MAX_BOX_BYTES = 4 * 1024 * 1024

#: The most keys a box may have: a command has a dozen arguments at most, and a Bulk
#: value of MAX_BOX_BYTES is 64 pieces; a box of countless tiny keys would cost far
#: more memory than its bytes on the wire.
MAX_BOX_KEYS = 1024
#: A box's bytes are weighed against the connection's memory limit at its first value
#: and again every this many bytes (the limit is at least 1 MiB), not at every value.
BUFFER_CHECK_BYTES = 32 * 1024


def _describe(reason: Failure) -> str:
    """One line for a connection-lost reason, OpenSSL error stacks included."""
    value = reason.value
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list):
        # OpenSSL.SSL.Error carries [(library, function, reason), ...]
        parts = [entry[-1] for entry in args[0] if isinstance(entry, tuple) and entry[-1]]
        if parts:
            return "TLS error: " + "; ".join(str(part) for part in parts)
    return f"{type(value).__name__}: {value}".rstrip(": ")


#: The longest key a box may have (a longer one is a malformed frame).
_MAX_KEY = 255
_MAX_VALUE = 65535

#: An empty AmpBox without AmpBox.__init__, which looks for keys to encode.
_new_box: Callable[[], amp.AmpBox] = functools.partial(amp.AmpBox.__new__, amp.AmpBox)


#: Length prefixes of keys (every length a key may have) and of short values.
_PREFIXES = tuple(length.to_bytes(2, "big") for length in range(1024))
_KEY_PREFIXES = _PREFIXES[: _MAX_KEY + 1]


def serialize_box(box: amp.AmpBox) -> bytes:
    """``box.serialize()``, byte for byte, in one join: keys sorted, each key and
    value after its length in two bytes, two zero bytes at the end. A box that
    AmpBox.serialize would refuse (a str key or value, a key or value too long)
    goes to it, so that it raises what it always raised."""
    parts = [b""]
    try:
        for key, value in sorted(box.items()):
            size = len(value)
            parts += (
                _KEY_PREFIXES[len(key)],
                key,
                _PREFIXES[size] if size < 1024 else size.to_bytes(2, "big"),
                value,
            )
        parts.append(b"\x00\x00")
        return b"".join(parts)
    except (IndexError, OverflowError, TypeError):
        return box.serialize()  # type: ignore[no-any-return]


#: Commands whose callRemote goes the short way: those sent as Twisted's Command
#: sends them (not a protocol switch or StartTLS, which override _doCommand).
_PLAIN_DO_COMMAND = amp.Command._doCommand


#: Bytes read from the socket at once (Twisted reads 64 KiB at a time).
READ_SIZE = 256 * 1024

#: A dialled session's Hello not answered yet.
_PENDING = object()


class SessionRegistry:
    """A server's open sessions, and the check every new one must pass.

    ``refusal`` says why a peer certificate is no longer accepted (revoked), or
    None. A session whose peer is refused is refused at the end of its handshake;
    ``sweep`` closes the open ones whose peer has become refused since (after the
    revocation list changed).
    """

    log = Logger()

    def __init__(self, refusal: Callable[[x509.Certificate], str | None]) -> None:
        self._refusal = refusal
        self._open: dict[PeerSession, x509.Certificate] = {}

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, session: PeerSession, certificate: x509.Certificate) -> str | None:
        """Why ``session`` must be refused, or None once it is registered as open."""
        refusal = self._refusal(certificate)
        if refusal is None:
            self._open[session] = certificate
        return refusal

    def forget(self, session: PeerSession) -> None:
        self._open.pop(session, None)

    def sweep(self) -> int:
        """Close every open session whose peer is refused now; how many were closed."""
        closed = 0
        for session, certificate in list(self._open.items()):
            refusal = self._refusal(certificate)
            if refusal is None:
                continue
            self.log.warn(
                "closing connection with {peer} at {address}: {refusal}",
                peer=str(session.peer),
                address=session.peer_address,
                refusal=refusal,
            )
            self.forget(session)
            session.close_refused()
            closed += 1
        return closed


@implementer(IHandshakeListener)
class PeerSession(amp.AMP):
    """AMP with the peer's identity, role checks and logged refusals."""

    log = Logger()

    #: The protocol this side speaks (another only in tests).
    protocol_version: ProtocolVersion = PROTOCOL_VERSION

    def __init__(self, local: Identity) -> None:
        super().__init__()
        self.local = local
        self.peer: Identity | None = None
        self._handshake_done = False
        #: True on the side that dialled: a failure there is the caller's error to
        #: report, not a refusal to log.
        self.dialled = False
        self._refused = False
        self._lost = False
        #: the server's open sessions, once this one is among them
        self._registry: SessionRegistry | None = None
        #: why this side refused the peer at the handshake (its certificate is revoked)
        self.refusal: str | None = None
        #: bytes (keys, values and their length prefixes) and keys of the box arriving
        self._box_bytes = 0
        self._box_keys = 0
        #: _box_bytes at which the memory limit is next looked at
        self._next_check = 0
        self._box_size = 0
        #: the limits of the server that accepted this connection (none when dialled)
        self.guard: ConnectionGuard | None = None
        #: requests received while ``commands_in_flight`` are being answered, and
        #: their size on the wire
        self._held: deque[tuple[amp.AmpBox, int]] = deque()
        self._held_bytes = 0
        self._releasing = False
        #: while handling what one read brought: answers gather, and go at its end
        self._receiving = False
        #: sends what small writes gathered in the TLS layer (bulk mode only)
        self._flush: Callable[[], None] | None = None
        #: the TCP transport below TLS, whose output buffer tells a peer not reading
        self._socket: Any = None
        #: accepting side: no command but Hello until the peer stated its version
        self._awaiting_hello = False
        #: dialling side: the outcome of its Hello (None: answered and compatible;
        #: _PENDING: not yet), and who waits for it
        self._introduction: Failure | object | None = _PENDING
        self._introduction_waiters: list[Deferred[None]] = []
        #: dialling side: why the peer cannot be talked with, failing every request
        self._incompatible: IncompatibleProtocol | None = None
        #: the protocol version the peer's Hello stated, once known (what it may be
        #: sent, and how it is answered, depends on it)
        self.peer_protocol: ProtocolVersion | None = None
        #: the command of each request sent the short way (callRemote), by tag
        self._expected: dict[bytes, type[DFSCommand]] = {}
        #: each command's responder, wrapped to convert its arguments and answer
        self._responders: dict[bytes, Callable[[amp.AmpBox], Any]] = {}

    def apply_limits(self, limits: ServerLimits) -> None:
        """Put ``limits`` on this connection (a server's, before it is connected)."""
        self.guard = ConnectionGuard(limits, self)

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        # Requests and answers are small messages sent back to back: without
        # TCP_NODELAY, Nagle's algorithm holds each one until the last is acknowledged.
        transport = self.transport
        while transport is not None and not hasattr(transport, "setTcpNoDelay"):
            transport = getattr(transport, "transport", None)
        if transport is not None:
            transport.setTcpNoDelay(True)
            # Chunk data and large answers then arrive in fewer, larger reads, and TLS
            # decrypts more records per wake-up of the reactor.
            cast(Any, transport).bufferSize = READ_SIZE
        self._socket = transport
        # Chunk packets and large answers: one TLS write each, and one delivery up
        # the stack for all the records of one read (dfs.protocol.bulktls).
        bulktls.enable(self.transport)
        self._flush = bulktls.flusher(self.transport)
        if self.guard is not None:
            self.guard.connected()
        if self.dialled:
            # Written before the handshake completes, so it goes out first, ahead of
            # any request: TLS sends application data in the order it was written.
            self._say_hello()

    @property
    def peer_address(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        host = getattr(address, "host", "?")
        port = getattr(address, "port", "?")
        return f"{host}:{port}"

    def handshakeCompleted(self) -> None:
        cert = peer_certificate(self.transport)
        try:
            if cert is None:
                raise InvalidIdentity("no peer certificate")
            identity = identity_from_certificate(cert)
        except InvalidIdentity as error:
            self._handshake_done = True
            self._refuse("certificate does not name a DFS identity: {error}", error=error)
            return
        # The server's registry rides on each TLS connection made from its credentials, so
        # sessions it accepts and sessions it dials are all checked (dfs.security.tls).
        registry = attachment(self.transport)
        if isinstance(registry, SessionRegistry):
            refusal = registry.admit(self, cert)
            if refusal is not None:
                self._handshake_done = True
                self.refusal = refusal
                if self.dialled and not self.local.role.is_server:
                    # A user's tool reports it itself (dfs.protocol.dial.PeerRefused);
                    # a server logs it, as it logs every refusal.
                    self._refused = True
                    self.abort()
                else:
                    self._refuse("{refusal}", refusal=refusal)
                return
            self._registry = registry
        self.authenticated(identity)
        if not self.dialled and not self._refused:
            self._awaiting_hello = True

    def authenticated(self, identity: Identity) -> None:
        """The peer proved ``identity`` (its certificate chains to the cluster CA)."""
        self._handshake_done = True
        if self.guard is not None and not self.guard.authenticated(identity):
            return  # one connection too many for this identity: refused
        self.peer = identity
        self.log.debug(
            "TLS session with {peer} from {address}", peer=str(identity), address=self.peer_address
        )

    def _refuse(self, reason_format: str, **fields: Any) -> None:
        self._refused = True
        self.log.warn(
            "refused connection from {address}: " + reason_format,
            address=self.peer_address,
            **fields,
        )
        self.abort()

    # -- limits (dfs.protocol.limits.GuardedConnection) --------------------

    def refuse(self, reason_format: str, **fields: Any) -> None:
        """Log why and drop the connection: a limit was passed."""
        if self._refused or self._lost:
            return
        self._refuse(reason_format, **fields)

    def close_idle(self, idle: float) -> None:
        self.log.info(
            "closed connection with {peer} from {address}: nothing received for {idle:.0f} s",
            peer=str(self.peer),
            address=self.peer_address,
            idle=idle,
        )
        self._refused = True  # said why: no second line when it is lost
        if self.transport is not None:
            self.transport.loseConnection()

    def pause_reading(self, why: str, **fields: Any) -> None:
        self.log.info(
            "reading from {peer} at {address} paused: " + why,
            peer=str(self.peer),
            address=self.peer_address,
            **fields,
        )
        if self.transport is not None:
            cast(Any, self.transport).pauseProducing()

    def resume_reading(self) -> None:
        self._release_held()
        guard = self.guard
        if self.transport is not None and not self._lost and not (guard and guard.paused):
            cast(Any, self.transport).resumeProducing()

    def unsent_bytes(self) -> int:
        return unsent_bytes(self._socket)

    def abort(self) -> None:
        """Drop the connection now, without waiting for buffered data to go out."""
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    @property
    def is_open(self) -> bool:
        """Connected, and not closed or lost since."""
        return self.transport is not None and not self._lost

    def close_refused(self) -> None:
        """Drop a session its server no longer accepts (the registry logged why)."""
        self._refused = True
        self.abort()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._lost = True
        if self._registry is not None:
            self._registry.forget(self)
        if self.guard is not None:
            self.guard.closed()
        self._held.clear()
        self._held_bytes = 0
        if self._incompatible is not None:
            # Requests sent with the Hello fail with the reason, not a lost connection.
            reason = Failure(self._incompatible)
        self._introduce(reason)
        if self._refused:
            pass  # the refusal was logged with its reason
        elif not self._handshake_done and self.dialled:
            self.log.debug(
                "TLS handshake with {address} failed: {reason}",
                address=self.peer_address,
                reason=_describe(reason),
            )
        elif not self._handshake_done:
            certificate_problem = verify_failure(self.transport)
            self.log.warn(
                "refused connection from {address}: TLS handshake failed ({reason})",
                address=self.peer_address,
                reason=_describe(reason)
                + (f": {certificate_problem}" if certificate_problem else ""),
            )
        elif not self._refused and not reason.check(ConnectionDone):
            self.log.info(
                "connection with {peer} from {address} lost: {reason}",
                peer=str(self.peer),
                address=self.peer_address,
                reason=_describe(reason),
            )
        super().connectionLost(reason)

    # -- hostile or malformed input --------------------------------------

    def lengthLimitExceeded(self, length: int) -> None:
        self.log.warn(
            "refused input from {peer} at {address}: malformed AMP frame "
            "(a key of {length} bytes); closing the connection",
            peer=str(self.peer),
            address=self.peer_address,
            length=length,
        )
        self._refused = True
        super().lengthLimitExceeded(length)

    def dataReceived(self, data: bytes) -> None:
        if self.guard is not None:
            self.guard.received()
        if self._justStartedTLS:
            self._justStartedTLS = False
        if self.innerProtocol is not None:
            # The connection was handed over to a stream (dfs.protocol.stream).
            self.innerProtocol.dataReceived(data)
            return
        self._receiving = True
        try:
            self._read_boxes(data)
        finally:
            self._receiving = False
            # The answers this read called for go out together, now.
            if self._flush is not None:
                self._flush()

    def _read_boxes(self, data: bytes) -> None:
        """Cut what arrived into boxes, in one loop over the buffer.

        Twisted's parser calls a method per key and per value through a state
        machine (Int16StringReceiver, StatefulStringProtocol); this loop does the
        same cutting, with the same limits checked at the same points: a key
        longer than 255 bytes (a malformed frame), more than MAX_BOX_KEYS keys or
        MAX_BOX_BYTES bytes in a box, and the connection's memory limit weighed at
        the first value of a box and every BUFFER_CHECK_BYTES after. A box may
        arrive over many reads: the part of it cut so far waits in
        ``_currentBox``/``_currentKey``, the bytes not yet cut in ``_unprocessed``.
        """
        if self._refused:
            return  # the connection is being dropped: keep nothing more
        buffer = self._unprocessed + data if self._unprocessed else data
        end = len(buffer)
        position = 0
        box: amp.AmpBox | None = self._currentBox
        key: bytes | None = self._currentKey
        size = self._box_bytes
        keys = self._box_keys
        guard = self.guard
        while position + 2 <= end:
            length = buffer[position] << 8 | buffer[position + 1]
            start = position + 2
            if key is None:
                if not length:
                    # The box is complete; its size goes with it to ampBoxReceived.
                    position = start
                    self._box_size = size + 2
                    size = keys = self._next_check = self._box_bytes = 0
                    self._currentBox = self._currentKey = None
                    # Where the next box starts, for a switch to another protocol
                    # (BinaryBoxProtocol._switchTo reads what is left from here).
                    self._unprocessed = buffer
                    self._compatibilityOffset = position
                    self.ampBoxReceived(_new_box() if box is None else box)
                    box = None
                    if self._refused or self.innerProtocol is not None:
                        self.__dict__.pop("recvd", None)
                        self._unprocessed = b""
                        self._compatibilityOffset = 0
                        return
                    if self.paused:
                        break  # resumeProducing delivers the rest
                    continue
                if length > _MAX_KEY:
                    self._unprocessed = buffer
                    self._compatibilityOffset = position
                    self.lengthLimitExceeded(length)
                    return
                stop = start + length
                if stop > end:
                    break
                key = buffer[start:stop]
                size += 2 + length
                keys += 1
                if keys > MAX_BOX_KEYS:
                    self._refuse_box("a box of more than {limit} keys", MAX_BOX_KEYS)
                    return
            else:
                stop = start + length
                if stop > end:
                    break
                size += 2 + length
                if size > MAX_BOX_BYTES:
                    self._refuse_box("a box of more than {limit} bytes", MAX_BOX_BYTES)
                    return
                if guard is not None and size >= self._next_check:
                    self._next_check = size + BUFFER_CHECK_BYTES
                    if not guard.check_buffered(size + self._held_bytes):
                        self._drop_input()
                        return
                if box is None:
                    box = _new_box()
                box[key] = buffer[start:stop]
                key = None
            position = stop
        self._unprocessed = buffer[position:] if position else buffer
        self._compatibilityOffset = 0
        self._currentBox = box
        self._currentKey = key
        self._box_bytes = size
        self._box_keys = keys

    def _drop_input(self) -> None:
        self._currentBox = self._currentKey = None
        self._unprocessed = b""
        self._compatibilityOffset = 0
        self._box_bytes = self._box_keys = self._next_check = 0

    def _refuse_box(self, reason_format: str, limit: int) -> None:
        self.log.warn(
            "refused input from {peer} at {address}: " + reason_format + "; closing the connection",
            peer=str(self.peer),
            address=self.peer_address,
            limit=limit,
        )
        self._refused = True
        self._drop_input()
        self.abort()

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        guard = self.guard
        if guard is not None and amp.COMMAND in box and (self._held or guard.full):
            # As many commands in flight as allowed: this one waits its turn (reading
            # is paused; what arrived with it is held here, and counts as buffered).
            self._held.append((box, self._box_size))
            self._held_bytes += self._box_size
            guard.check_buffered(self._held_bytes)
            return
        self._box_received(box)

    def _box_received(self, box: amp.AmpBox) -> None:
        """Dispatch one box: an answer, an error or a command. What answers nothing
        asked, or is no AMP box at all, closes the connection with its reason."""
        try:
            if amp.ANSWER in box:
                problem = self._answerReceived(box)
            elif amp.ERROR in box:
                problem = self._errorReceived(box)
            elif amp.COMMAND in box:
                self._commandReceived(box)
                problem = None
            else:
                problem = amp.NoEmptyBoxes.__name__
        except amp.AmpError as error:
            problem = type(error).__name__
        if problem is not None:
            self.log.warn(
                "refused input from {peer} at {address}: malformed AMP box ({error}); "
                "closing the connection",
                peer=str(self.peer),
                address=self.peer_address,
                error=problem,
            )
            self._refused = True
            if self.transport is not None:
                self.transport.loseConnection()

    # -- answering commands ------------------------------------------------

    def _commandReceived(self, box: amp.AmpBox) -> None:
        """Run the responder of ``box`` and answer: at once when it returns a value
        (or a Deferred already fired), else when its Deferred fires.

        Twisted's BoxDispatcher sends every command through maybeDeferred and four
        callbacks on each side of the responder; what goes on the wire, and which
        error answers which failure, is the same here."""
        if self._awaiting_hello:
            self._first_command(box)
            return None
        guard = self.guard
        if guard is not None:
            guard.command_started()
        name = box[amp.COMMAND]
        responder = self.locateResponder(name)
        outcome: Any
        if responder is None:
            outcome = Failure(
                amp.RemoteAmpError(
                    amp.UNHANDLED_ERROR_CODE,
                    f"Unhandled Command: {name!r}",
                    False,
                    local=Failure(amp.UnhandledCommand()),
                )
            )
        else:
            try:
                outcome = responder(box)
            except BaseException:
                outcome = Failure()
        if isinstance(outcome, Deferred):
            outcome.addBoth(self._answer, box.get(amp.ASK), name)
        else:
            self._answer(outcome, box.get(amp.ASK), name)
        return None

    def _answer(self, outcome: Any, ask: bytes | None, name: bytes) -> None:
        """Send ``outcome`` (an answer box, or a Failure) as the answer to ``ask``."""
        try:
            if isinstance(outcome, Failure):
                if ask is None:
                    # No answer is wanted, so a refusal has nowhere to go: log it here.
                    self._unanswered(outcome, name)
                else:
                    self._emit(self._error_box(outcome, ask))
            elif ask is not None:
                outcome[amp.ANSWER] = ask
                self._emit(outcome)
        except Exception:
            self.unhandledError(Failure())
        finally:
            if self.guard is not None:
                self.guard.command_done()  # resumes reading (held requests first) if it may

    def _emit(self, box: amp.AmpBox) -> None:
        try:
            box._sendTo(self)  # type: ignore[no-untyped-call]
        except (amp.ProtocolSwitched, amp.ConnectionLost):
            pass  # nothing can be done about it (as BoxDispatcher._safeEmit)

    def _error_box(self, error: Failure, ask: bytes) -> amp.AmpBox:
        """The box answering ``ask`` with ``error`` (as BoxDispatcher._commandReceived
        formats it)."""
        value = error.value
        if isinstance(value, amp.RemoteAmpError):
            code = value.errorCode
            description = value.description
            if isinstance(description, str):
                description = description.encode("utf-8", "replace")
            box = amp.QuitBox() if value.fatal else amp.AmpBox()
        else:
            box = amp.QuitBox()
            self.log.failure("while receiving response to command", error)
            code = amp.UNKNOWN_ERROR_CODE
            description = b"Unknown Error"
        box[amp.ERROR] = ask
        box[amp.ERROR_DESCRIPTION] = description
        box[amp.ERROR_CODE] = code
        return box

    def _unanswered(self, failure: Failure, command: bytes) -> None:
        # Refusals were logged where they were made (bad arguments, unknown command,
        # denied role); only a failure that is no refusal (a bug) is worth a trace.
        if not failure.check(amp.RemoteAmpError):
            self.log.failure(
                "{command} from {peer} failed", failure, command=command, peer=str(self.peer)
            )

    def _release_held(self) -> None:
        """Dispatch held requests, in order, while there is room in flight."""
        guard = self.guard
        if self._releasing or guard is None:
            return  # a command released below answered at once: the loop goes on
        self._releasing = True
        try:
            while self._held and not guard.full and not self._lost:
                box, size = self._held.popleft()
                self._held_bytes -= size
                self._box_received(box)
        finally:
            self._releasing = False

    def sendBox(self, box: amp.AmpBox) -> None:
        # As BinaryBoxProtocol.sendBox, with the box written by serialize_box.
        if self._locked:
            raise amp.ProtocolSwitched("This connection has switched: no AMP traffic allowed.")
        if self.transport is None:
            raise amp.ConnectionLost()
        if self._startingTLSBuffer is not None:
            self._startingTLSBuffer.append(box)
        else:
            self.transport.write(serialize_box(box))
        if self.guard is not None:
            self.guard.check_buffered(self._box_bytes + self._held_bytes)
        if not self._receiving and self._flush is not None:
            # A request, or an answer that came later than the read that asked.
            self._flush()

    # -- calling the peer ------------------------------------------------------

    def callRemote(self, commandType: Any, *a: Any, **kw: Any) -> Any:
        """As AMP's callRemote; a DFS command goes the short way: its arguments
        converted from the command's schema, no Command instance, and its answer
        converted when it arrives (by _answerReceived) rather than through
        callbacks on the Deferred."""
        if (
            a
            or commandType._doCommand is not _PLAIN_DO_COMMAND
            or not issubclass(commandType, DFSCommand)
        ):
            return super().callRemote(commandType, *a, **kw)
        arguments = commandType._schemas()[0]
        forgotten = [
            python
            for _, python, argument, _ in arguments
            if python not in kw and not argument.optional
        ]
        if forgotten:
            return fail(
                amp.InvalidSignature(
                    "forgot {} for {}".format(", ".join(forgotten), commandType.commandName)
                )
            )
        box = commandType.makeArguments(kw, self)
        if self._failAllReason is not None:
            return fail(self._failAllReason) if commandType.requiresAnswer else None
        box[amp.COMMAND] = commandType.commandName
        self._counter += 1
        tag = b"%x" % (self._counter,)
        if not commandType.requiresAnswer:
            self.sendBox(box)
            return None
        box[amp.ASK] = tag
        self.sendBox(box)
        question: Deferred[Any] = Deferred()
        self._outstandingRequests[tag] = question
        self._expected[tag] = commandType
        return question

    def failAllOutgoing(self, reason: Failure) -> None:
        self._expected.clear()
        super().failAllOutgoing(reason)

    def _answerReceived(self, box: amp.AmpBox) -> str | None:
        """Fire the Deferred of the request ``box`` answers with the answer; or say
        why ``box`` answers nothing asked (AMP would raise a KeyError from deep
        inside)."""
        tag = box[amp.ANSWER]
        question = self._question(tag)
        if question is None:
            return f"an answer to no request (tag {tag[:20]!r})"
        command = self._expected.pop(tag, None)
        # As AMP does: a failure no callback of the caller took drops the connection.
        question.addErrback(self.unhandledError)
        if command is None:
            question.callback(box)  # sent the long way: its callbacks convert
            return None
        try:
            answer = command.parseResponse(box, self)
        except Exception:
            question.errback(Failure())
        else:
            question.callback(answer)
        return None

    def _errorReceived(self, box: amp.AmpBox) -> str | None:
        """Fail the Deferred of the request ``box`` answers with the error it names
        (the class the command declares for its code); or say why ``box`` is no
        error answer to anything asked."""
        if amp.ERROR_CODE not in box or amp.ERROR_DESCRIPTION not in box:
            return "an error without its code and description"
        tag = box[amp.ERROR]
        question = self._question(tag)
        if question is None:
            return f"an answer to no request (tag {tag[:20]!r})"
        command = self._expected.pop(tag, None)
        question.addErrback(self.unhandledError)
        code = box[amp.ERROR_CODE]
        description = box[amp.ERROR_DESCRIPTION].decode("utf-8", "replace")
        error: Exception
        if code in amp.PROTOCOL_ERRORS:
            error = amp.PROTOCOL_ERRORS[code](code, description)
        elif command is not None:
            reverse: dict[bytes, type[Exception]] = command.reverseErrors  # type: ignore[attr-defined]
            error = reverse.get(code, amp.UnknownRemoteError)(description)
        else:
            error = amp.RemoteAmpError(code, description)  # its callbacks convert
        question.errback(Failure(error))
        return None

    def _question(self, tag: bytes) -> Deferred[Any] | None:
        outstanding = self._outstandingRequests
        return outstanding.pop(tag, None) if outstanding else None

    @Hello.responder
    def hello(self, protocol: str, software: str) -> dict[str, str]:
        # A Hello after the first (or on a session with no TLS handshake, as in
        # tests over a loopback) is answered all the same; the first one is answered
        # by _first_command.
        return {
            "protocol": str(self.protocol_version),
            "software": __version__,
            "role": self.local.role.value,
            "name": self.local.name,
        }

    @Ping.responder
    def ping(self) -> dict[str, str]:
        return {
            "role": self.local.role.value,
            "name": self.local.name,
            "version": __version__,
            "peer_role": self.peer.role.value if self.peer else "",
            "peer_name": self.peer.name if self.peer else "",
        }

    # -- protocol version (dfs.protocol.version) -------------------------

    def introduced(self) -> Deferred[None]:
        """On the dialling side: fires once the peer answered Hello with a compatible
        protocol version; fails with IncompatibleProtocol, or with whatever ended the
        connection first (a refused TLS handshake)."""
        waiter: Deferred[None] = Deferred()
        outcome = self._introduction
        if outcome is _PENDING:
            self._introduction_waiters.append(waiter)
        elif isinstance(outcome, Failure):
            waiter.errback(outcome)
        else:
            waiter.callback(None)
        return waiter

    def _introduce(self, outcome: Failure | None) -> None:
        if self._introduction is not _PENDING:
            return
        self._introduction = outcome
        waiters, self._introduction_waiters = self._introduction_waiters, []
        for waiter in waiters:
            if outcome is None:
                waiter.callback(None)
            else:
                waiter.errback(outcome)

    def _peer_words(self) -> str:
        role = self.peer.role.value if self.peer is not None else "server"
        return f"the {role} at {self.peer_address}"

    def _say_hello(self) -> None:
        hello = self.callRemote(Hello, protocol=str(self.protocol_version), software=__version__)
        hello.addCallbacks(self._hello_answered, self._hello_failed)

    def _hello_answered(self, answer: dict[str, Any]) -> None:
        try:
            theirs: object = ProtocolVersion.parse(answer["protocol"])
            compatible = self.protocol_version.compatible_with(cast(ProtocolVersion, theirs))
        except ValueError:
            theirs, compatible = repr(answer["protocol"][:40]), False
        if compatible:
            self.peer_protocol = cast(ProtocolVersion, theirs)
            self._introduce(None)
            return
        self._cannot_talk(
            mismatch(self._peer_words(), theirs, self.local.role.value, self.protocol_version)
        )

    def _hello_failed(self, failure: Failure) -> None:
        if failure.check(amp.RemoteAmpError, amp.UnknownRemoteError, amp.UnhandledCommand):
            # A server from before protocol versions knows no Hello.
            self._cannot_talk(
                f"{self._peer_words()} states no DFS protocol version (it predates "
                f"protocol 1.0), this {self.local.role.value} "
                f"{self.protocol_version}"
            )
        else:
            self._introduce(failure)  # the connection failed: its reason says why

    def _cannot_talk(self, message: str) -> None:
        self._incompatible = IncompatibleProtocol(message)
        self.log.warn("closing connection: {message}", message=message)
        self._introduce(Failure(self._incompatible))
        self._refused = True  # said why: no second line when it is lost
        self.abort()

    def _first_command(self, box: amp.AmpBox) -> Deferred[Any]:
        """Answer the peer's Hello, the first command on an accepted connection, or
        refuse the connection. The answer is sent here, not by a responder, so that
        the connection is closed right after it when the versions cannot talk."""
        name = box[amp.COMMAND]
        if self._refused:
            return Deferred()  # the connection is being closed: nothing more is answered
        if name != Hello.commandName:
            self._refuse_unintroduced(
                box,
                f"{name.decode('ascii', 'replace')[:40]} before Hello: the peer states "
                f"no DFS protocol version, this {self.local.role.value} speaks "
                f"{self.protocol_version}",
            )
            return Deferred()
        try:
            arguments = Hello.parseArguments(box, self)
            theirs = ProtocolVersion.parse(arguments["protocol"])
        except Exception as error:
            self._refuse_unintroduced(box, f"a malformed Hello ({error})")
            return Deferred()
        if amp.ASK in box:
            answer = Hello.makeResponse(
                {
                    "protocol": str(self.protocol_version),
                    "software": __version__,
                    "role": self.local.role.value,
                    "name": self.local.name,
                },
                self,
            )
            answer[amp.ANSWER] = box[amp.ASK]
            self.sendBox(answer)
        if not self.protocol_version.compatible_with(theirs):
            self._refused = True
            peer = f"{self.peer} at {self.peer_address}"
            self.log.warn(
                "refused connection: {message}",
                message=mismatch(peer, theirs, self.local.role.value, self.protocol_version),
            )
            self._close_after_answer()
            return Deferred()
        self._awaiting_hello = False
        self.peer_protocol = theirs
        self.log.debug(
            "{peer} at {address} speaks DFS protocol {protocol} (software {software})",
            peer=str(self.peer),
            address=self.peer_address,
            protocol=str(theirs),
            software=arguments["software"],
        )
        return Deferred()

    def _refuse_unintroduced(self, box: amp.AmpBox, why: str) -> None:
        self._refused = True
        self.log.warn(
            "refused connection from {peer} at {address}: {why}",
            peer=str(self.peer),
            address=self.peer_address,
            why=why,
        )
        if amp.ASK in box:
            self.sendBox(
                amp.AmpBox(
                    {
                        amp.ERROR: box[amp.ASK],
                        amp.ERROR_CODE: InvalidArgument.code,
                        amp.ERROR_DESCRIPTION: why.encode("utf-8", "replace"),
                    }
                )
            )
        self._close_after_answer()

    def _close_after_answer(self) -> None:
        # loseConnection, not abort: the answer just written still goes out.
        if self.transport is not None:
            self.transport.loseConnection()

    # -- authorisation ---------------------------------------------------

    def locateResponder(self, name: bytes) -> Callable[[amp.AmpBox], Any] | None:
        entry = self._commandDispatch.get(name)  # type: ignore[attr-defined]
        if entry is None:
            self.log.warn(
                "refused unknown command {command!r} from {peer} at {address}",
                command=name,
                peer=str(self.peer),
                address=self.peer_address,
            )
            return None
        command, _ = entry
        allowed: frozenset[Role] = getattr(command, "allowed_roles", frozenset())
        if self.peer is None or self.peer.role not in allowed:
            self.log.warn(
                "denied {command} to {peer} at {address}: allowed roles are {allowed}",
                command=name.decode("ascii", "replace"),
                peer=str(self.peer),
                address=self.peer_address,
                allowed=", ".join(sorted(role.value for role in allowed)),
            )
            return self._denial(command)
        responder = self._responders.get(name)
        if responder is None:
            responder = self._responders[name] = super().locateResponder(name)
        return responder

    def _denial(self, command: type[amp.Command]) -> Callable[[amp.AmpBox], Any]:
        who = str(self.peer) if self.peer is not None else "an unidentified peer"

        def deny(box: amp.AmpBox) -> Any:
            return fail(
                amp.RemoteAmpError(
                    PermissionDenied.code,
                    f"{command.commandName.decode()} is not allowed for {who}",
                )
            )

        return deny

    def _wrapWithSerialization(
        self, aCallable: Callable[..., Any], command: type[amp.Command]
    ) -> Callable[[amp.AmpBox], Any]:
        """``aCallable`` as a function of the request box, returning the answer box
        when it answers at once, else a Deferred of it; a failure is a
        RemoteAmpError for the errors the command declares, as Twisted's
        CommandLocator makes it (its version returns a Deferred in every case)."""
        parse = command.parseArguments
        make_response = command.makeResponse
        declared: dict[type[Exception], bytes] = command.allErrors  # type: ignore[attr-defined]
        all_errors = tuple(declared)
        name = command.commandName.decode()

        def known(failure: Failure) -> Failure:
            error = failure.check(*all_errors)
            if error is None:
                return failure
            return Failure(
                amp.RemoteAmpError(
                    declared[error],
                    str(failure.value),
                    error in command.fatalErrors,
                    local=failure,
                )
            )

        def answer(objects: Any) -> Any:
            try:
                return make_response(objects, self)
            except BaseException:
                raise amp.BadLocalReturn(
                    f"{aCallable!r} returned {objects!r} and {command!r} could not serialize it",
                    Failure(),
                ) from None

        def respond(box: amp.AmpBox) -> Any:
            # Arguments are parsed before the responder runs: a missing or
            # undecodable argument becomes InvalidArgument, not a crash.
            try:
                arguments = parse(box, self)
            except Exception as error:
                self.log.warn(
                    "refused {command} from {peer}: bad arguments ({error})",
                    command=name,
                    peer=str(self.peer),
                    error=f"{type(error).__name__}: {error}",
                )
                return fail(
                    amp.RemoteAmpError(
                        InvalidArgument.code,
                        f"bad arguments to {name}: {type(error).__name__}: {error}",
                    )
                )
            try:
                result = aCallable(**arguments)
                if type(result) is CoroutineType:
                    result = Deferred.fromCoroutine(result)
                if isinstance(result, Deferred):
                    return result.addCallback(answer).addErrback(known)
                if isinstance(result, Failure):
                    return fail(known(result))
                return answer(result)
            except BaseException:
                return fail(known(Failure()))

        return respond
