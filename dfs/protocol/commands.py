"""The AMP commands of DFS: arguments, responses, errors and who may send them.

Every command derives from :class:`DFSCommand`, which declares the errors any
command can answer with and the roles allowed to send it. Servers enforce
``allowed_roles`` against the role in the caller's certificate before a responder
runs (see :mod:`dfs.protocol.session`); a refused call answers PermissionDenied.
"""

from __future__ import annotations

from typing import ClassVar

from twisted.protocols import amp

from dfs.protocol.errors import (
    InvalidArgument,
    NotLeader,
    PermissionDenied,
    UnknownDataserver,
)
from dfs.security.identity import Role

ANY_ROLE: frozenset[Role] = frozenset(Role)
SERVERS: frozenset[Role] = frozenset({Role.METASERVER, Role.DATASERVER})
PEOPLE: frozenset[Role] = frozenset({Role.CLIENT, Role.ADMIN})


class DFSCommand(amp.Command):
    """Base command: common errors and the roles allowed to send it."""

    errors: ClassVar[dict[type[Exception], bytes]] = {
        PermissionDenied: PermissionDenied.code,
        InvalidArgument: InvalidArgument.code,
    }
    allowed_roles: ClassVar[frozenset[Role]] = frozenset()


class Ping(DFSCommand):
    """Liveness and identity check: answers who the server is and who it sees."""

    commandName = b"Ping"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = [
        (b"role", amp.Unicode()),
        (b"name", amp.Unicode()),
        (b"version", amp.Unicode()),
        (b"peer_role", amp.Unicode()),
        (b"peer_name", amp.Unicode()),
    ]
    allowed_roles = ANY_ROLE


class RegisterDataserver(DFSCommand):
    """A dataserver announces itself to a metaserver. ``name`` must equal the name
    in the dataserver's certificate."""

    commandName = b"RegisterDataserver"
    arguments: ClassVar[list] = [
        (b"name", amp.Unicode()),
        (b"address", amp.Unicode()),
        (b"capacity", amp.Integer()),
        (b"free", amp.Integer()),
        (b"used", amp.Integer()),
        (b"chunks", amp.Integer()),
    ]
    response: ClassVar[list] = [
        (b"metaserver", amp.Unicode()),
        (b"dead_after", amp.Float()),
    ]
    errors: ClassVar[dict[type[Exception], bytes]] = {NotLeader: NotLeader.code}
    allowed_roles = frozenset({Role.DATASERVER})


class Heartbeat(DFSCommand):
    """Periodic liveness and space report from a registered dataserver."""

    commandName = b"Heartbeat"
    arguments: ClassVar[list] = [
        (b"name", amp.Unicode()),
        (b"capacity", amp.Integer()),
        (b"free", amp.Integer()),
        (b"used", amp.Integer()),
        (b"chunks", amp.Integer()),
    ]
    response: ClassVar[list] = []
    errors: ClassVar[dict[type[Exception], bytes]] = {UnknownDataserver: UnknownDataserver.code}
    allowed_roles = frozenset({Role.DATASERVER})


DATASERVER_INFO: list = [
    (b"name", amp.Unicode()),
    (b"address", amp.Unicode()),
    (b"state", amp.Unicode()),
    (b"capacity", amp.Integer()),
    (b"free", amp.Integer()),
    (b"used", amp.Integer()),
    (b"chunks", amp.Integer()),
    (b"last_heartbeat_age", amp.Float()),
]


class ListDataservers(DFSCommand):
    """Every dataserver this metaserver knows, alive or dead, with its last report."""

    commandName = b"ListDataservers"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = [(b"dataservers", amp.AmpList(DATASERVER_INFO))]
    allowed_roles = frozenset({Role.ADMIN, Role.CLIENT, Role.METASERVER})


ALL_COMMANDS: tuple[type[DFSCommand], ...] = (Ping, RegisterDataserver, Heartbeat, ListDataservers)
