"""The RPM: built once with packaging/rpm/build.sh, linted, installed into a throwaway root.

This Debian machine has rpm tools but no Fedora or RHEL repositories, so the package
is installed with ``rpm --root ROOT --nodeps`` into a bare root. The root holds only
what the scriptlets run: sh, getent, groupadd and useradd with their libraries (copied
from the host), a /etc/passwd and /etc/group of its own, and a stand-in systemctl that
records its arguments, so the test sees what each scriptlet asks of systemd. rpm runs
scriptlets chrooted into ROOT: useradd writes ROOT/etc/passwd, never the host's.

Needs root and rpm and rpmlint (.ci/run installs both); a missing tool fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RPM_DIR = ROOT / "packaging" / "rpm"
UNITS = ROOT / "packaging" / "systemd"
VENV = "opt/venvs/dfs"
UNIT_NAMES = ("dfs-meta.service", "dfs-data.service", "dfs-data@.service")
# What the scriptlets run, besides the stand-in systemctl.
TOOLS = ("/bin/sh", "/usr/bin/getent", "/usr/sbin/groupadd", "/usr/sbin/useradd")
# Records each call; the scriptlets send its output to /dev/null.
SYSTEMCTL = '#!/bin/sh\necho "$*" >> /systemctl.log\n'


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: .ci/run installs them (apt-get install rpm rpmlint)"
        )
    if os.geteuid() != 0:
        pytest.fail("the RPM test needs root: rpm --root changes owners and chroots for scriptlets")


def run(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def version() -> str:
    """The version as setup.py and the build scripts read it."""
    found = re.search(r'^__version__ = "([^"]+)"$', (ROOT / "dfs/__init__.py").read_text(), re.M)
    assert found, "no __version__ in dfs/__init__.py"
    return found.group(1)


@pytest.fixture(scope="module")
def rpm_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require("rpmbuild", "rpm", "rpmlint")
    out = tmp_path_factory.mktemp("rpm")
    run("bash", RPM_DIR / "build.sh", out)
    (package,) = out.glob("dfs-*.rpm")
    yield package
    shutil.rmtree(out, ignore_errors=True)


def copy_from_host(root: Path, path: str) -> None:
    """Copies a host file to the same path under root, following links."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(path), target)


