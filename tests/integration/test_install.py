"""``pip install .`` into a fresh virtualenv gives the dfs command and both twistd
plugins, and installs no top-level module named ``shell``. (The editable install the
test suite itself runs under is checked by test_startup's twistd --help test.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_regular_install_ships_command_and_plugins(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]

    # Run from an empty folder so that nothing of the checkout is importable.
    listing = subprocess.run(
        [str(venv / "bin" / "twistd"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert "dfs-meta" in listing.stdout and "dfs-data" in listing.stdout

    version = subprocess.run(
        [str(venv / "bin" / "dfs"), "--version"], capture_output=True, text=True, cwd=tmp_path
    )
    assert version.stdout.startswith("dfs ")

    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "twisted" / "plugins" / "dfs_plugins.py").is_file()
    assert (site / "dfs_shell" / "main.py").is_file()
    assert not (site / "shell").exists()
    # Twisted's own package must not be shadowed by anything we ship.
    twisted_init = (site / "twisted" / "__init__.py").read_text()
    assert "dfs" not in twisted_init.lower()
