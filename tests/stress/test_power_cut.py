"""Power cuts on a whole metaserver group, simulated: nothing acknowledged is lost.

Three Raft nodes (the metaserver's RaftService over the real namespace, real TCP on
127.0.0.1, PySyncObj's forked snapshots) run in this process, each on a
PowerCutFileLayer. Writers keep mkdir requests in flight and note every one that
is acknowledged; at a random moment all three nodes stop as a power cut would
stop them, every byte not fsynced is forgotten, and the group starts again from
what is left. Compaction is forced to happen often, so cuts land before, during
and after snapshots and journal trims. After each restart every acknowledged
directory must be there, and every node applies the same entries (every 25 cuts,
each node's whole namespace is compared with the leader's). Between rounds the
nodes crash without a power cut, as kill -9 would.
"""

from __future__ import annotations

import faulthandler
import os
import random
import sys
import threading
import time
from pathlib import Path

from dfs.localcluster import free_ports
from dfs.metaserver import namespace as ns
from dfs.metaserver import operations as ops
from dfs.metaserver.powercut import PowerCutFileLayer
from dfs.metaserver.raft import NamespaceLog, RaftService, RaftSettings

CUTS = int(os.environ.get("DFS_POWER_CUTS", "200"))
CALLER = ops.Caller(user="dfs", superuser=True)


class DirectReactor:
    """Runs what the Raft thread hands over right there: enough for RaftService."""

    @staticmethod
    def callFromThread(function, *arguments, **keywords):
        function(*arguments, **keywords)


class Group:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.ports = free_ports(size)
        self.addresses = [f"127.0.0.1:{port}" for port in self.ports]
        self.directories = [root / f"meta{index}" for index in range(size)]
        for directory in self.directories:
            directory.mkdir()
        self.layers = [PowerCutFileLayer(directory) for directory in self.directories]
        self.nodes: list[RaftService] = []

    def start(self) -> None:
        self.nodes = []
        for index, address in enumerate(self.addresses):
            settings = RaftSettings(
                self_address=address,
                partners=tuple(a for a in self.addresses if a != address),
                data_dir=self.directories[index],
                password="power-cut",
                listen=f"127.0.0.1:{7000 + index}",
                compaction_entries=150,
                compaction_seconds=2.0,
                election_timeout=(0.15, 0.3),
                heartbeat=0.03,
                layer=self.layers[index],
            )
            state = NamespaceLog(ns.Namespace(root_owner="dfs"))
            node = RaftService(DirectReactor(), settings, state)
            node.startService()
            self.nodes.append(node)

    def leader(self, timeout: float = 20.0) -> RaftService:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            serving = [node for node in self.nodes if node.serving]
            if len(serving) == 1:
                return serving[0]
            time.sleep(0.01)
        raise AssertionError(f"no leader within {timeout}s: {[n.status() for n in self.nodes]}")

    def cut(self) -> None:
        for node in self.nodes:
            node.halt()
        for layer in self.layers:
            layer.cut()

    def crash(self) -> None:
        for node in self.nodes:
            node.halt()

    def stop(self) -> None:
        for node in self.nodes:
            if node.running:
                node.stopService()


class Writers:
    """Keeps ``depth`` mkdirs in flight on the leader and records what is acknowledged."""

    def __init__(self, leader: RaftService, first: int, acked: set[str], depth: int = 40):
        self.leader = leader
        self.next = first
        self.acked = acked
        self.depth = depth
        self.in_flight = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            with self.lock:
                room = self.depth - self.in_flight
            for _ in range(room):
                self.submit()
            time.sleep(0.002)

    def submit(self) -> None:
        path = f"/d{self.next}"
        self.next += 1
        with self.lock:
            self.in_flight += 1

        def answered(result, path=path):
            with self.lock:
                self.in_flight -= 1
                if isinstance(result, ops.Ok):
                    self.acked.add(path)

        def failed(failure):
            with self.lock:
                self.in_flight -= 1

        operation = ops.Mkdir(path, 0o755, False, caller=CALLER, now=0.0, request_id=path)
        self.leader.submit(operation).addCallbacks(answered, failed)


def directories(node: RaftService) -> set[str]:
    def query(namespace):
        return ops.Ok({entry.path for entry in namespace.list("/").value})

    return node.namespace.read(query).value


def progress(node: RaftService) -> tuple[int, int]:
    status = node.status()
    return status["last_applied"], status["namespace_entries"]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_power_cuts_of_the_whole_group_lose_no_acknowledged_change(tmp_path):
    rng = random.Random(20261126)
    group = Group(tmp_path)
    acked: set[str] = set()
    next_name = 0
    try:
        for cut in range(CUTS):
            group.start()
            leader = group.leader()
            writers = Writers(leader, next_name, acked)
            writers.thread.start()
            time.sleep(rng.uniform(0.02, 0.4))  # the cut lands at a random moment
            group.cut()
            writers.stopped.set()
            writers.thread.join()
            next_name = writers.next

            group.start()
            leader = group.leader()
            present = directories(leader)
            lost = acked - present
            assert not lost, f"cut {cut}: {len(lost)} acknowledged mkdirs lost: {sorted(lost)[:5]}"
            # Every node ends up holding the same namespace: first the same count of
            # applied entries (cheap to poll), then the very same directories.
            try:
                wait_for(
                    lambda: len({progress(node) for node in group.nodes}) == 1,
                    20,
                    f"every node to apply the same entries after cut {cut}",
                )
            except AssertionError:
                for node in group.nodes:
                    print(node.status())
                faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
                raise
            if cut % 25 == 24 or cut == CUTS - 1:  # listing every node is slow: now and then
                for node in group.nodes:
                    assert directories(node) == present, f"cut {cut}: {node.status()}"
            group.crash()  # the next round starts from a crash without a power cut
    finally:
        group.stop()
    print(f"{CUTS} power cuts, {len(acked)} acknowledged mkdirs, all present")
    assert len(acked) > CUTS  # the writers really wrote between cuts
    # Compactions happened, so cuts also fell around snapshots and journal trims.
    assert all((directory / "raft.dump").exists() for directory in group.directories)
