"""Metaserver and dataservers as real twistd processes: Ping, registration, heartbeats."""

from __future__ import annotations

import signal

import pytest
import pytest_twisted
from twisted.internet import reactor

from dfs.client.connection import ClientCredentials, connect_metaserver, connect_server
from dfs.config import Address, load_client_config
from dfs.protocol.commands import ListDataservers, Ping, RegisterDataserver
from dfs.protocol.errors import NotLeader, PermissionDenied
from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Role


async def dataserver_states(session) -> dict[str, str]:
    answer = await session.callRemote(ListDataservers)
    return {entry["name"]: entry["state"] for entry in answer["dataservers"]}


@pytest_twisted.ensureDeferred
async def test_every_dataserver_registers_and_is_listed(cluster, credentials):
    session = await connect_metaserver(reactor, load_client_config(cluster.client_config))
    answer = await session.callRemote(ListDataservers)
    listed = {entry["name"]: entry for entry in answer["dataservers"]}
    assert set(listed) == {"ds1", "ds2", "ds3"}
    for node in cluster.dataservers:
        entry = listed[node.name]
        assert entry["state"] == "alive"
        assert entry["address"] == node.address
        assert entry["capacity"] > 0
        assert 0 <= entry["free"] <= entry["capacity"]
    session.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_both_servers_answer_ping_and_know_the_caller(cluster, credentials):
    for node, role in [
        (cluster.metaservers[0], "metaserver"),
        (cluster.dataservers[0], "dataserver"),
    ]:
        session = await connect_server(reactor, Address.parse(node.address), credentials)
        answer = await session.callRemote(Ping)
        assert (answer["role"], answer["name"]) == (role, node.name)
        assert (answer["peer_role"], answer["peer_name"]) == ("admin", "admin")
        assert session.peer is not None and session.peer.name == node.name
        session.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_cannot_register_as_a_dataserver(
    cluster, tmp_path, log_contains
):
    ca = CertificateAuthority.load(cluster.directory / "ca")
    issued = ca.issue(Role.CLIENT, "ds4", out_dir=tmp_path)
    client = ClientCredentials.from_config(
        _client_config(cluster, tmp_path, issued.certificate_path, issued.key_path)
    )
    session = await connect_server(reactor, Address.parse(cluster.metaservers[0].address), client)
    with pytest.raises(PermissionDenied):
        await session.callRemote(
            RegisterDataserver,
            name="ds4",
            address="127.0.0.1:1",
            capacity=1,
            free=1,
            used=0,
            chunks=0,
        )
    assert log_contains(cluster.metaservers[0].logfile, "denied RegisterDataserver to client:ds4")
    # Refused, not disconnected: the same session still works.
    assert (await session.callRemote(Ping))["name"] == "meta1"
    session.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_dataserver_cannot_register_under_another_name(cluster, credentials):
    ds1 = cluster.dataservers[0]
    creds = ClientCredentials.from_config(
        _client_config(cluster, ds1.directory, ds1.directory / "ds1.crt", ds1.directory / "ds1.key")
    )
    session = await connect_server(reactor, Address.parse(cluster.metaservers[0].address), creds)
    with pytest.raises(PermissionDenied, match="cannot register as dataserver 'ds2'"):
        await session.callRemote(
            RegisterDataserver,
            name="ds2",
            address="127.0.0.1:1",
            capacity=1,
            free=1,
            used=0,
            chunks=0,
        )
    session.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_silent_dataserver_is_declared_dead_then_comes_back(cluster, poll, log_contains):
    session = await connect_metaserver(reactor, load_client_config(cluster.client_config))
    ds2 = cluster.node("ds2")
    cluster.signal_node(ds2, signal.SIGSTOP)
    try:

        async def ds2_dead():
            return (await dataserver_states(session))["ds2"] == "dead"

        await poll(ds2_dead, timeout=15, what="ds2 declared dead")
        assert log_contains(cluster.metaservers[0].logfile, "dataserver ds2", "declared dead")
        states = await dataserver_states(session)
        assert states["ds1"] == states["ds3"] == "alive"
    finally:
        cluster.signal_node(ds2, signal.SIGCONT)

    async def ds2_alive():
        return (await dataserver_states(session))["ds2"] == "alive"

    await poll(ds2_alive, timeout=15, what="ds2 registered again")
    session.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_dataservers_register_again_after_a_metaserver_restart(cluster, poll):
    meta = cluster.metaservers[0]
    cluster.kill_node(meta)
    cluster.start_node(meta)
    config = load_client_config(cluster.client_config)

    async def all_alive():
        try:
            session = await connect_metaserver(reactor, config)
        except Exception:
            return False
        try:
            states = await dataserver_states(session)
        except NotLeader:
            return False  # restarted, not serving yet: only the leader lists dataservers
        finally:
            session.transport.loseConnection()
        return states == {"ds1": "alive", "ds2": "alive", "ds3": "alive"}

    await poll(all_alive, timeout=30, what="every dataserver registered with the new metaserver")


def test_a_cluster_of_several_metaservers_sees_every_dataserver_everywhere(make_cluster):
    cluster = make_cluster(metaservers=2, dataservers=2)
    for meta in cluster.metaservers:
        status = cluster.status(meta)
        assert status is not None
        assert {d["name"]: d["state"] for d in status["dataservers"]} == {
            "ds1": "alive",
            "ds2": "alive",
        }


def test_http_health_metrics_and_status(cluster):
    import urllib.request

    meta, ds = cluster.metaservers[0], cluster.dataservers[0]
    with urllib.request.urlopen(f"{meta.http_url}/health", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{meta.http_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'dfs_dataservers{state="alive"} 3.0' in text
    status = cluster.status(ds)
    assert status is not None and status["name"] == ds.name
    assert status["metaservers"] == [{"address": meta.address, "registered": True}]


def _client_config(cluster, directory, certificate, key):
    import json

    path = directory / f"client-{certificate.stem}.json"
    path.write_text(
        json.dumps(
            {
                "metaservers": [cluster.metaservers[0].address],
                "tls": {
                    "certificate": str(certificate),
                    "key": str(key),
                    "ca": str(cluster.directory / "ca" / "ca.crt"),
                },
            }
        )
    )
    return load_client_config(path)
