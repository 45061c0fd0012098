"""twistd glue for ``twistd dfs-data``: options in, services out."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from dfs.config import load_dataserver_config
from dfs.dataserver import service
from dfs.node import NodeOptions, apply_overrides, exit_on_config_error


class Options(NodeOptions):
    synopsis = "[options]"
    longdesc = "Run a DFS dataserver from its JSON configuration (see docs/configuration.md)."
    optParameters: list[list[Any]] = [
        *NodeOptions.optParameters,
        ["metaservers", None, None, "Comma-separated HOST:PORT list of metaservers."],
        ["heartbeat-interval", None, None, "Seconds between heartbeats to each metaserver."],
    ]
    overrides = (
        *NodeOptions.overrides,
        ("metaservers", "metaservers"),
        ("heartbeat-interval", "heartbeat_interval"),
    )

    def postOptions(self) -> None:
        if self["config"] is None:
            self["config"] = "/etc/dfs/dataserver_config.json"


def makeService(options: Options) -> MultiService:
    def build() -> MultiService:
        config = apply_overrides(load_dataserver_config(options["config"]), options)
        return service.makeService(config)

    return exit_on_config_error("dfs-data", build)
