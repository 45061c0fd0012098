"""A rolling restart, as an upgrade does it: every process of a running cluster is
stopped and started again, one at a time, under a steady stream of writes and reads.

No client operation may fail (the client library follows a new Raft leader and
writes around, and reads from, the dataservers that remain), and every file written
reads back intact at the end.
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
from twisted.internet.threads import deferToThread

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster, Node

pytestmark = pytest.mark.slow

#: Seconds the stream runs with every process up, before each restart and at the end.
STEADY = 1.0


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


@attrs.define
class Stream:
    """One client writing files of a few hundred KiB one after the other, another
    reading back files written earlier and checking their contents."""

    writer: DFSClient
    reader: DFSClient
    rng: random.Random
    files: dict[str, bytes] = attrs.field(factory=dict)
    operations: int = 0
    longest: float = 0.0
    longest_what: str = ""
    failures: list[str] = attrs.field(factory=list)
    running: bool = True
    done: list[Deferred[None]] = attrs.field(factory=list)

    def start(self) -> None:
        self.done = [Deferred.fromCoroutine(self.write()), Deferred.fromCoroutine(self.read())]

    async def _timed(self, what: str, operation: Deferred[object] | object) -> object:
        began = time.monotonic()
        try:
            result = await operation  # type: ignore[misc]
        except Exception as error:
            self.failures.append(f"{what}: {type(error).__name__}: {error}")
            return None
        finally:
            took = time.monotonic() - began
            self.operations += 1
            if took > self.longest:
                self.longest, self.longest_what = took, what
        return result

    async def write(self) -> None:
        index = 0
        while self.running:
            path = f"/f-{index}"
            index += 1
            data = self.rng.randbytes(self.rng.randint(100_000, 400_000))
            before = len(self.failures)
            await self._timed(f"write {path}", self.writer.write_file(path, data))
            if len(self.failures) == before:
                self.files[path] = data

    async def read(self) -> None:
        while self.running:
            if not self.files:
                await sleep(0.05)
                continue
            path = self.rng.choice(sorted(self.files))
            data = await self._timed(f"read {path}", self.reader.read_file(path))
            if data is not None and data != self.files[path]:
                self.failures.append(f"read {path}: wrong contents ({len(data)} bytes)")  # type: ignore[arg-type]

    async def stop(self) -> None:
        self.running = False
        await gatherResults(self.done)


def raft_status(cluster: LocalCluster, node: Node) -> dict:
    return (cluster.status(node, timeout=1.0) or {}).get("raft") or {}


def leader(cluster: LocalCluster) -> Node | None:
    for node in cluster.metaservers:
        if raft_status(cluster, node).get("serving"):
            return node
    return None


def wait_healthy(cluster: LocalCluster, restarted: Node, timeout: float = 60.0) -> None:
    """Every node registered and seen alive, one leader serving (wait_ready), and a
    restarted metaserver caught up with what the leader had applied by then."""
    cluster.wait_ready(timeout=timeout)
    if restarted.kind != "meta":
        return
    deadline = time.monotonic() + timeout
    target = None
    while time.monotonic() < deadline:
        current = leader(cluster)
        if current is not None and target is None:
            target = raft_status(cluster, current).get("last_applied")
        applied = raft_status(cluster, restarted).get("last_applied")
        if target is not None and applied is not None and applied >= target:
            return
        time.sleep(0.1)
    raise AssertionError(f"{restarted.name} did not catch up with the leader in {timeout:g} s")


@pytest_twisted.ensureDeferred
async def test_restarting_every_process_one_at_a_time_fails_no_operation_and_loses_nothing(
    make_cluster,
):
    started = time.monotonic()
    cluster = make_cluster(metaservers=3, dataservers=4)
    config = load_client_config(cluster.client_config)
    stream = Stream(
        await DFSClient.connect(reactor, config),
        await DFSClient.connect(reactor, config),
        random.Random(int.from_bytes(os.urandom(4))),
    )
    stream.start()
    restarts: list[str] = []
    try:
        # Dataservers first, then the metaservers, the leader last (as an operator
        # upgrading a group would: one election instead of up to three).
        current = await deferToThread(leader, cluster)
        order = [
            *cluster.dataservers,
            *(node for node in cluster.metaservers if node is not current),
            *([current] if current is not None else []),
        ]
        for node in order:
            await sleep(STEADY)
            # Off the reactor thread: the stream goes on while a node stops and starts.
            await deferToThread(cluster.stop_node, node)
            await deferToThread(cluster.start_node, node)
            await deferToThread(wait_healthy, cluster, node)
            restarts.append(node.name)
            assert not stream.failures, stream.failures[:5]
        await sleep(STEADY)
    finally:
        await stream.stop()
        stream.writer.close()
        stream.reader.close()
    assert not stream.failures, stream.failures[:5]
    assert len(restarts) == 7
    checker = await DFSClient.connect(reactor, config)
    try:
        for path, data in stream.files.items():
            assert await checker.read_file(path) == data, f"{path} did not read back intact"
    finally:
        checker.close()
    print(
        f"REPORT rolling restart of 3 metaservers and 4 dataservers: {len(restarts)} restarts, "
        f"{stream.operations} operations, none failed, {len(stream.files)} files intact; "
        f"longest operation {stream.longest:.2f} s ({stream.longest_what}); "
        f"{time.monotonic() - started:.0f} s in all"
    )
