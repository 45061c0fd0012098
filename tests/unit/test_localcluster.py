"""LocalCluster's configuration files: each metaserver has a security config of its
own, the shared one with its own audit log, and they stay in step. No process runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfs.config import SecurityConfig, load_metaserver_config, load_security_config
from dfs.localcluster import LocalCluster, LocalClusterError, Node


def security_of(node: Node) -> SecurityConfig:
    return load_security_config(load_metaserver_config(node.config_path).security_config)


def test_each_metaserver_has_its_own_audit_log_and_the_shared_settings(tmp_path: Path) -> None:
    cluster = LocalCluster.create(
        tmp_path / "c", metaservers=3, dataservers=1, security_options={"token_lifetime": 60}
    )
    shared = load_security_config(cluster.security_config)
    logs = set()
    for meta in cluster.metaservers:
        own = security_of(meta)
        assert own.audit_log == meta.directory / "audit" / "audit.log"
        assert own.audit_log.parent.is_dir()
        # Everything else is the shared file's, its relative paths made absolute.
        assert own.token_key_file == shared.token_key_file == cluster.directory / "shared/token.key"
        assert own.crl == shared.crl
        assert own.token_lifetime == 60
        logs.add(own.audit_log)
    assert len(logs) == 3
    data = cluster.dataservers[0]
    assert json.loads(data.config_path.read_text())["security_config"] == str(
        cluster.security_config
    )


def test_an_audit_log_named_in_the_shared_options_is_used_by_every_metaserver(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster.create(
        tmp_path / "c", metaservers=3, dataservers=0, security_options={"audit_log": "audit.log"}
    )
    for meta in cluster.metaservers:
        assert security_of(meta).audit_log == cluster.directory / "shared" / "audit.log"


def test_update_security_changes_the_shared_file_and_every_metaservers(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path / "c", metaservers=3, dataservers=1)
    cluster.update_security(token_key_file="token.key.new", token_previous_key_file="token.key")
    shared = cluster.directory / "shared"
    for security in [load_security_config(cluster.security_config)] + [
        security_of(meta) for meta in cluster.metaservers
    ]:
        assert security.token_key_file == shared / "token.key.new"
        assert security.token_previous_key_file == shared / "token.key"
    assert security_of(cluster.metaservers[1]).audit_log == (
        cluster.metaservers[1].directory / "audit" / "audit.log"
    )


def test_an_added_metaserver_gets_its_own_audit_log(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path / "c", metaservers=1, dataservers=0)
    added = cluster.add_metaserver()
    assert security_of(added).audit_log == added.directory / "audit" / "audit.log"
    assert security_of(cluster.metaservers[0]).audit_log != security_of(added).audit_log


def test_start_gives_the_metaservers_of_an_older_cluster_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cluster made before: every metaserver named the shared security config.
    cluster = LocalCluster.create(tmp_path / "c", metaservers=3, dataservers=0)
    for meta in cluster.metaservers:
        document = json.loads(meta.config_path.read_text())
        document["security_config"] = str(cluster.security_config)
        meta.config_path.write_text(json.dumps(document))
        meta.security_config_path.unlink()
    started: list[str] = []
    monkeypatch.setattr(LocalCluster, "start_node", lambda self, node: started.append(node.name))
    assert [node.name for node in cluster.start()] == ["meta1", "meta2", "meta3"] == started
    for meta in cluster.metaservers:
        assert security_of(meta).audit_log == meta.directory / "audit" / "audit.log"


def test_a_broken_shared_security_config_is_a_one_line_cluster_error(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path / "c", metaservers=1, dataservers=0)
    cluster.security_config.write_text('{"token_lifetime": "soon"}')
    with pytest.raises(LocalClusterError) as raised:
        cluster.update_security(crl=None)
    message = str(raised.value)
    assert message.startswith(f"{cluster.security_config}: key 'token_lifetime': ")
    assert "\n" not in message
