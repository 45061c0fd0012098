"""ChunkAllocator and ChunkTokens: chunks placed, committed, read, and their tokens."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dfs.metaserver import operations as ops
from dfs.metaserver.allocation import ChunkTokens
from dfs.metaserver.log import MemoryLog
from dfs.metaserver.registry import DataserverRegistry, SpaceReport
from dfs.protocol.errors import (
    FileNotFound,
    InvalidArgument,
    InvalidToken,
    IsADirectory,
    NoSpace,
    NotLeader,
    PermissionDenied,
    SafeMode,
)
from dfs.protocol.records import Location
from dfs.security.identity import Identity, Role
from dfs.security.tokens import COPY, READ, WRITE, TokenIssuer, TokenKeys

ADMIN = Identity(Role.ADMIN, "root")
ALICE = Identity(Role.CLIENT, "alice")
BOB = Identity(Role.CLIENT, "bob")
ADDRESSES = ["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]
LOCATIONS = [Location.decode(address) for address in ADDRESSES]
KEYS = TokenKeys(b"a" * 32)


def result_of(coroutine):
    results: list[object] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1000)
    return clock


@pytest.fixture
def registry() -> DataserverRegistry:
    registry = DataserverRegistry(dead_after=5.0)
    for number, address in enumerate(LOCATIONS, 1):
        registry.register(f"ds{number}", address, SpaceReport(1 << 40, 1 << 40, 0, 0), 0.0)
    return registry


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
def handlers(clock, log, registry, make_handlers):
    handlers = make_handlers(clock, log, registry, keys=KEYS, lease_period=30.0)
    result_of(handlers.namespace.mkdir(ADMIN, "/home", 0o777, True, "m"))
    return handlers


def create(handlers, identity=ALICE, path="/home/f", replication=3):
    result_of(handlers.chunks.create(identity, path, 0o600, replication, 0, False, "c", ""))


def test_a_new_chunk_goes_to_distinct_dataservers_with_a_write_token(handlers, clock):
    create(handlers)
    answer = result_of(handlers.chunks.add_chunk(ALICE, "/home/f", "c", "r2"))
    assert sorted(map(str, answer["targets"])) == ADDRESSES
    claims = KEYS.verify(
        answer["token"], answer["chunk_id"], answer["version"], WRITE, "alice", clock.seconds()
    )
    assert claims.operation == WRITE


def test_no_room_for_min_replication_is_no_space(clock, log, make_handlers):
    handlers = make_handlers(clock, log, min_replication=2)
    result_of(handlers.namespace.mkdir(ADMIN, "/home", 0o777, True, "m"))
    create(handlers)
    with pytest.raises(NoSpace, match="0 live dataservers have room for a chunk, 2 needed"):
        result_of(handlers.chunks.add_chunk(ALICE, "/home/f", "c", "r2"))


def test_a_bumped_version_comes_with_a_token_for_that_version(handlers, clock):
    create(handlers)
    added = result_of(handlers.chunks.add_chunk(ALICE, "/home/f", "c", "r2"))
    bumped = result_of(
        handlers.chunks.bump_chunk_version(ALICE, "/home/f", "c", added["chunk_id"], "r3")
    )
    assert bumped["version"] == added["version"] + 1
    KEYS.verify(bumped["token"], added["chunk_id"], bumped["version"], WRITE, "alice", 1000)
    with pytest.raises(InvalidToken):
        KEYS.verify(added["token"], added["chunk_id"], bumped["version"], WRITE, "alice", 1000)


def test_a_committed_chunk_is_found_at_once_with_read_tokens(handlers):
    create(handlers)
    added = result_of(handlers.chunks.add_chunk(ALICE, "/home/f", "c", "r2"))
    chunk_id, version = added["chunk_id"], added["version"]
    result_of(
        handlers.chunks.commit_chunk(ALICE, "/home/f", "c", chunk_id, version, 5, LOCATIONS, "r3")
    )
    result_of(handlers.chunks.close(ALICE, "/home/f", "c", 5, "r4"))
    page = handlers.chunks.get_chunks(ALICE, "/home/f", 0, 10, "127.0.0.1")
    assert page["length"] == 5 and not page["more"]
    [found] = page["chunks"]
    assert sorted(map(str, found.locations)) == ADDRESSES
    KEYS.verify(found.token, chunk_id, version, READ, "alice", 1000)
    with pytest.raises(PermissionDenied):
        handlers.chunks.get_chunks(BOB, "/home/f", 0, 10)


def test_a_chunk_on_fewer_dataservers_than_min_replication_is_refused(clock, log, make_handlers):
    handlers = make_handlers(clock, log, keys=KEYS, min_replication=2)
    result_of(handlers.namespace.mkdir(ADMIN, "/home", 0o777, True, "m"))
    create(handlers)
    with pytest.raises(InvalidArgument, match="fewer than min_replication"):
        result_of(handlers.chunks.commit_chunk(ALICE, "/home/f", "c", 1, 1, 5, LOCATIONS[:1], ""))


def test_write_tokens_are_renewed_only_for_the_lease_holder(handlers):
    create(handlers, path="/home/shared")
    added = result_of(handlers.chunks.add_chunk(ALICE, "/home/shared", "c", "r2"))
    renewed = handlers.chunks.renew_chunk_tokens(
        ALICE, "/home/shared", WRITE, [added["chunk_id"]], "c"
    )
    assert [token["chunk_id"] for token in renewed["tokens"]] == [added["chunk_id"]]
    with pytest.raises(PermissionDenied, match="does not hold its write lease"):
        handlers.chunks.renew_chunk_tokens(ALICE, "/home/shared", WRITE, [added["chunk_id"]], "d")
    with pytest.raises(InvalidArgument, match="expected read or write"):
        handlers.chunks.renew_chunk_tokens(ALICE, "/home/shared", "copy", [], "c")


def test_directories_have_no_chunks(handlers):
    with pytest.raises(IsADirectory):
        handlers.chunks.get_chunks(ALICE, "/home", 0, 10)


def test_a_follower_hands_out_no_chunk(handlers, log):
    create(handlers)
    log.serving = False
    with pytest.raises(NotLeader):
        result_of(handlers.chunks.add_chunk(ALICE, "/home/f", "c", "r2"))
    with pytest.raises(NotLeader):
        handlers.chunks.get_chunks(ALICE, "/home/f", 0, 10)


def test_a_copy_token_names_the_target_and_lasts_as_long_as_the_order(clock):
    tokens = ChunkTokens(clock, TokenIssuer(KEYS, 300.0))
    token = tokens.copy("ds2", 7, 3, lifetime=3600.0)
    KEYS.verify(token, 7, 3, COPY, "ds2", clock.seconds() + 3000)


# -- a file's life: create, the lease, the close ------------------------------------


def test_a_created_file_is_stamped_with_the_callers_name_and_the_leaders_clock(
    handlers, log, clock
):
    answer = result_of(handlers.chunks.create(ALICE, "/home/f", 0o640, 0, 0, False, "c", "r"))
    assert answer == {
        "replication": 3,
        "chunk_size": 64 << 20,
        "lease_period": 30.0,
        "closed": False,
        "inode": handlers.namespace.stat(ALICE, "/home/f")["entry"].inode,
    }
    [operation] = [op for op in log.submitted if type(op) is ops.Create]
    assert operation.caller == ops.Caller("alice") and operation.now == clock.seconds()
    assert operation.lease_holder == "alice|c"
    assert operation.lease_expires == clock.seconds() + 30.0
    entry = handlers.namespace.stat(ALICE, "/home/f")["entry"]
    assert (entry.owner, entry.mode, entry.complete) == ("alice", 0o640, False)


def test_an_empty_file_is_created_closed_in_one_entry(handlers, log):
    before = len(log.submitted)
    answer = result_of(
        handlers.chunks.create(ALICE, "/home/e", 0o644, 0, 0, False, "c", "", close=True)
    )
    assert answer["closed"] and "chunk_id" not in answer
    assert [type(op) for op in log.submitted[before:]] == [ops.CreateClosed]
    assert handlers.namespace.stat(ALICE, "/home/e")["entry"].complete


def test_a_file_and_its_first_chunk_in_one_entry_then_the_last_commit_with_the_close(
    handlers, log, clock
):
    before = len(log.submitted)
    answer = result_of(
        handlers.chunks.create(ALICE, "/home/f", 0o644, 0, 0, False, "c", "", first_chunk=True)
    )
    assert sorted(map(str, answer["targets"])) == ADDRESSES
    chunk_id, version = answer["chunk_id"], answer["version"]
    KEYS.verify(answer["token"], chunk_id, version, WRITE, "alice", clock.seconds())
    result_of(handlers.chunks.close(ALICE, "/home/f", "c", 7, "", chunk_id, version, 7, LOCATIONS))
    assert [type(op) for op in log.submitted[before:]] == [ops.CreateWithChunk, ops.CommitClose]
    page = handlers.chunks.get_chunks(ALICE, "/home/f", 0, 10)
    assert page["length"] == 7
    assert sorted(map(str, page["chunks"][0].locations)) == ADDRESSES


def test_no_room_for_a_first_chunk_still_creates_the_file(clock, log, make_handlers):
    handlers = make_handlers(clock, log, min_replication=2)
    result_of(handlers.namespace.mkdir(ADMIN, "/home", 0o777, True, "m"))
    answer = result_of(
        handlers.chunks.create(ALICE, "/home/f", 0o644, 0, 0, False, "c", "", first_chunk=True)
    )
    assert "chunk_id" not in answer
    assert [type(op) for op in log.submitted[-1:]] == [ops.Create]


def test_a_close_with_the_last_chunk_on_too_few_dataservers_is_refused(
    clock, log, registry, make_handlers
):
    handlers = make_handlers(clock, log, registry, min_replication=2)
    result_of(handlers.namespace.mkdir(ADMIN, "/home", 0o777, True, "m"))
    answer = result_of(
        handlers.chunks.create(ALICE, "/home/f", 0o644, 0, 0, False, "c", "", first_chunk=True)
    )
    with pytest.raises(InvalidArgument, match="fewer than min_replication"):
        result_of(
            handlers.chunks.close(
                ALICE, "/home/f", "c", 7, "", answer["chunk_id"], 1, 7, LOCATIONS[:1]
            )
        )
    assert not handlers.namespace.stat(ALICE, "/home/f")["entry"].complete


def test_an_expired_lease_is_recovered_by_the_leader_out_of_safe_mode(handlers, clock):
    result_of(handlers.chunks.create(ALICE, "/home/f", 0o644, 1, 0, False, "c", ""))
    result_of(handlers.chunks.recover_expired_leases())
    assert not handlers.namespace.stat(ALICE, "/home/f")["entry"].complete
    clock.advance(31)
    result_of(handlers.chunks.recover_expired_leases())
    assert handlers.namespace.stat(ALICE, "/home/f")["entry"].complete


def test_leases_are_renewed_in_safe_mode_but_files_are_not_created(handlers):
    result_of(handlers.chunks.create(ALICE, "/home/f", 0o644, 1, 0, False, "c", ""))
    result_of(handlers.safe_mode.control(ADMIN, "enter"))
    result_of(handlers.chunks.renew_lease(ALICE, "/home/f", "c"))
    with pytest.raises(SafeMode):
        result_of(handlers.chunks.create(ALICE, "/home/g", 0o644, 1, 0, False, "c", ""))


# -- a writer follows its file by inode ----------------------------------------------


def written_by_inode(handlers, path="/home/f"):
    """A file created with its first chunk, as the client library writes: the
    answer's inode names the file in every later request."""
    return result_of(
        handlers.chunks.create(ALICE, path, 0o644, 1, 0, False, "c", "", first_chunk=True)
    )


