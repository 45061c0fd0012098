"""Chunk access tokens on real processes: a dataserver reads or writes a chunk only
on a token the metaserver minted, whoever the certificate says is calling; a token
of the previous key still works during a rotation; and a transfer slower than a
token lasts succeeds all the same."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from dfs.client.client import DFSClient
from dfs.client.connection import ClientCredentials, connect_server
from dfs.client.grants import ChunkGrant
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster
from dfs.protocol.commands import (
    AbortChunkWrite,
    GetChunks,
    OpenChunkWrite,
    ReadChunk,
    RenewChunkTokens,
)
from dfs.protocol.errors import InvalidToken
from dfs.protocol.records import ChunkRecord, Location
from dfs.protocol.session import PeerSession
from dfs.security.tokens import READ, WRITE, TokenKeys

MiB = 1024 * 1024
BLOCK = 65536


def cluster_keys(cluster: LocalCluster) -> TokenKeys:
    """The key the cluster's servers mint with, as an operator could read it."""
    return TokenKeys((cluster.directory / "shared" / "token.key").read_bytes().strip())


def write_key(path: Path) -> bytes:
    key = os.urandom(32).hex().encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


async def a_chunk(cluster: LocalCluster, path: str) -> tuple[DFSClient, ChunkRecord]:
    """A client, and the first chunk of a new file at ``path`` as GetChunks gives it
    (with a read token minted for the client's user)."""
    client = await DFSClient.connect(reactor, load_client_config(cluster.client_config))
    await client.write_file(path, os.urandom(MiB + 5), chunk_size=MiB)
    answer = await client.metaserver.call(GetChunks, path=path, first=0, limit=10)
    return client, answer["chunks"][0]


async def dataserver(location: Location, credentials: ClientCredentials) -> PeerSession:
    return await connect_server(reactor, location, credentials)


async def refusal(call: Any) -> str:
    with pytest.raises(InvalidToken) as caught:
        await call
    return str(caught.value)


@pytest_twisted.ensureDeferred
async def test_a_dataserver_refuses_every_bad_token_and_says_why(
    cluster, credentials, poll, log_contains
):
    client, chunk = await a_chunk(cluster, "/guarded")
    keys = cluster_keys(cluster)
    user = credentials.identity.name
    chunk_id, version = chunk.chunk_id, chunk.version
    later = time.time() + 300
    session = await dataserver(chunk.locations[0], credentials)

    # The token that came with the locations works.
    answer = await session.callRemote(
        ReadChunk, chunk_id=chunk_id, version=version, offset=0, length=BLOCK, token=chunk.token
    )
    assert len(answer["data"]) == BLOCK

    def read(token: str | None, *, of: int = chunk_id, at: int = version) -> Any:
        return session.callRemote(
            ReadChunk, chunk_id=of, version=at, offset=0, length=BLOCK, token=token
        )

    forged = TokenKeys(os.urandom(32)).mint(chunk_id, version, READ, user, later)
    cases = {
        "no token": read(None),
        "forged token": read(forged),
        "wrong chunk": read(keys.mint(chunk_id + 1, version, READ, user, later)),
        "wrong version": read(keys.mint(chunk_id, version + 1, READ, user, later)),
        "wrong operation": read(keys.mint(chunk_id, version, WRITE, user, later)),
        "wrong user": read(keys.mint(chunk_id, version, READ, "bob", later)),
        "expired token": read(keys.mint(chunk_id, version, READ, user, time.time() - 1)),
        # The chunk's own token, presented for another chunk.
        "wrong chunk: token is for": read(chunk.token, of=chunk_id + 1),
    }
    for reason, call in cases.items():
        assert (await refusal(call)).startswith(reason), reason

    # Writes alike, on a chunk id no file has (a valid token would let it be written).
    new_id = 10**12 + chunk_id

    def open_write(token: str | None, *, of: int = new_id) -> Any:
        return session.callRemote(
            OpenChunkWrite, chunk_id=of, version=1, downstream=[], token=token
        )

    write_cases = {
        "no token": open_write(None),
        "forged token": open_write(TokenKeys(os.urandom(32)).mint(new_id, 1, WRITE, user, later)),
        "wrong chunk": open_write(keys.mint(new_id + 1, 1, WRITE, user, later)),
        "wrong version": open_write(keys.mint(new_id, 2, WRITE, user, later)),
        # A read token used to write.
        "wrong operation": open_write(keys.mint(new_id, 1, READ, user, later)),
        "wrong user": open_write(keys.mint(new_id, 1, WRITE, "bob", later)),
        "expired token": open_write(keys.mint(new_id, 1, WRITE, user, time.time() - 1)),
        # The read token of a real chunk does not open it for writing.
        "wrong operation: token allows read": open_write(chunk.token, of=chunk_id),
    }
    for reason, call in write_cases.items():
        assert (await refusal(call)).startswith(reason), reason
    token = keys.mint(new_id, 1, WRITE, user, later)
    await session.callRemote(OpenChunkWrite, chunk_id=new_id, version=1, downstream=[], token=token)
    await session.callRemote(AbortChunkWrite, chunk_id=new_id, version=1, token=token)

    # Each refusal is logged with who was refused.
    [node] = [node for node in cluster.dataservers if node.address == str(chunk.locations[0])]
    await poll(
        lambda: log_contains(
            node.logfile, "refused ReadChunk of chunk", f"to {credentials.identity}", "forged token"
        ),
        what="the refusal logged with the caller's identity",
    )
    status = cluster.status(node, timeout=10)
    assert status is not None and status["tokens_refused"] == len(cases) + len(write_cases)
    # The file is intact, and readable the ordinary way.
    assert len(await client.read_file("/guarded")) == MiB + 5
    session.transport.loseConnection()
    client.close()


