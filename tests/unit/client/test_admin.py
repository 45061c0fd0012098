"""The administration calls of DFSClient against an in-memory leader: fsck pages
through every problem, and each call sends the command the contract names."""

from __future__ import annotations

from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from dfs.client.admin import FSCK_COUNTERS, FSCK_PAGE, FsckProblem, FsckReport
from dfs.client.client import DFSClient
from dfs.protocol.commands import (
    ControlBalancer,
    ControlSafeMode,
    Decommission,
    Fsck,
    ListDataservers,
    Recommission,
)
from dfs.protocol.errors import FileNotFound


def problem(number: int) -> dict[str, Any]:
    return {
        "path": f"/data/f{number}",
        "index": 0,
        "chunk_id": number,
        "version": 1,
        "problem": "under-replicated",
        "replicas": 2,
        "wanted": 3,
        "locations": ["ds1", "ds2"],
    }


class FakeLeader:
    """The channel's ``call`` as a leader answers it; Fsck pages through
    ``problems`` as the metaserver does, counters that differ per call."""

    def __init__(self, problems: int = 0, answers: dict[Any, dict[str, Any]] | None = None):
        self.problems = [problem(number) for number in range(problems)]
        self.answers = answers or {}
        self.requests: list[tuple[Any, dict[str, Any]]] = []

    async def call(self, command: Any, **arguments: Any) -> dict[str, Any]:
        self.requests.append((command, arguments))
        if command is Fsck:
            if arguments["path"] == "/missing":
                raise FileNotFound("/missing")
            start, limit = arguments["start"], arguments["limit"]
            page = self.problems[start : start + limit]
            counters = {name: 0 for name in FSCK_COUNTERS}
            # The summary is recomputed on every call: the client keeps the last one.
            counters["files"] = len(self.requests)
            counters["under_replicated"] = len(self.problems)
            return {
                "problems": page,
                "more": start + limit < len(self.problems),
                "healthy": not self.problems,
                **counters,
            }
        return self.answers.get(command, {})

    def sent(self, command: Any) -> list[dict[str, Any]]:
        return [arguments for sent, arguments in self.requests if sent is command]


def make_client(leader: FakeLeader) -> DFSClient:
    config: Any = SimpleNamespace(connect_timeout=5.0, metaservers=[])
    credentials: Any = SimpleNamespace(identity=SimpleNamespace(name="admin"))
    return DFSClient(MemoryReactor(), config, credentials, leader)  # type: ignore[arg-type]


def result(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The outcome of a coroutine that needs no reactor turn (the fake answers at once)."""
    outcome: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(outcome.append)
    assert outcome, "the call did not finish"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def test_fsck_of_a_healthy_tree_asks_once_and_keeps_every_counter() -> None:
    leader = FakeLeader()

    report = result(make_client(leader).fsck())

    assert report == FsckReport(
        healthy=True,
        problems=(),
        summary={name: (1 if name == "files" else 0) for name in FSCK_COUNTERS},
    )
    assert leader.sent(Fsck) == [{"path": "/", "start": 0, "limit": FSCK_PAGE}]


def test_fsck_pages_through_every_problem_and_keeps_the_last_summary() -> None:
    leader = FakeLeader(problems=2 * FSCK_PAGE + 7)

    report = result(make_client(leader).fsck("/data"))

    assert [arguments["start"] for arguments in leader.sent(Fsck)] == [0, 500, 1000]
    assert {arguments["limit"] for arguments in leader.sent(Fsck)} == {FSCK_PAGE}
    assert {arguments["path"] for arguments in leader.sent(Fsck)} == {"/data"}
    assert not report.healthy
    assert len(report.problems) == 2 * FSCK_PAGE + 7
    assert [p.chunk_id for p in report.problems] == list(range(2 * FSCK_PAGE + 7))
    assert report.problems[3] == FsckProblem(
        path="/data/f3",
        index=0,
        chunk_id=3,
        version=1,
        problem="under-replicated",
        replicas=2,
        wanted=3,
        locations=("ds1", "ds2"),
    )
    assert report.summary["files"] == 3  # from the third and last page
    assert report.summary["under_replicated"] == 2 * FSCK_PAGE + 7
    assert set(report.summary) == set(FSCK_COUNTERS)


def test_fsck_stops_at_an_empty_page_that_claims_more() -> None:
    leader = FakeLeader()

    async def endless(command: Any, **arguments: Any) -> dict[str, Any]:
        leader.requests.append((command, arguments))
        return {
            "problems": [],
            "more": True,
            "healthy": False,
            **{name: 0 for name in FSCK_COUNTERS},
        }

    leader.call = endless  # type: ignore[method-assign]

    report = result(make_client(leader).fsck())

    assert len(leader.requests) == 1
    assert report.problems == ()
    assert not report.healthy


def test_fsck_of_a_missing_path_raises_the_error() -> None:
    with pytest.raises(FileNotFound):
        result(make_client(FakeLeader()).fsck("/missing"))


def test_dataservers_are_those_the_leader_lists() -> None:
    listed = {"name": "ds1", "address": "127.0.0.1:7200", "state": "decommissioning"}
    leader = FakeLeader(answers={ListDataservers: {"dataservers": [listed]}})

    assert result(make_client(leader).dataservers()) == [listed]


def test_decommission_and_recommission_name_the_dataserver() -> None:
    leader = FakeLeader()
    client = make_client(leader)

    result(client.decommission("ds2"))
    result(client.recommission("ds3"))

    assert leader.sent(Decommission) == [{"name": "ds2"}]
    assert leader.sent(Recommission) == [{"name": "ds3"}]


def test_safemode_sends_the_action_and_answers_the_state() -> None:
    state = {"on": True, "manual": True, "reason": "maintenance"}
    leader = FakeLeader(answers={ControlSafeMode: state})
    client = make_client(leader)

    assert result(client.safemode()) == state
    assert result(client.safemode("enter")) == state
    assert leader.sent(ControlSafeMode) == [{"action": "get"}, {"action": "enter"}]


def test_an_unknown_safemode_action_is_refused_before_anything_is_sent() -> None:
    leader = FakeLeader()

    with pytest.raises(ValueError, match="get, enter or leave"):
        result(make_client(leader).safemode("toggle"))
    assert leader.requests == []


def test_balancer_sends_the_action_and_threshold() -> None:
    leader = FakeLeader(answers={ControlBalancer: {"running": True}})
    client = make_client(leader)

    assert result(client.balancer("start", threshold=5.0)) == {"running": True}
    result(client.balancer())

    assert leader.sent(ControlBalancer) == [
        {"action": "start", "threshold": 5.0},
        {"action": "status", "threshold": 0.0},
    ]


@pytest.mark.parametrize(("action", "threshold"), [("restart", 0.0), ("start", -1.0)])
def test_a_wrong_balancer_request_is_refused_before_anything_is_sent(
    action: str, threshold: float
) -> None:
    leader = FakeLeader()

    with pytest.raises(ValueError):
        result(make_client(leader).balancer(action, threshold))
    assert leader.requests == []
