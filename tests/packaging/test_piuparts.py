"""piuparts on the Debian package: install and purge, then install an older version
from an apt repository, upgrade it to this one and purge, each in a copy of the
shared Debian 12 root (conftest.py), with adequate's checks and no file left behind.

The older version is this package repacked under a lower version number
(``VERSION~piuparts0``): it takes the maintainer scripts through a real upgrade
(preinst upgrade, the old prerm and postrm, postinst configure with the old
version), which is what the upgrade test checks; the files are the same.

Needs root, piuparts, adequate and the Debian archive (.ci/run installs both tools).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import MIRROR, require

OLDER = "~piuparts0"


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=cwd, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, f"{command}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under /tmp: piuparts copies the whole root here, and a tmpfs may be small.
    folder = Path(tempfile.mkdtemp(prefix="dfs-piuparts-", dir="/var/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def older_repository(deb: Path, workdir: Path) -> tuple[Path, str]:
    """An apt repository (a folder with a Packages index) holding ``deb`` repacked
    under a lower version; returns it and that version."""
    unpacked = workdir / "unpacked"
    run("dpkg-deb", "-R", str(deb), str(unpacked))
    control = unpacked / "DEBIAN" / "control"
    version = re.search(r"^Version: (\S+)$", control.read_text(), re.MULTILINE)
    assert version is not None
    older = version.group(1) + OLDER
    control.write_text(control.read_text().replace(version.group(0), f"Version: {older}"))
    repository = workdir / "repository"
    repository.mkdir()
    run("dpkg-deb", "-Zgzip", "-b", str(unpacked), str(repository / f"dfs_{older}_amd64.deb"))
    shutil.rmtree(unpacked)
    index = run("dpkg-scanpackages", ".", cwd=repository).stdout
    (repository / "Packages").write_text(index)
    return repository, older


def test_piuparts_install_upgrade_purge(deb: Path, debian_root: Path, workdir: Path) -> None:
    require("piuparts", "adequate", "dpkg-scanpackages")
    repository, older = older_repository(deb, workdir)
    started = time.monotonic()
    done = subprocess.run(
        [
            "piuparts",
            f"--existing-chroot={debian_root}",
            "--distribution=bookworm",
            f"--mirror={MIRROR}",
            f"--extra-repo=deb [trusted=yes] file://{repository} ./",
            f"--bindmount={repository}",
            f"--tmpdir={workdir}",
            "--fail-if-inadequate",
            "--fail-on-broken-symlinks",
            str(deb),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - started
    log = done.stdout + done.stderr
    failures = [line for line in log.splitlines() if " ERROR: " in line or "FAIL:" in line]
    assert done.returncode == 0 and not failures, "\n".join(failures) or log[-5000:]
    assert "PASS: Installation and purging test." in log
    assert "PASS: Installation, upgrade and purging tests." in log
    # The upgrade test really went from the repository's version to this package.
    version = older.removesuffix(OLDER)
    assert f"Setting up dfs ({older})" in log
    assert f"Unpacking dfs ({version}) over ({older})" in log
    assert "Running adequate" in log
    print(
        f"REPORT piuparts: install/purge and upgrade {older} -> {version}/purge "
        f"passed in {took:.0f} s"
    )
