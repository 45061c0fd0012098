"""``dfs ca``: create the cluster CA and issue certificates for nodes and users.

    dfs ca init  --dir D [--days N] [--name CN]
    dfs ca issue --dir D --role ROLE --name NAME [--host HOST ...] [--days N] [--out DIR] [--force]

The work is done by :mod:`dfs.security.ca`; this module only parses arguments,
turns library errors into one-line :class:`CommandError` messages and reports
what was written.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from cryptography import x509

from dfs.security.ca import CAError, CAFileExistsError, CertificateAuthority
from dfs.security.identity import Role
from dfs_shell.errors import CommandError

_ROLES = [role.value for role in Role]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ca`` command and its ``init`` and ``issue`` subcommands."""
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
