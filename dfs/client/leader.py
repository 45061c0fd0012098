"""Following the metaserver Raft leader: the one way a client sends namespace requests.

Metaservers form a Raft group and only the leader serves namespace commands; the
others answer ``NotLeader`` naming the leader, or nobody while an election runs. A
:class:`MetaserverChannel` keeps one session, with the metaserver it believes leads,
and makes each request outlive a change of leader, a metaserver that dies and one
that hangs: it follows ``NotLeader`` to the leader it names, and otherwise moves on to
the next configured metaserver, pausing a little longer after each full round without
an answer, until the request is answered or its time is up.

Asking again is safe: every mutation carries a request id that the metaserver
applies once per user (a repeat gets the first result), RenewLease is idempotent and
the other commands only read. So a request is repeated with the very same arguments.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol

import attrs
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionClosed, ConnectionDone
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from dfs.client.connection import ClientCredentials, NoMetaserverReachable, connect_server
from dfs.config import Address, ClientConfig
from dfs.protocol.errors import NotLeader, SafeMode
from dfs.protocol.version import IncompatibleProtocol

#: The pause after the first full round of metaservers without an answer; it doubles
#: after each further round, up to LAST_PAUSE. An election takes a moment: asking
#: again at once would only add load on metaservers busy electing.
FIRST_PAUSE = 0.05
LAST_PAUSE = 1.0

#: The least time one attempt waits for its answer (see attempt_timeout).
SHORTEST_ATTEMPT = 5.0

#: What a failing session or server looks like, as opposed to an answer: the
#: request is asked again elsewhere.
CONNECTION_TROUBLE = (ConnectionClosed, ConnectError, defer.TimeoutError, OSError, SSL.Error)


def attempt_timeout(request_timeout: float) -> float:
    """How long one attempt waits for its answer before trying another metaserver.

    A stopped or cut-off metaserver keeps its TCP connection open and never answers:
    waiting for it the whole ``request_timeout`` would leave no time to ask the
    others, so one attempt gets a quarter of it (time for the new leader of a group
    of three or five to be found). Never less than 5 s though, so that a healthy
    leader that is merely slow (fsyncing its journal under load, a large listing) is
    not abandoned and asked the same again and again.
    """
    return min(request_timeout, max(SHORTEST_ATTEMPT, request_timeout / 4))


class MetaserverSession(Protocol):
    """What the channel needs of a session (a :class:`~dfs.protocol.session.PeerSession`)."""

    @property
    def is_open(self) -> bool: ...

    @property
    def transport(self) -> ITransport | None: ...

    def callRemote(self, commandType: Any, *a: Any, **kw: Any) -> Any: ...

    def abort(self) -> None: ...


Connect = Callable[[str], Awaitable[MetaserverSession]]


@attrs.define(eq=False)
class _Link:
    """A session and the metaserver at its other end."""

    address: str
    session: MetaserverSession


class _Unreachable(Exception):
    """Dialling ``address`` failed."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.reason = reason


class _NoAnswer(TimeoutError):
    """A metaserver did not answer one attempt in time; ``hung`` if the attempt had
    its full time (rather than what was left of the request's)."""

    def __init__(self, seconds: float, *, hung: bool) -> None:
        super().__init__(f"no answer within {seconds:g} s")
        self.hung = hung


def _describe(error: BaseException) -> str:
    if isinstance(error, _NoAnswer):
        return str(error)
    return f"{type(error).__name__}: {error}".rstrip(": ")


def _leader_named(error: NotLeader) -> str | None:
    """The leader's "host:port" a NotLeader names, if it names one.

    Anything else counts as no leader known: an error sent with an empty message
    arrives over AMP with its ``user_text`` ("Not the leader") as the message.
    """
    leader = error.leader
    if not leader:
        return None
    try:
        Address.parse(leader)
    except ValueError:
        return None
    return leader


def _summary(failures: dict[str, str]) -> str:
    return "; ".join(f"{address}: {reason}" for address, reason in failures.items())


