"""``dfs admin`` as a user sees it, against a fake client: what is printed, what goes
to standard error and the exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import pytest

from dfs.client.admin import FSCK_COUNTERS, FsckProblem, FsckReport
from dfs.protocol.errors import FileNotFound, UnknownDataserver
from dfs_shell import admin
from dfs_shell.errors import CommandError

Run = Callable[..., tuple[int, str, str]]


def summary(**counters: int) -> dict[str, int]:
    return {name: counters.get(name, 0) for name in FSCK_COUNTERS}


HEALTHY = FsckReport(
    healthy=True,
    problems=(),
    summary=summary(
        files=12,
        directories=4,
        bytes=1288490188,
        chunks=25,
        replicas=75,
        dataservers_alive=3,
    ),
)

UNDER = FsckProblem(
    path="/a/b",
    index=3,
    chunk_id=17,
    version=2,
    problem="under-replicated",
    replicas=2,
    wanted=3,
    locations=("ds1", "ds2"),
)
MISSING = FsckProblem(
    path="/a/c",
    index=0,
    chunk_id=21,
    version=1,
    problem="missing",
    replicas=0,
    wanted=3,
    locations=(),
)
UNHEALTHY = FsckReport(
    healthy=False,
    problems=(UNDER, MISSING),
    summary=summary(
        files=12,
        directories=4,
        bytes=1288490188,
        chunks=25,
        open_chunks=1,
        missing=1,
        under_replicated=1,
        replicas=71,
        dataservers_alive=2,
        dataservers_dead=1,
        copies_in_flight=1,
    ),
)


def dataserver(name: str, state: str = "alive", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": f"127.0.0.1:72{name[-1]}0",
        "state": state,
        "capacity": 100 * 2**30,
        "free": 80 * 2**30,
        "used": 20 * 2**30,
        "chunks": 312,
        "last_heartbeat_age": 0.42,
        **fields,
    }


META_VIEWS = [
    {
        "address": "127.0.0.1:7000",
        "name": "meta1",
        "raft": "127.0.0.1:7100",
        "role": "leader",
        "serving": True,
        "leader": "127.0.0.1:7000",
        "term": 3,
        "commit_index": 1204,
        "last_applied": 1204,
        "members": [],
    }
]

SAFE_MODE_OFF = {
    "on": False,
    "manual": False,
    "reason": "",
    "reported_chunks": 1000,
    "total_chunks": 1000,
    "threshold": 0.999,
    "dataservers_alive": 3,
    "min_dataservers": 0,
}

BALANCER = {
    "running": True,
    "continuous": False,
    "threshold": 10.0,
    "bandwidth": 104857600,
    "moves_in_flight": 2,
    "moved_chunks": 15,
    "moved_bytes": 1006632960,
    "spread": 14.25,
    "balanced": False,
}


class FakeClient:
    """The BlockingClient calls dfs admin makes; ``fail`` raises from every call."""

    def __init__(self) -> None:
        self.report = HEALTHY
        self.servers: list[dict[str, Any]] = [dataserver("ds1"), dataserver("ds2")]
        self.listings: list[list[dict[str, Any]]] = []
        self.safe_mode = SAFE_MODE_OFF
        self.balancer_state = BALANCER
        self.fail: Exception | None = None
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.fail is not None:
            raise self.fail

    def metaserver_status(self) -> list[dict[str, Any]]:
        self._call("metaserver_status")
        return META_VIEWS

    def fsck(self, path: str = "/") -> FsckReport:
        self._call("fsck", path)
        return self.report

    def dataservers(self) -> list[dict[str, Any]]:
        self._call("dataservers")
        return self.listings.pop(0) if self.listings else self.servers

    def decommission(self, name: str) -> None:
        self._call("decommission", name)

    def recommission(self, name: str) -> None:
        self._call("recommission", name)

    def safemode(self, action: str = "get") -> dict[str, Any]:
        self._call("safemode", action)
        return self.safe_mode

    def balancer(self, action: str = "status", threshold: float = 0.0) -> dict[str, Any]:
        self._call("balancer", action, threshold)
        return self.balancer_state


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()

    class FakeSession:
        def __init__(self, args: argparse.Namespace) -> None:
            self.client = fake

        def check_directory(self, path: str) -> None:
            pass  # a trailing slash on a file: tests/integration/test_cli_files.py

        def close(self) -> None:
            pass

    monkeypatch.setattr(admin, "Session", FakeSession)
    return fake


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfs")
    admin.register(parser.add_subparsers())
    return parser


@pytest.fixture
def dfs(capsys: pytest.CaptureFixture[str], client: FakeClient) -> Run:
    """Run ``dfs admin ARGS`` in-process the way dfs_shell.main dispatches it."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            args = build_parser().parse_args(["admin", *argv])
            code = args.run(args)
        except SystemExit as exit:  # argparse usage errors
            code = int(exit.code or 0)
        except CommandError as error:
            print(f"dfs: {error.command}: {error.message}", file=sys.stderr)
            code = error.exit_code
        out, err = capsys.readouterr()
        return code, out, err

    return run


