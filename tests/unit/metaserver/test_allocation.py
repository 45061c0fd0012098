"""ChunkAllocator and ChunkTokens: chunks placed, committed, read, and their tokens."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dfs.metaserver.allocation import ChunkTokens
from dfs.metaserver.log import MemoryLog
from dfs.metaserver.registry import DataserverRegistry, SpaceReport
from dfs.protocol.errors import (
    InvalidArgument,
    InvalidToken,
    IsADirectory,
    NoSpace,
    NotLeader,
    PermissionDenied,
)
from dfs.security.identity import Identity, Role
from dfs.security.tokens import COPY, READ, WRITE, TokenIssuer, TokenKeys

ADMIN = Identity(Role.ADMIN, "root")
ALICE = Identity(Role.CLIENT, "alice")
BOB = Identity(Role.CLIENT, "bob")
ADDRESSES = ["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]
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
    for number, address in enumerate(ADDRESSES, 1):
        registry.register(f"ds{number}", address, SpaceReport(1 << 40, 1 << 40, 0, 0), 0.0)
    return registry


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
def handlers(clock, log, registry, make_handlers):
    handlers = make_handlers(clock, log, registry, keys=KEYS)
    result_of(handlers.namespace.mkdir(ADMIN, "/home", 0o777, True, "m"))
    return handlers


def create(handlers, identity=ALICE, path="/home/f", replication=3):
    result_of(handlers.namespace.create(identity, path, 0o600, replication, 0, False, "c", ""))


def test_a_new_chunk_goes_to_distinct_dataservers_with_a_write_token(handlers, clock):
    create(handlers)
    answer = result_of(handlers.chunks.add_chunk(ALICE, "/home/f", "c", "r2"))
    assert sorted(answer["targets"]) == ADDRESSES
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
        handlers.chunks.commit_chunk(ALICE, "/home/f", "c", chunk_id, version, 5, ADDRESSES, "r3")
    )
    result_of(handlers.namespace.close(ALICE, "/home/f", "c", 5, "r4"))
    page = handlers.chunks.get_chunks(ALICE, "/home/f", 0, 10, "127.0.0.1")
    assert page["length"] == 5 and not page["more"]
    [found] = page["chunks"]
    assert sorted(found["locations"]) == ADDRESSES
    KEYS.verify(found["token"], chunk_id, version, READ, "alice", 1000)
    with pytest.raises(PermissionDenied):
        handlers.chunks.get_chunks(BOB, "/home/f", 0, 10)


def test_a_chunk_on_fewer_dataservers_than_min_replication_is_refused(clock, log, make_handlers):
    handlers = make_handlers(clock, log, keys=KEYS, min_replication=2)
    result_of(handlers.namespace.mkdir(ADMIN, "/home", 0o777, True, "m"))
    create(handlers)
    with pytest.raises(InvalidArgument, match="fewer than min_replication"):
        result_of(handlers.chunks.commit_chunk(ALICE, "/home/f", "c", 1, 1, 5, ADDRESSES[:1], ""))


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
