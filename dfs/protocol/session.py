"""An AMP connection that knows who is on the other end, and refuses what it must.

Both ends of every DFS connection use :class:`PeerSession`. When the TLS handshake
completes, the peer's certificate (already verified against the cluster CA by
OpenSSL) gives its :class:`~dfs.security.identity.Identity`. Before any responder
runs, the command's ``allowed_roles`` is checked against that identity. Refused
handshakes, refused commands and malformed input are logged with their reason and
affect only the connection they came on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, ITCPTransport
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from dfs import __version__
from dfs.protocol.commands import Ping
from dfs.protocol.errors import InvalidArgument, PermissionDenied
from dfs.security.identity import Identity, InvalidIdentity, Role, identity_from_certificate
from dfs.security.tls import peer_certificate, verify_failure

#: The largest box a peer may send: a data packet is 64 KiB, a page of a listing
#: well under one MiB; anything much larger is an attempt to exhaust memory.
MAX_BOX_BYTES = 4 * 1024 * 1024


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


#: Bytes read from the socket at once (Twisted reads 64 KiB at a time).
READ_SIZE = 256 * 1024


@implementer(IHandshakeListener)
class PeerSession(amp.AMP):
    """AMP with the peer's identity, role checks and logged refusals."""

    log = Logger()

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
        self._box_bytes = 0

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
        self.authenticated(identity)

    def authenticated(self, identity: Identity) -> None:
        """The peer proved ``identity`` (its certificate chains to the cluster CA)."""
        self._handshake_done = True
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

    def abort(self) -> None:
        """Drop the connection now, without waiting for buffered data to go out."""
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    @property
    def is_open(self) -> bool:
        """Connected, and not closed or lost since."""
        return self.transport is not None and not self._lost

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._lost = True
        if not self._handshake_done and self.dialled:
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

    def proto_key(self, string: bytes) -> str:
        if self._refused:
            return "key"  # the connection is being dropped: keep nothing more
        if not string:
            self._box_bytes = 0  # the box is complete
        return str(super().proto_key(string))

    def proto_value(self, string: bytes) -> str:
        if self._refused:
            return "key"
        self._box_bytes += len(string)
        if self._box_bytes > MAX_BOX_BYTES:
            self.log.warn(
                "refused input from {peer} at {address}: a box of more than {limit} bytes; "
                "closing the connection",
                peer=str(self.peer),
                address=self.peer_address,
                limit=MAX_BOX_BYTES,
            )
            self._refused = True
            self._currentBox = None
            self.abort()
            return "key"
        return str(super().proto_value(string))

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        try:
            super().ampBoxReceived(box)
        except amp.AmpError as error:
            self.log.warn(
                "refused input from {peer} at {address}: malformed AMP box ({error}); "
                "closing the connection",
                peer=str(self.peer),
                address=self.peer_address,
                error=type(error).__name__,
            )
            self._refused = True
            if self.transport is not None:
                self.transport.loseConnection()

    @Ping.responder
    def ping(self) -> dict[str, str]:
        return {
            "role": self.local.role.value,
            "name": self.local.name,
            "version": __version__,
            "peer_role": self.peer.role.value if self.peer else "",
            "peer_name": self.peer.name if self.peer else "",
        }

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
        return super().locateResponder(name)

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
        parse_and_call = super()._wrapWithSerialization(aCallable, command)

        def guarded(box: amp.AmpBox) -> Any:
            # Arguments are parsed synchronously before the responder runs: a
            # missing or undecodable argument becomes InvalidArgument, not a crash.
            try:
                return parse_and_call(box)
            except Exception as error:
                self.log.warn(
                    "refused {command} from {peer}: bad arguments ({error})",
                    command=command.commandName.decode(),
                    peer=str(self.peer),
                    error=f"{type(error).__name__}: {error}",
                )
                return fail(
                    amp.RemoteAmpError(
                        InvalidArgument.code,
                        f"bad arguments to {command.commandName.decode()}: "
                        f"{type(error).__name__}: {error}",
                    )
                )

        return guarded
