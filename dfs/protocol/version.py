"""The version of the DFS wire protocol, and the Hello that states it on every connection.

Right after the TLS handshake, the side that dialled sends :class:`Hello` with its
protocol version, ahead of (and pipelined with) its first request; the side that
accepted answers Hello with its own version before it dispatches anything else, and
refuses a connection whose first command is not a Hello. Each side checks the other's
version and drops the connection if the two cannot talk, naming both versions: the
accepting side in its log, the dialling side in the error its caller gets
(:class:`IncompatibleProtocol`). See :mod:`dfs.protocol.session`.

Compatibility rule: two peers talk if and only if their protocol versions have the
same major number. A minor release only adds what a peer of the same major with a
lower minor can do without (a new optional argument, a new command sent only to
peers whose Hello announced that minor or later); anything an older peer would
misread or refuse bumps the major. The Hello command itself never changes, so that
peers of any two versions can tell each other which one they speak.
"""

from __future__ import annotations

import re
from typing import ClassVar

import attrs
from twisted.protocols import amp

from dfs.protocol.commands import ANY_ROLE, DFSCommand
from dfs.protocol.errors import DFSError

_VERSION = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")


@attrs.frozen(order=True)
class ProtocolVersion:
    """A DFS wire protocol version, ``major.minor``."""

    major: int
    minor: int = 0

    @classmethod
    def parse(cls, text: str) -> ProtocolVersion:
        """``"1.0"`` as a version; ValueError naming ``text`` if it is not one."""
        match = _VERSION.fullmatch(text)
        if match is None:
            raise ValueError(f"not a DFS protocol version: {text[:40]!r}")
        return cls(int(match[1]), int(match[2]))

    def compatible_with(self, other: ProtocolVersion) -> bool:
        """Whether a peer speaking ``other`` can talk with one speaking this version."""
        return self.major == other.major

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


#: The protocol this code speaks.
PROTOCOL_VERSION = ProtocolVersion(2, 2)

#: The first protocol whose dataservers take a whole chunk in one StoreChunk: it is
#: sent only to a dataserver whose Hello stated this version or later.
STORE_CHUNK_SINCE = ProtocolVersion(2, 2)


class IncompatibleProtocol(DFSError):
    """The peer speaks a DFS protocol this side cannot talk with (or states none).

    Raised on the dialling side; it never crosses the wire (the accepting side
    answers Hello with its version and closes the connection)."""

    code = b"INCOMPATIBLE_PROTOCOL"
    user_text = "Incompatible DFS protocol"


class Hello(DFSCommand):
    """The first command on every connection: the dialling side's protocol version
    and software release; the answer is the accepting side's, and who it is."""

    commandName = b"Hello"
    arguments: ClassVar[list] = [
        (b"protocol", amp.Unicode()),
        (b"software", amp.Unicode()),
    ]
    response: ClassVar[list] = [
        (b"protocol", amp.Unicode()),
        (b"software", amp.Unicode()),
        (b"role", amp.Unicode()),
        (b"name", amp.Unicode()),
    ]
    allowed_roles = ANY_ROLE


def mismatch(peer: str, theirs: object, local: str, ours: ProtocolVersion) -> str:
    """The one line naming both versions: ``the metaserver at 10.0.0.1:7000 speaks DFS
    protocol 2.0, this client 1.0``."""
    return f"{peer} speaks DFS protocol {theirs}, this {local} {ours}"