class MetaserverChannel:
    """Namespace requests to whichever metaserver leads: ``await channel.call(Stat,
    path="/")``.

    ``addresses`` are the configured metaservers ("host:port"), tried in order;
    ``connect(address)`` opens a session with one. One dial runs at a time: calls that
    find the session gone while another is being opened wait for that one.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        addresses: Sequence[str],
        connect: Connect,
        request_timeout: float,
    ) -> None:
        if not addresses:
            raise ValueError("a metaserver channel needs at least one metaserver address")
        self._clock = clock
        self.addresses = tuple(addresses)
        self._connect = connect
        self.request_timeout = request_timeout
        self.attempt_timeout = attempt_timeout(request_timeout)
        self._link: _Link | None = None
        #: where the next dial goes
        self._target = self.addresses[0]
        #: the configured metaserver to try next when moving on (a leader named by
        #: NotLeader is tried out of turn)
        self._rotation = 1 % len(self.addresses)
        self._dialing = False
        #: callers waiting for the dial in progress
        self._waiting: list[Deferred[_Link]] = []
        self._closed = False

    @classmethod
    def for_client(
        cls, reactor: Any, config: ClientConfig, credentials: ClientCredentials
    ) -> MetaserverChannel:
        """A channel to the metaservers of ``config``, as the user of ``credentials``."""

        async def connect(address: str) -> MetaserverSession:
            return await connect_server(
                reactor, Address.parse(address), credentials, timeout=config.connect_timeout
            )

        return cls(
            reactor,
            [str(address) for address in config.metaservers],
            connect,
            config.request_timeout,
        )

    @property
    def address(self) -> str | None:
        """The metaserver the channel has a session with now, if any."""
        link = self._link
        return link.address if link is not None and link.session.is_open else None

    async def connect(self) -> None:
        """Open a session with the first metaserver that answers, trying each once
        (leader or not: the first request finds the leader). Raises
        NoMetaserverReachable, naming each failure, if none answers."""
        failures: dict[str, str] = {}
        for _ in self.addresses:
            try:
                await self._get_link()
                return
            except _Unreachable as error:
                failures[error.address] = error.reason
        raise NoMetaserverReachable(f"no metaserver reachable ({_summary(failures)})")

    async def call(self, command: Any, **arguments: Any) -> dict[str, Any]:
        """``command`` with ``arguments``, answered by the leader; repeated (with the
        same arguments) until answered or ``request_timeout`` has passed."""
        return await self.call_within(self.request_timeout, command, **arguments)

    async def call_within(self, seconds: float, command: Any, **arguments: Any) -> dict[str, Any]:
        """As :meth:`call`, giving up after ``seconds``.

        Errors other than NotLeader, SafeMode and a failing connection are the
        answer and raised at once; so is a SafeMode an administrator entered
        (``SafeMode.manual``). On giving up it raises the last NotLeader or
        SafeMode, or else NoMetaserverReachable naming what went wrong with each
        metaserver.
        """
        deadline = self._clock.seconds() + seconds
        failures: dict[str, str] = {}
        last: Exception | None = None
        pause = FIRST_PAUSE
        tries = 0  # since the last pause
        #: metaservers that could not be reached or failed since the last pause: a
        #: follower may name a dead leader until the election is over
        failed: set[str] = set()
        while True:
            if self._closed:
                raise ConnectionDone("the client is closed")
            remaining = deadline - self._clock.seconds()
            if remaining <= 0:
                raise self._give_up(command, seconds, last, failures)
            if tries >= len(self.addresses):
                await deferLater(self._clock, min(pause, remaining))
                pause = min(2 * pause, LAST_PAUSE)
                tries = 0
                failed.clear()
                continue
            tries += 1
            try:
                link = await self._get_link()
            except _Unreachable as error:
                failures[error.address] = error.reason
                failed.add(error.address)
                last = error
                continue
            if self._clock.seconds() >= deadline:
                continue  # the dial took the time that was left
            try:
                return await self._ask(link, command, arguments, deadline)
            except NotLeader as error:
                last = error
                leader = _leader_named(error)
                if leader == link.address:
                    # It leads but cannot serve yet (just elected), or could not
                    # commit: ask it again after a pause, on the same session.
                    failures[link.address] = "the leader, but not serving yet"
                    tries = len(self.addresses)
                elif leader is not None and leader not in failed:
                    failures[link.address] = f"not the leader (the leader is {leader})"
                    self._follow(link, leader)
                else:
                    failures[link.address] = "not the leader (no leader known)"
                    self._move_on(link, "knows no live leader", failed)
            except SafeMode as error:
                if error.manual:
                    # An administrator's safe mode lasts until one ends it: waiting
                    # it out would only hold the caller for request_timeout.
                    raise
                # The leader (a follower would answer NotLeader) is still loading its
                # namespace or waiting for chunk reports: ask it again after a pause,
                # on the same session.
                last = error
                failures[link.address] = "in safe mode"
                tries = len(self.addresses)
            except _NoAnswer as error:
                last = error
                failures[link.address] = _describe(error)
                if error.hung:
                    failed.add(link.address)
                    self._drop(link, error, failed)
                # else the request's own time ran out, not the metaserver's: keep it.
            except CONNECTION_TROUBLE as error:
                last = error
                failures[link.address] = _describe(error)
                failed.add(link.address)
                self._drop(link, error, failed)

    async def _ask(
        self, link: _Link, command: Any, arguments: dict[str, Any], deadline: float
    ) -> dict[str, Any]:
        budget = min(self.attempt_timeout, deadline - self._clock.seconds())
        call: Deferred[dict[str, Any]] = link.session.callRemote(command, **arguments)
        call.addTimeout(budget, self._clock)
        try:
            return dict(await call)
        except defer.TimeoutError:
            raise _NoAnswer(budget, hung=budget >= self.attempt_timeout) from None

    def _give_up(
        self, command: Any, seconds: float, last: Exception | None, failures: dict[str, str]
    ) -> Exception:
        name = getattr(command, "__name__", str(command))
        self.log.info(
            "gave up on {command} after {seconds} s: {failures}",
            command=name,
            seconds=seconds,
            failures=_summary(failures) or "no attempt",
        )
        if isinstance(last, (NotLeader, SafeMode)):
            return last
        detail = f" ({_summary(failures)})" if failures else ""
        return NoMetaserverReachable(f"no metaserver answered {name} within {seconds:g} s{detail}")

    # -- the session ---------------------------------------------------------

    def _get_link(self) -> Deferred[_Link]:
        """The session to use: the current one, or one being opened to the target."""
        link = self._link
        if link is not None:
            if link.session.is_open:
                return succeed(link)
            # Lost while idle: dial the same metaserver again (if it is gone, the dial
            # fails and the next one is tried).
            self._link = None
        waiter: Deferred[_Link] = Deferred()
        self._waiting.append(waiter)
        if not self._dialing:
            self._dialing = True
            Deferred.fromCoroutine(self._dial(self._target))
        return waiter

    async def _dial(self, address: str) -> None:
        try:
            session = await self._connect(address)
        except IncompatibleProtocol as error:
            # Asking again, or another metaserver of the same cluster, cannot help:
            # the caller gets the versions at once.
            self._dialing = False
            self._release(Failure(error))
            return
        except Exception as error:
            self._dialing = False
            self._rotate_past(address)
            reason = _describe(error)
            self.log.info(
                "cannot reach metaserver {address}: {reason}; next: {target}",
                address=address,
                reason=reason,
                target=self._target,
            )
            self._release(Failure(_Unreachable(address, reason)))
            return
        self._dialing = False
        if self._closed:
            _hang_up(session)
            self._release(Failure(ConnectionDone("the client is closed")))
            return
        link = _Link(address, session)
        self._link = link
        self._target = address
        self.log.info("connected to metaserver {address}", address=address)
        self._release(link)

    def _release(self, outcome: _Link | Failure) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            # A waiter whose caller gave up was cancelled; firing it again is a no-op.
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    def _rotate_past(self, address: str, avoid: Collection[str] = ()) -> None:
        """Aim the next dial at the next configured metaserver in turn other than
        ``address``, and not one of ``avoid`` (those just failed) while others are left."""
        count = len(self.addresses)
        turn = [(self._rotation + step) % count for step in range(count)]
        index = (
            [i for i in turn if self.addresses[i] != address and self.addresses[i] not in avoid]
            or [i for i in turn if self.addresses[i] != address]
            or turn
        )[0]
        self._target = self.addresses[index]
        self._rotation = (index + 1) % count

    def _follow(self, link: _Link, leader: str) -> None:
        """Switch to the leader a metaserver named (unless another call already
        switched away from ``link``)."""
        if self._link is not link:
            return
        self.log.info(
            "metaserver {address} is not the leader; following the leader at {leader}",
            address=link.address,
            leader=leader,
        )
        self._link = None
        self._target = leader
        _hang_up(link.session)

    def _move_on(self, link: _Link, why: str, avoid: Collection[str]) -> None:
        """Try the next metaserver after ``link``'s, which answers but cannot serve."""
        if self._link is not link:
            return
        if len(self.addresses) == 1:
            return  # the only metaserver: keep the session and ask it again
        self._rotate_past(link.address, avoid)
        self.log.info(
            "metaserver {address} {why}; trying {target}",
            address=link.address,
            why=why,
            target=self._target,
        )
        self._link = None
        _hang_up(link.session)

    def _drop(self, link: _Link, error: BaseException, avoid: Collection[str]) -> None:
        """Give up ``link``'s session, which failed or hangs, and try the next
        metaserver. Calls still waiting on a hung session then fail over at once
        rather than each at its own timeout."""
        if self._link is not link:
            return
        self._link = None
        self._rotate_past(link.address, avoid)
        self.log.info(
            "lost metaserver {address} ({reason}); trying {target}",
            address=link.address,
            reason=_describe(error),
            target=self._target,
        )
        if link.session.is_open:
            link.session.abort()

    def close(self) -> None:
        """Close the session; calls waiting for one, and later calls, fail."""
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            _hang_up(link.session)
        self._release(Failure(ConnectionDone("the client is closed")))


def _hang_up(session: MetaserverSession) -> None:
    if session.transport is not None:
        session.transport.loseConnection()
