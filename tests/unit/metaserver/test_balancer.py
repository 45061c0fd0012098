"""The balancer: moves from the fullest to the emptiest, and when it is done."""

from __future__ import annotations

import random

from dfs.metaserver.balancer import Balancer, spread
from dfs.metaserver.namespace import (
    ChunkTarget,
)
from dfs.metaserver.replication import BALANCE, Assessment, ServerView, assess

MiB = 1024 * 1024


def view(name: str, used_mib: int, *, draining: bool = False) -> ServerView:
    return ServerView(
        name=name,
        alive=True,
        draining=draining,
        capacity=100 * MiB,
        used=used_mib * MiB,
        free=(100 - used_mib) * MiB,
    )


def cluster_with(
    layout: dict[str, list[int]], *, replication: int = 1
) -> tuple[dict[str, ServerView], dict[str, list[Assessment]]]:
    """layout: dataserver -> chunk ids it holds (each chunk 1 MiB)."""
    views = {name: view(name, len(ids)) for name, ids in layout.items()}
    holders: dict[int, dict[str, int]] = {}
    for name, ids in layout.items():
        for chunk_id in ids:
            holders.setdefault(chunk_id, {})[name] = 1
    held: dict[str, list[Assessment]] = {}
    for chunk_id, replicas in holders.items():
        assessment = assess(ChunkTarget(chunk_id, 1, MiB, replication), replicas, views)
        for name in replicas:
            held.setdefault(name, []).append(assessment)
    return views, held


def test_spread_is_the_largest_distance_from_the_mean_in_percent() -> None:
    assert spread([view("a", 10), view("b", 30)]) == 10.0
    assert spread([]) == 0.0


def test_moves_go_from_the_fullest_to_the_emptiest_and_remove_the_original() -> None:
    views, held = cluster_with(
        {"full": list(range(1, 61)), "mid": list(range(61, 91)), "empty": []}
    )
    balancer = Balancer(threshold=5, running=True, rng=random.Random(1))
    moves = balancer.plan(views, lambda name: held.get(name, []), {}, {}, {})
    assert len(moves) == 1
    (move,) = moves
    assert (move.sources, move.target, move.then_remove, move.purpose) == (
        ("full",),
        "empty",
        "full",
        BALANCE,
    )


def test_nothing_moves_within_the_threshold_or_onto_a_draining_dataserver() -> None:
    views, held = cluster_with({"a": list(range(1, 31)), "b": list(range(31, 58))})
    balancer = Balancer(threshold=5, running=True)
    assert balancer.plan(views, lambda name: held.get(name, []), {}, {}, {}) == []
    views["c"] = view("c", 0, draining=True)
    assert balancer.plan(views, lambda name: held.get(name, []), {}, {}, {}) == []


def test_chunks_lacking_replicas_or_being_copied_are_not_moved() -> None:
    views, held = cluster_with({"full": [1, 2], "empty": []}, replication=2)
    balancer = Balancer(threshold=0.5, running=True)
    # Both chunks have one replica of two: moving either would not help it.
    assert balancer.plan(views, lambda name: held.get(name, []), {}, {}, {}) == []
    views, held = cluster_with({"full": [1, 2], "empty": []})
    copying = {1: frozenset({"x"}), 2: frozenset({"y"})}
    assert balancer.plan(views, lambda name: held.get(name, []), {}, copying, {}) == []


def test_moves_in_flight_count_against_both_ends() -> None:
    views, held = cluster_with({"full": list(range(1, 41)), "empty": []})
    balancer = Balancer(threshold=5, running=True)
    busy = {"full": 1, "empty": 1}
    assert balancer.plan(views, lambda name: held.get(name, []), busy, {}, {}) == []


def test_a_simulated_cluster_balances_and_every_move_keeps_the_chunk() -> None:
    """Run the balancer to the end over a model cluster: each move copies then
    removes, and the cluster ends within the threshold."""
    layout = {"a": list(range(1, 81)), "b": list(range(81, 101)), "c": [], "d": []}
    balancer = Balancer(threshold=5, running=True, rng=random.Random(3))
    for _ in range(500):
        views, held = cluster_with(layout)
        if spread(views.values()) <= balancer.threshold:
            break
        moves = balancer.plan(views, lambda name, held=held: held.get(name, []), {}, {}, {})
        assert moves, "the balancer stalled before reaching the threshold"
        for move in moves:
            layout[move.target].append(move.chunk_id)
            assert move.then_remove is not None
            layout[move.then_remove].remove(move.chunk_id)
    views, _ = cluster_with(layout)
    assert spread(views.values()) <= 5
    assert sorted(c for ids in layout.values() for c in ids) == list(range(1, 101))
