"""The leader keeps replicas whole: repairs, removals, drains, safe mode, balance.

Real twistd processes on loopback; each test ends with fsck healthy and the bytes
read back identical.
"""

from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import reactor

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster
from dfs.protocol.errors import SafeMode
from dfs.protocol.records import Location

MiB = 1024 * 1024
CHUNK = MiB


async def connect(cluster: LocalCluster) -> DFSClient:
    return await DFSClient.connect(reactor, load_client_config(cluster.client_config))


async def replica_counts(client: DFSClient, path: str) -> list[int]:
    reader = await client.open(path)
    reader.close()
    return [len(chunk.locations) for chunk in reader._chunks]


async def healthy(client: DFSClient, path: str = "/") -> bool:
    return (await client.fsck(path)).healthy


def held_by(node) -> set[str]:
    """Names of the complete replica files on a dataserver's disk."""
    chunks = node.directory / "data" / "chunks"
    return {p.name for p in chunks.glob("*/*.chunk")}


@pytest_twisted.ensureDeferred
async def test_a_dead_dataserver_s_chunks_are_copied_elsewhere(make_cluster, poll):
    cluster = make_cluster(dataservers=4, replication={"chunk_size": CHUNK})
    client = await connect(cluster)
    data = os.urandom(6 * CHUNK + 123)
    await client.write_file("/f", data)
    assert await healthy(client)
    victim = cluster.node("ds2")
    cluster.kill_node(victim)

    async def repaired() -> bool:
        report = await client.fsck("/")
        return report.summary["dataservers_alive"] == 3 and report.healthy

    await poll(repaired, timeout=30, what="every chunk back to 3 live replicas")
    assert await replica_counts(client, "/f") == [3] * 7
    assert await client.read_file("/f") == data
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_returning_dataserver_loses_its_surplus_replicas(make_cluster, poll):
    cluster = make_cluster(dataservers=4, replication={"chunk_size": CHUNK})
    client = await connect(cluster)
    data = os.urandom(4 * CHUNK)
    await client.write_file("/f", data)
    paused = cluster.node("ds3")
    before = held_by(paused)
    assert before, "ds3 should hold replicas of a 4-chunk file with 3 replicas on 4 dataservers"
    cluster.signal_node(paused, signal.SIGSTOP)
    try:

        async def dead_and_repaired() -> bool:
            report = await client.fsck("/")
            return report.summary["dataservers_dead"] == 1 and report.healthy

        await poll(dead_and_repaired, timeout=30, what="repaired without the paused dataserver")
    finally:
        cluster.signal_node(paused, signal.SIGCONT)

    # Back, it registers and reports: its replicas are surplus now, and go. fsck is
    # healthy as soon as it is back (a surplus replica is no problem): the counts tell
    # when they went.
    async def settled() -> bool:
        report = await client.fsck("/")
        alive = report.summary["dataservers_alive"] == 4 and report.healthy
        return alive and await replica_counts(client, "/f") == [3] * 4

    await poll(settled, timeout=30, what="surplus replicas removed after the return")
    assert await client.read_file("/f") == data
    client.close()


@pytest_twisted.ensureDeferred
async def test_setrep_adds_and_removes_replicas(make_cluster, poll):
    cluster = make_cluster(dataservers=4, replication={"chunk_size": CHUNK})
    client = await connect(cluster)
    data = os.urandom(3 * CHUNK)
    await client.write_file("/f", data)
    await client.set_replication("/f", 4)
    report = await client.fsck("/")
    assert not report.healthy
    assert {p.problem for p in report.problems} == {"under-replicated"}

    async def counts_are(n: int) -> bool:
        return await healthy(client) and await replica_counts(client, "/f") == [n] * 3

    await poll(lambda: counts_are(4), timeout=30, what="a fourth replica of every chunk")
    await client.set_replication("/f", 2)
    await poll(lambda: counts_are(2), timeout=30, what="down to two replicas")
    assert await client.read_file("/f") == data
    client.close()


