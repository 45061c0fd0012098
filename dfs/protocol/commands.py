"""The AMP commands of DFS: arguments, responses, errors and who may send them.

Every command derives from :class:`DFSCommand`, which declares the errors any
command can answer with and the roles allowed to send it. Servers enforce
``allowed_roles`` against the role in the caller's certificate before a responder
runs (see :mod:`dfs.protocol.session`); a refused call answers PermissionDenied.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet.defer import fail
from twisted.protocols import amp

from dfs.protocol.errors import ERROR_CODES
from dfs.protocol.records import (
    Bulk,
    ChunkPage,
    EntryArgument,
    EntryPage,
    LocationArgument,
    LocationList,
)
from dfs.security.identity import Role

ANY_ROLE: frozenset[Role] = frozenset(Role)
SERVERS: frozenset[Role] = frozenset({Role.METASERVER, Role.DATASERVER})
PEOPLE: frozenset[Role] = frozenset({Role.CLIENT, Role.ADMIN})


#: One field of a command's schema: its key on the wire, its name in Python, its
#: argument type, and whether that type converts one value the plain way (Twisted's
#: Argument.fromBox/toBox), so that the conversion can call it directly.
_Field = tuple[bytes, str, amp.Argument, bool]

_PLAIN = (amp.Argument.fromBox, amp.Argument.toBox, amp.Argument.retrieve)


def _schema(fields: list[tuple[bytes, amp.Argument]]) -> tuple[_Field, ...]:
    return tuple(
        (
            wire,
            amp._wireNameToPythonIdentifier(wire),
            argument,
            (type(argument).fromBox, type(argument).toBox, type(argument).retrieve) == _PLAIN,
        )
        for wire, argument in fields
    )


def _to_objects(schema: tuple[_Field, ...], box: dict[bytes, bytes], proto: Any) -> dict[str, Any]:
    """What Twisted's ``_stringsToObjects`` makes of ``box``, with the names worked
    out once per command instead of once per field and call."""
    objects: dict[str, Any] = {}
    rest: dict[bytes, bytes] | None = None
    for wire, python, argument, plain in schema:
        if plain:
            value = box.get(wire)
            if value is not None:
                objects[python] = argument.fromStringProto(value, proto)
            elif argument.optional:
                objects[python] = None
            else:
                raise KeyError(wire)
        else:
            if rest is None:
                rest = dict(box)
            argument.fromBox(wire, rest, objects, proto)
    return objects


def _to_strings(
    schema: tuple[_Field, ...], objects: dict[str, Any], strings: Any, proto: Any
) -> Any:
    """What Twisted's ``_objectsToStrings`` puts in ``strings``, likewise."""
    rest: dict[str, Any] | None = None
    for wire, python, argument, plain in schema:
        if plain:
            if argument.optional:
                value = objects.get(python)
                if value is None:
                    continue
            else:
                value = objects[python]
            strings[wire] = argument.toStringProto(value, proto)
        else:
            if rest is None:
                rest = dict(objects)
            argument.toBox(wire, strings, rest, proto)
    return strings


class DFSCommand(amp.Command):
    """Base command: the roles allowed to send it. Any command may answer with any
    error of :mod:`dfs.protocol.errors`, so a caller always gets the named class.

    It converts arguments and answers as Twisted's Command does, from a schema worked
    out once per command: Twisted derives each field's Python name on every call, a
    tenth of a client's time on a request with many optional fields."""

    errors: ClassVar[dict[type[Exception], bytes]] = dict(ERROR_CODES)
    allowed_roles: ClassVar[frozenset[Role]] = frozenset()

    @classmethod
    def _schemas(cls) -> tuple[tuple[_Field, ...], tuple[_Field, ...], frozenset[str]]:
        schemas = cls.__dict__.get("_dfs_schemas")
        if schemas is None:
            arguments = _schema(cls.arguments)
            schemas = (arguments, _schema(cls.response), frozenset(f[1] for f in arguments))
            cls._dfs_schemas = schemas  # type: ignore[attr-defined]
        return schemas  # type: ignore[no-any-return]

    @classmethod
    def parseArguments(cls, box: Any, protocol: Any) -> dict[str, Any]:
        return _to_objects(cls._schemas()[0], box, protocol)

    @classmethod
    def parseResponse(cls, box: Any, protocol: Any) -> dict[str, Any]:
        return _to_objects(cls._schemas()[1], box, protocol)

    @classmethod
    def makeArguments(cls, objects: dict[str, Any], proto: Any) -> Any:
        arguments, _, allowed = cls._schemas()
        for name in objects:
            if name not in allowed:
                raise amp.InvalidSignature(f"{name} is not a valid argument")
        return _to_strings(arguments, objects, cls.commandType(), proto)

    @classmethod
    def makeResponse(cls, objects: dict[str, Any], proto: Any) -> Any:
        try:
            strings = cls.responseType()
        except BaseException:
            return fail()
        return _to_strings(cls._schemas()[1], objects, strings, proto)


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
    response: ClassVar[list] = [
        (b"delete", amp.AmpList([(b"chunk_id", amp.Integer()), (b"version", amp.Integer())]))
    ]
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
    # while decommissioning: chunks it holds that still lack a replica elsewhere
    # (-1 when not being drained, or not counted yet)
    (b"drain_remaining", amp.Integer()),
]