def test_a_file_renamed_while_written_completes_under_its_new_name(handlers):
    answer = written_by_inode(handlers)
    inode = answer["inode"]
    result_of(
        handlers.chunks.commit_chunk(
            ALICE, "/home/f", "c", answer["chunk_id"], 1, 5, LOCATIONS[:1], "", inode
        )
    )
    result_of(handlers.namespace.rename(ALICE, "/home/f", "/home/g", "r"))
    result_of(handlers.chunks.renew_lease(ALICE, "/home/f", "c", inode))
    second = result_of(handlers.chunks.add_chunk(ALICE, "/home/f", "c", "", inode))
    tokens = handlers.chunks.renew_chunk_tokens(
        ALICE, "/home/f", WRITE, [second["chunk_id"]], "c", inode
    )
    assert [token["chunk_id"] for token in tokens["tokens"]] == [second["chunk_id"]]
    result_of(
        handlers.chunks.close(
            ALICE, "/home/f", "c", 12, "", second["chunk_id"], 1, 7, LOCATIONS[:1], inode
        )
    )
    entry = handlers.namespace.stat(ALICE, "/home/g")["entry"]
    assert (entry.inode, entry.complete, entry.length) == (inode, True, 12)


def test_a_file_whose_directory_is_renamed_while_written_completes_there(handlers):
    result_of(handlers.namespace.mkdir(ALICE, "/home/d", 0o755, False, ""))
    answer = written_by_inode(handlers, "/home/d/f")
    result_of(handlers.namespace.rename(ALICE, "/home/d", "/home/e", "r"))
    version = result_of(
        handlers.chunks.bump_chunk_version(
            ALICE, "/home/d/f", "c", answer["chunk_id"], "", answer["inode"]
        )
    )["version"]
    result_of(
        handlers.chunks.close(
            ALICE,
            "/home/d/f",
            "c",
            3,
            "",
            answer["chunk_id"],
            version,
            3,
            LOCATIONS[:1],
            answer["inode"],
        )
    )
    entry = handlers.namespace.stat(ALICE, "/home/e/f")["entry"]
    assert (entry.complete, entry.length) == (True, 3)


