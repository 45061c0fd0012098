"""Copying trees several files at once (dfs.client.transfer), with fake copies and a
fake client: no reactor, no network."""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from dfs.client import transfer
from dfs.client.client import Progress
from dfs.client.transfer import CopyFailure, FileCopy
from dfs.protocol.errors import FileExists, PermissionDenied
from dfs.protocol.records import DIRECTORY, FILE, Entry


def started(coroutine: Coroutine[Any, Any, Any]) -> tuple[Deferred[Any], list[Any]]:
    outcome: list[Any] = []
    deferred = Deferred.fromCoroutine(coroutine)
    deferred.addBoth(outcome.append)
    return deferred, outcome


def files(count: int, size: int = 10) -> list[FileCopy]:
    return [FileCopy(f"/src/{index}", f"/dst/{index}", size) for index in range(count)]


class HeldCopies:
    """A copy function whose copies wait until the test ends them, one by one."""

    def __init__(self) -> None:
        self.running: dict[str, tuple[Deferred[int], Progress]] = {}
        self.started: list[str] = []
        self.cleaned_up: list[str] = []

    async def __call__(self, item: FileCopy, progress: Progress) -> int:
        waiting: Deferred[int] = Deferred()
        self.running[item.source] = (waiting, progress)
        self.started.append(item.source)
        try:
            return await waiting
        except CancelledError:
            self.cleaned_up.append(item.source)  # as DFSClient.put removes its file
            raise
        finally:
            del self.running[item.source]

    def finish(self, source: str, result: int | Exception = 10) -> None:
        waiting, progress = self.running[source]
        if isinstance(result, Exception):
            waiting.errback(Failure(result))
        else:
            progress(result)
            waiting.callback(result)


def test_no_more_than_the_concurrency_are_copied_at_once_and_each_is_copied_once() -> None:
    copies = HeldCopies()
    _, outcome = started(transfer.copy_concurrently(files(5), copies, concurrency=2))

    assert sorted(copies.running) == ["/src/0", "/src/1"]
    copies.finish("/src/1")
    assert sorted(copies.running) == ["/src/0", "/src/2"]
    for source in ["/src/0", "/src/2", "/src/3", "/src/4"]:
        copies.finish(source)

    assert outcome == [[]]
    assert copies.started == [f"/src/{index}" for index in (0, 1, 2, 3, 4)]


def test_a_failed_file_is_reported_in_order_and_the_others_are_still_copied() -> None:
    copies = HeldCopies()
    _, outcome = started(transfer.copy_concurrently(files(4), copies, concurrency=3))

    copies.finish("/src/2", PermissionDenied("/dst/2"))
    copies.finish("/src/0", OSError(5, "Input/output error"))
    for source in ["/src/1", "/src/3"]:
        copies.finish(source)

    [failures] = outcome
    assert [(failure.source, type(failure.error)) for failure in failures] == [
        ("/src/0", OSError),
        ("/src/2", PermissionDenied),
    ]


def test_progress_counts_the_bytes_of_every_file_together() -> None:
    seen: list[int] = []
    copies = HeldCopies()
    started(transfer.copy_concurrently(files(3), copies, concurrency=3, progress=seen.append))

    _, first = copies.running["/src/0"]
    _, second = copies.running["/src/1"]
    first(4)
    second(3)
    first(10)
    copies.finish("/src/1", 10)

    assert seen == [4, 7, 13, 20]


def test_cancelling_cancels_every_file_in_flight_and_starts_no_other() -> None:
    copies = HeldCopies()
    deferred, outcome = started(transfer.copy_concurrently(files(10), copies, concurrency=3))
    copies.finish("/src/0")

    deferred.cancel()

    assert sorted(copies.cleaned_up) == ["/src/1", "/src/2", "/src/3"]
    assert copies.started == ["/src/0", "/src/1", "/src/2", "/src/3"]
    [failure] = outcome
    assert isinstance(failure, Failure) and failure.check(CancelledError)


def test_cancelling_ends_only_once_each_file_in_flight_has_cleaned_up() -> None:
    """A file whose clean-up takes a while holds the cancellation until it is done."""
    cleaning: Deferred[None] = Deferred()

    async def slow_to_clean(item: FileCopy, progress: Progress) -> int:
        try:
            await Deferred()
        except CancelledError:
            await cleaning
            raise
        return 0

    deferred, outcome = started(transfer.copy_concurrently(files(2), slow_to_clean, concurrency=2))
    deferred.cancel()
    assert outcome == []
    cleaning.callback(None)
    [failure] = outcome
    assert failure.check(CancelledError)


def test_nothing_to_copy_is_no_failure() -> None:
    _, outcome = started(transfer.copy_concurrently([], HeldCopies(), concurrency=4))
    assert outcome == [[]]


def test_a_concurrency_below_one_is_refused() -> None:
    _, outcome = started(transfer.copy_concurrently(files(1), HeldCopies(), concurrency=0))
    [failure] = outcome
    assert failure.check(ValueError)


