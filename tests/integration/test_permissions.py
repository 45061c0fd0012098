"""Users, groups, permissions and quotas on a real cluster, as people meet them on the
command line: certificates from ``dfs local adduser``, homes from ``dfs admin user
add``, groups from ``dfs admin group``, denials printed as ``Permission denied``,
the umask of the client config, quotas from ``dfs admin quota`` and ``dfs count -q``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster
from dfs.protocol.errors import QuotaExceeded

Dfs = Callable[..., subprocess.CompletedProcess[str]]
CHUNK_SIZE = 65536


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster(replication={"chunk_size": CHUNK_SIZE, "default_replication": 2})


@pytest.fixture
def as_user(
    cluster: LocalCluster, dfs: Dfs
) -> Callable[[str], Callable[..., subprocess.CompletedProcess[str]]]:
    """``as_user(name)("ls", "/")`` runs dfs with that user's config ("admin": the
    cluster's admin); a user's certificate is issued with ``dfs local adduser``."""
    configs = {"admin": str(cluster.client_config)}

    def as_user(name: str) -> Callable[..., subprocess.CompletedProcess[str]]:
        if name not in configs:
            done = dfs("local", "adduser", "--dir", str(cluster.directory), name)
            assert done.returncode == 0, done.stderr
            configs[name] = done.stdout.strip()

        def run(*arguments: object) -> subprocess.CompletedProcess[str]:
            return dfs("-c", configs[name], *map(str, arguments))

        return run

    return as_user


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.args, done.stdout, done.stderr)
    return done.stdout


def refused(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.args, done.stdout, done.stderr)
    return done.stderr.strip()


def test_adduser_writes_a_working_config_for_a_new_certificate(
    cluster: LocalCluster, dfs: Dfs
) -> None:
    done = dfs("local", "adduser", "--dir", str(cluster.directory), "alice")
    config = Path(ok(done).strip())
    assert config.name == "client_config.json" and config.is_file()
    document = json.loads(config.read_text())
    key = config.parent / document["tls"]["key"]
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    ok(dfs("-c", config, "ls", "-d", "/"))
    again = dfs("local", "adduser", "--dir", str(cluster.directory), "alice")
    assert again.returncode == 1 and again.stderr.startswith("dfs: local adduser: alice: ")
    admin = dfs("local", "adduser", "--dir", str(cluster.directory), "--admin", "root2")
    ok(dfs("-c", ok(admin).strip(), "admin", "group", "list"))


def test_homes_groups_and_denials_from_the_command_line(as_user, tmp_path: Path) -> None:
    admin, alice, bob = as_user("admin"), as_user("alice"), as_user("bob")
    assert ok(admin("admin", "user", "add", "alice")).strip() == "/user/alice is ready for alice"
    listing = ok(admin("ls", "-l", "/user"))
    assert "drwxr-x---" in listing and " alice " in listing

    local = tmp_path / "notes.txt"
    local.write_bytes(b"private notes\n")
    ok(alice("put", local, "/user/alice/notes.txt"))
    assert ok(alice("cat", "/user/alice/notes.txt")) == "private notes\n"

    assert refused(bob("cat", "/user/alice/notes.txt")) == (
        "dfs: cat: /user/alice/notes.txt: Permission denied"
    )
    assert refused(bob("ls", "/user/alice")) == "dfs: ls: /user/alice: Permission denied"
    assert refused(bob("mkdir", "/user/alice/x")) == "dfs: mkdir: /user/alice/x: Permission denied"
    assert refused(bob("rm", "/user/alice/notes.txt")).endswith("Permission denied")
    assert refused(alice("admin", "group", "add", "alice", "bob")) == (
        "dfs: admin group add: alice: Permission denied"
    )

    # alice's home belongs to group alice: bob joins it and may read, not write.
    assert ok(admin("admin", "group", "add", "alice", "bob")).strip() == "alice: bob"
    assert ok(alice("chmod", "640", "/user/alice/notes.txt")) == ""
    assert ok(bob("cat", "/user/alice/notes.txt")) == "private notes\n"
    assert refused(bob("put", "-f", local, "/user/alice/notes.txt")).endswith("Permission denied")
    assert "alice: bob" in ok(bob("admin", "group", "list"))
    ok(admin("admin", "group", "remove", "alice", "bob"))
    assert refused(bob("cat", "/user/alice/notes.txt")).endswith("Permission denied")

    # chown is for superusers; chgrp for the owner, to a group they are in.
    assert refused(alice("chown", "bob", "/user/alice/notes.txt")).endswith("Permission denied")
    ok(admin("admin", "group", "add", "science", "alice"))
    ok(alice("chgrp", "science", "/user/alice/notes.txt"))
    ok(admin("chown", "bob", "/user/alice/notes.txt"))


def test_members_of_the_superuser_group_act_as_superusers(as_user) -> None:
    admin, carol = as_user("admin"), as_user("carol")
    assert refused(carol("mkdir", "/shared")) == "dfs: mkdir: /shared: Permission denied"
    ok(admin("admin", "group", "add", "supergroup", "carol"))
    ok(carol("mkdir", "/shared"))
    ok(carol("admin", "user", "add", "dave"))
    ok(carol("chown", "dave", "/shared"))
    ok(admin("admin", "group", "remove", "supergroup", "carol"))
    assert refused(carol("chmod", "777", "/shared")).endswith("Permission denied")


@pytest_twisted.ensureDeferred
async def test_new_entries_take_the_umask_of_the_client_config(cluster: LocalCluster) -> None:
    config = cluster.add_user("erin")
    document = json.loads(config.read_text())
    document["umask"] = "027"
    config.write_text(json.dumps(document))
    admin = await DFSClient.connect(reactor, load_client_config(cluster.client_config))
    erin = await DFSClient.connect(reactor, load_client_config(config))
    try:
        await admin.add_user("erin")
        await erin.mkdir("/user/erin/dir")
        await erin.write_file("/user/erin/file", b"x")
        assert (await erin.stat("/user/erin/dir")).mode == 0o750
        assert (await erin.stat("/user/erin/file")).mode == 0o640
        assert (await erin.stat("/user/erin/file")).group == "erin"
    finally:
        admin.close()
        erin.close()


def test_quotas_from_the_command_line(as_user, tmp_path: Path) -> None:
    admin = as_user("admin")
    ok(admin("mkdir", "/project"))
    shown = ok(admin("admin", "quota", "set", "/project", "--files", "3", "--bytes", "1M"))
    assert "Name quota:  3 (1 files and directories in use)" in shown
    ok(admin("mkdir", "/project/a"))
    small = tmp_path / "small"
    small.write_bytes(b"s" * 1000)
    ok(admin("put", small, "/project/a/one"))
    assert refused(admin("mkdir", "/project/b")) == (
        "dfs: mkdir: /project/b: Disk quota exceeded: the name quota of /project is 3 files "
        "and directories, 3 in use"
    )
    line = ok(admin("count", "-q", "/project")).split()
    # QUOTA REM_QUOTA SPACE_QUOTA REM_SPACE_QUOTA DIR_COUNT FILE_COUNT CONTENT_SIZE PATH
    assert line == ["3", "0", "1048576", str(1048576 - 2000), "2", "1", "1000", "/project"]
    assert ok(admin("count", "/project")).split() == ["2", "1", "1000", "/project"]
    assert refused(as_user("alice")("admin", "quota", "clear", "/project")).endswith(
        "Permission denied"
    )
    ok(admin("admin", "quota", "clear", "/project"))
    assert ok(admin("count", "-q", "/project")).split()[:4] == ["none", "inf", "none", "inf"]
    bad = admin("admin", "quota", "set", "/project", "--bytes", "nonsense")
    assert bad.returncode == 2 and "is not a size" in bad.stderr


@pytest_twisted.ensureDeferred
async def test_a_write_refused_by_the_space_quota_keeps_what_was_acknowledged(
    cluster: LocalCluster,
) -> None:
    client = await DFSClient.connect(reactor, load_client_config(cluster.client_config))
    try:
        await client.mkdir("/limited")
        # Two replicas of 64 KiB chunks: three whole chunks fit, the fourth does not.
        await client.set_quota("/limited", bytes=3 * 2 * CHUNK_SIZE)
        writer = await client.create("/limited/big", replication=2)
        data = os.urandom(10 * CHUNK_SIZE)
        with pytest.raises(QuotaExceeded):
            await writer.write(data)
        # Closing after the refusal keeps what was acknowledged, and only that.
        await writer.close()
        entry = await client.stat("/limited/big")
        assert entry.complete
        quota = await client.quota("/limited")
        assert quota["space"] == entry.length * 2
        assert entry.length % CHUNK_SIZE == 0 and entry.length <= 3 * CHUNK_SIZE
        assert await client.read_file("/limited/big") == data[: entry.length]
    finally:
        client.close()