@pytest_twisted.ensureDeferred
async def test_during_a_key_rotation_tokens_of_the_previous_key_are_accepted(
    make_cluster, tmp_path, credentials_of
):
    previous = tmp_path / "previous.key"
    old_key = write_key(previous)
    cluster = make_cluster(security_options={"token_previous_key_file": str(previous)})
    credentials = credentials_of(cluster)
    client, chunk = await a_chunk(cluster, "/rotated")
    chunk_id, version = chunk.chunk_id, chunk.version
    user = credentials.identity.name
    later = time.time() + 300
    session = await dataserver(chunk.locations[0], credentials)

    def read(token: str) -> Any:
        return session.callRemote(
            ReadChunk, chunk_id=chunk_id, version=version, offset=0, length=BLOCK, token=token
        )

    # Minted before the rotation, with the key now previous: still good.
    old_token = TokenKeys(old_key).mint(chunk_id, version, READ, user, later)
    assert len((await read(old_token))["data"]) == BLOCK
    # The metaserver mints with the new key only.
    cluster_keys(cluster).verify(chunk.token, chunk_id, version, READ, user, time.time())
    with pytest.raises(InvalidToken, match="forged"):
        TokenKeys(old_key).verify(chunk.token, chunk_id, version, READ, user, time.time())
    assert len((await read(chunk.token))["data"]) == BLOCK
    # A key of neither is refused.
    stranger = TokenKeys(os.urandom(32)).mint(chunk_id, version, READ, user, later)
    assert (await refusal(read(stranger))).startswith("forged token")
    session.transport.loseConnection()
    client.close()


@pytest.fixture
def credentials_of():
    return lambda cluster: ClientCredentials.from_config(load_client_config(cluster.client_config))


