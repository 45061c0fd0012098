"""The systemd units: `systemd-analyze verify` prints nothing for any of them,
`systemd-analyze security --offline=yes` rates each at 2.5 or lower, and every
command they run is one the packages ship or depend on.

verify checks that ExecStart and ExecReload name executables, so it runs against a
throwaway root holding the units, systemd's own targets, /bin/kill and a stand-in
for /usr/libexec/dfs/twistd, which the packages provide. That root has what the
packages bring only because the last test here holds them to it; test_boot.py
verifies the units again where the .deb was installed with nothing but what it pulls in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, require

UNITS = ROOT / "packaging" / "systemd"
# (file, name to verify it under: a template is verified through an instance)
CASES = [
    ("dfs-meta.service", "dfs-meta.service"),
    ("dfs-data.service", "dfs-data.service"),
    ("dfs-data@.service", "dfs-data@ds2.service"),
]
MAX_EXPOSURE = 2.5
#: Commands the units run that the packages do not ship: each with the Debian package
#: that provides it and the path the RPM requires (/bin is /usr/bin on Fedora and RHEL).
FROM_DEPENDENCIES = {"/bin/kill": ("procps", "/usr/bin/kill")}
SHIPPED = {"/usr/libexec/dfs/twistd"}


def _root(tmp_path: Path, extra: dict[str, str] | None = None) -> Path:
    root = tmp_path / "root"
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, system / unit.name)
    for name, text in (extra or {}).items():
        (system / name).write_text(text)
    # symlinks=True: the .wants folders must stay symlinks for verify to stay quiet.
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True
    )
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copy("/bin/kill", root / "usr" / "bin" / "kill")
    (root / "bin").symlink_to("usr/bin")
    twistd = root / "usr" / "libexec" / "dfs" / "twistd"
    twistd.parent.mkdir(parents=True)
    twistd.write_text("#!/bin/sh\n")
    twistd.chmod(0o755)
    return root


def _verify(root: Path, *names: str) -> str:
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *names],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (done.stdout + done.stderr).strip()


def test_verify_prints_nothing(tmp_path: Path) -> None:
    require("systemd-analyze")
    output = _verify(_root(tmp_path), *(name for _, name in CASES))
    assert output == ""


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    # The check above is only worth something if this root lets verify complain.
    require("systemd-analyze")
    broken = (UNITS / "dfs-meta.service").read_text().replace("Restart=", "Restrat=")
    output = _verify(_root(tmp_path, {"dfs-broken.service": broken}), "dfs-broken.service")
    assert "Restrat" in output


@pytest.mark.parametrize(("file", "name"), CASES)
def test_security_exposure_is_low(file: str, name: str) -> None:
    require("systemd-analyze")
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNITS / file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout[-2000:] + done.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, done.stdout


def _commands(unit: str) -> set[str]:
    """The programs a unit's Exec lines run (their prefixes such as - and + dropped)."""
    found = set()
    for line in unit.splitlines():
        key, equals, value = line.partition("=")
        if equals and key.startswith("Exec") and value.strip():
            found.add(value.split()[0].lstrip("-@:+!"))
    return found


def test_every_command_the_units_run_comes_with_the_packages() -> None:
    control = (ROOT / "packaging" / "debian" / "control").read_text()
    depends = re.search(r"^Package: dfs$.*?^Depends: ([^\n]*)$", control, re.M | re.S)
    assert depends, control
    debian = {word.strip().split()[0] for word in depends.group(1).split(",")}
    spec = (ROOT / "packaging" / "rpm" / "dfs.spec").read_text()
    rpm = set(re.findall(r"^Requires:\s+(\S+)$", spec, re.M))
    commands = set().union(*(_commands((UNITS / file).read_text()) for file, _ in CASES))
    assert "/bin/kill" in commands  # the check below must have something to check
    for command in commands - SHIPPED:
        assert command in FROM_DEPENDENCIES, f"{command}: neither shipped nor a dependency"
        package, path = FROM_DEPENDENCIES[command]
        assert package in debian, f"{command}: debian/control does not depend on {package}"
        assert path in rpm, f"{command}: dfs.spec does not require {path}"
