"""Identities in certificates: role and name from the subject, checked against the key usage."""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from dfs.security.ca import CertificateAuthority
from dfs.security.identity import (
    Identity,
    InvalidIdentity,
    Role,
    identity_from_certificate,
    validate_name,
)

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
ANY_USAGE = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE

# One key for all hand-made certificates: generating keys is the slow part.
_KEY = ec.generate_private_key(ec.SECP256R1())


def make_certificate(
    organization: str | None = "DFS",
    unit: str | list[str] | None = "client",
    common_name: str | None = "alice",
    usages: list[x509.ObjectIdentifier] | str | None = "by-role",
    ca: bool = False,
) -> x509.Certificate:
    """A self-signed certificate with exactly the subject and EKU a test wants."""
    attributes = []
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    units = [unit] if isinstance(unit, str) else unit or []
    attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in units]
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    name = x509.Name(attributes)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if isinstance(usages, str):
        role = units[0] if units else "client"
        usages = (
            [SERVER_AUTH, CLIENT_AUTH] if role in ("metaserver", "dataserver") else [CLIENT_AUTH]
        )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(_KEY, hashes.SHA256())


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca") / "ca")


@pytest.mark.parametrize("role", list(Role))
def test_issued_certificate_round_trips_to_its_identity(
    authority: CertificateAuthority, role: Role
) -> None:
    issued = authority.issue(role, f"{role.value}-1", ["127.0.0.1"])
    assert identity_from_certificate(issued.certificate) == Identity(role, f"{role.value}-1")
    assert issued.identity == Identity(role, f"{role.value}-1")


def test_identity_prints_as_role_colon_name() -> None:
    assert str(Identity(Role.DATASERVER, "ds1")) == "dataserver:ds1"


@pytest.mark.parametrize("role", list(Role))
def test_identity_parse_is_the_inverse_of_str(role: Role) -> None:
    identity = Identity(role, "node.7_a-b")
    assert Identity.parse(str(identity)) == identity


@pytest.mark.parametrize("text", ["ds1", "wizard:ds1", "client:", "client:bad name"])
def test_identity_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        Identity.parse(text)


def test_identity_rejects_an_invalid_name() -> None:
    with pytest.raises(ValueError, match="must not start"):
        Identity(Role.CLIENT, "-alice")


def test_server_roles_are_metaserver_and_dataserver() -> None:
    assert {role for role in Role if role.is_server} == {Role.METASERVER, Role.DATASERVER}


@pytest.mark.parametrize(
    ("unit", "usages"),
    [
        ("metaserver", [SERVER_AUTH, CLIENT_AUTH]),
        ("dataserver", [CLIENT_AUTH, SERVER_AUTH]),
        ("client", [CLIENT_AUTH]),
        ("admin", [CLIENT_AUTH]),
    ],
)
def test_hand_made_certificate_with_fitting_usage_is_accepted(
    unit: str, usages: list[x509.ObjectIdentifier]
) -> None:
    cert = make_certificate(unit=unit, common_name="n1", usages=usages)
    assert identity_from_certificate(cert) == Identity(Role(unit), "n1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unit": None}, "no OU"),
        ({"common_name": None}, "no CN"),
        ({"organization": None}, "no O"),
        ({"organization": "Evil Corp"}, "O=DFS"),
        ({"unit": "wizard"}, "unknown role 'wizard'"),
        ({"unit": ["client", "admin"]}, "more than one OU"),
        ({"common_name": "bad name"}, "contains ' '"),
        ({"common_name": ".hidden"}, "must not start"),
        ({"ca": True}, "CA certificate"),
    ],
)
def test_certificate_without_a_valid_identity_is_rejected(
    kwargs: dict[str, object], message: str
) -> None:
    cert = make_certificate(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentity, match=re.escape(message)):
        identity_from_certificate(cert)


@pytest.mark.parametrize("role", ["client", "admin"])
@pytest.mark.parametrize(
    "usages",
    [[SERVER_AUTH], [SERVER_AUTH, CLIENT_AUTH], [CLIENT_AUTH, ANY_USAGE], None, []],
    ids=["serverAuth-only", "server-and-client", "anyExtendedKeyUsage", "no-EKU", "empty-EKU"],
)
def test_client_certificate_that_could_act_as_server_is_rejected(
    role: str, usages: list[x509.ObjectIdentifier] | None
) -> None:
    cert = make_certificate(unit=role, usages=usages)
    with pytest.raises(InvalidIdentity):
        identity_from_certificate(cert)


@pytest.mark.parametrize("role", ["metaserver", "dataserver"])
@pytest.mark.parametrize(
    "usages",
    [[CLIENT_AUTH], [SERVER_AUTH], None],
    ids=["clientAuth-only", "serverAuth-only", "no-EKU"],
)
def test_server_certificate_missing_a_usage_is_rejected(
    role: str, usages: list[x509.ObjectIdentifier] | None
) -> None:
    cert = make_certificate(unit=role, common_name="ds1", usages=usages)
    with pytest.raises(InvalidIdentity):
        identity_from_certificate(cert)


def test_client_posing_as_dataserver_names_the_missing_server_usage() -> None:
    cert = make_certificate(unit="dataserver", common_name="ds1", usages=[CLIENT_AUTH])
    with pytest.raises(InvalidIdentity, match="serverAuth"):
        identity_from_certificate(cert)


# --- name validation ---------------------------------------------------------------

NAME_ALPHABET = string.ascii_letters + string.digits + "._-"
valid_names = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_letters + string.digits + "_"),
    st.text(alphabet=NAME_ALPHABET, max_size=63),
)


@given(valid_names)
def test_valid_names_are_accepted_unchanged(name: str) -> None:
    assert validate_name(name) == name


@given(st.sampled_from(".-"), st.text(alphabet=NAME_ALPHABET, max_size=63))
def test_names_starting_with_dot_or_dash_are_rejected(first: str, rest: str) -> None:
    with pytest.raises(ValueError, match="must not start"):
        validate_name(first + rest)


@given(st.text(alphabet=NAME_ALPHABET, min_size=65, max_size=200))
def test_names_longer_than_64_characters_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="at most 64"):
        validate_name(name)


@given(valid_names, st.characters().filter(lambda c: c not in NAME_ALPHABET), st.data())
def test_names_with_a_foreign_character_are_rejected(
    name: str, bad: str, data: st.DataObject
) -> None:
    position = data.draw(st.integers(min_value=0, max_value=len(name)))
    candidate = name[:position] + bad + name[position:]
    with pytest.raises(ValueError):
        validate_name(candidate)


@given(st.text(max_size=80))
def test_validate_name_agrees_with_the_documented_rule(name: str) -> None:
    rule = (
        1 <= len(name) <= 64
        and all(c in NAME_ALPHABET for c in name)
        and not name.startswith((".", "-"))
    )
    if rule:
        assert validate_name(name) == name
    else:
        with pytest.raises(ValueError):
            validate_name(name)


def test_empty_name_is_rejected_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        validate_name("")


def test_non_string_name_is_rejected() -> None:
    with pytest.raises(TypeError):
        validate_name(42)  # type: ignore[arg-type]
