"""A group of three real metaserver processes under faults, with clients writing.

Every acknowledged operation is recorded; after the faults the namespace must hold
every one of them, and nothing that was never asked for.
"""

from __future__ import annotations

import os
import random
import time

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster

pytestmark = pytest.mark.slow

KILL_ALL_ROUNDS = int(os.environ.get("DFS_KILL_ALL_ROUNDS", "30"))


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


@attrs.define
class Ledger:
    """What the clients were told: acknowledged, or failed (outcome unknown)."""

    acked: set[str] = attrs.field(factory=set)
    unknown: set[str] = attrs.field(factory=set)
    errors: list[str] = attrs.field(factory=list)


@attrs.define
class Workload:
    clients: list[DFSClient]
    ledger: Ledger
    running: bool = True
    done: list[Deferred] = attrs.field(factory=list)

    def start(self) -> None:
        for number, client in enumerate(self.clients):
            self.done.append(Deferred.fromCoroutine(self.writer(client, f"c{number}")))

    async def writer(self, client: DFSClient, prefix: str) -> None:
        index = 0
        while self.running:
            path = f"/{prefix}-{index}"
            index += 1
            try:
                await client.mkdir(path)
            except Exception as error:
                self.ledger.unknown.add(path)
                self.ledger.errors.append(f"{path}: {type(error).__name__}: {error}")
            else:
                self.ledger.acked.add(path)

    async def stop(self) -> None:
        self.running = False
        await gatherResults(self.done)


@attrs.define
class ReadChecker:
    """One client adds /seq/0, /seq/1, ... one at a time; another lists /seq again and
    again. Every listing must hold everything acknowledged before it was asked for,
    and never fewer entries than the listing before: reads do not go back in time,
    whichever metaserver leads."""

    writer: DFSClient
    reader: DFSClient
    acknowledged: int = 0
    reads: int = 0
    running: bool = True
    problems: list[str] = attrs.field(factory=list)
    done: list[Deferred] = attrs.field(factory=list)

    async def start(self) -> None:
        await self.writer.mkdir("/seq")
        self.done = [
            Deferred.fromCoroutine(self.write()),
            Deferred.fromCoroutine(self.read()),
        ]

    async def write(self) -> None:
        while self.running:
            await self.writer.mkdir(f"/seq/{self.acknowledged}")
            self.acknowledged += 1

    async def read(self) -> None:
        seen = 0
        while self.running:
            before = self.acknowledged
            count = len(await self.reader.listdir("/seq"))
            self.reads += 1
            if count < before:
                self.problems.append(f"listed {count} after {before} were acknowledged")
            if count < seen:
                self.problems.append(f"listed {count} after listing {seen}")
            seen = max(seen, count)

    async def stop(self) -> None:
        self.running = False
        await gatherResults(self.done)
        assert self.reads > 10 and self.acknowledged > 10
        assert not self.problems, self.problems[:5]


async def wait_for_leader(cluster: LocalCluster, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for meta in cluster.metaservers:
            status = cluster.status(meta, timeout=0.5)
            if status and (status.get("raft") or {}).get("serving"):
                return meta.name
        await sleep(0.05)
    raise AssertionError(f"no metaserver serves after {timeout}s")


async def connect(cluster: LocalCluster) -> DFSClient:
    return await DFSClient.connect(reactor, load_client_config(cluster.client_config))


async def check_namespace(cluster: LocalCluster, ledger: Ledger) -> set[str]:
    client = await connect(cluster)
    try:
        present = {entry.path for entry in await client.listdir("/")}
    finally:
        client.close()
    lost = ledger.acked - present
    assert not lost, f"{len(lost)} acknowledged mkdirs lost, e.g. {sorted(lost)[:5]}"
    invented = present - ledger.acked - ledger.unknown
    assert not invented, f"directories nobody asked for: {sorted(invented)[:5]}"
    return present


@pytest_twisted.ensureDeferred
async def test_killing_every_metaserver_at_random_moments_loses_nothing(make_cluster):
    cluster = make_cluster(
        metaservers=3,
        dataservers=3,
        # Compaction every 50 entries: kills land before, during and after snapshots.
        metaserver_options={"raft_snapshot_entries": 50},
    )
    rng = random.Random(2026)
    files = {f"/file-{index}": os.urandom(300_000 + index) for index in range(4)}
    writer = await connect(cluster)
    for path, data in files.items():
        await writer.write_file(path, data)
    writer.close()
    ledger = Ledger(acked=set(files))
    workload = Workload([await connect(cluster) for _ in range(3)], ledger)
    workload.start()
    try:
        for _ in range(KILL_ALL_ROUNDS):
            await sleep(rng.uniform(0.2, 1.2))
            for meta in cluster.metaservers:
                cluster.kill_node(meta)
            for meta in cluster.metaservers:
                cluster.start_node(meta)
            await wait_for_leader(cluster)
        # The group serves again after the last round: the writers go on.
        acked_before_end = len(ledger.acked)
        deadline = time.monotonic() + 30
        while len(ledger.acked) <= acked_before_end + 10:
            assert time.monotonic() < deadline, "the writers did not go on after the last round"
            await sleep(0.05)
    finally:
        await workload.stop()
        for client in workload.clients:
            client.close()
    present = await check_namespace(cluster, ledger)
    # The dataservers found the restarted metaservers again: every file reads back.
    reader = await connect(cluster)
    try:
        for path, data in files.items():
            assert await reader.read_file(path) == data, path
    finally:
        reader.close()
    print(
        f"{KILL_ALL_ROUNDS} rounds of kill -9 of every metaserver: {len(ledger.acked)} "
        f"acknowledged mkdirs all present ({len(present)} directories, "
        f"{len(ledger.unknown)} unknown outcomes)"
    )
    for meta in cluster.metaservers:
        assert (meta.directory / "data" / "raft" / "raft.dump").exists()


def raft_status(cluster: LocalCluster) -> dict[str, dict]:
    return {
        meta.name: ((cluster.status(meta, timeout=0.5) or {}).get("raft") or {})
        for meta in cluster.metaservers
    }


async def converged(cluster: LocalCluster, timeout: float = 30.0) -> dict[str, dict]:
    """Wait until one metaserver serves and every one has applied the same entries
    and holds the same number of namespace entries."""
    deadline = time.monotonic() + timeout
    while True:
        states = raft_status(cluster)
        serving = [name for name, state in states.items() if state.get("serving")]
        applied = {state.get("last_applied") for state in states.values()}
        entries = {state.get("namespace_entries") for state in states.values()}
        if len(serving) == 1 and len(applied) == 1 and len(entries) == 1 and None not in applied:
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"the group did not converge: {states}")
        await sleep(0.05)