class ListDataservers(DFSCommand):
    """Every dataserver this metaserver knows, alive or dead, with its last report."""

    commandName = b"ListDataservers"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = [(b"dataservers", amp.AmpList(DATASERVER_INFO))]
    allowed_roles = frozenset({Role.ADMIN, Role.CLIENT, Role.METASERVER})


# -- the metaserver group: admins ask any metaserver --------------------------------

MEMBER: list = [
    (b"raft", amp.Unicode()),  # the member's raft_listen address
    (b"match_index", amp.Integer()),  # as the leader knows it; -1 elsewhere
]


class MetaserverStatus(DFSCommand):
    """This metaserver's view of its Raft group."""

    commandName = b"MetaserverStatus"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = [
        (b"name", amp.Unicode()),
        (b"raft", amp.Unicode()),
        (b"role", amp.Unicode()),  # leader, follower, candidate or stopped
        (b"serving", amp.Boolean()),
        (b"leader", amp.Unicode()),  # the leader's client address, "" when unknown
        (b"term", amp.Integer()),
        (b"commit_index", amp.Integer()),
        (b"last_applied", amp.Integer()),
        (b"members", amp.AmpList(MEMBER)),  # the others in the group, as this one sees it
    ]
    allowed_roles = frozenset({Role.ADMIN})


class AddMetaserver(DFSCommand):
    """Add a metaserver (its raft_listen address) to the group; start it afterwards
    with the current members as its raft_partners. Only the leader changes the group,
    one change at a time."""

    commandName = b"AddMetaserver"
    arguments: ClassVar[list] = [(b"raft", amp.Unicode())]
    response: ClassVar[list] = []
    allowed_roles = frozenset({Role.ADMIN})


class RemoveMetaserver(DFSCommand):
    """Remove a metaserver from the group. Removing the leader hands leadership to
    another member first (answered NOT_LEADER: ask again)."""

    commandName = b"RemoveMetaserver"
    arguments: ClassVar[list] = [(b"raft", amp.Unicode())]
    response: ClassVar[list] = []
    allowed_roles = frozenset({Role.ADMIN})


# -- cluster health and management: admins ask the leader ---------------------

FSCK_PROBLEM: list = [
    (b"path", amp.Unicode()),
    (b"index", amp.Integer()),  # the chunk's place in the file, from 0
    (b"chunk_id", amp.Integer()),
    (b"version", amp.Integer()),
    (b"problem", amp.Unicode()),  # missing, under-replicated, over-replicated, corrupt, stale
    (b"replicas", amp.Integer()),  # live, current and not on a drained dataserver
    (b"wanted", amp.Integer()),  # the file's replication factor
    (b"locations", amp.ListOf(amp.Unicode())),  # names of the dataservers holding those
]