@pytest.mark.slow
@pytest.mark.parametrize("early", [True, False], ids=["renewed-early", "renewed-on-refusal"])
@pytest_twisted.ensureDeferred
async def test_a_transfer_slower_than_a_token_lasts_still_succeeds(
    make_cluster, monkeypatch, early
):
    """token_lifetime 10 s (the least allowed): a chunk written, and then a file read,
    over longer than that, with tokens running out in the middle of each. The client
    renews them before they run out or, with that turned off, once a dataserver
    refuses one."""
    lifetime = 10
    if not early:
        monkeypatch.setattr(ChunkGrant, "renewal_due", lambda self, now: False)
    cluster = make_cluster(security_options={"token_lifetime": lifetime})
    client = await DFSClient.connect(reactor, load_client_config(cluster.client_config))
    renewals: list[str] = []
    call = client.metaserver.call

    async def counting(command: Any, **arguments: Any) -> Any:
        if command is RenewChunkTokens:
            renewals.append(arguments["operation"])
        return await call(command, **arguments)

    client.metaserver.call = counting  # type: ignore[method-assign]
    data = os.urandom(3 * MiB)

    # One chunk written over 1.5 token lifetimes: its FinishChunkWrite comes after
    # the token from AddChunk ran out.
    writer = await client.create("/slow", chunk_size=2 * MiB)
    began = time.monotonic()
    pieces = [data[i : i + 128 * 1024] for i in range(0, 2 * MiB, 128 * 1024)]
    for piece in pieces:
        await writer.write(piece)
        await deferLater(reactor, 1.5 * lifetime / len(pieces))
    await writer.write(data[2 * MiB :])
    await writer.close()
    assert time.monotonic() - began > 1.5 * lifetime
    assert "write" in renewals

    # Read the first chunk, wait past the tokens GetChunks gave, read the rest; and
    # a range read from a second reader opened before the wait.
    reader = await client.open("/slow")
    ranges = await client.open("/slow")
    first = await reader.read(2 * MiB)
    await deferLater(reactor, lifetime + 2)
    rest = await reader.read()
    assert first + rest == data
    assert await ranges.read_range(MiB, MiB + 100) == data[MiB : 2 * MiB + 100]
    reader.close()
    ranges.close()
    client.close()
    assert renewals.count("read") >= 2
    refused = sum(
        cluster.status(node, timeout=10)["tokens_refused"] for node in cluster.dataservers
    )
    if early:
        assert refused == 0, "a token ran out before it was renewed"
    else:
        assert refused >= 3, "the expired tokens were not presented"


@pytest_twisted.ensureDeferred
async def test_sighup_rotates_the_token_key_without_a_restart(make_cluster, credentials_of, poll):
    # The rotation of docs/configuration.md, with kill -HUP for every restart. The
    # servers share one security_config.json; only the one signalled reads it again.
    cluster = make_cluster(metaservers=1, dataservers=1)
    (meta1,), (ds1,) = cluster.metaservers, cluster.dataservers
    pids = {node.name: node.pid() for node in (meta1, ds1)}
    credentials = credentials_of(cluster)
    client, chunk = await a_chunk(cluster, "/hup")
    chunk_id, version = chunk.chunk_id, chunk.version
    user = credentials.identity.name
    session = await dataserver(chunk.locations[0], credentials)
    shared = cluster.directory / "shared"
    old_key = cluster_keys(cluster).current
    new_key = write_key(shared / "token.key.new")

    def read(token: str) -> Any:
        return session.callRemote(
            ReadChunk, chunk_id=chunk_id, version=version, offset=0, length=BLOCK, token=token
        )

    def configure(current: str, previous: str | None) -> None:
        cluster.update_security(token_key_file=current, token_previous_key_file=previous)

    def reloads(node: Any) -> int:
        return node.logfile.read_text().count("token keys reloaded")

    async def reload(node: Any, count: int) -> None:
        cluster.signal_node(node, signal.SIGHUP)
        await poll(
            lambda: reloads(node) == count, timeout=10, what=f"{node.name} reloaded its keys"
        )

    def minted(key: bytes) -> str:
        return TokenKeys(key).mint(chunk_id, version, READ, user, time.time() + 300)

    # Before: a token of the new key is forged.
    assert (await refusal(read(minted(new_key)))).startswith("forged token")
    # 1. The dataserver accepts the new key as the previous one.
    configure("token.key", "token.key.new")
    await reload(ds1, 1)
    assert len((await read(minted(new_key)))["data"]) == BLOCK
    assert len((await read(minted(old_key)))["data"]) == BLOCK
    # 2. The metaserver mints with the new key.
    configure("token.key.new", "token.key")
    await reload(meta1, 1)
    answer = await client.metaserver.call(GetChunks, path="/hup", first=0, limit=1)
    token = answer["chunks"][0].token
    TokenKeys(new_key).verify(token, chunk_id, version, READ, user, time.time())
    assert len((await read(token))["data"]) == BLOCK
    # 3. The old key is dropped everywhere: its tokens are refused, the new ones not.
    configure("token.key.new", None)
    await reload(ds1, 2)
    await reload(meta1, 2)
    assert (await refusal(read(minted(old_key)))).startswith("forged token")
    assert len((await read(minted(new_key)))["data"]) == BLOCK
    assert await client.read_file("/hup") is not None
    # No process was restarted.
    assert {node.name: node.pid() for node in (meta1, ds1)} == pids
    session.transport.loseConnection()
    client.close()
