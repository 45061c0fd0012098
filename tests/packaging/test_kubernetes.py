"""The Kubernetes manifests of packaging/kubernetes.

Every manifest passes `kubernetes-validate --strict` for Kubernetes 1.30 (the schemas
ship with the package, so this needs no cluster and no network), and the parts that
make a DFS cluster work on Kubernetes are checked one by one: stable names for the
Raft partners, certificates from Secrets, configs from the ConfigMap that render into
files the daemons accept, probes, disruption budgets and volume claims.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from dfs.config.loader import load_config
from dfs.config.model import ClientConfig, DataserverConfig, MetaserverConfig, SecurityConfig

from .conftest import ROOT

MANIFESTS = ROOT / "packaging" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def _manifests() -> list[Path]:
    return sorted(path for path in MANIFESTS.glob("*.yaml") if path.name != "kustomization.yaml")


def _load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((MANIFESTS / name).read_text())
    return document


def entrypoint() -> ModuleType:
    """packaging/docker/dfs-entrypoint.py as a module (it is a script in the image)."""
    path = ROOT / "packaging" / "docker" / "dfs-entrypoint.py"
    spec = importlib.util.spec_from_file_location("dfs_entrypoint", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_manifest_is_valid_for_kubernetes_1_30() -> None:
    validate = Path(sys.executable).parent / "kubernetes-validate"
    assert validate.exists(), "kubernetes-validate is missing: pip install -e '.[test]'"
    files = [str(path) for path in _manifests()]
    done = subprocess.run(
        [str(validate), "--strict", "--kubernetes-version", KUBERNETES_VERSION, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # One line per resource, each "passed": a file the tool skipped would not say so.
    assert done.stdout.count("passed") == len(files), done.stdout


def test_kustomization_names_every_manifest() -> None:
    kustomization = _load("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(path.name for path in _manifests())


def test_metaservers_find_their_raft_partners_by_stable_names() -> None:
    service = _load("meta-service.yaml")
    statefulset = _load("meta-statefulset.yaml")
    config = json.loads(_load("configmap.yaml")["data"]["metaserver_config.json"])
    assert service["spec"]["clusterIP"] == "None"
    # A metaserver must resolve its own name to bind Raft before it can get ready.
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"] == "dfs-meta"
    replicas = statefulset["spec"]["replicas"]
    assert replicas == 3
    assert config["raft_partners"] == [
        f"dfs-meta-{index}.dfs-meta.dfs.svc:7100" for index in range(replicas)
    ]
    env = {
        item["name"]: item
        for item in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["DFS_NODE_HOST"]["value"] == "$(POD_NAME).dfs-meta.$(POD_NAMESPACE).svc"
    assert env["DFS_NODE_NAME"]["value"] == "$(POD_NAME)"


@pytest.mark.parametrize("name", ["meta", "data"])
def test_pods_are_hardened_probed_and_keep_their_state(name: str) -> None:
    statefulset = _load(f"{name}-statefulset.yaml")
    pdb = _load(f"{name}-pdb.yaml")
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    http = {port["name"]: port["containerPort"] for port in container["ports"]}["http"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    file_name = "metaserver_config.json" if name == "meta" else "dataserver_config.json"
    config = json.loads(_load("configmap.yaml")["data"][file_name])
    # The kubelet probes the pod's address, so HTTP must not be bound to loopback.
    assert config["http_listen"] == f"0.0.0.0:{http}"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == config["data_dir"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == statefulset["spec"]["selector"]["matchLabels"]
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_certificates_come_from_secrets_and_never_the_ca_key() -> None:
    for name, secret in (("meta", "dfs-meta-tls"), ("data", "dfs-data-tls")):
        pod = _load(f"{name}-statefulset.yaml")["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
        sources = [source["secret"]["name"] for source in volume["projected"]["sources"]]
        assert sources == [secret, "dfs-ca", "dfs-shared"]
    text = "\n".join(path.read_text() for path in MANIFESTS.glob("*.yaml"))
    assert "ca.key" not in text
    assert "kind: Secret\n" not in text


def test_configmap_renders_into_configs_the_daemons_accept(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    for file_name, text in _load("configmap.yaml")["data"].items():
        (templates / file_name).write_text(text)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for file_name in ("ca.crt", "dfs-meta-1.crt", "dfs-meta-1.key", "dfs-meta-2.key", "token.key"):
        (secrets / file_name).write_text("x\n")
        (secrets / file_name).chmod(0o440)
    etc = tmp_path / "etc"
    host = "dfs-meta-1.dfs-meta.dfs.svc"
    entrypoint().render(templates, [secrets], "dfs-meta-1", host, etc)

    meta = load_config(MetaserverConfig, etc / "metaserver_config.json")
    assert meta.name == "dfs-meta-1"
    assert str(meta.raft_listen) == f"{host}:7100"
    assert str(meta.advertise) == f"{host}:7000"
    assert [str(p) for p in meta.raft_partners] == [
        "dfs-meta-0.dfs-meta.dfs.svc:7100",
        "dfs-meta-2.dfs-meta.dfs.svc:7100",
    ]
    assert meta.tls.key == etc / "tls" / "dfs-meta-1.key"
    load_config(DataserverConfig, etc / "dataserver_config.json")
    load_config(ClientConfig, etc / "client_config.json")
    security = load_config(SecurityConfig, etc / "security_config.json")
    assert security.token_key_file == etc / "tls" / "token.key"
    # The root file system is read-only: the audit log goes to the state volume.
    assert security.audit_log == meta.data_dir / "audit.log"
    # Only this pod's key, copied with the mode the daemons insist on.
    copied = {path.name: path.stat().st_mode & 0o777 for path in (etc / "tls").iterdir()}
    assert copied == {
        "ca.crt": 0o600,
        "dfs-meta-1.crt": 0o600,
        "dfs-meta-1.key": 0o600,
        "token.key": 0o600,
    }
