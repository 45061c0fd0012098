"""A caller that gives up while the metaserver creates a file: the file is created
all the same, and removed before the caller's operation ends, so that a command
interrupted then (Ctrl-C) leaves no file behind when it exits."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred

from dfs.client.client import DFSClient


class Harness:
    def __init__(self) -> None:
        self.created: Deferred[Any] = Deferred()
        self.discarded: list[Any] = []
        self.client = DFSClient.__new__(DFSClient)

        async def create(path: str, **options: Any) -> Any:
            return await self.created

        async def discard(writer: Any) -> None:
            self.discarded.append(writer)

        self.client.create = create  # type: ignore[method-assign]
        self.client.discard = discard  # type: ignore[method-assign]

    def start(self) -> Deferred[Any]:
        return Deferred.fromCoroutine(self.client._create_or_clean_up("/f"))


def outcome(deferred: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    deferred.addBoth(results.append)
    return results


def test_giving_up_during_the_create_ends_only_once_the_file_is_removed():
    harness = Harness()
    started = harness.start()
    ended = outcome(started)
    started.cancel()
    assert ended == [], "it waits for the create, which it cannot stop"
    harness.created.callback("writer")
    assert harness.discarded == ["writer"]
    assert len(ended) == 1 and ended[0].check(CancelledError)


def test_giving_up_during_a_create_that_fails_removes_nothing():
    harness = Harness()
    started = harness.start()
    ended = outcome(started)
    started.cancel()
    harness.created.errback(FileExistsError("/f"))
    assert harness.discarded == []
    assert len(ended) == 1 and ended[0].check(CancelledError)


def test_a_create_that_ends_first_gives_its_writer_or_its_error():
    harness = Harness()
    started = harness.start()
    harness.created.callback("writer")
    assert outcome(started) == ["writer"]
    failing = Harness()
    started = failing.start()
    failing.created.errback(FileExistsError("/f"))
    [failure] = outcome(started)
    with pytest.raises(FileExistsError):
        failure.raiseException()
