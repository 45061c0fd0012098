"""The cluster certificate authority: one CA per cluster, a certificate per node and user.

``CertificateAuthority.create(D)`` makes ``D/ca.crt`` and ``D/ca.key``;
``CertificateAuthority.load(D).issue(role, name, hosts)`` makes ``<name>.crt`` and
``<name>.key`` carrying the identity (see :mod:`dfs.security.identity`) that
servers read from the peer certificate on every connection.

Files on disk:

* Private keys are PEM (PKCS#8) and **unencrypted**, so daemons start unattended;
  they are protected by their mode alone. They are created with mode 0600 from the
  first byte (never chmod-ed afterwards, so there is no moment when another user
  could open them) and moved into place atomically, so a crash never leaves half a
  key behind.
* Certificates are PEM with mode 0644: they are public.
* An existing file is never replaced unless the caller asks (``overwrite=True``,
  ``dfs ca issue --force``); the refusal is atomic too (a hard link, not a
  check-then-write race).
* ``D/issued/<serial>.pem`` keeps a copy of every certificate the CA signed,
  wherever its files were written: revocation works by name from that index, and
  an operator can see serial numbers (``dfs ca list``).
* ``D/crl.pem`` is the CA's certificate revocation list, signed by the CA key and
  replaced atomically by ``revoke``; servers name it in security_config.json.

Keys are EC P-256: small, and fast to handshake with, which matters because
clients open many short TLS connections to dataservers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dfs.security.identity import (
    ORGANIZATION,
    Identity,
    InvalidIdentity,
    Role,
    identity_from_certificate,
    validate_name,
)
from dfs.security.revocation import CRLError, parse_crl

__all__ = [
    "CAError",
    "CAFileExistsError",
    "CertificateAuthority",
    "IssuedCertificate",
    "Revocation",
    "RevokedCertificate",
    "load_certificate",
]

#: Backdating of ``not_before`` so a freshly issued certificate is already valid on
#: a peer whose clock runs a little behind ours.
CLOCK_SKEW = timedelta(minutes=5)

CA_CERTIFICATE_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
CRL_NAME = "crl.pem"
ISSUED_DIRECTORY = "issued"
_LOCK_NAME = ".lock"

#: How long a CRL stays current: servers warn once its next update is past, and
#: ``dfs ca crl --renew`` (or any revocation) signs a fresh one.
CRL_DAYS = 365

_KEY_MODE = 0o600
_CERTIFICATE_MODE = 0o644
_DIRECTORY_MODE = 0o700

_SigningKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
_SIGNING_KEY_TYPES = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class CAError(Exception):
    """A CA operation failed for a reason the user can fix; the message is one line."""


class CAFileExistsError(CAError):
    """A file the operation would write already exists and overwriting was not asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists; refusing to overwrite it")
        self.path = path


