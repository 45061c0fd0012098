"""``dfs ca``: create the cluster CA and issue certificates for nodes and users.

    dfs ca init   --dir D [--days N] [--name CN]
    dfs ca issue  --dir D --role ROLE --name NAME [--host HOST ...] [--days N] [--out DIR] [--force]
    dfs ca list   --dir D
    dfs ca revoke --dir D NAME [--role ROLE]
    dfs ca revoke --dir D --cert FILE
    dfs ca crl    --dir D [--renew]

The work is done by :mod:`dfs.security.ca`; this module only parses arguments,
turns library errors into one-line :class:`CommandError` messages and reports
what was written.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from dfs.security.ca import (
    CAError,
    CAFileExistsError,
    CertificateAuthority,
    Revocation,
    load_certificate,
)
from dfs.security.identity import InvalidIdentity, Role, identity_from_certificate
from dfs_shell.errors import CommandError

_ROLES = [role.value for role in Role]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ca`` command and its subcommands."""
    parser = subparsers.add_parser(
        "ca",
        help="create the cluster CA and issue certificates",
        description="Create the cluster certificate authority and issue certificates "
        "that carry a role and a name.",
    )
    parser.set_defaults(run=lambda args: _print_help(parser))
    commands = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")

    init = commands.add_parser(
        "init",
        help="create a new CA (ca.crt, ca.key) in a directory",
        description="Create a new cluster CA: DIR/ca.crt (give it to every node and client) "
        "and DIR/ca.key (unencrypted, mode 0600: keep it secret, ideally offline).",
    )
    init.add_argument("--dir", required=True, type=Path, help="directory for the CA files")
    init.add_argument(
        "--days", type=_positive_days, default=3650, help="validity in days (default 3650)"
    )
    init.add_argument(
        "--name", default="DFS cluster CA", help="common name of the CA (default: %(default)s)"
    )
    init.set_defaults(run=run_init)

    issue = commands.add_parser(
        "issue",
        help="issue a key and certificate for a node or user",
        description="Issue NAME.key (unencrypted, mode 0600) and NAME.crt, signed by the CA "
        "in DIR, carrying ROLE and NAME. Servers need --host with every name or address "
        "that clients use to reach them.",
    )
    issue.add_argument("--dir", required=True, type=Path, help="directory of the CA")
    issue.add_argument("--role", required=True, choices=_ROLES, help="what the holder is")
    issue.add_argument("--name", required=True, help="identity name, e.g. ds1 or alice")
    issue.add_argument(
        "--host",
        dest="hosts",
        action="extend",
        nargs="+",
        default=[],
        metavar="HOST",
        help="DNS name or IP address to put in subjectAltName (repeatable)",
    )
    issue.add_argument(
        "--days", type=_positive_days, default=825, help="validity in days (default 825)"
    )
    issue.add_argument(
        "--out", type=Path, default=None, help="write the files here instead of the CA directory"
    )
    issue.add_argument("--force", action="store_true", help="replace existing files")
    issue.set_defaults(run=run_issue)

    listing = commands.add_parser(
        "list",
        help="list the certificates the CA issued, with their serial numbers",
        description="List every certificate the CA in DIR recorded issuing: serial number, "
        "identity, expiry, and whether it is revoked.",
    )
    listing.add_argument("--dir", required=True, type=Path, help="directory of the CA")
    listing.set_defaults(run=run_list)

    revoke = commands.add_parser(
        "revoke",
        help="revoke the certificates of a user or node",
        description="Add every certificate the CA in DIR issued to NAME to its revocation "
        "list, DIR/crl.pem. Servers whose security_config.json names that file (key 'crl') "
        "refuse and disconnect the holder within crl_check_interval seconds, or at once "
        "on SIGHUP. Revoking again changes nothing.",
    )
    revoke.add_argument("--dir", required=True, type=Path, help="directory of the CA")
    revoke.add_argument("name", nargs="?", metavar="NAME", help="identity name, e.g. alice")
    revoke.add_argument("--role", choices=_ROLES, help="only the certificates of this role")
    revoke.add_argument(
        "--cert",
        type=Path,
        metavar="FILE",
        help="revoke this certificate file instead of a name (one issued before the CA "
        "kept a list of what it issued)",
    )
    revoke.set_defaults(run=run_revoke)

    crl = commands.add_parser(
        "crl",
        help="show the revocation list",
        description="Show the certificates revoked in DIR/crl.pem; with --renew, sign the "
        "list again with a fresh next update first.",
    )
    crl.add_argument("--dir", required=True, type=Path, help="directory of the CA")
    crl.add_argument("--renew", action="store_true", help="sign a fresh copy of the list")
    crl.set_defaults(run=run_crl)


