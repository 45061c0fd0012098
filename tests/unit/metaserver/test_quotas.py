"""Name and space quotas on directories, as HDFS has them, on the pure state machine."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.metaserver.namespace import (
    Namespace,
)
from dfs.metaserver.operations import (
    AddChunk,
    Caller,
    Close,
    CommitChunk,
    Create,
    Delete,
    Err,
    Mkdir,
    Ok,
    Operation,
    RecoverLease,
    Rename,
    SetQuota,
    SetReplication,
)
from dfs.metaserver.quotas import (
    QuotaUsage,
)

ROOT = Caller("admin", superuser=True)
ALICE = Caller("alice")
CHUNK = 1000


def ok(ns: Namespace, op: Operation) -> Any:
    result = ns.apply(op)
    assert isinstance(result, Ok), result
    return result.value


def refused(ns: Namespace, op: Operation, error: str = "QuotaExceeded") -> str:
    before = Namespace.restore(ns.snapshot())
    result = ns.apply(op)
    assert isinstance(result, Err), result
    assert result.error == error, result
    assert ns == before
    return result.message


def quota(ns: Namespace, path: str) -> QuotaUsage:
    result = ns.quota(path)
    assert isinstance(result, Ok), result
    return result.value


def set_quota(path: str, caller: Caller = ROOT, **kw: Any) -> SetQuota:
    return SetQuota(path, caller=caller, now=1.0, **kw)


def create(path: str, holder: str = "w", replication: int = 3) -> Create:
    return Create(
        path,
        0o644,
        replication,
        CHUNK,
        caller=ROOT,
        now=1.0,
        lease_holder=holder,
        lease_expires=100.0,
    )


def add(ns: Namespace, path: str, holder: str = "w") -> int:
    return int(ok(ns, AddChunk(path, holder, 100.0, caller=ROOT, now=2.0)).chunk_id)


def commit(ns: Namespace, path: str, chunk_id: int, length: int, holder: str = "w") -> None:
    ok(ns, CommitChunk(path, holder, chunk_id, 1, length, caller=ROOT, now=2.0))


def test_only_superusers_set_quotas_and_only_on_directories() -> None:
    ns = Namespace(root_mode=0o777)
    ok(ns, Mkdir("/d", caller=ALICE, now=1.0))
    message = refused(ns, set_quota("/d", caller=ALICE, files=5), "PermissionDenied")
    assert message == "permission denied: only a superuser may set quotas"
    ok(ns, create("/f"))
    refused(ns, set_quota("/f", files=5), "NotADirectory")
    refused(ns, set_quota("/d", files=0), "InvalidArgument")
    refused(ns, set_quota("/d", bytes=-1), "InvalidArgument")


def test_the_name_quota_counts_the_directory_and_everything_below() -> None:
    ns = Namespace()
    ok(ns, Mkdir("/d/sub", caller=ROOT, now=1.0, parents=True))
    assert ok(ns, set_quota("/d", files=4)) == QuotaUsage("/d", 4, None, 2, 0)
    ok(ns, create("/d/a"))
    ok(ns, create("/d/sub/b"))
    message = refused(ns, create("/d/c"))
    assert message == "/d/c: the name quota of /d is 4 files and directories, 4 in use"
    refused(ns, Mkdir("/d/sub/x/y", caller=ROOT, now=1.0, parents=True))
    ok(ns, Delete("/d/a", caller=ROOT, now=3.0))
    ok(ns, Mkdir("/d/x", caller=ROOT, now=1.0))
    assert quota(ns, "/d").names == 4
    assert ns.verify() == []


def test_chunks_are_reserved_whole_then_charged_at_their_length_times_replication() -> None:
    ns = Namespace()
    ok(ns, Mkdir("/d", caller=ROOT, now=1.0))
    ok(ns, set_quota("/d", bytes=7 * CHUNK))
    ok(ns, create("/d/f", replication=3))
    first = add(ns, "/d/f")
    assert quota(ns, "/d").space == 3 * CHUNK
    commit(ns, "/d/f", first, 400)
    assert quota(ns, "/d").space == 3 * 400
    second = add(ns, "/d/f")
    assert quota(ns, "/d").space == 3 * 400 + 3 * CHUNK
    message = refused(ns, AddChunk("/d/f", "w", 100.0, caller=ROOT, now=2.0))
    assert message == (
        "/d/f: the space quota of /d is 7000 bytes (times replication), 4200 in use, "
        "3000 more needed"
    )
    commit(ns, "/d/f", second, CHUNK)
    ok(ns, Close("/d/f", "w", 400 + CHUNK, caller=ROOT, now=3.0))
    assert quota(ns, "/d").space == 3 * (400 + CHUNK)
    assert ns.verify() == []


def test_a_write_refused_half_way_keeps_its_acknowledged_bytes_and_exact_use() -> None:
    ns = Namespace()
    ok(ns, Mkdir("/d", caller=ROOT, now=1.0))
    ok(ns, set_quota("/d", bytes=5 * CHUNK))
    ok(ns, create("/d/f", replication=2))
    chunk = add(ns, "/d/f")
    commit(ns, "/d/f", chunk, CHUNK)
    chunk = add(ns, "/d/f")
    commit(ns, "/d/f", chunk, CHUNK)
    refused(ns, AddChunk("/d/f", "w", 100.0, caller=ROOT, now=2.0))
    ok(ns, Close("/d/f", "w", 2 * CHUNK, caller=ROOT, now=3.0))
    assert ns.stat("/d/f").value.length == 2 * CHUNK  # type: ignore[union-attr]
    assert quota(ns, "/d").space == 4 * CHUNK
    assert ns.verify() == []


def test_recovering_a_lease_releases_the_reservation_of_uncommitted_chunks() -> None:
    ns = Namespace()
    ok(ns, Mkdir("/d", caller=ROOT, now=1.0))
    ok(ns, set_quota("/d", bytes=10 * CHUNK))
    ok(ns, create("/d/f", replication=1))
    commit(ns, "/d/f", add(ns, "/d/f"), 10)
    add(ns, "/d/f")
    ok(ns, RecoverLease("/d/f", caller=ROOT, now=200.0))
    assert quota(ns, "/d").space == 10
    assert ns.verify() == []


def test_raising_replication_is_checked_against_the_space_quota() -> None:
    ns = Namespace()
    ok(ns, Mkdir("/d", caller=ROOT, now=1.0))
    ok(ns, create("/d/f", replication=1))
    commit(ns, "/d/f", add(ns, "/d/f"), 500)
    ok(ns, Close("/d/f", "w", 500, caller=ROOT, now=3.0))
    ok(ns, set_quota("/d", bytes=1200))
    ok(ns, SetReplication("/d/f", 2, caller=ROOT, now=3.0))
    refused(ns, SetReplication("/d/f", 3, caller=ROOT, now=3.0))
    assert quota(ns, "/d").space == 1000


def test_rename_moves_use_between_quotas_and_is_refused_past_one() -> None:
    ns = Namespace()
    ok(ns, Mkdir("/a/x", caller=ROOT, now=1.0, parents=True))
    ok(ns, Mkdir("/b", caller=ROOT, now=1.0))
    ok(ns, create("/a/x/f"))
    ok(ns, set_quota("/a", files=10))
    ok(ns, set_quota("/b", files=2))
    refused(ns, Rename("/a/x", "/b/x", caller=ROOT, now=2.0))
    ok(ns, Rename("/a/x/f", "/b/f", caller=ROOT, now=2.0))
    assert (quota(ns, "/a").names, quota(ns, "/b").names) == (2, 2)
    assert ns.verify() == []


def test_clearing_removes_both_limits_and_deleting_the_directory_forgets_them() -> None:
    ns = Namespace()
    ok(ns, Mkdir("/d", caller=ROOT, now=1.0))
    ok(ns, set_quota("/d", files=3, bytes=100))
    assert ok(ns, set_quota("/d", files=5)) == QuotaUsage("/d", 5, 100, 1, 0)
    assert ok(ns, set_quota("/d", clear=True)) == QuotaUsage("/d", None, None, 1, 0)
    ok(ns, set_quota("/d", files=3))
    ok(ns, Delete("/d", caller=ROOT, now=2.0))
    assert ns.verify() == []


OPS = st.lists(
    st.tuples(
        st.sampled_from(["mkdir", "create", "write", "close", "delete", "rename", "setrep"]),
        st.sampled_from(["/q", "/q/a", "/q/a/b", "/r", "/r/c", "/q/f", "/r/g", "/q/a/h"]),
        st.sampled_from(["/q/m", "/r/m", "/q/a/m", "/n"]),
        st.integers(1, 3),
        st.integers(1, CHUNK),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, files=st.integers(1, 8), space=st.integers(0, 12 * CHUNK))
def test_quota_use_is_always_exact_and_never_grows_past_a_limit(
    ops: list[tuple[str, str, str, int, int]], files: int, space: int
) -> None:
    ns = Namespace()
    ok(ns, Mkdir("/q", caller=ROOT, now=1.0))
    ok(ns, Mkdir("/r", caller=ROOT, now=1.0))
    ok(ns, set_quota("/q", files=files, bytes=space))
    for step, (kind, path, other, replication, length) in enumerate(ops):
        now = 2.0 + step
        if kind in ("delete", "rename") and path in ("/q", "/r"):
            continue  # the directories under watch stay
        before = quota(ns, "/q")
        if kind == "mkdir":
            ns.apply(Mkdir(path, caller=ROOT, now=now))
        elif kind == "create":
            ns.apply(create(path, replication=replication))
        elif kind == "write":
            added = ns.apply(AddChunk(path, "w", 1000.0, caller=ROOT, now=now))
            if isinstance(added, Ok):
                ns.apply(
                    CommitChunk(path, "w", added.value.chunk_id, 1, length, caller=ROOT, now=now)
                )
        elif kind == "close":
            stat = ns.stat(path)
            if isinstance(stat, Ok):
                ns.apply(Close(path, "w", stat.value.length, caller=ROOT, now=now))
        elif kind == "delete":
            ns.apply(Delete(path, True, caller=ROOT, now=now))
        elif kind == "rename":
            ns.apply(Rename(path, other, caller=ROOT, now=now))
        elif kind == "setrep":
            ns.apply(SetReplication(path, replication, caller=ROOT, now=now))
        after = quota(ns, "/q")
        assert ns.verify() == []
        # Use may only grow while it stays within the limits.
        if after.names > before.names:
            assert after.names <= files
        if after.space > before.space:
            assert after.space <= space
