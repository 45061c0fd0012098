"""The CRL: what the CA writes when it revokes, and what a server accepts as a list."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dfs.security.ca import CAError, CertificateAuthority
from dfs.security.identity import Identity, Role
from dfs.security.revocation import CRLError, FileState, RevocationList, parse_crl


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


def crl_of(authority: CertificateAuthority) -> RevocationList:
    return parse_crl(authority.crl_path.read_bytes(), authority.certificate)


# -- the pure part -----------------------------------------------------------------


def test_a_new_ca_has_an_empty_crl_it_signed(authority):
    revocations = crl_of(authority)
    assert len(revocations) == 0
    assert revocations.issuer == authority.certificate.subject
    assert revocations.next_update is not None
    assert not revocations.is_outdated(datetime.now(UTC))
    assert stat.S_IMODE(os.stat(authority.crl_path).st_mode) == 0o644


def test_revoked_certificate_is_refused_and_others_are_not(authority, tmp_path):
    alice = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path)
    bob = authority.issue(Role.CLIENT, "bob", out_dir=tmp_path)
    authority.revoke("alice")
    revocations = crl_of(authority)
    assert revocations.is_revoked(alice.certificate)
    assert not revocations.is_revoked(bob.certificate)
    refusal = revocations.refusal(alice.certificate)
    assert refusal is not None
    assert refusal.startswith("certificate revoked (serial 0x")
    assert "CN=alice" in refusal
    assert revocations.refusal(bob.certificate) is None


def test_der_is_accepted_too(authority, tmp_path):
    alice = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path)
    authority.revoke("alice")
    pem = authority.crl_path.read_bytes()
    der = x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)
    assert parse_crl(der, authority.certificate).is_revoked(alice.certificate)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"not a crl at all", "not a valid CRL"),
        (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "not a valid CRL"),
    ],
)
def test_garbage_is_not_a_crl(authority, data, message):
    with pytest.raises(CRLError, match=message):
        parse_crl(data, authority.certificate)


def test_a_crl_of_another_ca_is_refused(authority, tmp_path):
    other = CertificateAuthority.create(tmp_path / "other", common_name="Another CA")
    with pytest.raises(CRLError, match="not by the cluster CA"):
        parse_crl(other.crl_path.read_bytes(), authority.certificate)


def test_a_crl_signed_by_an_impostor_with_the_same_name_is_refused(authority, tmp_path):
    # Same subject as the cluster CA: only the signature tells them apart.
    impostor = CertificateAuthority.create(tmp_path / "impostor")
    assert impostor.certificate.subject == authority.certificate.subject
    with pytest.raises(CRLError, match="signature does not verify"):
        parse_crl(impostor.crl_path.read_bytes(), authority.certificate)


def test_a_list_past_its_next_update_is_outdated(authority):
    revocations = crl_of(authority)
    assert revocations.next_update is not None
    assert revocations.is_outdated(revocations.next_update + timedelta(seconds=1))


def test_file_state_compares_content_not_times():
    first = FileState.of(1, b"list")
    assert first.same_content(FileState.of(2, b"list"))
    assert not first.same_content(FileState.of(1, b"List"))
    assert not first.same_content(None)


# -- the CA: revoking by name --------------------------------------------------------


def test_every_issued_certificate_is_recorded_wherever_it_was_written(authority, tmp_path):
    in_ca = authority.issue(Role.DATASERVER, "ds1", ["127.0.0.1"])
    elsewhere = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path / "alice")
    serials = {c.serial_number for c in authority.issued()}
    assert serials == {in_ca.certificate.serial_number, elsewhere.certificate.serial_number}


def test_revoke_by_name_then_again_changes_nothing(authority, tmp_path):
    alice = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path)
    first = authority.revoke("alice")
    assert [c.serial_number for c in first.revoked] == [alice.certificate.serial_number]
    assert first.already == () and first.total == 1
    data = authority.crl_path.read_bytes()
    second = authority.revoke("alice")
    assert second.revoked == ()
    assert [c.serial_number for c in second.already] == [alice.certificate.serial_number]
    assert authority.crl_path.read_bytes() == data  # not even signed again
    [entry] = authority.revoked()
    assert entry.serial == alice.certificate.serial_number
    assert entry.identity == Identity(Role.CLIENT, "alice")


def test_revoking_a_name_revokes_every_certificate_of_it_and_keeps_earlier_ones(
    authority, tmp_path
):
    old = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path / "old")
    new = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path / "new")
    bob = authority.issue(Role.CLIENT, "bob", out_dir=tmp_path)
    authority.revoke("bob")
    authority.revoke("alice")
    revocations = crl_of(authority)
    assert revocations.serials == {
        old.certificate.serial_number,
        new.certificate.serial_number,
        bob.certificate.serial_number,
    }


def test_unknown_name_is_a_clear_error(authority):
    with pytest.raises(CAError, match="no record of a certificate issued to 'nobody'"):
        authority.revoke("nobody")
    with pytest.raises(CAError, match="must not start"):
        authority.revoke("-rf")
    with pytest.raises(CAError, match="unknown role"):
        authority.revoke("alice", "king")


def test_a_name_in_two_roles_needs_the_role(authority, tmp_path):
    client = authority.issue(Role.CLIENT, "ds1", out_dir=tmp_path / "client")
    server = authority.issue(Role.DATASERVER, "ds1", ["127.0.0.1"], out_dir=tmp_path / "server")
    with pytest.raises(CAError, match="say which with --role"):
        authority.revoke("ds1")
    with pytest.raises(CAError, match="as admin"):
        authority.revoke("ds1", "admin")
    result = authority.revoke("ds1", Role.CLIENT)
    assert [c.serial_number for c in result.revoked] == [client.certificate.serial_number]
    assert not crl_of(authority).is_revoked(server.certificate)


def test_revoke_a_certificate_file_of_this_ca_only(authority, tmp_path):
    other = CertificateAuthority.create(tmp_path / "other", common_name="Another CA")
    foreign = other.issue(Role.CLIENT, "eve", out_dir=tmp_path / "eve")
    with pytest.raises(CAError, match="not issued by this CA"):
        authority.revoke_certificate(foreign.certificate)
    with pytest.raises(CAError, match="CA certificate"):
        authority.revoke_certificate(authority.certificate)
    mine = authority.issue(Role.CLIENT, "carol", out_dir=tmp_path / "carol")
    authority.revoke_certificate(mine.certificate)
    assert crl_of(authority).is_revoked(mine.certificate)


def test_a_damaged_crl_is_never_silently_replaced(authority, tmp_path):
    authority.issue(Role.CLIENT, "alice", out_dir=tmp_path)
    authority.crl_path.write_bytes(b"garbage")
    with pytest.raises(CAError, match="unusable"):
        authority.revoke("alice")
    assert authority.crl_path.read_bytes() == b"garbage"


def test_renewing_the_crl_keeps_its_entries_and_moves_next_update(authority, tmp_path):
    alice = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path)
    authority.revoke("alice")
    before = crl_of(authority)
    authority.renew_crl(days=800)
    after = crl_of(authority)
    assert after.serials == before.serials == {alice.certificate.serial_number}
    assert after.next_update is not None and before.next_update is not None
    assert after.next_update > before.next_update
    assert (after.number or 0) > (before.number or 0)


def test_a_loaded_ca_revokes_too(authority, tmp_path):
    alice = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path)
    CertificateAuthority.load(authority.directory).revoke("alice")
    assert crl_of(authority).is_revoked(alice.certificate)