class Fsck(DFSCommand):
    """Check every chunk of every file under ``path`` against its replication factor.

    Answers a page of problems (at most ``limit``, skipping the first ``start``) and a
    summary of the whole tree, recomputed on every call. ``healthy`` is true only when
    no chunk is missing, under- or over-replicated, corrupt or stale. Chunks still
    being written are counted as ``open_chunks`` and not judged."""

    commandName = b"Fsck"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"start", amp.Integer()),
        (b"limit", amp.Integer()),
    ]
    response: ClassVar[list] = [
        (b"problems", amp.AmpList(FSCK_PROBLEM)),
        (b"more", amp.Boolean()),
        (b"healthy", amp.Boolean()),
        (b"files", amp.Integer()),
        (b"directories", amp.Integer()),
        (b"bytes", amp.Integer()),
        (b"chunks", amp.Integer()),
        (b"open_chunks", amp.Integer()),
        (b"missing", amp.Integer()),
        (b"under_replicated", amp.Integer()),
        (b"over_replicated", amp.Integer()),
        (b"corrupt", amp.Integer()),
        (b"stale", amp.Integer()),
        (b"replicas", amp.Integer()),  # counted replicas (as above) of all chunks
        (b"dataservers_alive", amp.Integer()),
        (b"dataservers_dead", amp.Integer()),
        (b"decommissioning", amp.Integer()),
        (b"copies_in_flight", amp.Integer()),
    ]
    allowed_roles = frozenset({Role.ADMIN})


class Decommission(DFSCommand):
    """Drain a dataserver (by name): it takes no new chunks and its chunks are copied
    elsewhere; ListDataservers shows it ``decommissioned`` once every chunk it holds
    has its full replica count without it. Replicated: survives a leader change."""

    commandName = b"Decommission"
    arguments: ClassVar[list] = [(b"name", amp.Unicode())]
    response: ClassVar[list] = []
    allowed_roles = frozenset({Role.ADMIN})


class Recommission(DFSCommand):
    """Undo :class:`Decommission`: the dataserver takes chunks again (surplus
    replicas made while it drained are removed)."""

    commandName = b"Recommission"
    arguments: ClassVar[list] = [(b"name", amp.Unicode())]
    response: ClassVar[list] = []
    allowed_roles = frozenset({Role.ADMIN})


SAFE_MODE_STATE: list = [
    (b"on", amp.Boolean()),
    (b"manual", amp.Boolean()),  # entered by an administrator (replicated)
    (b"reason", amp.Unicode()),  # why it is on, or "" when off
    (b"reported_chunks", amp.Integer()),  # chunks with at least one replica reported
    (b"total_chunks", amp.Integer()),  # committed chunks in the namespace
    (b"threshold", amp.Float()),
    (b"dataservers_alive", amp.Integer()),
    (b"min_dataservers", amp.Integer()),
]


class ControlSafeMode(DFSCommand):
    """``action`` get, enter or leave; answers the state after it. ``leave`` also
    ends the automatic safe mode of a leader still waiting for chunk reports."""

    commandName = b"ControlSafeMode"
    arguments: ClassVar[list] = [(b"action", amp.Unicode())]
    response: ClassVar[list] = SAFE_MODE_STATE
    allowed_roles = frozenset({Role.ADMIN})


class ControlBalancer(DFSCommand):
    """``action`` start, stop or status; ``threshold`` (percent, 0 for the configured
    one) applies to start. The balancer runs on the leader until every live
    dataserver's use is within the threshold of the mean, then stops (unless
    configured to run continuously)."""

    commandName = b"ControlBalancer"
    arguments: ClassVar[list] = [(b"action", amp.Unicode()), (b"threshold", amp.Float())]
    response: ClassVar[list] = [
        (b"running", amp.Boolean()),
        (b"continuous", amp.Boolean()),
        (b"threshold", amp.Float()),
        (b"bandwidth", amp.Integer()),  # bytes per second per move
        (b"moves_in_flight", amp.Integer()),
        (b"moved_chunks", amp.Integer()),
        (b"moved_bytes", amp.Integer()),
        (b"spread", amp.Float()),  # largest distance of a dataserver's use from the mean, %
        (b"balanced", amp.Boolean()),
    ]
    allowed_roles = frozenset({Role.ADMIN})


class StartBackup(DFSCommand):
    """The leader starts writing a backup of the namespace as it is now to a file of
    its own (see docs/deployment.md, "Backup and restore"); answers the backup's id,
    for :class:`BackupStatus`, :class:`ReadBackup` and :class:`EndBackup`."""

    commandName = b"StartBackup"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = [(b"backup_id", amp.Unicode())]
    allowed_roles = frozenset({Role.ADMIN})


