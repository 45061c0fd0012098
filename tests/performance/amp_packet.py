"""The bare AMP form of a write packet, for baseline (a) of throughput.py.

Dataservers take chunk data on a chunk stream (dfs.protocol.stream). The baseline
measures what one of our mutual-TLS AMP sessions carries when every 64 KiB packet is
its own command, answered by amp_sink.py, which throws it away.
"""

from __future__ import annotations

from typing import ClassVar

from twisted.protocols import amp

from dfs.protocol.commands import DATA_PEERS, Bulk, DFSCommand

#: Packets in flight in the baseline: 1 MiB, as the file writer kept when it sent
#: packets as AMP commands.
WINDOW = 16


class WriteChunkData(DFSCommand):
    """One packet at ``offset`` of a chunk."""

    commandName = b"WriteChunkData"
    arguments: ClassVar[list] = [
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"offset", amp.Integer()),
        (b"data", Bulk()),
    ]
    response: ClassVar[list] = []
    allowed_roles = DATA_PEERS
