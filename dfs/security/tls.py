"""TLS context factories for every DFS connection: mutual authentication, one CA.

Servers present their certificate and require one from the peer, signed by the
cluster CA. Clients check the server's name (DNS name or IP address) with
service_identity through Twisted's ``optionsForClientTLS``. TLS 1.3 is preferred
(OpenSSL picks the highest both sides speak) and nothing below TLS 1.2 is accepted.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from cryptography import x509
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2


@attrs.frozen
class NodeCredentials:
    """A node's certificate and key, and the CA it trusts, loaded once from PEM files."""

    private: ssl.PrivateCertificate
    authority: ssl.Certificate

    @classmethod
    def load(cls, certificate: Path, key: Path, ca: Path) -> NodeCredentials:
        private = ssl.PrivateCertificate.loadPEM(
            Path(certificate).read_bytes() + b"\n" + Path(key).read_bytes()
        )
        authority = ssl.Certificate.loadPEM(Path(ca).read_bytes())
        return cls(private=private, authority=authority)

    def server_options(self) -> ssl.CertificateOptions:
        """Context factory for a listening port that requires a client certificate."""
        return ssl.CertificateOptions(
            privateKey=self.private.privateKey.original,
            certificate=self.private.original,
            trustRoot=ssl.trustRootFromCertificates([self.authority]),
            raiseMinimumTo=MINIMUM_TLS_VERSION,
            enableSessions=False,
        )

    def client_options(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        """Connection creator that presents our certificate and verifies ``hostname``."""
        return ssl.optionsForClientTLS(
            hostname,
            trustRoot=self.authority,
            clientCertificate=self.private,
            extraCertificateOptions={"raiseMinimumTo": MINIMUM_TLS_VERSION},
        )


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