class BackupStatus(DFSCommand):
    """How far a backup started on this metaserver is: ``state`` is ``writing``, then
    ``ready`` with the file's ``size`` and ``sha256`` (hex, of the whole file).
    BackupFailed (the reason) if it could not be written; InvalidArgument for a
    backup not held here."""

    commandName = b"BackupStatus"
    arguments: ClassVar[list] = [(b"backup_id", amp.Unicode())]
    response: ClassVar[list] = [
        (b"state", amp.Unicode()),
        (b"size", amp.Integer()),
        (b"sha256", amp.Unicode()),
    ]
    allowed_roles = frozenset({Role.ADMIN})


class ReadBackup(DFSCommand):
    """Bytes ``offset`` to ``offset + length`` (at most 4 MiB) of a ready backup
    started on this metaserver; fewer at its end. InvalidArgument for a backup not
    held here (the leader changed, or it expired) or still being written."""

    commandName = b"ReadBackup"
    arguments: ClassVar[list] = [
        (b"backup_id", amp.Unicode()),
        (b"offset", amp.Integer()),
        (b"length", amp.Integer()),
    ]
    response: ClassVar[list] = [(b"data", Bulk())]
    allowed_roles = frozenset({Role.ADMIN})


class EndBackup(DFSCommand):
    """The client is done with a backup (fetched or given up): the metaserver stops
    writing it if it still does and deletes its file. Nothing for an unknown id."""

    commandName = b"EndBackup"
    arguments: ClassVar[list] = [(b"backup_id", amp.Unicode())]
    response: ClassVar[list] = []
    allowed_roles = frozenset({Role.ADMIN})


# Entries and chunks travel as the records of dfs.protocol.records, packed; replica
# locations (targets, locations, downstream, sources) as its Location records.


class NamespaceCommand(DFSCommand):
    allowed_roles = PEOPLE


class Mkdir(NamespaceCommand):
    commandName = b"Mkdir"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"mode", amp.Integer()),
        (b"parents", amp.Boolean()),
        (b"request_id", amp.Unicode()),
    ]
    response: ClassVar[list] = []


class Create(NamespaceCommand):
    """Create a file and hold its write lease (renew it with RenewLease).
    replication and chunk_size 0 mean the cluster's defaults.

    ``close``: create it empty and complete, with no lease, in one log entry (the
    answer's ``closed`` is then true). ``first_chunk``: add the file's first chunk in
    the same entry where placement allows, answered in the optional ``chunk_id``,
    ``version``, ``targets`` and ``token`` as AddChunk would."""

    commandName = b"Create"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"mode", amp.Integer()),
        (b"replication", amp.Integer()),
        (b"chunk_size", amp.Integer()),
        (b"overwrite", amp.Boolean()),
        (b"client_id", amp.Unicode()),
        (b"request_id", amp.Unicode()),
        (b"close", amp.Boolean(optional=True)),
        (b"first_chunk", amp.Boolean(optional=True)),
    ]
    response: ClassVar[list] = [
        (b"replication", amp.Integer()),
        (b"chunk_size", amp.Integer()),
        (b"lease_period", amp.Float()),
        (b"closed", amp.Boolean()),
        (b"chunk_id", amp.Integer(optional=True)),
        (b"version", amp.Integer(optional=True)),
        (b"targets", LocationList(optional=True)),
        (b"token", amp.Unicode(optional=True)),
        # since 2.1: the file's inode, which the writer names it by from then on
        (b"inode", amp.Integer(optional=True)),
    ]


class AddChunk(NamespaceCommand):
    """Append a chunk to a file being written; answers the dataservers to write
    it to, in pipeline order."""

    commandName = b"AddChunk"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"client_id", amp.Unicode()),
        (b"request_id", amp.Unicode()),
        # since 2.1: the file by its inode, wherever a rename took it (``path`` then
        # only names it in messages)
        (b"inode", amp.Integer(optional=True)),
    ]
    response: ClassVar[list] = [
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"targets", LocationList()),
        (b"token", amp.Unicode()),  # the write token for the pipeline
    ]


