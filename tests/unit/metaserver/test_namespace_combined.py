"""Operations that do in one log entry what took two: an empty file created closed,
a file created with its first chunk, the last chunk committed with the close. Each
ends in the state the two operations it replaces would have left, and changes
nothing when it is refused."""

from __future__ import annotations

from typing import Any

import pytest

from dfs.metaserver.namespace import (
    Namespace,
)
from dfs.metaserver.operations import (
    AddChunk,
    Caller,
    Close,
    CommitChunk,
    CommitClose,
    Create,
    CreateClosed,
    CreateWithChunk,
    Err,
    Mkdir,
    Ok,
    Operation,
    SetQuota,
)

ALICE = Caller("alice")
ADMIN = Caller("dfs", superuser=True)
CHUNK = 1024


def ok(ns: Namespace, op: Operation) -> Any:
    result = ns.apply(op)
    assert isinstance(result, Ok), result
    return result.value


def refused(ns: Namespace, op: Operation, error: str) -> str:
    before = Namespace.restore(ns.snapshot())
    result = ns.apply(op)
    assert isinstance(result, Err), result
    assert result.error == error, result
    assert ns == before
    return result.message


@pytest.fixture
def ns() -> Namespace:
    ns = Namespace()
    ok(ns, Mkdir("/home", 0o777, caller=ADMIN, now=0.0))
    return ns


def with_chunk(path: str = "/home/f", **kw: Any) -> CreateWithChunk:
    return CreateWithChunk(
        path, chunk_size=CHUNK, caller=ALICE, now=1.0, lease_holder="w", lease_expires=60.0, **kw
    )


def two_steps(ns: Namespace, path: str = "/home/f") -> Any:
    ok(
        ns,
        Create(path, chunk_size=CHUNK, caller=ALICE, now=1.0, lease_holder="w", lease_expires=60.0),
    )
    return ok(ns, AddChunk(path, "w", 60.0, caller=ALICE, now=1.0))


def test_an_empty_file_created_closed_is_complete_with_no_lease(ns):
    result = ok(ns, CreateClosed("/home/e", 0o640, caller=ALICE, now=5.0))
    assert result.stat.complete and result.stat.length == 0
    assert result.stat.under_construction is None
    assert ns.expired_leases(10**9) == []
    refused(ns, CreateClosed("/home/e", caller=ALICE, now=6.0), "FileExists")


def test_created_closed_over_a_file_someone_writes_is_a_lease_conflict(ns):
    two_steps(ns)
    refused(ns, CreateClosed("/home/f", overwrite=True, caller=ALICE, now=2.0), "LeaseConflict")


def test_a_file_created_with_its_chunk_equals_create_then_add_chunk(ns):
    created = ok(ns, with_chunk())
    other = Namespace()
    ok(other, Mkdir("/home", 0o777, caller=ADMIN, now=0.0))
    chunk = two_steps(other)
    assert created.chunk == chunk
    assert ns == other


def test_the_first_chunk_is_left_out_where_add_chunk_would_be_refused(ns):
    ok(ns, SetQuota("/home", None, CHUNK, False, caller=ADMIN, now=0.0))
    created = ok(ns, with_chunk(replication=3))
    assert created.chunk is None
    assert not created.stat.complete
    refused(ns, AddChunk("/home/f", "w", 60.0, caller=ALICE, now=1.0), "QuotaExceeded")


def test_commit_close_equals_commit_then_close(ns):
    chunk = ok(ns, with_chunk()).chunk
    other = Namespace.restore(ns.snapshot())
    ok(ns, CommitClose("/home/f", "w", chunk.chunk_id, 1, 100, 100, caller=ALICE, now=9.0))
    ok(other, CommitChunk("/home/f", "w", chunk.chunk_id, 1, 100, caller=ALICE, now=9.0))
    ok(other, Close("/home/f", "w", 100, caller=ALICE, now=9.0))
    assert ns == other
    assert ns.stat("/home/f").value.complete


def test_commit_close_with_nothing_written_drops_the_chunk(ns):
    chunk = ok(ns, with_chunk()).chunk
    stat = ok(ns, CommitClose("/home/f", "w", chunk.chunk_id, 1, 0, 0, caller=ALICE, now=9.0))
    assert stat.complete and stat.length == 0
    assert ns.chunks("/home/f").value == ()
    assert ns.chunk_target(chunk.chunk_id) is None
    assert ns.du("/home").value.replicated_bytes == 0
    assert ns.quota("/home").value.space == 0


def test_commit_close_is_refused_whole(ns):
    chunk = ok(ns, with_chunk()).chunk
    refused(
        ns,
        CommitClose("/home/f", "w", chunk.chunk_id, 1, 100, 99, caller=ALICE, now=9.0),
        "InvalidArgument",
    )
    refused(
        ns,
        CommitClose("/home/f", "w", chunk.chunk_id, 2, 100, 100, caller=ALICE, now=9.0),
        "StaleChunk",
    )
    refused(
        ns,
        CommitClose("/home/f", "x", chunk.chunk_id, 1, 100, 100, caller=ALICE, now=9.0),
        "LeaseConflict",
    )


def test_a_retried_commit_close_is_answered_as_before(ns):
    chunk = ok(ns, with_chunk()).chunk
    close = CommitClose(
        "/home/f", "w", chunk.chunk_id, 1, 100, 100, caller=ALICE, now=9.0, request_id="r"
    )
    first = ok(ns, close)
    assert ok(ns, close) == first
