"""The dataserver's own care for its replicas, on real processes: the scrubber finds
a replica damaged on disk and moves it to quarantine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster, Node
from dfs.protocol.records import Location

MiB = 1024 * 1024


def node_at(cluster: LocalCluster, address: Location) -> Node:
    [node] = [node for node in cluster.dataservers if node.address == str(address)]
    return node


def data_folder(node: Node) -> Path:
    return node.directory / "data"


@pytest_twisted.ensureDeferred
async def test_the_scrubber_quarantines_a_replica_damaged_on_disk(make_cluster, poll):
    cluster = make_cluster(
        metaservers=1,
        dataservers=3,
        dataserver_options={"scrub_bandwidth": 256 * MiB, "scrub_interval": 0.5},
    )
    client = await DFSClient.connect(reactor, load_client_config(cluster.client_config))
    data = os.urandom(3 * MiB)
    await client.write_file("/scrubbed", data, chunk_size=2 * MiB)
    reader = await client.open("/scrubbed")
    reader.close()
    chunk = reader._chunks[0]
    node = node_at(cluster, chunk.locations[0])
    name = f"{chunk.chunk_id}_{chunk.version}.chunk"
    replica = data_folder(node) / "chunks" / f"{chunk.chunk_id & 0xFF:02x}" / name
    with open(replica, "r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))

    quarantined = data_folder(node) / "quarantine" / name
    await poll(quarantined.exists, timeout=30, what=f"{name} quarantined on {node.name}")

    def scrubber_of(node: Node) -> dict:
        status = cluster.status(node, timeout=10)
        assert status is not None, f"{node.name} does not answer on HTTP"
        return status["scrubber"]

    await poll(
        lambda: scrubber_of(node)["corrupt_found"] == 1,
        timeout=10,
        what="the corrupt replica counted in the status",
    )
    scrub = scrubber_of(node)
    assert scrub["enabled"] is True and scrub["replicas_checked"] >= 1
    assert scrub["bytes_checked"] > 0 and scrub["last_pass_start"] is not None
    assert quarantined.read_bytes()[1_000_000] == byte[0] ^ 0xFF
    # The other dataservers' replicas are intact and stay where they are.
    for other in cluster.dataservers:
        if other is not node:
            await poll(
                lambda other=other: scrubber_of(other)["passes"] >= 1,
                timeout=10,
                what=f"a scrub pass on {other.name}",
            )
            assert scrubber_of(other)["corrupt_found"] == 0
            assert list((data_folder(other) / "quarantine").iterdir()) == []
    # Readers never meet the damaged bytes again.
    assert await client.read_file("/scrubbed") == data
    client.close()
