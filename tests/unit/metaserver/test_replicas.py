"""ReplicaTracker: reports in, stale replicas found, deletion orders out once."""

from __future__ import annotations

import pytest

from dfs.metaserver import namespace as ns
from dfs.metaserver import operations as ops
from dfs.metaserver.log import MemoryLog
from dfs.metaserver.registry import DataserverRegistry, SpaceReport
from dfs.metaserver.replicas import ReplicaTracker
from dfs.protocol.errors import PermissionDenied
from dfs.security.identity import Identity, Role

ROOT = {"caller": ops.Caller(user="dfs", superuser=True), "now": 0.0}
DS1 = Identity(Role.DATASERVER, "ds1")


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
