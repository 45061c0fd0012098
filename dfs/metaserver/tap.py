"""twistd glue for ``twistd dfs-meta``: options in, services out."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from dfs.config import load_metaserver_config
from dfs.metaserver import service
from dfs.node import NodeOptions, apply_overrides, exit_on_config_error


class Options(NodeOptions):
    synopsis = "[options]"
    longdesc = "Run a DFS metaserver from its JSON configuration (see docs/configuration.md)."
    optParameters: list[list[Any]] = [
        *NodeOptions.optParameters,
        [
            "dataserver-dead-after",
            None,
            None,
            "Seconds without heartbeat before a dataserver is dead.",
        ],
    ]
    overrides = (*NodeOptions.overrides, ("dataserver-dead-after", "dataserver_dead_after"))

    def postOptions(self) -> None:
        if self["config"] is None:
            self["config"] = "/etc/dfs/metaserver_config.json"


def makeService(options: Options) -> MultiService:
    def build() -> MultiService:
        config = apply_overrides(load_metaserver_config(options["config"]), options)
        return service.makeService(config)

    return exit_on_config_error("dfs-meta", build)
