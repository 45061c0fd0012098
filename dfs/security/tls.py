"""TLS context factories for every DFS connection: mutual authentication, one CA.

Servers present their certificate and require one from the peer, signed by the
cluster CA. Clients check the server's name (DNS name or IP address) with
service_identity through Twisted's ``optionsForClientTLS``. TLS 1.3 is preferred
(OpenSSL picks the highest both sides speak) and nothing below TLS 1.2 is accepted.
"""

from __future__ import annotations

from pathlib import Path
from weakref import WeakKeyDictionary

import attrs
from cryptography import x509
from OpenSSL import SSL, crypto
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
        return options

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