@pytest_twisted.ensureDeferred
async def test_decommission_drains_a_dataserver_and_recommission_undoes_it(make_cluster, poll):
    cluster = make_cluster(dataservers=4, replication={"chunk_size": CHUNK})
    client = await connect(cluster)
    data = os.urandom(5 * CHUNK)
    await client.write_file("/f", data)
    await client.decommission("ds1")

    async def state_of(name: str) -> str:
        return {d["name"]: d["state"] for d in await client.dataservers()}[name]

    await poll(lambda: _equals(state_of("ds1"), "decommissioned"), timeout=30, what="ds1 drained")
    assert await healthy(client)
    # Every chunk has its 3 replicas without ds1, and nothing new goes to it.
    reader = await client.open("/f")
    reader.close()
    ds1 = Location.decode(cluster.node("ds1").address)
    assert all(len([a for a in c.locations if a != ds1]) >= 3 for c in reader._chunks)
    await client.write_file("/g", os.urandom(3 * CHUNK))
    reader = await client.open("/g")
    reader.close()
    assert all(ds1 not in c.locations for c in reader._chunks)
    # Switching it off now loses nothing.
    cluster.stop_node(cluster.node("ds1"))
    assert await client.read_file("/f") == data
    cluster.start_node(cluster.node("ds1"))
    await client.recommission("ds1")
    await poll(lambda: _equals(state_of("ds1"), "alive"), timeout=30, what="ds1 back in service")
    await poll(lambda: healthy(client), timeout=30, what="surplus replicas removed")
    client.close()


async def _state(client: DFSClient, name: str) -> str:
    return {d["name"]: d["state"] for d in await client.dataservers()}[name]


async def _equals(value, expected) -> bool:
    return (await value) == expected


@pytest_twisted.ensureDeferred
async def test_safe_mode_refuses_changes_until_left(cluster, dfs):
    client = await connect(cluster)
    await client.mkdir("/before")
    state = await client.safemode("enter")
    assert state["on"] and state["manual"]
    # An administrator's safe mode fails at once, not after the request timeout.
    with pytest.raises(SafeMode) as refused:
        await client.mkdir("/during")
    assert refused.value.manual
    result = dfs("-c", str(cluster.client_config), "mkdir", "/during")
    assert result.returncode == 1
    assert "dfs: mkdir: /during: " in result.stderr and "safe mode" in result.stderr
    # Reads go on.
    assert [e.name for e in await client.listdir("/")] == ["before"]
    result = dfs("-c", str(cluster.client_config), "admin", "safemode", "get")
    assert result.returncode == 0 and "Safe mode is ON" in result.stdout
    state = await client.safemode("leave")
    assert not state["on"]
    await client.mkdir("/after")
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_restarted_metaserver_waits_for_chunk_reports(make_cluster, poll):
    cluster = make_cluster(dataservers=3, replication={"chunk_size": CHUNK})
    client = await connect(cluster)
    data = os.urandom(2 * CHUNK)
    await client.write_file("/f", data)
    client.close()
    for node in cluster.dataservers:
        cluster.stop_node(node)
    meta = cluster.metaservers[0]
    cluster.stop_node(meta)
    cluster.start_node(meta)
    await poll(lambda: (cluster.status(meta) or {}).get("namespace_ready"), what="metaserver up")
    client = await connect(cluster)
    state = await client.safemode("get")
    assert state["on"] and not state["manual"]
    assert (state["reported_chunks"], state["total_chunks"]) == (0, 2)
    for node in cluster.dataservers:
        cluster.start_node(node)
    # The client waits out the automatic safe mode rather than failing.
    await client.mkdir("/after-restart")
    assert not (await client.safemode("get"))["on"]
    assert await client.read_file("/f") == data
    client.close()


@pytest_twisted.ensureDeferred
async def test_orphan_replicas_are_collected_after_the_grace_period(make_cluster, poll):
    cluster = make_cluster(dataservers=3, replication={"chunk_size": CHUNK, "orphan_grace": 1.0})
    client = await connect(cluster)
    await client.write_file("/f", os.urandom(2 * CHUNK))
    away = cluster.node("ds3")
    cluster.stop_node(away)
    await poll(lambda: _equals(_state(client, "ds3"), "dead"), timeout=30, what="ds3 declared dead")
    # Deleted while ds3 is away: its replicas become orphans when it returns.
    await client.delete("/f")
    assert held_by(away)
    cluster.start_node(away)
    await poll(lambda: not held_by(away), timeout=30, what="orphans deleted on ds3")
    assert await healthy(client)
    client.close()


