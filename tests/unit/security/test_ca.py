"""The cluster CA: files on disk, the certificates it issues, and what verifies against what."""

from __future__ import annotations

import ipaddress
import os
import shutil
import ssl
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dfs.security.ca import (
    CLOCK_SKEW,
    CAError,
    CAFileExistsError,
    CertificateAuthority,
    IssuedCertificate,
    load_certificate,
)
from dfs.security.identity import Identity, Role, identity_from_certificate

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


def extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def alt_names(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(extension(cert, x509.SubjectAlternativeName).value)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("cluster") / "ca")


@pytest.fixture(scope="module")
def foreign_authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    # Same common name on purpose: only the key tells the two CAs apart.
    return CertificateAuthority.create(tmp_path_factory.mktemp("foreign") / "ca")


# --- creating and loading the CA ------------------------------------------------------


def test_create_writes_key_0600_certificate_0644_in_a_new_0700_directory(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "ca"
    authority = CertificateAuthority.create(directory)
    assert authority.directory == directory
    assert authority.certificate_path == directory / "ca.crt"
    assert mode_of(directory / "ca.key") == 0o600
    assert mode_of(directory / "ca.crt") == 0o644
    assert mode_of(directory) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["ca.crt", "ca.key", "crl.pem"]


def test_create_makes_a_self_signed_ca_certificate(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path, common_name="Test CA", days=30)
    cert = load_certificate(tmp_path / "ca.crt")
    assert cert == authority.certificate
    assert attribute(cert, NameOID.COMMON_NAME) == ["Test CA"]
    assert attribute(cert, NameOID.ORGANIZATION_NAME) == ["DFS"]
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca and constraints.value.path_length == 0
    usage = extension(cert, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert extension(cert, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    )
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(days=30)


def test_ca_key_is_unencrypted_pem_matching_the_certificate(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path)
    key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), password=None)
    assert key.public_key() == authority.certificate.public_key()


def test_second_init_refuses_and_leaves_the_first_ca_intact(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CAFileExistsError, match=r"ca\.crt already exists") as caught:
        CertificateAuthority.create(tmp_path)
    assert caught.value.path == tmp_path / "ca.crt"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_init_refuses_when_only_the_key_is_left_over(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_text("old key")
    with pytest.raises(CAFileExistsError, match=r"ca\.key"):
        CertificateAuthority.create(tmp_path)
    assert (tmp_path / "ca.key").read_text() == "old key"
    assert not (tmp_path / "ca.crt").exists()


@pytest.mark.parametrize("days", [0, -1])
def test_create_rejects_a_validity_of_less_than_a_day(tmp_path: Path, days: int) -> None:
    with pytest.raises(CAError, match="at least 1"):
        CertificateAuthority.create(tmp_path, days=days)
    assert list(tmp_path.iterdir()) == []


def test_load_returns_the_same_ca(tmp_path: Path) -> None:
    created = CertificateAuthority.create(tmp_path)
    loaded = CertificateAuthority.load(tmp_path)
    assert loaded.certificate == created.certificate
    assert loaded.directory == tmp_path
    issued = loaded.issue(Role.CLIENT, "alice", out_dir=tmp_path / "out")
    issued.certificate.verify_directly_issued_by(created.certificate)


def test_load_of_a_missing_ca_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="dfs ca init"):
        CertificateAuthority.load(tmp_path / "nowhere")


