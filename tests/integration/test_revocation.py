"""Revocation and rotation on a running cluster, without a restart.

``dfs local revoke`` shuts a user out of every server within seconds (at once on
SIGHUP): the open connections are closed and new ones refused, while other users
go on working. A server given a renewed certificate uses it for new connections
after SIGHUP, and the connections opened before keep working.
"""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest
import pytest_twisted

from dfs.localcluster import HOST, LocalCluster, Node
from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Role
from dfs.security.tls import peer_certificate

pytestmark = pytest.mark.slow


def servers(cluster: LocalCluster) -> list[Node]:
    return cluster.metaservers + cluster.dataservers


@pytest_twisted.ensureDeferred
async def test_revoked_user_is_disconnected_and_refused_within_seconds(
    make_cluster, tmp_path, dfs, poll, log_contains, peers
):
    cluster = make_cluster(
        metaservers=1, dataservers=1, security_options={"crl_check_interval": 2.0}
    )
    alice = peers.user(cluster, "alice", tmp_path)
    bob = peers.user(cluster, "bob", tmp_path)
    alice_sessions = [await peers.connect(node, alice) for node in servers(cluster)]
    bob_sessions = [await peers.connect(node, bob) for node in servers(cluster)]

    result = dfs("local", "revoke", "--dir", str(cluster.directory), "alice")
    assert result.returncode == 0, result.stderr
    assert "revoked client:alice" in result.stdout
    revoked_at = time.monotonic()

    await poll(
        lambda: not any(session.is_open for session in alice_sessions),
        timeout=10,
        what="alice's open connections closed",
    )
    assert time.monotonic() - revoked_at < 10
    for node in servers(cluster):
        assert await peers.refused(node, alice), f"{node.name} accepted a revoked certificate"
        assert log_contains(node.logfile, "closing connection with client:alice", "revoked")
        assert log_contains(node.logfile, "refused connection", "certificate revoked", "alice")

    # Everyone else goes on: the open connections and new ones.
    for session in bob_sessions:
        assert await peers.works(session)
    for node in servers(cluster):
        (await peers.connect(node, bob)).abort()

    again = dfs("local", "revoke", "--dir", str(cluster.directory), "alice")
    assert again.returncode == 0, again.stderr
    assert "already revoked: client:alice" in again.stdout
    unknown = dfs("local", "revoke", "--dir", str(cluster.directory), "nobody")
    assert unknown.returncode != 0
    assert unknown.stderr.strip().startswith("dfs: local revoke:")
    assert "nobody" in unknown.stderr and "Traceback" not in unknown.stderr


@pytest_twisted.ensureDeferred
async def test_revoking_in_a_cluster_whose_config_named_no_crl_applies_without_a_restart(
    make_cluster, tmp_path, dfs, poll, peers
):
    # A cluster made before its security config named the CRL: revoke points it there
    # and has the running servers read it again.
    cluster = make_cluster(metaservers=1, dataservers=1)
    cluster.update_security(crl=None)
    for node in servers(cluster):
        cluster.signal_node(node, signal.SIGHUP)
    erin = peers.user(cluster, "erin", tmp_path)
    await poll(
        lambda: all(node.pid() is not None for node in servers(cluster)),
        what="the servers running",
    )
    erin_sessions = [await peers.connect(node, erin) for node in servers(cluster)]
    pids = cluster.running()

    result = dfs("local", "revoke", "--dir", str(cluster.directory), "erin")
    assert result.returncode == 0, result.stderr
    assert "did not name the CRL" in result.stderr and "SIGHUP" in result.stderr
    await poll(
        lambda: not any(session.is_open for session in erin_sessions),
        timeout=10,
        what="erin's open connections closed",
    )
    for node in servers(cluster):
        assert await peers.refused(node, erin), f"{node.name} accepted a revoked certificate"
    assert cluster.running() == pids, "a server restarted"


