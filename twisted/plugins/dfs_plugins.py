"""twistd dropin naming the DFS daemons: dfs-meta and dfs-data.

Kept thin: the options and makeService live in dfs.metaserver.tap and
dfs.dataserver.tap and are imported only when twistd runs that plugin.
"""

from twisted.application.service import ServiceMaker

dfs_meta = ServiceMaker(
    "DFS metaserver",
    "dfs.metaserver.tap",
    "DFS metaserver: namespace, dataserver registry, AMP over mutual TLS",
    "dfs-meta",
)

dfs_data = ServiceMaker(
    "DFS dataserver",
    "dfs.dataserver.tap",
    "DFS dataserver: chunk storage, AMP over mutual TLS",
    "dfs-data",
)