def test_load_without_the_key_fails(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(CAError, match=r"ca\.key not found"):
        CertificateAuthority.load(tmp_path)


def test_load_refuses_a_leaf_certificate_as_ca(
    tmp_path: Path, authority: CertificateAuthority
) -> None:
    issued = authority.issue(Role.ADMIN, "root", out_dir=tmp_path / "leaf")
    shutil.copy(issued.certificate_path, tmp_path / "ca.crt")
    shutil.copy(issued.key_path, tmp_path / "ca.key")
    with pytest.raises(CAError, match="not a CA certificate"):
        CertificateAuthority.load(tmp_path)


def test_load_refuses_a_key_that_belongs_to_another_ca(
    tmp_path: Path, foreign_authority: CertificateAuthority
) -> None:
    CertificateAuthority.create(tmp_path)
    shutil.copy(foreign_authority.directory / "ca.key", tmp_path / "ca.key")
    with pytest.raises(CAError, match="does not belong"):
        CertificateAuthority.load(tmp_path)


@pytest.mark.parametrize("broken", ["ca.crt", "ca.key"])
def test_load_reports_garbage_files(tmp_path: Path, broken: str) -> None:
    CertificateAuthority.create(tmp_path)
    (tmp_path / broken).write_text("-----BEGIN GARBAGE-----\nnope\n")
    with pytest.raises(CAError, match=broken):
        CertificateAuthority.load(tmp_path)


def test_load_certificate_reads_der_too(authority: CertificateAuthority, tmp_path: Path) -> None:
    der = tmp_path / "ca.der"
    der.write_bytes(authority.certificate.public_bytes(serialization.Encoding.DER))
    assert load_certificate(der) == authority.certificate


# --- issuing ----------------------------------------------------------------------------

EXPECTED_USAGES = {
    Role.METASERVER: {SERVER_AUTH, CLIENT_AUTH},
    Role.DATASERVER: {SERVER_AUTH, CLIENT_AUTH},
    Role.CLIENT: {CLIENT_AUTH},
    Role.ADMIN: {CLIENT_AUTH},
}


@pytest.mark.parametrize("role", list(Role))
def test_issue_writes_a_signed_certificate_carrying_role_and_name(
    authority: CertificateAuthority, tmp_path: Path, role: Role
) -> None:
    issued = authority.issue(role, "node-1", ["10.0.0.5", "node-1.example.com"], out_dir=tmp_path)
    assert issued == IssuedCertificate(
        tmp_path / "node-1.crt",
        tmp_path / "node-1.key",
        Identity(role, "node-1"),
        issued.certificate,
    )
    cert = load_certificate(issued.certificate_path)
    assert cert == issued.certificate
    cert.verify_directly_issued_by(authority.certificate)
    assert attribute(cert, NameOID.ORGANIZATION_NAME) == ["DFS"]
    assert attribute(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == [role.value]
    assert attribute(cert, NameOID.COMMON_NAME) == ["node-1"]
    assert cert.issuer == authority.certificate.subject
    assert set(extension(cert, x509.ExtendedKeyUsage).value) == EXPECTED_USAGES[role]
    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    assert extension(cert, x509.KeyUsage).value.digital_signature
    ca_key_id = extension(authority.certificate, x509.SubjectKeyIdentifier).value.digest
    assert extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_key_id
    assert alt_names(cert) == [
        x509.IPAddress(ipaddress.ip_address("10.0.0.5")),
        x509.DNSName("node-1.example.com"),
    ]
    assert identity_from_certificate(cert) == Identity(role, "node-1")
    assert mode_of(issued.key_path) == 0o600
    assert mode_of(issued.certificate_path) == 0o644
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()


def test_issue_writes_into_the_ca_directory_by_default(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path)
    issued = authority.issue("dataserver", "ds1", ["127.0.0.1"])
    assert issued.certificate_path == tmp_path / "ds1.crt"
    assert issued.key_path == tmp_path / "ds1.key"
    assert issued.identity == Identity(Role.DATASERVER, "ds1")


def test_issue_creates_a_missing_output_directory_0700(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    out = tmp_path / "node" / "tls"
    authority.issue(Role.CLIENT, "alice", out_dir=out)
    assert mode_of(out) == 0o700
    assert sorted(p.name for p in out.iterdir()) == ["alice.crt", "alice.key"]


def test_ipv4_ipv6_and_dns_hosts_become_typed_alt_names_without_duplicates(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    hosts = ["127.0.0.1", "::1", "localhost", "*.dfs.example", "127.0.0.1", "2001:db8::7"]
    cert = authority.issue(Role.METASERVER, "ms1", hosts, out_dir=tmp_path).certificate
    assert alt_names(cert) == [
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv6Address("::1")),
        x509.DNSName("localhost"),
        x509.DNSName("*.dfs.example"),
        x509.IPAddress(ipaddress.IPv6Address("2001:db8::7")),
    ]


def test_a_single_host_string_is_one_host(authority: CertificateAuthority, tmp_path: Path) -> None:
    cert = authority.issue(Role.DATASERVER, "ds1", "ds1.local", out_dir=tmp_path).certificate  # type: ignore[arg-type]
    assert alt_names(cert) == [x509.DNSName("ds1.local")]


@pytest.mark.parametrize("role", [Role.DATASERVER, Role.CLIENT])
def test_no_hosts_means_no_alt_name_extension(
    authority: CertificateAuthority, tmp_path: Path, role: Role
) -> None:
    cert = authority.issue(role, "bare", out_dir=tmp_path).certificate
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("", "must not be empty"),
        ("ds 1", "whitespace"),
        (" ds1", "whitespace"),
        ("ds1\n", "whitespace"),
        ("-ds1.example", "valid DNS name"),
        ("ds_1.example", "valid DNS name"),
        ("ds1..example", "valid DNS name"),
        ("ds1.example.", "valid DNS name"),
        ("a" * 64 + ".example", "valid DNS name"),
        ("256.1.1.1", "looks like an IP address"),
        ("[::1]", "without brackets"),
        ("fe80::1%eth0", "zone index"),
        ("bücher.example", "IDNA"),
        ("x" * 254, "253"),
    ],
)
def test_bad_hosts_are_rejected_with_a_clear_error(
    authority: CertificateAuthority, tmp_path: Path, host: str, message: str
) -> None:
    with pytest.raises(CAError, match=message):
        authority.issue(Role.DATASERVER, "ds1", ["127.0.0.1", host], out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["", ".ds1", "-ds1", "ds/1", "../ds1", "x" * 65])
def test_invalid_names_are_rejected_before_anything_is_written(
    authority: CertificateAuthority, tmp_path: Path, name: str
) -> None:
    with pytest.raises(CAError):
        authority.issue(Role.CLIENT, name, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_role_is_rejected(authority: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(CAError, match="unknown role 'wizard'"):
        authority.issue("wizard", "x", out_dir=tmp_path)  # type: ignore[arg-type]


def test_issue_refuses_to_overwrite_and_leaves_the_files_alone(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    authority.issue(Role.DATASERVER, "ds1", ["127.0.0.1"], out_dir=tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CAFileExistsError, match=r"ds1\.crt already exists") as caught:
        authority.issue(Role.DATASERVER, "ds1", ["127.0.0.2"], out_dir=tmp_path)
    assert caught.value.path == tmp_path / "ds1.crt"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_issue_refuses_when_only_the_key_exists_and_writes_nothing(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    (tmp_path / "ds1.key").write_text("someone's key")
    with pytest.raises(CAFileExistsError, match=r"ds1\.key"):
        authority.issue(Role.DATASERVER, "ds1", out_dir=tmp_path)
    assert (tmp_path / "ds1.key").read_text() == "someone's key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds1.key"]


def test_issue_with_overwrite_replaces_both_files(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    first = authority.issue(Role.DATASERVER, "ds1", ["127.0.0.1"], out_dir=tmp_path)
    second = authority.issue(
        Role.DATASERVER, "ds1", ["127.0.0.2"], out_dir=tmp_path, overwrite=True
    )
    cert = load_certificate(tmp_path / "ds1.crt")
    assert cert == second.certificate
    assert cert.serial_number != first.certificate.serial_number
    key = serialization.load_pem_private_key((tmp_path / "ds1.key").read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    assert mode_of(tmp_path / "ds1.key") == 0o600
    assert mode_of(tmp_path / "ds1.crt") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds1.crt", "ds1.key"]


def test_a_leaf_named_ca_can_never_replace_the_ca_files(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path)
    key_before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(CAError, match="CA's own files"):
        authority.issue(Role.ADMIN, "ca", overwrite=True)
    assert (tmp_path / "ca.key").read_bytes() == key_before
    # Elsewhere the name is fine.
    authority.issue(Role.ADMIN, "ca", out_dir=tmp_path / "elsewhere")


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_file_modes_do_not_depend_on_the_umask(
    authority: CertificateAuthority, tmp_path: Path, umask: int
) -> None:
    old = os.umask(umask)
    try:
        issued = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path)
    finally:
        os.umask(old)
    assert mode_of(issued.key_path) == 0o600
    assert mode_of(issued.certificate_path) == 0o644


@pytest.fixture
def recorded_opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int, int]]]:
    calls: list[tuple[str, int, int]] = []
    real_open = os.open

    def recording_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        calls.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kw)

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("a key file must get its mode at creation, not by chmod")

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    yield calls


def test_private_keys_are_created_exclusively_with_mode_0600(
    authority: CertificateAuthority, tmp_path: Path, recorded_opens: list[tuple[str, int, int]]
) -> None:
    authority.issue(Role.CLIENT, "alice", out_dir=tmp_path)
    CertificateAuthority.create(tmp_path / "ca")
    key_opens = [call for call in recorded_opens if ".key." in Path(call[0]).name]
    assert len(key_opens) == 2
    for _path, flags, mode in key_opens:
        assert flags & os.O_CREAT and flags & os.O_EXCL
        assert mode == 0o600
    # Nothing temporary is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.crt", "alice.key", "ca"]


# --- validity ---------------------------------------------------------------------------


def test_default_validity_starts_slightly_in_the_past_and_lasts_825_days(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    cert = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path).certificate
    after = datetime.now(UTC)
    assert before - CLOCK_SKEW - timedelta(seconds=1) <= cert.not_valid_before_utc
    assert cert.not_valid_before_utc <= after - CLOCK_SKEW
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=825)


