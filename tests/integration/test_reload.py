"""SIGHUP on real twistd processes: security_config.json edited, the signal sent to each
server by its pid, and the new CRL, connection limit and audit log in force within
seconds, without a restart; a key only a restart applies is named in the log, and a
broken file changes nothing."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dfs.client.client import DFSClient
from dfs.client.connection import ClientCredentials
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster, Node
from dfs.security.ca import CertificateAuthority

pytestmark = pytest.mark.slow

#: Longer than any wait below: a change seen within it came from SIGHUP, not the poll.
CRL_CHECK_INTERVAL = 10


def security_config_of(cluster: LocalCluster, node: Node) -> Path:
    """The security_config.json ``node`` reads: a metaserver has one of its own (its
    own audit log), the dataservers share the cluster's."""
    if node in cluster.metaservers:
        return node.security_config_path
    return cluster.security_config


class Reloads:
    """Edits the security_config.json of every server and sends each SIGHUP."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    @property
    def servers(self) -> list[Node]:
        return self.cluster.metaservers + self.cluster.dataservers

    def change(self, **changes: Any) -> None:
        self.cluster.update_security(**changes)
        self.signal()

    def write(self, text: str) -> None:
        for node in self.servers:
            # Whole or not at all: a server must never read half a file.
            path = security_config_of(self.cluster, node)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.replace(path)
        self.signal()

    def signal(self) -> None:
        for node in self.servers:
            self.cluster.signal_node(node, signal.SIGHUP)


@pytest_twisted.ensureDeferred
async def test_sighup_applies_a_new_crl_connection_limit_and_audit_log_without_a_restart(
    make_cluster, tmp_path, poll, log_contains, peers
):
    cluster = make_cluster(
        metaservers=1,
        dataservers=1,
        replication={"default_replication": 1, "min_replication": 1},
        security_options={
            "crl_check_interval": CRL_CHECK_INTERVAL,
            "audit_log": None,
            "limits": {"connections_per_identity": 8},
        },
    )
    meta, ds1 = cluster.metaservers[0], cluster.dataservers[0]
    pids = cluster.running()
    reloads = Reloads(cluster)

    # -- a CRL at another path, signed by the same CA, revoking carol ----------------
    carol = peers.user(cluster, "carol", tmp_path / "carol")
    dave = peers.user(cluster, "dave", tmp_path / "dave")
    carol_sessions = [await peers.connect(node, carol) for node in reloads.servers]
    copy = tmp_path / "ca-copy"
    shutil.copytree(cluster.directory / "ca", copy)
    CertificateAuthority.load(copy).revoke("carol")
    reloads.change(crl=str(copy / "crl.pem"))
    await poll(
        lambda: not any(session.is_open for session in carol_sessions),
        timeout=CRL_CHECK_INTERVAL / 2,
        what="carol's connections closed after SIGHUP named the new CRL",
    )
    for node in reloads.servers:
        assert await peers.refused(node, carol), f"{node.name} let revoked carol in"
        assert log_contains(node.logfile, "checking peers against the CRL", str(copy))

    # -- a lower connection limit: open connections stay, new ones count them --------
    dave_sessions = [await peers.connect(meta, dave) for _ in range(3)]
    reloads.change(limits={"connections_per_identity": 2})
    await poll(
        lambda: all(
            log_contains(node.logfile, "reloaded: applied limits.connections_per_identity")
            for node in reloads.servers
        ),
        what="both servers reloaded the limits",
    )
    assert await peers.refused(meta, dave)
    assert log_contains(meta.logfile, "client:dave already has 3 connections open (limit 2)")
    for session in dave_sessions:
        assert await peers.works(session)
        session.abort()
    # Once dave is under the new limit, a connection is accepted again.
    await poll(
        lambda: _accepted(peers, meta, dave), what="dave admitted again once under the limit"
    )
    # The dataserver took them too, and still reaches the metaserver.
    assert log_contains(ds1.logfile, "connection limits for new connections:")
    status = cluster.status(ds1)
    assert status is not None and all(link["registered"] for link in status["metaservers"])

    # -- the audit log: on, then a path that cannot be opened, then off -------------
    client = await DFSClient.connect(reactor, load_client_config(cluster.client_config))
    try:
        audit_log = tmp_path / "audit" / "reloaded.log"
        audit_log.parent.mkdir()
        reloads.change(audit_log=str(audit_log))
        await poll(
            lambda: log_contains(meta.logfile, "reloaded: applied audit_log"),
            what="the metaserver turned the audit log on",
        )
        await client.mkdir("/audited")
        assert _operations(audit_log) == [("Mkdir", "/audited")]

        reloads.change(audit_log=str(tmp_path / "gone" / "audit.log"))
        await poll(
            lambda: log_contains(
                meta.logfile,
                "not changing the audit log:",
                "gone",
                "still writing " + str(audit_log),
            ),
            what="the unusable audit path refused in one line",
        )
        await client.mkdir("/still-audited")
        assert _operations(audit_log)[-1] == ("Mkdir", "/still-audited")

        reloads.change(audit_log=None)
        await poll(
            lambda: log_contains(meta.logfile, "audit log off (it was", str(audit_log)),
            what="the audit log turned off",
        )
        await client.mkdir("/not-audited")
        assert _operations(audit_log)[-1] == ("Mkdir", "/still-audited")
    finally:
        client.close()

    # -- a key only a restart applies, and a broken file ---------------------------
    reloads.change(superusergroup="admins", crl_check_interval=5)
    await poll(
        lambda: log_contains(
            meta.logfile,
            f"{security_config_of(cluster, meta)}: superusergroup changed; restart to apply",
        ),
        what="the metaserver names the key that needs a restart",
    )
    await poll(
        lambda: log_contains(meta.logfile, "reloaded: applied crl_check_interval"),
        what="the rest of the file still applied",
    )
    # A dataserver does not read superusergroup: nothing to restart for.
    await poll(
        lambda: log_contains(ds1.logfile, "reloaded: applied crl_check_interval"),
        what="the dataserver reloaded",
    )
    assert not log_contains(ds1.logfile, "superusergroup changed")

    reloads.write('{"crl": ')
    await poll(
        lambda: all(
            log_contains(
                node.logfile,
                f"not reloaded, the settings in use stay: {security_config_of(cluster, node)}",
                "invalid JSON",
            )
            for node in reloads.servers
        ),
        what="both servers refuse the broken file in one line",
    )
    assert await peers.refused(meta, carol)
    (await peers.connect(meta, dave)).abort()
    assert cluster.running() == pids, "a server restarted or stopped"


async def _accepted(peers: Any, node: Node, credentials: ClientCredentials) -> bool:
    return not await peers.refused(node, credentials)


def _operations(path: Path) -> list[tuple[str, str]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["operation"], r["path"]) for r in records if r["operation"] == "Mkdir"]