class BumpChunkVersion(NamespaceCommand):
    """A write pipeline lost a dataserver: the last chunk gets a new version so
    that the lost replica is recognisably stale."""

    commandName = b"BumpChunkVersion"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"client_id", amp.Unicode()),
        (b"chunk_id", amp.Integer()),
        (b"request_id", amp.Unicode()),
        # since 2.1: the file by its inode, wherever a rename took it (``path`` then
        # only names it in messages)
        (b"inode", amp.Integer(optional=True)),
    ]
    # the write token for the new version
    response: ClassVar[list] = [(b"version", amp.Integer()), (b"token", amp.Unicode())]


class CommitChunk(NamespaceCommand):
    """Every replica in the pipeline holds ``length`` bytes of the chunk, on disk."""

    commandName = b"CommitChunk"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"client_id", amp.Unicode()),
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"length", amp.Integer()),
        (b"locations", LocationList()),
        (b"request_id", amp.Unicode()),
        # since 2.1: the file by its inode, wherever a rename took it (``path`` then
        # only names it in messages)
        (b"inode", amp.Integer(optional=True)),
    ]
    response: ClassVar[list] = []


class RenewLease(NamespaceCommand):
    commandName = b"RenewLease"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"client_id", amp.Unicode()),
        # since 2.1: the file by its inode, wherever a rename took it (``path`` then
        # only names it in messages)
        (b"inode", amp.Integer(optional=True)),
    ]
    response: ClassVar[list] = []


class CloseFile(NamespaceCommand):
    """Complete the file at ``length``, the sum of its committed chunks.

    With ``chunk_id``: commit that last chunk at ``chunk_length`` on ``locations`` first, in the
    same log entry, as CommitChunk would; ``chunk_length`` 0 drops the chunk instead
    (nothing was written to it)."""

    commandName = b"CloseFile"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"client_id", amp.Unicode()),
        (b"length", amp.Integer()),
        (b"request_id", amp.Unicode()),
        (b"chunk_id", amp.Integer(optional=True)),
        (b"version", amp.Integer(optional=True)),
        (b"chunk_length", amp.Integer(optional=True)),
        (b"locations", LocationList(optional=True)),
        # since 2.1: the file by its inode, wherever a rename took it (``path`` then
        # only names it in messages)
        (b"inode", amp.Integer(optional=True)),
    ]
    response: ClassVar[list] = []


class Stat(NamespaceCommand):
    commandName = b"Stat"
    arguments: ClassVar[list] = [(b"path", amp.Unicode())]
    response: ClassVar[list] = [(b"entry", EntryArgument())]


class ListDirectory(NamespaceCommand):
    """One page of a directory's entries, by name, after ``start_after``: at most
    ``limit``, and fewer when more would not fit one packed value."""

    commandName = b"ListDirectory"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"start_after", amp.Unicode()),
        (b"limit", amp.Integer()),
    ]
    response: ClassVar[list] = [(b"entries", EntryPage()), (b"more", amp.Boolean())]


class GetChunks(NamespaceCommand):
    """A page of a file's chunks with the dataservers that hold each."""

    commandName = b"GetChunks"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"first", amp.Integer()),
        (b"limit", amp.Integer()),
    ]
    response: ClassVar[list] = [
        (b"length", amp.Integer()),
        (b"chunks", ChunkPage()),
        (b"more", amp.Boolean()),
    ]


CHUNK_TOKEN: list = [
    (b"chunk_id", amp.Integer()),
    (b"version", amp.Integer()),  # the chunk's current version, which the token names
    (b"token", amp.Unicode()),
]


class RenewChunkTokens(NamespaceCommand):
    """Fresh tokens for chunks of ``path`` (at most 100), for a long read or write.

    ``operation`` ``read``: checked as GetChunks is. ``write``: the caller must hold
    the file's write lease (``client_id``, as for AddChunk)."""

    commandName = b"RenewChunkTokens"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"operation", amp.Unicode()),
        (b"chunk_ids", amp.ListOf(amp.Integer())),
        (b"client_id", amp.Unicode()),  # "" for reading
        # since 2.1, writing only: the file by its inode, as for AddChunk
        (b"inode", amp.Integer(optional=True)),
    ]
    response: ClassVar[list] = [(b"tokens", amp.AmpList(CHUNK_TOKEN))]