def test_days_sets_the_lifetime(authority: CertificateAuthority, tmp_path: Path) -> None:
    cert = authority.issue(Role.CLIENT, "alice", days=1, out_dir=tmp_path).certificate
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=1)


def test_explicit_validity_window_is_used_exactly(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    start = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    end = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    cert = authority.issue(
        Role.CLIENT, "future", not_before=start, not_after=end, out_dir=tmp_path
    ).certificate
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)


def test_not_after_in_the_past_gives_an_expired_certificate(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    expired_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    issued = authority.issue(
        Role.DATASERVER, "old", ["127.0.0.1"], not_after=expired_at, out_dir=tmp_path
    )
    cert = issued.certificate
    assert cert.not_valid_after_utc == expired_at
    assert cert.not_valid_before_utc < cert.not_valid_after_utc < datetime.now(UTC)
    # Still correctly signed: only the dates make it unusable.
    cert.verify_directly_issued_by(authority.certificate)


def test_naive_datetimes_are_taken_as_utc(authority: CertificateAuthority, tmp_path: Path) -> None:
    cert = authority.issue(
        Role.CLIENT,
        "naive",
        not_before=datetime(2020, 1, 1),
        not_after=datetime(2020, 1, 2),
        out_dir=tmp_path,
    ).certificate
    assert cert.not_valid_before_utc == datetime(2020, 1, 1, tzinfo=UTC)


def test_window_that_ends_before_it_starts_is_rejected(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(CAError, match="before it starts"):
        authority.issue(
            Role.CLIENT, "x", not_before=start, not_after=start - timedelta(1), out_dir=tmp_path
        )


@pytest.mark.parametrize("days", [0, -5, 10**9])
def test_unusable_day_counts_are_rejected(
    authority: CertificateAuthority, tmp_path: Path, days: int
) -> None:
    with pytest.raises(CAError):
        authority.issue(Role.CLIENT, "x", days=days, out_dir=tmp_path)


# --- trust between CAs ------------------------------------------------------------------


def test_certificate_of_a_foreign_ca_does_not_verify_against_ours(
    authority: CertificateAuthority, foreign_authority: CertificateAuthority, tmp_path: Path
) -> None:
    foreign = foreign_authority.issue(Role.METASERVER, "ms1", ["127.0.0.1"], out_dir=tmp_path)
    foreign.certificate.verify_directly_issued_by(foreign_authority.certificate)
    with pytest.raises(InvalidSignature):
        foreign.certificate.verify_directly_issued_by(authority.certificate)


def test_certificate_of_a_differently_named_ca_does_not_verify(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.create(tmp_path / "other", common_name="Other CA", days=1)
    cert = other.issue(Role.CLIENT, "mallory", out_dir=tmp_path).certificate
    with pytest.raises(ValueError):
        cert.verify_directly_issued_by(authority.certificate)


# --- real TLS and the openssl binary agree ---------------------------------------------


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> ssl.SSLObject:
    """A TLS handshake over memory BIOs; returns the server side (raises on failure)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for label, side, out, peer_in in (
            ("client", client_side, c_out, s_in),
            ("server", server_side, s_out, c_in),
        ):
            if not done[label]:
                try:
                    side.do_handshake()
                    done[label] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return server_side
    raise AssertionError("handshake did not finish")


def _contexts(
    ca: CertificateAuthority, server: IssuedCertificate, client: IssuedCertificate
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.minimum_version = ssl.TLSVersion.TLSv1_3
    server_context.load_cert_chain(server.certificate_path, server.key_path)
    server_context.load_verify_locations(ca.certificate_path)
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_cert_chain(client.certificate_path, client.key_path)
    client_context.load_verify_locations(ca.certificate_path)
    return server_context, client_context


def test_mutual_tls_handshake_works_and_server_learns_the_caller(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    server = authority.issue(Role.DATASERVER, "ds1", ["127.0.0.1"], out_dir=tmp_path)
    client = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path)
    server_side = _handshake(*_contexts(authority, server, client), hostname="127.0.0.1")
    der = server_side.getpeercert(binary_form=True)
    assert der is not None
    peer = x509.load_der_x509_certificate(der)
    assert identity_from_certificate(peer) == Identity(Role.CLIENT, "alice")


def test_a_client_certificate_cannot_serve_tls(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    # Even with a matching subjectAltName, a clientAuth-only certificate is refused as a server.
    impostor = authority.issue(Role.CLIENT, "ds1", ["127.0.0.1"], out_dir=tmp_path / "impostor")
    client = authority.issue(Role.ADMIN, "root", out_dir=tmp_path)
    with pytest.raises(ssl.SSLError, match="unsuitable certificate purpose"):
        _handshake(*_contexts(authority, impostor, client), hostname="127.0.0.1")


requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, timeout=30
    )


@requires_openssl
@pytest.mark.parametrize("role", list(Role))
def test_openssl_verifies_issued_certificates(
    authority: CertificateAuthority, tmp_path: Path, role: Role
) -> None:
    issued = authority.issue(role, "n1", ["127.0.0.1", "n1.example.com"], out_dir=tmp_path)
    result = _openssl("verify", "-CAfile", authority.certificate_path, issued.certificate_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{issued.certificate_path}: OK"
    server_check = _openssl(
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        authority.certificate_path,
        issued.certificate_path,
    )
    assert (server_check.returncode == 0) == role.is_server
    client_check = _openssl(
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        authority.certificate_path,
        issued.certificate_path,
    )
    assert client_check.returncode == 0, client_check.stderr


@requires_openssl
def test_openssl_shows_subject_and_alt_names(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    issued = authority.issue(
        Role.DATASERVER, "ds1", ["127.0.0.1", "ds1.example.com"], out_dir=tmp_path
    )
    text = _openssl("x509", "-noout", "-text", "-in", issued.certificate_path).stdout
    assert "Subject: O = DFS, OU = dataserver, CN = ds1" in text
    assert "IP Address:127.0.0.1, DNS:ds1.example.com" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    key_check = _openssl("pkey", "-in", issued.key_path, "-noout", "-check")
    assert key_check.returncode == 0, key_check.stderr


@requires_openssl
def test_openssl_rejects_expired_and_foreign_certificates(
    authority: CertificateAuthority, foreign_authority: CertificateAuthority, tmp_path: Path
) -> None:
    expired = authority.issue(
        Role.CLIENT, "old", not_after=datetime.now(UTC) - timedelta(hours=1), out_dir=tmp_path
    )
    result = _openssl("verify", "-CAfile", authority.certificate_path, expired.certificate_path)
    assert result.returncode != 0
    assert "expired" in result.stdout + result.stderr
    foreign = foreign_authority.issue(Role.CLIENT, "eve", out_dir=tmp_path)
    result = _openssl("verify", "-CAfile", authority.certificate_path, foreign.certificate_path)
    assert result.returncode != 0
    # The key identifiers differ, so openssl does not even take our CA for the issuer.
    assert "unable to get local issuer certificate" in result.stdout + result.stderr