@pytest_twisted.ensureDeferred
async def test_sighup_applies_revocation_at_once_and_renewed_server_certificate(
    make_cluster, tmp_path, poll, log_contains, peers
):
    # The longest check interval: only SIGHUP acts within the few seconds below.
    cluster = make_cluster(
        metaservers=1, dataservers=1, security_options={"crl_check_interval": 10}
    )
    carol = peers.user(cluster, "carol", tmp_path)
    dave = peers.user(cluster, "dave", tmp_path)
    carol_sessions = [await peers.connect(node, carol) for node in servers(cluster)]

    cluster.revoke("carol")
    for node in servers(cluster):
        cluster.signal_node(node, signal.SIGHUP)
    await poll(
        lambda: not any(session.is_open for session in carol_sessions),
        timeout=5,
        what="carol's connections closed after SIGHUP",
    )
    for node in servers(cluster):
        assert log_contains(node.logfile, "SIGHUP: reloading")
        assert await peers.refused(node, carol)

    # A renewed certificate for the dataserver: new connections get it, old ones go on.
    ds1 = cluster.dataservers[0]
    before = await peers.connect(ds1, dave)
    old_serial = peer_certificate(before.transport).serial_number
    ca = CertificateAuthority.load(cluster.directory / "ca")

    # First one for another identity: refused, and the server keeps its own.
    stranger = ca.issue(Role.DATASERVER, "ds9", [HOST], out_dir=tmp_path)
    shutil.copyfile(stranger.certificate_path, ds1.directory / "ds1.crt")
    shutil.copyfile(stranger.key_path, ds1.directory / "ds1.key")
    cluster.signal_node(ds1, signal.SIGHUP)
    await poll(
        lambda: log_contains(
            ds1.logfile, "not using the new certificate", "dataserver:ds9", "dataserver:ds1"
        ),
        timeout=5,
        what="the wrong identity refused",
    )
    probe = await peers.connect(ds1, dave)
    assert peer_certificate(probe.transport).serial_number == old_serial
    probe.abort()

    renewed = ca.issue(
        Role.DATASERVER, "ds1", [HOST, "localhost"], out_dir=ds1.directory, overwrite=True
    )
    cluster.signal_node(ds1, signal.SIGHUP)

    async def new_connections_see_renewed() -> bool:
        session = await peers.connect(ds1, dave)
        serial = peer_certificate(session.transport).serial_number
        session.abort()
        return serial == renewed.certificate.serial_number

    await poll(new_connections_see_renewed, timeout=5, what="the renewed certificate in use")
    assert await peers.works(before)
    assert peer_certificate(before.transport).serial_number == old_serial
    # The dataserver's own link to the metaserver was not dropped either.
    status = cluster.status(ds1)
    assert status is not None and all(link["registered"] for link in status["metaservers"])
    before.abort()


def test_client_with_a_crl_refuses_a_revoked_server(make_cluster, tmp_path, dfs):
    # A client whose config names the CRL (tls.crl) checks every server it dials; one
    # without goes on as before (servers check their peers either way).
    cluster = make_cluster(metaservers=1, dataservers=1)
    crl = cluster.directory / "ca" / "crl.pem"
    document = json.loads(cluster.client_config.read_text())
    document["tls"]["crl"] = str(crl)
    # Beside the cluster's own: the config's relative paths stay right.
    checking = cluster.client_config.parent / "checking_client.json"
    checking.write_text(json.dumps(document))

    assert dfs("-c", str(checking), "ls", "/").returncode == 0
    revocation, _ = cluster.revoke("meta1", Role.METASERVER)
    assert revocation.crl_path == crl

    refused = dfs("-c", str(checking), "ls", "/")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith("dfs: ls: "), refused.stderr
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "certificate revoked" in refused.stderr and "meta1" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert dfs("-c", str(cluster.client_config), "ls", "/").returncode == 0

    # A CRL the client cannot use is a configuration error naming tls.crl.
    crl_copy = tmp_path / "bad.pem"
    crl_copy.write_text("not a CRL\n")
    document["tls"]["crl"] = str(crl_copy)
    checking.write_text(json.dumps(document))
    bad = dfs("-c", str(checking), "ls", "/")
    assert bad.returncode != 0
    assert "tls.crl" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
