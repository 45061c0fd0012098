"""A group of three metaservers as an operator sees it: ``dfs admin meta``."""

from __future__ import annotations

import subprocess
import time

import pytest

pytestmark = pytest.mark.slow


def rows(status: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """NAME -> the words of its row in ``dfs admin meta status``."""
    lines = status.stdout.splitlines()[1:]
    return {words[1]: words for line in lines if len(words := line.split()) == 8}


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_replacing_a_dead_metaserver_with_admin_meta_remove_and_add(make_cluster, tmp_path, dfs):
    cluster = make_cluster(metaservers=3, dataservers=1)
    config = str(cluster.client_config)

    status = dfs("-c", config, "admin", "meta", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    roles = sorted(words[3] for words in rows(status).values())
    assert roles == ["follower", "follower", "leader"], status.stdout
    assert all(words[7] in ("0", "1") for words in rows(status).values()), status.stdout

    dead = next(m for m in cluster.metaservers if rows(status)[m.name][3] == "follower")
    dead_raft = cluster.raft_address(dead)
    cluster.kill_node(dead)
    status = dfs("-c", config, "admin", "meta", "status")
    assert status.returncode == 3
    assert f"{dead.address} " in status.stdout and "unreachable" in status.stdout

    removed = dfs("-c", config, "admin", "meta", "remove", dead_raft)
    assert (removed.returncode, removed.stderr) == (0, ""), removed.stderr
    cluster.forget_metaserver(dead)
    new = cluster.add_metaserver()
    added = dfs("-c", config, "admin", "meta", "add", cluster.raft_address(new))
    assert (added.returncode, added.stderr) == (0, ""), added.stderr
    cluster.start_node(new)
    for ds in cluster.dataservers:  # they report to the new metaserver from their restart
        cluster.stop_node(ds)
        cluster.start_node(ds)
    cluster.wait_ready(timeout=60)

    def caught_up():
        status = dfs("-c", config, "admin", "meta", "status")
        table = rows(status)
        return status.returncode == 0 and new.name in table and table[new.name][7] == "0" and status

    status = wait_for(caught_up, 30, f"{new.name} to catch up")
    assert dead.name not in rows(status)
    group = status.stdout.splitlines()[-1]
    assert cluster.raft_address(new) in group and dead_raft not in group

    # The new group of three loses its leader and goes on, data included.
    (tmp_path / "f.txt").write_text("still here\n")
    put = dfs("-c", config, "put", str(tmp_path / "f.txt"), "/f.txt")
    assert (put.returncode, put.stderr) == (0, "")
    leader = next(m for m in cluster.metaservers if rows(status)[m.name][3] == "leader")
    cluster.kill_node(leader)
    cat = dfs("-c", config, "cat", "/f.txt")
    assert (cat.returncode, cat.stdout) == (0, "still here\n"), cat.stderr


def test_admin_meta_refuses_bad_requests_with_one_line(make_cluster, dfs):
    cluster = make_cluster(metaservers=3, dataservers=0)
    config = str(cluster.client_config)
    member = cluster.raft_address(cluster.metaservers[1])

    again = dfs("-c", config, "admin", "meta", "add", member)
    assert again.returncode == 1
    assert again.stderr.startswith("dfs: admin meta add: ") and "refused" in again.stderr
    assert len(again.stderr.splitlines()) == 1

    nonsense = dfs("-c", config, "admin", "meta", "remove", "not-an-address")
    assert nonsense.returncode == 1
    assert nonsense.stderr.startswith("dfs: admin meta remove: not-an-address")
    assert "Traceback" not in nonsense.stderr