@attrs.frozen
class IssuedCertificate:
    """What :meth:`CertificateAuthority.issue` wrote."""

    certificate_path: Path
    key_path: Path
    identity: Identity
    certificate: x509.Certificate = attrs.field(repr=False)


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Read one certificate (PEM, or DER) from ``path``; CAError if that is not possible."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CAError(f"{path} not found") from None
    except OSError as error:
        raise CAError(f"cannot read {path}: {error.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CAError(f"{path} does not contain a valid certificate") from None


@attrs.frozen
class RevokedCertificate:
    """One entry of the CRL, with the identity the index knows for its serial."""

    serial: int
    revoked_at: datetime
    identity: Identity | None


@attrs.frozen
class Revocation:
    """What :meth:`CertificateAuthority.revoke` did."""

    #: Certificates revoked now, and those the CRL listed already.
    revoked: tuple[x509.Certificate, ...]
    already: tuple[x509.Certificate, ...]
    crl_path: Path
    #: Entries in the CRL written.
    total: int


@attrs.frozen
class CertificateAuthority:
    """A cluster CA kept in a directory as ``ca.crt`` and ``ca.key``."""

    directory: Path
    certificate: x509.Certificate = attrs.field(repr=False)
    _private_key: _SigningKey = attrs.field(repr=False)

    @property
    def certificate_path(self) -> Path:
        return self.directory / CA_CERTIFICATE_NAME

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY_NAME

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_NAME

    @property
    def issued_directory(self) -> Path:
        return self.directory / ISSUED_DIRECTORY

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        *,
        common_name: str = "DFS cluster CA",
        days: int = 3650,
    ) -> CertificateAuthority:
        """Create a new CA in ``directory`` (made with mode 0700 if missing).

        Refuses with :class:`CAFileExistsError` if ``ca.crt`` or ``ca.key`` is there
        already: replacing a CA silently would orphan every certificate it issued.
        """
        directory = Path(directory)
        certificate_path = directory / CA_CERTIFICATE_NAME
        key_path = directory / CA_KEY_NAME
        for path in (certificate_path, key_path):
            if os.path.lexists(path):
                raise CAFileExistsError(path)
        if not common_name or not common_name.strip():
            raise CAError("the CA name must not be empty")
        if len(common_name) > 64:
            # X.509 caps a common name at 64 characters.
            raise CAError(f"the CA name is {len(common_name)} characters; at most 64")
        _check_days(days)

        key = ec.generate_private_key(ec.SECP256R1())
        not_before = _now() - CLOCK_SKEW
        not_after = _add_days(not_before, days)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # path_length=0: this CA signs leaves only, never intermediate CAs.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        _ensure_directory(directory)
        _write_pair(key_path, _key_pem(key), certificate_path, _certificate_pem(certificate), False)
        authority = cls(directory, certificate, key)
        # An empty list from the start: servers can name it before anyone is revoked.
        # (No lock needed: nobody else knows this CA yet.)
        authority._write_crl({})
        return authority

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        """Load the CA kept in ``directory``; CAError if it is missing, unreadable or not a CA."""
        directory = Path(directory)
        certificate_path = directory / CA_CERTIFICATE_NAME
        key_path = directory / CA_KEY_NAME
        if not certificate_path.exists():
            raise CAError(
                f"no CA in {directory}: {certificate_path} not found "
                f"(create one with 'dfs ca init --dir {directory}')"
            )
        certificate = load_certificate(certificate_path)
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            is_ca = constraints.value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise CAError(f"{certificate_path} is not a CA certificate")
        try:
            key_data = key_path.read_bytes()
        except FileNotFoundError:
            raise CAError(f"{key_path} not found: the CA cannot sign without its key") from None
        except OSError as error:
            raise CAError(f"cannot read {key_path}: {error.strerror}") from None
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except TypeError:
            raise CAError(f"{key_path} is encrypted; DFS needs an unencrypted CA key") from None
        except (ValueError, UnsupportedAlgorithm):
            raise CAError(f"{key_path} does not contain a valid private key") from None
        if not isinstance(key, _SIGNING_KEY_TYPES):
            raise CAError(f"{key_path} holds a key type that cannot sign certificates")
        if _public_der(key.public_key()) != _public_der(certificate.public_key()):
            raise CAError(f"{key_path} does not belong to {certificate_path}")
        return cls(directory, certificate, key)

    def issue(
        self,
        role: Role | str,
        name: str,
        hosts: Sequence[str] = (),
        *,
        days: int = 825,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        overwrite: bool = False,
        out_dir: str | os.PathLike[str] | None = None,
    ) -> IssuedCertificate:
        """Issue a key and certificate for ``role:name``, written as ``<name>.key``/``.crt``.

        ``hosts`` (DNS names or IP literals) become subjectAltNames, which is what
        TLS clients check a server against; a server certificate without hosts is
        valid but cannot be verified by name.

        Validity runs from ``not_before`` (default: now minus :data:`CLOCK_SKEW`)
        to ``not_after`` (default: ``not_before + days``). Naive datetimes are
        taken as UTC. Giving only a ``not_after`` in the past yields an expired
        certificate, valid for ``days`` up to that moment (tests need those).

        Files go to ``out_dir`` (default: the CA directory, created 0700 if
        missing). An existing file is a :class:`CAFileExistsError` unless
        ``overwrite``; the CA's own files are never overwritten.
        """
        try:
            role = Role(role)
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise CAError(f"unknown role {role!r}; expected one of {roles}") from None
        try:
            name = validate_name(name)
        except ValueError as error:
            raise CAError(str(error)) from None
        identity = Identity(role, name)
        if isinstance(hosts, str):
            # A lone string would otherwise be read as one host per character.
            hosts = [hosts]
        alt_names = _alt_names(hosts)
        valid_from, valid_until = _validity(days, not_before, not_after)

        directory = Path(out_dir) if out_dir is not None else self.directory
        certificate_path = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        own = {self.certificate_path.resolve(), self.key_path.resolve()}
        if {certificate_path.resolve(), key_path.resolve()} & own:
            raise CAError(
                f"name {name!r} would overwrite the CA's own files in {self.directory}; "
                "choose another name or output directory"
            )
        if not overwrite:
            for path in (certificate_path, key_path):
                if os.path.lexists(path):
                    raise CAFileExistsError(path)

        key = ec.generate_private_key(ec.SECP256R1())
        certificate = self._sign_leaf(identity, key, alt_names, valid_from, valid_until)
        # Recorded before it is handed out: nothing this CA signed escapes revocation by name.
        self._record(certificate)
        _ensure_directory(directory)
        _write_pair(
            key_path, _key_pem(key), certificate_path, _certificate_pem(certificate), overwrite
        )
        return IssuedCertificate(certificate_path, key_path, identity, certificate)

    # -- the index of issued certificates and the CRL ----------------------

    def _record(self, certificate: x509.Certificate) -> None:
        _ensure_directory(self.issued_directory)
        path = self.issued_directory / f"{certificate.serial_number:x}.pem"
        staged = _stage(path, _certificate_pem(certificate), _CERTIFICATE_MODE, secret=False)
        try:
            _commit(staged, path, overwrite=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()

    def issued(self) -> list[x509.Certificate]:
        """Every certificate this CA recorded issuing, by start of validity.

        Certificates issued before the CA kept an index are not in it; revoke those
        with :meth:`revoke_certificate`.
        """
        found = []
        if not self.issued_directory.is_dir():
            return []
        for path in sorted(self.issued_directory.glob("*.pem")):
            certificate = load_certificate(path)
            if certificate.issuer == self.certificate.subject:
                found.append(certificate)
        found.sort(key=lambda c: (c.not_valid_before_utc, c.serial_number))
        return found

    def _crl_entries(self) -> dict[int, datetime]:
        """The CRL's serials and revocation dates; {} if there is no CRL yet."""
        try:
            data = self.crl_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise CAError(f"cannot read {self.crl_path}: {error.strerror}") from None
        try:
            parse_crl(data, self.certificate)
        except CRLError as error:
            # Writing a new list over it would silently lift every revocation it holds.
            raise CAError(f"{self.crl_path} is unusable: {error}; move it away first") from None
        crl = (
            x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
        )
        return {entry.serial_number: entry.revocation_date_utc for entry in crl}

    def revoked(self) -> list[RevokedCertificate]:
        """The CRL's entries, oldest revocation first, with identities from the index."""
        known = {c.serial_number: c for c in self.issued()}
        entries = []
        for serial, when in self._crl_entries().items():
            certificate = known.get(serial)
            entries.append(
                RevokedCertificate(
                    serial, when, _identity_or_none(certificate) if certificate else None
                )
            )
        entries.sort(key=lambda e: (e.revoked_at, e.serial))
        return entries

    def ensure_crl(self) -> Path:
        """Write an empty CRL if there is none; the CRL's path."""
        with self._locked():
            if not self.crl_path.exists():
                self._write_crl({})
        return self.crl_path

    def renew_crl(self, *, days: int = CRL_DAYS) -> Path:
        """Sign the current list again with a fresh next update."""
        with self._locked():
            self._write_crl(self._crl_entries(), days=days)
        return self.crl_path

    def revoke(self, name: str, role: Role | str | None = None) -> Revocation:
        """Revoke every certificate this CA issued for ``name`` (of ``role``, if given).

        An unknown name is a CAError; revoking again what is revoked already
        changes nothing. A name held in several roles needs ``role`` to say which.
        """
        try:
            name = validate_name(name)
        except ValueError as error:
            raise CAError(str(error)) from None
        wanted: Role | None = None
        if role is not None:
            try:
                wanted = Role(role)
            except ValueError:
                roles = ", ".join(r.value for r in Role)
                raise CAError(f"unknown role {role!r}; expected one of {roles}") from None
        matches = []
        for certificate in self.issued():
            identity = _identity_or_none(certificate)
            if identity is None or identity.name != name:
                continue
            if wanted is None or identity.role is wanted:
                matches.append((identity, certificate))
        if not matches:
            held = f" as {wanted.value}" if wanted is not None else ""
            raise CAError(
                f"this CA has no record of a certificate issued to {name!r}{held} "
                f"(see 'dfs ca list --dir {self.directory}')"
            )
        roles_found = sorted({identity.role.value for identity, _ in matches})
        if wanted is None and len(roles_found) > 1:
            raise CAError(
                f"{name!r} holds certificates as {' and '.join(roles_found)}; say which with --role"
            )
        return self._revoke([certificate for _, certificate in matches])

    def revoke_certificate(self, certificate: x509.Certificate) -> Revocation:
        """Revoke one certificate this CA signed (one issued before it kept an index, say)."""
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise CAError("that certificate was not issued by this CA") from None
        try:
            is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except (x509.ExtensionNotFound, ValueError):
            is_ca = False
        if is_ca:
            # The CA's own certificate: listing it would say nothing a verifier uses.
            raise CAError("that is a CA certificate; only certificates it issued can be revoked")
        return self._revoke([certificate])

    def _revoke(self, certificates: list[x509.Certificate]) -> Revocation:
        with self._locked():
            entries = self._crl_entries()
            now = _now()
            revoked, already = [], []
            for certificate in certificates:
                if certificate.serial_number in entries:
                    already.append(certificate)
                else:
                    entries[certificate.serial_number] = now
                    revoked.append(certificate)
            if revoked or not self.crl_path.exists():
                self._write_crl(entries)
        return Revocation(tuple(revoked), tuple(already), self.crl_path, len(entries))

    def _write_crl(self, entries: dict[int, datetime], *, days: int = CRL_DAYS) -> None:
        _check_days(days)
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - CLOCK_SKEW)
            .next_update(_add_days(now, days))
            # Microseconds since the epoch: grows with every list signed, as RFC 5280 asks.
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1_000_000)), critical=False)
        )
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value),
                critical=False,
            )
        except x509.ExtensionNotFound:
            pass
        for serial, when in sorted(entries.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(self._private_key, self._algorithm())
        staged = _stage(
            self.crl_path,
            crl.public_bytes(serialization.Encoding.PEM),
            _CERTIFICATE_MODE,
            secret=False,
        )
        try:
            # A server polling the file sees the old list or the new one, never half of one.
            _commit(staged, self.crl_path, overwrite=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
        _sync_directory(self.directory)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the CA's lock: two revocations at once must not lose one another."""
        path = self.directory / _LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), _KEY_MODE)
        except OSError as error:
            raise CAError(f"cannot lock {self.directory}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _algorithm(self) -> hashes.SHA256 | None:
        if isinstance(self._private_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
            return None
        return hashes.SHA256()

    def _sign_leaf(
        self,
        identity: Identity,
        key: ec.EllipticCurvePrivateKey,
        alt_names: list[x509.GeneralName],
        not_before: datetime,
        not_after: datetime,
    ) -> x509.Certificate:
        if identity.role.is_server:
            # Servers also dial each other (replication, metaserver to dataserver).
            usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        else:
            # Without serverAuth no TLS peer accepts this certificate as a server.
            usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role.value),
                x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
            ]
        )
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ski.value
            )
        except x509.ExtensionNotFound:
            authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._private_key.public_key()
            )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(authority_key_id, critical=False)
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        return builder.sign(self._private_key, self._algorithm())