@pytest_twisted.ensureDeferred
async def test_the_balancer_evens_out_new_dataservers(make_cluster, poll, dfs):
    cluster = make_cluster(
        dataservers=3,
        replication={"chunk_size": CHUNK, "default_replication": 2},
        dataserver_options={"capacity": 64 * MiB},
    )
    client = await connect(cluster)
    files = {f"/f{i}": os.urandom(4 * CHUNK) for i in range(6)}
    for path, data in files.items():
        await client.write_file(path, data)
    for _ in range(2):
        cluster.start_node(cluster.add_dataserver())
    await poll(lambda: _count_alive(client, 5), timeout=30, what="the new dataservers registered")
    state = await client.balancer("start", threshold=5.0)
    assert state["running"] and state["spread"] > 5.0

    async def balanced() -> bool:
        status = await client.balancer("status")
        return not status["running"] and status["balanced"]

    await poll(balanced, timeout=90, what="every dataserver within 5% of the mean")
    status = await client.balancer("status")
    assert status["moved_chunks"] > 0
    await poll(lambda: healthy(client), timeout=30, what="fsck healthy after balancing")
    for path, data in files.items():
        assert await client.read_file(path) == data
    result = dfs("-c", str(cluster.client_config), "admin", "fsck", "/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is HEALTHY" in result.stdout
    client.close()


async def _count_alive(client: DFSClient, count: int) -> bool:
    return sum(d["state"] == "alive" for d in await client.dataservers()) == count


@pytest_twisted.ensureDeferred
async def test_fsck_command_lists_problems_and_exits_1_until_healthy(cluster, dfs, poll):
    client = await connect(cluster)
    await client.write_file("/f", os.urandom(100_000))
    # Three dataservers cannot hold four replicas: under-replicated for good.
    await client.set_replication("/f", 4)
    config = str(cluster.client_config)
    result = dfs("-c", config, "admin", "fsck", "/")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "/f: chunk 0" in result.stdout and "under-replicated: 3 of 4" in result.stdout
    assert "The filesystem under path '/' is UNHEALTHY" in result.stdout
    result = dfs("-c", config, "admin", "fsck", "/nowhere")
    assert result.returncode == 1
    assert result.stderr.startswith("dfs: admin fsck: /nowhere: ")
    await client.set_replication("/f", 3)
    result = dfs("-c", config, "admin", "fsck", "/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is HEALTHY" in result.stdout
    client.close()


def _leader(cluster: LocalCluster):
    for meta in cluster.metaservers:
        status = cluster.status(meta) or {}
        if (status.get("raft") or {}).get("role") == "leader":
            return meta
    return None


@pytest_twisted.ensureDeferred
async def test_a_new_leader_deletes_what_a_killed_leader_freed(make_cluster, poll, log_contains):
    # orphan_grace is far away: only the replicated record of the freed chunks can
    # have the new leader delete them.
    cluster = make_cluster(
        metaservers=3, dataservers=3, replication={"chunk_size": CHUNK, "orphan_grace": 3600.0}
    )
    client = await connect(cluster)
    await client.mkdir("/many")
    for number in range(200):
        await client.write_file(f"/many/f{number}", b"small %d\n" % number)
    await poll(
        lambda: all(len(held_by(ds)) == 200 for ds in cluster.dataservers),
        timeout=30,
        what="200 replicas on every dataserver",
    )
    leader = _leader(cluster)
    assert leader is not None
    # Paused (for less than dataserver_dead_after), the dataservers cannot take the
    # old leader's deletion orders before it dies.
    for ds in cluster.dataservers:
        cluster.signal_node(ds, signal.SIGSTOP)
    try:
        await client.delete("/many", recursive=True)
        cluster.kill_node(leader)
    finally:
        for ds in cluster.dataservers:
            cluster.signal_node(ds, signal.SIGCONT)
    assert all(len(held_by(ds)) == 200 for ds in cluster.dataservers)
    client.close()

    def new_leader_done() -> bool:
        new = _leader(cluster)
        return (
            new is not None
            and new is not leader
            and not any(held_by(ds) for ds in cluster.dataservers)
            and log_contains(new.logfile, "freed chunks have no replica left: forgotten")
        )

    await poll(new_leader_done, timeout=60, what="a new leader deleting every freed replica")
    client = await connect(cluster)
    assert await client.listdir("/") == []
    client.close()
