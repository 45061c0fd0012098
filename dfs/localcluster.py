"""A whole DFS cluster on one machine: real twistd processes on loopback ports.

One class serves ``dfs local`` and the integration tests alike (one way to start a
test cluster). ``create`` lays out a folder with a fresh CA, certificates, configs
and free ports; ``start`` runs every node as ``python -m twisted -n dfs-meta|dfs-data``
in its own session, so it outlives the command that started it; ``stop`` ends them
by the pid in their pidfile, checking first that the pid is still that node.

Layout of the folder::

    cluster.json              what was created: nodes, ports, client config
    ca/                       the cluster CA (ca.crt, ca.key), its CRL (crl.pem) and
                              the index of what it issued (issued/)
    shared/                   replication config, the dataservers' security config,
                              token key, Raft password
    meta1/ ds1/ ds2/ ...      one folder per node: its certificate and key, config,
                              data/, twistd.pid, twistd.log, stderr.log; a metaserver
                              also its own security_config.json and audit/audit.log
    client/                   the admin certificate and key, client_config.json

Each metaserver has a security config of its own, the shared one with its own audit
log, so that no two write one file: :meth:`LocalCluster.update_security` changes them
all at once.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import attrs

from dfs.config import ConfigError, load_security_config, override, write_config
from dfs.security.ca import CertificateAuthority, Revocation
from dfs.security.identity import Role

HOST = "127.0.0.1"
DESCRIPTION = "cluster.json"


class LocalClusterError(Exception):
    """A local cluster could not be created, started, reached or stopped."""


@attrs.frozen
class Node:
    kind: str  # "meta" or "data"
    name: str
    directory: Path
    listen_port: int
    http_port: int

    @property
    def config_path(self) -> Path:
        file = "metaserver_config.json" if self.kind == "meta" else "dataserver_config.json"
        return self.directory / file

    @property
    def pidfile(self) -> Path:
        return self.directory / "twistd.pid"

    @property
    def logfile(self) -> Path:
        return self.directory / "twistd.log"

    @property
    def stderr_path(self) -> Path:
        return self.directory / "stderr.log"

    @property
    def security_config_path(self) -> Path:
        """A metaserver's own security_config.json (dataservers share one)."""
        return self.directory / "security_config.json"

    @property
    def audit_log(self) -> Path:
        """Where a metaserver writes its audit log, unless the shared security config
        names a file for all of them."""
        return self.directory / "audit" / "audit.log"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.listen_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def plugin(self) -> str:
        return "dfs-meta" if self.kind == "meta" else "dfs-data"

    def pid(self) -> int | None:
        """The pid of this node's running process, or None if it is not running."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # The pid may have been reused by an unrelated process since: only a process
        # running this node's config is ours.
        if str(self.config_path).encode() not in cmdline:
            return None
        if _is_zombie(pid):
            return None
        return pid


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports free on ``host`` right now."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def twistd_argv(*arguments: str) -> list[str]:
    """The command line running twistd with ``arguments`` under this very Python,
    whatever its twistd console script is called (or if it has none)."""
    return [
        sys.executable,
        "-c",
        "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
        *arguments,
    ]


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def _write_metaserver_security(shared: Path, node: Node) -> None:
    """Write ``node``'s own security config: the settings of ``shared`` (its relative
    paths made absolute) with the node's own audit log, in a folder of its own, unless
    ``shared`` names an audit log itself."""
    try:
        settings = load_security_config(shared)
    except ConfigError as error:
        raise LocalClusterError(str(error)) from None
    if "audit_log" not in json.loads(shared.read_text()):
        node.audit_log.parent.mkdir(mode=0o700, exist_ok=True)
        settings = override(settings, "audit_log", str(node.audit_log), "dfs local")
    write_config(settings, node.security_config_path)


def _write_secret(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")


@attrs.define
class LocalCluster:
    directory: Path
    nodes: list[Node]
    client_config: Path
    # Processes started by this object, so that an early exit is seen (and reaped).
    _children: dict[str, subprocess.Popen[bytes]] = attrs.field(factory=dict, init=False)

    # -- creation --------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path | str,
        *,
        metaservers: int = 1,
        dataservers: int = 3,
        heartbeat_interval: float = 1.0,
        dataserver_dead_after: float = 10.0,
        lease_period: float = 60.0,
        reserved_space: int = 0,
        replication: dict[str, Any] | None = None,
        metaserver_options: dict[str, Any] | None = None,
        dataserver_options: dict[str, Any] | None = None,
        security_options: dict[str, Any] | None = None,
    ) -> LocalCluster:
        """``metaserver_options`` are further metaserver_config.json keys (such as
        ``raft_snapshot_entries``) for every metaserver, ``dataserver_options`` the
        same for every dataserver (such as ``scrub_bandwidth``), ``security_options``
        further security_config.json keys (such as ``audit_log``)."""
        directory = Path(directory).absolute()
        if (directory / DESCRIPTION).exists():
            raise LocalClusterError(f"{directory} already holds a cluster")
        if metaservers < 1 or dataservers < 0:
            raise LocalClusterError("need at least one metaserver and no negative counts")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca = CertificateAuthority.create(directory / "ca", common_name="DFS local cluster CA")

        ports = iter(free_ports(2 * (metaservers + dataservers) + metaservers))
        nodes = [
            Node("meta", f"meta{i}", directory / f"meta{i}", next(ports), next(ports))
            for i in range(1, metaservers + 1)
        ] + [
            Node("data", f"ds{i}", directory / f"ds{i}", next(ports), next(ports))
            for i in range(1, dataservers + 1)
        ]
        raft_ports = {node.name: next(ports) for node in nodes if node.kind == "meta"}
        meta_addresses = [node.address for node in nodes if node.kind == "meta"]

        shared = directory / "shared"
        shared.mkdir(mode=0o700)
        _write_json(
            shared / "replication_config.json",
            {"default_replication": 3, **(replication or {})},
        )
        _write_json(
            shared / "security_config.json",
            {
                "token_key_file": "token.key",
                "raft_password_file": "raft.password",
                # Always a CRL (empty at first): revoking then needs no restart.
                "crl": str(ca.crl_path),
                **(security_options or {}),
            },
        )
        _write_secret(shared / "token.key")
        _write_secret(shared / "raft.password")

        for node in nodes:
            node.directory.mkdir(mode=0o700)
            role = Role.METASERVER if node.kind == "meta" else Role.DATASERVER
            issued = ca.issue(role, node.name, [HOST, "localhost"], out_dir=node.directory)
            common = {
                "name": node.name,
                "listen": node.address,
                "http_listen": f"{HOST}:{node.http_port}",
                "data_dir": "data",
                "tls": {
                    "certificate": issued.certificate_path.name,
                    "key": issued.key_path.name,
                    "ca": str(ca.certificate_path),
                },
                "security_config": str(shared / "security_config.json"),
            }
            if node.kind == "meta":
                _write_metaserver_security(shared / "security_config.json", node)
                document = {
                    **common,
                    "security_config": str(node.security_config_path),
                    "raft_listen": f"{HOST}:{raft_ports[node.name]}",
                    "raft_partners": [
                        f"{HOST}:{port}" for name, port in raft_ports.items() if name != node.name
                    ],
                    "dataserver_dead_after": dataserver_dead_after,
                    "lease_period": lease_period,
                    "replication_config": str(shared / "replication_config.json"),
                    **(metaserver_options or {}),
                }
            else:
                document = {
                    **common,
                    "metaservers": meta_addresses,
                    "heartbeat_interval": heartbeat_interval,
                    "reserved_space": reserved_space,
                    **(dataserver_options or {}),
                }
            _write_json(node.config_path, document)

        client_dir = directory / "client"
        client_dir.mkdir(mode=0o700)
        admin = ca.issue(Role.ADMIN, "admin", out_dir=client_dir)
        client_config = client_dir / "client_config.json"
        _write_json(
            client_config,
            {
                "metaservers": meta_addresses,
                "tls": {
                    "certificate": admin.certificate_path.name,
                    "key": admin.key_path.name,
                    "ca": str(ca.certificate_path),
                },
            },
        )
        cluster = cls(directory=directory, nodes=nodes, client_config=client_config)
        _write_json(directory / DESCRIPTION, cluster._describe())
        return cluster

    def _describe(self) -> dict[str, Any]:
        return {
            "client_config": str(self.client_config),
            "nodes": [
                {
                    "kind": node.kind,
                    "name": node.name,
                    "directory": str(node.directory),
                    "listen_port": node.listen_port,
                    "http_port": node.http_port,
                }
                for node in self.nodes
            ],
        }

    @classmethod
    def open(cls, directory: Path | str) -> LocalCluster:
        directory = Path(directory).absolute()
        try:
            document = json.loads((directory / DESCRIPTION).read_text())
            nodes = [
                Node(
                    kind=entry["kind"],
                    name=entry["name"],
                    directory=Path(entry["directory"]),
                    listen_port=int(entry["listen_port"]),
                    http_port=int(entry["http_port"]),
                )
                for entry in document["nodes"]
            ]
            return cls(
                directory=directory, nodes=nodes, client_config=Path(document["client_config"])
            )
        except FileNotFoundError:
            raise LocalClusterError(f"no local cluster in {directory}") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise LocalClusterError(f"{directory / DESCRIPTION} is damaged: {error}") from None

    # -- nodes -----------------------------------------------------------

    @property
    def metaservers(self) -> list[Node]:
        return [node for node in self.nodes if node.kind == "meta"]

    @property
    def dataservers(self) -> list[Node]:
        return [node for node in self.nodes if node.kind == "data"]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LocalClusterError(f"no node named {name!r} in {self.directory}")

    def running(self) -> dict[str, int]:
        """Name to pid of every node whose process runs."""
        return {node.name: pid for node in self.nodes if (pid := node.pid()) is not None}

    # -- processes -------------------------------------------------------

    def start_node(self, node: Node, extra_args: Sequence[str] = ()) -> None:
        if self._running_pid(node) is not None:
            return
        node.pidfile.unlink(missing_ok=True)
        command = twistd_argv(
            "--nodaemon",
            "--pidfile",
            str(node.pidfile),
            "--logfile",
            str(node.logfile),
            node.plugin,
            "--config",
            str(node.config_path),
            *extra_args,
        )
        with open(node.stderr_path, "wb") as stderr:
            self._children[node.name] = subprocess.Popen(
                command,
                cwd=node.directory,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
            )

    # -- changing the metaserver group --------------------------------------

    def raft_address(self, node: Node) -> str:
        return str(json.loads(node.config_path.read_text())["raft_listen"])

    def add_metaserver(self) -> Node:
        """Configure (not start) a new metaserver that joins the group: the current
        members are its raft_partners, and the dataservers and the client list it
        from their next start. Make it a member (``dfs admin meta add``) first."""
        members = [self.raft_address(member) for member in self.metaservers]
        node = self._another(
            "meta",
            lambda ports: {"raft_listen": f"{HOST}:{ports[0]}", "raft_partners": members},
            extra_ports=1,
        )
        self.nodes.insert(len(self.metaservers), node)
        self._metaservers_changed()
        return node

    def add_dataserver(self, **options: Any) -> Node:
        """Configure (not start) one more dataserver like the first, with a
        certificate of its own; ``options`` override its dataserver_config.json keys."""
        node = self._another("data", lambda ports: options)
        self.nodes.append(node)
        _write_json(self.directory / DESCRIPTION, self._describe())
        return node

    def _another(
        self,
        kind: str,
        settings: Callable[[list[int]], dict[str, Any]],
        extra_ports: int = 0,
    ) -> Node:
        """A new node of ``kind`` configured like the first of its kind, on free
        ports, with a certificate of its own and ``settings(ports)`` on top, given
        ``extra_ports`` more free ports (drawn with the node's own, so all differ)."""
        prefix, role, peers = (
            ("meta", Role.METASERVER, self.metaservers)
            if kind == "meta"
            else ("ds", Role.DATASERVER, self.dataservers)
        )
        template = json.loads(peers[0].config_path.read_text())
        number = 1 + max(int(node.name.removeprefix(prefix)) for node in peers)
        name = f"{prefix}{number}"
        listen, http, *extra = free_ports(2 + extra_ports)
        node = Node(kind, name, self.directory / name, listen, http)
        node.directory.mkdir(mode=0o700)
        ca = CertificateAuthority.load(self.directory / "ca")
        issued = ca.issue(role, name, [HOST, "localhost"], out_dir=node.directory)
        document = {
            **template,
            "name": name,
            "listen": node.address,
            "http_listen": f"{HOST}:{http}",
            "tls": {
                **template["tls"],
                "certificate": issued.certificate_path.name,
                "key": issued.key_path.name,
            },
            **settings(extra),
        }
        if kind == "meta":
            _write_metaserver_security(self.security_config, node)
            document["security_config"] = str(node.security_config_path)
        _write_json(node.config_path, document)
        return node

    # -- revocation --------------------------------------------------------

    @property
    def security_config(self) -> Path:
        """The shared security_config.json: the dataservers read it, and each
        metaserver a copy of it with its own audit log."""
        return self.directory / "shared" / "security_config.json"

    def update_security(self, **settings: Any) -> None:
        """Set ``settings`` (security_config.json keys; relative paths are taken
        relative to shared/) in the shared security config and every metaserver's."""
        document = json.loads(self.security_config.read_text())
        document.update(settings)
        _write_json(self.security_config, document)
        for node in self.metaservers:
            _write_metaserver_security(self.security_config, node)

    def _give_metaservers_their_own_security(self) -> None:
        """A cluster made before metaservers had security configs of their own: give
        them one now, or they would share one audit log (or all look for the default
        one, in /var/log/dfs)."""
        for node in self.metaservers:
            document = json.loads(node.config_path.read_text())
            if document.get("security_config") == str(self.security_config):
                _write_metaserver_security(self.security_config, node)
                document["security_config"] = str(node.security_config_path)
                _write_json(node.config_path, document)

    def revoke(self, name: str, role: Role | str | None = None) -> tuple[Revocation, bool]:
        """Revoke the certificates the cluster's CA issued for ``name`` (CAError if none).

        Returns what was revoked and whether security_config.json had to be pointed
        at the CRL (a cluster created before it always named one): running servers
        read that key again on SIGHUP.
        """
        ca = CertificateAuthority.load(self.directory / "ca")
        revocation = ca.revoke(name, role)
        document = json.loads(self.security_config.read_text())
        pointed = document.get("crl") != str(revocation.crl_path)
        if pointed:
            self.update_security(crl=str(revocation.crl_path))
        return revocation, pointed

    # -- users ---------------------------------------------------------------

    def add_user(self, name: str, *, admin: bool = False) -> Path:
        """Issue ``name`` a client (or admin) certificate from the cluster's CA and
        write a client config for it; returns the config's path. CAError if the CA
        already issued that name a certificate of that role."""
        ca = CertificateAuthority.load(self.directory / "ca")
        users = self.directory / "users"
        users.mkdir(mode=0o700, exist_ok=True)
        folder = users / name
        folder.mkdir(mode=0o700, exist_ok=True)
        issued = ca.issue(Role.ADMIN if admin else Role.CLIENT, name, out_dir=folder)
        config = folder / "client_config.json"
        document = json.loads(self.client_config.read_text())
        document["tls"] = {
            "certificate": issued.certificate_path.name,
            "key": issued.key_path.name,
            "ca": str(ca.certificate_path),
        }
        _write_json(config, document)
        return config

    def forget_metaserver(self, node: Node) -> None:
        """Stop a metaserver removed from the group and drop it from this cluster."""
        self.stop_node(node)
        self.nodes.remove(node)
        self._metaservers_changed()

    def _metaservers_changed(self) -> None:
        addresses = [node.address for node in self.metaservers]
        for path in [self.client_config, *(node.config_path for node in self.dataservers)]:
            document = json.loads(path.read_text())
            document["metaservers"] = addresses
            _write_json(path, document)
        _write_json(self.directory / DESCRIPTION, self._describe())

    def start(self) -> list[Node]:
        """Start every node not running yet (metaservers first); return those started."""
        self._give_metaservers_their_own_security()
        started = []
        for node in self.metaservers + self.dataservers:
            if node.pid() is None:
                self.start_node(node)
                started.append(node)
        return started

    def signal_node(self, node: Node, signum: int) -> None:
        pid = node.pid()
        if pid is None:
            raise LocalClusterError(f"{node.name} is not running")
        os.kill(pid, signum)

    def _running_pid(self, node: Node) -> int | None:
        """The node's pid: from its pidfile, or, for a process this object started
        whose twistd has not written its pidfile yet, from the child itself."""
        pid = node.pid()
        if pid is not None:
            return pid
        child = self._children.get(node.name)
        if child is not None and child.poll() is None:
            return child.pid
        return None

    def stop_node(self, node: Node, timeout: float = 15.0) -> None:
        pid = self._running_pid(node)
        if pid is None:
            return
        os.kill(pid, signal.SIGCONT)  # a paused node cannot act on SIGTERM
        os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(node, pid, timeout):
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(node, pid, 5.0)
        node.pidfile.unlink(missing_ok=True)

    def kill_node(self, node: Node) -> None:
        """kill -9, as a crash would; the pidfile stays behind as after a crash."""
        pid = node.pid()
        if pid is None:
            raise LocalClusterError(f"{node.name} is not running")
        os.kill(pid, signal.SIGKILL)
        self._wait_gone(node, pid, 5.0)

    def _wait_gone(self, node: Node, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            # (_running_pid reaps a child of ours, so that it is gone, not a zombie)
            if self._running_pid(node) != pid:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> list[str]:
        """Stop every running node (dataservers first); return the names stopped."""
        stopped = []
        for node in self.dataservers + self.metaservers:
            if self._running_pid(node) is not None:
                self.stop_node(node, timeout)
                stopped.append(node.name)
        return stopped

    # -- readiness -------------------------------------------------------

    def status(self, node: Node, timeout: float = 2.0) -> dict[str, Any] | None:
        """The node's /api/v1/status document, or None if it does not answer."""
        try:
            with urllib.request.urlopen(f"{node.http_url}/api/v1/status", timeout=timeout) as r:
                return json.loads(r.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every node runs, every dataserver says it is registered with
        every metaserver, and every metaserver sees every dataserver alive.

        Asking the dataservers too matters after a restart: a metaserver still
        counts a stopped dataserver alive until its heartbeats are overdue."""
        expected = {node.name for node in self.dataservers}
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                child = self._children.get(node.name)
                if child is not None and child.poll() is not None:
                    raise LocalClusterError(f"{node.name} exited: {self.last_error(node)}")
            if self._ready(expected):
                return
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"cluster in {self.directory} not ready after {timeout:.0f}s "
                    f"(running: {', '.join(sorted(self.running())) or 'none'})"
                )
            time.sleep(0.1)

    def _ready(self, expected: set[str]) -> bool:
        if len(self.running()) != len(self.nodes):
            return False
        for data in self.dataservers:
            status = self.status(data)
            if status is None or not all(link["registered"] for link in status["metaservers"]):
                return False
        leaders = 0
        for meta in self.metaservers:
            status = self.status(meta)
            if status is None or not status.get("namespace_ready"):
                return False
            alive = {d["name"] for d in status["dataservers"] if d["state"] == "alive"}
            if not expected <= alive:
                return False
            leaders += bool((status.get("raft") or {}).get("serving"))
        # Ready means a leader serves: the group has elected one and settled in.
        return leaders == 1

    def last_error(self, node: Node) -> str:
        """The last line a node printed to stderr, or a pointer to its log."""
        try:
            lines = [line for line in node.stderr_path.read_text().splitlines() if line.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else f"see {node.logfile}"

    def iter_logs(self) -> Iterator[tuple[Node, str]]:
        for node in self.nodes:
            try:
                yield node, node.logfile.read_text()
            except OSError:
                yield node, ""
