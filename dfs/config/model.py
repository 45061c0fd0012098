"""The five configuration files of DFS: every key, its default and its rule, in one place.

Defaults are written as they appear in the JSON files (etc/ ships them all), and
docs/configuration.md explains each key to operators: keep the three in step. Reading,
checking and writing is done by :mod:`dfs.config.loader`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import attrs

from dfs.config.loader import (
    ConfigError,
    ConfigFile,
    FilePath,
    Flag,
    InvalidValueError,
    ListOf,
    Nullable,
    Number,
    Parsed,
    Section,
    config_class,
    load_config,
    setting,
)
from dfs.security.identity import validate_name

_PORT = re.compile(r"[0-9]{1,5}")
# Host names and IPv4 addresses; whether a name resolves is found out when connecting.
_HOST = re.compile(r"[A-Za-z0-9_.-]+")
_UMASK = re.compile(r"[0-7]{3,4}")


@attrs.frozen
class Address:
    """A TCP address: a host name or IP address and a port (0 means any free port)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """Read "host:port" or "[ipv6]:port"; raise ValueError otherwise."""
        host, colon, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            valid_host = _is_ipv6(host)
        else:
            valid_host = _HOST.fullmatch(host) is not None
        if not (colon and valid_host and _PORT.fullmatch(port) and int(port) <= 65535):
            raise ValueError(f"expected host:port, got {text!r}")
        return cls(host, int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _name(text: str) -> str:
    # The same rule as the names in certificates: a node's name must match its own.
    return validate_name(text)


def _umask(text: str) -> int:
    if not _UMASK.fullmatch(text):
        raise ValueError(text)
    return int(text, 8)


NAME = Parsed("1 to 64 characters from A-Z a-z 0-9 . _ -, not starting with . or -", _name)
ADDRESS = Parsed("host:port", Address.parse)
UMASK = Parsed('3 or 4 octal digits in a string, such as "022"', _umask, lambda v: f"{v:03o}")
PATH = FilePath()
SECONDS = Number(gt=0)


@config_class
class TLSFiles:
    """The PEM files of a node or user: its certificate and key, the cluster CA, a CRL."""

    certificate: Path = setting(PATH)
    key: Path = setting(PATH)
    ca: Path = setting(PATH)
    crl: Path | None = setting(Nullable(PATH), default=None)

    def check(self, file: str, section: str = "tls") -> None:
        """Raise ConfigError naming ``file`` and the key if a file cannot be read."""
        for name in ("certificate", "key", "ca", "crl"):
            path: Path | None = getattr(self, name)
            if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
                raise ConfigError(
                    file, f"{section}.{name}", "an existing readable file", repr(str(path))
                )


def _tls(name: str) -> dict[str, Any]:
    return {
        "certificate": f"/etc/dfs/tls/{name}.crt",
        "key": f"/etc/dfs/tls/{name}.key",
        "ca": "/etc/dfs/tls/ca.crt",
        "crl": None,
    }


TLS = Section(TLSFiles)


@config_class
class MetaserverConfig(ConfigFile):
    """metaserver_config.json: one member of the metaserver (Raft) group."""

    name: str = setting(NAME, default="meta1")
    listen: Address = setting(ADDRESS, default="0.0.0.0:7000")
    advertise: Address | None = setting(Nullable(ADDRESS), default=None)
    raft_listen: Address = setting(ADDRESS, default="127.0.0.1:7100")
    raft_partners: tuple[Address, ...] = setting(ListOf(ADDRESS, unique=True), default=[])
    raft_snapshot_entries: int = setting(Number(integer=True, ge=10), default=5000)
    raft_snapshot_interval: float = setting(SECONDS, default=300.0)
    raft_fsync: bool = setting(Flag(), default=True)
    http_listen: Address | None = setting(Nullable(ADDRESS), default="127.0.0.1:7080")
    data_dir: Path = setting(PATH, default="/var/lib/dfs/meta")
    dataserver_dead_after: float = setting(SECONDS, default=30.0)
    lease_period: float = setting(SECONDS, default=60.0)
    tls: TLSFiles = setting(TLS, default=_tls("metaserver"))
    replication_config: Path = setting(PATH, default="replication_config.json")
    security_config: Path = setting(PATH, default="security_config.json")


@config_class
class DataserverConfig(ConfigFile):
    """dataserver_config.json: one dataserver, its disk and the metaservers it reports to."""

    name: str = setting(NAME, default="ds1")
    listen: Address = setting(ADDRESS, default="0.0.0.0:7200")
    advertise: Address | None = setting(Nullable(ADDRESS), default=None)
    http_listen: Address | None = setting(Nullable(ADDRESS), default="127.0.0.1:7280")
    data_dir: Path = setting(PATH, default="/var/lib/dfs/data")
    metaservers: tuple[Address, ...] = setting(
        ListOf(ADDRESS, non_empty=True, unique=True), default=["127.0.0.1:7000"]
    )
    heartbeat_interval: float = setting(Number(gt=0, le=3600), default=3.0)
    reserved_space: int = setting(Number(integer=True, ge=0), default=1073741824)
    capacity: int | None = setting(Nullable(Number(integer=True, gt=0)), default=None)
    direct_io: bool = setting(Flag(), default=True)
    drop_behind_reads: bool = setting(Flag(), default=True)
    scrub_bandwidth: int = setting(Number(integer=True, ge=0), default=4194304)
    scrub_interval: float = setting(Number(gt=0), default=604800.0)
    tls: TLSFiles = setting(TLS, default=_tls("dataserver"))
    security_config: Path = setting(PATH, default="security_config.json")

    def __attrs_post_init__(self) -> None:
        if self.capacity is not None and self.reserved_space >= self.capacity:
            expected = f"an integer < capacity ({self.capacity})"
            raise InvalidValueError(expected, self.reserved_space, "reserved_space")


@config_class
class ClientConfig(ConfigFile):
    """client_config.json: where the metaservers are and who the user is."""

    metaservers: tuple[Address, ...] = setting(
        ListOf(ADDRESS, non_empty=True, unique=True), default=["127.0.0.1:7000"]
    )
    tls: TLSFiles = setting(TLS, default=_tls("client"))
    umask: int = setting(UMASK, default="022")
    connect_timeout: float = setting(SECONDS, default=10.0)
    request_timeout: float = setting(SECONDS, default=60.0)


_REPLICAS = Number(integer=True, ge=1, le=32)


@config_class
class ReplicationConfig(ConfigFile):
    """replication_config.json: how many replicas, how big a chunk, how eager the repairs."""

    default_replication: int = setting(_REPLICAS, default=3)
    min_replication: int = setting(_REPLICAS, default=1)
    max_replication: int = setting(_REPLICAS, default=10)
    chunk_size: int = setting(
        Number(integer=True, ge=65536, le=1073741824, multiple_of=65536), default=67108864
    )
    rereplication_per_dataserver: int = setting(Number(integer=True, ge=1, le=64), default=2)
    balancer_threshold: float = setting(Number(gt=0, lt=100), default=10.0)
    safemode_threshold: float = setting(Number(ge=0, le=1), default=0.999)
    orphan_grace: float = setting(Number(ge=0), default=3600.0)
    safemode_min_dataservers: int = setting(Number(integer=True, ge=0), default=0)
    safemode_extension: float = setting(Number(ge=0, le=3600), default=0.0)
    replication_interval: float = setting(Number(gt=0, le=3600), default=1.0)
    balancer_bandwidth: int = setting(Number(integer=True, ge=0), default=104857600)
    balancer_continuous: bool = setting(Flag(), default=False)

    def __attrs_post_init__(self) -> None:
        if self.min_replication > self.default_replication:
            expected = f"an integer <= default_replication ({self.default_replication})"
            raise InvalidValueError(expected, self.min_replication, "min_replication")
        if self.default_replication > self.max_replication:
            expected = f"an integer <= max_replication ({self.max_replication})"
            raise InvalidValueError(expected, self.default_replication, "default_replication")


@config_class
class ConnectionLimits:
    """What one peer may hold of a server: past a limit it is refused or disconnected."""

    handshake_timeout: float = setting(Number(gt=0, le=3600), default=10.0)
    idle_timeout: float = setting(Number(gt=0), default=900.0)
    connections_per_identity: int = setting(Number(integer=True, ge=1), default=256)
    commands_in_flight: int = setting(Number(integer=True, ge=1), default=512)
    buffered_bytes: int = setting(Number(integer=True, ge=1048576), default=67108864)


@config_class
class SecurityConfig(ConfigFile):
    """security_config.json: secrets shared by the servers, tokens, revocation, audit,
    and the limits every server puts on its peers."""

    token_key_file: Path = setting(PATH, default="token.key")
    token_previous_key_file: Path | None = setting(Nullable(PATH), default=None)
    token_lifetime: float = setting(Number(ge=10, le=86400), default=300.0)
    raft_password_file: Path = setting(PATH, default="raft.password")
    superusergroup: str = setting(NAME, default="supergroup")
    crl: Path | None = setting(Nullable(PATH), default=None)
    crl_check_interval: float = setting(Number(gt=0, le=10), default=2.0)
    audit_log: Path | None = setting(Nullable(PATH), default="/var/log/dfs/audit.log")
    audit_log_max_bytes: int = setting(Number(integer=True, ge=4096), default=104857600)
    audit_log_backups: int = setting(Number(integer=True, ge=0, le=1000), default=10)
    limits: ConnectionLimits = setting(Section(ConnectionLimits), default={})


def load_metaserver_config(path: str | Path) -> MetaserverConfig:
    return load_config(MetaserverConfig, path)


def load_dataserver_config(path: str | Path) -> DataserverConfig:
    return load_config(DataserverConfig, path)


def load_client_config(path: str | Path) -> ClientConfig:
    return load_config(ClientConfig, path)


def load_replication_config(path: str | Path) -> ReplicationConfig:
    return load_config(ReplicationConfig, path)


def load_security_config(path: str | Path) -> SecurityConfig:
    return load_config(SecurityConfig, path)
