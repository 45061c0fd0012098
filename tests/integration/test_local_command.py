"""``dfs local up|status|down`` as a user runs them: real processes, real ports."""

from __future__ import annotations

import pytest

from dfs.config import load_client_config
from dfs.localcluster import LocalCluster


@pytest.fixture
def folder(tmp_path):
    directory = tmp_path / "local"
    yield directory
    # Whatever the test did, stop every process it started.
    try:
        LocalCluster.open(directory).stop()
    except Exception:
        pass


def test_up_status_up_again_down(folder, tmp_path, dfs):
    up = dfs("local", "up", "--dir", str(folder), "--dataservers", "2")
    assert up.returncode == 0, up.stderr
    client_config = up.stdout.strip()
    config = load_client_config(client_config)
    assert len(config.metaservers) == 1

    # The cluster takes files as soon as up has returned.
    (tmp_path / "hello.txt").write_text("hello, dfs\n")
    put = dfs("-c", client_config, "put", str(tmp_path / "hello.txt"), "/hello.txt")
    assert (put.returncode, put.stderr) == (0, "")
    assert dfs("-c", client_config, "cat", "/hello.txt").stdout == "hello, dfs\n"

    cluster = LocalCluster.open(folder)
    pids = cluster.running()
    assert set(pids) == {"meta1", "ds1", "ds2"}

    status = dfs("local", "status", "--dir", str(folder))
    assert status.returncode == 0, status.stdout + status.stderr
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[3:]}
    assert lines["meta1"].endswith("running, leader")
    assert lines["ds1"].endswith("running, alive") and lines["ds2"].endswith("running, alive")

    again = dfs("local", "up", "--dir", str(folder))
    assert again.returncode == 0
    assert "already running" in again.stderr
    assert again.stdout.strip() == client_config
    assert cluster.running() == pids

    down = dfs("local", "down", "--dir", str(folder))
    assert down.returncode == 0
    assert "stopped ds1, ds2, meta1" in down.stdout
    assert cluster.running() == {}
    for pid in pids.values():
        assert not _alive(pid)

    stopped = dfs("local", "status", "--dir", str(folder))
    assert stopped.returncode == 3
    assert stopped.stdout.count("stopped") == 3


def test_up_again_after_down_restarts_the_same_cluster(folder, dfs):
    assert dfs("local", "up", "--dir", str(folder), "--dataservers", "1").returncode == 0
    assert dfs("local", "down", "--dir", str(folder)).returncode == 0
    again = dfs("local", "up", "--dir", str(folder))
    assert again.returncode == 0, again.stderr
    assert set(LocalCluster.open(folder).running()) == {"meta1", "ds1"}


def test_status_and_down_of_a_folder_without_a_cluster_say_so(tmp_path, dfs):
    for command in ("status", "down"):
        result = dfs("local", command, "--dir", str(tmp_path / "nothing"))
        assert result.returncode == 1
        assert (
            result.stderr.strip()
            == f"dfs: local {command}: no local cluster in {tmp_path / 'nothing'}"
        )


def test_bad_dataserver_count_is_refused(tmp_path, dfs):
    result = dfs("local", "up", "--dir", str(tmp_path / "x"), "--dataservers", "0")
    assert result.returncode == 1
    assert "--dataservers must be at least 1" in result.stderr
    assert not (tmp_path / "x").exists()


def _alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_up_with_a_group_of_three_metaservers(folder, tmp_path, dfs):
    up = dfs("local", "up", "--dir", str(folder), "--metaservers", "3", "--dataservers", "1")
    assert up.returncode == 0, up.stderr
    config = load_client_config(up.stdout.strip())
    assert len(config.metaservers) == 3
    status = dfs("local", "status", "--dir", str(folder))
    roles = sorted(line.split(", ")[-1] for line in status.stdout.splitlines() if "meta" in line)
    assert roles == ["follower", "follower", "leader"], status.stdout
    (tmp_path / "a.txt").write_text("group\n")
    put = dfs("-c", up.stdout.strip(), "put", str(tmp_path / "a.txt"), "/a.txt")
    assert (put.returncode, put.stderr) == (0, "")

    wrong = dfs("local", "up", "--dir", str(tmp_path / "other"), "--metaservers", "2")
    assert wrong.returncode == 2
    assert "invalid choice: 2" in wrong.stderr
