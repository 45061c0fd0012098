"""Helpers of the integration tests (``make_cluster`` and ``cluster`` are in
tests/conftest.py, shared with the stress tests)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater

from dfs.client.connection import ClientCredentials, connect_server
from dfs.config import Address, load_client_config
from dfs.localcluster import LocalCluster, Node
from dfs.protocol.commands import Ping
from dfs.protocol.session import PeerSession
from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Role
from dfs.security.tls import NodeCredentials


def admin_credentials(cluster: LocalCluster) -> ClientCredentials:
    return ClientCredentials.from_config(load_client_config(cluster.client_config))


@pytest.fixture
def credentials(cluster: LocalCluster) -> ClientCredentials:
    return admin_credentials(cluster)


async def eventually(check: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
    """Poll ``check`` (sync or async) until it returns a true value, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if hasattr(result, "__await__"):
            result = await result  # type: ignore[misc]
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what or check}")
        await deferLater(reactor, 0.05)


class Peers:
    """Sessions opened straight to one server as a given user: who is let in, who is
    shut out, and whether an open session still answers."""

    @staticmethod
    def user(cluster: LocalCluster, name: str, directory: Path) -> ClientCredentials:
        """A client certificate for ``name`` from the cluster's CA."""
        ca = CertificateAuthority.load(cluster.directory / "ca")
        issued = ca.issue(Role.CLIENT, name, out_dir=directory)
        credentials = NodeCredentials.load(
            issued.certificate_path, issued.key_path, cluster.directory / "ca" / "ca.crt"
        )
        return ClientCredentials(credentials=credentials, identity=issued.identity)

    @staticmethod
    async def connect(node: Node, credentials: ClientCredentials) -> PeerSession:
        address = Address.parse(node.address)
        session = await connect_server(reactor, address, credentials, timeout=5)
        assert (await session.callRemote(Ping))["name"] == node.name
        return session

    @classmethod
    async def refused(cls, node: Node, credentials: ClientCredentials) -> bool:
        try:
            session = await cls.connect(node, credentials)
        except Exception:
            return True
        session.abort()
        return False

    @staticmethod
    async def works(session: PeerSession) -> bool:
        answer = await session.callRemote(Ping).addTimeout(5, reactor)
        return session.is_open and bool(answer["name"])


@pytest.fixture
def peers() -> Peers:
    return Peers()


@pytest.fixture
def poll() -> Callable[..., object]:
    return eventually


def log_has(path: Path, *fragments: str) -> bool:
    """True when one line of the log holds every fragment."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return False
    return any(all(fragment in line for fragment in fragments) for line in lines)


@pytest.fixture
def log_contains() -> Callable[..., bool]:
    return log_has


def run_dfs(*arguments: str) -> subprocess.CompletedProcess[str]:
    """The dfs command as a user runs it, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "dfs_shell.main", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def dfs() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_dfs