# -- fsck ---------------------------------------------------------------------------


def test_fsck_of_a_healthy_tree_prints_a_summary_and_exits_0(dfs: Run, client: FakeClient) -> None:
    code, out, err = dfs("fsck", "/data")

    assert (code, err) == (0, "")
    assert client.calls == [("fsck", ("/data",))]
    assert out == (
        "Status: HEALTHY\n"
        " Total size:                  1288490188 B (1.2G)\n"
        " Total directories:           4\n"
        " Total files:                 12\n"
        " Total chunks:                25\n"
        " Open chunks (being written): 0\n"
        " Missing chunks:              0 (0.0 %)\n"
        " Under-replicated chunks:     0 (0.0 %)\n"
        " Over-replicated chunks:      0 (0.0 %)\n"
        " Corrupt chunks:              0 (0.0 %)\n"
        " Stale chunks:                0 (0.0 %)\n"
        " Average replication:         3.00\n"
        " Dataservers:                 3 alive, 0 dead, 0 decommissioning\n"
        " Copies in flight:            0\n"
        "\n"
        "The filesystem under path '/data' is HEALTHY\n"
    )


def test_fsck_lists_each_problem_then_the_summary_and_exits_1_when_unhealthy(
    dfs: Run, client: FakeClient
) -> None:
    client.report = UNHEALTHY

    code, out, err = dfs("fsck")

    assert (code, err) == (1, "")
    assert client.calls == [("fsck", ("/",))]
    lines = out.splitlines()
    assert lines[:3] == [
        "/a/b: chunk 3 (id 17 v2): under-replicated: 2 of 3 replicas (ds1, ds2)",
        "/a/c: chunk 0 (id 21 v1): missing: 0 of 3 replicas",
        "",
    ]
    assert lines[3] == "Status: UNHEALTHY"
    assert " Missing chunks:              1 (4.0 %)" in lines
    assert " Under-replicated chunks:     1 (4.0 %)" in lines
    assert " Open chunks (being written): 1" in lines
    assert " Average replication:         2.84" in lines
    assert " Dataservers:                 2 alive, 1 dead, 0 decommissioning" in lines
    assert " Copies in flight:            1" in lines
    assert lines[-1] == "The filesystem under path '/' is UNHEALTHY"


def test_fsck_of_an_empty_tree_divides_by_no_zero() -> None:
    report = FsckReport(healthy=True, problems=(), summary=summary())

    text = admin.format_fsck(report, "/")

    assert " Average replication:         0.00" in text.splitlines()
    assert " Missing chunks:              0 (0.0 %)" in text.splitlines()


def test_fsck_of_a_missing_path_is_one_line_on_stderr_and_exit_1(
    dfs: Run, client: FakeClient
) -> None:
    client.fail = FileNotFound("/nope")

    code, out, err = dfs("fsck", "/nope")

    assert (code, out) == (1, "")
    assert err == "dfs: admin fsck: /nope: No such file or directory\n"


# -- status -------------------------------------------------------------------------


def test_status_shows_the_metaservers_then_a_table_of_dataservers(
    dfs: Run, client: FakeClient
) -> None:
    client.servers = [
        dataserver("ds2", "decommissioning", chunks=40),
        dataserver("ds1", last_heartbeat_age=123.4),
    ]

    code, out, err = dfs("status")

    assert (code, err) == (0, "")
    meta, dataservers = out.split("\n\n")
    assert meta == admin.format_metaservers(META_VIEWS)
    assert dataservers.splitlines() == [
        "NAME  ADDRESS         STATE                CAPACITY         USED         FREE  USE%"
        "  CHUNKS  LAST HEARTBEAT",
        "ds1   127.0.0.1:7210  alive            107374182400  21474836480  85899345920   20%"
        "     312  123s ago",
        "ds2   127.0.0.1:7220  decommissioning  107374182400  21474836480  85899345920   20%"
        "      40  0.4s ago",
        "2 dataservers: 1 alive, 0 dead, 1 decommissioning, 0 decommissioned",
    ]


