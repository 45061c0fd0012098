"""What one peer may hold of a server, and what happens past each limit.

A server puts five limits on every connection it accepts (security_config.json,
``limits``; docs/configuration.md):

- ``handshake_timeout``: a TCP connection that has not completed the TLS handshake
  by then is aborted (a peer that opens sockets and says nothing holds a file
  descriptor and a TLS state each).
- ``idle_timeout``: a connection on which nothing arrived for that long, while no
  command of it is being answered, is closed. Clients dial again on their next
  request.
- ``connections_per_identity``: connections open at once with one certificate
  identity (role and name); one more is refused after its handshake.
- ``commands_in_flight``: requests received on a connection and not answered yet.
  At the limit the server stops reading from that connection until answers go out
  (the peer is slowed down, not cut off: a client library with many concurrent
  requests on one connection is legitimate, and what it sends meanwhile waits in its
  own socket buffer).
- ``buffered_bytes``: bytes the server holds for one connection: answers written
  but not yet taken by the peer, the part of a box received so far, and requests
  held back by the limits. Past half of it in answers not taken, the server stops
  reading requests until the peer has taken most of them (many readers sharing one
  connection over a slow network are slowed down, not cut off); past all of it the
  connection is aborted, and so is a peer that takes none of its answers for
  ``idle_timeout`` (one that asks for chunk data and never reads it, say).

:class:`ServerLimits` is shared by every connection of one listener and counts
connections per identity; :class:`ConnectionGuard` applies the limits to one
connection. Neither does I/O: the session reports what happens and is told what to
do through :class:`GuardedConnection`.

The limits can change while the server runs (SIGHUP, :meth:`ServerLimits.use`). A
connection is held to the limits in force when it was accepted, for as long as it
lasts: changing a timeout or a buffer size under a connection could cut off a peer
that kept to the rules it was given. Connections accepted afterwards get the new
ones, and the count per identity carries over: a new connection is admitted only if
the identity's open connections, old and new, are fewer than the new
``connections_per_identity``. Lowering it closes nothing that is open.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory

from dfs.config.model import ConnectionLimits
from dfs.security.identity import Identity


class GuardedConnection(Protocol):
    """What a :class:`ConnectionGuard` needs of the connection it guards."""

    def refuse(self, reason_format: str, **fields: Any) -> None:
        """Log ``reason_format`` (a log format string) and drop the connection now."""

    def close_idle(self, idle: float) -> None:
        """Log that the connection was idle for ``idle`` seconds and close it."""

    def pause_reading(self, why: str, **fields: Any) -> None:
        """Stop reading from the peer until :meth:`resume_reading`; ``why`` is a
        log format string."""

    def resume_reading(self) -> None:
        """Dispatch the requests held back while ``full``, then read again (unless
        they made the guard full again)."""

    def unsent_bytes(self) -> int:
        """Bytes written to the peer that it has not taken yet."""


class ServerLimits:
    """The limits of one listener, and the count of its connections per identity."""

    def __init__(self, limits: ConnectionLimits, clock: IReactorTime) -> None:
        self.limits = limits
        self.clock = clock
        self._open: Counter[Identity] = Counter()

    def use(self, limits: ConnectionLimits) -> None:
        """Hold the connections accepted from now on to ``limits``; open ones keep
        theirs, and still count towards their identity's connections."""
        self.limits = limits

    def admit(self, identity: Identity) -> bool:
        """Count one more connection of ``identity``; False (and not counted) if it
        already has as many as allowed."""
        if self._open[identity] >= self.limits.connections_per_identity:
            return False
        self._open[identity] += 1
        return True

    def release(self, identity: Identity) -> None:
        """A connection :meth:`admit` counted is closed."""
        self._open[identity] -= 1
        if self._open[identity] <= 0:
            del self._open[identity]

    def connections(self, identity: Identity) -> int:
        return self._open[identity]


