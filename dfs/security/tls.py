"""TLS context factories for every DFS connection: mutual authentication, one CA.

Servers present their certificate and require one from the peer, signed by the
cluster CA. Clients check the server's name (DNS name or IP address) with
service_identity through Twisted's ``optionsForClientTLS``. TLS 1.3 is preferred
(OpenSSL picks the highest both sides speak) and nothing below TLS 1.2 is accepted.

A server's :class:`NodeCredentials` can be replaced while it runs (a renewed
certificate, on SIGHUP): the listener and every client endpoint made from them
build each new connection from the credentials of the moment, and connections
already open keep the ones they started with. Every TLS connection made from a
node's credentials carries its ``attachment`` (the server's session registry),
which a session finds again from its transport with :func:`attachment`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import attrs
from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2


@attrs.define(eq=False)
class NodeCredentials:
    """A node's certificate and key, and the CA it trusts, loaded from PEM files.

    ``replace`` swaps them for new ones while the node runs: the context factories
    handed out before (``server_options``, ``client_options``) use the new ones for
    every connection made afterwards.
    """

    private: ssl.PrivateCertificate
    authority: ssl.Certificate
    #: Given to every TLS connection made from these credentials (see :func:`attachment`).
    attachment: object | None = None
    _server: ssl.CertificateOptions | None = attrs.field(default=None, init=False, repr=False)
    _clients: dict[str, IOpenSSLClientConnectionCreator] = attrs.field(
        factory=dict, init=False, repr=False
    )

    @classmethod
    def load(cls, certificate: Path, key: Path, ca: Path) -> NodeCredentials:
        private = ssl.PrivateCertificate.loadPEM(
            Path(certificate).read_bytes() + b"\n" + Path(key).read_bytes()
        )
        authority = ssl.Certificate.loadPEM(Path(ca).read_bytes())
        return cls(private=private, authority=authority)

    @property
    def certificate(self) -> x509.Certificate:
        """The node's own certificate."""
        return self.private.original.to_cryptography()

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self.authority.original.to_cryptography()

    def replace(self, other: NodeCredentials) -> None:
        """Use ``other``'s certificate, key and CA for every connection from now on."""
        self.private = other.private
        self.authority = other.authority
        # Contexts are cached per credentials: build new ones on next use.
        self._server = None
        self._clients = {}

    def server_options(self) -> _LiveServerOptions:
        """Context factory for a listening port that requires a client certificate."""
        return _LiveServerOptions(self)

    def client_options(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        """Connection creator that presents our certificate and verifies ``hostname``."""
        return _LiveClientOptions(self, hostname)

    def _server_options(self) -> ssl.CertificateOptions:
        if self._server is None:
            options = ssl.CertificateOptions(
                privateKey=self.private.privateKey.original,
                certificate=self.private.original,
                trustRoot=ssl.trustRootFromCertificates([self.authority]),
                raiseMinimumTo=MINIMUM_TLS_VERSION,
                enableSessions=False,
            )
            # The context is made once and cached by getContext(); keep OpenSSL's
            # verification verdict but remember why a peer certificate failed, so the
            # refusal can be logged with its reason.
            context = options.getContext()
            context.set_verify(context.get_verify_mode(), _record_verify_result)
            self._server = options
        return self._server

    def _client_options(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        creator = self._clients.get(hostname)
        if creator is None:
            creator = ssl.optionsForClientTLS(
                hostname,
                trustRoot=self.authority,
                clientCertificate=self.private,
                extraCertificateOptions={"raiseMinimumTo": MINIMUM_TLS_VERSION},
            )
            self._clients[hostname] = creator
        return creator


@implementer(IOpenSSLServerConnectionCreator)
class _LiveServerOptions:
    """A server's TLS settings, taken from its credentials anew for each connection."""

    def __init__(self, credentials: NodeCredentials) -> None:
        self._credentials = credentials

    def getContext(self) -> SSL.Context:
        return self._credentials._server_options().getContext()

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        connection = self._credentials._server_options().serverConnectionForTLS(protocol)
        _attach(connection, self._credentials.attachment)
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class _LiveClientOptions:
    """Our side of a connection we dial, from the credentials of the moment."""

    def __init__(self, credentials: NodeCredentials, hostname: str) -> None:
        self._credentials = credentials
        self._hostname = hostname

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self._credentials._client_options(self._hostname).clientConnectionForTLS(
            tlsProtocol
        )
        _attach(connection, self._credentials.attachment)
        return connection


# What each TLS connection made from a node's credentials carries (see attachment).
_ATTACHMENTS: WeakKeyDictionary[SSL.Connection, object] = WeakKeyDictionary()


def _attach(connection: SSL.Connection, value: object | None) -> None:
    if value is not None:
        _ATTACHMENTS[connection] = value


def attachment(transport: object) -> object | None:
    """The ``attachment`` of the node credentials that made this TLS transport."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        handle = get_handle()
    except Exception:
        return None
    if not isinstance(handle, SSL.Connection):
        return None
    return _ATTACHMENTS.get(handle)


def peer_certificate(transport: object) -> x509.Certificate | None:
    """The verified certificate of the peer on a TLS transport, or None."""
    get_peer = getattr(transport, "getPeerCertificate", None)
    if get_peer is None:
        return None
    cert = get_peer()
    if cert is None:
        return None
    if isinstance(cert, crypto.X509):
        return cert.to_cryptography()
    return None


# Why OpenSSL rejected a peer's certificate, per TLS connection (see verify_failure).
_VERIFY_FAILURES: WeakKeyDictionary[SSL.Connection, str] = WeakKeyDictionary()

# The X.509 verification results a refused peer most often meets (OpenSSL's codes).
_VERIFY_REASONS = {
    2: "issuer certificate not found",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "issued by an unknown CA",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "certificate not allowed for this purpose",
}


def _record_verify_result(
    connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    if not ok and connection not in _VERIFY_FAILURES:
        subject = cert.get_subject()
        reason = _VERIFY_REASONS.get(errno, f"X.509 verification error {errno}")
        _VERIFY_FAILURES[connection] = f"{reason} (subject CN={subject.CN}, OU={subject.OU})"
    return bool(ok)


def verify_failure(transport: object) -> str | None:
    """Why the peer's certificate on this TLS transport was rejected, if it was."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    try:
        return _VERIFY_FAILURES.get(get_handle())
    except TypeError:  # not a TLS connection
        return None