def test_status_h_shows_human_sizes(dfs: Run) -> None:
    code, out, _ = dfs("status", "-h")

    assert code == 0
    row = out.split("\n\n")[1].splitlines()[1].split()
    assert row[3:7] == ["100.0G", "20.0G", "80.0G", "20%"]


def test_status_exits_3_when_a_dataserver_is_dead(dfs: Run, client: FakeClient) -> None:
    client.servers = [dataserver("ds1"), dataserver("ds2", "dead", last_heartbeat_age=31.0)]

    code, out, _ = dfs("status")

    assert code == 3
    assert "2 dataservers: 1 alive, 1 dead, 0 decommissioning, 0 decommissioned" in out


def test_status_of_a_dataserver_with_no_capacity_shows_no_percentage() -> None:
    text = admin.format_dataservers([dataserver("ds1", capacity=0, used=0, free=0)])

    assert text.splitlines()[1].split()[3:7] == ["0", "0", "0", "-"]


def test_status_with_no_dataserver_says_so() -> None:
    assert admin.format_dataservers([]) == "no dataserver has registered"


def test_meta_status_output_is_unchanged(dfs: Run) -> None:
    code, out, _ = dfs("meta", "status")

    assert code == 0
    assert out.splitlines() == [
        "METASERVER             NAME       RAFT                   ROLE         TERM   COMMIT"
        "  APPLIED    LAG",
        "127.0.0.1:7000         meta1      127.0.0.1:7100         leader          3     1204"
        "     1204      0",
        "group (as the leader meta1 sees it): 127.0.0.1:7100",
    ]


# -- decommissioning ----------------------------------------------------------------


def test_decommission_says_it_is_draining_and_how_to_follow_it(
    dfs: Run, client: FakeClient
) -> None:
    code, out, err = dfs("decommission", "ds2")

    assert (code, err) == (0, "")
    assert client.calls == [("decommission", ("ds2",))]
    assert out.count("\n") == 1
    assert out.startswith("ds2 is decommissioning")
    assert "dfs admin decommission ds2 --wait" in out


def test_decommission_wait_returns_once_it_is_decommissioned(dfs: Run, client: FakeClient) -> None:
    client.servers = [dataserver("ds1"), dataserver("ds2", "decommissioned")]

    code, out, err = dfs("decommission", "ds2", "--wait", "--timeout", "60")

    assert (code, err) == (0, "")
    assert client.calls == [("decommission", ("ds2",)), ("dataservers", ())]
    assert out.startswith("ds2 is decommissioned")


def test_decommission_of_an_unknown_dataserver_names_it(dfs: Run, client: FakeClient) -> None:
    client.fail = UnknownDataserver("no dataserver named 'ds9' has registered")

    code, out, err = dfs("decommission", "ds9")

    assert (code, out) == (1, "")
    assert err == (
        "dfs: admin decommission: ds9: Dataserver not registered: "
        "no dataserver named 'ds9' has registered\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("decommission", "ds2", "--timeout", "10"),
        ("decommission", "ds2", "--wait", "--timeout", "0"),
        ("decommission", "ds2", "--wait", "--timeout", "soon"),
        ("decommission",),
    ],
)
def test_a_wrong_decommission_command_line_exits_2(
    dfs: Run, client: FakeClient, argv: tuple[str, ...]
) -> None:
    code, _, _ = dfs(*argv)

    assert code == 2
    assert client.calls == []


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_decommissioned_polls_every_half_second_and_reports_progress() -> None:
    client = FakeClient()
    client.listings = [
        [dataserver("ds2", "decommissioning", chunks=chunks)] for chunks in (300, 200, 100)
    ] + [[dataserver("ds2", "decommissioned", chunks=100)]]
    seen: list[str] = []
    fake = FakeTime()

    final = admin.wait_decommissioned(
        client,  # type: ignore[arg-type]
        "ds2",
        60.0,
        progress=lambda ds, waited: seen.append(admin.format_draining(ds, waited)),
        clock=fake.clock,
        sleep=fake.sleep,
    )

    assert final["state"] == "decommissioned"
    assert fake.sleeps == [0.5, 0.5, 0.5]
    assert seen == [
        "ds2: decommissioning, holds 300 chunks (0 s)",
        "ds2: decommissioning, holds 200 chunks (0 s)",
        "ds2: decommissioning, holds 100 chunks (1 s)",
    ]


