"""The container image and docker-compose.yml of packaging/docker.

The first tests run the image's entry point here, without Docker: the CA job's output
renders into configs the daemons accept. The last one does it for real: it starts a
Docker daemon of its own (its own data root and socket, no default bridge, no
iptables changes), makes a Debian 12 minbase root with debootstrap, imports it as the
base image, builds the DFS image with packaging/docker/build.sh, starts the
docker-compose.yml cluster (the CA job, 3 metaservers, 3 dataservers), stores and
reads back a file with `dfs` in a container, and tears everything down, the daemon
included. A missing tool fails the test: .ci/run installs docker.io, docker-compose
and debootstrap.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dfs.config.loader import load_config
from dfs.config.model import ClientConfig, DataserverConfig, MetaserverConfig, SecurityConfig

from .conftest import ROOT, require
from .test_kubernetes import entrypoint

DOCKER_DIR = ROOT / "packaging" / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
# Debian's own client: another docker on PATH may be of another version.
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
PROJECT = "dfstest"
NODES = ["meta1", "meta2", "meta3", "ds1", "ds2", "ds3"]


def test_ca_job_makes_a_cluster_every_node_can_render(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = entrypoint()
    out = tmp_path / "etc"
    monkeypatch.setenv("DFS_CLUSTER_DIR", str(out))
    monkeypatch.setenv("DFS_CA_DIR", str(tmp_path / "ca"))
    monkeypatch.setenv("DFS_METASERVERS", "meta1,meta2")
    monkeypatch.setenv("DFS_DATASERVERS", "ds1")
    assert module.make_cluster() == 0
    assert not (out / "ca.key").exists()
    assert (tmp_path / "ca" / "ca.key").exists()
    before = (out / "token.key").read_text()
    assert module.make_cluster() == 0  # a second run leaves the cluster as it is
    assert (out / "token.key").read_text() == before

    meta_etc = tmp_path / "meta2"
    module.render(out, [out], "meta2", "meta2", meta_etc)
    meta = load_config(MetaserverConfig, meta_etc / "metaserver_config.json")
    assert [str(partner) for partner in meta.raft_partners] == ["meta1:7100"]
    assert meta.tls.certificate.read_text().startswith("-----BEGIN CERTIFICATE")
    security = load_config(SecurityConfig, meta_etc / "security_config.json")
    assert security.raft_password_file.stat().st_mode & 0o777 == 0o600
    # The root file system is read-only: the audit log goes to the state volume.
    assert security.audit_log == meta.data_dir / "audit.log"
    data_etc = tmp_path / "ds1"
    module.render(out, [out], "ds1", "ds1", data_etc)
    data = load_config(DataserverConfig, data_etc / "dataserver_config.json")
    assert [str(address) for address in data.metaservers] == ["meta1:7000", "meta2:7000"]
    assert not (data_etc / "tls" / "meta1.key").exists()
    admin_etc = tmp_path / "admin"
    module.render(out, [out], "admin", "admin", admin_etc)
    client = load_config(ClientConfig, admin_etc / "client_config.json")
    assert client.tls.key.exists()


def test_entrypoint_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFS_TEMPLATES", str(tmp_path / "missing"))
    monkeypatch.setenv("DFS_RUNTIME", str(tmp_path / "run"))
    done = subprocess.run(
        [sys.executable, str(DOCKER_DIR / "dfs-entrypoint.py"), "meta"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78
    assert done.stderr == (
        f"dfs-entrypoint: no config templates: {tmp_path / 'missing'} is not a folder\n"
    )


def test_compose_file_is_valid() -> None:
    require("docker-compose")
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == sorted(["ca", *NODES, "shell"])


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check()`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


class Docker:
    """A Docker daemon of the test's own, and the commands that talk to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{root}/docker.sock", "DOCKER": DOCKER}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [
                DOCKERD,
                "--data-root",
                f"{self.root}/data",
                "--exec-root",
                f"{self.root}/exec",
                "--pidfile",
                f"{self.root}/dockerd.pid",
                "--host",
                f"unix://{self.root}/docker.sock",
                # Containers talk over their compose network only: no default bridge,
                # no NAT, and the host's iptables and forwarding stay as they are.
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        _wait("dockerd to answer", self._answers, 60)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"dockerd exited: {self.log()}")
        return self.run(DOCKER, "info", check=False).returncode == 0

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-3000:]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 300, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv,
            env=self.env,
            capture_output=True,
            text=stdin is None,
            input=stdin,
            timeout=timeout,
        )
        if isinstance(done.stdout, bytes):
            done = subprocess.CompletedProcess(
                done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
            )
        if check:
            assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done

    def compose(self, *argv: str, **options: object) -> subprocess.CompletedProcess[str]:
        return self.run("docker-compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *argv, **options)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        # Mounts a killed daemon may have left (overlays, its netns, its exec root).
        with open("/proc/mounts") as mounts:
            left = [line.split()[1] for line in mounts if str(self.root) in line.split()[1]]
        for mount in sorted(left, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)


@pytest.fixture
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    require(DOCKER, DOCKERD, "docker-compose", "debootstrap")
    root = tmp_path_factory.mktemp("docker")
    daemon = Docker(root)
    try:
        daemon.start()
        yield daemon
    finally:
        try:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.compose("down", "--volumes", "--timeout", "10", check=False, timeout=120)
        finally:
            daemon.stop()
            shutil.rmtree(root, ignore_errors=True)


def _healthy(docker: Docker) -> bool:
    ids = docker.compose("ps", "-q", *NODES).stdout.split()
    if len(ids) != len(NODES):
        return False
    states = json.loads(docker.run(DOCKER, "inspect", *ids).stdout)
    for state in states:
        if not state["State"]["Running"]:
            pytest.fail(
                f"{state['Name']} stopped: {docker.run(DOCKER, 'logs', state['Id']).stderr[-2000:]}"
            )
    return all(state["State"]["Health"]["Status"] == "healthy" for state in states)


def test_image_runs_a_cluster_from_the_compose_file(docker: Docker, debian_root: Path) -> None:
    started = time.monotonic()
    # The shared debootstrap root has python3-venv: the image build needs no network.
    tar = subprocess.Popen(["tar", "-C", str(debian_root), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    imported = subprocess.run(
        [DOCKER, "import", "-", "dfs-base:test"],
        stdin=tar.stdout,
        env=docker.env,
        capture_output=True,
        timeout=300,
    )
    tar.stdout.close()
    assert tar.wait() == 0 and imported.returncode == 0, imported.stderr
    based = time.monotonic()

    docker.env.update(DFS_BASE_IMAGE="dfs-base:test", DFS_IMAGE="dfs:test")
    docker.run("bash", str(DOCKER_DIR / "build.sh"), str(docker.root / "out"), timeout=600)
    built = time.monotonic()

    docker.compose("up", "-d", timeout=300)
    _wait("every node to be healthy", lambda: _healthy(docker), 180)
    status = docker.compose("run", "--rm", "-T", "shell", "admin", "meta", "status")
    roles = [line.split()[3] for line in status.stdout.splitlines() if line.startswith("meta")]
    assert sorted(roles) == ["follower", "follower", "leader"], status.stdout
    roundtrip = docker.compose(
        "run",
        "--rm",
        "-T",
        "--entrypoint",
        "sh",
        "shell",
        "-c",
        "head -c 3000000 /dev/urandom > /tmp/in"
        " && dfs-entrypoint dfs put /tmp/in /roundtrip"
        " && dfs-entrypoint dfs get /roundtrip /tmp/out"
        " && cmp /tmp/in /tmp/out && dfs-entrypoint dfs ls -l /roundtrip",
    )
    assert " 3000000 " in roundtrip.stdout, roundtrip.stdout
    ran = time.monotonic()
    print(
        f"base image {based - started:.0f}s, image build {built - based:.0f}s, "
        f"cluster and round trip {ran - built:.0f}s"
    )
