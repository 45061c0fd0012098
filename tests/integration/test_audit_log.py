"""The audit log of a real metaserver: a user's operations, allowed and denied, each
one JSON line naming who, from where, what and how it ended; never the data of a
file, a token or a key."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

from dfs.localcluster import HOST, LocalCluster, twistd_argv
from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Role

CONTENT = "the quarterly figures, not for the audit log\n"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def client_config_for(cluster: LocalCluster, name: str) -> Path:
    """A client certificate and config for user ``name``, from the cluster's CA."""
    folder = cluster.directory / name
    folder.mkdir(mode=0o700)
    issued = CertificateAuthority.load(cluster.directory / "ca").issue(
        Role.CLIENT, name, out_dir=folder
    )
    admin = json.loads(cluster.client_config.read_text())
    config = folder / "client_config.json"
    config.write_text(
        json.dumps(
            {
                "metaservers": admin["metaservers"],
                "tls": {
                    "certificate": str(issued.certificate_path),
                    "key": str(issued.key_path),
                    "ca": admin["tls"]["ca"],
                },
            }
        )
    )
    return config


def find(records: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    matches = [r for r in records if all(r.get(k) == v for k, v in fields.items())]
    assert matches, f"no audit record with {fields} in:\n" + "\n".join(map(str, records))
    return matches[-1]


def test_operations_allowed_and_denied_are_audited_without_content_or_secrets(
    make_cluster, dfs, tmp_path
):
    cluster = make_cluster(
        dataservers=1,
        replication={"default_replication": 1},
        security_options={"audit_log": "audit.log", "audit_log_max_bytes": 1048576},
    )
    audit_log = cluster.directory / "shared" / "audit.log"
    admin = str(cluster.client_config)
    alice = str(client_config_for(cluster, "alice"))

    def run(config: str, *arguments: str, status: int = 0) -> str:
        done = dfs("--config", config, *arguments)
        assert done.returncode == status, (arguments, done.stdout, done.stderr)
        return done.stdout

    run(admin, "mkdir", "-p", "/user/alice")
    run(admin, "chown", "alice", "/user/alice")
    local = tmp_path / "report.txt"
    local.write_text(CONTENT)
    run(alice, "mkdir", "/user/alice/reports")
    run(alice, "put", str(local), "/user/alice/reports/q3.txt")
    assert run(alice, "cat", "/user/alice/reports/q3.txt") == CONTENT
    run(alice, "mv", "/user/alice/reports/q3.txt", "/user/alice/reports/q3-final.txt")
    run(alice, "chmod", "640", "/user/alice/reports/q3-final.txt")
    run(alice, "rm", "/user/alice/reports/q3-final.txt")
    denied = dfs("--config", alice, "admin", "fsck", "/")
    assert denied.returncode != 0

    text = audit_log.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        assert TIME.fullmatch(record["time"]), record
        assert re.fullmatch(re.escape(HOST) + r":\d+", record["remote"]), record
        assert not any("token" in key or "key" in key for key in record), record

    find(records, user="admin", role="admin", operation="Chown", path="/user/alice", owner="alice")
    mine = [r for r in records if r["user"] == "alice"]
    assert {r["role"] for r in mine} == {"client"}
    find(mine, operation="Mkdir", path="/user/alice/reports", result="ok")
    find(mine, operation="Create", path="/user/alice/reports/q3.txt", result="ok")
    find(mine, operation="CloseFile", path="/user/alice/reports/q3.txt", result="ok")
    find(mine, operation="GetChunks", path="/user/alice/reports/q3.txt", result="ok")
    find(
        mine,
        operation="Rename",
        path="/user/alice/reports/q3.txt",
        destination="/user/alice/reports/q3-final.txt",
        result="ok",
    )
    find(mine, operation="Chmod", path="/user/alice/reports/q3-final.txt", mode="0640")
    find(mine, operation="Delete", path="/user/alice/reports/q3-final.txt", result="ok")
    find(mine, operation="Fsck", path="/", result="PermissionDenied")
    # the per-chunk traffic of the write is not recorded
    assert not [r for r in mine if r["operation"] in {"AddChunk", "CommitChunk"}]

    assert CONTENT.strip() not in text
    shared = cluster.directory / "shared"
    for secret in ("token.key", "raft.password"):
        assert (shared / secret).read_text().strip() not in text
    assert stat.S_IMODE(audit_log.stat().st_mode) == 0o600


def test_an_audit_log_in_a_missing_folder_stops_the_metaserver_with_one_line(tmp_path):
    cluster = LocalCluster.create(
        tmp_path / "cluster", dataservers=0, security_options={"audit_log": "gone/audit.log"}
    )
    node = cluster.metaservers[0]
    result = subprocess.run(
        twistd_argv("--nodaemon", "--pidfile=", "dfs-meta", "--config", str(node.config_path)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 78, result.stderr  # EX_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "security_config.json" in lines[0] and "key 'audit_log'" in lines[0], lines[0]
    assert str(cluster.directory / "shared" / "gone") in lines[0], lines[0]
