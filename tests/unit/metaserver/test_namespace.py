"""The namespace state machine: each operation's outcome, its refusals, leases,
de-duplication, snapshots, and that apply() never raises."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.metaserver import namespace as ns_module
from dfs.metaserver.namespace import (
    ChunkRef,
    ChunkTarget,
    CreateResult,
    DeleteResult,
    Namespace,
    RenameResult,
    Stat,
    Usage,
)
from dfs.metaserver.operations import (
    INTERNAL_ERROR,
    AddChunk,
    BumpChunkVersion,
    Caller,
    Chmod,
    Chown,
    Close,
    CommitChunk,
    CommitClose,
    Create,
    CreateClosed,
    Delete,
    Err,
    ForgetFreedChunks,
    Mkdir,
    Ok,
    Operation,
    RecoverLease,
    Rename,
    RenewLease,
    SetDecommission,
    SetReplication,
    SetSafeMode,
)
from dfs.protocol import errors
from dfs.protocol.records import Entry as WireEntry

ALICE = Caller("alice")
BOB = Caller("bob")
ADMIN = Caller("dfs", superuser=True)


def ok(ns: Namespace, op: Operation) -> Any:
    result = ns.apply(op)
    assert isinstance(result, Ok), result
    assert result.ok
    return result.value


def refused(ns: Namespace, op: Operation, error: str) -> str:
    """Apply ``op``, expect ``error``, and check the namespace did not change."""
    before = Namespace.restore(ns.snapshot())
    result = ns.apply(op)
    assert isinstance(result, Err), result
    assert not result.ok
    assert result.error == error, result
    assert ns == before
    return result.message


def mkdir(path: str, now: float = 1.0, caller: Caller = ALICE, **kw: Any) -> Mkdir:
    return Mkdir(path, caller=caller, now=now, **kw)


def create(
    path: str,
    holder: str = "c1",
    now: float = 1.0,
    expires: float = 60.0,
    caller: Caller = ALICE,
    **kw: Any,
) -> Create:
    return Create(path, caller=caller, now=now, lease_holder=holder, lease_expires=expires, **kw)


def write(
    ns: Namespace, path: str, lengths: list[int], holder: str = "c1", now: float = 2.0
) -> list[ChunkRef]:
    """Add and commit one chunk per length, as a writing client would."""
    refs = []
    for length in lengths:
        chunk = ok(ns, AddChunk(path, holder, now + 60, caller=ALICE, now=now))
        refs.append(
            ok(ns, CommitChunk(path, holder, chunk.chunk_id, 1, length, caller=ALICE, now=now))
        )
    return refs


def written(ns: Namespace, path: str, lengths: list[int], now: float = 3.0) -> list[ChunkRef]:
    """A complete file with chunks of these lengths."""
    ok(ns, create(path, now=now - 2))
    refs = write(ns, path, lengths, now=now - 1)
    ok(ns, Close(path, "c1", sum(lengths), caller=ALICE, now=now))
    return refs


def stat(ns: Namespace, path: str) -> Stat:
    result = ns.stat(path)
    assert isinstance(result, Ok), result
    return result.value


def names(ns: Namespace, path: str) -> list[str]:
    result = ns.list(path)
    assert isinstance(result, Ok), result
    return [entry.name for entry in result.value]


@pytest.fixture
def ns() -> Namespace:
    return Namespace(root_mode=0o777)


# -- root and results ----------------------------------------------------------------


def test_root_exists_owned_by_the_configured_superuser() -> None:
    ns = Namespace(root_owner="hdfs", root_group="admins", root_mode=0o775)
    root = stat(ns, "/")
    assert (root.path, root.name, root.kind, root.inode) == ("/", "", "directory", 1)
    assert (root.owner, root.group, root.mode) == ("hdfs", "admins", 0o775)
    assert names(ns, "/") == []
    assert ns.next_inode == 2 and ns.next_chunk_id == 1


def test_default_root_is_dfs_supergroup_755() -> None:
    root = stat(Namespace(), "/")
    assert (root.owner, root.group, root.mode) == ("dfs", "supergroup", 0o755)


@pytest.mark.parametrize(
    "kwargs", [{"root_owner": ""}, {"root_group": "a b"}, {"root_mode": 0o10000}]
)
def test_bad_root_settings_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Namespace(**kwargs)


def test_err_builds_the_wire_exception_named_by_error() -> None:
    exception = Err("FileNotFound", "/a: no such file or directory").exception()
    assert type(exception) is errors.FileNotFound
    assert str(exception) == "/a: no such file or directory"
    assert type(Err("NoSuchErrorClass", "x").exception()) is errors.DFSError
    assert type(Err("Caller", "x").exception()) is errors.DFSError
    with pytest.raises(errors.LeaseConflict):
        Err("LeaseConflict", "busy").unwrap()
    assert Ok(5).unwrap() == 5


def test_every_refusal_names_a_wire_error(ns: Namespace) -> None:
    # Spot-check that refusals name real classes of the wire contract.
    for op, error in [
        (mkdir("/a/b"), errors.FileNotFound),
        (mkdir("/"), errors.FileExists),
        (Delete("/", caller=ALICE, now=1), errors.InvalidPath),
        (Chmod("/", 0o20000, caller=ALICE, now=1), errors.InvalidArgument),
    ]:
        result = ns.apply(op)
        assert isinstance(result, Err)
        assert type(result.exception()) is error


# -- mkdir -----------------------------------------------------------------------------


def test_mkdir_makes_a_directory_owned_by_caller_in_parents_group(ns: Namespace) -> None:
    made = ok(ns, mkdir("/projects", now=5.0, mode=0o750))
    assert made == stat(ns, "/projects")
    assert (made.kind, made.owner, made.group, made.mode, made.mtime) == (
        "directory",
        "alice",
        "supergroup",
        0o750,
        5.0,
    )
    assert stat(ns, "/").mtime == 5.0
    ok(ns, Chown("/projects", None, "science", caller=ADMIN, now=6))
    assert ok(ns, mkdir("/projects/x", caller=ADMIN)).group == "science"


def test_mkdir_refusals(ns: Namespace) -> None:
    ok(ns, mkdir("/a"))
    written(ns, "/a/f", [1])
    assert "/x" in refused(ns, mkdir("/x/y"), "FileNotFound")
    assert refused(ns, mkdir("/a"), "FileExists") == "/a: already exists"
    refused(ns, mkdir("/a/f"), "FileExists")
    refused(ns, mkdir("/a/f", parents=True), "FileExists")
    assert "/a/f is not a directory" in refused(ns, mkdir("/a/f/g"), "NotADirectory")
    refused(ns, mkdir("/a/f/g/h", parents=True), "NotADirectory")
    refused(ns, mkdir("/"), "FileExists")
    refused(ns, mkdir("/b", mode=-1), "InvalidArgument")
    refused(ns, mkdir("/b", mode=True), "InvalidArgument")
    refused(ns, mkdir("/b", parents=1), "InvalidArgument")
    refused(ns, mkdir("b"), "InvalidPath")


def test_mkdir_parents_makes_every_missing_directory_with_the_op_mode(ns: Namespace) -> None:
    ok(ns, mkdir("/a"))
    made = ok(ns, mkdir("/a/b/c/d", parents=True, mode=0o700, now=7.0))
    assert made.path == "/a/b/c/d"
    for path in ("/a/b", "/a/b/c", "/a/b/c/d"):
        assert (stat(ns, path).mode, stat(ns, path).mtime) == (0o700, 7.0)
    assert stat(ns, "/a").mode == 0o755
    assert ok(ns, mkdir("/a/b/c", parents=True)) == stat(ns, "/a/b/c")
    assert ok(ns, mkdir("/", parents=True)) == stat(ns, "/")


def test_mkdir_accepts_any_spelling_of_the_path(ns: Namespace) -> None:
    assert ok(ns, mkdir("//a/./b/../")).path == "/a"
    refused(ns, mkdir("/a/.."), "FileExists")
    refused(ns, mkdir("/.."), "InvalidPath")


# -- create and writing ----------------------------------------------------------------


def test_create_opens_an_empty_file_under_a_lease(ns: Namespace) -> None:
    ok(ns, mkdir("/d"))
    result = ok(
        ns, create("/d/f", holder="c1", now=3.0, mode=0o600, replication=2, chunk_size=4096)
    )
    assert isinstance(result, CreateResult) and result.freed == ()
    made = result.stat
    assert made == stat(ns, "/d/f")
    assert (made.kind, made.owner, made.group, made.mode) == ("file", "alice", "supergroup", 0o600)
    assert (made.length, made.replication, made.chunk_size) == (0, 2, 4096)
    assert (made.complete, made.under_construction, made.mtime) == (False, "c1", 3.0)
    assert stat(ns, "/d").mtime == 3.0


def test_create_defaults_match_the_architecture(ns: Namespace) -> None:
    made = ok(ns, create("/f")).stat
    assert (made.mode, made.replication, made.chunk_size) == (0o644, 3, 64 * 1024 * 1024)


def test_create_refusals(ns: Namespace) -> None:
    ok(ns, mkdir("/d"))
    written(ns, "/f", [5])
    refused(ns, create("/f"), "FileExists")
    refused(ns, create("/d"), "FileExists")
    refused(ns, create("/d", overwrite=True), "IsADirectory")
    refused(ns, create("/"), "FileExists")
    refused(ns, create("/", overwrite=True), "IsADirectory")
    refused(ns, create("/nope/f"), "FileNotFound")
    refused(ns, create("/f/g"), "NotADirectory")
    bad_arguments: list[dict[str, Any]] = [
        {"replication": 0},
        {"replication": 33},
        {"chunk_size": 0},
        {"chunk_size": 2**31},
        {"mode": 0o10000},
        {"overwrite": "yes"},
        {"holder": ""},
        {"holder": 5},
        {"expires": 1.0},  # not after now
        {"expires": math.inf},
        {"now": math.nan},
    ]
    for bad in bad_arguments:
        refused(ns, create("/g", **bad), "InvalidArgument")
    assert ns.stat("/g").error == "FileNotFound"  # type: ignore[union-attr]


def test_chunks_get_ids_from_a_counter_and_are_never_reused(ns: Namespace) -> None:
    first = written(ns, "/a", [10, 20])
    assert [(c.chunk_id, c.version, c.length) for c in first] == [(1, 1, 10), (2, 1, 20)]
    ok(ns, Delete("/a", caller=ALICE, now=9))
    second = written(ns, "/b", [1])
    assert second[0].chunk_id == 3
    assert ns.next_chunk_id == 4


def test_add_chunk_appends_an_empty_chunk_version_one_and_renews_the_lease(
    ns: Namespace,
) -> None:
    ok(ns, create("/f", expires=10))
    chunk = ok(ns, AddChunk("/f", "c1", 99.0, caller=ALICE, now=5))
    assert chunk == ChunkRef(chunk_id=1, version=1, length=0)
    assert ns.chunks("/f") == Ok((chunk,))
    assert ns.expired_leases(50) == []
    assert [lease.path for lease in ns.expired_leases(99)] == ["/f"]


def test_commit_records_the_acknowledged_length_of_pending_chunks_in_order(
    ns: Namespace,
) -> None:
    ok(ns, create("/f", chunk_size=100))
    [first] = write(ns, "/f", [100])
    second = ok(ns, AddChunk("/f", "c1", 90, caller=ALICE, now=2))
    # The writer fills the next chunk while the previous one is being finished.
    third = ok(ns, AddChunk("/f", "c1", 90, caller=ALICE, now=2))
    add = AddChunk("/f", "c1", 90, caller=ALICE, now=2)
    assert f"chunk {second.chunk_id} must be committed before another" in refused(
        ns, add, "InvalidArgument"
    )
    early = CommitChunk("/f", "c1", third.chunk_id, 1, 5, caller=ALICE, now=2)
    assert f"cannot be committed before chunk {second.chunk_id}" in refused(
        ns, early, "InvalidArgument"
    )
    for length in (101, -1, 0):
        bad = CommitChunk("/f", "c1", second.chunk_id, 1, length, caller=ALICE, now=2)
        refused(ns, bad, "InvalidArgument")
    committed = ok(ns, CommitChunk("/f", "c1", second.chunk_id, 1, 100, caller=ALICE, now=2))
    assert committed == ChunkRef(second.chunk_id, 1, 100)
    assert stat(ns, "/f").length == 200
    ok(ns, CommitChunk("/f", "c1", third.chunk_id, 1, 30, caller=ALICE, now=2))
    assert stat(ns, "/f").length == 230
    # A committed chunk is settled: the same commit again changes nothing, another
    # length is refused.
    again = ok(ns, CommitChunk("/f", "c1", third.chunk_id, 1, 30, caller=ALICE, now=2))
    assert again == ChunkRef(third.chunk_id, 1, 30)
    for chunk, length in ((third, 60), (first, 5)):
        other = CommitChunk("/f", "c1", chunk.chunk_id, 1, length, caller=ALICE, now=2)
        assert f"chunk {chunk.chunk_id} is already committed" in refused(
            ns, other, "InvalidArgument"
        )
    assert stat(ns, "/f").length == 230
    assert [c.length for c in ns.chunks("/f").unwrap()] == [100, 100, 30]


def test_bump_version_makes_old_replicas_stale(ns: Namespace) -> None:
    ok(ns, create("/f"))
    first = ok(ns, AddChunk("/f", "c1", 90, caller=ALICE, now=2))
    second = ok(ns, AddChunk("/f", "c1", 90, caller=ALICE, now=2))
    # Either pending chunk may lose a dataserver.
    assert ok(ns, BumpChunkVersion("/f", "c1", second.chunk_id, caller=ALICE, now=3)) == (
        ChunkRef(second.chunk_id, 2, 0)
    )
    bumped = ok(ns, BumpChunkVersion("/f", "c1", first.chunk_id, caller=ALICE, now=3))
    assert bumped == ChunkRef(first.chunk_id, 2, 0)
    stale = CommitChunk("/f", "c1", first.chunk_id, 1, 9, caller=ALICE, now=3)
    assert "at version 2, not 1" in refused(ns, stale, "StaleChunk")
    ok(ns, CommitChunk("/f", "c1", first.chunk_id, 2, 9, caller=ALICE, now=3))
    assert ns.chunks("/f") == Ok((ChunkRef(first.chunk_id, 2, 9), ChunkRef(second.chunk_id, 2, 0)))
    done = BumpChunkVersion("/f", "c1", first.chunk_id, caller=ALICE, now=3)
    assert f"chunk {first.chunk_id} is already committed" in refused(ns, done, "InvalidArgument")
    missing = BumpChunkVersion("/f", "c1", 999, caller=ALICE, now=3)
    assert "chunk 999 is not being written" in refused(ns, missing, "InvalidArgument")


def test_bump_on_a_file_without_chunks_is_refused(ns: Namespace) -> None:
    ok(ns, create("/f"))
    refused(ns, BumpChunkVersion("/f", "c1", 1, caller=ALICE, now=3), "InvalidArgument")


def test_close_completes_the_file_at_its_committed_length(ns: Namespace) -> None:
    ok(ns, create("/f"))
    write(ns, "/f", [64, 36])
    assert "committed length 100" in refused(
        ns, Close("/f", "c1", 99, caller=ALICE, now=4), "InvalidArgument"
    )
    closed = ok(ns, Close("/f", "c1", 100, caller=ALICE, now=4.5))
    assert (closed.complete, closed.under_construction, closed.length, closed.mtime) == (
        True,
        None,
        100,
        4.5,
    )
    assert ns.expired_leases(10**9) == []
    # A complete file takes no more chunks, commits or closes.
    refused(ns, AddChunk("/f", "c1", 90, caller=ALICE, now=5), "LeaseConflict")
    refused(ns, Close("/f", "c1", 100, caller=ALICE, now=5), "LeaseConflict")
    refused(ns, RenewLease("/f", "c1", 90, caller=ALICE, now=5), "LeaseConflict")


def test_empty_file_closes_at_length_zero(ns: Namespace) -> None:
    ok(ns, create("/f"))
    assert ok(ns, Close("/f", "c1", 0, caller=ALICE, now=2)).length == 0
    assert ns.chunks("/f") == Ok(())


def test_writing_operations_on_directories_and_missing_files(ns: Namespace) -> None:
    ok(ns, mkdir("/d"))
    refused(ns, AddChunk("/d", "c1", 90, caller=ALICE, now=2), "IsADirectory")
    refused(ns, AddChunk("/nope", "c1", 90, caller=ALICE, now=2), "FileNotFound")
    refused(ns, Close("/d", "c1", 0, caller=ALICE, now=2), "IsADirectory")
    refused(ns, RecoverLease("/d", caller=ADMIN, now=2), "IsADirectory")


# -- leases ----------------------------------------------------------------------------


def test_only_the_lease_holder_writes(ns: Namespace) -> None:
    ok(ns, create("/f", holder="c1"))
    chunk = ok(ns, AddChunk("/f", "c1", 90, caller=ALICE, now=2))
    message = refused(ns, AddChunk("/f", "c2", 90, caller=BOB, now=2), "LeaseConflict")
    assert message == "/f: is being written by c1, not c2"
    for op in [
        CommitChunk("/f", "c2", chunk.chunk_id, 1, 1, caller=BOB, now=2),
        BumpChunkVersion("/f", "c2", chunk.chunk_id, caller=BOB, now=2),
        RenewLease("/f", "c2", 90, caller=BOB, now=2),
        Close("/f", "c2", 0, caller=BOB, now=2),
    ]:
        refused(ns, op, "LeaseConflict")


def test_overwrite_of_a_file_being_written_waits_for_the_lease(ns: Namespace) -> None:
    ok(ns, create("/f", holder="c1", now=1, expires=30))
    write(ns, "/f", [5])  # renews the lease to now + 60 = 62
    takeover = create("/f", holder="c2", now=61, expires=100, overwrite=True)
    assert "c1" in refused(ns, takeover, "LeaseConflict")
    refused(ns, create("/f", holder="c2", now=61, expires=100), "FileExists")
    taken = ok(ns, create("/f", holder="c2", now=62, expires=100, overwrite=True))
    assert taken.stat.under_construction == "c2"
    assert taken.freed == (ChunkRef(1, 1, 5),)


def test_the_holder_itself_may_start_over(ns: Namespace) -> None:
    ok(ns, create("/f", holder="c1"))
    write(ns, "/f", [5])
    again = ok(ns, create("/f", holder="c1", now=3, overwrite=True))
    assert again.freed == (ChunkRef(1, 1, 5),)
    assert again.stat.length == 0


def test_overwrite_of_a_complete_file_frees_its_chunks_and_gives_a_new_inode(
    ns: Namespace,
) -> None:
    refs = written(ns, "/f", [3, 4])
    old = stat(ns, "/f")
    ok(ns, Chmod("/f", 0o666, caller=ALICE, now=9))
    result = ok(ns, create("/f", holder="c2", now=10, overwrite=True, caller=BOB, mode=0o600))
    assert result.freed == tuple(refs)
    assert result.stat.inode != old.inode
    # Overwriting truncates: the file stays alice's, with its mode.
    assert (result.stat.owner, result.stat.mode) == ("alice", 0o666)
    assert (result.stat.length, result.stat.complete) == (0, False)


def test_renew_extends_the_lease(ns: Namespace) -> None:
    ok(ns, create("/f", expires=10))
    renewed = ok(ns, RenewLease("/f", "c1", 50, caller=ALICE, now=9))
    assert renewed.under_construction == "c1"
    assert ns.expired_leases(10) == []
    assert [lease.path for lease in ns.expired_leases(50)] == ["/f"]
    refused(ns, RenewLease("/f", "c1", 9, caller=ALICE, now=9), "InvalidArgument")


def test_holder_may_go_on_after_expiry_while_nobody_took_over(ns: Namespace) -> None:
    ok(ns, create("/f", expires=10))
    ok(ns, RenewLease("/f", "c1", 100, caller=ALICE, now=20))
    assert ns.expired_leases(20) == []


def test_expired_leases_lists_paths_sorted_at_their_current_place(ns: Namespace) -> None:
    ok(ns, mkdir("/d"))
    ok(ns, create("/d/b", holder="c1", expires=10))
    ok(ns, create("/a", holder="c2", expires=20))
    ok(ns, create("/c", holder="c3", expires=30))
    assert ns.expired_leases(9.99) == []
    assert [lease.path for lease in ns.expired_leases(10)] == ["/d/b"]
    assert [lease.path for lease in ns.expired_leases(25)] == ["/a", "/d/b"]
    ok(ns, Rename("/d", "/z", caller=ALICE, now=2))
    assert [lease.path for lease in ns.expired_leases(25)] == ["/a", "/z/b"]


def test_recover_lease_closes_at_the_committed_length(ns: Namespace) -> None:
    ok(ns, create("/f", expires=10))
    chunk = ok(ns, AddChunk("/f", "c1", 10, caller=ALICE, now=2))
    ok(ns, CommitChunk("/f", "c1", chunk.chunk_id, 1, 40, caller=ALICE, now=2))
    ok(ns, AddChunk("/f", "c1", 10, caller=ALICE, now=3))  # nothing acknowledged yet
    assert "runs until 10" in refused(ns, RecoverLease("/f", caller=BOB, now=9), "LeaseConflict")
    recovered = ok(ns, RecoverLease("/f", caller=BOB, now=10))
    assert (recovered.complete, recovered.length, recovered.mtime) == (True, 40, 10.0)
    # The uncommitted chunk is gone from the file and from the chunk index.
    assert [c.chunk_id for c in ns.chunks("/f").value] == [chunk.chunk_id]
    assert ns.chunk_version(chunk.chunk_id + 1) is None
    assert ns.expired_leases(100) == []
    # The old writer has lost the file; recovering again is harmless.
    refused(ns, AddChunk("/f", "c1", 90, caller=ALICE, now=11), "LeaseConflict")
    assert ok(ns, RecoverLease("/f", caller=BOB, now=12)) == recovered


def test_superuser_may_recover_a_live_lease(ns: Namespace) -> None:
    ok(ns, create("/f", expires=100))
    assert ok(ns, RecoverLease("/f", caller=ADMIN, now=2)).complete


# -- delete ----------------------------------------------------------------------------


def test_delete_file_frees_its_chunks(ns: Namespace) -> None:
    refs = written(ns, "/f", [1, 2])
    assert ok(ns, Delete("/f", caller=ALICE, now=7)) == DeleteResult(freed=tuple(refs))
    assert ns.stat("/f").error == "FileNotFound"  # type: ignore[union-attr]
    assert stat(ns, "/").mtime == 7.0


def test_delete_directory_needs_recursive_unless_empty(ns: Namespace) -> None:
    ok(ns, mkdir("/empty"))
    assert ok(ns, Delete("/empty", caller=ALICE, now=2)).freed == ()
    ok(ns, mkdir("/d/e", parents=True))
    assert refused(ns, Delete("/d", caller=ALICE, now=2), "DirectoryNotEmpty") == (
        "/d: directory is not empty"
    )


def test_recursive_delete_frees_every_chunk_below_in_name_order(ns: Namespace) -> None:
    ok(ns, mkdir("/d/y", parents=True))
    b = written(ns, "/d/y/b", [2])
    a = written(ns, "/d/y/a", [1])
    x = written(ns, "/d/x", [3, 4])
    ok(ns, create("/d/z"))  # under construction: goes too, lease and all
    z = write(ns, "/d/z", [5])
    before = ns.entry_count
    result = ok(ns, Delete("/d", recursive=True, caller=ALICE, now=9))
    assert result.freed == (*x, *a, *b, *z)
    assert ns.entry_count == before - 6
    assert ns.expired_leases(10**9) == []
    assert names(ns, "/") == []
    assert ns.verify() == []


def test_delete_refusals(ns: Namespace) -> None:
    written(ns, "/f", [1])
    refused(ns, Delete("/", caller=ADMIN, now=2), "InvalidPath")
    refused(ns, Delete("/", recursive=True, caller=ADMIN, now=2), "InvalidPath")
    refused(ns, Delete("/nope", caller=ALICE, now=2), "FileNotFound")
    refused(ns, Delete("/f/x", caller=ALICE, now=2), "NotADirectory")
    refused(ns, Delete("/f", recursive="yes", caller=ALICE, now=2), "InvalidArgument")  # type: ignore[arg-type]


# -- rename ----------------------------------------------------------------------------


def test_rename_moves_a_directory_and_everything_below(ns: Namespace) -> None:
    ok(ns, mkdir("/a/b", parents=True))
    refs = written(ns, "/a/b/f", [9])
    ok(ns, mkdir("/z"))
    result = ok(ns, Rename("/a", "/z/a2", caller=ALICE, now=8))
    assert isinstance(result, RenameResult) and result.freed == ()
    assert (result.stat.path, result.stat.name) == ("/z/a2", "a2")
    assert names(ns, "/") == ["z"]
    assert stat(ns, "/z/a2/b/f").length == 9
    assert ns.chunks("/z/a2/b/f") == Ok(tuple(refs))
    assert stat(ns, "/").mtime == 8.0 and stat(ns, "/z").mtime == 8.0
    assert ns.verify() == []


def test_rename_keeps_inode_owner_and_mtime(ns: Namespace) -> None:
    ok(ns, mkdir("/d", now=1))
    written(ns, "/f", [1], now=3)
    before = stat(ns, "/f")
    after = ok(ns, Rename("/f", "/d/g", caller=ADMIN, now=9)).stat
    assert attrs.evolve(after, path="/f", name="f") == before


def test_rename_replaces_a_file_with_a_file_and_frees_its_chunks(ns: Namespace) -> None:
    kept = written(ns, "/src", [1])
    dropped = written(ns, "/dst", [2, 3])
    result = ok(ns, Rename("/src", "/dst", caller=ALICE, now=9))
    assert result.freed == tuple(dropped)
    assert ns.chunks("/dst") == Ok(tuple(kept))
    assert names(ns, "/") == ["dst"]


def test_rename_refusals(ns: Namespace) -> None:
    ok(ns, mkdir("/a/b", parents=True))
    ok(ns, mkdir("/c"))
    written(ns, "/f", [1])
    written(ns, "/g", [1])

    def rename(src: str, dst: str) -> Rename:
        return Rename(src, dst, caller=ALICE, now=5)

    refused(ns, rename("/a", "/c"), "FileExists")  # directory onto directory
    refused(ns, rename("/f", "/c"), "FileExists")  # file onto directory
    refused(ns, rename("/c", "/f"), "FileExists")  # directory onto file
    assert "into itself" in refused(ns, rename("/a", "/a/b/x"), "InvalidPath")
    refused(ns, rename("/a", "/a/x"), "InvalidPath")
    refused(ns, rename("/", "/x"), "InvalidPath")
    refused(ns, rename("/a", "/"), "InvalidPath")
    refused(ns, rename("/nope", "/x"), "FileNotFound")
    refused(ns, rename("/f", "/nope/x"), "FileNotFound")
    refused(ns, rename("/f", "/g/x"), "NotADirectory")
    refused(ns, rename("/f", "/f/x"), "NotADirectory")
    refused(ns, rename("/f/x", "/y"), "NotADirectory")
    refused(ns, rename("/f", "relative"), "InvalidPath")


def test_rename_to_itself_changes_nothing(ns: Namespace) -> None:
    refs = written(ns, "/f", [1])
    ok(ns, mkdir("/d"))
    before = Namespace.restore(ns.snapshot())
    assert ok(ns, Rename("/f", "/f/", caller=ALICE, now=9)).freed == ()
    ok(ns, Rename("/d", "/d", caller=ALICE, now=9))
    assert ns == before
    assert ns.chunks("/f") == Ok(tuple(refs))


def test_rename_of_an_open_file_keeps_its_lease(ns: Namespace) -> None:
    ok(ns, create("/f", holder="c1"))
    ok(ns, Rename("/f", "/g", caller=ALICE, now=2))
    assert stat(ns, "/g").under_construction == "c1"
    write(ns, "/g", [4])
    assert ok(ns, Close("/g", "c1", 4, caller=ALICE, now=5)).complete


# -- attributes ------------------------------------------------------------------------


def test_set_replication_on_files_only(ns: Namespace) -> None:
    written(ns, "/f", [1])
    ok(ns, mkdir("/d"))
    assert ok(ns, SetReplication("/f", 5, caller=ALICE, now=2)).replication == 5
    refused(ns, SetReplication("/d", 2, caller=ALICE, now=2), "IsADirectory")
    refused(ns, SetReplication("/f", 0, caller=ALICE, now=2), "InvalidArgument")
    refused(ns, SetReplication("/f", 33, caller=ALICE, now=2), "InvalidArgument")
    assert ok(ns, SetReplication("/f", 32, caller=ALICE, now=2)).replication == 32


def test_chmod_and_chown_store_what_they_are_given(ns: Namespace) -> None:
    ok(ns, mkdir("/d"))
    assert ok(ns, Chmod("/d", 0o1777, caller=ALICE, now=2)).mode == 0o1777
    changed = ok(ns, Chown("/d", "bob", None, caller=ADMIN, now=2))
    assert (changed.owner, changed.group) == ("bob", "supergroup")
    changed = ok(ns, Chown("/d", None, "staff", caller=ADMIN, now=2))
    assert (changed.owner, changed.group) == ("bob", "staff")
    assert ok(ns, Chown("/d", None, None, caller=ADMIN, now=2)) == changed
    refused(ns, Chown("/d", "bad name", None, caller=ADMIN, now=2), "InvalidArgument")
    refused(ns, Chown("/d", "", None, caller=ADMIN, now=2), "InvalidArgument")
    refused(ns, Chown("/d", None, 7, caller=ADMIN, now=2), "InvalidArgument")  # type: ignore[arg-type]
    refused(ns, Chmod("/d", 0o10000, caller=ALICE, now=2), "InvalidArgument")
    refused(ns, Chmod("/nope", 0o700, caller=ALICE, now=2), "FileNotFound")


# -- queries ---------------------------------------------------------------------------


def test_list_is_sorted_and_carries_full_stat(ns: Namespace) -> None:
    for name in ["b", "a", "C", "é"]:
        ok(ns, mkdir("/" + name))
    written(ns, "/a/f", [3])
    assert names(ns, "/") == ["C", "a", "b", "é"]
    listing = ns.list("/a")
    assert listing == Ok((stat(ns, "/a/f"),))


def test_list_of_a_file_is_the_file_itself(ns: Namespace) -> None:
    written(ns, "/f", [3])
    assert ns.list("/f") == Ok((stat(ns, "/f"),))


def test_queries_refuse_like_operations(ns: Namespace) -> None:
    written(ns, "/f", [3])
    for query in (ns.stat, ns.list, ns.du, ns.chunks):
        assert query("/nope") == Err("FileNotFound", "/nope: no such file or directory")
        assert query("/f/x").error == "NotADirectory"  # type: ignore[union-attr]
        assert query("rel").error == "InvalidPath"  # type: ignore[union-attr]
        assert query(None).error == "InvalidPath"  # type: ignore[arg-type, union-attr]
    ok(ns, mkdir("/d"))
    assert ns.chunks("/d").error == "IsADirectory"  # type: ignore[union-attr]


def test_du_counts_files_directories_and_bytes(ns: Namespace) -> None:
    ok(ns, mkdir("/d/e", parents=True))
    written(ns, "/d/f", [10, 5])
    written(ns, "/d/e/g", [7])
    ok(ns, SetReplication("/d/e/g", 2, caller=ALICE, now=9))
    assert ns.du("/d") == Ok(Usage(files=2, directories=2, bytes=22, replicated_bytes=59))
    assert ns.du("/d/f") == Ok(Usage(files=1, directories=0, bytes=15, replicated_bytes=45))
    assert ns.du("/") == Ok(Usage(files=2, directories=3, bytes=22, replicated_bytes=59))


def test_chunk_version_and_file_answer_dataserver_reports(ns: Namespace) -> None:
    ok(ns, mkdir("/d"))
    [first, second] = written(ns, "/d/f", [5, 6])
    ok(ns, SetReplication("/d/f", 2, caller=ALICE, now=4))
    assert ns.chunk_version(first.chunk_id) == 1
    holder = ns.chunk_file(second.chunk_id)
    assert holder is not None and (holder.path, holder.replication) == ("/d/f", 2)
    ok(ns, Rename("/d", "/e", caller=ALICE, now=5))
    assert ns.chunk_file(first.chunk_id).path == "/e/f"  # type: ignore[union-attr]
    assert ns.chunk_version(999) is None and ns.chunk_file(999) is None
    ok(ns, Delete("/e", recursive=True, caller=ALICE, now=6))
    assert ns.chunk_version(first.chunk_id) is None
    assert ns.chunk_file(second.chunk_id) is None


def test_chunk_version_follows_bumps(ns: Namespace) -> None:
    ok(ns, create("/f"))
    chunk = ok(ns, AddChunk("/f", "c1", 90, caller=ALICE, now=2))
    ok(ns, BumpChunkVersion("/f", "c1", chunk.chunk_id, caller=ALICE, now=3))
    assert ns.chunk_version(chunk.chunk_id) == 2


# -- de-duplication --------------------------------------------------------------------


def test_a_retried_request_returns_the_first_result_without_applying_again(
    ns: Namespace,
) -> None:
    first = ns.apply(Create("/f", caller=ALICE, now=1, request_id="r1", **LEASE))
    after_first = Namespace.restore(ns.snapshot())
    # The retry reaches a new leader: other clock, same request id.
    again = ns.apply(Create("/f", caller=ALICE, now=5, request_id="r1", **LEASE))
    assert again == first and isinstance(again, Ok)
    assert ns == after_first
    # Without a request id the same operation is applied again (and refused).
    assert ns.apply(Create("/f", caller=ALICE, now=5, **LEASE)).error == "FileExists"  # type: ignore[union-attr]


LEASE: dict[str, Any] = {"lease_holder": "c1", "lease_expires": 100.0}


def test_refusals_are_remembered_too(ns: Namespace) -> None:
    first = ns.apply(Mkdir("/a/b", caller=ALICE, now=1, request_id="r1"))
    ok(ns, mkdir("/a"))
    assert ns.apply(Mkdir("/a/b", caller=ALICE, now=2, request_id="r1")) == first
    assert ns.stat("/a/b").error == "FileNotFound"  # type: ignore[union-attr]


def test_request_ids_are_per_user(ns: Namespace) -> None:
    ok(ns, Mkdir("/a", caller=ALICE, now=1, request_id="r1"))
    assert ns.apply(Mkdir("/a", caller=BOB, now=1, request_id="r1")).error == "FileExists"  # type: ignore[union-attr]


def test_only_the_latest_request_ids_are_remembered_oldest_out_first() -> None:
    ns = Namespace(request_memory=3, root_mode=0o777)
    for number in range(4):
        ok(ns, Mkdir(f"/d{number}", caller=ALICE, now=1, request_id=f"r{number}"))
    # r0 was forgotten: applying it again is a new mkdir, refused.
    assert ns.apply(Mkdir("/d0", caller=ALICE, now=2, request_id="r0")).error == "FileExists"  # type: ignore[union-attr]
    # That refusal pushed r1 out; r2 and r3 are still answered from memory.
    assert ns.apply(Mkdir("/d1", caller=ALICE, now=2, request_id="r1")).error == "FileExists"  # type: ignore[union-attr]
    assert ns.apply(Mkdir("/d3", caller=ALICE, now=2, request_id="r3")).ok


def test_default_memory_is_ten_thousand_request_ids() -> None:
    assert Namespace().request_memory == 10_000


# -- never raises ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        "mkdir /a",
        None,
        Operation(caller=ALICE, now=1),
        Mkdir("/a", caller="alice", now=1),  # type: ignore[arg-type]
        Mkdir("/a", caller=Caller(""), now=1),
        Mkdir("/a", caller=Caller("x", superuser="yes"), now=1),  # type: ignore[arg-type]
        Mkdir("/a", caller=ALICE, now=math.nan),
        Mkdir("/a", caller=ALICE, now=10**400),
        Mkdir("/a", caller=ALICE, now="now"),  # type: ignore[arg-type]
        Mkdir("/a", caller=ALICE, now=1, request_id=7),  # type: ignore[arg-type]
        Mkdir(b"/a", caller=ALICE, now=1),  # type: ignore[arg-type]
        Mkdir("/a", mode=10**5000, caller=ALICE, now=1),
        Create("/a", caller=ALICE, now=1, lease_holder=object(), lease_expires=2),  # type: ignore[arg-type]
    ],
)
def test_garbage_is_refused_never_raised(ns: Namespace, op: Any) -> None:
    before = Namespace.restore(ns.snapshot())
    result = ns.apply(op)
    assert isinstance(result, Err)
    assert result.error in {"InvalidArgument", "InvalidPath"}, result
    assert "\n" not in result.message and len(result.message) < 300
    assert "0x" not in result.message  # no memory addresses: replicas must agree
    assert ns == before


def test_a_bug_in_a_handler_becomes_an_internal_error(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Namespace, op: Mkdir) -> Ok[Stat]:
        raise KeyError("boom")

    monkeypatch.setattr(Namespace, "_mkdir", broken)
    before = Namespace.restore(ns.snapshot())
    result = ns.apply(Mkdir("/a", caller=ALICE, now=1))
    assert isinstance(result, Err)
    assert result.error == INTERNAL_ERROR == "DFSError"
    assert "Mkdir" in result.message and "KeyError" in result.message
    assert type(result.exception()) is errors.DFSError
    assert ns == before


def test_a_bug_in_a_query_becomes_an_internal_error(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Namespace, path: str) -> Stat:
        raise RuntimeError("boom")

    monkeypatch.setattr(Namespace, "_stat_query", broken)
    result = ns.stat("/")
    assert isinstance(result, Err) and result.error == INTERNAL_ERROR


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(["/", "/a", "/a/b", "/f", "/f/x", "/..", "c1", "c2"]),
    st.binary(max_size=4),
)
ops = st.one_of(
    *[
        st.builds(
            op_class,
            **{
                field.name: anything
                for field in attrs.fields(op_class)
                if field.name not in ("caller", "now", "request_id")
            },
            caller=st.sampled_from([ALICE, ADMIN]),
            now=st.sampled_from([1.0, 100.0]),
        )
        for op_class in (
            Mkdir,
            Create,
            AddChunk,
            BumpChunkVersion,
            CommitChunk,
            RenewLease,
            Close,
            RecoverLease,
            Delete,
            Rename,
            SetReplication,
            Chmod,
            Chown,
        )
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=8))
def test_any_operation_is_answered_and_a_refusal_changes_nothing(operations: list[Any]) -> None:
    ns = Namespace(root_mode=0o777)
    ok(ns, mkdir("/a"))
    ok(ns, create("/f", holder="c1", expires=50))
    for op in operations:
        before = Namespace.restore(ns.snapshot())
        result = ns.apply(op)
        assert isinstance(result, Ok | Err)
        if isinstance(result, Err):
            assert result.error != INTERNAL_ERROR, result
            assert hasattr(errors, result.error)
            assert ns == before
        assert ns.verify() == []


# -- snapshots -------------------------------------------------------------------------


def test_snapshot_restores_an_equal_namespace_that_goes_on_identically(ns: Namespace) -> None:
    ok(ns, mkdir("/a/b/c", parents=True))
    written(ns, "/a/f", [1, 2])
    ok(ns, create("/a/open", holder="c9", expires=70))
    ok(ns, Mkdir("/r", caller=ALICE, now=1, request_id="req"))
    copy = Namespace.restore(ns.snapshot())
    assert copy == ns
    assert pickle.loads(pickle.dumps(ns)) == ns
    assert [lease.path for lease in copy.expired_leases(80)] == ["/a/open"]
    op = Create("/a/g", caller=BOB, now=9, lease_holder="c2", lease_expires=90)
    assert copy.apply(op) == ns.apply(op)
    assert copy == ns
    assert copy.apply(Mkdir("/r", caller=ALICE, now=3, request_id="req")).ok


def test_verify_reports_a_damaged_tree_instead_of_looping(ns: Namespace) -> None:
    ok(ns, mkdir("/a/b", parents=True))
    written(ns, "/a/f", [1])
    assert ns.verify() == []
    a = ns._nodes[2]
    assert isinstance(a, ns_module.DirectoryNode)
    a.children["loop"] = 1  # the root, again
    a.children["gone"] = 999
    problems = ns.verify()
    assert any("reachable twice" in problem for problem in problems)
    assert any("missing inode 999" in problem for problem in problems)


def test_restore_refuses_a_snapshot_of_something_else() -> None:
    with pytest.raises(TypeError):
        Namespace.restore(pickle.dumps({"not": "a namespace"}))


def test_a_very_deep_tree_pickles_and_compares() -> None:
    ns = Namespace(root_mode=0o777)
    deep = "/" + "/".join(["d"] * 2000)
    ok(ns, mkdir(deep, parents=True))
    copy = Namespace.restore(ns.snapshot())
    assert copy == ns
    assert stat(copy, deep).path == deep
    assert ok(copy, Delete("/d", recursive=True, caller=ALICE, now=2)).freed == ()
    assert copy.entry_count == 1


#: Written by the namespace as it was when a file's chunks were a list: /home/alice
#: holds "empty" (no chunk, created with request id "r1"), "done" (chunks of 100 and
#: 50 bytes, closed) and "open" (under lease "c2": one chunk committed at 10 bytes,
#: one pending).
CHUNK_LISTS_SNAPSHOT = Path(__file__).parent / "data" / "namespace-chunk-lists.snapshot"


def test_a_snapshot_with_chunk_lists_loads_and_goes_on() -> None:
    old = Namespace.restore(CHUNK_LISTS_SNAPSHOT.read_bytes())
    assert old.verify() == []
    done = old.chunks("/home/alice/done").unwrap()
    assert [chunk.length for chunk in done] == [100, 50]
    assert isinstance(done, tuple)
    assert stat(old, "/home/alice/done").length == 150
    assert old.chunks("/home/alice/empty").unwrap() == ()
    # The pending chunk can still be committed and the file closed.
    pending = old.chunks("/home/alice/open").unwrap()[-1]
    ok(old, CommitClose("/home/alice/open", "c2", pending.chunk_id, 1, 5, 15, caller=ALICE, now=9))
    assert stat(old, "/home/alice/open").length == 15
    assert old.chunk_target(pending.chunk_id) == ChunkTarget(pending.chunk_id, 1, 5, 3)
    # The remembered result of a request still answers its retry.
    retry = CreateClosed("/home/alice/empty", caller=ALICE, now=10, request_id="r1")
    assert old.apply(retry).ok
    assert old.verify() == []
    assert Namespace.restore(old.snapshot()) == old


def test_a_restored_namespace_shares_what_a_live_one_shares(ns: Namespace) -> None:
    ok(ns, mkdir("/a"))
    for name in ["f", "g"]:
        ok(ns, CreateClosed(f"/a/{name}", mode=0o640, caller=Caller("ali" + "ce"), now=2))
    copy = Namespace.restore(ns.snapshot())
    assert copy == ns
    directory = copy._nodes[2]
    assert isinstance(directory, ns_module.DirectoryNode)
    f, g = (copy._nodes[directory.children[name]] for name in ["f", "g"])
    assert isinstance(f, ns_module.FileNode) and isinstance(g, ns_module.FileNode)
    assert f.owner is g.owner is directory.owner
    assert f.mode is g.mode and f.chunk_size is g.chunk_size
    assert f.parent is directory.inode
    assert directory.children["f"] is f.inode
    assert next(number for number in copy._nodes if number == f.inode) is f.inode
    assert f.chunks == ()


def test_operations_and_results_pickle() -> None:
    ns = Namespace(root_mode=0o777)
    for op in [
        mkdir("/a"),
        create("/a/f"),
        AddChunk("/a/f", "c1", 90, caller=ALICE, now=2),
        Delete("/nope", caller=ALICE, now=2),
    ]:
        assert pickle.loads(pickle.dumps(op)) == op
        result = ns.apply(op)
        assert pickle.loads(pickle.dumps(result)) == result


def test_module_exports_the_documented_names() -> None:
    for name in ["Caller", "Ok", "Err", "Stat", "Entry", "ChunkRef", "DeleteResult", "Namespace"]:
        assert hasattr(ns_module, name)
    assert ns_module.Entry is Stat


# -- cluster state: drains and the administrator's safe mode ---------------------------


def test_decommission_and_safe_mode_are_replicated_state_for_superusers_only(
    ns: Namespace,
) -> None:
    refused(ns, SetDecommission("ds1", True, caller=ALICE, now=1), "PermissionDenied")
    refused(ns, SetSafeMode(True, caller=ALICE, now=1), "PermissionDenied")
    refused(ns, SetDecommission("bad/name", True, caller=ADMIN, now=1), "InvalidArgument")
    ok(ns, SetDecommission("ds1", True, caller=ADMIN, now=1))
    ok(ns, SetDecommission("ds2", True, caller=ADMIN, now=1))
    ok(ns, SetDecommission("ds1", False, caller=ADMIN, now=1))
    assert ns.decommissioned == frozenset({"ds2"})
    ok(ns, SetSafeMode(True, caller=ADMIN, now=1))
    assert ns.safe_mode
    # Both survive a snapshot, as a new leader must see them.
    restored = Namespace.restore(ns.snapshot())
    assert restored.decommissioned == frozenset({"ds2"}) and restored.safe_mode


def test_chunk_targets_and_the_committed_count_leave_out_chunks_being_written(
    ns: Namespace,
) -> None:
    _first, second = written(ns, "/done", [10, 20])
    ok(ns, create("/open", holder="c2", now=4))
    pending = ok(ns, AddChunk("/open", "c2", 70, caller=ALICE, now=5))
    assert ns.chunk_target(second.chunk_id) == ns_module.ChunkTarget(second.chunk_id, 1, 20, 3)
    target = ns.chunk_target(pending.chunk_id)
    assert target is not None and not target.committed
    assert ns.chunk_target(999) is None
    assert ns.committed_chunk_count() == 2
    tree = ns.tree("/")
    assert isinstance(tree, Ok)
    assert tree.value.directories == 1
    assert [(f.path, f.complete, len(f.chunks)) for f in tree.value.files] == [
        ("/done", True, 2),
        ("/open", False, 1),
    ]


def wire(stats: Any) -> list[WireEntry]:
    """Stats as the wire entries a page holds: without the lease holder."""
    fields = [field.name for field in attrs.fields(WireEntry)]
    return [WireEntry(*(getattr(stat, name) for name in fields)) for stat in stats]


def test_a_page_holds_what_stat_says_of_each_entry(ns: Namespace) -> None:
    ok(ns, mkdir("/d/sub", parents=True))
    written(ns, "/d/done", [3, 4])
    ok(ns, create("/d/open", holder="writer"))
    page = ns.list_page("/d")
    assert isinstance(page, Ok)
    assert list(page.value.entries) == wire(
        stat(ns, f"/d/{name}") for name in ["done", "open", "sub"]
    )
    root = ns.list_page("/")
    assert isinstance(root, Ok) and [entry.path for entry in root.value.entries] == ["/d"]


def page_names(ns: Namespace, path: str, start_after: str = "", limit: int = 1000) -> Any:
    result = ns.list_page(path, start_after=start_after, limit=limit)
    assert isinstance(result, Ok), result
    return [entry.name for entry in result.value.entries], result.value.more


def test_list_page_gives_the_entries_after_start_after_in_name_order(ns: Namespace) -> None:
    for name in ["d", "b", "a", "e", "c"]:
        ok(ns, mkdir("/" + name))
    assert page_names(ns, "/", limit=2) == (["a", "b"], True)
    assert page_names(ns, "/", "b", limit=2) == (["c", "d"], True)
    assert page_names(ns, "/", "d", limit=2) == (["e"], False)
    assert page_names(ns, "/", "bb", limit=10) == (["c", "d", "e"], False)
    assert page_names(ns, "/", "e") == ([], False)
    page = ns.list_page("/", limit=5)
    assert isinstance(page, Ok) and not page.value.more
    assert list(page.value.entries) == wire(ns.list("/").value)  # type: ignore[union-attr]


def test_list_page_follows_changes_made_after_a_directory_was_listed(ns: Namespace) -> None:
    for name in ["b", "d"]:
        ok(ns, mkdir("/" + name))
    assert page_names(ns, "/") == (["b", "d"], False)
    ok(ns, mkdir("/c"))
    written(ns, "/a", [1])
    ok(ns, Rename("/d", "/b/x", caller=ALICE, now=2.0))
    ok(ns, Rename("/a", "/e", caller=ALICE, now=2.0))
    assert page_names(ns, "/") == (["b", "c", "e"], False)
    ok(ns, Delete("/c", caller=ALICE, now=3.0))
    assert page_names(ns, "/") == (["b", "e"], False)
    assert page_names(ns, "/b") == (["x"], False)
    assert ns.verify() == []


def test_list_page_of_a_file_is_the_file_itself(ns: Namespace) -> None:
    written(ns, "/f", [3])
    page = ns.list_page("/f")
    assert isinstance(page, Ok) and not page.value.more
    assert list(page.value.entries) == wire([stat(ns, "/f")])
    assert page_names(ns, "/f", "f") == ([], False)


def test_list_page_checks_read_permission_on_the_directory(ns: Namespace) -> None:
    ok(ns, mkdir("/private", mode=0o711))
    refused = ns.list_page("/private", BOB)
    assert isinstance(refused, Err) and refused.error == "PermissionDenied"
    assert isinstance(ns.list_page("/private", ALICE), Ok)


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
def test_list_page_refuses_a_limit_that_is_not_a_positive_integer(
    ns: Namespace, limit: Any
) -> None:
    refused = ns.list_page("/", limit=limit)
    assert isinstance(refused, Err) and refused.error == "InvalidArgument"


def test_the_sorted_names_are_not_part_of_a_snapshot(ns: Namespace) -> None:
    for name in ["b", "a"]:
        ok(ns, mkdir("/" + name))
    page_names(ns, "/")
    restored = Namespace.restore(ns.snapshot())
    assert restored == ns
    assert "_sorted_names" not in ns.__getstate__()
    ok(restored, mkdir("/c"))
    assert page_names(restored, "/") == (["a", "b", "c"], False)


def test_a_snapshot_without_sorted_names_loads_and_lists(ns: Namespace) -> None:
    # As an older metaserver wrote it: the state has no such field.
    ok(ns, mkdir("/a"))
    state = ns.__getstate__()
    older = Namespace.__new__(Namespace)
    older.__setstate__(state)
    assert page_names(older, "/") == (["a"], False)
    assert older.verify() == []


def test_a_stat_is_a_wire_entry_and_keeps_its_lease_holder(ns: Namespace) -> None:
    ok(ns, create("/f", holder="writer"))
    entry = stat(ns, "/f")
    assert isinstance(entry, WireEntry)
    assert entry.under_construction == "writer" and not entry.complete


# -- freed chunks ----------------------------------------------------------------------


def test_a_recursive_delete_records_every_chunk_it_freed(ns: Namespace) -> None:
    ok(ns, mkdir("/d/e", parents=True))
    first = written(ns, "/d/f", [1, 2])
    second = written(ns, "/d/e/g", [3])
    kept = written(ns, "/kept", [4])
    assert ns.freed_chunks() == {}
    ok(ns, Delete("/d", True, caller=ALICE, now=5))
    assert ns.freed_chunks() == {ref.chunk_id: ref.version for ref in first + second}
    assert kept[0].chunk_id not in ns.freed_chunks()
    assert ns.verify() == []


def test_a_file_replaced_by_rename_or_overwrite_frees_its_chunks(ns: Namespace) -> None:
    old = written(ns, "/a", [1])
    written(ns, "/b", [2])
    ok(ns, Rename("/b", "/a", caller=ALICE, now=5))
    assert ns.freed_chunks() == {old[0].chunk_id: old[0].version}
    replaced = ns.chunks("/a").unwrap()
    ok(ns, create("/a", holder="c2", now=6, expires=70, overwrite=True))
    assert set(ns.freed_chunks()) == {old[0].chunk_id, replaced[0].chunk_id}


def test_freed_chunks_are_forgotten_by_a_superuser_only(ns: Namespace) -> None:
    refs = written(ns, "/f", [1, 2, 3])
    ok(ns, Delete("/f", False, caller=ALICE, now=5))
    ids = tuple(ref.chunk_id for ref in refs)
    refused(ns, ForgetFreedChunks(ids, caller=ALICE, now=6), "PermissionDenied")
    refused(ns, ForgetFreedChunks((ids[0], "x"), caller=ADMIN, now=6), "InvalidArgument")  # type: ignore[arg-type]
    refused(ns, ForgetFreedChunks(list(ids), caller=ADMIN, now=6), "InvalidArgument")  # type: ignore[arg-type]
    # Forgetting what is not (or no longer) freed changes nothing and counts nothing.
    assert ok(ns, ForgetFreedChunks((ids[0], ids[1], 999), caller=ADMIN, now=6)) == 2
    assert ns.freed_chunks() == {ids[2]: 1}
    assert ok(ns, ForgetFreedChunks((ids[0],), caller=ADMIN, now=7)) == 0
    assert ns.verify() == []


def test_freed_chunks_survive_a_snapshot(ns: Namespace) -> None:
    refs = written(ns, "/f", [1, 2])
    ok(ns, Delete("/f", False, caller=ALICE, now=5))
    copy = Namespace.restore(ns.snapshot())
    assert copy == ns
    assert copy.freed_chunks() == {ref.chunk_id: ref.version for ref in refs}
    ok(copy, ForgetFreedChunks((refs[0].chunk_id,), caller=ADMIN, now=6))
    assert copy != ns
    assert Namespace.restore(copy.snapshot()).freed_chunks() == {refs[1].chunk_id: 1}
