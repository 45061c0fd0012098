"""Connecting to DFS servers as a client: mutual TLS, name checked, one AMP session.

``connect_server`` dials one server; ``connect_metaserver`` tries the metaservers
of a client config in order until one answers.
"""

from __future__ import annotations

from typing import Any

import attrs
from cryptography import x509

from dfs.config import Address, ClientConfig
from dfs.protocol.dial import dial
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity, identity_from_certificate
from dfs.security.tls import NodeCredentials


class NoMetaserverReachable(Exception):
    """None of the configured metaservers accepted a connection."""


@attrs.frozen
class ClientCredentials:
    credentials: NodeCredentials
    identity: Identity

    @classmethod
    def from_config(cls, config: ClientConfig) -> ClientCredentials:
        credentials = NodeCredentials.load(config.tls.certificate, config.tls.key, config.tls.ca)
        certificate = x509.load_pem_x509_certificate(config.tls.certificate.read_bytes())
        return cls(credentials=credentials, identity=identity_from_certificate(certificate))


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


async def connect_metaserver(
    reactor: Any, config: ClientConfig, credentials: ClientCredentials | None = None
) -> PeerSession:
    """A session with the first configured metaserver that answers."""
    credentials = credentials or ClientCredentials.from_config(config)
    failures = []
    for address in config.metaservers:
        try:
            return await connect_server(
                reactor, address, credentials, timeout=config.connect_timeout
            )
        except Exception as error:
            failures.append(f"{address}: {type(error).__name__}: {error}")
    raise NoMetaserverReachable("no metaserver reachable (" + "; ".join(failures) + ")")