class Delete(NamespaceCommand):
    commandName = b"Delete"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"recursive", amp.Boolean()),
        (b"request_id", amp.Unicode()),
    ]
    response: ClassVar[list] = []


class Rename(NamespaceCommand):
    commandName = b"Rename"
    arguments: ClassVar[list] = [
        (b"source", amp.Unicode()),
        (b"destination", amp.Unicode()),
        (b"request_id", amp.Unicode()),
    ]
    response: ClassVar[list] = []


class SetReplication(NamespaceCommand):
    commandName = b"SetReplication"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"replication", amp.Integer()),
        (b"request_id", amp.Unicode()),
    ]
    response: ClassVar[list] = []


class Chmod(NamespaceCommand):
    """Set the mode bits (permissions, setuid/setgid/sticky) of a file or directory."""

    commandName = b"Chmod"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"mode", amp.Integer()),
        (b"request_id", amp.Unicode()),
    ]
    response: ClassVar[list] = []


class Chown(NamespaceCommand):
    """Set the owner and/or the group of a file or directory; "" leaves one unchanged."""

    commandName = b"Chown"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"owner", amp.Unicode()),
        (b"group", amp.Unicode()),
        (b"request_id", amp.Unicode()),
    ]
    response: ClassVar[list] = []


# -- users, groups and quotas: any person may ask; the namespace lets only superusers
# (an admin certificate, or a member of the superuser group) change them.


class ChangeGroup(NamespaceCommand):
    """Add ``users`` to ``group`` (``add`` true) or remove them; a group left with
    no member is gone. Answers the members the group has now."""

    commandName = b"ChangeGroup"
    arguments: ClassVar[list] = [
        (b"group", amp.Unicode()),
        (b"users", amp.ListOf(amp.Unicode())),
        (b"add", amp.Boolean()),
    ]
    response: ClassVar[list] = [(b"members", amp.ListOf(amp.Unicode()))]


class ListGroups(NamespaceCommand):
    """Every group and its members, by name."""

    commandName = b"ListGroups"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = [
        (
            b"groups",
            amp.AmpList([(b"name", amp.Unicode()), (b"members", amp.ListOf(amp.Unicode()))]),
        )
    ]


class AddUser(NamespaceCommand):
    """Make user ``name``'s home directory, /user/<name>, owned by them, mode 0750."""

    commandName = b"AddUser"
    arguments: ClassVar[list] = [(b"name", amp.Unicode())]
    response: ClassVar[list] = [(b"path", amp.Unicode())]


QUOTA: list = [
    (b"path", amp.Unicode()),
    (b"files_quota", amp.Integer()),  # -1: no name quota
    (b"bytes_quota", amp.Integer()),  # -1: no space quota
    (b"names", amp.Integer()),  # files and directories, the directory included
    (b"space", amp.Integer()),  # bytes times replication, chunks being written whole
]


class SetQuota(NamespaceCommand):
    """Set a directory's name quota (``files``) and/or space quota (``bytes``, bytes
    times replication); one left out stays as it is; ``clear`` removes both.
    Superusers only. Answers the quota and use after the change."""

    commandName = b"SetQuota"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"files", amp.Integer(optional=True)),
        (b"bytes", amp.Integer(optional=True)),
        (b"clear", amp.Boolean()),
    ]
    response: ClassVar[list] = QUOTA


class GetQuota(NamespaceCommand):
    """A directory's quotas and what its subtree uses of them."""

    commandName = b"GetQuota"
    arguments: ClassVar[list] = [(b"path", amp.Unicode())]
    response: ClassVar[list] = QUOTA


class DiskUsage(NamespaceCommand):
    commandName = b"DiskUsage"
    arguments: ClassVar[list] = [(b"path", amp.Unicode())]
    response: ClassVar[list] = [
        (b"files", amp.Integer()),
        (b"directories", amp.Integer()),
        (b"bytes", amp.Integer()),
        (b"replicated_bytes", amp.Integer()),
    ]


class ClusterSpace(NamespaceCommand):
    commandName = b"ClusterSpace"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = [
        (b"capacity", amp.Integer()),
        (b"used", amp.Integer()),
        (b"free", amp.Integer()),
        (b"dataservers_alive", amp.Integer()),
        (b"dataservers_dead", amp.Integer()),
    ]


