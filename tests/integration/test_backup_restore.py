"""``dfs admin backup`` and the offline restore, on a group of three metaservers
whose every state is destroyed in between."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def restore(config, backup) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfs.metaserver.restore", "--config", str(config), str(backup)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_a_group_rebuilt_from_a_backup_serves_every_file_byte_for_byte(make_cluster, tmp_path, dfs):
    cluster = make_cluster(metaservers=3, dataservers=3)
    config = str(cluster.client_config)
    files = {
        "/a.txt": b"hello\n",
        "/empty": b"",
        "/dir/sub/random.bin": os.urandom(300_000),
        "/dir/second.bin": os.urandom(70_000),
    }
    made = dfs("-c", config, "mkdir", "-p", "/dir/sub")
    assert made.returncode == 0, made.stderr
    for index, (path, content) in enumerate(files.items()):
        local = tmp_path / f"in{index}"
        local.write_bytes(content)
        made = dfs("-c", config, "put", str(local), path)
        assert (made.returncode, made.stderr) == (0, ""), made.stderr

    backup = tmp_path / "namespace.backup"
    taken = dfs("-c", config, "admin", "backup", str(backup))
    assert (taken.returncode, taken.stderr) == (0, ""), taken.stderr
    assert taken.stdout.startswith(f"backup written to {backup}: ")
    assert backup.stat().st_mode & 0o077 == 0
    # Written after the backup: lost by the restore, as documented.
    (tmp_path / "late").write_bytes(b"too late\n")
    late = dfs("-c", config, "put", str(tmp_path / "late"), "/late")
    assert late.returncode == 0, late.stderr

    for meta in cluster.metaservers:
        cluster.stop_node(meta)
        shutil.rmtree(meta.directory / "data")

    # A damaged backup is refused, in one line naming the checksum, and writes nothing.
    damaged = tmp_path / "damaged.backup"
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    refused = restore(cluster.metaservers[0].config_path, damaged)
    assert refused.returncode == 65
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "SHA-256 checksum mismatch" in refused.stderr
    assert not (cluster.metaservers[0].directory / "data" / "raft").exists()

    for meta in cluster.metaservers:
        restored = restore(meta.config_path, backup)
        assert (restored.returncode, restored.stderr) == (0, ""), restored.stderr
        assert "restored" in restored.stdout
    # Restoring twice would mix states: refused.
    again = restore(cluster.metaservers[0].config_path, backup)
    assert again.returncode == 73 and "already holds Raft state" in again.stderr

    for meta in cluster.metaservers:
        cluster.start_node(meta)
    cluster.wait_ready(timeout=60)

    for index, (path, content) in enumerate(files.items()):
        local = tmp_path / f"out{index}"
        got = dfs("-c", config, "get", path, str(local))
        assert (got.returncode, got.stderr) == (0, ""), f"{path}: {got.stderr}"
        assert local.read_bytes() == content, path
    gone = dfs("-c", config, "ls", "/late")
    assert gone.returncode == 1 and "No such file" in gone.stderr
