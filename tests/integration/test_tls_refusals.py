"""Every way in that must be refused is refused, logged with its reason, and the
server goes on serving. Shown with our own client and with ``openssl s_client``."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.protocol import Protocol

from dfs.client.connection import ClientCredentials, connect_server
from dfs.config import Address
from dfs.protocol.commands import Ping
from dfs.protocol.session import PeerSession
from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Identity, Role
from dfs.security.tls import NodeCredentials


class Recorder(Protocol):
    """A raw protocol that records what it receives and when it is cut off."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[str] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost.callback(str(reason.value))


def meta_address(cluster) -> Address:
    return Address.parse(cluster.metaservers[0].address)


def creds_from(ca_dir: Path, issued) -> ClientCredentials:
    credentials = NodeCredentials.load(issued.certificate_path, issued.key_path, ca_dir / "ca.crt")
    return ClientCredentials(credentials=credentials, identity=issued.identity)


async def still_serving(cluster, credentials) -> None:
    session = await connect_server(reactor, meta_address(cluster), credentials)
    assert (await session.callRemote(Ping))["name"] == "meta1"
    session.transport.loseConnection()


async def attempt(options, address: Address) -> Exception | None:
    """Connect with raw client TLS options and Ping; the error, or None if it worked."""
    session = PeerSession(Identity(Role.CLIENT, "probe"))
    endpoint = wrapClientTLS(options, HostnameEndpoint(reactor, address.host, address.port))
    try:
        await connectProtocol(endpoint, session)
        await session.callRemote(Ping).addTimeout(10, reactor)
    except Exception as error:
        return error
    session.transport.loseConnection()
    return None


@pytest_twisted.ensureDeferred
async def test_no_client_certificate_is_refused(cluster, credentials, poll, log_contains):
    authority = ssl.Certificate.loadPEM((cluster.directory / "ca" / "ca.crt").read_bytes())
    error = await attempt(
        ssl.optionsForClientTLS("127.0.0.1", trustRoot=authority), meta_address(cluster)
    )
    assert error is not None
    await poll(
        lambda: log_contains(
            cluster.metaservers[0].logfile,
            "refused connection",
            "peer did not return a certificate",
        ),
        what="refusal logged",
    )
    await still_serving(cluster, credentials)


@pytest_twisted.ensureDeferred
async def test_certificate_from_another_ca_is_refused(
    cluster, credentials, tmp_path, poll, log_contains
):
    other = CertificateAuthority.create(tmp_path / "other-ca")
    issued = other.issue(Role.ADMIN, "admin", out_dir=tmp_path)
    stranger = NodeCredentials.load(
        issued.certificate_path, issued.key_path, cluster.directory / "ca" / "ca.crt"
    )
    error = await attempt(stranger.client_options("127.0.0.1"), meta_address(cluster))
    assert error is not None
    await poll(
        lambda: log_contains(
            cluster.metaservers[0].logfile,
            "refused connection",
            "certificate verify failed: issued by an unknown CA (subject CN=admin, OU=admin)",
        ),
        what="refusal logged",
    )
    await still_serving(cluster, credentials)


@pytest_twisted.ensureDeferred
async def test_expired_certificate_is_refused(cluster, credentials, tmp_path, poll, log_contains):
    ca = CertificateAuthority.load(cluster.directory / "ca")
    now = datetime.now(UTC)
    issued = ca.issue(
        Role.ADMIN,
        "old-admin",
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
        out_dir=tmp_path,
    )
    error = await attempt(
        creds_from(cluster.directory / "ca", issued).credentials.client_options("127.0.0.1"),
        meta_address(cluster),
    )
    assert error is not None
    await poll(
        lambda: log_contains(
            cluster.metaservers[0].logfile,
            "refused connection",
            "certificate has expired (subject CN=old-admin, OU=admin)",
        ),
        what="refusal logged",
    )
    await still_serving(cluster, credentials)


@pytest_twisted.ensureDeferred
async def test_server_with_a_name_the_client_did_not_ask_for_is_refused_by_the_client(
    cluster, credentials, poll, log_contains
):
    # The metaserver's certificate names 127.0.0.1 and localhost, not this name.
    with pytest.raises(Exception) as caught:
        await connect_server(
            reactor, meta_address(cluster), credentials, server_name="meta1.example.org"
        )
    assert "meta1.example.org" in str(caught.value) or "verif" in str(caught.value).lower()
    await poll(
        lambda: log_contains(
            cluster.metaservers[0].logfile, "refused connection", "TLS handshake failed"
        ),
        what="the server logged the aborted handshake",
    )
    await still_serving(cluster, credentials)