def test_a_writer_by_path_still_loses_a_renamed_file(handlers):
    # What a writer of protocol 2.0, which names no inode, meets.
    answer = written_by_inode(handlers)
    result_of(handlers.namespace.rename(ALICE, "/home/f", "/home/g", "r"))
    with pytest.raises(FileNotFound, match="/home/f: no such file"):
        result_of(handlers.chunks.close(ALICE, "/home/f", "c", 0, "", answer["chunk_id"], 1, 0))


def test_a_file_deleted_while_written_tells_its_writer_so(handlers):
    answer = written_by_inode(handlers)
    result_of(handlers.namespace.delete(ALICE, "/home/f", False, "r"))
    deleted = "/home/f: no such file: it was deleted or replaced while being written"
    with pytest.raises(FileNotFound, match=deleted):
        result_of(handlers.chunks.add_chunk(ALICE, "/home/f", "c", "", answer["inode"]))
    with pytest.raises(FileNotFound, match=deleted):
        result_of(handlers.chunks.renew_lease(ALICE, "/home/f", "c", answer["inode"]))
    with pytest.raises(FileNotFound, match=deleted):
        result_of(
            handlers.chunks.close(
                ALICE,
                "/home/f",
                "c",
                5,
                "",
                answer["chunk_id"],
                1,
                5,
                LOCATIONS[:1],
                answer["inode"],
            )
        )


