"""``dfs local up|status|down`` as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dfs.config import load_client_config, load_metaserver_config, load_security_config
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


def _audited_paths(path: Path) -> list[str]:
    """The paths of the Mkdir records in an audit log (none if there is no file yet)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [record["path"] for record in map(json.loads, lines) if record["operation"] == "Mkdir"]


def _leader(cluster: LocalCluster, deadline: float) -> str:
    while time.monotonic() < deadline:
        for meta in cluster.metaservers:
            status = cluster.status(meta)
            if status is not None and (status.get("raft") or {}).get("serving"):
                return meta.name
        time.sleep(0.2)
    raise AssertionError("no metaserver leads")


def test_each_metaserver_of_a_group_writes_its_own_audit_log(folder, dfs):
    up = dfs("local", "up", "--dir", str(folder), "--metaservers", "3", "--dataservers", "1")
    assert up.returncode == 0, up.stderr
    client_config = up.stdout.strip()
    cluster = LocalCluster.open(folder)

    # Each metaserver names an audit log of its own, in its own folder; the
    # dataservers' shared security config is left at the default.
    logs = {}
    for meta in cluster.metaservers:
        config = load_metaserver_config(meta.config_path)
        audit_log = load_security_config(config.security_config).audit_log
        assert audit_log == meta.directory / "audit" / "audit.log"
        logs[meta.name] = audit_log
    assert len(set(logs.values())) == 3

    # The leader records what it does; the followers, which only forward, do not.
    first = _leader(cluster, time.monotonic() + 30)
    assert dfs("-c", client_config, "mkdir", "/first").returncode == 0
    assert _audited_paths(logs[first]) == ["/first"]
    assert all(_audited_paths(logs[name]) == [] for name in logs if name != first)

    # Once the leader is gone, the next one records in its own file.
    cluster.stop_node(cluster.node(first))
    deadline = time.monotonic() + 60
    second = _leader(cluster, deadline)
    # -p: an attempt may have been done, though not answered, during the election.
    while dfs("-c", client_config, "mkdir", "-p", "/second").returncode != 0:
        assert time.monotonic() < deadline, "no metaserver took /second"
        time.sleep(0.5)
    assert second != first
    assert set(_audited_paths(logs[second])) == {"/second"}
    assert _audited_paths(logs[first]) == ["/first"]
