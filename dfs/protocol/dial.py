"""Dialling a DFS server: mutual TLS with its name checked, then one AMP session.

Used by clients and by servers that call each other (a dataserver forwarding a
pipeline, or registering with a metaserver).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS

from dfs.config import Address
from dfs.protocol.commands import Ping
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity
from dfs.security.tls import NodeCredentials


class PeerRefused(ConnectionError):
    """This side refused the server at the handshake (its certificate is revoked)."""

    def __init__(self, address: Address, reason: str) -> None:
        super().__init__(f"refused the server at {address}: {reason}")
        self.address = address
        self.reason = reason


async def dial(
    reactor: Any,
    address: Address,
    credentials: NodeCredentials,
    identity: Identity,
    *,
    server_name: str | None = None,
    timeout: float = 10.0,
) -> PeerSession:
    """An AMP session with the server at ``address`` once TLS has been verified.

    ``server_name`` is the name the server's certificate must carry (defaults to the
    host of ``address``). Fails with the TLS or connection error otherwise.
    """
    endpoint = wrapClientTLS(
        credentials.client_options(server_name or address.host),
        HostnameEndpoint(reactor, address.host, address.port, timeout=timeout),
    )
    session = PeerSession(identity)
    session.dialled = True
    # Cancelling a connection attempt fails it with whatever stage it was at (a name
    # lookup cancelled is a DNSLookupError): note that it was the caller who gave up.
    cancelled: list[bool] = []
    attempt = connectProtocol(endpoint, session)

    def give_up(_: object) -> None:
        cancelled.append(True)
        attempt.cancel()

    connecting: defer.Deferred[Any] = defer.Deferred(give_up)
    attempt.chainDeferred(connecting)
    try:
        await connecting
        # TLS completes after the TCP connection; a Ping proves the handshake passed
        # both ways and tells us who answered.
        await session.callRemote(Ping).addTimeout(timeout, reactor)
    except Exception as failure:
        if cancelled or isinstance(failure, defer.CancelledError):
            # The caller gave up: one kind of error for it, whenever it came, and no
            # connection left behind.
            session.abort()
            raise defer.CancelledError() from None
        if session.refusal is not None:
            raise PeerRefused(address, session.refusal) from None
        if isinstance(failure, (TimeoutError, defer.TimeoutError, error.TimeoutError)):
            session.abort()
            raise TimeoutError(f"no answer from {address} within {timeout:g} s") from None
        raise
    return session
