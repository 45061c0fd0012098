"""Configuration of DFS: the five JSON files as checked attrs objects (see docs/configuration.md).

Load a file with ``load_<name>_config(path)``, apply command-line options with
:func:`override`, write one with :func:`write_config`. Every problem is a
:class:`ConfigError` whose ``str`` is one line naming the file or option and the key.
"""

from dfs.config.loader import ConfigError, override, write_config
from dfs.config.model import (
    Address,
    ClientConfig,
    DataserverConfig,
    MetaserverConfig,
    ReplicationConfig,
    SecurityConfig,
    TLSFiles,
    load_client_config,
    load_dataserver_config,
    load_metaserver_config,
    load_replication_config,
    load_security_config,
)

__all__ = [
    "Address",
    "ClientConfig",
    "ConfigError",
    "DataserverConfig",
    "MetaserverConfig",
    "ReplicationConfig",
    "SecurityConfig",
    "TLSFiles",
    "load_client_config",
    "load_dataserver_config",
    "load_metaserver_config",
    "load_replication_config",
    "load_security_config",
    "override",
    "write_config",
]