@pytest_twisted.ensureDeferred
async def test_plain_tcp_is_refused(cluster, credentials, poll, log_contains):
    address = meta_address(cluster)
    raw = Recorder()
    await connectProtocol(TCP4ClientEndpoint(reactor, address.host, address.port), raw)
    raw.transport.write(b"\x00\x04Ping\x00\x00")  # an AMP box, unencrypted
    await raw.lost
    assert raw.received == b"" or b"\x15" in raw.received[:1]  # nothing, or a TLS alert
    await poll(
        lambda: log_contains(
            cluster.metaservers[0].logfile, "refused connection", "TLS handshake failed"
        ),
        what="refusal logged",
    )
    await still_serving(cluster, credentials)


@pytest_twisted.ensureDeferred
async def test_garbage_after_the_handshake_is_refused(cluster, credentials, poll, log_contains):
    address = meta_address(cluster)
    raw = Recorder()
    endpoint = wrapClientTLS(
        credentials.credentials.client_options(address.host),
        HostnameEndpoint(reactor, address.host, address.port),
    )
    await connectProtocol(endpoint, raw)
    raw.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
    await raw.lost
    await poll(
        lambda: log_contains(
            cluster.metaservers[0].logfile, "refused input from admin:admin", "malformed AMP frame"
        ),
        what="refusal logged",
    )
    await still_serving(cluster, credentials)


@pytest_twisted.ensureDeferred
async def test_an_empty_box_is_refused(cluster, credentials, poll, log_contains):
    address = meta_address(cluster)
    raw = Recorder()
    endpoint = wrapClientTLS(
        credentials.credentials.client_options(address.host),
        HostnameEndpoint(reactor, address.host, address.port),
    )
    await connectProtocol(endpoint, raw)
    raw.transport.write(b"\x00\x03key\x00\x05value\x00\x00")  # a box with no command
    await raw.lost
    await poll(
        lambda: log_contains(cluster.metaservers[0].logfile, "malformed AMP box"),
        what="refusal logged",
    )
    await still_serving(cluster, credentials)


# -- the same handshakes seen by a client we did not write ---------------------


def s_client(cluster, *extra: str, env: dict[str, str] | None = None) -> str:
    node = cluster.metaservers[0]
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            node.address,
            "-CAfile",
            str(cluster.directory / "ca" / "ca.crt"),
            "-verify_return_error",
            "-brief",
            *extra,
        ],
        input=b"",
        capture_output=True,
        timeout=30,
        env=env,
    )
    return (result.stdout + result.stderr).decode(errors="replace")


def admin_files(cluster) -> list[str]:
    client = cluster.directory / "client"
    return ["-cert", str(client / "admin.crt"), "-key", str(client / "admin.key")]


def test_openssl_handshake_with_a_cluster_certificate_is_tls13_and_verified(cluster):
    output = s_client(cluster, *admin_files(cluster), "-verify_ip", "127.0.0.1")
    assert "Protocol version: TLSv1.3" in output
    assert "Verification: OK" in output
    assert "CN=meta1" in output or "CN = meta1" in output


def test_openssl_tls12_is_still_accepted(cluster):
    output = s_client(cluster, *admin_files(cluster), "-tls1_2")
    assert "Protocol version: TLSv1.2" in output


def test_openssl_tls11_is_refused(cluster):
    # Lift this machine's own OpenSSL floor so that the refusal comes from the server.
    output = s_client(
        cluster,
        *admin_files(cluster),
        "-tls1_1",
        "-cipher",
        "DEFAULT:@SECLEVEL=0",
        env={"OPENSSL_CONF": "/dev/null", "PATH": "/usr/bin:/bin"},
    )
    assert "Protocol version: TLSv1.1" not in output
    assert "protocol version" in output.lower() or "unsupported protocol" in output.lower()


def test_openssl_without_a_client_certificate_is_refused(cluster):
    # -ign_eof keeps s_client reading until the server's alert arrives: with TLS 1.3
    # the client finishes its side of the handshake before the server refuses.
    output = s_client(cluster, "-ign_eof")
    assert "certificate required" in output.lower()


def test_openssl_with_a_wrong_expected_name_fails_verification(cluster):
    output = s_client(cluster, *admin_files(cluster), "-verify_hostname", "meta1.example.org")
    assert "Verification: OK" not in output
    assert "hostname mismatch" in output.lower()
