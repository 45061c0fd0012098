"""Files in and out of a real cluster through the client library: namespace
operations, chunked replicated writes, ranged and streamed reads, durability of the
namespace across a kill -9 of the metaserver."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster
from dfs.protocol.errors import (
    DirectoryNotEmpty,
    FileExists,
    FileNotFound,
    InvalidArgument,
    InvalidPath,
    IsADirectory,
    LeaseConflict,
    NotADirectory,
)

MiB = 1024 * 1024


async def connect(cluster: LocalCluster) -> DFSClient:
    return await DFSClient.connect(reactor, load_client_config(cluster.client_config))


def replica_files(cluster: LocalCluster, chunk_id: int, version: int) -> dict[str, Path]:
    """The dataservers holding a complete replica of the chunk, and its data file."""
    found = {}
    for node in cluster.dataservers:
        path = (
            node.directory / "data" / "chunks" / f"{chunk_id & 0xFF:02x}" / f"{chunk_id}_{version}"
        )
        if path.with_suffix(".chunk").exists() and path.with_suffix(".crc").exists():
            found[node.name] = path.with_suffix(".chunk")
    return found


async def chunks_of(client: DFSClient, path: str) -> list:
    reader = await client.open(path)
    reader.close()
    return list(reader._chunks)


@pytest_twisted.ensureDeferred
async def test_a_multi_chunk_file_reads_back_whole_in_ranges_and_in_pieces(cluster):
    client = await connect(cluster)
    data = os.urandom(5 * MiB + 12345)
    await client.mkdir("/data")
    writer = await client.create("/data/blob.bin", chunk_size=MiB)
    # Pieces of awkward sizes, across packet and chunk boundaries.
    position = 0
    for size in [1, 65535, 65537, 3 * MiB, 100, 10**6]:
        await writer.write(data[position : position + size])
        position += size
    await writer.write(data[position:])
    await writer.close()

    entry = await client.stat("/data/blob.bin")
    assert (entry.kind, entry.length, entry.replication, entry.chunk_size) == (
        "file",
        len(data),
        3,
        MiB,
    )
    assert (entry.owner, entry.complete) == ("admin", True)
    assert await client.read_file("/data/blob.bin") == data

    reader = await client.open("/data/blob.bin")
    for offset, length in [
        (0, 1),
        (65535, 2),  # across a checksum block
        (MiB - 10, 20),  # across a chunk
        (3 * MiB + 7, 2 * MiB),  # several chunks
        (len(data) - 5, 100),  # past the end: only what is there
        (len(data), 10),
    ]:
        assert await reader.read_range(offset, length) == data[offset : offset + length]
    reader.seek(-1000, os.SEEK_END)
    assert await reader.read() == data[-1000:]
    reader.seek(4 * MiB)
    pieces = []
    while piece := await reader.read(300_000):
        pieces.append(piece)
    assert b"".join(pieces) == data[4 * MiB :]
    reader.close()

    # Every chunk has three complete replicas on three different dataservers.
    chunks = await chunks_of(client, "/data/blob.bin")
    assert [chunk.length for chunk in chunks] == [MiB] * 5 + [12345]
    for chunk in chunks:
        assert len(replica_files(cluster, chunk.chunk_id, chunk.version)) == 3
        held = sorted(map(str, chunk.locations))
        assert held == sorted(node.address for node in cluster.dataservers)
    client.close()


@pytest_twisted.ensureDeferred
async def test_empty_files_and_a_chunk_exactly_full(cluster):
    client = await connect(cluster)
    await client.write_file("/empty", b"")
    assert (await client.stat("/empty")).length == 0
    assert await client.read_file("/empty") == b""
    data = os.urandom(2 * MiB)
    await client.write_file("/two", data, chunk_size=MiB)
    assert [chunk.length for chunk in await chunks_of(client, "/two")] == [MiB, MiB]
    assert await client.read_file("/two") == data
    client.close()


def log_entries(cluster: LocalCluster) -> int:
    status = cluster.status(cluster.metaservers[0])
    assert status is not None
    return int(status["raft"]["last_applied"])


@pytest_twisted.ensureDeferred
async def test_a_file_of_one_chunk_takes_two_log_entries_and_an_empty_one_a_single_entry(
    cluster,
):
    client = await connect(cluster)
    before = log_entries(cluster)
    await client.write_file("/one-entry", b"")
    assert log_entries(cluster) - before == 1
    before = log_entries(cluster)
    data = os.urandom(MiB + 5)
    writer = await client.create("/two-entries")
    await writer.write(data)
    await writer.close()
    # Create with its first chunk, then the last commit with the close.
    assert log_entries(cluster) - before == 2
    assert await client.read_file("/two-entries") == data
    assert (await client.stat("/one-entry")).complete
    before = log_entries(cluster)
    writer = await client.create("/nothing-written")
    await writer.close()
    assert log_entries(cluster) - before == 2
    assert await chunks_of(client, "/nothing-written") == []
    client.close()


@pytest_twisted.ensureDeferred
async def test_namespace_operations(cluster):
    client = await connect(cluster)
    await client.mkdir("/a/b/c", parents=True)
    await client.mkdir("/a/b/c", parents=True)  # exists: fine with parents
    with pytest.raises(FileExists):
        await client.mkdir("/a/b")
    with pytest.raises(FileNotFound):
        await client.mkdir("/x/y")
    await client.write_file("/a/b/c/f1", b"one")
    with pytest.raises(FileExists):
        await client.write_file("/a/b/c/f1", b"again")
    await client.write_file("/a/b/c/f1", b"replaced", overwrite=True)
    assert await client.read_file("/a/b/c/f1") == b"replaced"
    with pytest.raises(NotADirectory):
        await client.write_file("/a/b/c/f1/under", b"")
    with pytest.raises(IsADirectory):
        await client.open("/a/b")

    names = [entry.name for entry in await client.listdir("/a/b/c")]
    assert names == ["f1"]
    root = {entry.name: entry for entry in await client.listdir("/")}
    assert root["a"].is_dir and root["a"].owner == "admin"

    # Rename: a file across directories, then a directory with its contents.
    await client.mkdir("/z")
    await client.rename("/a/b/c/f1", "/z/g1")
    with pytest.raises(FileNotFound):
        await client.stat("/a/b/c/f1")
    assert await client.read_file("/z/g1") == b"replaced"
    await client.rename("/a/b", "/z/b")
    assert (await client.stat("/z/b/c")).is_dir
    with pytest.raises(InvalidPath):
        await client.rename("/z", "/z/b/c/inside")

    # Replication: within the configured bounds.
    await client.set_replication("/z/g1", 2)
    assert (await client.stat("/z/g1")).replication == 2
    with pytest.raises(InvalidArgument):
        await client.set_replication("/z/g1", 11)

    # Space: du counts the bytes and their replicas; df the live dataservers.
    await client.write_file("/z/b/c/big", b"x" * 100_000)
    usage = await client.du("/z")
    assert usage["bytes"] == 100_000 + len(b"replaced")
    assert usage["replicated_bytes"] == 3 * 100_000 + 2 * len(b"replaced")
    assert usage["files"] == 2 and usage["directories"] == 3  # /z, /z/b, /z/b/c
    space = await client.df()
    assert space["dataservers_alive"] == 3 and space["capacity"] >= space["free"] > 0

    # Delete: a file; a directory only when empty or recursive.
    with pytest.raises(DirectoryNotEmpty):
        await client.delete("/z")
    await client.delete("/z/g1")
    await client.delete("/z", recursive=True)
    with pytest.raises(FileNotFound):
        await client.stat("/z/b/c/big")
    assert [entry.name for entry in await client.listdir("/a")] == []
    client.close()


@pytest.mark.parametrize(
    "path",
    [
        "relative/path",
        "",
        "/..",
        "/a/../../b",
        "/" + "n" * 256,
        "/" + "/".join(["d" * 200] * 21),  # over 4096 bytes
        "/a\x00b",
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_paths_are_refused_with_invalid_path(cluster, path):
    client = await connect(cluster)
    with pytest.raises(InvalidPath):
        await client.mkdir(path)
    with pytest.raises(InvalidPath):
        await client.write_file(path, b"")
    with pytest.raises(InvalidPath):
        await client.stat(path)
    client.close()


@pytest_twisted.ensureDeferred
async def test_paths_are_normalised(cluster):
    client = await connect(cluster)
    await client.mkdir("/n/m", parents=True)
    for spelling in ["/n//m", "/n/./m", "/n/x/../m", "/n/m/"]:
        assert (await client.stat(spelling)).path == "/n/m"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_second_writer_gets_lease_conflict(cluster):
    first = await connect(cluster)
    second = await connect(cluster)
    writer = await first.create("/leased")
    await writer.write(b"x" * 1000)
    with pytest.raises(LeaseConflict):
        await second.create("/leased", overwrite=True)
    await writer.close()
    await second.write_file("/leased", b"mine now", overwrite=True)
    assert await first.read_file("/leased") == b"mine now"
    first.close()
    second.close()


@pytest_twisted.ensureDeferred
async def test_kill_9_of_the_metaserver_loses_no_acknowledged_operation(cluster, poll):
    client = await connect(cluster)
    await client.mkdir("/kept/deep", parents=True)
    data = os.urandom(3 * MiB)
    await client.write_file("/kept/deep/file", data, chunk_size=MiB)
    await client.rename("/kept/deep/file", "/kept/file")
    await client.set_replication("/kept/file", 2)
    await client.delete("/kept/deep")
    # The last answer is in: kill at once, without a chance to flush anything.
    meta = cluster.metaservers[0]
    cluster.kill_node(meta)
    client.close()
    cluster.start_node(meta)
    cluster.wait_ready(timeout=60)

    client = await connect(cluster)
    entry = await client.stat("/kept/file")
    assert (entry.length, entry.replication, entry.complete) == (len(data), 2, True)
    assert [entry.name for entry in await client.listdir("/kept")] == ["file"]

    # Locations come back from the dataservers' reports after the restart.
    async def readable() -> bool:
        try:
            return await client.read_file("/kept/file") == data
        except Exception:
            return False

    await poll(readable, timeout=30, what="file readable after metaserver restart")
    client.close()
