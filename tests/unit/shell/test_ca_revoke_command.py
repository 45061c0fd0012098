"""``dfs ca list``, ``dfs ca revoke`` and ``dfs ca crl`` as a user sees them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Identity, Role, identity_from_certificate
from dfs_shell import ca
from dfs_shell.errors import CommandError

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def dfs(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*argv: str | Path) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="dfs")
        ca.register(parser.add_subparsers())
        capsys.readouterr()
        try:
            args = parser.parse_args([str(a) for a in argv])
            code = args.run(args)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except CommandError as error:
            print(f"dfs: {error.command}: {error.message}", file=sys.stderr)
            code = error.exit_code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority.create(tmp_path / "ca")
    authority.issue(Role.CLIENT, "alice", out_dir=tmp_path / "alice")
    authority.issue(Role.DATASERVER, "ds1", ["127.0.0.1"], out_dir=tmp_path / "ds1")
    return authority


def test_revoke_by_name_then_list_and_crl_show_it(dfs, authority):
    serial = next(
        c.serial_number
        for c in authority.issued()
        if identity_from_certificate(c) == Identity(Role.CLIENT, "alice")
    )
    code, out, err = dfs("ca", "revoke", "--dir", authority.directory, "alice")
    assert code == 0, err
    assert f"revoked client:alice (serial {serial:#x})" in out
    assert f"CRL: {authority.crl_path}  (1 revoked in all)" in out

    code, out, _ = dfs("ca", "list", "--dir", authority.directory)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SERIAL", "IDENTITY", "VALID", "UNTIL", "STATE"]
    alice = next(line for line in lines if "client:alice" in line)
    assert alice.startswith(f"{serial:#x}") and alice.endswith("revoked")
    assert next(line for line in lines if "dataserver:ds1" in line).endswith("valid")

    code, out, _ = dfs("ca", "crl", "--dir", authority.directory)
    assert code == 0
    assert out.splitlines()[0] == f"CRL {authority.crl_path}: 1 revoked"
    assert "client:alice" in out and f"{serial:#x}" in out


def test_revoking_twice_is_harmless(dfs, authority):
    assert dfs("ca", "revoke", "--dir", authority.directory, "alice")[0] == 0
    code, out, _ = dfs("ca", "revoke", "--dir", authority.directory, "alice", "--role", "client")
    assert code == 0
    assert out.startswith("already revoked: client:alice")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["bob"], "no record of a certificate issued to 'bob'"),
        (["alice", "--role", "admin"], "issued to 'alice' as admin"),
        ([], "give either NAME or --cert FILE"),
        (["alice", "--cert", "x.crt"], "give either NAME or --cert FILE"),
    ],
)
def test_revoke_errors_are_one_line(dfs, authority, arguments, message):
    code, out, err = dfs("ca", "revoke", "--dir", authority.directory, *arguments)
    assert code == 1
    assert err.startswith("dfs: ca revoke: ") and message in err
    assert err.count("\n") == 1 and out == ""


def test_revoke_a_certificate_file(dfs, authority, tmp_path):
    code, out, err = dfs(
        "ca", "revoke", "--dir", authority.directory, "--cert", tmp_path / "ds1" / "ds1.crt"
    )
    assert code == 0, err
    assert out.startswith("revoked dataserver:ds1")
    code, _, err = dfs("ca", "revoke", "--dir", authority.directory, "--cert", tmp_path / "nope")
    assert code == 1 and "not found" in err


def test_crl_renew_keeps_the_entries(dfs, authority):
    dfs("ca", "revoke", "--dir", authority.directory, "alice")
    before = authority.crl_path.read_bytes()
    code, out, _ = dfs("ca", "crl", "--dir", authority.directory, "--renew")
    assert code == 0 and "1 revoked" in out
    assert authority.crl_path.read_bytes() != before
