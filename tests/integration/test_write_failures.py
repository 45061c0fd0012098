"""Writes that lose a part: a dataserver killed in the middle of a pipeline, a writer
process killed while it holds the lease, dataservers without room."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet import reactor

from dfs.client.client import DFSClient
from dfs.client.writer import ChunkPipeline, WriteFailed
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster
from dfs.protocol.commands import FinishChunkWrite
from dfs.protocol.errors import FileNotFound, InvalidArgument, LeaseConflict, NoSpace
from dfs.protocol.records import Location

MiB = 1024 * 1024


async def connect(cluster: LocalCluster) -> DFSClient:
    return await DFSClient.connect(reactor, load_client_config(cluster.client_config))


def node_at(cluster: LocalCluster, address: Location):
    [node] = [node for node in cluster.dataservers if node.address == str(address)]
    return node


def chunk_files(cluster: LocalCluster, node_name: str, chunk_id: int) -> list[str]:
    folder = cluster.node(node_name).directory / "data" / "chunks" / f"{chunk_id & 0xFF:02x}"
    if not folder.exists():
        return []
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(f"{chunk_id}_"))


@pytest.mark.parametrize("position", [0, 1, 2], ids=["first", "middle", "last"])
@pytest_twisted.ensureDeferred
async def test_kill_9_of_a_pipeline_dataserver_mid_write_loses_nothing(
    make_cluster, position, poll
):
    cluster = make_cluster(dataservers=3)
    client = await connect(cluster)
    data = os.urandom(14 * MiB + 4321)
    writer = await client.create("/big", chunk_size=4 * MiB)
    await writer.write(data[: 6 * MiB])  # chunk 1 full, chunk 2 half sent

    async def first_chunk_committed() -> bool:
        # Chunk 1 is finished and committed in the background while chunk 2 fills.
        return (await client.stat("/big")).length == 4 * MiB

    await poll(first_chunk_committed, timeout=20, what="chunk 1 committed")
    chunk = writer._chunk
    assert chunk is not None and len(chunk.targets) == 3
    victim = node_at(cluster, chunk.targets[position])
    version_before = chunk.version
    cluster.kill_node(victim)

    for start in range(6 * MiB, len(data), 512 * 1024):
        await writer.write(data[start : start + 512 * 1024])
    await writer.close()

    assert await client.read_file("/big") == data
    reader = await client.open("/big")
    reader.close()
    chunks = reader._chunks
    assert [c.length for c in chunks] == [4 * MiB] * 3 + [2 * MiB + 4321]
    # The chunk that lost a replica has a new version, held by the two survivors only.
    assert chunks[1].version > version_before
    assert len(chunks[1].locations) == 2 and victim.address not in map(str, chunks[1].locations)
    # Later chunks went to the survivors (the dead one is refused or skipped).
    for later in chunks[2:]:
        assert victim.address not in map(str, later.locations)

    # The victim comes back: its unfinished replica of chunk 2 (the old version) is
    # gone at the scan and never offered; the leader then gives it a copy of the new
    # version, and every chunk has its three replicas again.
    cluster.start_node(victim)
    cluster.wait_ready(timeout=60)
    old = f"{chunks[1].chunk_id}_{version_before}."
    assert not [
        n for n in chunk_files(cluster, victim.name, chunks[1].chunk_id) if n.startswith(old)
    ]

    async def whole_again() -> bool:
        reader = await client.open("/big")
        reader.close()
        return (await client.fsck("/")).healthy and all(
            victim.address in map(str, c.locations) for c in reader._chunks[:2]
        )

    await poll(whole_again, timeout=30, what="chunk 2 copied to the returning dataserver")
    assert chunk_files(cluster, victim.name, chunks[1].chunk_id) == [
        f"{chunks[1].chunk_id}_{chunks[1].version}.chunk",
        f"{chunks[1].chunk_id}_{chunks[1].version}.crc",
    ]
    assert await client.read_file("/big") == data
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_stale_replica_reported_after_a_restart_is_deleted(make_cluster, poll):
    """A replica finished under an old version (its dataserver missed a recovery) is
    recognised by its version and deleted, never served."""
    cluster = make_cluster(dataservers=3)
    client = await connect(cluster)
    await client.write_file("/f", os.urandom(MiB), chunk_size=4 * MiB)
    reader = await client.open("/f")
    reader.close()
    [chunk] = reader._chunks
    holder = cluster.dataservers[0]
    folder = holder.directory / "data" / "chunks" / f"{chunk.chunk_id & 0xFF:02x}"
    cluster.stop_node(holder)
    # Make the stopped dataserver's replica one version older than the file's chunk,
    # as if it had missed a pipeline recovery.
    assert chunk.version >= 1
    for suffix in (".chunk", ".crc"):
        (folder / f"{chunk.chunk_id}_{chunk.version}{suffix}").rename(
            folder / f"{chunk.chunk_id}_{chunk.version - 1}{suffix}"
        )
    cluster.start_node(holder)
    cluster.wait_ready(timeout=60)

    stale = f"{chunk.chunk_id}_{chunk.version - 1}."

    async def deleted() -> bool:
        return not [
            n for n in chunk_files(cluster, holder.name, chunk.chunk_id) if n.startswith(stale)
        ]

    await poll(deleted, timeout=20, what="stale replica deleted")

    # Never served: the holder is offered only once it holds the current version,
    # which the leader copies to it to make the chunk whole again.
    async def whole_again() -> bool:
        reader = await client.open("/f")
        reader.close()
        return (await client.fsck("/")).healthy and holder.address in map(
            str, reader._chunks[0].locations
        )

    await poll(whole_again, timeout=30, what="the current version copied back")
    assert chunk_files(cluster, holder.name, chunk.chunk_id) == [
        f"{chunk.chunk_id}_{chunk.version}.chunk",
        f"{chunk.chunk_id}_{chunk.version}.crc",
    ]
    client.close()


WRITER_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from dfs.client import blocking

    client = blocking.connect(sys.argv[1])
    out = client.open("/leased", "wb", chunk_size=1024 * 1024)
    data = bytes(range(256)) * 4096 * 10  # 10 MiB, recognisable
    out.write(data[: 2 * 1024 * 1024 + 500_000])
    # Full chunks are committed in the background while the next one fills.
    deadline = time.monotonic() + 30
    while client.stat("/leased").length < 2 * 1024 * 1024 and time.monotonic() < deadline:
        time.sleep(0.05)
    print("written", flush=True)
    time.sleep(600)
    """
)