def make_root(root: Path) -> None:
    # The same merged /usr as the host, so that the libraries' paths resolve alike.
    for top in ("bin", "sbin", "lib", "lib64"):
        host = Path("/") / top
        if host.is_symlink():
            (root / host.readlink()).mkdir(parents=True, exist_ok=True)
            (root / top).symlink_to(host.readlink())
    for tool in TOOLS:
        copy_from_host(root, tool)
        for line in run("ldd", tool).stdout.splitlines():
            library = next((word for word in line.split() if word.startswith("/")), None)
            if library:
                copy_from_host(root, library)
    etc = root / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    for folder in ("tmp", "var/tmp", "dev", "run/systemd/system", "usr/bin"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    systemctl = root / "usr/bin/systemctl"
    systemctl.write_text(SYSTEMCTL)
    systemctl.chmod(0o755)


def rpm_in(root: Path, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("rpm", "--root", root, "--dbpath", "/var/lib/rpm", *argv, check=check)


def calls(root: Path) -> list[str]:
    """The systemctl calls the scriptlets made since the last look."""
    log = root / "systemctl.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def passwd_entry(root: Path, name: str) -> list[str] | None:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def gid_of(root: Path, name: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no group {name} in {root}/etc/group")


def test_build_script_refuses_bad_arguments() -> None:
    done = run("bash", RPM_DIR / "build.sh", check=False)
    assert (done.returncode, done.stderr) == (2, f"usage: {RPM_DIR / 'build.sh'} OUTDIR\n")


def test_rpmlint_is_clean(rpm_file: Path, tmp_path: Path) -> None:
    # rpmlint parses the spec with rpm: give it the version build.sh would define.
    spec = tmp_path / "dfs.spec"
    spec.write_text(f"%global dfs_version {version()}\n" + (RPM_DIR / "dfs.spec").read_text())
    done = run(
        "rpmlint",
        *("-c", RPM_DIR / "rpmlint.toml", "-r", RPM_DIR / "dfs.rpmlintrc"),
        *(rpm_file, spec),
        check=False,
    )
    assert "0 errors, 0 warnings" in done.stdout, done.stdout[-5000:] + done.stderr
    assert done.returncode == 0


def test_header_names_version_dependencies_and_scripts(rpm_file: Path) -> None:
    query = run("rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{LICENSE}\n", rpm_file).stdout
    assert query == f"dfs {version()} Apache-2.0\n"
    requires = run("rpm", "-qp", "--requires", rpm_file).stdout.split("\n")
    assert any(line.startswith("/usr/bin/python3.") for line in requires), requires
    assert "shadow-utils" in requires
    # What the units' ExecReload runs (/bin is /usr/bin on Fedora and RHEL).
    assert "/usr/bin/kill" in requires
    # Nothing inside the virtualenv is offered to other packages.
    provides = run("rpm", "-qp", "--provides", rpm_file).stdout.splitlines()
    assert sorted(line.split()[0] for line in provides) == ["dfs", "dfs(x86-64)"], provides
    scripts = run("rpm", "-qp", "--scripts", rpm_file).stdout
    assert "useradd -r -g dfs" in scripts
    assert "systemctl --no-reload preset" in scripts


def test_install_verify_upgrade_erase(rpm_file: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_root(root)
    host_passwd = Path("/etc/passwd").read_bytes()

    rpm_in(root, "-i", "--nodeps", rpm_file)
    assert Path("/etc/passwd").read_bytes() == host_passwd, "%pre changed the host's users"
    user = passwd_entry(root, "dfs")
    assert user is not None, "%pre made no user dfs in the root"
    assert user[5:] == ["/var/lib/dfs", "/sbin/nologin"]
    uid, gid = int(user[2]), gid_of(root, "dfs")
    assert int(user[3]) == gid
    assert calls(root) == [
        "--no-reload preset dfs-meta.service dfs-data.service",
        "daemon-reload",
    ]

    # Files, owners and modes.
    def mode(path: str) -> tuple[int, int, int]:
        info = (root / path).lstat()
        return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid

    assert mode("var/lib/dfs") == (0o750, uid, gid)
    assert mode("var/log/dfs") == (0o750, uid, gid)
    security = json.loads((root / "etc/dfs/security_config.json").read_text())
    assert security["audit_log"] == "/var/log/dfs/audit.log"
    assert (root / "usr/share/licenses/dfs/LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    assert mode("etc/dfs/tls") == (0o750, 0, gid)
    for config in (ROOT / "etc").glob("*.json"):
        assert (root / "etc/dfs" / config.name).read_bytes() == config.read_bytes()
        assert mode(f"etc/dfs/{config.name}") == (0o644, 0, 0)
    for unit in UNIT_NAMES:
        installed = root / "usr/lib/systemd/system" / unit
        assert installed.read_bytes() == (UNITS / unit).read_bytes()
    assert (
        "enable dfs-meta.service"
        in (root / "usr/lib/systemd/system-preset/80-dfs.preset").read_text()
    )
    assert os.readlink(root / "usr/bin/dfs") == f"/{VENV}/bin/dfs"
    assert os.readlink(root / "usr/sbin/dfs-meta-restore") == f"/{VENV}/bin/dfs-meta-restore"
    assert os.readlink(root / "usr/libexec/dfs/twistd") == f"/{VENV}/bin/twistd"
    assert (root / VENV / "bin/dfs").read_text().startswith(f"#!/{VENV}/bin/python")
    assert (root / "usr/share/doc/dfs/deployment.md").exists()
    configs = run("rpm", "--root", root, "--dbpath", "/var/lib/rpm", "-qc", "dfs").stdout.split()
    assert sorted(configs) == sorted(f"/etc/dfs/{c.name}" for c in (ROOT / "etc").glob("*.json"))

    # The installed virtualenv runs (through its link to the host's python3.11, the
    # same interpreter), finds both twistd plugins, and writes nothing: rpm -V stays clean.
    files_before = sorted((root / VENV).rglob("*"))
    twistd = run(root / VENV / "bin/python", root / VENV / "bin/twistd", "--help").stdout
    assert "dfs-meta" in twistd and "dfs-data" in twistd
    # The stripped extension modules still load.
    probe = "import google_crc32c, cryptography.hazmat.bindings._rust, zope.interface, wrapt; "
    probe += "print(google_crc32c.implementation)"
    assert run(root / VENV / "bin/python", "-c", probe).stdout == "c\n"
    assert sorted((root / VENV).rglob("*")) == files_before
    # --nodeps: the root has no packages to meet python3.11 and /bin/sh.
    verify = rpm_in(root, "-V", "--nodeps", "dfs", check=False)
    assert (verify.returncode, verify.stdout) == (0, ""), verify.stdout + verify.stderr

    # Upgrade (the same package again): no preset, but a restart of running daemons.
    rpm_in(root, "-U", "--replacepkgs", "--nodeps", rpm_file)
    assert calls(root) == [
        "daemon-reload",
        "daemon-reload",
        "try-restart dfs-meta.service dfs-data.service dfs-data@*.service",
    ]

    # State and a changed configuration, which erase must keep.
    (root / "var/lib/dfs/meta").mkdir()
    (root / "var/lib/dfs/meta/journal").write_text("state")
    (root / "etc/dfs/tls/ca.crt").write_text("certificate")
    changed = root / "etc/dfs/metaserver_config.json"
    changed.write_text(changed.read_text() + "\n")

    rpm_in(root, "-e", "dfs")
    assert rpm_in(root, "-q", "dfs", check=False).returncode != 0
    assert calls(root) == [
        "--no-reload disable dfs-meta.service dfs-data.service dfs-data@.service",
        "stop dfs-meta.service dfs-data.service dfs-data@*.service",
        "daemon-reload",
    ]
    assert not (root / "opt/venvs/dfs").exists()
    assert not (root / "usr/bin/dfs").is_symlink()
    assert not (root / "usr/libexec/dfs").exists()
    assert not any((root / "usr/lib/systemd/system").glob("dfs*"))
    left = sorted(str(p.relative_to(root)) for p in (root / "etc/dfs").rglob("*"))
    assert left == ["etc/dfs/metaserver_config.json.rpmsave", "etc/dfs/tls", "etc/dfs/tls/ca.crt"]
    assert (root / "var/lib/dfs/meta/journal").read_text() == "state"
    assert passwd_entry(root, "dfs") is not None, "the user dfs is kept, as Fedora does"
    assert Path("/etc/passwd").read_bytes() == host_passwd
