"""A dataserver with no disk behind it: the ceiling of one AMP/mTLS connection.

    .venv/bin/python tests/performance/amp_sink.py --config ds1/dataserver_config.json

Run by throughput.py for its baseline. It presents the certificate of the dataserver
whose config it is given, listens on a free port of 127.0.0.1 with the same TLS
options as a dataserver, prints ``listening on PORT`` once it does, and then answers
WriteChunkData by throwing the packet away and ReadChunk with one 64 KiB block kept in
memory (and its CRC32C). What is left to measure is TLS, AMP framing and dispatch,
the Bulk argument and the responder call, on both ends. Stops on SIGTERM or SIGINT.

With ``--plain`` it is a plain Twisted AMP protocol instead (``twisted.protocols.amp.AMP``,
no DFS session) answering :class:`PlainPing` over the same TLS: request_cost.py's floor
for one request.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any, ClassVar

import google_crc32c
from amp_packet import WriteChunkData
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from dfs.config import load_dataserver_config, load_metaserver_config
from dfs.node import load_credentials
from dfs.protocol.commands import ReadChunk
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity, Role

BLOCK = 65536
_DATA = random.Random(0).randbytes(BLOCK)
_CRC = google_crc32c.value(_DATA)


class PlainPing(amp.Command):
    """A request with no argument and a short answer, as DFS's Ping."""

    commandName = b"PlainPing"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = [(b"name", amp.Unicode())]


class PlainServer(amp.AMP):
    @PlainPing.responder
    def ping(self) -> dict[str, str]:
        return {"name": "sink"}


class SinkSession(PeerSession):
    """PeerSession (so role checks and box limits run as on a dataserver) whose chunk
    commands cost nothing beyond the wire."""

    def __init__(self, identity: Identity) -> None:
        super().__init__(identity)
        self.received = 0

    @WriteChunkData.responder
    def write_chunk_data(self, chunk_id: int, version: int, offset: int, data: bytes) -> dict:
        self.received += len(data)
        return {}

    @ReadChunk.responder
    def read_chunk(
        self, chunk_id: int, version: int, offset: int, length: int, token: str | None = None
    ) -> dict:
        # The sink checks no token: it measures the wire, not the dataserver.
        if length >= BLOCK:
            return {"data": _DATA, "checksums": [_CRC]}
        data = _DATA[:length]
        return {"data": data, "checksums": [google_crc32c.value(data)]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, required=True, help="a dataserver_config.json (or a metaserver's)"
    )
    parser.add_argument("--plain", action="store_true", help="plain Twisted AMP: PlainPing only")
    args = parser.parse_args(argv)
    if args.plain:
        config: Any = load_metaserver_config(args.config)
        credentials, identity = load_credentials(config.tls, str(args.config), Role.METASERVER)
    else:
        config = load_dataserver_config(args.config)
        credentials, identity = load_credentials(config.tls, str(args.config), Role.DATASERVER)
    factory = Factory()
    factory.protocol = PlainServer if args.plain else (lambda: SinkSession(identity))
    endpoint = SSL4ServerEndpoint(
        reactor, 0, credentials.server_options(), interface=config.listen.host
    )

    def listening(port: Any) -> None:
        print(f"listening on {port.getHost().port}", flush=True)

    def failed(failure: Any) -> None:
        print(f"amp_sink: cannot listen: {failure.value}", file=sys.stderr, flush=True)
        reactor.stop()

    endpoint.listen(factory).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    main()