class ReportBadReplica(NamespaceCommand):
    """A reader found a replica corrupt, stale or unreachable."""

    commandName = b"ReportBadReplica"
    arguments: ClassVar[list] = [
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"address", LocationArgument()),
        (b"reason", amp.Unicode()),
    ]
    response: ClassVar[list] = []


# -- chunk reports: dataservers tell metaservers what they hold -----------------

REPLICA: list = [
    (b"chunk_id", amp.Integer()),
    (b"version", amp.Integer()),
    (b"length", amp.Integer()),
]


class ReportChunks(DFSCommand):
    """One batch of a full report of the replicas a dataserver holds, sent after
    registering; ``last`` closes the report (replicas not reported are not there)."""

    commandName = b"ReportChunks"
    arguments: ClassVar[list] = [
        (b"name", amp.Unicode()),
        (b"chunks", amp.AmpList(REPLICA)),
        (b"last", amp.Boolean()),
    ]
    response: ClassVar[list] = []
    allowed_roles = frozenset({Role.DATASERVER})


class ChunkReceived(DFSCommand):
    """A replica was completed (written and fsynced) on this dataserver."""

    commandName = b"ChunkReceived"
    arguments: ClassVar[list] = [
        (b"name", amp.Unicode()),
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"length", amp.Integer()),
    ]
    response: ClassVar[list] = []
    allowed_roles = frozenset({Role.DATASERVER})


class ReplicaCorrupt(DFSCommand):
    """This dataserver found one of its replicas corrupt (its scrubber, or a check
    the leader asked for) and quarantined it: it is no longer held here."""

    commandName = b"ReplicaCorrupt"
    arguments: ClassVar[list] = [
        (b"name", amp.Unicode()),
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"reason", amp.Unicode()),
    ]
    response: ClassVar[list] = []
    allowed_roles = frozenset({Role.DATASERVER})


# -- orders: the leader asks a dataserver, on the connection the dataserver opened --


class ReplicateChunk(DFSCommand):
    """Copy a replica here from another dataserver: read it from the first of
    ``sources`` that serves it (the next on failure), verify every block's CRC32C,
    store it and report it with ChunkReceived. ``rate`` bounds the copy in bytes per
    second (0: as fast as it goes). Answered once the replica is on disk."""

    commandName = b"ReplicateChunk"
    arguments: ClassVar[list] = [
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"length", amp.Integer()),
        (b"sources", LocationList()),
        (b"rate", amp.Integer()),
        # a copy token for the target dataserver, presented to the sources
        (b"token", amp.Unicode(optional=True)),
    ]
    response: ClassVar[list] = [(b"source", LocationArgument())]  # where it was copied from
    allowed_roles = frozenset({Role.METASERVER})


class VerifyChunk(DFSCommand):
    """Re-read a replica and check it against its checksums (a reader reported it
    bad). A corrupt one is quarantined before the answer: ``intact`` false."""

    commandName = b"VerifyChunk"
    arguments: ClassVar[list] = [(b"chunk_id", amp.Integer()), (b"version", amp.Integer())]
    response: ClassVar[list] = [(b"intact", amp.Boolean())]
    allowed_roles = frozenset({Role.METASERVER})


# -- chunk data: clients and dataservers ask a dataserver ------------------------

DATA_PEERS: frozenset[Role] = PEOPLE | {Role.DATASERVER}


class OpenChunkWrite(DFSCommand):
    """Start writing a replica here and forward to ``downstream`` (the rest of the
    pipeline, in order); answers once every dataserver of the pipeline is ready."""

    commandName = b"OpenChunkWrite"
    arguments: ClassVar[list] = [
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"downstream", LocationList()),
        # bytes the replica may grow to (the file's chunk size): set aside at once
        (b"expected_length", amp.Integer(optional=True)),
        # every chunk command takes the token the metaserver minted for it; optional
        # on the wire so that a missing one is answered InvalidToken, not a parse error
        (b"token", amp.Unicode(optional=True)),
    ]
    response: ClassVar[list] = []
    allowed_roles = DATA_PEERS