def run_init(args: argparse.Namespace) -> int:
    """Handle ``dfs ca init``."""
    try:
        authority = CertificateAuthority.create(args.dir, common_name=args.name, days=args.days)
    except CAError as error:
        raise CommandError("ca init", str(error)) from None
    print(f"created CA {args.name!r} in {authority.directory}")
    print(f"  certificate: {authority.certificate_path}  (give to every node and client)")
    print(f"  private key: {authority.key_path}  (mode 0600, unencrypted: keep it secret)")
    print(f"  valid until: {_when(authority.certificate.not_valid_after_utc)}")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    """Handle ``dfs ca issue``."""
    role = Role(args.role)
    try:
        authority = CertificateAuthority.load(args.dir)
        issued = authority.issue(
            role, args.name, args.hosts, days=args.days, overwrite=args.force, out_dir=args.out
        )
    except CAFileExistsError as error:
        raise CommandError("ca issue", f"{error} (use --force to replace it)") from None
    except CAError as error:
        raise CommandError("ca issue", str(error)) from None

    certificate = issued.certificate
    print(f"issued {issued.identity}")
    print(f"  certificate: {issued.certificate_path}")
    print(f"  private key: {issued.key_path}  (mode 0600, unencrypted)")
    print(f"  hosts:       {', '.join(_hosts(certificate)) or 'none'}")
    print(f"  valid until: {_when(certificate.not_valid_after_utc)}")
    if role.is_server and not args.hosts:
        _warn(
            f"no --host given: clients will not be able to verify {issued.identity} "
            "by name; issue it again with --host and --force"
        )
    ca_expiry = authority.certificate.not_valid_after_utc
    if certificate.not_valid_after_utc > ca_expiry:
        _warn(f"the CA expires first ({_when(ca_expiry)}); the certificate stops working then")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Handle ``dfs ca list``."""
    try:
        authority = CertificateAuthority.load(args.dir)
        issued = authority.issued()
        revoked = {entry.serial for entry in authority.revoked()}
    except CAError as error:
        raise CommandError("ca list", str(error)) from None
    if not issued:
        print(f"no certificates recorded in {authority.issued_directory}")
        return 0
    print(f"{'SERIAL':<42} {'IDENTITY':<30} {'VALID UNTIL':<20} STATE")
    for certificate in issued:
        serial = certificate.serial_number
        state = "revoked" if serial in revoked else _state(certificate)
        print(
            f"{serial:<#42x} {_identity(certificate):<30} "
            f"{_when(certificate.not_valid_after_utc):<20} {state}"
        )
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Handle ``dfs ca revoke``."""
    if (args.name is None) == (args.cert is None):
        raise CommandError("ca revoke", "give either NAME or --cert FILE")
    if args.cert is not None and args.role is not None:
        raise CommandError("ca revoke", "--role goes with NAME, not with --cert")
    try:
        authority = CertificateAuthority.load(args.dir)
        if args.cert is not None:
            revocation = authority.revoke_certificate(load_certificate(args.cert))
        else:
            revocation = authority.revoke(args.name, args.role)
    except CAError as error:
        raise CommandError("ca revoke", str(error)) from None
    report_revocation(revocation)
    return 0


def report_revocation(revocation: Revocation) -> None:
    """Print what a revocation did (shared with ``dfs local revoke``)."""
    for certificate in revocation.revoked:
        print(f"revoked {_identity(certificate)} (serial {certificate.serial_number:#x})")
    for certificate in revocation.already:
        print(f"already revoked: {_identity(certificate)} (serial {certificate.serial_number:#x})")
    print(f"  CRL: {revocation.crl_path}  ({revocation.total} revoked in all)")
    if revocation.revoked:
        print(
            "  servers naming this CRL refuse and disconnect the holder within their "
            "crl_check_interval, or at once on SIGHUP"
        )


def run_crl(args: argparse.Namespace) -> int:
    """Handle ``dfs ca crl``."""
    try:
        authority = CertificateAuthority.load(args.dir)
        if args.renew:
            authority.renew_crl()
        entries = authority.revoked()
    except CAError as error:
        raise CommandError("ca crl", str(error)) from None
    if not authority.crl_path.exists():
        print(f"no CRL in {authority.directory} yet ('dfs ca crl --renew' writes an empty one)")
        return 0
    print(f"CRL {authority.crl_path}: {len(entries)} revoked")
    for entry in entries:
        who = str(entry.identity) if entry.identity is not None else "(not in the index)"
        print(f"  {entry.serial:<#42x} {who:<30} revoked {_when(entry.revoked_at)}")
    return 0


def _identity(certificate: x509.Certificate) -> str:
    try:
        return str(identity_from_certificate(certificate))
    except InvalidIdentity:
        return certificate.subject.rfc4514_string()


def _state(certificate: x509.Certificate) -> str:
    now = datetime.now(UTC)
    if certificate.not_valid_after_utc < now:
        return "expired"
    if certificate.not_valid_before_utc > now:
        return "not yet valid"
    return "valid"


def _positive_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if days < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1 day")
    return days


def _hosts(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in names]


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _warn(message: str) -> None:
    print(f"dfs: ca issue: warning: {message}", file=sys.stderr)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
