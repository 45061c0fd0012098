#!/opt/dfs/bin/python3
"""Entry point of the DFS container image.

    dfs-entrypoint meta [DFS-META OPTIONS]   run a metaserver in the foreground
    dfs-entrypoint data [DFS-DATA OPTIONS]   run a dataserver in the foreground
    dfs-entrypoint ca                        make a cluster's CA, certificates and configs
    dfs-entrypoint dfs [ARGS]                the dfs shell, with this node's client config
    dfs-entrypoint health                    exit 0 if this container's daemon answers /health
    dfs-entrypoint COMMAND [ARGS]            any other command, as it is

One image runs every node of a cluster, so a node's files are made at start from
templates shared by all of them. ``meta``, ``data`` and ``dfs`` first copy every
``*.json`` of $DFS_TEMPLATES (default /etc/dfs) into /run/dfs/etc, replacing
``@NAME@`` by the node's name ($DFS_NODE_NAME, default the host name) and ``@HOST@`` by
the name others reach it by ($DFS_NODE_HOST, default the node's name), and dropping
the node's own ``raft_listen`` from ``raft_partners`` (so one list of every metaserver
serves the whole group). They then copy this node's secrets (``ca.crt``, ``crl.pem``,
``token.key``, ``raft.password``, ``NAME.crt``, ``NAME.key``) from the folders of
$DFS_SECRETS (colon-separated, default $DFS_TEMPLATES) into /run/dfs/etc/tls with mode
0600: secrets mounted by Kubernetes are owned by root and readable by a group, which
the daemons refuse for keys. Nothing else of the image is written, so the root file
system can be read-only with /run/dfs on a tmpfs.

``ca`` makes, in $DFS_CLUSTER_DIR (default /etc/dfs), everything the other containers
need: the CA certificate and revocation list, a certificate and key for each name of
$DFS_METASERVERS, $DFS_DATASERVERS and $DFS_ADMINS (comma-separated), the token key,
the Raft password and the five config templates. The CA itself (with its key) stays in
$DFS_CA_DIR (default /var/lib/dfs/ca). A folder that already holds a cluster is left as
it is, so the job can run at every start of a compose project.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

PREFIX = Path(sys.prefix)
RUNTIME = Path(os.environ.get("DFS_RUNTIME", "/run/dfs"))
ETC = RUNTIME / "etc"
HEALTH_URL_FILE = RUNTIME / "health-url"

# The daemon's command and the config file each role reads.
ROLES = {
    "meta": ("dfs-meta", "metaserver_config.json"),
    "data": ("dfs-data", "dataserver_config.json"),
}
SHARED_SECRETS = ("ca.crt", "crl.pem", "token.key", "raft.password")


class EntrypointError(Exception):
    """A problem with the container's setup, told in one line."""


def _names(variable: str, default: str) -> list[str]:
    return [name.strip() for name in os.environ.get(variable, default).split(",") if name.strip()]


def _substitute(value: Any, name: str, host: str) -> Any:
    if isinstance(value, str):
        return value.replace("@NAME@", name).replace("@HOST@", host)
    if isinstance(value, list):
        return [_substitute(item, name, host) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, name, host) for key, item in value.items()}
    return value


def render(templates: Path, secret_dirs: list[Path], name: str, host: str, etc: Path = ETC) -> None:
    """Write this node's configs and secrets under ``etc`` (/run/dfs/etc)."""
    if not templates.is_dir():
        raise EntrypointError(f"no config templates: {templates} is not a folder")
    (etc / "tls").mkdir(parents=True, exist_ok=True, mode=0o700)
    for template in sorted(templates.glob("*.json")):
        try:
            document = json.loads(template.read_text())
        except (OSError, ValueError) as error:
            raise EntrypointError(f"cannot read the template {template}: {error}") from None
        document = _substitute(document, name, host)
        if isinstance(document, dict) and "raft_partners" in document:
            own = document.get("raft_listen")
            document["raft_partners"] = [p for p in document["raft_partners"] if p != own]
        (etc / template.name).write_text(json.dumps(document, indent=2) + "\n")
    wanted = (*SHARED_SECRETS, f"{name}.crt", f"{name}.key")
    for folder in secret_dirs:
        for file_name in wanted:
            source = folder / file_name
            if source.is_file():
                target = etc / "tls" / file_name
                # Copy rather than link: the daemons want their keys mode 0600 and
                # owned by the user they run as.
                target.unlink(missing_ok=True)
                shutil.copyfile(source, target)
                target.chmod(0o600)