def _identity_or_none(certificate: x509.Certificate) -> Identity | None:
    try:
        return identity_from_certificate(certificate)
    except InvalidIdentity:
        return None


def _now() -> datetime:
    return datetime.now(UTC)


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise CAError(f"validity must be a whole number of days, at least 1 (got {days!r})")


def _add_days(start: datetime, days: int) -> datetime:
    try:
        return start + timedelta(days=days)
    except OverflowError:
        raise CAError(f"a validity of {days} days ends past the year 9999") from None


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _validity(
    days: int, not_before: datetime | None, not_after: datetime | None
) -> tuple[datetime, datetime]:
    _check_days(days)
    end = _as_utc(not_after) if not_after is not None else None
    if not_before is not None:
        start = _as_utc(not_before)
    else:
        start = _now() - CLOCK_SKEW
        if end is not None and end <= start:
            # An explicit end in the past asks for an expired certificate.
            start = end - timedelta(days=days)
    if end is None:
        end = _add_days(start, days)
    if end <= start:
        raise CAError(f"certificate would expire ({end:%Y-%m-%d %H:%M}Z) before it starts")
    return start, end


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        general_name = _alt_name(host)
        if general_name not in names:
            names.append(general_name)
    return names


def _alt_name(host: str) -> x509.GeneralName:
    """One subjectAltName for ``host``: an IPAddress for IP literals, else a DNSName."""
    if not isinstance(host, str) or not host:
        raise CAError("a host name must not be empty")
    if any(char.isspace() for char in host):
        raise CAError(f"host {host!r} contains whitespace")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise CAError(f"host {host!r} has a zone index (%...); certificates cannot carry it")
        return x509.IPAddress(address)
    if host.startswith("[") and host.endswith("]"):
        raise CAError(f"host {host!r}: give an IPv6 address without brackets")
    if not host.isascii():
        raise CAError(f"host {host!r} is not ASCII; give its IDNA form (xn--...)")
    if len(host) > 253:
        raise CAError(f"host {host[:20]!r}... is longer than 253 characters")
    labels = host.split(".")
    # A leading "*." is a wildcard that TLS clients (service_identity) understand.
    checked = labels[1:] if labels[0] == "*" and len(labels) > 2 else labels
    if not all(_DNS_LABEL.fullmatch(label) for label in checked):
        raise CAError(f"host {host!r} is neither an IP address nor a valid DNS name")
    if checked[-1].isdigit():
        raise CAError(f"host {host!r} looks like an IP address but is not a valid one")
    return x509.DNSName(host)


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_pem(key: _SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _ensure_directory(directory: Path) -> None:
    # 0700: the directory holds private keys.
    try:
        directory.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
    except FileExistsError:
        raise CAError(f"{directory} exists and is not a directory") from None
    except OSError as error:
        raise CAError(f"cannot create {directory}: {error.strerror}") from None


def _write_pair(
    key_path: Path,
    key_data: bytes,
    certificate_path: Path,
    certificate_data: bytes,
    overwrite: bool,
) -> None:
    """Write a key and its certificate: both, or (as far as the OS allows) neither."""
    staged: list[Path] = []
    try:
        staged.append(_stage(key_path, key_data, _KEY_MODE, secret=True))
        staged.append(_stage(certificate_path, certificate_data, _CERTIFICATE_MODE, secret=False))
        _commit(staged[0], key_path, overwrite)
        try:
            _commit(staged[1], certificate_path, overwrite)
        except BaseException:
            if not overwrite:
                # The key we just placed has no certificate: take it back.
                with contextlib.suppress(OSError):
                    key_path.unlink()
            raise
    finally:
        for path in staged:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    _sync_directory(key_path.parent)


def _stage(path: Path, data: bytes, mode: int, *, secret: bool) -> Path:
    """Write ``data`` to a new temporary file next to ``path``, fsynced; return its path."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        # The mode is given at creation: a key is never readable by others, not even briefly.
        fd = os.open(temporary, flags, mode)
    except OSError as error:
        raise CAError(f"cannot write in {path.parent}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            if not secret:
                # Certificates are public: undo a restrictive umask so every daemon can read them.
                os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise CAError(f"cannot write {path}: {error.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return temporary


def _commit(temporary: Path, path: Path, overwrite: bool) -> None:
    """Move a staged file into place; without ``overwrite``, fail if ``path`` exists."""
    try:
        if overwrite:
            os.replace(temporary, path)
            return
        try:
            # link() refuses an existing target atomically, unlike exists()-then-rename().
            os.link(temporary, path)
        except FileExistsError:
            raise CAFileExistsError(path) from None
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # A filesystem without hard links: fall back to a (racy) check.
            if os.path.lexists(path):
                raise CAFileExistsError(path) from None
            os.rename(temporary, path)
    except CAError:
        raise
    except OSError as error:
        raise CAError(f"cannot write {path}: {error.strerror}") from None


def _sync_directory(directory: Path) -> None:
    # Make the new names durable, not only the contents.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
