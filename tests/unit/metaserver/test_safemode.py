"""SafeMode: loading, the automatic safe mode after a start, an administrator's."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dfs.metaserver import operations as ops
from dfs.metaserver.log import MemoryLog
from dfs.metaserver.registry import DataserverRegistry, SpaceReport
from dfs.protocol.errors import InvalidArgument, NotLeader, SafeMode
from dfs.security.identity import Identity, Role

ADMIN = Identity(Role.ADMIN, "root")
ROOT = {"caller": ops.Caller(user="dfs", superuser=True), "now": 0.0}


def result_of(coroutine):
    results: list[object] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results, "the handler waited on something a MemoryLog never delays"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def committed_file(log: MemoryLog, path: str = "/f") -> int:
    """A closed file of one committed chunk; its chunk id."""
    namespace = log.namespace
    namespace.apply(ops.Create(path, lease_holder="w", lease_expires=100.0, **ROOT))
    chunk = namespace.apply(ops.AddChunk(path, "w", 100.0, **ROOT)).value
    namespace.apply(ops.CommitChunk(path, "w", chunk.chunk_id, chunk.version, 10, **ROOT))
    namespace.apply(ops.Close(path, "w", 10, **ROOT))
    return int(chunk.chunk_id)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> DataserverRegistry:
    registry = DataserverRegistry(dead_after=5.0)
    registry.register("ds1", "127.0.0.1:7201", SpaceReport(100, 100, 0, 0), 0.0)
    return registry


def test_a_follower_sends_the_client_to_the_leader(clock, make_handlers):
    log = MemoryLog()
    log.serving, log.leader = False, "127.0.0.1:7000"
    safe_mode = make_handlers(clock, log).safe_mode
    with pytest.raises(NotLeader) as raised:
        safe_mode.check_mutation()
    assert raised.value.leader == "127.0.0.1:7000"


def test_nothing_is_served_while_the_namespace_loads(clock, make_handlers):
    log = MemoryLog()
    log.ready = False
    safe_mode = make_handlers(clock, log).safe_mode
    with pytest.raises(SafeMode, match="still loading"):
        safe_mode.check_serving()
    assert not safe_mode.deciding


def test_an_empty_namespace_leaves_the_automatic_safe_mode_at_the_first_change(
    clock, make_handlers
):
    safe_mode = make_handlers(clock).safe_mode
    assert safe_mode.on
    safe_mode.check_mutation()
    assert not safe_mode.on and safe_mode.deciding


def test_changes_wait_until_the_committed_chunks_are_reported(clock, registry, make_handlers):
    log = MemoryLog()
    chunk_id = committed_file(log)
    handlers = make_handlers(clock, log, registry)
    with pytest.raises(SafeMode, match="0 of 1 chunks reported"):
        handlers.safe_mode.check_mutation()
    clock.advance(1)
    handlers.replicas.chunk_received(Identity(Role.DATASERVER, "ds1"), "ds1", chunk_id, 1)
    handlers.safe_mode.check_mutation()
    assert handlers.safe_mode.state()["reported_chunks"] == 1


def test_the_extension_holds_safe_mode_after_the_threshold_is_met(clock, make_handlers):
    safe_mode = make_handlers(clock, safemode_extension=30.0).safe_mode
    with pytest.raises(SafeMode, match="after safemode_extension"):
        safe_mode.check_mutation()
    clock.advance(29)
    with pytest.raises(SafeMode):
        safe_mode.check_mutation()
    clock.advance(1)
    safe_mode.check_mutation()


def test_too_few_dataservers_keep_safe_mode_on(clock, registry, make_handlers):
    safe_mode = make_handlers(clock, registry=registry, safemode_min_dataservers=2).safe_mode
    with pytest.raises(SafeMode, match="1 alive, 2 needed"):
        safe_mode.check_mutation()
    registry.register("ds2", "127.0.0.1:7202", SpaceReport(100, 100, 0, 0), 0.0)
    clock.advance(1)
    safe_mode.check_mutation()


def test_an_administrators_safe_mode_is_replicated_and_refuses_changes(clock, make_handlers):
    log = MemoryLog()
    safe_mode = make_handlers(clock, log).safe_mode
    state = result_of(safe_mode.control(ADMIN, "enter"))
    assert state["on"] and state["manual"]
    assert log.namespace.safe_mode
    with pytest.raises(SafeMode, match="leave it with"):
        safe_mode.check_mutation()
    safe_mode.check_serving()  # leases and administrators still get through
    assert not result_of(safe_mode.control(ADMIN, "leave"))["on"]
    safe_mode.check_mutation()


def test_leaving_ends_the_automatic_safe_mode_too(clock, make_handlers):
    safe_mode = make_handlers(clock, safemode_extension=3600.0).safe_mode
    assert result_of(safe_mode.control(ADMIN, "get"))["on"]
    assert not result_of(safe_mode.control(ADMIN, "leave"))["on"]
    safe_mode.check_mutation()


def test_an_unknown_action_is_refused(clock, make_handlers):
    with pytest.raises(InvalidArgument, match="expected get, enter or leave"):
        result_of(make_handlers(clock).safe_mode.control(ADMIN, "toggle"))
