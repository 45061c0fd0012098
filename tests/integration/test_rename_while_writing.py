"""A file renamed, or its directory renamed, while another process writes it: the
writer names the file by its inode, so it goes on and closes it under its new name."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet import reactor

from dfs.client.client import DFSClient
from dfs.config import load_client_config

MiB = 1024 * 1024
#: What the writer writes: 3.5 chunks of 1 MiB, recognisable byte by byte.
CONTENT = bytes(range(251)) * (7 * MiB // 2 // 251 + 1)
CONTENT = CONTENT[: 7 * MiB // 2]

# Writes a chunk and a half, says "ready" once the first chunk is committed, waits
# for "go" on its stdin (the test renames meanwhile), then writes the rest and closes.
WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from dfs.client import blocking

    MiB = 1024 * 1024
    config, path = sys.argv[1], sys.argv[2]
    content = bytes(range(251)) * (7 * MiB // 2 // 251 + 1)
    content = content[: 7 * MiB // 2]
    client = blocking.connect(config)
    out = client.open(path, "wb", chunk_size=MiB, replication=1)
    out.write(content[: 3 * MiB // 2])
    deadline = time.monotonic() + 30
    while client.stat(path).length < MiB:
        if time.monotonic() > deadline:
            sys.exit("the first chunk was not committed within 30 s")
        time.sleep(0.05)
    print("ready", flush=True)
    assert sys.stdin.readline() == "go\\n"
    out.write(content[3 * MiB // 2 :])
    out.close()
    print("closed", flush=True)
    """
)


async def connect(config: object) -> DFSClient:
    return await DFSClient.connect(reactor, load_client_config(config))


@pytest.mark.parametrize(
    ("renamed", "to", "written_at"),
    [("/w/f", "/w/g", "/w/g"), ("/w", "/v", "/v/f")],
    ids=["the file", "its directory"],
)
@pytest_twisted.ensureDeferred
async def test_a_file_renamed_while_another_process_writes_it_completes_under_its_new_name(
    cluster, renamed, to, written_at
):
    client = await connect(cluster.client_config)
    await client.mkdir("/w")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(cluster.client_config), "/w/f"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        line = writer.stdout.readline()
        assert line == "ready\n", writer.stderr.read() if writer.stderr else ""
        await client.rename(renamed, to)
        assert not (await client.stat(written_at)).complete
        writer.stdin.write("go\n")
        writer.stdin.flush()
        out, err = writer.communicate(timeout=60)
        assert (writer.returncode, out) == (0, "closed\n"), err
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    entry = await client.stat(written_at)
    assert (entry.complete, entry.length) == (True, len(CONTENT))
    reader = await client.open(written_at)
    assert await reader.read(len(CONTENT) + 1) == CONTENT
    client.close()
