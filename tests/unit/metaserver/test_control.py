"""ClusterControl and the dataserver side of the metaserver: drains, the balancer,
backups, fsck, and deletion orders held back in safe mode."""

from __future__ import annotations

import hashlib
import io
import time

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dfs.metaserver import backup
from dfs.metaserver import namespace as ns
from dfs.metaserver import operations as ops
from dfs.metaserver.log import MemoryLog
from dfs.metaserver.registry import DataserverRegistry, SpaceReport
from dfs.metaserver.service import Metaserver
from dfs.protocol.errors import InvalidArgument, NotLeader, UnknownDataserver
from dfs.security.identity import Identity, Role

ADMIN = Identity(Role.ADMIN, "root")
DS1 = Identity(Role.DATASERVER, "ds1")
SPACE = SpaceReport(1 << 30, 1 << 30, 0, 0)


def result_of(coroutine):
    results: list[object] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class FakeConfig:
    dataserver_dead_after = 5.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
def registry() -> DataserverRegistry:
    registry = DataserverRegistry(dead_after=5.0)
    registry.register("ds1", "127.0.0.1:7201", SPACE, 0.0)
    return registry


@pytest.fixture
def handlers(clock, log, registry, make_handlers):
    return make_handlers(clock, log, registry)


def test_decommissioning_is_replicated_and_names_a_known_dataserver(handlers, log):
    control = handlers.control
    with pytest.raises(UnknownDataserver, match="'ds9'"):
        result_of(control.set_decommission(ADMIN, "ds9", True))
    assert control.drain_state("ds1") is None and control.drain_remaining("ds1") == -1
    result_of(control.set_decommission(ADMIN, "ds1", True))
    assert log.namespace.decommissioned == {"ds1"}
    assert control.drain_state("ds1") == "decommissioning"
    result_of(control.set_decommission(ADMIN, "ds1", False))
    assert control.drain_state("ds1") is None


def test_a_backup_is_one_consistent_snapshot_read_in_pages(handlers, log, clock):
    root = ops.Caller("dfs", superuser=True)
    log.namespace.apply(ops.Mkdir("/data", 0o755, False, caller=root, now=0.0))
    taken = handlers.control.start_backup("meta1")
    log.namespace.apply(ops.Mkdir("/later", 0o755, False, caller=root, now=0.0))
    deadline = time.monotonic() + 30
    while (status := handlers.control.backup_status(taken["backup_id"]))["state"] != "ready":
        assert time.monotonic() < deadline, status
        clock.advance(0.05)
        time.sleep(0.01)
    data = b""
    while len(data) < status["size"]:
        data += handlers.control.read_backup(taken["backup_id"], len(data), 1000)["data"]
    assert hashlib.sha256(data).hexdigest() == status["sha256"]
    source = io.BytesIO(data)
    found = backup.check(source)
    assert found.header.leader == "meta1"
    restored = found.namespace(source)
    assert restored.stat("/data").ok
    assert not restored.stat("/later").ok
    assert handlers.control.end_backup(taken["backup_id"]) == {}
    with pytest.raises(InvalidArgument, match="take the backup again"):
        handlers.control.read_backup(taken["backup_id"], 0, 10)
    with pytest.raises(InvalidArgument, match="expected offset >= 0"):
        handlers.control.read_backup("nope", 0, 0)
    log.serving = False
    with pytest.raises(NotLeader):
        handlers.control.start_backup("meta1")


def test_the_balancer_is_driven_on_the_leader_only(handlers, log):
    assert handlers.control.control_balancer(ADMIN, "start", 5.0)["running"]
    assert not handlers.control.control_balancer(ADMIN, "stop", 0)["running"]
    with pytest.raises(InvalidArgument, match="expected a percentage"):
        handlers.control.control_balancer(ADMIN, "start", 100.0)
    log.serving = False
    with pytest.raises(NotLeader):
        handlers.control.control_balancer(ADMIN, "status", 0)


def test_fsck_reports_a_chunk_with_no_replica_as_missing(handlers, log):
    root = {"caller": ops.Caller("dfs", superuser=True), "now": 0.0}
    namespace = log.namespace
    namespace.apply(ops.Create("/f", lease_holder="w", lease_expires=9.0, **root))
    chunk = namespace.apply(ops.AddChunk("/f", "w", 9.0, **root)).value
    namespace.apply(ops.CommitChunk("/f", "w", chunk.chunk_id, chunk.version, 4, **root))
    answer = handlers.control.fsck("/", 0, 10)
    assert answer["missing"] == 1 and not answer["healthy"]
    assert [problem["path"] for problem in answer["problems"]] == ["/f"]


def test_deletion_orders_wait_for_the_end_of_safe_mode(handlers, registry, clock):
    metaserver = Metaserver(
        identity=Identity(Role.METASERVER, "meta1"),
        config=FakeConfig(),  # type: ignore[arg-type]
        clock=clock,
        registry=registry,
        handlers=handlers,
    )
    handlers.replicas.chunk_received(DS1, "ds1", 42, 1)
    handlers.replicas.drop([ns.ChunkRef(42, 1, 0)])
    assert metaserver.heartbeat(DS1, "ds1", SPACE) == []
    handlers.safe_mode.check_mutation()  # nothing to wait for: safe mode ends
    assert metaserver.heartbeat(DS1, "ds1", SPACE) == [{"chunk_id": 42, "version": 1}]