class ConnectionGuard:
    """The limits applied to one accepted connection.

    The session calls :meth:`connected`, :meth:`authenticated`, :meth:`received`,
    :meth:`command_started` / :meth:`command_done`, :meth:`check_buffered` and
    :meth:`closed`; the guard answers through the :class:`GuardedConnection`.
    """

    def __init__(self, server: ServerLimits, connection: GuardedConnection) -> None:
        self._server = server
        # The limits in force when accepted, for the connection's whole life.
        self._limits = server.limits
        self._clock = server.clock
        self._connection = connection
        self._handshake_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self._last_activity = 0.0
        #: the identity counted by ServerLimits.admit, released on close
        self._admitted: Identity | None = None
        self.in_flight = 0
        #: reading from the peer is paused (``full``)
        self.paused = False
        #: answers the peer has not taken fill half the buffer
        self._backlog = False
        self._backlog_timer: IDelayedCall | None = None
        self._closed = False

    # -- connection life ---------------------------------------------------

    def connected(self) -> None:
        """The TCP connection is up; the TLS handshake is to come."""
        self._handshake_timer = self._clock.callLater(
            self._limits.handshake_timeout, self._handshake_overdue
        )

    def _handshake_overdue(self) -> None:
        self._handshake_timer = None
        if not self._closed:
            self._connection.refuse(
                "no TLS handshake within {timeout:g} s", timeout=self._limits.handshake_timeout
            )

    def authenticated(self, identity: Identity) -> bool:
        """The handshake passed and the peer is ``identity``. False when the
        connection must be refused: the identity has too many connections already
        (the refusal has been made)."""
        self._cancel_handshake_timer()
        if self._closed:
            return False
        if not self._server.admit(identity):
            self._connection.refuse(
                "{peer} already has {count} connections open (limit {limit})",
                peer=str(identity),
                count=self._server.connections(identity),
                limit=self._limits.connections_per_identity,
            )
            return False
        self._admitted = identity
        self._last_activity = self._clock.seconds()
        self._idle_timer = self._clock.callLater(self._limits.idle_timeout, self._check_idle)
        return True

    def closed(self) -> None:
        """The connection is gone: stop the timers, release its identity's count."""
        self._closed = True
        self._cancel_handshake_timer()
        for timer in (self._idle_timer, self._backlog_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle_timer = self._backlog_timer = None
        if self._admitted is not None:
            self._server.release(self._admitted)
            self._admitted = None

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    # -- idleness ------------------------------------------------------------

    def received(self) -> None:
        """Bytes arrived from the peer."""
        # A timestamp rather than a timer reset: this runs for every read.
        self._last_activity = self._clock.seconds()

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._closed:
            return
        now = self._clock.seconds()
        idle = now - self._last_activity
        if self._backlog and idle >= self._limits.idle_timeout:
            # Reading stopped because the peer takes none of its answers.
            self._connection.refuse(
                "it took none of its answers for {idle:.0f} s ({unsent} bytes waiting)",
                idle=idle,
                unsent=self._connection.unsent_bytes(),
            )
            return
        # A peer waiting for an answer is not idle: the server owes it something.
        if self.in_flight == 0 and idle >= self._limits.idle_timeout:
            self._connection.close_idle(idle)
            return
        # With a command in flight, look again a whole timeout later.
        wait = self._limits.idle_timeout - idle if self.in_flight == 0 else None
        self._idle_timer = self._clock.callLater(
            self._limits.idle_timeout if wait is None else max(wait, 0.001), self._check_idle
        )

    # -- commands in flight, and answers not taken -------------------------------

    @property
    def full(self) -> bool:
        """Take no more requests for now: as many in flight as allowed, or their
        answers piling up unread."""
        return self.in_flight >= self._limits.commands_in_flight or self._backlog

    def command_started(self) -> None:
        self.in_flight += 1
        if self.full and not self.paused:
            self._pause("{count} commands in flight", count=self.in_flight)

    def command_done(self) -> None:
        """A command was answered (or failed)."""
        self.in_flight -= 1
        if self.in_flight == 0:
            # Idleness counts from the last answer, not from the request.
            self._last_activity = self._clock.seconds()
        self._maybe_resume()

    def _pause(self, why: str, **fields: Any) -> None:
        self.paused = True
        self._connection.pause_reading(why, **fields)

    def _maybe_resume(self) -> None:
        if self.paused and not self.full and not self._closed:
            self.paused = False
            # The connection first takes the requests it held back; if they fill
            # the room again it is paused again before it reads anything new.
            self._connection.resume_reading()

    # -- memory ----------------------------------------------------------------

    def check_buffered(self, held: int) -> bool:
        """``held`` bytes of input are kept for this connection (a partial box,
        requests held back). With the unsent output, past the limit the connection
        is refused; past half of it, reading pauses until the peer has taken most of
        its answers. True while within the limit."""
        if self._closed:
            return False
        unsent = self._connection.unsent_bytes()
        limit = self._limits.buffered_bytes
        if unsent + held > limit:
            self._connection.refuse(
                "{buffered} bytes buffered for it ({unsent} unsent to a peer not reading, "
                "{held} received and not yet handled; limit {limit})",
                buffered=unsent + held,
                unsent=unsent,
                held=held,
                limit=limit,
            )
            return False
        if unsent > limit // 2 and not self._backlog:
            self._backlog = True
            if not self.paused:
                self._pause("{unsent} bytes of answers it has not taken", unsent=unsent)
            self._backlog_timer = self._clock.callLater(BACKLOG_POLL, self._check_backlog)
        return True

    def _check_backlog(self) -> None:
        """Twisted says nothing when a transport's output drains: look again soon."""
        self._backlog_timer = None
        if self._closed:
            return
        if self._connection.unsent_bytes() > self._limits.buffered_bytes // 4:
            self._backlog_timer = self._clock.callLater(BACKLOG_POLL, self._check_backlog)
            return
        self._backlog = False
        self._maybe_resume()


#: How often a connection whose answers pile up is looked at again (seconds).
BACKLOG_POLL = 0.1


def unsent_bytes(transport: Any) -> int:
    """Bytes written to a Twisted TCP transport and not yet taken by the kernel.

    Twisted offers no public way to ask; a TCP transport (``FileDescriptor``) keeps
    its output in ``dataBuffer`` (from ``offset``) and ``_tempDataBuffer``
    (``_tempDataLen`` bytes). Anything else (a test transport) counts as nothing.
    """
    data = getattr(transport, "dataBuffer", None)
    if not isinstance(data, bytes):
        return 0
    return (
        len(data)
        - int(getattr(transport, "offset", 0))
        + int(getattr(transport, "_tempDataLen", 0))
    )


class LimitedFactory(Factory):
    """A server's protocol factory whose sessions get ``limits`` before they connect.

    The protocols built must offer ``apply_limits(ServerLimits)`` (as
    :class:`dfs.protocol.session.PeerSession` does).
    """

    def __init__(self, wrapped: Factory, limits: ServerLimits) -> None:
        self.wrapped = wrapped
        self.limits = limits

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol: Any = self.wrapped.buildProtocol(addr)
        if protocol is not None:
            protocol.apply_limits(self.limits)
        return protocol
