"""The replication planner: which copies first, which removals, when a drain is done."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.metaserver.namespace import (
    ChunkTarget,
)
from dfs.metaserver.replication import (
    CORRUPT,
    DRAIN,
    MISSING,
    OVER,
    REPAIR,
    STALE,
    UNDER,
    ReplicationPlanner,
    ServerView,
    assess,
    problem,
)

MiB = 1024 * 1024


def view(name: str, *, alive: bool = True, draining: bool = False, used: int = 0) -> ServerView:
    return ServerView(
        name=name, alive=alive, draining=draining, capacity=1000 * MiB, used=used, free=900 * MiB
    )


def servers(*views: ServerView) -> dict[str, ServerView]:
    return {v.name: v for v in views}


def chunk(chunk_id: int, replication: int = 3, version: int = 1) -> ChunkTarget:
    return ChunkTarget(chunk_id, version, MiB, replication)


def planner(limit: int = 2) -> ReplicationPlanner:
    return ReplicationPlanner(max_copies=limit, rng=random.Random(7))


def test_assess_counts_only_live_current_replicas_outside_drains() -> None:
    cluster = servers(view("a"), view("b", alive=False), view("c", draining=True), view("d"))
    held = {"a": 2, "b": 2, "c": 2, "d": 1}
    assessment = assess(chunk(1, version=2), held, cluster)
    assert assessment.live == ("a", "c")
    assert assessment.counted == ("a",)
    assert assessment.stale == (("d", 1),)
    assert assessment.lacking == 2


@pytest.mark.parametrize(
    ("held", "corrupt", "expected"),
    [
        ({}, False, MISSING),
        ({"a": 1}, True, CORRUPT),
        ({"a": 1, "b": 1}, False, UNDER),
        ({"a": 1, "b": 1, "c": 1, "d": 1}, False, OVER),
        ({"a": 1, "b": 1, "c": 1}, True, None),  # repaired: no longer corrupt
        ({"a": 2, "b": 2, "c": 2, "d": 1}, False, STALE),
        ({"a": 1, "b": 1, "c": 1}, False, None),
    ],
)
def test_problem_names_the_worst_thing_about_a_chunk(
    held: dict[str, int], corrupt: bool, expected: str | None
) -> None:
    cluster = servers(*(view(n) for n in "abcde"))
    version = max(held.values(), default=1)
    assert problem(assess(chunk(1, version=version), held, cluster), corrupt) == expected


def test_most_endangered_chunks_are_copied_first() -> None:
    cluster = servers(view("a"), view("b"), view("c"), view("d"))
    two_left = assess(chunk(1), {"a": 1, "b": 1}, cluster)
    one_left = assess(chunk(2), {"c": 1}, cluster)
    # One copy at a time per dataserver: only the first decision can be taken.
    plan = planner(limit=1).plan([two_left, one_left], cluster, {}, {})
    assert plan.copies[0].chunk_id == 2
    assert plan.copies[0].purpose == REPAIR


def test_copies_respect_the_limit_per_dataserver() -> None:
    cluster = servers(view("a"), view("b"), view("c"), view("d"))
    needy = [assess(chunk(n), {"a": 1}, cluster) for n in range(1, 20)]
    plan = planner(limit=2).plan(needy, cluster, {}, {})
    load: dict[str, int] = {}
    for copy in plan.copies:
        for name in (copy.target, copy.sources[0]):
            load[name] = load.get(name, 0) + 1
    assert max(load.values()) <= 2
    assert load["a"] == 2  # the only source is the bottleneck
    assert plan.waiting == len(needy) - 1  # the first chunk took both of a's copies
    assert len(plan.copies) == 2


def test_copies_in_flight_count_as_replicas_to_come() -> None:
    cluster = servers(view("a"), view("b"), view("c"), view("d"))
    needy = assess(chunk(1), {"a": 1, "b": 1}, cluster)
    plan = planner().plan([needy], cluster, {"c": 1, "a": 1}, {1: frozenset({"c"})})
    assert plan.copies == []
    assert plan.removals == []


def test_targets_are_distinct_live_accepting_and_not_holders() -> None:
    cluster = servers(
        view("a"), view("b", alive=False), view("c", draining=True), view("d"), view("e")
    )
    needy = assess(chunk(1), {"a": 1}, cluster)
    plan = planner(limit=5).plan([needy], cluster, {}, {})
    assert sorted(copy.target for copy in plan.copies) == ["d", "e"]


def test_a_chunk_with_no_live_replica_is_left_alone() -> None:
    cluster = servers(view("a"), view("b"))
    plan = planner().plan([assess(chunk(1), {"z": 1}, cluster)], cluster, {}, {})
    assert plan.copies == [] and plan.waiting == 0


def test_surplus_replicas_go_from_the_fullest_dataservers() -> None:
    cluster = servers(
        view("a", used=10), view("b", used=500 * MiB), view("c", used=20), view("d", used=30)
    )
    over = assess(chunk(1, replication=2), {"a": 1, "b": 1, "c": 1, "d": 1}, cluster)
    removals = planner().plan([over], cluster, {}, {}).removals
    assert sorted(r.server for r in removals) == ["b", "d"]
    assert {r.reason for r in removals} == {"surplus"}


def test_stale_replicas_are_removed() -> None:
    cluster = servers(view("a"), view("b"), view("c"), view("d"))
    assessment = assess(chunk(1, version=3), {"a": 3, "b": 3, "c": 3, "d": 2}, cluster)
    removals = planner().plan([assessment], cluster, {}, {}).removals
    assert [(r.server, r.version, r.reason) for r in removals] == [("d", 2, "stale")]


def test_a_drain_copies_from_the_draining_dataserver_and_finishes() -> None:
    cluster = servers(view("a", draining=True), view("b"), view("c"), view("d"))
    held = {"a": 1, "b": 1, "c": 1}
    plan = planner().plan([assess(chunk(1), held, cluster)], cluster, {}, {})
    assert [(c.sources[0], c.target, c.purpose) for c in plan.copies] == [("a", "d", DRAIN)]
    assert plan.drain_remaining == {"a": 1}
    # Once the copy landed, nothing is left for "a" and its replica is not surplus.
    held["d"] = 1
    plan = planner().plan([assess(chunk(1), held, cluster)], cluster, {}, {})
    assert plan.drain_remaining == {"a": 0}
    assert plan.copies == [] and plan.removals == []


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    names=st.integers(min_value=1, max_value=8),
    limit=st.integers(min_value=1, max_value=4),
)
def test_plans_never_overload_never_duplicate_and_never_remove_needed_replicas(
    data: st.DataObject, names: int, limit: int
) -> None:
    cluster = servers(
        *(
            view(
                f"s{i}",
                alive=data.draw(st.booleans(), label=f"alive{i}"),
                draining=data.draw(st.booleans(), label=f"draining{i}"),
                used=data.draw(st.integers(0, 900), label=f"used{i}") * MiB,
            )
            for i in range(names)
        )
    )
    assessments = []
    for chunk_id in range(1, data.draw(st.integers(0, 12), label="chunks") + 1):
        holders = data.draw(st.sets(st.sampled_from(sorted(cluster))), label="holders")
        replication = data.draw(st.integers(1, 4), label="replication")
        assessments.append(assess(chunk(chunk_id, replication), dict.fromkeys(holders, 1), cluster))
    plan = planner(limit).plan(assessments, cluster, {}, {})
    load: dict[str, int] = {}
    targets: set[tuple[int, str]] = set()
    by_id = {a.target.chunk_id: a for a in assessments}
    for copy in plan.copies:
        assessment = by_id[copy.chunk_id]
        assert copy.target not in assessment.live
        assert cluster[copy.target].accepts
        assert copy.sources[0] in assessment.live
        assert (copy.chunk_id, copy.target) not in targets
        targets.add((copy.chunk_id, copy.target))
        for name in (copy.target, copy.sources[0]):
            load[name] = load.get(name, 0) + 1
    assert all(count <= limit for count in load.values())
    for removal in plan.removals:
        assessment = by_id[removal.chunk_id]
        if removal.reason == "surplus":
            kept = len(assessment.counted) - sum(
                1 for r in plan.removals if r.chunk_id == removal.chunk_id
            )
            assert kept >= assessment.wanted


def test_a_target_is_not_promised_more_than_its_free_space() -> None:
    roomy = ServerView("d", alive=True, draining=False, capacity=100 * MiB, used=0, free=MiB + 1)
    cluster = servers(view("a"), view("b"), view("c"), roomy)
    needy = [assess(chunk(n), {"a": 1, "b": 1}, cluster) for n in (1, 2)]
    # "c" is busy: only "d" could take them, and it has room for one.
    plan = planner(limit=4).plan(needy, cluster, {"c": 4}, {})
    assert [copy.target for copy in plan.copies] == ["d"]
    assert plan.waiting == 1
    # Copies in flight towards it count too.
    plan = planner(limit=4).plan(needy, cluster, {"c": 4}, {}, incoming={"d": MiB})
    assert plan.copies == []