def test_a_file_replaced_while_written_is_not_the_writers_any_more(handlers):
    answer = written_by_inode(handlers)
    result_of(handlers.chunks.create(BOB, "/home/x", 0o644, 1, 0, False, "b", ""))
    result_of(handlers.namespace.rename(ADMIN, "/home/x", "/home/f", "r"))
    with pytest.raises(FileNotFound, match="deleted or replaced"):
        result_of(handlers.chunks.add_chunk(ALICE, "/home/f", "c", "", answer["inode"]))


def test_an_expired_lease_is_recovered_by_inode_after_a_rename(handlers, log, clock):
    answer = written_by_inode(handlers)
    result_of(
        handlers.chunks.commit_chunk(
            ALICE, "/home/f", "c", answer["chunk_id"], 1, 5, LOCATIONS[:1], "", answer["inode"]
        )
    )
    result_of(handlers.namespace.rename(ALICE, "/home/f", "/home/g", "r"))
    clock.advance(31)
    result_of(handlers.chunks.recover_expired_leases())
    [recovery] = [op for op in log.submitted if isinstance(op, ops.RecoverLease)]
    assert (recovery.path, recovery.inode) == ("/home/g", answer["inode"])
    entry = handlers.namespace.stat(ALICE, "/home/g")["entry"]
    assert (entry.complete, entry.length) == (True, 5)


def test_a_recovery_by_inode_follows_a_rename_applied_after_the_leader_chose(log):
    namespace = log.namespace
    root = ops.Caller("dfs", superuser=True)
    assert namespace.apply(
        ops.Create("/f", 0o644, 1, lease_holder="h", lease_expires=10, caller=root, now=1)
    ).ok
    [expired] = namespace.expired_leases(10)
    assert namespace.apply(ops.Rename("/f", "/g", caller=root, now=11)).ok
    assert namespace.apply(
        ops.RecoverLease(expired.path, caller=root, now=12, inode=expired.inode)
    ).ok
    assert namespace.stat("/g").unwrap().complete
