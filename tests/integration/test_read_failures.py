"""Reads that meet a bad replica: corrupted on disk, on a dead dataserver, or none left."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from dfs.client.client import DFSClient
from dfs.client.reader import ChunkUnavailable
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster
from dfs.protocol.records import Location

MiB = 1024 * 1024


async def connect(cluster: LocalCluster) -> DFSClient:
    return await DFSClient.connect(reactor, load_client_config(cluster.client_config))


def node_at(cluster: LocalCluster, address: Location):
    [node] = [node for node in cluster.dataservers if node.address == str(address)]
    return node


async def chunks_of(client: DFSClient, path: str) -> list:
    reader = await client.open(path)
    reader.close()
    return list(reader._chunks)


def replica_path(node, chunk):
    folder = node.directory / "data" / "chunks" / f"{chunk.chunk_id & 0xFF:02x}"
    return folder / f"{chunk.chunk_id}_{chunk.version}.chunk"


@pytest_twisted.ensureDeferred
async def test_a_corrupted_replica_is_skipped_and_reported(cluster, poll, log_contains):
    client = await connect(cluster)
    data = os.urandom(3 * MiB)
    await client.write_file("/c", data, chunk_size=2 * MiB)
    reader = await client.open("/c")
    chunks = reader._chunks
    # Flip one byte in the middle of the replica this reader tries first.
    first = node_at(cluster, chunks[0].locations[0])
    path = replica_path(first, chunks[0])
    with open(path, "r+b") as replica:
        replica.seek(1_000_000)
        byte = replica.read(1)
        replica.seek(1_000_000)
        replica.write(bytes([byte[0] ^ 0xFF]))

    assert await reader.read() == data
    reader.close()
    meta = cluster.metaservers[0]
    # The metaserver has the dataserver check the replica, which quarantines it ...
    await poll(
        lambda: log_contains(
            meta.logfile, f"chunk {chunks[0].chunk_id}", first.name, "is corrupt and quarantined"
        ),
        what="bad replica checked and quarantined",
    )
    assert (first.directory / "data" / "quarantine" / path.name).exists()

    # ... and a good copy replaces it, from another replica.
    async def whole_again() -> bool:
        report = await client.fsck("/c")
        return report.healthy and first.address in map(
            str, (await chunks_of(client, "/c"))[0].locations
        )

    await poll(whole_again, timeout=30, what="the corrupt replica replaced")
    assert await client.read_file("/c") == data
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_read_moves_past_a_dataserver_killed_before_it_is_declared_dead(cluster):
    client = await connect(cluster)
    data = os.urandom(MiB + 5)
    await client.write_file("/d", data)
    reader = await client.open("/d")
    # The replica the reader would try first is lost before it reads; the metaserver
    # does not know yet. The reader moves on.
    cluster.kill_node(node_at(cluster, reader._chunks[0].locations[0]))
    assert await reader.read() == data
    reader.close()
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_file_with_no_live_replica_fails_naming_the_chunk(make_cluster, poll):
    cluster = make_cluster(dataservers=2)
    client = await connect(cluster)
    await client.write_file("/only", os.urandom(1000), replication=1)
    [chunk] = await chunks_of(client, "/only")
    holder = node_at(cluster, chunk.locations[0])
    cluster.kill_node(holder)

    # Before the metaserver notices: the read tries the dead replica and says so.
    with pytest.raises(ChunkUnavailable) as caught:
        await client.read_file("/only")
    assert f"chunk {chunk.chunk_id}" in str(caught.value)
    assert holder.address in str(caught.value)

    # Once the dataserver is declared dead, the chunk has no location at all.
    async def no_locations() -> bool:
        return (await chunks_of(client, "/only"))[0].locations == ()

    await poll(no_locations, timeout=20, what="replica forgotten")
    with pytest.raises(ChunkUnavailable) as caught:
        await client.read_file("/only")
    assert f"/only: chunk {chunk.chunk_id} unreadable" in str(caught.value)
    assert "no replica of it on a live dataserver" in str(caught.value)

    # It comes back, reports its replica, and the file reads again.
    cluster.start_node(holder)
    cluster.wait_ready(timeout=60)

    async def readable() -> bool:
        try:
            return len(await client.read_file("/only")) == 1000
        except ChunkUnavailable:
            return False

    await poll(readable, timeout=20, what="readable after the dataserver returned")
    client.close()