class FakeClient:
    """The parts of DFSClient that planning and copying a tree use."""

    def __init__(self, tree: dict[str, list[Entry]] | None = None) -> None:
        self.tree = tree or {}
        self.made: list[str] = []
        self.refused: set[str] = set()
        self.put_calls: list[tuple[str, str, dict[str, Any]]] = []
        self.got: list[tuple[str, str]] = []

    async def mkdir(self, path: str, *, parents: bool = False) -> None:
        if path in self.refused:
            raise PermissionDenied(path)
        self.made.append(path)

    async def listdir(self, path: str) -> list[Entry]:
        if path in self.refused:
            raise PermissionDenied(path)
        return self.tree[path]

    async def put(self, local: str, remote: str, **options: Any) -> int:
        self.put_calls.append((local, remote, options))
        if remote.endswith("exists"):
            raise FileExists(remote)
        return 0

    async def get(self, remote: str, local: str, **options: Any) -> int:
        self.got.append((remote, local))
        Path(local).write_bytes(b"x")
        return 1


def result(coroutine: Coroutine[Any, Any, Any]) -> Any:
    _, outcome = started(coroutine)
    [value] = outcome
    if isinstance(value, Failure):
        value.raiseException()
    return value


def test_plan_put_makes_every_directory_first_and_skips_one_it_cannot_make(
    tmp_path: Path,
) -> None:
    (tmp_path / "top" / "a" / "deep").mkdir(parents=True)
    (tmp_path / "top" / "b").mkdir()
    (tmp_path / "top" / "one.txt").write_bytes(b"1")
    (tmp_path / "top" / "a" / "deep" / "two.txt").write_bytes(b"22")
    (tmp_path / "top" / "b" / "three.txt").write_bytes(b"333")
    client = FakeClient()
    client.refused.add("/up/b")

    plan = result(transfer.plan_put(client, tmp_path / "top", "/up"))  # type: ignore[arg-type]

    assert client.made == ["/up", "/up/a", "/up/a/deep"]
    assert [(copy.destination, copy.size) for copy in plan.files] == [
        ("/up/one.txt", 1),
        ("/up/a/deep/two.txt", 2),
    ]
    assert plan.total == 3
    [failure] = plan.failures
    assert (failure.source, failure.destination) == (str(tmp_path / "top" / "b"), "/up/b")


def entry(path: str, *, is_dir: bool = False, length: int = 0) -> Entry:
    return Entry(
        path=path,
        name=path.rsplit("/", 1)[1],
        kind=DIRECTORY if is_dir else FILE,
        inode=1,
        owner="u",
        group="g",
        mode=0o755 if is_dir else 0o644,
        mtime=0.0,
        length=length,
        replication=0 if is_dir else 3,
        chunk_size=0 if is_dir else 1,
        complete=True,
    )


def test_plan_get_makes_every_folder_first_and_lists_the_files(tmp_path: Path) -> None:
    client = FakeClient(
        {
            "/d": [entry("/d/sub", is_dir=True), entry("/d/x", length=5)],
            "/d/sub": [entry("/d/sub/y", length=7)],
        }
    )

    plan = result(transfer.plan_get(client, "/d", tmp_path / "out"))  # type: ignore[arg-type]

    assert (tmp_path / "out" / "sub").is_dir()
    assert [(copy.source, copy.destination) for copy in plan.files] == [
        ("/d/x", str(tmp_path / "out" / "x")),
        ("/d/sub/y", str(tmp_path / "out" / "sub" / "y")),
    ]
    assert plan.total == 12 and plan.failures == []


def test_put_files_passes_the_options_and_reports_a_refused_file() -> None:
    client = FakeClient()
    copies = [FileCopy("a", "/t/a", 1), FileCopy("b", "/t/exists", 1)]

    failures = result(
        transfer.put_files(client, copies, overwrite=True, replication=2)  # type: ignore[arg-type]
    )

    assert [call[2]["replication"] for call in client.put_calls] == [2, 2]
    assert all(call[2]["overwrite"] for call in client.put_calls)
    assert [(f.destination, type(f.error)) for f in failures] == [("/t/exists", FileExists)]


def test_get_files_keeps_an_existing_local_file_unless_told_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "there").write_bytes(b"keep")
    copies = [FileCopy("/r/there", str(tmp_path / "there"), 1)]
    client = FakeClient()

    [failure] = result(transfer.get_files(client, copies))  # type: ignore[arg-type]
    assert isinstance(failure, CopyFailure) and isinstance(failure.error, FileExistsError)
    assert (tmp_path / "there").read_bytes() == b"keep"

    assert result(transfer.get_files(client, copies, overwrite=True)) == []  # type: ignore[arg-type]
    assert (tmp_path / "there").read_bytes() == b"x"


@pytest.mark.parametrize("concurrency", [1, 4])
def test_every_file_is_copied_whatever_the_concurrency(concurrency: int) -> None:
    client = FakeClient()
    copies = [FileCopy(f"l{index}", f"/r/{index}", 1) for index in range(9)]
    assert result(transfer.put_files(client, copies, concurrency=concurrency)) == []  # type: ignore[arg-type]
    assert sorted(call[1] for call in client.put_calls) == sorted(c.destination for c in copies)