@pytest_twisted.ensureDeferred
async def test_a_dead_writer_loses_its_lease_and_the_file_closes_at_its_committed_length(
    make_cluster, poll
):
    cluster = make_cluster(dataservers=3, lease_period=2.0)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(cluster.client_config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None
        line = writer.stdout.readline()
        assert line == b"written\n", writer.stderr.read() if writer.stderr else b""
        client = await connect(cluster)
        # While the writer lives, its lease holds.
        with pytest.raises(LeaseConflict):
            await client.create("/leased", overwrite=True)
        assert not (await client.stat("/leased")).complete
    finally:
        writer.kill()
        writer.wait()

    async def closed() -> bool:
        return (await client.stat("/leased")).complete

    await poll(closed, timeout=30, what="lease recovered")
    entry = await client.stat("/leased")
    # Two whole chunks were committed; the half-written third was never acknowledged.
    assert entry.length == 2 * MiB
    expected = (bytes(range(256)) * 4096 * 10)[: 2 * MiB]
    assert await client.read_file("/leased") == expected
    # The file is free for a new writer.
    await client.write_file("/leased", b"next", overwrite=True)
    assert await client.read_file("/leased") == b"next"
    client.close()


@pytest_twisted.ensureDeferred
async def test_dataservers_below_their_reserved_space_refuse_new_chunks(make_cluster):
    # Every dataserver keeps back more than its disk holds: no room for any chunk.
    cluster = make_cluster(dataservers=2, reserved_space=2**60)
    client = await connect(cluster)
    before = await client.df()
    assert before["free"] == 0
    with pytest.raises(NoSpace):
        await client.write_file("/nowhere", b"x" * 1000)
    # Nothing half-made is left behind, and metadata still works.
    with pytest.raises(FileNotFound):
        await client.stat("/nowhere")
    await client.mkdir("/still-fine")
    client.close()


def test_the_blocking_facade_streams_like_a_python_file(cluster, tmp_path):
    script = textwrap.dedent(
        """
        import io, os, sys
        from dfs.client import blocking

        with blocking.connect(sys.argv[1]) as client:
            data = os.urandom(3 * 1024 * 1024 + 17)
            with client.open("/stream", "xb", chunk_size=1024 * 1024) as out:
                for start in range(0, len(data), 100_000):
                    out.write(data[start : start + 100_000])
            with io.BufferedReader(client.open("/stream")) as source:
                assert source.read(10) == data[:10]
                source.seek(2 * 1024 * 1024 - 3)
                assert source.read(6) == data[2 * 1024 * 1024 - 3 : 2 * 1024 * 1024 + 3]
                source.seek(-17, io.SEEK_END)
                assert source.read() == data[-17:]
            raw = client.open("/stream")
            pieces = []
            while piece := raw.read(250_000):
                pieces.append(piece)
            raw.close()
            assert b"".join(pieces) == data
            # A small file: held until close, read with its open.
            small = data[:300_000]
            with client.open("/small", "xb") as out:
                for start in range(0, len(small), 70_000):
                    out.write(small[start : start + 70_000])
            with io.BufferedReader(client.open("/small")) as source:
                assert source.read(10) == small[:10]
                source.seek(-17, io.SEEK_END)
                assert source.read() == small[-17:]
                source.seek(100_000)
                assert source.read(5) == small[100_000:100_005]
            with client.open("/small") as raw:
                pieces = []
                while piece := raw.read(64_000):
                    pieces.append(piece)
                assert b"".join(pieces) == small
            with client.open("/empty", "xb"):
                pass
            assert client.open("/empty").read() == b""
            try:
                client.open("/stream", "xb")
            except Exception as error:
                print(type(error).__name__)
            print(client.stat("/stream").length)
            # Leaving the block through an exception leaves no file behind.
            try:
                with client.open("/partial", "xb", chunk_size=65536) as out:
                    out.write(b"x" * 200_000)
                    raise RuntimeError("stop")
            except RuntimeError:
                pass
            try:
                client.stat("/partial")
            except Exception as error:
                print(type(error).__name__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(cluster.client_config)],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == [
        "FileExists",
        str(3 * 1024 * 1024 + 17),
        "FileNotFound",
    ]


@pytest.mark.parametrize("acknowledged", [True, False], ids=["acknowledged", "ahead"])
@pytest.mark.parametrize("position", [0, 1, 2], ids=["first", "middle", "last"])
@pytest_twisted.ensureDeferred
async def test_kill_9_of_a_pipeline_dataserver_while_a_chunk_is_finished(
    make_cluster, position, acknowledged, monkeypatch, log_contains
):
    """The dataservers above the lost one may have finished their replicas already:
    they take the new version as they are, and the chunk is finished again. With the
    FinishChunkWrite right behind the last packet (``ahead``), the loss may come
    before the survivors hold or acknowledged every byte."""
    cluster = make_cluster(dataservers=3)
    client = await connect(cluster)
    data = os.urandom(3 * MiB + 99)
    writer = await client.create("/finishing", chunk_size=2 * MiB)
    killed = []
    ask = writer.ask

    def ask_and_kill_first(session, command, **arguments):
        if command is FinishChunkWrite and not killed:
            victim = node_at(cluster, writer._chunk_targets_at_finish[position])
            cluster.kill_node(victim)
            killed.append(victim)
        return ask(session, command, **arguments)

    original_finish = ChunkPipeline.finish

    async def finish(self):
        if acknowledged:
            # Every replica holds every byte before the loss.
            await self._settle(lambda: self.acked >= self.length)
        writer._chunk_targets_at_finish = list(self.targets)
        return await original_finish(self)

    monkeypatch.setattr(ChunkPipeline, "finish", finish)
    monkeypatch.setattr(writer, "ask", ask_and_kill_first)
    await writer.write(data)
    await writer.close()
    [victim] = killed

    assert await client.read_file("/finishing") == data
    reader = await client.open("/finishing")
    reader.close()
    first = reader._chunks[0]
    assert sorted(map(str, first.locations)) == sorted(
        node.address for node in cluster.dataservers if node is not victim
    )
    # Survivors hold exactly the new version, nothing else.
    for node in cluster.dataservers:
        if node is not victim:
            assert log_contains(node.logfile, f"chunk {first.chunk_id} recovered")
            if position == 2 and acknowledged:
                # Both had finished under the old version before the loss showed.
                assert log_contains(node.logfile, f"chunk {first.chunk_id} version 1 stored")
            assert chunk_files(cluster, node.name, first.chunk_id) == [
                f"{first.chunk_id}_{first.version}.chunk",
                f"{first.chunk_id}_{first.version}.crc",
            ]
    client.close()


@pytest_twisted.ensureDeferred
async def test_min_replication_is_required_of_new_chunks(make_cluster):
    cluster = make_cluster(dataservers=3, replication={"min_replication": 2})
    client = await connect(cluster)
    await client.write_file("/two", b"x" * 1000, replication=2)
    for node in cluster.dataservers[1:]:
        cluster.kill_node(node)
    # Dead or not yet noticed: the write cannot reach two replicas.
    with pytest.raises((NoSpace, WriteFailed, InvalidArgument)):
        await client.write_file("/one", b"y" * 1000, replication=2)
    with pytest.raises(FileNotFound):
        await client.stat("/one")
    client.close()


@pytest.mark.parametrize("position", [0, 2], ids=["first", "last"])
@pytest_twisted.ensureDeferred
async def test_a_small_file_meeting_a_dead_dataserver_is_written_without_it(make_cluster, position):
    """A small file goes in one StoreChunk; when a dataserver of its pipeline is dead,
    the writer writes the chunk through the pipeline of the survivors instead, under a
    new version, and the user sees no error."""
    cluster = make_cluster(dataservers=3)
    client = await connect(cluster)
    await client.write_file("/warm", b"w" * 1000)  # sessions with every dataserver
    data = os.urandom(100_000)
    writer = await client.create("/small")
    first = writer._first_chunk
    assert first is not None and len(first["targets"]) == 3
    victim = node_at(cluster, first["targets"][position])
    cluster.kill_node(victim)

    await writer.write(data)
    await writer.close()

    assert await client.read_file("/small") == data
    reader = await client.open("/small")
    reader.close()
    [chunk] = reader._chunks
    assert chunk.version > first["version"]
    assert len(chunk.locations) == 2 and victim.address not in map(str, chunk.locations)
    client.close()
