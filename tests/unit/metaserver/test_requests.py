"""NamespaceRequests: mutations committed through the log, queries on the leader."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dfs.metaserver.log import MemoryLog
from dfs.metaserver.registry import DataserverRegistry, SpaceReport
from dfs.protocol.errors import FileExists, InvalidArgument, NotLeader
from dfs.protocol.records import unpack_entries
from dfs.security.identity import Identity, Role

ADMIN = Identity(Role.ADMIN, "root")
ALICE = Identity(Role.CLIENT, "alice")
DS1 = Identity(Role.DATASERVER, "ds1")


def result_of(coroutine):
    results: list[object] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1000)
    return clock


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
def handlers(clock, log, make_handlers):
    registry = DataserverRegistry(dead_after=5.0)
    registry.register("ds1", "127.0.0.1:7201", SpaceReport(1 << 40, 1 << 40, 0, 0), 0.0)
    handlers = make_handlers(clock, log, registry)
    result_of(handlers.namespace.mkdir(ADMIN, "/home", 0o777, True, "m"))
    return handlers


def test_a_retried_request_is_applied_once(handlers):
    result_of(handlers.namespace.mkdir(ALICE, "/home/d", 0o755, False, "same"))
    result_of(handlers.namespace.mkdir(ALICE, "/home/d", 0o755, False, "same"))
    with pytest.raises(FileExists):
        result_of(handlers.namespace.mkdir(ALICE, "/home/d", 0o755, False, "another"))


def test_replication_outside_the_configured_range_is_refused(handlers):
    with pytest.raises(InvalidArgument, match=r"replication 11 is outside 1\.\.10"):
        result_of(handlers.chunks.create(ALICE, "/home/f", 0o644, 11, 0, False, "c", ""))
    with pytest.raises(InvalidArgument, match="replication 0 is outside"):
        result_of(handlers.namespace.set_replication(ALICE, "/home", 0, ""))


def test_deleting_a_file_orders_its_replicas_deleted(handlers):
    result_of(handlers.chunks.create(ALICE, "/home/f", 0o644, 1, 0, False, "c", ""))
    added = result_of(handlers.chunks.add_chunk(ALICE, "/home/f", "c", ""))
    chunk_id, version = added["chunk_id"], added["version"]
    handlers.replicas.chunk_received(DS1, "ds1", chunk_id, version)
    result_of(handlers.namespace.delete(ALICE, "/home/f", False, ""))
    assert handlers.replicas.deletions_for("ds1") == [{"chunk_id": chunk_id, "version": version}]


def test_a_listing_comes_in_pages_after_the_name_given(handlers):
    for name in ("c", "a", "b"):
        result_of(handlers.namespace.mkdir(ALICE, f"/home/{name}", 0o755, False, ""))
    first = handlers.namespace.list_directory(ALICE, "/home", "", 2)
    assert [entry.name for entry in unpack_entries(first["entries"])] == ["a", "b"]
    assert first["more"]
    rest = handlers.namespace.list_directory(ALICE, "/home", "b", 2)
    assert [entry.name for entry in unpack_entries(rest["entries"])] == ["c"]
    assert not rest["more"]


def test_a_follower_answers_no_query(handlers, log):
    log.serving, log.leader = False, "127.0.0.1:7000"
    with pytest.raises(NotLeader):
        handlers.namespace.stat(ALICE, "/home")
    with pytest.raises(NotLeader):
        handlers.namespace.groups()
