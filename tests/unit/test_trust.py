"""A server's live trust: the CRL it polls, the sessions it closes, the certificate it reloads."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from dfs.config import Address, ConfigError, TLSFiles, load_security_config
from dfs.protocol.commands import Ping
from dfs.protocol.dial import PeerRefused, dial
from dfs.protocol.session import PeerSession, SessionRegistry
from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Identity, Role
from dfs.security.tls import NodeCredentials, peer_certificate
from dfs.trust import TrustService

HOST = "127.0.0.1"


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def texts(events, level=None) -> list[str]:
    return [formatEvent(e) for e in events if level is None or e.get("log_level") == level]


class Node:
    """A server's files: a CA, its certificate and key, a security config naming the CRL."""

    def __init__(self, tmp_path: Path, crl: str | None = "ca/crl.pem", **security) -> None:
        self.root = tmp_path
        self.ca = CertificateAuthority.create(tmp_path / "ca")
        issued = self.ca.issue(Role.DATASERVER, "ds1", [HOST], out_dir=tmp_path / "ds1")
        self.tls = TLSFiles(
            certificate=issued.certificate_path, key=issued.key_path, ca=self.ca.certificate_path
        )
        self.identity = issued.identity
        document = {"crl": crl, **security} if crl is not None else dict(security)
        (tmp_path / "security_config.json").write_text(json.dumps(document))
        self.credentials = NodeCredentials.load(self.tls.certificate, self.tls.key, self.tls.ca)

    def service(self, clock=None) -> TrustService:
        security = load_security_config(self.root / "security_config.json")
        return TrustService(
            clock or Clock(),
            self.credentials,
            self.identity,
            self.tls,
            "dataserver_config.json",
            security,
        )


class FakeSession:
    """What the registry needs of a session."""

    def __init__(self, name: str) -> None:
        self.peer = Identity(Role.CLIENT, name)
        self.peer_address = "127.0.0.1:1"
        self.closed = False

    def close_refused(self) -> None:
        self.closed = True


# -- start -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), (b"junk", "not a valid CRL"), ("foreign", "not by the cluster CA")],
)
def test_an_unusable_crl_at_start_is_a_config_error_naming_crl(tmp_path, content, message):
    node = Node(tmp_path)
    if content is None:
        node.ca.crl_path.unlink()
    elif content == "foreign":
        other = CertificateAuthority.create(tmp_path / "other", common_name="Other CA")
        shutil.copyfile(other.crl_path, node.ca.crl_path)
    else:
        node.ca.crl_path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        node.service()
    assert "crl" in str(caught.value) and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_no_crl_configured_means_no_revocation_checks(tmp_path):
    node = Node(tmp_path, crl=None)
    trust = node.service()
    alice = node.ca.issue(Role.CLIENT, "alice", out_dir=tmp_path / "alice")
    node.ca.revoke("alice")
    trust.check_crl(force=True)
    assert trust.refusal(alice.certificate) is None


# -- the CRL changes -----------------------------------------------------------------


def test_a_revocation_is_picked_up_on_the_next_check_and_closes_open_sessions(tmp_path, events):
    node = Node(tmp_path, crl_check_interval=2)
    clock = Clock()
    trust = node.service(clock)
    alice = node.ca.issue(Role.CLIENT, "alice", out_dir=tmp_path / "alice")
    bob = node.ca.issue(Role.CLIENT, "bob", out_dir=tmp_path / "bob")
    alice_session, bob_session = FakeSession("alice"), FakeSession("bob")
    assert trust.registry.admit(alice_session, alice.certificate) is None  # type: ignore[arg-type]
    assert trust.registry.admit(bob_session, bob.certificate) is None  # type: ignore[arg-type]
    trust.startService()
    try:
        node.ca.revoke("alice")
        clock.advance(1.9)
        assert not alice_session.closed
        clock.advance(0.2)
        assert alice_session.closed and not bob_session.closed
        assert len(trust.registry) == 1
        refusal = trust.registry.admit(FakeSession("alice"), alice.certificate)  # type: ignore[arg-type]
        assert refusal is not None and "certificate revoked" in refusal
        assert any("closing connection with client:alice" in t for t in texts(events))
    finally:
        trust.stopService()


