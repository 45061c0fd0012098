"""Where new chunks go: distinct live dataservers with room, least used first."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from dfs.metaserver.locations import ChunkLocations
from dfs.metaserver.placement import Placement
from dfs.metaserver.registry import DataserverRecord, DataserverState, SpaceReport

GiB = 1024**3
CHUNK = 64 * 1024**2


def record(
    name: str,
    *,
    capacity: int = 100 * GiB,
    used: int = 0,
    free: int | None = None,
    state: DataserverState = DataserverState.ALIVE,
) -> DataserverRecord:
    space = SpaceReport(
        capacity=capacity, free=capacity - used if free is None else free, used=used, chunks=0
    )
    return DataserverRecord(name, f"127.0.0.1:{7200 + len(name)}", space, 0.0, 0.0, state)


def names(chosen: list[DataserverRecord]) -> list[str]:
    return [r.name for r in chosen]


def test_chooses_distinct_dataservers_up_to_the_count():
    placement = Placement(random.Random(1))
    records = [record(f"ds{i}") for i in range(5)]
    chosen = names(placement.choose(records, 3, CHUNK))
    assert len(chosen) == 3 == len(set(chosen))


def test_fewer_dataservers_than_replicas_gives_what_there_is():
    placement = Placement(random.Random(1))
    assert sorted(names(placement.choose([record("a"), record("b")], 3, CHUNK))) == ["a", "b"]
    assert placement.choose([], 3, CHUNK) == []


def test_dead_dataservers_and_those_without_room_are_never_chosen():
    placement = Placement(random.Random(1))
    records = [
        record("dead", state=DataserverState.DEAD),
        record("full", free=CHUNK - 1),
        record("ok"),
    ]
    for _ in range(20):
        assert names(placement.choose(records, 3, CHUNK)) == ["ok"]


def test_least_used_first():
    placement = Placement(random.Random(1))
    records = [
        record("busy", used=90 * GiB),
        record("half", used=50 * GiB),
        record("empty", used=0),
        record("light", used=10 * GiB),
    ]
    assert names(placement.choose(records, 2, CHUNK)) == ["empty", "light"]


def test_use_is_relative_to_capacity():
    placement = Placement(random.Random(1))
    records = [
        record("small", capacity=10 * GiB, used=5 * GiB),  # 50 % used
        record("large", capacity=1000 * GiB, used=100 * GiB),  # 10 % used
    ]
    assert names(placement.choose(records, 1, CHUNK)) == ["large"]


def test_chunks_handed_out_count_until_the_next_space_report():
    placement = Placement(random.Random(1))
    records = [record("a", capacity=10 * GiB), record("b", capacity=10 * GiB)]
    # Between space reports, the records do not change; placements must still spread.
    counts = Counter(
        name for _ in range(100) for name in names(placement.choose(records, 1, GiB // 10))
    )
    assert counts == {"a": 50, "b": 50}


def test_promised_space_stops_placement_on_a_dataserver_that_would_overflow():
    placement = Placement(random.Random(1))
    records = [record("a", capacity=3 * CHUNK)]
    assert [len(placement.choose(records, 1, CHUNK)) for _ in range(4)] == [1, 1, 1, 0]
    placement.reported("a")  # a fresh report counts what arrived; the promise is dropped
    assert len(placement.choose(records, 1, CHUNK)) == 1


def test_equally_used_dataservers_are_chosen_evenly():
    placement = Placement(random.Random(7))
    records = [record(f"ds{i}") for i in range(6)]
    counts: Counter[str] = Counter()
    for _ in range(600):
        for name in names(placement.choose(records, 3, CHUNK)):
            counts[name] += 1
            placement.reported(name)  # reports keep promises from piling up
    assert set(counts) == {r.name for r in records}
    assert max(counts.values()) - min(counts.values()) < 150


@given(
    st.lists(
        st.tuples(
            st.integers(1, 1000),  # capacity in chunks
            st.integers(0, 1000),  # used in chunks
            st.booleans(),  # alive
        ),
        max_size=12,
    ),
    st.integers(1, 5),
)
def test_property_choices_are_distinct_alive_and_fit(servers, count):
    records = []
    for i, (capacity, used, alive) in enumerate(servers):
        used = min(used, capacity)
        records.append(
            record(
                f"ds{i}",
                capacity=capacity * CHUNK,
                used=used * CHUNK,
                state=DataserverState.ALIVE if alive else DataserverState.DEAD,
            )
        )
    placement = Placement(random.Random(0))
    chosen = placement.choose(records, count, CHUNK)
    eligible = [r for r in records if r.state is DataserverState.ALIVE and r.space.free >= CHUNK]
    assert len(chosen) == min(count, len(eligible))
    assert len({r.name for r in chosen}) == len(chosen)
    assert all(r in eligible for r in chosen)
    # Nothing left out was less used than something chosen.
    if chosen:
        worst = max(r.space.used / r.space.capacity for r in chosen)
        assert all(r.space.used / r.space.capacity >= worst for r in eligible if r not in chosen)


def test_locations_track_versions_and_deletions():
    locations = ChunkLocations()
    locations.add("a", 1, 5)
    locations.add("b", 1, 5)
    locations.add("c", 1, 4)
    assert locations.holders(1, 5) == ["a", "b"]
    assert locations.holders(1, 4) == ["c"]
    locations.schedule_deletion("c", 1, 4)
    assert locations.replicas(1) == {"a": 5, "b": 5}
    assert locations.take_deletions("c") == [(1, 4)]
    assert locations.take_deletions("c") == []
    locations.replace_server("a", [(2, 1)])
    assert locations.holders(1, 5) == ["b"] and locations.holders(2, 1) == ["a"]
    locations.forget_server("b")
    assert locations.replicas(1) == {}
    assert locations.count("a") == 1
