"""ReplicaTracker: reports in, stale replicas found, deletion orders out once."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from dfs.metaserver import namespace as ns
from dfs.metaserver import operations as ops
from dfs.metaserver.log import MemoryLog
from dfs.metaserver.registry import DataserverRegistry, SpaceReport
from dfs.metaserver.replicas import ReplicaTracker
from dfs.protocol.errors import PermissionDenied
from dfs.security.identity import Identity, Role

ROOT = {"caller": ops.Caller(user="dfs", superuser=True), "now": 0.0}
DS1 = Identity(Role.DATASERVER, "ds1")
DS2 = Identity(Role.DATASERVER, "ds2")


def chunk(log: MemoryLog, path: str = "/f", bumps: int = 0) -> ns.ChunkRef:
    """A committed chunk of a closed file, at its first version plus ``bumps``."""
    namespace = log.namespace
    namespace.apply(ops.Create(path, lease_holder="w", lease_expires=100.0, **ROOT))
    ref = namespace.apply(ops.AddChunk(path, "w", 100.0, **ROOT)).value
    for _ in range(bumps):
        ref = namespace.apply(ops.BumpChunkVersion(path, "w", ref.chunk_id, **ROOT)).value
    namespace.apply(ops.CommitChunk(path, "w", ref.chunk_id, ref.version, 10, **ROOT))
    namespace.apply(ops.Close(path, "w", 10, **ROOT))
    return ref


@pytest.fixture
def registry() -> DataserverRegistry:
    registry = DataserverRegistry(dead_after=5.0)
    for number in (1, 2):
        registry.register(f"ds{number}", f"127.0.0.1:720{number}", SpaceReport(9, 9, 0, 0), 0.0)
    return registry


def test_a_full_report_replaces_what_the_dataserver_held(registry):
    log = MemoryLog()
    ref = chunk(log)
    tracker = ReplicaTracker(log, registry)
    tracker.report_chunks(DS1, "ds1", [{"chunk_id": 99, "version": 1}], last=True)
    tracker.report_chunks(DS1, "ds1", [{"chunk_id": ref.chunk_id, "version": 1}], last=False)
    assert tracker.replicas(99) == {"ds1": 1}, "a report is applied only once whole"
    tracker.report_chunks(DS1, "ds1", [], last=True)
    assert tracker.replicas(99) == {}
    assert tracker.holders(ref.chunk_id, ref.version) == ["ds1"]


def test_an_older_version_is_stale_and_ordered_deleted_once(registry):
    log = MemoryLog()
    ref = chunk(log, bumps=1)
    tracker = ReplicaTracker(log, registry)
    tracker.chunk_received(DS1, "ds1", ref.chunk_id, ref.version - 1)
    assert tracker.replicas(ref.chunk_id) == {}
    assert tracker.deletions_for("ds1") == [{"chunk_id": ref.chunk_id, "version": ref.version - 1}]
    assert tracker.deletions_for("ds1") == []


def test_reports_that_arrive_while_loading_are_sorted_once_loaded(registry):
    log = MemoryLog()
    ref = chunk(log, bumps=1)
    log.ready = False
    tracker = ReplicaTracker(log, registry)
    tracker.chunk_received(DS1, "ds1", ref.chunk_id, ref.version - 1)
    assert tracker.replicas(ref.chunk_id) == {"ds1": ref.version - 1}
    log.ready = True
    assert tracker.census() == (0, 1)
    assert tracker.deletions_for("ds1") == [{"chunk_id": ref.chunk_id, "version": ref.version - 1}]


def test_a_dataserver_reports_only_for_itself(registry):
    tracker = ReplicaTracker(MemoryLog(), registry)
    with pytest.raises(PermissionDenied, match="cannot report for dataserver 'ds2'"):
        tracker.chunk_received(DS1, "ds2", 1, 1)
    with pytest.raises(PermissionDenied):
        tracker.report_chunks(DS1, "ds2", [], last=True)


def test_freed_chunks_are_deleted_wherever_they_are(registry):
    log = MemoryLog()
    ref = chunk(log)
    tracker = ReplicaTracker(log, registry)
    tracker.written(ref.chunk_id, ref.version, ["127.0.0.1:7201", "127.0.0.1:7202", "10.0.0.9:1"])
    assert tracker.holders(ref.chunk_id, ref.version) == ["ds1", "ds2"]
    tracker.drop([ref])
    for name in ("ds1", "ds2"):
        assert tracker.deletions_for(name) == [{"chunk_id": ref.chunk_id, "version": ref.version}]


def test_the_census_counts_committed_chunks_with_a_live_replica(registry):
    log = MemoryLog()
    first, second = chunk(log, "/a"), chunk(log, "/b")
    tracker = ReplicaTracker(log, registry)
    assert tracker.census() == (0, 2)
    tracker.chunk_received(DS1, "ds1", first.chunk_id, first.version)
    assert tracker.census() == (1, 2)
    tracker.dataserver_dead("ds1")
    assert tracker.census() == (0, 2)
    assert second.chunk_id != first.chunk_id


# -- freed chunks: replicated, so that a new leader deletes them too -------------------


def deleted(log: MemoryLog, count: int) -> list[ns.ChunkRef]:
    """``count`` files written and deleted in one recursive delete, applied by the log
    before this metaserver led (so no tracker here heard of the delete)."""
    refs = [chunk(log, f"/d{number}") for number in range(count)]
    for number in range(count):
        log.namespace.apply(ops.Rename(f"/d{number}", f"/gone/d{number}", **ROOT))
    assert log.namespace.apply(ops.Delete("/gone", True, **ROOT)).ok
    return refs


@pytest.fixture
def log_with_gone() -> MemoryLog:
    log = MemoryLog()
    log.namespace.apply(ops.Mkdir("/gone", **ROOT))
    return log


def report(tracker: ReplicaTracker, refs: list[ns.ChunkRef]) -> None:
    held = [{"chunk_id": ref.chunk_id, "version": ref.version} for ref in refs]
    tracker.report_chunks(DS1, "ds1", held, last=True)
    tracker.report_chunks(DS2, "ds2", held, last=True)


def test_a_new_leader_orders_every_replica_of_a_freed_chunk_deleted(registry, log_with_gone):
    log = log_with_gone
    refs = deleted(log, 3)
    tracker = ReplicaTracker(log, registry)
    report(tracker, refs)
    assert tracker.sweep_freed() == []
    orders = [{"chunk_id": ref.chunk_id, "version": ref.version} for ref in refs]
    assert tracker.deletions_for("ds1") == orders
    assert tracker.deletions_for("ds2") == orders
    assert all(tracker.replicas(ref.chunk_id) == {} for ref in refs)


def test_freed_chunks_are_forgotten_in_one_entry_once_every_order_went_out(registry, log_with_gone):
    log = log_with_gone
    refs = deleted(log, 3)
    tracker = ReplicaTracker(log, registry)
    report(tracker, refs)
    assert tracker.collect_freed(10.0) is None, "orders wait: nothing to forget yet"
    tracker.deletions_for("ds1")
    assert tracker.collect_freed(10.0) is None, "ds2 has not been told yet"
    assert len(log.namespace.freed_chunks()) == 3
    tracker.deletions_for("ds2")
    tracker.collect_freed(10.0)
    assert log.namespace.freed_chunks() == {}
    forgets = [op for op in log.submitted if isinstance(op, ops.ForgetFreedChunks)]
    assert forgets == [
        ops.ForgetFreedChunks(tuple(ref.chunk_id for ref in refs), now=10.0, caller=ROOT["caller"])
    ]
    assert tracker.collect_freed(11.0) is None


def test_a_freed_chunk_reported_again_before_it_is_forgotten_is_deleted_again(
    registry, log_with_gone
):
    log = log_with_gone
    (ref,) = deleted(log, 1)
    tracker = ReplicaTracker(log, registry)
    tracker.chunk_received(DS1, "ds1", ref.chunk_id, ref.version)
    tracker.sweep_freed()
    assert tracker.deletions_for("ds1") == [{"chunk_id": ref.chunk_id, "version": 1}]
    # A report that crossed the order, or a dataserver that lost its answer.
    tracker.report_chunks(DS1, "ds1", [{"chunk_id": ref.chunk_id, "version": 1}], last=True)
    assert tracker.sweep_freed() == []
    assert tracker.deletions_for("ds1") == [{"chunk_id": ref.chunk_id, "version": 1}]
    assert tracker.sweep_freed() == [ref.chunk_id]


def test_freed_chunks_not_forgotten_for_lost_leadership_are_forgotten_later(
    registry, log_with_gone
):
    log = log_with_gone
    deleted(log, 1)
    tracker = ReplicaTracker(log, registry)
    log.serving = False
    tracker.collect_freed(10.0)
    assert len(log.namespace.freed_chunks()) == 1, "NotLeader: not forgotten"
    log.serving = True
    tracker.collect_freed(11.0)
    assert log.namespace.freed_chunks() == {}


def test_the_leaders_pass_deletes_freed_replicas_only_when_deciding(
    registry, log_with_gone, make_handlers
):
    log = log_with_gone
    refs = deleted(log, 2)
    clock = Clock()
    log.serving = False
    handlers = make_handlers(clock, log, registry, orphan_grace=3600.0)
    report(handlers.replicas, refs)
    orders = [{"chunk_id": ref.chunk_id, "version": ref.version} for ref in refs]
    handlers.monitor.tick()
    assert handlers.replicas.pending_deletions() == {}, "a follower decides nothing"
    log.serving = True
    handlers.monitor.tick()
    assert handlers.replicas.pending_deletions() == {}, "not every dataserver reported yet"
    clock.advance(registry.dead_after)
    handlers.monitor.tick()
    assert handlers.safe_mode.deciding
    assert handlers.replicas.deletions_for("ds1") == orders
    assert handlers.replicas.deletions_for("ds2") == orders
    handlers.monitor.tick()
    assert log.namespace.freed_chunks() == {}
