"""The Debian package installed and booted: a Debian 12 minbase root made with
debootstrap, the package installed there with apt, a CA, certificates, secrets and
configs made inside it with ``dfs`` itself, the root booted with systemd-nspawn, and
inside it dfs-meta and dfs-data active, a file stored and read back with ``dfs
put``/``dfs get`` and both daemons reloaded; then the package purged and what is left
checked.

Before it boots, ``systemd-analyze verify`` checks the installed units in that root,
which holds nothing but minbase, what booting needs and what the package pulls in: a
command a unit runs that the package neither ships nor depends on is found missing.

Needs root, debootstrap, systemd-nspawn and the Debian archive (CI has all four).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Runs inside the booted root as a oneshot unit once the system is up: waits (with a
# deadline) for both daemons and a registered dataserver, stores and reads back a
# file, writes what it saw to /dfs-boot-result, and powers the root off.
PROBE = r"""#!/bin/sh
out=/dfs-boot-result
deadline=$(( $(date +%s) + 90 ))
until systemctl is-active --quiet dfs-meta dfs-data && dfs df 2>/dev/null | grep -q ' 1 alive'; do
    if [ "$(date +%s)" -ge "$deadline" ]; then break; fi
    sleep 0.5
done
{
    echo "meta: $(systemctl is-active dfs-meta)"
    echo "data: $(systemctl is-active dfs-data)"
    echo "df: $(dfs df | tail -n 1)"
    head -c 3000000 /dev/urandom > /root/blob
    dfs mkdir -p /boot-test && echo "mkdir: $?"
    dfs put --replication 1 /root/blob /boot-test/blob && echo "put: $?"
    dfs get /boot-test/blob /root/copy && echo "get: $?"
    cmp /root/blob /root/copy && echo "same: yes"
    # systemctl reload runs the units' ExecReload (kill -HUP) and waits for it.
    systemctl reload dfs-meta dfs-data && echo "reload: $?"
    sleep 1
    echo "after reload: $(systemctl is-active dfs-meta) $(systemctl is-active dfs-data)"
    grep -q '"path": "/boot-test"' /var/log/dfs/audit.log && echo "audited: yes"
    echo "failed units: $(systemctl --failed --no-legend | wc -l)"
    echo "restarts: $(systemctl show -p NRestarts --value dfs-meta dfs-data | tr '\n' ' ')"
} > "$out" 2>&1
# For a failed run: what the daemons said.
journalctl --no-pager -q -u dfs-meta -u dfs-data | tail -n 40 > /dfs-boot-journal 2>&1
systemctl poweroff
"""

PROBE_UNIT = """[Unit]
Description=DFS boot test
After=multi-user.target dfs-meta.service dfs-data.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/dfs-boot-probe

[Install]
WantedBy=multi-user.target
"""


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        # Not a silent skip in CI: .ci/run installs these and runs as root.
        pytest.fail(f"the boot test needs root and {', '.join(tools)} (missing: {missing})")


def nspawn(root: Path, *command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command in the root (not booted): /proc, /dev and the host's network."""
    return subprocess.run(
        ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(root), *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.args, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


@pytest.fixture(scope="module")
def root(deb: Path, debian_root: Path) -> Iterator[Path]:
    """A copy of the shared Debian 12 minbase root with the package installed (not yet
    configured)."""
    _require("systemd-nspawn")
    folder = Path(tempfile.mkdtemp(prefix="dfs-boot-", dir="/var/tmp"))
    target = folder / "root"
    try:
        ok(
            subprocess.run(
                ["cp", "-a", str(debian_root), str(target)], capture_output=True, text=True
            )
        )
        # Not /tmp: the container gets a fresh tmpfs there.
        shutil.copy(deb, target / "var" / "tmp" / deb.name)
        (target / "var" / "tmp" / deb.name).chmod(0o644)
        install = f"/var/tmp/{deb.name}"
        ok(nspawn(target, "apt-get", "update"))
        ok(nspawn(target, "apt-get", "install", "-y", "--no-install-recommends", install))
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _configure(root: Path) -> None:
    """A CA, the node certificates where the packaged configs look for them, the
    token key and Raft password, and an admin certificate for the dfs command."""
    meta = json.loads((root / "etc/dfs/metaserver_config.json").read_text())
    data = json.loads((root / "etc/dfs/dataserver_config.json").read_text())
    client = json.loads((root / "etc/dfs/client_config.json").read_text())
    # As an operator does: the address clients reach this dataserver at.
    data["advertise"] = "127.0.0.1:" + data["listen"].rpartition(":")[2]
    (root / "etc/dfs/dataserver_config.json").write_text(json.dumps(data, indent=2))
    ok(nspawn(root, "dfs", "ca", "init", "--dir", "/root/ca"))
    for role, config in (("metaserver", meta), ("dataserver", data), ("admin", client)):
        certificate = Path(config["tls"]["certificate"])
        name = config.get("name", certificate.stem)
        hosts = ["--host", "127.0.0.1", "localhost"] if role != "admin" else []
        out = "/root/issued"
        ok(
            nspawn(
                root,
                "dfs",
                "ca",
                "issue",
                "--dir",
                "/root/ca",
                "--role",
                role,
                "--name",
                name,
                *hosts,
                "--out",
                out,
                "--force",
            )
        )
        key = Path(config["tls"]["key"])
        owner = "root" if role == "admin" else "dfs"
        script = (
            f"install -D -m 0644 {out}/{name}.crt {certificate} && "
            f"install -D -m 0600 -o {owner} -g {owner} {out}/{name}.key {key} && "
            f"install -D -m 0644 /root/ca/ca.crt {config['tls']['ca']}"
        )
        ok(nspawn(root, "/bin/sh", "-c", script))
    security = json.loads((root / "etc/dfs/security_config.json").read_text())
    for key in ("token_key_file", "raft_password_file"):
        path = Path(security[key])
        path = path if path.is_absolute() else Path("/etc/dfs") / path
        ok(
            nspawn(
                root,
                "/bin/sh",
                "-c",
                f"head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {path} && "
                f"chown dfs:dfs {path} && chmod 0600 {path}",
            )
        )


#: The installed units, a template through an instance.
INSTALLED_UNITS = ("dfs-meta.service", "dfs-data.service", "dfs-data@ds2.service")


def test_the_units_find_every_command_they_run_in_a_minimal_root(root: Path) -> None:
    # Runs before the boot test below, which purges the package from the shared root.
    _require("systemd-analyze")
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *INSTALLED_UNITS],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert (done.stdout + done.stderr).strip() == ""
    assert os.access(root / "bin/kill", os.X_OK), "ExecReload's /bin/kill"


