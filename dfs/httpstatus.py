"""The HTTP side of every DFS daemon: /health, /api/v1/status and /metrics.

Served by twisted.web on the daemon's ``http_listen`` address (loopback by
default). The status document is built by a callable the daemon supplies, so this
module knows nothing of metaservers or dataservers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.web import resource, server
from twisted.web.iweb import IRequest


class JSONResource(resource.Resource):
    isLeaf = True

    def __init__(self, document: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._document = document

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._document(), indent=2, sort_keys=True).encode() + b"\n"


def status_site(status: Callable[[], dict[str, Any]], registry: CollectorRegistry) -> server.Site:
    """A site answering /health, /api/v1/status (``status()`` as JSON) and /metrics."""
    root = resource.Resource()
    root.putChild(b"health", JSONResource(lambda: {"status": "ok"}))
    api = resource.Resource()
    v1 = resource.Resource()
    root.putChild(b"api", api)
    api.putChild(b"v1", v1)
    v1.putChild(b"status", JSONResource(status))
    root.putChild(b"metrics", MetricsResource(registry=registry))
    site = server.Site(root)
    site.displayTracebacks = False
    return site
