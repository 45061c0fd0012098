"""Connecting to DFS servers as a client: mutual TLS, name checked, one AMP session.

``connect_server`` dials one server; ``connect_metaserver`` tries the metaservers
of a client config in order until one answers, for tools that want one plain session
(commands any metaserver answers, such as Ping or ListDataservers). Namespace requests
go through :class:`dfs.client.leader.MetaserverChannel` instead, which follows the
Raft leader.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from dfs.config import Address, ClientConfig, ConfigError
from dfs.protocol.dial import dial
from dfs.protocol.records import Location
from dfs.protocol.session import PeerSession, SessionRegistry
from dfs.protocol.stream import StreamPool
from dfs.protocol.version import IncompatibleProtocol
from dfs.security.identity import Identity, identity_from_certificate
from dfs.security.revocation import CRLError
from dfs.security.tls import NodeCredentials
from dfs.trust import read_crl

#: How long the first dataserver of a pipeline may take to answer, or to acknowledge
#: data sent on a chunk stream. Longer than two hops' own timeouts, so that a
#: dataserver further down is blamed by the one above it.
DATASERVER_TIMEOUT = 90.0


class NoMetaserverReachable(Exception):
    """None of the configured metaservers accepted a connection."""


@attrs.frozen
class ClientCredentials:
    credentials: NodeCredentials
    identity: Identity

    @classmethod
    def from_config(cls, config: ClientConfig) -> ClientCredentials:
        """The user's credentials; with ``tls.crl`` set, every server the client dials
        is checked against that revocation list and refused when it is listed. A file
        that cannot be read is a ConfigError naming its key."""
        source = str(config.source or "client config")
        config.tls.check(source)
        credentials = NodeCredentials.load(config.tls.certificate, config.tls.key, config.tls.ca)
        if config.tls.crl is not None:
            try:
                revocations, _ = read_crl(config.tls.crl, credentials.ca_certificate)
            except CRLError as error:
                raise ConfigError(
                    file=source,
                    key="tls.crl",
                    expected="a CRL signed by the cluster CA (dfs ca revoke writes one)",
                    got=str(error),
                ) from None
            # Each TLS connection made from these credentials carries the registry,
            # which refuses a listed server at the end of the handshake.
            credentials.attachment = SessionRegistry(revocations.refusal)
        return cls(
            credentials=credentials, identity=identity_from_certificate(credentials.certificate)
        )


async def connect_server(
    reactor: Any,
    address: Address,
    credentials: ClientCredentials,
    *,
    server_name: str | None = None,
    timeout: float = 10.0,
) -> PeerSession:
    """An AMP session with one server, as this client (see :func:`dfs.protocol.dial.dial`)."""
    return await dial(
        reactor,
        address,
        credentials.credentials,
        credentials.identity,
        server_name=server_name,
        timeout=timeout,
    )


class DataserverPool:
    """One AMP session per dataserver, shared by every reader and writer of a client,
    and one chunk stream per dataserver (``streams``), shared by its writers.

    A TLS handshake costs more than reading or writing a small file, so sessions
    outlive the files that opened them. Concurrent requests for the same dataserver
    share one dial; a session that dropped is dialled again on next use.
    """

    def __init__(self, reactor: Any, credentials: ClientCredentials, timeout: float) -> None:
        self._reactor = reactor
        self._credentials = credentials
        self._timeout = timeout
        self._sessions: dict[Location, PeerSession] = {}
        #: dataserver -> callers waiting for the dial in progress
        self._waiting: dict[Location, list[Deferred[PeerSession]]] = {}
        self.streams = StreamPool(reactor, self.dial, DATASERVER_TIMEOUT)

    async def dial(self, address: Location) -> PeerSession:
        """A session of its own with ``address``, shared with nobody."""
        return await connect_server(
            self._reactor, address, self._credentials, timeout=self._timeout
        )

    def open_session(self, address: Location) -> PeerSession | None:
        """The session with ``address`` if one is open now, without dialling."""
        session = self._sessions.get(address)
        return session if session is not None and session.is_open else None

    async def get(self, address: Location, *, fresh: bool = False) -> PeerSession:
        """The session with ``address``; with ``fresh``, a new one (after a failure)."""
        session = self._sessions.get(address)
        if session is not None and (fresh or not session.is_open):
            self.drop(address)
            session = None
        if session is not None:
            return session
        if address in self._waiting and not fresh:
            waiter: Deferred[PeerSession] = Deferred()
            self._waiting[address].append(waiter)
            return await waiter
        waiting: list[Deferred[PeerSession]] = []
        self._waiting[address] = waiting
        try:
            session = await connect_server(
                self._reactor, address, self._credentials, timeout=self._timeout
            )
        except Exception as error:
            self._done(address, waiting)
            for waiter in waiting:
                waiter.errback(Failure(error))
            raise
        self._done(address, waiting)
        self._sessions[address] = session
        for waiter in waiting:
            waiter.callback(session)
        return session

    def _done(self, address: Location, waiting: list[Deferred[PeerSession]]) -> None:
        if self._waiting.get(address) is waiting:
            del self._waiting[address]

    def drop(self, address: Location) -> None:
        session = self._sessions.pop(address, None)
        if session is not None and session.transport is not None:
            session.transport.loseConnection()

    def close(self) -> None:
        for address in list(self._sessions):
            self.drop(address)
        self.streams.close()


async def connect_metaserver(
    reactor: Any, config: ClientConfig, credentials: ClientCredentials | None = None
) -> PeerSession:
    """A session with the first configured metaserver that answers (leader or not:
    namespace commands sent on it may answer NotLeader)."""
    credentials = credentials or ClientCredentials.from_config(config)
    failures = []
    for address in config.metaservers:
        try:
            return await connect_server(
                reactor, address, credentials, timeout=config.connect_timeout
            )
        except IncompatibleProtocol:
            raise  # the other metaservers of the cluster speak the same
        except Exception as error:
            failures.append(f"{address}: {type(error).__name__}: {error}")
    raise NoMetaserverReachable("no metaserver reachable (" + "; ".join(failures) + ")")
