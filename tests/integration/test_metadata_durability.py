"""Metadata durability shown on the real metaserver process."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor

from dfs.client.client import DFSClient
from dfs.config import load_client_config

pytestmark = pytest.mark.slow


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_the_journal_is_fsynced_before_a_mutation_is_answered(make_cluster, tmp_path):
    assert shutil.which("strace"), "strace is needed (apt-get install strace)"
    cluster = make_cluster(metaservers=1, dataservers=0)
    meta = cluster.metaservers[0]
    client = await DFSClient.connect(reactor, load_client_config(cluster.client_config))
    trace = tmp_path / "strace.out"
    errors = tmp_path / "strace.err"
    with open(errors, "wb") as err:
        # -f with -p attaches every thread of the process; -yy names files and the
        # two ends of TCP sockets; -s shows enough of each write to find our path.
        tracer = subprocess.Popen(
            [
                "strace",
                *("-f", "-p", str(meta.pid())),
                *("-e", "trace=write,pwrite64,fsync,fdatasync,sendto,sendmsg"),
                *("-yy", "-s", "4096", "-o", str(trace)),
            ],
            stderr=err,
        )
    try:
        wait_for(lambda: b"attached" in errors.read_bytes(), 20, "strace to attach")
        name = f"/durable-{uuid.uuid4().hex}"
        await client.mkdir(name)
        assert (await client.stat(name)).is_dir
    finally:
        client.close()
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=20)

    lines = trace.read_text(errors="replace").splitlines()
    journal_write = next(
        i for i, line in enumerate(lines) if "raft.journal>" in line and name in line
    )
    synced = next(
        i
        for i, line in enumerate(lines[journal_write:], journal_write)
        if re.search(r"f(data)?sync\(\d+<[^>]*raft\.journal>\) += 0", line)
        or ("sync resumed>" in line and "= 0" in line)
    )
    listen_port = meta.listen_port
    answered = next(
        i
        for i, line in enumerate(lines[journal_write:], journal_write)
        if re.search(rf"(write|sendto|sendmsg)\(\d+<TCP:\[127\.0\.0\.1:{listen_port}->", line)
    )
    context = "\n".join(lines[journal_write : answered + 1])
    assert journal_write < synced < answered, context
