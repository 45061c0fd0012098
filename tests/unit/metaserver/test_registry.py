"""DataserverRegistry: registration, heartbeats and death, with time passed in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dfs.metaserver.registry import DataserverRegistry, DataserverState, SpaceReport

SPACE = SpaceReport(capacity=100, free=50, used=50, chunks=3)


def test_registered_dataserver_is_alive_and_listed():
    registry = DataserverRegistry(dead_after=10)
    assert registry.register("ds1", "127.0.0.1:7200", SPACE, now=0) is True
    [record] = registry.records()
    assert (record.name, record.address, record.state) == (
        "ds1",
        "127.0.0.1:7200",
        DataserverState.ALIVE,
    )


def test_silent_dataserver_dies_once_and_must_register_again():
    registry = DataserverRegistry(dead_after=10)
    registry.register("ds1", "a:1", SPACE, now=0)
    assert registry.expire(now=10) == []
    assert [r.name for r in registry.expire(now=10.5)] == ["ds1"]
    assert registry.expire(now=20) == []
    assert registry.heartbeat("ds1", SPACE, now=21) is False
    assert registry.register("ds1", "a:1", SPACE, now=22) is True
    assert registry.get("ds1").state is DataserverState.ALIVE


def test_heartbeat_from_unknown_dataserver_is_refused():
    registry = DataserverRegistry(dead_after=10)
    assert registry.heartbeat("ghost", SPACE, now=1) is False
    assert registry.records() == []


def test_reregistration_of_a_live_dataserver_is_not_news():
    registry = DataserverRegistry(dead_after=10)
    registry.register("ds1", "a:1", SPACE, now=0)
    assert registry.register("ds1", "a:1", SPACE, now=1) is False


@given(st.lists(st.floats(min_value=0, max_value=9.99), max_size=20))
def test_heartbeats_within_the_timeout_keep_it_alive(gaps):
    registry = DataserverRegistry(dead_after=10)
    registry.register("ds1", "a:1", SPACE, now=0)
    now = 0.0
    for gap in gaps:
        now += gap
        assert registry.expire(now) == []
        assert registry.heartbeat("ds1", SPACE, now) is True
    assert registry.get("ds1").state is DataserverState.ALIVE
