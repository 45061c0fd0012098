"""``dfs admin backup`` and the offline restore: on a group of three metaservers whose
every state is destroyed in between, and on a large namespace that keeps changing
while the leader writes the backup."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.metaserver import restore as offline_restore

pytestmark = pytest.mark.slow

#: The large namespace: directories of FILES_PER_DIRECTORY empty files, every
#: request of a directory in flight at once, from CLIENTS clients.
FILES = 30_000
FILES_PER_DIRECTORY = 500
CLIENTS = 4


def restore(config, backup) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfs.metaserver.restore", "--config", str(config), str(backup)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_a_group_rebuilt_from_a_backup_serves_every_file_byte_for_byte(make_cluster, tmp_path, dfs):
    cluster = make_cluster(metaservers=3, dataservers=3)
    config = str(cluster.client_config)
    files = {
        "/a.txt": b"hello\n",
        "/empty": b"",
        "/dir/sub/random.bin": os.urandom(300_000),
        "/dir/second.bin": os.urandom(70_000),
    }
    made = dfs("-c", config, "mkdir", "-p", "/dir/sub")
    assert made.returncode == 0, made.stderr
    for index, (path, content) in enumerate(files.items()):
        local = tmp_path / f"in{index}"
        local.write_bytes(content)
        made = dfs("-c", config, "put", str(local), path)
        assert (made.returncode, made.stderr) == (0, ""), made.stderr

    backup = tmp_path / "namespace.backup"
    taken = dfs("-c", config, "admin", "backup", str(backup))
    assert (taken.returncode, taken.stderr) == (0, ""), taken.stderr
    assert taken.stdout.startswith(f"backup written to {backup}: ")
    assert backup.stat().st_mode & 0o077 == 0
    assert not (cluster.metaservers[0].directory / "data" / "backup.partial").exists()
    # The leader deleted its copy once the client had it.
    for meta in cluster.metaservers:
        folder = meta.directory / "data" / "backups"
        assert not folder.exists() or list(folder.iterdir()) == []
    # Written after the backup: lost by the restore, as documented.
    (tmp_path / "late").write_bytes(b"too late\n")
    late = dfs("-c", config, "put", str(tmp_path / "late"), "/late")
    assert late.returncode == 0, late.stderr

    for meta in cluster.metaservers:
        cluster.stop_node(meta)
        shutil.rmtree(meta.directory / "data")

    # A damaged backup is refused, in one line naming the checksum, and writes nothing.
    damaged = tmp_path / "damaged.backup"
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    refused = restore(cluster.metaservers[0].config_path, damaged)
    assert refused.returncode == 65
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "SHA-256 checksum mismatch" in refused.stderr
    assert not (cluster.metaservers[0].directory / "data" / "raft").exists()

    for meta in cluster.metaservers:
        restored = restore(meta.config_path, backup)
        assert (restored.returncode, restored.stderr) == (0, ""), restored.stderr
        assert "restored" in restored.stdout
    # Restoring twice would mix states: refused.
    again = restore(cluster.metaservers[0].config_path, backup)
    assert again.returncode == 73 and "already holds Raft state" in again.stderr

    for meta in cluster.metaservers:
        cluster.start_node(meta)
    cluster.wait_ready(timeout=60)

    for index, (path, content) in enumerate(files.items()):
        local = tmp_path / f"out{index}"
        got = dfs("-c", config, "get", path, str(local))
        assert (got.returncode, got.stderr) == (0, ""), f"{path}: {got.stderr}"
        assert local.read_bytes() == content, path
    gone = dfs("-c", config, "ls", "/late")
    assert gone.returncode == 1 and "No such file" in gone.stderr


class Mutator:
    """A client making directories one after another: when each was acknowledged."""

    def __init__(self, client: DFSClient) -> None:
        self.client = client
        self.acked: list[tuple[float, str]] = []
        self.running = True

    async def run(self) -> None:
        await self.client.mkdir("/during")
        for number in itertools.count():
            if not self.running:
                return
            path = f"/during/d{number}"
            await self.client.mkdir(path)
            self.acked.append((time.monotonic(), path))

    def longest_gap(self, start: float, end: float) -> tuple[float, int]:
        """The longest time within ``start``..``end`` with no acknowledgement, and how
        many acknowledgements fell in it."""
        inside = [when for when, _ in self.acked if start <= when <= end]
        points = [start, *inside, end]
        return max(b - a for a, b in itertools.pairwise(points)), len(inside)


async def fill(clients: list[DFSClient]) -> list[str]:
    """FILES empty files, every request of a directory in flight at once."""

    async def directory(client: DFSClient, number: int) -> list[str]:
        folder = f"/bulk/d{number}"
        await client.mkdir(folder, parents=True)
        paths = [f"{folder}/f{index}" for index in range(FILES_PER_DIRECTORY)]
        await gatherResults([Deferred.fromCoroutine(client.write_file(p, b"")) for p in paths])
        return paths

    async def share(number: int, client: DFSClient) -> list[str]:
        made = []
        for folder in range(number, FILES // FILES_PER_DIRECTORY, len(clients)):
            made.extend(await directory(client, folder))
        return made

    shares = await gatherResults(
        [Deferred.fromCoroutine(share(n, client)) for n, client in enumerate(clients)]
    )
    return [path for made in shares for path in made]


@pytest_twisted.ensureDeferred
async def test_a_large_backup_keeps_the_log_going_and_holds_every_acknowledged_change(
    make_cluster, tmp_path, poll
):
    cluster = make_cluster(metaservers=1, dataservers=0)
    config = load_client_config(cluster.client_config)
    clients = [await DFSClient.connect(reactor, config) for _ in range(CLIENTS + 2)]
    admin, mutating, filling = clients[0], clients[1], clients[2:]
    try:
        files = await fill(filling)
        mutator = Mutator(mutating)
        running = Deferred.fromCoroutine(mutator.run())
        await poll(lambda: len(mutator.acked) >= 100, what="mkdirs acknowledged")
        with open(tmp_path / "namespace.backup", "wb") as out:
            started = time.monotonic()
            acked_before = [path for when, path in mutator.acked if when < started]
            answer = await admin.backup(out)
            ended = time.monotonic()
        await poll(lambda: len(mutator.acked) >= len(acked_before) + 40, what="more mkdirs")
        mutator.running = False
        await running
    finally:
        for client in clients:
            client.close()

    gap, during = mutator.longest_gap(started, ended)
    baseline, _ = mutator.longest_gap(mutator.acked[0][0], started)
    print(
        f"REPORT backup of {len(files):,} files ({answer['size']:,} bytes) in "
        f"{ended - started:.2f} s: longest gap between acknowledged mkdirs "
        f"{gap * 1000:,.0f} ms ({during} acknowledged meanwhile; {baseline * 1000:,.0f} ms "
        "before the backup)"
    )

    # Everything acknowledged before the backup began is in it.
    restored, _, _ = offline_restore.restore(
        tmp_path / "namespace.backup", tmp_path / "restored", ["127.0.0.1:7100"]
    )
    missing = [path for path in [*files, *acked_before] if not restored.stat(path).ok]
    assert missing == [], f"{len(missing)} acknowledged paths missing, first {missing[:3]}"
    # The leader's copy goes once the client has it.
    folder = cluster.metaservers[0].directory / "data" / "backups"
    assert list(folder.iterdir()) == []


def test_a_backup_the_leader_cannot_write_fails_in_one_line_and_leaves_no_file(
    make_cluster, tmp_path, dfs
):
    cluster = make_cluster(metaservers=1, dataservers=0)
    folder = cluster.metaservers[0].directory / "data" / "backups"
    folder.rmdir()
    folder.write_bytes(b"")  # a file where the leader writes its backups
    out = tmp_path / "namespace.backup"
    failed = dfs("-c", str(cluster.client_config), "admin", "backup", str(out))
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"dfs: admin backup: {out}: Backup failed: writing ")
    assert failed.stderr.endswith(": Not a directory\n") and failed.stderr.count("\n") == 1
    assert not out.exists() and not (tmp_path / "namespace.backup.partial").exists()
