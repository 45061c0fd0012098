"""Stress tests run many nodes in this process, round after round.

Until someone begins logging, Twisted keeps the last 65,536 log events in memory,
and each event holds the object that logged it (a Raft node and its whole
namespace): begin logging, to a file in the test's folder, so finished rounds can
be freed.
"""

from __future__ import annotations

import pytest
from twisted.logger import globalLogBeginner, jsonFileLogObserver


@pytest.fixture(autouse=True, scope="session")
def logging_begun(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("stress-log") / "events.json"
    with open(path, "a") as handle:
        globalLogBeginner.beginLoggingTo(
            [jsonFileLogObserver(handle)], discardBuffer=True, redirectStandardIO=False
        )
        yield path