def test_the_audit_log_folder_is_made_for_the_shipped_config(root: Path) -> None:
    security = json.loads((root / "etc/dfs/security_config.json").read_text())
    assert security["audit_log"] == "/var/log/dfs/audit.log"
    folder = (root / "var/log/dfs").stat()
    user = next(
        line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
        if line.startswith("dfs:")
    )
    assert (stat.S_IMODE(folder.st_mode), folder.st_uid, folder.st_gid) == (
        0o750,
        int(user[2]),
        int(user[3]),
    )


def test_the_package_installs_boots_serves_and_purges(root: Path) -> None:
    # Installed: the command, the units enabled, nothing started in a root without systemd.
    # (os.path.lexists: the command is a symbolic link into the package's virtualenv)
    assert os.path.lexists(root / "usr/bin/dfs")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert os.path.lexists(wants / "dfs-meta.service")
    assert os.path.lexists(wants / "dfs-data.service")

    _configure(root)
    probe = root / "usr/local/sbin/dfs-boot-probe"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(PROBE)
    probe.chmod(0o755)
    (root / "etc/systemd/system/dfs-boot-probe.service").write_text(PROBE_UNIT)
    (wants / "dfs-boot-probe.service").symlink_to("/etc/systemd/system/dfs-boot-probe.service")

    booted = subprocess.run(
        ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(root), "--boot"],
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    result_file = root / "dfs-boot-result"
    assert result_file.exists(), booted.stdout[-3000:]
    result = result_file.read_text()
    print(f"REPORT boot test: {' / '.join(result.strip().splitlines())}")
    journal = (root / "dfs-boot-journal").read_text(errors="replace")
    expected = (
        "meta: active",
        "data: active",
        "put: 0",
        "get: 0",
        "same: yes",
        "reload: 0",
        "after reload: active active",
        "audited: yes",
    )
    for line in (*expected, "failed units: 0"):
        assert line in result, f"{result}\n--- journal ---\n{journal}"
    restarts = result.partition("restarts:")[2].splitlines()[0].split()
    assert restarts == ["0", "0"], f"{result}\n--- journal ---\n{journal}"

    # Purged: the package's files, its configuration and the state in /var/lib/dfs go;
    # what the operator put in /etc/dfs (certificates, keys, secrets) and the dfs user
    # stay, and purge says so.
    purged = ok(nspawn(root, "apt-get", "purge", "-y", "dfs"))
    assert "deleting /var/lib/dfs" in purged and "kept /etc/dfs/tls" in purged, purged
    assert "deleting /var/log/dfs" in purged, purged
    assert not (root / "var/log/dfs").exists()
    assert not os.path.lexists(root / "usr/bin/dfs")
    assert not (root / "opt/venvs/dfs").exists()
    assert not os.path.lexists(wants / "dfs-meta.service")
    assert not (root / "var/lib/dfs").exists()
    left = sorted(path.name for path in (root / "etc/dfs").iterdir())
    assert left == ["raft.password", "tls", "token.key"], left
    assert "dfs:" in (root / "etc/passwd").read_text()
