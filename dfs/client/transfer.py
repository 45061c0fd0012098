"""Copying folders into and out of DFS, several files at once on one client.

A tree is copied in two steps. :func:`plan_put` and :func:`plan_get` walk the source,
create every directory on the other side first (parents before children) and return
the files to copy; :func:`put_files` and :func:`get_files` then copy them, at most
``concurrency`` at a time on the one :class:`DFSClient` connection. Small files spend
most of their time waiting on round trips (create, allocate, commit, close), so a few
in flight keep the metaserver and the dataservers busy where one would leave them idle.

A file or directory that fails is recorded as a :class:`CopyFailure` and the others
go on; a directory that cannot be created or listed is skipped with its contents.
Cancelling a copy cancels every file in flight, and each removes its partial file
before the cancellation completes (see :meth:`DFSClient.put` and :meth:`DFSClient.get`).
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.python.failure import Failure

from dfs.client.client import DFSClient, Progress

#: Files copied at once when the caller does not say.
DEFAULT_CONCURRENCY = 8


@attrs.frozen
class FileCopy:
    """One file to copy: its source, its destination and its size in bytes."""

    source: str
    destination: str
    size: int


@attrs.frozen
class CopyFailure:
    """A file or directory that could not be copied, and why."""

    source: str
    destination: str
    error: Exception


@attrs.define
class TreePlan:
    """What walking a tree found: the files to copy, and what failed on the way."""

    files: list[FileCopy] = attrs.Factory(list)
    failures: list[CopyFailure] = attrs.Factory(list)

    @property
    def total(self) -> int:
        return sum(copy.size for copy in self.files)


class _TotalProgress:
    """Turns each file's running count into one running count over all files."""

    def __init__(self, report: Progress | None) -> None:
        self._report = report
        self._done = 0

    def for_file(self) -> Progress:
        counted = 0

        def progress(count: int) -> None:
            nonlocal counted
            self._done += count - counted
            counted = count
            if self._report is not None:
                self._report(self._done)

        return progress


async def copy_concurrently(
    files: Sequence[FileCopy],
    copy: Callable[[FileCopy, Progress], Awaitable[int]],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
) -> list[CopyFailure]:
    """Run ``copy`` on each of ``files``, at most ``concurrency`` at once, in their
    order; the failures, in the order of ``files``. ``progress`` is given the bytes
    copied so far over all files. Cancelled, it cancels the copies in flight and
    waits for them to end before it raises CancelledError."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    total = _TotalProgress(progress)
    failed: dict[int, CopyFailure] = {}
    # One iterator shared by the workers: each takes the next file when it is free.
    queue: Iterator[tuple[int, FileCopy]] = iter(enumerate(files))

    async def worker() -> None:
        for index, item in queue:
            try:
                await copy(item, total.for_file())
            except CancelledError:
                raise
            except Exception as error:
                failed[index] = CopyFailure(item.source, item.destination, error)

    workers = [Deferred.fromCoroutine(worker()) for _ in range(min(concurrency, len(files)))]
    # Cancelling this cancels the workers, and the list fires once every one has ended,
    # that is once each file in flight has removed its partial copy.
    for succeeded, outcome in await DeferredList(workers, consumeErrors=True):
        if not succeeded:
            cast(Failure, outcome).raiseException()
    return [failed[index] for index in sorted(failed)]


async def plan_put(client: DFSClient, local: Path, remote: str) -> TreePlan:
    """Create ``remote`` and every directory under it for the local folder ``local``
    (merging into directories that exist); the files to copy, in sorted order."""
    plan = TreePlan()
    folders = [(local, remote)]
    while folders:
        folder, target = folders.pop(0)
        try:
            await client.mkdir(target, parents=True)
            children = sorted(os.scandir(folder), key=lambda child: child.name)
        except Exception as error:
            plan.failures.append(CopyFailure(str(folder), target, error))
            continue
        for child in children:
            destination = posixpath.join(target, child.name)
            try:
                if child.is_dir():
                    folders.append((Path(child.path), destination))
                else:
                    plan.files.append(FileCopy(child.path, destination, child.stat().st_size))
            except OSError as error:
                plan.failures.append(CopyFailure(child.path, destination, error))
    return plan


async def plan_get(client: DFSClient, remote: str, local: Path) -> TreePlan:
    """Create ``local`` and every folder under it for the DFS directory ``remote``
    (merging into folders that exist); the files to copy, in listing order."""
    plan = TreePlan()
    directories = [(remote, local)]
    while directories:
        directory, target = directories.pop(0)
        try:
            target.mkdir(exist_ok=True)
            children = await client.listdir(directory)
        except Exception as error:
            plan.failures.append(CopyFailure(directory, str(target), error))
            continue
        for child in children:
            if child.is_dir:
                directories.append((child.path, target / child.name))
            else:
                plan.files.append(FileCopy(child.path, str(target / child.name), child.length))
    return plan


async def put_files(
    client: DFSClient,
    files: Sequence[FileCopy],
    *,
    overwrite: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
    **options: Any,
) -> list[CopyFailure]:
    """Copy local files into DFS (``options`` as for :meth:`DFSClient.put`)."""

    async def put(item: FileCopy, progress: Progress) -> int:
        return await client.put(
            item.source, item.destination, overwrite=overwrite, progress=progress, **options
        )

    return await copy_concurrently(files, put, concurrency=concurrency, progress=progress)


async def get_files(
    client: DFSClient,
    files: Sequence[FileCopy],
    *,
    overwrite: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
) -> list[CopyFailure]:
    """Copy DFS files to local files; without ``overwrite`` an existing local file is
    a failure (FileExistsError)."""

    async def get(item: FileCopy, progress: Progress) -> int:
        if not overwrite and os.path.lexists(item.destination):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), item.destination)
        return await client.get(item.source, item.destination, progress=progress)

    return await copy_concurrently(files, get, concurrency=concurrency, progress=progress)