def test_wait_decommissioned_gives_up_after_the_timeout() -> None:
    client = FakeClient()
    client.servers = [dataserver("ds2", "decommissioning", chunks=40)]
    fake = FakeTime()

    with pytest.raises(CommandError) as raised:
        admin.wait_decommissioned(client, "ds2", 2.0, clock=fake.clock, sleep=fake.sleep)  # type: ignore[arg-type]

    assert fake.now == 102.0
    assert raised.value.exit_code == 1
    assert raised.value.message == (
        "ds2: still decommissioning after 2 s (holds 40 chunks); it goes on draining"
    )


def test_recommission_names_the_dataserver(dfs: Run, client: FakeClient) -> None:
    code, out, _ = dfs("recommission", "ds2")

    assert code == 0
    assert client.calls == [("recommission", ("ds2",))]
    assert out == "ds2 is back in service: it takes new chunks again\n"


# -- safe mode ------------------------------------------------------------------------


def test_safemode_get_is_the_default_and_prints_off(dfs: Run, client: FakeClient) -> None:
    assert dfs("safemode") == (0, "Safe mode is OFF\n", "")
    assert client.calls == [("safemode", ("get",))]


def test_safemode_entered_by_an_administrator(dfs: Run, client: FakeClient) -> None:
    client.safe_mode = {
        **SAFE_MODE_OFF,
        "on": True,
        "manual": True,
        "reason": "safe mode entered by an administrator",
    }

    assert dfs("safemode", "enter") == (
        0,
        "Safe mode is ON (safe mode entered by an administrator)\n",
        "",
    )
    assert client.calls == [("safemode", ("enter",))]


def test_safemode_waiting_for_chunk_reports_shows_the_counts() -> None:
    state = {
        **SAFE_MODE_OFF,
        "on": True,
        "reason": "waiting for chunk reports",
        "reported_chunks": 998,
        "total_chunks": 1000,
        "min_dataservers": 3,
        "dataservers_alive": 2,
    }

    assert admin.format_safemode(state).splitlines() == [
        "Safe mode is ON (waiting for chunk reports)",
        "  Chunks reported: 998 of 1000 (99.8%, 99.9% needed)",
        "  Dataservers alive: 2 (3 needed)",
    ]


def test_safemode_with_an_unknown_action_exits_2(dfs: Run, client: FakeClient) -> None:
    assert dfs("safemode", "toggle")[0] == 2
    assert client.calls == []


# -- the balancer -------------------------------------------------------------------


def test_balancer_start_with_a_threshold(dfs: Run, client: FakeClient) -> None:
    code, out, err = dfs("balancer", "start", "--threshold", "5")

    assert (code, err) == (0, "")
    assert client.calls == [("balancer", ("start", 5.0))]
    assert out.splitlines() == [
        "Balancer is running (threshold 10%)",
        "  Spread: 14.2% from the mean use: not balanced",
        "  Moves in flight: 2",
        "  Moved: 15 chunks, 1006632960 B (960.0M)",
        "  Bandwidth: 100.0M/s per move",
    ]


def test_balancer_stop_and_status(dfs: Run, client: FakeClient) -> None:
    client.balancer_state = {
        **BALANCER,
        "running": False,
        "continuous": True,
        "spread": 3.0,
        "balanced": True,
        "moves_in_flight": 0,
    }

    code, out, _ = dfs("balancer", "stop")
    assert dfs("balancer", "status")[1] == out

    assert code == 0
    assert client.calls == [("balancer", ("stop", 0.0)), ("balancer", ("status", 0.0))]
    assert out.splitlines()[:2] == [
        "Balancer is not running (threshold 10%, continuous)",
        "  Spread: 3.0% from the mean use: balanced",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ("balancer",),
        ("balancer", "restart"),
        ("balancer", "start", "--threshold", "100"),
        ("balancer", "start", "--threshold", "lots"),
        ("balancer", "stop", "--threshold", "5"),
    ],
)
def test_a_wrong_balancer_command_line_exits_2(
    dfs: Run, client: FakeClient, argv: tuple[str, ...]
) -> None:
    assert dfs(*argv)[0] == 2
    assert client.calls == []
