"""``dfs ca init`` and ``dfs ca issue`` as a user sees them: output, files, exit codes."""

from __future__ import annotations

import argparse
import importlib.util
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dfs.security.ca import load_certificate
from dfs.security.identity import Identity, Role, identity_from_certificate
from dfs_shell import ca
from dfs_shell.errors import CommandError

Run = Callable[..., tuple[int, str, str]]


def build_parser() -> argparse.ArgumentParser:
    # Only the ca group: the full dfs parser also needs the other command groups.
    parser = argparse.ArgumentParser(prog="dfs")
    ca.register(parser.add_subparsers())
    return parser


@pytest.fixture
def dfs(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``dfs ARGS`` in-process the way dfs_shell.main dispatches it."""

    def run(*argv: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            args = build_parser().parse_args([str(a) for a in argv])
            code = args.run(args)
        except SystemExit as exit:  # argparse usage errors
            code = exit.code if isinstance(exit.code, int) else 1
        except CommandError as error:
            print(f"dfs: {error.command}: {error.message}", file=sys.stderr)
            code = error.exit_code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_init_creates_the_ca_and_says_where(dfs: Run, tmp_path: Path) -> None:
    code, out, err = dfs(
        "ca", "init", "--dir", tmp_path / "ca", "--name", "Test CA", "--days", "30"
    )
    assert code == 0, err
    assert err == ""
    assert str(tmp_path / "ca" / "ca.crt") in out
    assert str(tmp_path / "ca" / "ca.key") in out
    assert "0600" in out and "valid until" in out
    assert mode_of(tmp_path / "ca" / "ca.key") == 0o600
    cert = load_certificate(tmp_path / "ca" / "ca.crt")
    assert "Test CA" in cert.subject.rfc4514_string()


def test_second_init_fails_with_one_line_and_keeps_the_ca(dfs: Run, tmp_path: Path) -> None:
    assert dfs("ca", "init", "--dir", tmp_path)[0] == 0
    key = (tmp_path / "ca.key").read_bytes()
    code, out, err = dfs("ca", "init", "--dir", tmp_path)
    assert code == 1
    assert out == ""
    assert (
        one_line(err)
        == f"dfs: ca init: {tmp_path / 'ca.crt'} already exists; refusing to overwrite it"
    )
    assert (tmp_path / "ca.key").read_bytes() == key


def test_issue_before_init_tells_the_user_to_run_init(dfs: Run, tmp_path: Path) -> None:
    code, out, err = dfs("ca", "issue", "--dir", tmp_path, "--role", "client", "--name", "bob")
    assert code == 1 and out == ""
    line = one_line(err)
    assert line.startswith("dfs: ca issue: no CA in ")
    assert "dfs ca init" in line
    assert list(tmp_path.iterdir()) == []


def test_issue_server_with_hosts_prints_identity_paths_and_alt_names(
    dfs: Run, tmp_path: Path
) -> None:
    dfs("ca", "init", "--dir", tmp_path)
    code, out, err = dfs(
        "ca", "issue", "--dir", tmp_path, "--role", "dataserver", "--name", "ds1",
        "--host", "127.0.0.1", "ds1.example.com", "--host", "::1",
    )  # fmt: skip
    assert code == 0, err
    assert err == ""
    assert "issued dataserver:ds1" in out
    assert str(tmp_path / "ds1.crt") in out and str(tmp_path / "ds1.key") in out
    assert "127.0.0.1, ds1.example.com, ::1" in out
    assert "valid until" in out
    cert = load_certificate(tmp_path / "ds1.crt")
    assert identity_from_certificate(cert) == Identity(Role.DATASERVER, "ds1")
    assert mode_of(tmp_path / "ds1.key") == 0o600


def test_issue_server_without_host_warns_on_stderr(dfs: Run, tmp_path: Path) -> None:
    dfs("ca", "init", "--dir", tmp_path)
    code, out, err = dfs("ca", "issue", "--dir", tmp_path, "--role", "metaserver", "--name", "m1")
    assert code == 0
    assert "hosts:       none" in out
    assert "warning: no --host given" in one_line(err)


def test_issue_client_without_host_does_not_warn(dfs: Run, tmp_path: Path) -> None:
    dfs("ca", "init", "--dir", tmp_path)
    code, out, err = dfs("ca", "issue", "--dir", tmp_path, "--role", "client", "--name", "alice")
    assert (code, err) == (0, "")
    assert "issued client:alice" in out


def test_issue_warns_when_the_certificate_outlives_the_ca(dfs: Run, tmp_path: Path) -> None:
    dfs("ca", "init", "--dir", tmp_path, "--days", "10")
    code, _out, err = dfs(
        "ca", "issue", "--dir", tmp_path, "--role", "admin", "--name", "root", "--days", "20"
    )
    assert code == 0
    assert "the CA expires first" in one_line(err)


def test_existing_file_is_refused_and_force_replaces_it(dfs: Run, tmp_path: Path) -> None:
    dfs("ca", "init", "--dir", tmp_path)
    issue = ("ca", "issue", "--dir", tmp_path, "--role", "client", "--name", "alice")
    assert dfs(*issue)[0] == 0
    first = (tmp_path / "alice.crt").read_bytes()
    code, out, err = dfs(*issue)
    assert code == 1 and out == ""
    line = one_line(err)
    assert f"{tmp_path / 'alice.crt'} already exists" in line
    assert "--force" in line
    assert (tmp_path / "alice.crt").read_bytes() == first
    assert dfs(*issue, "--force")[0] == 0
    assert (tmp_path / "alice.crt").read_bytes() != first


def test_out_writes_elsewhere(dfs: Run, tmp_path: Path) -> None:
    dfs("ca", "init", "--dir", tmp_path / "ca")
    code, _out, err = dfs(
        "ca", "issue", "--dir", tmp_path / "ca", "--role", "client", "--name", "alice",
        "--out", tmp_path / "alice",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "alice").iterdir()) == ["alice.crt", "alice.key"]


def test_bad_role_is_a_usage_error(dfs: Run, tmp_path: Path) -> None:
    dfs("ca", "init", "--dir", tmp_path)
    code, _out, err = dfs("ca", "issue", "--dir", tmp_path, "--role", "wizard", "--name", "x")
    assert code == 2
    assert "invalid choice: 'wizard'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--name", "bad name"), "contains ' '"),
        (("--name", ".hidden"), "must not start with '.'"),
        (("--name", "ok", "--host", "not a host"), "whitespace"),
        (("--name", "ok", "--host", "exa_mple.com"), "valid DNS name"),
    ],
)
def test_bad_names_and_hosts_fail_with_one_line(
    dfs: Run, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    dfs("ca", "init", "--dir", tmp_path)
    code, out, err = dfs("ca", "issue", "--dir", tmp_path, "--role", "client", *args)
    assert code == 1 and out == ""
    line = one_line(err)
    assert line.startswith("dfs: ca issue: ")
    assert message in line


@pytest.mark.parametrize("days", ["0", "-3", "ten"])
def test_bad_days_is_a_usage_error(dfs: Run, tmp_path: Path, days: str) -> None:
    code, _out, err = dfs("ca", "init", "--dir", tmp_path, "--days", days)
    assert code == 2
    assert "--days" in err
    assert list(tmp_path.iterdir()) == []


def test_ca_without_subcommand_prints_help(dfs: Run) -> None:
    code, out, _err = dfs("ca")
    assert code == 2
    assert "init" in out and "issue" in out


# --- the installed dfs command ------------------------------------------------------------

DFS = Path(sys.executable).with_name("dfs")

needs_full_cli = pytest.mark.skipif(
    importlib.util.find_spec("dfs_shell.local") is None or not DFS.exists(),
    reason="the dfs entry point also needs dfs_shell.local, which is not there yet",
)


def run_dfs(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DFS), *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@needs_full_cli
def test_dfs_binary_init_issue_and_errors(tmp_path: Path) -> None:
    result = run_dfs(
        "ca", "issue", "--dir", "ca", "--role", "client", "--name", "bob", cwd=tmp_path
    )
    assert result.returncode == 1
    assert one_line(result.stderr).startswith("dfs: ca issue: no CA in ca")

    assert run_dfs("ca", "init", "--dir", "ca", cwd=tmp_path).returncode == 0
    result = run_dfs("ca", "init", "--dir", "ca", cwd=tmp_path)
    assert result.returncode == 1
    assert (
        one_line(result.stderr)
        == "dfs: ca init: ca/ca.crt already exists; refusing to overwrite it"
    )

    issue = ("ca", "issue", "--dir", "ca", "--role", "dataserver", "--name", "ds1")
    result = run_dfs(*issue, "--host", "127.0.0.1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "issued dataserver:ds1" in result.stdout
    result = run_dfs(*issue, "--host", "127.0.0.1", cwd=tmp_path)
    assert result.returncode == 1
    assert "already exists" in one_line(result.stderr)

    result = run_dfs("ca", "issue", "--dir", "ca", "--role", "root", "--name", "x", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr and "Traceback" not in result.stderr