async def leader_of(cluster: LocalCluster, timeout: float = 15.0):
    """The metaserver that serves, waiting for one (an election, a lease renewed)."""
    deadline = time.monotonic() + timeout
    while True:
        states = raft_status(cluster)
        for meta in cluster.metaservers:
            if states[meta.name].get("serving"):
                return meta
        if time.monotonic() > deadline:
            raise AssertionError(f"no leader after {timeout}s: {states}")
        await sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_a_killed_leader_is_replaced_within_seconds_and_nothing_acknowledged_is_lost(
    make_cluster,
):
    cluster = make_cluster(metaservers=3, dataservers=0)
    ledger = Ledger()
    workload = Workload([await connect(cluster) for _ in range(3)], ledger)
    prober = await connect(cluster)
    workload.start()
    checker = ReadChecker(await connect(cluster), await connect(cluster))
    await checker.start()
    ledger.acked.add("/seq")
    failovers = []
    try:
        for kill in range(3):
            await sleep(0.5)
            leader = await leader_of(cluster)
            await prober.mkdir(f"/probe-warm-{kill}")
            ledger.acked.add(f"/probe-warm-{kill}")
            cluster.kill_node(leader)
            killed = time.monotonic()
            await prober.mkdir(f"/probe-{kill}")
            failovers.append(time.monotonic() - killed)
            ledger.acked.add(f"/probe-{kill}")
            assert await leader_of(cluster) is not leader
            cluster.start_node(leader)  # it comes back as a follower and catches up
            await converged(cluster)
    finally:
        await workload.stop()
        await checker.stop()
        for client in [*workload.clients, checker.writer, checker.reader]:
            client.close()
        prober.close()
    print("seconds from kill -9 of the leader to a write accepted:", failovers)
    assert max(failovers) < 5.0
    await check_namespace(cluster, ledger)
    await converged(cluster)


@pytest_twisted.ensureDeferred
async def test_a_follower_catches_up_from_the_log_and_from_a_snapshot(make_cluster):
    cluster = make_cluster(
        metaservers=3, dataservers=0, metaserver_options={"raft_snapshot_entries": 50}
    )
    client = await connect(cluster)
    try:
        for writes in (10, 400):  # a few entries: from the log; many: past the snapshot
            current = await leader_of(cluster)
            follower = next(m for m in cluster.metaservers if m is not current)
            cluster.kill_node(follower)
            for index in range(writes):
                await client.mkdir(f"/{follower.name}-{writes}-{index}")
            leader = await leader_of(cluster)
            if writes > 50:
                # The leader no longer has the entries the follower missed: only its
                # snapshot can bring the follower up to date.
                assert raft_status(cluster)[leader.name]["log_entries"] < writes
            cluster.start_node(follower)
            states = await converged(cluster)
            assert states[follower.name]["last_applied"] == states[leader.name]["last_applied"]
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_paused_leader_comes_back_as_a_follower_and_nothing_diverges(make_cluster):
    import signal

    cluster = make_cluster(metaservers=3, dataservers=0)
    ledger = Ledger()
    workload = Workload([await connect(cluster) for _ in range(3)], ledger)
    workload.start()
    checker = ReadChecker(await connect(cluster), await connect(cluster))
    await checker.start()
    ledger.acked.add("/seq")
    try:
        await sleep(0.5)
        paused = await leader_of(cluster)
        cluster.signal_node(paused, signal.SIGSTOP)
        # Longer than any election timeout: the others elect a leader and go on.
        await sleep(3.0)
        assert await leader_of(cluster) is not paused
        cluster.signal_node(paused, signal.SIGCONT)
        await sleep(2.0)
    finally:
        await workload.stop()
        await checker.stop()
        for client in [*workload.clients, checker.writer, checker.reader]:
            client.close()
    states = await converged(cluster)
    assert sum(1 for state in states.values() if state.get("role") == "leader") == 1
    await check_namespace(cluster, ledger)
