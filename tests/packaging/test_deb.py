"""The Debian package: lintian finds no error, it holds what docs/deployment.md
("Packages") promises, and the virtualenv inside it works.

It is not installed on this host: tests/packaging/test_boot.py installs it in a
throwaway Debian root.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import BUILD, ROOT, require

VENV = "opt/venvs/dfs"
SITE = f"{VENV}/lib/python3.11/site-packages"
UNITS = ("dfs-meta.service", "dfs-data.service", "dfs-data@.service")
CONFIGS = (
    "client_config.json",
    "dataserver_config.json",
    "metaserver_config.json",
    "replication_config.json",
    "security_config.json",
)


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("arguments", [(), ("deb",), ("zip", "out"), ("deb", "out", "more")])
def test_build_sh_usage(arguments: tuple[str, ...]) -> None:
    done = run("bash", str(BUILD), *arguments)
    assert done.returncode == 2
    assert done.stderr == "usage: packaging/build.sh deb|rpm|docker OUTDIR\n"


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("unpacked")
    done = run("dpkg-deb", "-R", str(deb), str(folder))
    assert done.returncode == 0, done.stderr
    return folder


def test_lintian_finds_no_error(deb: Path) -> None:
    require("lintian")
    done = run("lintian", "--fail-on", "error", "--no-tag-display-limit", str(deb))
    errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
    assert done.returncode == 0 and not errors, done.stdout[-3000:] + done.stderr[-2000:]


def test_contents(deb: Path) -> None:
    listing = run("dpkg-deb", "-c", str(deb)).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for unit in UNITS:
        assert f"/lib/systemd/system/{unit}" in paths
    for config in CONFIGS:
        assert f"/etc/dfs/{config}" in paths
    links = {
        line.split()[5].removeprefix("."): line.split()[7]
        for line in listing.splitlines()
        if " -> " in line
    }
    assert links["/usr/bin/dfs"] == f"/{VENV}/bin/dfs"
    assert links["/usr/sbin/dfs-meta-restore"] == f"/{VENV}/bin/dfs-meta-restore"
    assert links["/usr/libexec/dfs/twistd"] == f"/{VENV}/bin/twistd"
    # The venv's interpreter links to Debian's, rather than copying it.
    assert links[f"/{VENV}/bin/python3.11"] == "/usr/bin/python3.11"
    assert not any("__pycache__" in path for path in paths), "byte-code is made in postinst"


def test_conffiles_and_scripts(unpacked: Path) -> None:
    conffiles = (unpacked / "DEBIAN" / "conffiles").read_text().split()
    assert sorted(conffiles) == sorted(f"/etc/dfs/{config}" for config in CONFIGS)
    postinst = (unpacked / "DEBIAN" / "postinst").read_text()
    assert "adduser --system --group" in postinst
    assert "install -d -o dfs -g dfs -m 0750 /var/lib/dfs" in postinst
    assert "install -d -o dfs -g dfs -m 0750 /var/log/dfs" in postinst
    # Enabled and started on install (the Condition keeps a node without certificate quiet).
    assert "deb-systemd-helper" in postinst and "dfs-meta.service" in postinst
    postrm = (unpacked / "DEBIAN" / "postrm").read_text()
    purge = postrm[postrm.index("purge)") :]
    assert "rm -rf /var/lib/dfs" in purge.split(";;")[0]
    assert "rm -rf /var/log/dfs" in purge.split(";;")[0]


def test_the_shipped_security_config_turns_the_audit_log_on(unpacked: Path) -> None:
    security = json.loads((unpacked / "etc" / "dfs" / "security_config.json").read_text())
    assert security["audit_log"] == "/var/log/dfs/audit.log"
    # The hardened unit may write there (ProtectSystem=strict makes the rest read-only).
    unit = (unpacked / "lib" / "systemd" / "system" / "dfs-meta.service").read_text()
    assert "LogsDirectory=dfs\n" in unit and "LogsDirectoryMode=0750\n" in unit


def test_copyright_says_apache_2_in_dep5(unpacked: Path) -> None:
    copyright_file = unpacked / "usr" / "share" / "doc" / "dfs" / "copyright"
    paragraphs = copyright_file.read_text().split("\n\n")
    assert paragraphs[0].startswith(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
    )
    files = next(p for p in paragraphs if p.startswith("Files: *\n"))
    assert "\nLicense: Apache-2.0" in files
    licence = next(p for p in paragraphs if p.startswith("License: Apache-2.0\n"))
    assert '"/usr/share/common-licenses/Apache-2.0"' in licence
    # LICENSE is the standard text, the one Debian keeps in common-licenses.
    assert (ROOT / "LICENSE").read_bytes() == Path(
        "/usr/share/common-licenses/Apache-2.0"
    ).read_bytes()


def test_default_configs_name_the_units_certificates(unpacked: Path) -> None:
    # The units start once /etc/dfs/tls/ROLE.crt exists: the configs must name it.
    for role in ("metaserver", "dataserver"):
        unit = (unpacked / "lib" / "systemd" / "system" / f"dfs-{role[:4]}.service").read_text()
        config = (unpacked / "etc" / "dfs" / f"{role}_config.json").read_text()
        certificate = f"/etc/dfs/tls/{role}.crt"
        assert f"ConditionPathExists={certificate}" in unit
        assert f'"certificate": "{certificate}"' in config


def test_the_venv_runs_dfs_and_the_plugins(unpacked: Path) -> None:
    # Debian's Python with the package's site-packages: the compiled dependencies load
    # and twistd finds both plugins (the venv itself points at /opt, not installed here).
    require("python3.11")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(unpacked / SITE), "HOME": os.environ["HOME"]}
    code = (
        "import google_crc32c, cryptography.x509, OpenSSL.SSL, pysyncobj, prometheus_client;"
        "import dfs, dfs_shell.main;"
        "from twisted.plugin import IPlugin, getPlugins;"
        "print(sorted(p.tapname for p in getPlugins(IPlugin) if hasattr(p, 'tapname')))"
    )
    done = run("/usr/bin/python3.11", "-c", code, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'dfs-data'" in done.stdout and "'dfs-meta'" in done.stdout
    done = run("/usr/bin/python3.11", "-m", "twisted", "dfs-meta", "--help", env=env)
    assert done.returncode == 0 and "--config" in done.stdout, done.stderr[-3000:]