def _node() -> tuple[str, str]:
    name = os.environ.get("DFS_NODE_NAME") or socket.gethostname()
    return name, os.environ.get("DFS_NODE_HOST") or name


def prepare() -> None:
    """Render this node's files from $DFS_TEMPLATES and $DFS_SECRETS."""
    templates = Path(os.environ.get("DFS_TEMPLATES", "/etc/dfs"))
    secret_dirs = [
        Path(folder)
        for folder in os.environ.get("DFS_SECRETS", str(templates)).split(":")
        if folder
    ]
    name, host = _node()
    render(templates, secret_dirs, name, host)


def run_daemon(role: str, arguments: list[str]) -> None:
    """Render the node's files, then become ``twistd -n dfs-meta|dfs-data``."""
    plugin, config_name = ROLES[role]
    prepare()
    config = ETC / config_name
    if not config.is_file():
        raise EntrypointError(f"no {config_name} among the templates in $DFS_TEMPLATES")
    http = json.loads(config.read_text()).get("http_listen")
    if http:
        host, _, port = str(http).rpartition(":")
        if host in ("0.0.0.0", "[::]", ""):
            host = "127.0.0.1"
        HEALTH_URL_FILE.write_text(f"http://{host}:{port}/health\n")
    twistd = str(PREFIX / "bin" / "twistd")
    # No pid file: the root file system may be read-only and the container is the unit.
    argv = [twistd, "-n", "--pidfile=", plugin, "--config", str(config), *arguments]
    os.execv(twistd, argv)


def run_shell(arguments: list[str]) -> None:
    """The dfs shell, with the node's client config when the templates have one."""
    if Path(os.environ.get("DFS_TEMPLATES", "/etc/dfs")).is_dir():
        prepare()
        if (ETC / "client_config.json").is_file():
            os.environ.setdefault("DFS_CONFIG", str(ETC / "client_config.json"))
    dfs = str(PREFIX / "bin" / "dfs")
    os.execv(dfs, [dfs, *arguments])


def health() -> int:
    """0 if the daemon of this container answers /health with status ok, else 1."""
    try:
        url = HEALTH_URL_FILE.read_text().strip()
    except FileNotFoundError:
        print("no daemon runs in this container (or its HTTP port is off)")
        return 0
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            status = json.load(answer).get("status")
    except (OSError, ValueError, urllib.error.URLError) as error:
        print(f"{url}: {error}")
        return 1
    print(f"{url}: {status}")
    return 0 if status == "ok" else 1


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def _write_secret(path: Path) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")


