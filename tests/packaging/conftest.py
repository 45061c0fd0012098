"""The Debian package, built once per test session with packaging/build.sh.

Building fills a virtualenv from PyPI and takes a minute or two, so every test of
tests/packaging shares one .deb. A missing tool fails the test rather than skipping
it: .ci/run installs dpkg-dev, debhelper and lintian.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "packaging" / "build.sh"


def require(*tools: str) -> None:
    """Fail, never skip, when a tool the packaging tests need is missing."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: .ci/run installs them")


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The .deb built from this checkout."""
    require("dpkg-buildpackage", "dh", "python3.11")
    out = tmp_path_factory.mktemp("deb")
    done = subprocess.run(
        ["bash", str(BUILD), "deb", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (package,) = out.glob("dfs_*.deb")
    yield package
    shutil.rmtree(out, ignore_errors=True)


MIRROR = os.environ.get("DFS_DEBIAN_MIRROR", "http://deb.debian.org/debian")


@pytest.fixture(scope="session")
def debian_root() -> Iterator[Path]:
    """A Debian 12 minbase root, made once with debootstrap and shared: systemd and
    dbus to boot it (test_boot.py), python3-venv for an image built without network
    (test_docker.py), and the base piuparts copies (test_piuparts.py). Tests copy it;
    none changes it."""
    require("debootstrap")
    # Not under /tmp: a tmpfs there may be too small or mounted noexec.
    folder = Path(tempfile.mkdtemp(prefix="dfs-debian-", dir="/var/tmp"))
    target = folder / "root"
    done = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,python3-venv",
            "bookworm",
            str(target),
            MIRROR,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield target
    shutil.rmtree(folder, ignore_errors=True)