class OpenChunkStream(amp.ProtocolSwitchCommand, DFSCommand):
    """Turn this connection into a chunk stream (:mod:`dfs.protocol.stream`): once
    answered, both ends send raw frames of chunk data, acknowledgements and failures
    instead of AMP boxes. Send it on a connection used for nothing else. It takes no
    token: a dataserver takes a write's data only from the peer that opened (or last
    recovered) that write with a valid write token.

    ProtocolSwitchCommand comes first: its makeResponse (the answer that switches the
    protocol) must win over DFSCommand's."""

    commandName = b"OpenChunkStream"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = []
    allowed_roles = DATA_PEERS


class FinishChunkWrite(DFSCommand):
    """The replica is complete at ``length`` bytes: fsync, rename into place, report
    to the metaservers; answered once every replica of the pipeline is on disk."""

    commandName = b"FinishChunkWrite"
    arguments: ClassVar[list] = [
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"length", amp.Integer()),
        (b"token", amp.Unicode(optional=True)),  # write
    ]
    response: ClassVar[list] = [(b"locations", LocationList())]
    allowed_roles = DATA_PEERS


class StoreChunk(DFSCommand):
    """A whole chunk in one request (protocol 2.2): open the replica, store ``data``
    and complete it as FinishChunkWrite does, forwarding the same to ``downstream``
    at once; answered once every replica of the pipeline is on disk."""

    commandName = b"StoreChunk"
    arguments: ClassVar[list] = [
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"downstream", LocationList()),
        (b"data", Bulk()),
        (b"token", amp.Unicode(optional=True)),  # write
    ]
    response: ClassVar[list] = [(b"locations", LocationList())]
    allowed_roles = DATA_PEERS


class RecoverChunkWrite(DFSCommand):
    """Pipeline recovery: keep the first ``length`` bytes of the replica being
    written, make it ``new_version`` and continue with ``downstream``."""

    commandName = b"RecoverChunkWrite"
    arguments: ClassVar[list] = [
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"new_version", amp.Integer()),
        (b"length", amp.Integer()),
        (b"downstream", LocationList()),
        (b"token", amp.Unicode(optional=True)),  # write, for new_version
    ]
    response: ClassVar[list] = []
    allowed_roles = DATA_PEERS


class AbortChunkWrite(DFSCommand):
    commandName = b"AbortChunkWrite"
    arguments: ClassVar[list] = [
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"token", amp.Unicode(optional=True)),  # write
    ]
    response: ClassVar[list] = []
    allowed_roles = DATA_PEERS


class ReadChunk(DFSCommand):
    """Bytes of a replica from a 64 KiB-aligned ``offset``, with the CRC32C of every
    64 KiB block they cover, so the reader verifies them itself."""

    commandName = b"ReadChunk"
    arguments: ClassVar[list] = [
        (b"chunk_id", amp.Integer()),
        (b"version", amp.Integer()),
        (b"offset", amp.Integer()),
        (b"length", amp.Integer()),
        # read from a person, copy from a dataserver
        (b"token", amp.Unicode(optional=True)),
    ]
    response: ClassVar[list] = [(b"data", Bulk()), (b"checksums", amp.ListOf(amp.Integer()))]
    allowed_roles = DATA_PEERS


ALL_COMMANDS: tuple[type[DFSCommand], ...] = (
    Ping,
    RegisterDataserver,
    Heartbeat,
    ListDataservers,
    MetaserverStatus,
    AddMetaserver,
    RemoveMetaserver,
    Fsck,
    Decommission,
    Recommission,
    ControlSafeMode,
    ControlBalancer,
    StartBackup,
    BackupStatus,
    ReadBackup,
    EndBackup,
    Mkdir,
    Create,
    AddChunk,
    BumpChunkVersion,
    CommitChunk,
    RenewLease,
    CloseFile,
    Stat,
    ListDirectory,
    GetChunks,
    RenewChunkTokens,
    Delete,
    Rename,
    SetReplication,
    Chmod,
    Chown,
    ChangeGroup,
    ListGroups,
    AddUser,
    SetQuota,
    GetQuota,
    DiskUsage,
    ClusterSpace,
    ReportBadReplica,
    ReportChunks,
    ChunkReceived,
    ReplicaCorrupt,
    ReplicateChunk,
    VerifyChunk,
    OpenChunkWrite,
    OpenChunkStream,
    FinishChunkWrite,
    StoreChunk,
    RecoverChunkWrite,
    AbortChunkWrite,
    ReadChunk,
)
