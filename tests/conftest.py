"""The one way tests get a cluster: real twistd processes on loopback.

``make_cluster(metaservers=M, dataservers=N)`` creates a cluster in a temporary
folder with a fresh CA, starts every node as a twistd process on free ports,
waits until a metaserver leads and every metaserver sees every dataserver alive,
and always stops every process it started when the test ends (printing the logs
of a failed test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from dfs.localcluster import LocalCluster

# Property tests check what holds, not how fast: hypothesis's per-example deadline is a
# timed assertion, and fails on a machine busy with other work.
settings.register_profile("dfs", deadline=None)
settings.load_profile("dfs")

# Fast heartbeats so that death and recovery are seen within seconds.
HEARTBEAT_INTERVAL = 0.2
DEAD_AFTER = 2.0


@pytest.fixture
def make_cluster(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., LocalCluster]]:
    clusters: list[LocalCluster] = []

    def make(metaservers: int = 1, dataservers: int = 3, **options: object) -> LocalCluster:
        options.setdefault("heartbeat_interval", HEARTBEAT_INTERVAL)
        options.setdefault("dataserver_dead_after", DEAD_AFTER)
        cluster = LocalCluster.create(
            tmp_path / f"cluster{len(clusters)}",
            metaservers=metaservers,
            dataservers=dataservers,
            **options,
        )
        clusters.append(cluster)
        cluster.start()
        cluster.wait_ready(timeout=60)
        return cluster

    yield make
    failed = getattr(request.node, "rep_call", None)
    for cluster in clusters:
        if failed is not None and failed.failed:
            for node, log in cluster.iter_logs():
                print(f"----- {node.name} log (last 40 lines) -----")
                print("\n".join(log.splitlines()[-40:]))
        cluster.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    """One metaserver and three dataservers."""
    return make_cluster()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# Lines a test prints starting with "REPORT " (benchmark-like figures of stress tests,
# the size of the permission matrix, the fuzzer's counts), gathered from the captured
# output and shown together at the end of the run, so that CI logs carry them.
_REPORTS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        for line in report.capstdout.splitlines():
            if line.startswith("REPORT "):
                _REPORTS.append(line.removeprefix("REPORT "))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORTS:
        terminalreporter.section("reports")
        for line in _REPORTS:
            terminalreporter.write_line(line)