def test_a_bad_crl_later_keeps_the_last_good_list_and_is_logged_once(tmp_path, events):
    node = Node(tmp_path, crl_check_interval=1)
    clock = Clock()
    trust = node.service(clock)
    alice = node.ca.issue(Role.CLIENT, "alice", out_dir=tmp_path / "alice")
    node.ca.revoke("alice")
    trust.startService()
    try:
        clock.advance(1)
        assert trust.refusal(alice.certificate) is not None
        node.ca.crl_path.write_bytes(b"oops")
        for _ in range(5):
            clock.advance(1)
        assert trust.refusal(alice.certificate) is not None
        critical = [t for t in texts(events, LogLevel.critical) if "CRL cannot be used" in t]
        assert len(critical) == 1
        assert "still refusing the 1 certificates" in critical[0]
        node.ca.crl_path.unlink()
        clock.advance(1)
        assert trust.refusal(alice.certificate) is not None
        node.ca.renew_crl()  # with the file gone: a fresh, empty list
        clock.advance(1)
        # An empty list signed by the CA is good again: alice is let back in.
        assert trust.refusal(alice.certificate) is None
    finally:
        trust.stopService()


# -- SIGHUP: the server's own certificate ----------------------------------------------


def test_reload_uses_a_renewed_certificate_and_refuses_another_identity(tmp_path, events):
    node = Node(tmp_path)
    trust = node.service()
    first = node.credentials.certificate.serial_number

    stranger = node.ca.issue(Role.DATASERVER, "ds9", [HOST], out_dir=tmp_path / "ds9")
    shutil.copyfile(stranger.certificate_path, node.tls.certificate)
    shutil.copyfile(stranger.key_path, node.tls.key)
    assert not trust.reload_credentials()
    assert node.credentials.certificate.serial_number == first
    assert any("dataserver:ds9" in t for t in texts(events, LogLevel.error))

    renewed = node.ca.issue(
        Role.DATASERVER, "ds1", [HOST], out_dir=node.tls.certificate.parent, overwrite=True
    )
    assert trust.reload_credentials()
    assert node.credentials.certificate.serial_number == renewed.certificate.serial_number


def test_reload_keeps_the_certificate_when_the_key_does_not_match_or_is_exposed(tmp_path, events):
    node = Node(tmp_path)
    trust = node.service()
    first = node.credentials.certificate.serial_number
    other = node.ca.issue(Role.DATASERVER, "ds1", [HOST], out_dir=tmp_path / "other")
    shutil.copyfile(other.certificate_path, node.tls.certificate)  # the key stays the old one
    assert not trust.reload_credentials()
    shutil.copyfile(other.key_path, node.tls.key)
    node.tls.key.chmod(0o644)
    assert not trust.reload_credentials()
    assert node.credentials.certificate.serial_number == first
    assert any("chmod 600" in t for t in texts(events, LogLevel.error))


# -- real TLS: accepted and dialled sessions alike -----------------------------------------


async def closed(session: PeerSession, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while session.is_open:
        assert time.monotonic() < deadline, "the session is still open"
        await deferLater(reactor, 0.01)


@pytest_twisted.ensureDeferred
async def test_sessions_a_server_dialled_are_checked_and_closed_too(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "ca")
    server_files = ca.issue(Role.METASERVER, "meta1", [HOST], out_dir=tmp_path / "meta1")
    client_files = ca.issue(Role.DATASERVER, "ds1", [HOST], out_dir=tmp_path / "ds1")
    server = NodeCredentials.load(
        server_files.certificate_path, server_files.key_path, ca.certificate_path
    )
    client = NodeCredentials.load(
        client_files.certificate_path, client_files.key_path, ca.certificate_path
    )
    revoked: set[int] = set()

    def refusal(certificate: x509.Certificate) -> str | None:
        return "certificate revoked" if certificate.serial_number in revoked else None

    server.attachment = SessionRegistry(refusal)
    dialler = SessionRegistry(refusal)
    client.attachment = dialler

    factory = Factory()
    factory.protocol = lambda: PeerSession(server_files.identity)
    port = await SSL4ServerEndpoint(reactor, 0, server.server_options(), interface=HOST).listen(
        factory
    )
    address = Address(HOST, port.getHost().port)
    try:
        session = await dial(reactor, address, client, client_files.identity)
        assert len(dialler) == 1
        revoked.add(server_files.certificate.serial_number)
        assert dialler.sweep() == 1
        await closed(session)
        with pytest.raises(PeerRefused, match="certificate revoked"):
            await dial(reactor, address, client, client_files.identity, timeout=5)

        # A renewed server certificate: new connections see it, open ones keep theirs.
        revoked.clear()
        before = await dial(reactor, address, client, client_files.identity)
        renewed = ca.issue(Role.METASERVER, "meta1", [HOST], out_dir=tmp_path / "renewed")
        server.replace(
            NodeCredentials.load(renewed.certificate_path, renewed.key_path, ca.certificate_path)
        )
        after = await dial(reactor, address, client, client_files.identity)
        assert peer_certificate(after.transport).serial_number == renewed.certificate.serial_number
        assert (
            peer_certificate(before.transport).serial_number
            == server_files.certificate.serial_number
        )
        assert (await before.callRemote(Ping))["name"] == "meta1"
        before.abort()
        after.abort()
    finally:
        await port.stopListening()
