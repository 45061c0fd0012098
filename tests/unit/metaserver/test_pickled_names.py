"""Snapshots and log entries are pickles, which name classes by module: those written
before operations, permissions and quotas left dfs.metaserver.namespace still load,
and what is written now names the classes as an earlier release knows them."""

from __future__ import annotations

import pickle
import pickletools
from pathlib import Path

from dfs.metaserver.namespace import PICKLED_HERE, Namespace
from dfs.metaserver.operations import (
    BY_PATH,
    AddChunk,
    AddUser,
    BumpChunkVersion,
    Caller,
    ChangeGroup,
    Chmod,
    Chown,
    Close,
    CommitChunk,
    CommitClose,
    Create,
    CreateClosed,
    CreateWithChunk,
    Delete,
    Err,
    ForgetFreedChunks,
    Mkdir,
    Ok,
    RecoverLease,
    Rename,
    RenewLease,
    SetDecommission,
    SetQuota,
    SetReplication,
    SetSafeMode,
)
from dfs.metaserver.quotas import Quota, QuotaUsage

DATA = Path(__file__).parent / "data"
#: Written by the namespace as it was before the split: /q (mode 0777, quota of 10
#: names and 10**9 bytes) holds the directory d (made by alice with request id "r1";
#: "r2", the same mkdir again, was refused) and the file f, under lease "c1" with one
#: pending chunk; group staff is alice and bob; /user/alice exists; ds9 is draining.
SNAPSHOT = DATA / "namespace-before-split.snapshot"
#: One operation of every kind, pickled as the log stored them before the split.
OPERATIONS = DATA / "operations-before-split.pickle"

ALICE = Caller("alice")
ROOT = Caller("dfs", superuser=True)


def modules_named(data: bytes) -> set[str]:
    """The modules of the classes a pickle refers to (protocol 4 and later)."""
    strings = [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert "GLOBAL" not in ops  # protocol 4 names classes with STACK_GLOBAL
    return {text for text in strings if text.startswith("dfs.")}


def test_a_snapshot_written_before_the_split_loads_and_goes_on() -> None:
    old = Namespace.restore(SNAPSHOT.read_bytes())
    assert old.verify() == []
    assert old.quota("/q").unwrap() == QuotaUsage("/q", 10, 10**9, 3, 3 * 64 * 1024 * 1024)
    assert old.groups() == {"staff": ("alice", "bob")}
    assert old.decommissioned == frozenset({"ds9"})
    assert old.stat("/user/alice").unwrap().owner == "alice"
    # The remembered results answer their retries, success and refusal alike.
    assert old.apply(Mkdir("/q/d", caller=ALICE, now=9, request_id="r1")).ok
    again = old.apply(Mkdir("/q/d", caller=ALICE, now=9, request_id="r2"))
    assert isinstance(again, Err) and again.error == "FileExists"
    # The quota still counts: the pending chunk is committed and the file closed.
    chunk = old.chunks("/q/f").unwrap()[-1]
    assert old.apply(CommitClose("/q/f", "c1", chunk.chunk_id, 1, 5, 5, caller=ALICE, now=9)).ok
    assert old.quota("/q").unwrap().space == 5 * 3
    assert old.verify() == []
    assert Namespace.restore(old.snapshot()) == old


def test_log_entries_written_before_the_split_load_as_todays_operations() -> None:
    loaded = pickle.loads(OPERATIONS.read_bytes())
    assert [type(op) for op in loaded] == [
        Mkdir,
        Create,
        AddChunk,
        BumpChunkVersion,
        CommitChunk,
        RenewLease,
        Close,
        CreateClosed,
        CreateWithChunk,
        CommitClose,
        RecoverLease,
        Delete,
        Rename,
        SetReplication,
        Chmod,
        Chown,
        ChangeGroup,
        AddUser,
        SetQuota,
        SetDecommission,
        SetSafeMode,
    ]
    assert loaded[0] == Mkdir("/a", caller=ALICE, now=1, request_id="m")
    assert loaded[-1] == SetSafeMode(True, caller=ROOT, now=1)
    # Written again today, an entry is the same bytes: an earlier release reads it.
    assert pickle.dumps(loaded, protocol=pickle.HIGHEST_PROTOCOL) == OPERATIONS.read_bytes()


def test_what_is_pickled_now_names_only_the_namespace_module() -> None:
    namespace = Namespace.restore(SNAPSHOT.read_bytes())
    assert modules_named(namespace.snapshot()) == {"dfs.metaserver.namespace"}
    for value in [
        *pickle.loads(OPERATIONS.read_bytes()),
        Ok(1),
        Err("FileExists", "/a: exists"),
        Quota(1, 2),
        QuotaUsage("/a", 1, 2, 3, 4),
    ]:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        assert modules_named(data) == {"dfs.metaserver.namespace"}, value
        assert pickle.loads(data) == value
    assert all(cls.__module__ == "dfs.metaserver.namespace" for cls in PICKLED_HERE)


def test_an_entry_of_a_writer_by_path_pickles_as_before_and_one_by_inode_loads_back() -> None:
    # An old entry has no inode: it loads as by path, and pickles again without one.
    old = next(op for op in pickle.loads(OPERATIONS.read_bytes()) if isinstance(op, AddChunk))
    assert old.inode == BY_PATH
    assert "inode" not in pickle.dumps(old, protocol=pickle.HIGHEST_PROTOCOL).decode("latin-1")
    by_inode = AddChunk("/f", "h", 9.0, caller=ALICE, now=1, inode=7)
    assert pickle.loads(pickle.dumps(by_inode, protocol=pickle.HIGHEST_PROTOCOL)) == by_inode


def test_a_snapshot_written_before_freed_chunks_were_kept_loads_with_none() -> None:
    old = Namespace.restore(SNAPSHOT.read_bytes())
    assert old.freed_chunks() == {}
    chunk = old.chunks("/q/f").unwrap()[-1]
    assert old.apply(Delete("/q/f", False, caller=ROOT, now=9)).ok
    assert old.freed_chunks() == {chunk.chunk_id: chunk.version}
    assert Namespace.restore(old.snapshot()).freed_chunks() == {chunk.chunk_id: chunk.version}


def test_forgetting_freed_chunks_is_new_and_pickles_where_it_lives() -> None:
    operation = ForgetFreedChunks((1, 2), caller=ROOT, now=1)
    data = pickle.dumps(operation, protocol=pickle.HIGHEST_PROTOCOL)
    assert modules_named(data) == {"dfs.metaserver.operations", "dfs.metaserver.namespace"}
    assert pickle.loads(data) == operation