def make_cluster() -> int:
    """Make the CA, every certificate, the shared secrets and the config templates."""
    out = Path(os.environ.get("DFS_CLUSTER_DIR", "/etc/dfs"))
    ca = Path(os.environ.get("DFS_CA_DIR", "/var/lib/dfs/ca"))
    metaservers = _names("DFS_METASERVERS", "meta1,meta2,meta3")
    dataservers = _names("DFS_DATASERVERS", "ds1,ds2,ds3")
    admins = _names("DFS_ADMINS", "admin")
    meta_domain = os.environ.get("DFS_META_DOMAIN", "")
    data_domain = os.environ.get("DFS_DATA_DOMAIN", "")
    if not metaservers:
        raise EntrypointError("DFS_METASERVERS names no metaserver")
    if (out / "metaserver_config.json").exists():
        print(f"{out} already holds a cluster: left as it is")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    ca.mkdir(parents=True, exist_ok=True, mode=0o700)
    dfs = str(PREFIX / "bin" / "dfs")

    def call(*arguments: str) -> None:
        done = subprocess.run([dfs, "ca", *arguments], stdout=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise EntrypointError(f"dfs ca {arguments[0]} failed (status {done.returncode})")

    if not (ca / "ca.key").exists():
        call("init", "--dir", str(ca), "--name", os.environ.get("DFS_CA_NAME", "DFS cluster CA"))
    nodes = [
        *(("metaserver", name, name + meta_domain) for name in metaservers),
        *(("dataserver", name, name + data_domain) for name in dataservers),
    ]
    for role, name, host in nodes:
        hosts = sorted({name, host})
        if host != name:
            hosts.append(host + ".cluster.local")
        host_args = [arg for h in hosts for arg in ("--host", h)]
        call("issue", "--dir", str(ca), "--role", role, "--name", name, "--out", str(out),
             "--force", *host_args)  # fmt: skip
    for name in admins:
        call("issue", "--dir", str(ca), "--role", "admin", "--name", name, "--out", str(out),
             "--force")  # fmt: skip
    shutil.copyfile(ca / "ca.crt", out / "ca.crt")
    shutil.copyfile(ca / "crl.pem", out / "crl.pem")
    for secret in ("token.key", "raft.password"):
        if not (out / secret).exists():
            _write_secret(out / secret)
    tls = {"certificate": "tls/@NAME@.crt", "key": "tls/@NAME@.key", "ca": "tls/ca.crt"}
    meta_addresses = [f"{name}{meta_domain}:7000" for name in metaservers]
    _write_json(
        out / "metaserver_config.json",
        {
            "name": "@NAME@",
            "listen": "0.0.0.0:7000",
            "advertise": "@HOST@:7000",
            "raft_listen": "@HOST@:7100",
            "raft_partners": [f"{name}{meta_domain}:7100" for name in metaservers],
            "http_listen": "0.0.0.0:7080",
            "data_dir": "/var/lib/dfs/meta",
            "tls": tls,
        },
    )
    _write_json(
        out / "dataserver_config.json",
        {
            "name": "@NAME@",
            "listen": "0.0.0.0:7200",
            "advertise": "@HOST@:7200",
            "http_listen": "0.0.0.0:7280",
            "data_dir": "/var/lib/dfs/data",
            "metaservers": meta_addresses,
            "tls": tls,
        },
    )
    _write_json(out / "client_config.json", {"metaservers": meta_addresses, "tls": tls})
    _write_json(
        out / "security_config.json",
        {
            "token_key_file": "tls/token.key",
            "raft_password_file": "tls/raft.password",
            "crl": "tls/crl.pem",
            # The root file system is read-only: the audit log goes to the
            # metaserver's state volume, and lives as long as the namespace.
            "audit_log": "/var/lib/dfs/meta/audit.log",
        },
    )
    _write_json(
        out / "replication_config.json",
        {"default_replication": min(3, max(1, len(dataservers)))},
    )
    # Every other container reads these as the user dfs.
    for path in out.iterdir():
        path.chmod(0o600 if path.suffix in (".key", ".password") else 0o644)
    print(
        f"made a cluster in {out}: {len(metaservers)} metaservers, {len(dataservers)} "
        f"dataservers, admins {', '.join(admins) or 'none'}; the CA stays in {ca}"
    )
    return 0


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: dfs-entrypoint meta|data|ca|dfs|health [ARGS]", file=sys.stderr)
        return 64
    command, arguments = argv[0], argv[1:]
    try:
        if command in ROLES:
            run_daemon(command, arguments)
        elif command == "dfs":
            run_shell(arguments)
        elif command == "ca":
            return make_cluster()
        elif command == "health":
            return health()
        else:
            os.execvp(command, argv)
    except EntrypointError as error:
        print(f"dfs-entrypoint: {error}", file=sys.stderr)
        return 78
    except OSError as error:
        print(f"dfs-entrypoint: {command}: {error}", file=sys.stderr)
        return 71
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
