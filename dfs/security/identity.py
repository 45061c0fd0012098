"""Who is calling: the role and name a DFS certificate carries.

Every certificate the cluster CA issues names one identity in its subject:
``O=DFS, OU=<role>, CN=<name>``. After the TLS handshake has verified the peer's
chain against the cluster CA, a responder turns the peer certificate into an
:class:`Identity` with :func:`identity_from_certificate` and checks requests
against it.

The subject alone is not trusted to say what a certificate may do: the
ExtendedKeyUsage must fit the role too. Server roles (metaserver, dataserver)
carry serverAuth and clientAuth because they also dial each other; client and
admin certificates carry clientAuth only, so a client certificate can never
serve as, or pose as, a metaserver or dataserver even if its subject were
crafted to say so.

This module is pure: no files, no sockets. Twisted hands out pyOpenSSL
certificates; convert them with ``X509.to_cryptography()`` first.
"""

from __future__ import annotations

import enum
import re

import attrs
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The organisation every DFS identity certificate names in its subject.
ORGANIZATION = "DFS"

_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_NAME_MAX = 64


class Role(enum.Enum):
    """What a certificate holder is in the cluster."""

    METASERVER = "metaserver"
    DATASERVER = "dataserver"
    CLIENT = "client"
    ADMIN = "admin"

    @property
    def is_server(self) -> bool:
        """True for roles that accept connections (and so need serverAuth)."""
        return self in (Role.METASERVER, Role.DATASERVER)


_ROLES = ", ".join(role.value for role in Role)


class InvalidIdentity(Exception):
    """A certificate that does not carry a usable DFS identity."""


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid identity name, else raise ValueError.

    Names become file names (``<name>.crt``), log fields and parts of access
    tokens, so they are kept to 1-64 characters of ``[A-Za-z0-9._-]`` and may
    not start with '.' (hidden files, '..') or '-' (looks like an option).
    """
    if not isinstance(name, str):
        raise TypeError(f"identity name must be a string, not {type(name).__name__}")
    if not name:
        raise ValueError("identity name must not be empty")
    if len(name) > _NAME_MAX:
        raise ValueError(f"identity name {name[:20]!r}... is {len(name)} characters; at most 64")
    if name[0] in ".-":
        raise ValueError(f"identity name {name!r} must not start with {name[0]!r}")
    if _NAME_PATTERN.fullmatch(name) is None:
        bad = next(c for c in name if not (c.isascii() and (c.isalnum() or c in "._-")))
        raise ValueError(
            f"identity name {name!r} contains {bad!r}; use only letters, digits, '.', '_' and '-'"
        )
    return name


def _check_name(_instance: object, _attribute: object, value: str) -> None:
    validate_name(value)


@attrs.frozen
class Identity:
    """A caller as the cluster knows it: a role and a name, e.g. ``dataserver:ds1``."""

    role: Role = attrs.field(validator=attrs.validators.instance_of(Role))
    name: str = attrs.field(validator=_check_name)

    def __str__(self) -> str:
        return f"{self.role.value}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> Identity:
        """Parse the ``role:name`` form that :meth:`__str__` produces (ValueError if bad)."""
        role_text, sep, name = text.partition(":")
        if not sep:
            raise ValueError(f"identity {text!r} is not of the form role:name")
        try:
            role = Role(role_text)
        except ValueError:
            raise ValueError(
                f"identity {text!r} has unknown role {role_text!r}; expected one of {_ROLES}"
            ) from None
        return cls(role, validate_name(name))


def _single_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    subject = cert.subject.rfc4514_string()
    if not values:
        raise InvalidIdentity(f"certificate {subject!r} has no {label} in its subject")
    if len(values) > 1:
        # Two OUs or CNs would make the identity depend on which one a reader picks.
        raise InvalidIdentity(f"certificate {subject!r} has more than one {label}")
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _check_usage(cert: x509.Certificate, identity: Identity) -> None:
    subject = cert.subject.rfc4514_string()
    try:
        extensions = cert.extensions
    except ValueError as error:
        # cryptography parses extensions lazily; a malformed one (an empty EKU, say)
        # must not surface as a bare ValueError in a responder.
        raise InvalidIdentity(
            f"certificate {subject!r} has malformed extensions: {error}"
        ) from None
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise InvalidIdentity(f"certificate {subject!r} is a CA certificate, not an identity")
    try:
        usages = set(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        # No EKU means "any use" to TLS libraries: that would let a client pose as a server.
        raise InvalidIdentity(
            f"certificate {subject!r} has no ExtendedKeyUsage; cannot tell what it may do"
        ) from None
    server = ExtendedKeyUsageOID.SERVER_AUTH in usages
    client = ExtendedKeyUsageOID.CLIENT_AUTH in usages
    if identity.role.is_server:
        if not (server and client):
            raise InvalidIdentity(
                f"{identity.role.value} certificate {subject!r} must allow both serverAuth "
                "and clientAuth (servers also dial each other)"
            )
    else:
        if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages or server:
            raise InvalidIdentity(
                f"{identity.role.value} certificate {subject!r} allows serverAuth; "
                "a client or admin certificate must be clientAuth only"
            )
        if not client:
            raise InvalidIdentity(
                f"{identity.role.value} certificate {subject!r} does not allow clientAuth"
            )


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    """Read the identity a (chain-verified) certificate carries.

    Raises :class:`InvalidIdentity` if the subject is not ``O=DFS, OU=<role>,
    CN=<name>`` with a known role and a valid name, or if the certificate's
    ExtendedKeyUsage does not fit the role. It does not check the signature or
    the validity period: the TLS handshake already did.
    """
    try:
        subject = cert.subject.rfc4514_string()
    except ValueError as error:
        raise InvalidIdentity(f"certificate has a malformed subject: {error}") from None
    organization = _single_attribute(cert, NameOID.ORGANIZATION_NAME, "O (organisation)")
    if organization != ORGANIZATION:
        raise InvalidIdentity(
            f"certificate {subject!r} has O={organization!r}; DFS certificates have O=DFS"
        )
    role_text = _single_attribute(cert, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (role)")
    try:
        role = Role(role_text)
    except ValueError:
        raise InvalidIdentity(
            f"certificate {subject!r} has unknown role {role_text!r}; expected one of {_ROLES}"
        ) from None
    name = _single_attribute(cert, NameOID.COMMON_NAME, "CN (name)")
    try:
        identity = Identity(role, name)
    except ValueError as error:
        raise InvalidIdentity(f"certificate {subject!r}: {error}") from None
    _check_usage(cert, identity)
    return identity
