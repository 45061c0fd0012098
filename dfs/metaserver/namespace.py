"""The metaserver's namespace as a pure, deterministic state machine.

Directories, files, owners, modes, chunk lists and write leases live here, and
change only through :meth:`Namespace.apply`, which takes one operation record
(:class:`~dfs.metaserver.operations.Mkdir`, ...) and returns a result
(:class:`~dfs.metaserver.operations.Ok` or :class:`~dfs.metaserver.operations.Err`). A PySyncObj
``SyncObj`` wraps it: its single ``@replicated`` method calls ``apply``, every
metaserver applies the same operations in the same order, and the whole object is
pickled into Raft snapshots. Hence the rules this module keeps:

- Deterministic: inode and chunk ids come from counters in the state, time only
  from the operation (``op.now``, the leader's clock), never from this process.
- ``apply`` never raises: an exception in a replicated method wedges the whole Raft
  group. Refusals come back as :class:`Err` carrying the *name* of an error class
  of :mod:`dfs.protocol.errors`; a bug comes back as an internal :class:`Err`.
- All or nothing: every handler checks everything first and only then changes the
  state in steps that cannot fail, so a refused operation leaves no trace (except
  its remembered result when it carried a request id).
- Plain data: attrs classes, dicts, lists, ints and strings, so pickling works and
  two replicas that applied the same log compare equal.

The tree is a flat table of inodes (directories hold ``name -> inode number``) with
parent pointers, rather than nested objects: lookups stay O(depth), and pickling or
comparing a namespace with deep paths never recurses as deep as the tree.

Every operation and query that names a caller is checked with POSIX rules (see
:class:`Namespace` "Permissions"). Group membership is part of the replicated
state, so every replica judges a request the same way.

Beside this module: the operation records and the checks of their fields in
:mod:`dfs.metaserver.operations`, the permission checks in
:mod:`dfs.metaserver.permissions`, quotas in :mod:`dfs.metaserver.quotas`, and path
rules in :mod:`dfs.protocol.paths`. This module keeps the state, ``apply`` and the
snapshot.
"""

from __future__ import annotations

import bisect
import builtins
import itertools
import pickle
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import IO, TYPE_CHECKING, Any, Final, Literal, TypeVar

import attrs

from dfs.metaserver import permissions
from dfs.metaserver.operations import (
    BY_PATH,
    MAX_CHUNK_SIZE,
    MAX_FORGET,
    MAX_MODE,
    MAX_REPLICATION,
    AddChunk,
    AddUser,
    BumpChunkVersion,
    Caller,
    ChangeGroup,
    Chmod,
    Chown,
    Close,
    CommitChunk,
    CommitClose,
    Create,
    CreateClosed,
    CreateWithChunk,
    Delete,
    Err,
    ForgetFreedChunks,
    Mkdir,
    Ok,
    Operation,
    RecoverLease,
    Refused,
    Rename,
    RenewLease,
    SetDecommission,
    SetQuota,
    SetReplication,
    SetSafeMode,
    check_caller,
    check_common,
    internal_error,
    printable,
    shown,
    valid_expiry,
    valid_flag,
    valid_holder,
    valid_integer,
    valid_mode,
    valid_name,
    valid_path,
)
from dfs.metaserver.permissions import EXECUTE, READ, WRITE, Principal
from dfs.metaserver.quotas import Quota, QuotaUsage
from dfs.protocol import errors, paths
from dfs.protocol.records import Entry as WireEntry
from dfs.protocol.records import EntryColumns
from dfs.security.identity import validate_name

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

T = TypeVar("T")

#: Bounds that keep one administrator's typo from bloating every snapshot.
MAX_GROUPS: Final = 10_000
MAX_GROUP_MEMBERS: Final = 10_000
#: Where ``AddUser`` puts a user's home directory.
USER_HOME: Final = "/user"
ROOT_INODE: Final = 1
FIRST_CHUNK_ID: Final = 1
#: Chunks of one file that may be added and not yet committed: the writer fills the
#: next chunk while the previous one is being finished on its dataservers.
MAX_PENDING_CHUNKS: Final = 2
#: How many request ids are remembered for de-duplicating retried mutations.
REQUEST_MEMORY: Final = 10_000
_MAX_INT: Final = 2**63 - 1
#: Fields of a Namespace that are derived from the others, not part of its state.
_NOT_STATE: Final = frozenset({"_sorted_names"})
#: Nodes per pickle in Namespace.write_snapshot: what its pickler remembers at most.
SNAPSHOT_BATCH: Final = 10_000

FILE: Final = "file"
DIRECTORY: Final = "directory"
Kind = Literal["file", "directory"]


#: Snapshots and log entries are pickles, and a pickle names a class by its module.
#: These classes were defined in this module before operations, permissions and
#: quotas had modules of their own, and they keep pickling under its name: snapshots
#: and journals written before the move load (the names resolve here), and a
#: metaserver of an earlier release reads what this one writes, as a rolling upgrade
#: needs. Keep the list as it is; a class new to the log may pickle where it lives.
PICKLED_HERE: Final[tuple[type, ...]] = (
    Ok,
    Err,
    Caller,
    Operation,
    Mkdir,
    Create,
    AddChunk,
    BumpChunkVersion,
    CommitChunk,
    RenewLease,
    Close,
    CreateClosed,
    CreateWithChunk,
    CommitClose,
    RecoverLease,
    Delete,
    Rename,
    SetReplication,
    Chmod,
    Chown,
    ChangeGroup,
    AddUser,
    SetQuota,
    SetDecommission,
    SetSafeMode,
    Quota,
    QuotaUsage,
)
for _moved in PICKLED_HERE:
    _moved.__module__ = __name__


# --------------------------------------------------------------------------- values


@attrs.frozen
class ChunkRef:
    """One chunk of a file: its id, generation stamp and committed length."""

    chunk_id: int
    version: int
    length: int


@attrs.frozen
class ChunkTarget:
    """What the leader keeps a chunk at: its version, length (0 while it is still
    being written) and the replication factor of its file."""

    chunk_id: int
    version: int
    length: int
    replication: int

    @property
    def committed(self) -> bool:
        return self.length > 0


@attrs.frozen
class FileChunks:
    """A file's chunks as fsck looks at them."""

    path: str
    replication: int
    complete: bool
    length: int
    chunks: tuple[ChunkRef, ...]


@attrs.frozen
class Tree:
    """Everything under a path, for fsck: its directories and its files' chunks."""

    directories: int
    files: tuple[FileChunks, ...]


@attrs.frozen
class ExpiredLease:
    """A file whose write lease ran out: its inode, and its path for the log."""

    inode: int
    path: str


@attrs.frozen
class Lease:
    """The one client allowed to write a file under construction, until ``expires``."""

    holder: str
    expires: float


@attrs.frozen(slots=False)
class Stat(WireEntry):
    """What ``stat`` and ``ls`` show about one entry: the wire record
    (:class:`dfs.protocol.records.Entry`), which a page of stats is sent as, and
    ``under_construction``, the lease holder of a file being written (else None),
    which stays on the metaserver.

    Directories have length, replication and chunk_size 0 and are always complete.
    """

    under_construction: str | None


#: A listing entry is the same record as a stat.
Entry = Stat


@attrs.frozen
class DirectoryPage:
    """One page of a listing: entries in name order, column by column (a page of
    thousands is read and packed with no record built per entry), and whether more
    follow."""

    entries: EntryColumns
    more: bool


@attrs.frozen
class CreateResult:
    """The new file, and the chunks of the file it replaced (overwrite), to drop;
    for :class:`CreateWithChunk`, its first chunk (None if it could not be added)."""

    stat: Stat
    freed: tuple[ChunkRef, ...] = ()
    chunk: ChunkRef | None = None


@attrs.frozen
class DeleteResult:
    """The chunks no file refers to any more, for the dataservers to drop."""

    freed: tuple[ChunkRef, ...] = ()


@attrs.frozen
class RenameResult:
    """The entry at its new path, and the chunks of a file it replaced, to drop."""

    stat: Stat
    freed: tuple[ChunkRef, ...] = ()


@attrs.frozen
class Usage:
    """``du`` of a subtree; a directory counts itself."""

    files: int
    directories: int
    bytes: int
    replicated_bytes: int


# --------------------------------------------------------------------------- state


#: Distinct ints kept by _shared_int; past this, new values are stored as they come.
_SHARED_INTS_MAX: Final = 4096
_shared_ints: dict[int, int] = {}


def _shared_int(value: int) -> int:
    """One int object for each mode or chunk size many nodes hold: an int beyond 256
    is an object of its own (32 bytes) in every node that was given it from a
    decoded operation or a loaded snapshot."""
    shared = _shared_ints.get(value)
    if shared is not None:
        return shared
    if len(_shared_ints) < _SHARED_INTS_MAX and type(value) is int:
        _shared_ints[value] = value
    return value


def _interned(value: str) -> str:
    # Owners and groups are few: one string each rather than one per node.
    return sys.intern(value) if type(value) is str else value


# Nodes are slotted (attrs.define) and keep what most of them share (owner, group,
# mode, chunk size) as shared objects: with millions of files, every object per node
# counts. A file's chunks are a tuple, () for an empty file; chunks are added a few
# at a time, so rebuilding the tuple costs little.


class _PickledAsList:
    """Pickles a node's fields as a list rather than attrs' dict of name to value.

    Unpickling keeps every object it made until the end of the load, and the
    process keeps the memory it took at the peak. With a dict per node (some 700
    bytes) a snapshot of n files took n times as much while loading; the list is
    emptied as soon as the node has its fields, and the strings and ints it brought
    that other nodes share already are let go at once. Snapshots written with a dict
    per node still load."""

    __slots__ = ()

    def __getstate__(self) -> builtins.list[Any]:
        state = [getattr(self, name) for name in _FIELDS[type(self)]]
        if isinstance(self, DirectoryNode):
            # Names only: the numbers are the children's own, which the namespace
            # puts back after loading (Namespace._share_loaded) rather than load
            # each number twice.
            state[_CHILDREN] = tuple(self.children)
        return state

    def __setstate__(self, state: builtins.list[Any] | dict[str, Any]) -> None:
        if isinstance(state, dict):
            for name, value in state.items():
                object.__setattr__(self, name, value)
            return
        for name, value in zip(_FIELDS[type(self)], state, strict=False):
            if name in _SHARED:
                value = _SHARED[name](value)
            elif name == "children" and isinstance(value, tuple):
                value = dict.fromkeys(value)
            object.__setattr__(self, name, value)
        state.clear()


@attrs.define(getstate_setstate=False)
class DirectoryNode(_PickledAsList):
    inode: int
    parent: int
    name: str
    owner: str = attrs.field(converter=_interned)
    group: str = attrs.field(converter=_interned)
    mode: int = attrs.field(converter=_shared_int)
    mtime: float
    children: dict[str, int] = attrs.Factory(dict)


@attrs.define(getstate_setstate=False)
class FileNode(_PickledAsList):
    inode: int
    parent: int
    name: str
    owner: str = attrs.field(converter=_interned)
    group: str = attrs.field(converter=_interned)
    mode: int = attrs.field(converter=_shared_int)
    mtime: float
    replication: int
    chunk_size: int = attrs.field(converter=_shared_int)
    chunks: tuple[ChunkRef, ...] = ()
    #: Sum of the chunk lengths, kept so that stat and du need not add them up.
    length: int = 0
    #: Set while the file is under construction; a complete file has none.
    lease: Lease | None = None


Node = DirectoryNode | FileNode
_FIELDS: Final[dict[type, tuple[str, ...]]] = {
    cls: tuple(field.name for field in attrs.fields(cls)) for cls in (DirectoryNode, FileNode)
}
_CHILDREN: Final = _FIELDS[DirectoryNode].index("children")
#: Fields whose values many nodes share, and how a loaded value finds its shared one.
_SHARED: Final[dict[str, Callable[[Any], Any]]] = {
    "owner": _interned,
    "group": _interned,
    "mode": _shared_int,
    "chunk_size": _shared_int,
}


def _columns(paths_of: builtins.list[str], nodes: builtins.list[Node]) -> EntryColumns:
    """The entries of ``nodes`` (at ``paths_of``) as :meth:`Namespace._stat` makes
    them, column by column: a comprehension per field, no record per node."""
    files = [node for node in nodes if isinstance(node, FileNode)]
    if len(files) == len(nodes):
        # Only files, the common large page: their fields as they are.
        lengths = [node.length for node in files]
        replications = [node.replication for node in files]
        chunk_sizes = [node.chunk_size for node in files]
        completes = [node.lease is None for node in files]
    else:
        lengths, replications, chunk_sizes, completes = [], [], [], []
        for node in nodes:
            if isinstance(node, FileNode):
                lengths.append(node.length)
                replications.append(node.replication)
                chunk_sizes.append(node.chunk_size)
                completes.append(node.lease is None)
            else:
                lengths.append(0)
                replications.append(0)
                chunk_sizes.append(0)
                completes.append(True)
    return EntryColumns(
        paths=paths_of,
        names=[node.name for node in nodes],
        directories=[isinstance(node, DirectoryNode) for node in nodes],
        inodes=[node.inode for node in nodes],
        owners=[node.owner for node in nodes],
        groups=[node.group for node in nodes],
        modes=[node.mode for node in nodes],
        mtimes=[node.mtime for node in nodes],
        lengths=lengths,
        replications=replications,
        chunk_sizes=chunk_sizes,
        completes=completes,
    )


def _file_space(node: FileNode) -> int:
    """A file's use of a space quota: its bytes, and whole chunks for those being
    written, times its replication."""
    reserved = len(_pending(node)) * node.chunk_size if node.lease is not None else 0
    return (node.length + reserved) * node.replication


def _pending(node: FileNode) -> builtins.list[int]:
    """Indexes of the file's pending chunks: the trailing ones not yet committed (a
    committed chunk holds at least one byte)."""
    index = len(node.chunks)
    while index > 0 and node.chunks[index - 1].length == 0:
        index -= 1
    return builtins.list(range(index, len(node.chunks)))


def _replaced(chunks: tuple[ChunkRef, ...], index: int, chunk: ChunkRef) -> tuple[ChunkRef, ...]:
    return (*chunks[:index], chunk, *chunks[index + 1 :])


def _prefix(names: list[str], depth: int) -> str:
    return printable("/" + "/".join(names[:depth]))


def _check_principal(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    validate_name(value)


@attrs.define
class Namespace:
    """The replicated namespace. Mutate only through :meth:`apply`.

    ``root_owner``/``root_group``/``root_mode`` describe "/" at creation;
    ``root_group`` is also the superuser group: its members are superusers.
    ``request_memory`` is how many request ids are remembered for de-duplication.

    Permissions follow POSIX. Resolving a path needs search (x) on every directory
    on the way. Reading a file needs r on it, listing a directory r on it; creating
    or removing an entry needs w and x on its directory, and in a sticky directory
    removing or renaming an entry is for its owner, the directory's owner or a
    superuser; moving a directory to another parent needs w on it (its ``..``).
    Overwriting a file needs w on the file, which keeps its owner, group and mode,
    as a truncation does. Only the owner or a superuser may chmod; only a
    superuser may give a file away; the owner may change its group to one they
    belong to. Superusers pass every check.
    """

    root_owner: str = attrs.field(default="dfs", validator=_check_principal)
    root_group: str = attrs.field(default="supergroup", validator=_check_principal)
    root_mode: int = attrs.field(default=0o755)
    request_memory: int = attrs.field(default=REQUEST_MEMORY)
    _nodes: dict[int, Node] = attrs.field(init=False, factory=dict, repr=False)
    _next_inode: int = attrs.field(init=False, default=ROOT_INODE + 1)
    _next_chunk_id: int = attrs.field(init=False, default=FIRST_CHUNK_ID)
    # Files under construction, so that expired_leases need not scan the tree.
    _open_files: set[int] = attrs.field(init=False, factory=set, repr=False)
    # chunk id -> inode of the file holding it: dataserver reports ask about chunks
    # by id, millions at a time, and must not search the tree.
    _chunk_files: dict[int, int] = attrs.field(init=False, factory=dict, repr=False)
    # Dataservers an administrator is draining (by name), and the manual safe mode.
    _decommissioned: set[str] = attrs.field(init=False, factory=set)
    _safe_mode: bool = attrs.field(init=False, default=False)
    # chunk id -> version of each chunk a mutation freed (a file deleted, replaced or
    # overwritten) whose replicas may still be on dataservers. Replicated, so that a
    # leader elected after the mutation deletes them too; the leader forgets them
    # (ForgetFreedChunks) once no dataserver holds one, which keeps it small.
    _freed: dict[int, int] = attrs.field(init=False, factory=dict)
    # group -> its members, both sorted (deterministic snapshots and listings).
    _groups: dict[str, builtins.list[str]] = attrs.field(init=False, factory=dict)
    # directory inode -> its quota and use, kept up to date by every change below it.
    _quotas: dict[int, Quota] = attrs.field(init=False, factory=dict)
    # (user, request id) -> result, oldest first; keyed by user too so that one client
    # cannot read another's results by guessing its request ids.
    _applied: dict[tuple[str, str], Ok[Any] | Err] = attrs.field(
        init=False, factory=dict, repr=False
    )
    # directory inode -> its children's names, sorted, so that a page of a listing
    # costs its own length rather than the directory's. Built when a directory is
    # first listed by pages, then kept up to date by _link and _unlink. Not state:
    # never snapshotted nor compared, and a restored namespace starts without it.
    _sorted_names: dict[int, builtins.list[str]] = attrs.field(
        init=False, factory=dict, repr=False, eq=False
    )

    @root_mode.validator
    def _check_root_mode(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MODE:
            raise ValueError(f"root_mode must be an integer within 0..0o7777, not {shown(value)}")

    @request_memory.validator
    def _check_request_memory(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"request_memory must be a non-negative integer, not {shown(value)}")

    def __attrs_post_init__(self) -> None:
        self._nodes[ROOT_INODE] = DirectoryNode(
            inode=ROOT_INODE,
            parent=ROOT_INODE,
            name="",
            owner=self.root_owner,
            group=self.root_group,
            mode=self.root_mode,
            mtime=0.0,
        )

    # ----------------------------------------------------------------- replicated entry

    def apply(self, operation: Operation) -> Ok[Any] | Err:
        """Apply one operation; never raises. Same request id, same result, applied once."""
        try:
            return self._apply(operation)
        except Exception as error:
            # Last line of defence: a raise here would wedge every replica.
            return internal_error(f"applying {type(operation).__name__}", error)

    def _apply(self, operation: Operation) -> Ok[Any] | Err:
        try:
            operation = check_common(operation)
        except Refused as refusal:
            return refusal.err
        key = (operation.caller.user, operation.request_id) if operation.request_id else None
        if key is not None:
            previous = self._applied.get(key)
            if previous is not None:
                return previous
        result: Ok[Any] | Err
        try:
            result = self._dispatch(operation)
        except Refused as refusal:
            result = refusal.err
        except Exception as error:
            result = internal_error(f"applying {type(operation).__name__}", error)
        if key is not None:
            self._remember(key, result)
        return result

    def _remember(self, key: tuple[str, str], result: Ok[Any] | Err) -> None:
        self._applied[key] = result
        # Dicts keep insertion order, so the oldest id goes first on every replica.
        while len(self._applied) > self.request_memory:
            del self._applied[next(iter(self._applied))]

    def _dispatch(self, op: Operation) -> Ok[Any]:
        match op:
            case Mkdir():
                return self._mkdir(op)
            case CreateWithChunk():
                return self._create_with_chunk(op)
            case Create():
                return self._create(op)
            case CreateClosed():
                return self._create_closed(op)
            case CommitClose():
                return self._commit_close(op)
            case AddChunk():
                return self._add_chunk(op)
            case BumpChunkVersion():
                return self._bump_chunk_version(op)
            case CommitChunk():
                return self._commit_chunk(op)
            case RenewLease():
                return self._renew_lease(op)
            case Close():
                return self._close(op)
            case RecoverLease():
                return self._recover_lease(op)
            case Delete():
                return self._delete(op)
            case Rename():
                return self._rename(op)
            case SetReplication():
                return self._set_replication(op)
            case Chmod():
                return self._chmod(op)
            case Chown():
                return self._chown(op)
            case ChangeGroup():
                return self._change_group(op)
            case AddUser():
                return self._add_user(op)
            case SetQuota():
                return self._set_quota(op)
            case SetDecommission():
                return self._set_decommission(op)
            case SetSafeMode():
                return self._set_safe_mode(op)
            case ForgetFreedChunks():
                return self._forget_freed_chunks(op)
        raise Refused(errors.InvalidArgument, f"unknown operation {type(op).__name__}")

    # ----------------------------------------------------------------- queries

    # Queries take the caller whose permissions apply; None is the server itself
    # (the replication monitor, fsck), which sees everything.

    def stat(self, path: str, caller: Caller | None = None) -> Ok[Stat] | Err:
        """The entry at ``path`` (search permission on the way suffices)."""
        return self._query(self._stat_query, path, caller)

    # Named like the shell command; return annotations below this method spell the
    # builtin as builtins.list because mypy resolves them in the class scope.
    def list(self, path: str, caller: Caller | None = None) -> Ok[tuple[Stat, ...]] | Err:
        """A directory's entries sorted by name (read permission on it); a file lists
        as itself (like ``ls``)."""
        return self._query(self._list_query, path, caller)

    def list_page(
        self,
        path: str,
        caller: Caller | None = None,
        start_after: str = "",
        limit: int = 1000,
    ) -> Ok[DirectoryPage] | Err:
        """One page of :meth:`list`: the entries named after ``start_after`` (all
        from the first when it is ""), at most ``limit`` of them, and whether more
        follow. Only the entries of the page are looked at, so paging through a
        directory of n entries costs O(n) in all, not O(n^2)."""
        return self._query(
            lambda path, who: self._list_page_query(path, who, start_after, limit), path, caller
        )

    def du(self, path: str, caller: Caller | None = None) -> Ok[Usage] | Err:
        """Files, directories and bytes (plain and times replication) under ``path``;
        the caller needs read and search on every directory below it."""
        return self._query(self._du_query, path, caller)

    def chunks(self, path: str, caller: Caller | None = None) -> Ok[tuple[ChunkRef, ...]] | Err:
        """A file's chunks in order (the last ones may be pending while it is written);
        reading them needs read permission on the file."""
        return self._query(self._chunks_query, path, caller)

    def quota(self, path: str, caller: Caller | None = None) -> Ok[QuotaUsage] | Err:
        """A directory's quota and use (both limits None when it has none)."""
        return self._query(self._quota_query, path, caller)

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Every group and its members, sorted by name."""
        return {group: tuple(members) for group, members in sorted(self._groups.items())}

    def groups_of(self, user: str) -> tuple[str, ...]:
        """The groups ``user`` belongs to, sorted."""
        return tuple(sorted(group for group, members in self._groups.items() if user in members))

    def is_superuser(self, caller: Caller) -> bool:
        """True for an admin certificate and for members of the superuser group."""
        return self._who(caller).superuser

    def expired_leases(self, now: float) -> builtins.list[ExpiredLease]:
        """Files whose write lease ran out by ``now``, in path order, for the leader to
        recover (by inode: a rename meanwhile does not lose them)."""
        expired = []
        for number in self._open_files:
            node = self._nodes[number]
            if isinstance(node, FileNode) and node.lease is not None:
                if now >= node.lease.expires:
                    expired.append(ExpiredLease(node.inode, self._path_of(node)))
        return sorted(expired, key=lambda lease: lease.path)

    def stat_inode(self, inode: int, path: str = "") -> Ok[Stat] | Err:
        """The file numbered ``inode``, at its current path, for its writer: the
        lease is its permission, so nothing is checked. FileNotFound (naming
        ``path``, where the writer last knew it) once it was deleted or replaced."""
        try:
            node = self._file_numbered(inode, path)
            return Ok(self._stat(self._path_of(node), node))
        except Refused as refusal:
            return refusal.err
        except Exception as error:
            return internal_error(f"reading inode {shown(inode)}", error)

    def chunk_version(self, chunk_id: int) -> int | None:
        """The current version of a chunk some file holds; None for an unknown or
        freed chunk (an orphan replica). Tells stale replicas from good ones."""
        chunk = self._chunk(chunk_id)
        return None if chunk is None else chunk[1].version

    def chunk_target(self, chunk_id: int) -> ChunkTarget | None:
        """Version, length and replication factor of a chunk some file holds; None
        for an unknown or freed chunk. Cheap: the replication monitor asks it of
        every replica it looks at."""
        chunk = self._chunk(chunk_id)
        if chunk is None:
            return None
        node, ref = chunk
        return ChunkTarget(ref.chunk_id, ref.version, ref.length, node.replication)

    def committed_chunk_count(self) -> int:
        """Chunks holding data: every chunk but those still being written."""
        pending = 0
        for number in self._open_files:
            node = self._nodes[number]
            if isinstance(node, FileNode):
                pending += len(_pending(node))
        return len(self._chunk_files) - pending

    def freed_chunks(self) -> dict[int, int]:
        """chunk id -> version of the chunks freed by a mutation whose replicas are
        still to be deleted from the dataservers."""
        return dict(self._freed)

    @property
    def decommissioned(self) -> frozenset[str]:
        """Names of the dataservers being drained (or drained)."""
        return frozenset(self._decommissioned)

    @property
    def safe_mode(self) -> bool:
        """True while an administrator's safe mode is on."""
        return self._safe_mode

    def tree(self, path: str) -> Ok[Tree] | Err:
        """Directories and files' chunks under ``path``, for fsck."""
        return self._query(lambda path, _who: self._tree_query(path), path, None)

    def chunk_file(self, chunk_id: int) -> Stat | None:
        """The file holding a chunk (its replication is the chunk's target), or None."""
        chunk = self._chunk(chunk_id)
        return None if chunk is None else self._stat(self._path_of(chunk[0]), chunk[0])

    def _chunk(self, chunk_id: int) -> tuple[FileNode, ChunkRef] | None:
        number = self._chunk_files.get(chunk_id)
        if number is None:
            return None
        node = self._nodes[number]
        assert isinstance(node, FileNode)
        # Chunks are appended and only the pending ones at the end change, so the one
        # asked about is almost always near the end.
        for chunk in reversed(node.chunks):
            if chunk.chunk_id == chunk_id:
                return node, chunk
        return None

    def __getstate__(self) -> dict[str, Any]:
        state = {
            field.name: getattr(self, field.name)
            for field in attrs.fields(type(self))
            if field.name not in _NOT_STATE
        }
        # The nodes without the table's keys, their own inode numbers: pickle keeps
        # no single copy of an int, so each key would load as one more object.
        state["_nodes"] = builtins.list(self._nodes.values())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A snapshot written by an older version lacks the fields added since (groups,
        # quotas, freed chunks): they start out as their defaults, so an upgraded
        # metaserver loads it.
        for field in attrs.fields(type(self)):
            if field.name in state:
                value = state[field.name]
            elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                value = field.default.factory()
            else:
                value = field.default
            object.__setattr__(self, field.name, value)
        if isinstance(self._nodes, builtins.list):
            object.__setattr__(self, "_nodes", {node.inode: node for node in self._nodes})
        self._share_loaded()

    def _share_loaded(self) -> None:
        """Give a loaded namespace the shapes and the sharing a live one has.

        Pickle keeps one copy of an object referred to several times, but not of an
        int: a loaded inode number is a new object in the node, in its directory and
        in each child's parent pointer (and, in older snapshots, in the table).
        Older snapshots also keep owners, modes and chunk sizes once per node, and a
        file's chunks in a list.
        """
        # The table's keys become the one object for each inode number; a damaged
        # snapshot (a dangling number) loads as it is, for verify() to report.
        numbers = {number: number for number in self._nodes}
        for number, node in self._nodes.items():
            if node.inode == number:
                object.__setattr__(node, "inode", number)
            object.__setattr__(node, "parent", numbers.get(node.parent, node.parent))
            parent = self._nodes.get(node.parent)
            # A directory loads its children's names (see _PickledAsList); the
            # numbers come from the children.
            if (
                isinstance(parent, DirectoryNode)
                and parent is not node
                and node.name in parent.children
                and parent.children[node.name] is None
            ):
                parent.children[node.name] = node.inode
            object.__setattr__(node, "owner", _interned(node.owner))
            object.__setattr__(node, "group", _interned(node.group))
            object.__setattr__(node, "mode", _shared_int(node.mode))
            if isinstance(node, DirectoryNode):
                children = node.children
                for name, child in children.items():
                    if child is not None:
                        children[name] = numbers.get(child, child)
            else:
                object.__setattr__(node, "chunk_size", _shared_int(node.chunk_size))
                if type(node.chunks) is not tuple:
                    object.__setattr__(node, "chunks", tuple(node.chunks))

    def snapshot(self) -> bytes:
        """The whole state as bytes; :meth:`restore` gives back an equal namespace."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, data: bytes) -> Namespace:
        """Load a :meth:`snapshot` (trusted data only: this is pickle)."""
        namespace = pickle.loads(data)
        if not isinstance(namespace, cls):
            raise TypeError(f"snapshot holds a {type(namespace).__name__}, not a {cls.__name__}")
        return namespace

    def write_snapshot(self, out: SupportsWrite[bytes], batch: int = SNAPSHOT_BATCH) -> None:
        """Write the whole state to ``out`` as a stream of pickles that
        :meth:`read_snapshot` reads back: the fields but the nodes (with the number
        of nodes), then the nodes ``batch`` at a time, then an empty batch.

        Unlike :meth:`snapshot` nothing is whole in memory: the bytes go to ``out``
        as they are made, and the pickler forgets what it wrote after each batch (it
        remembers every object of one pickle, which for the whole namespace at once
        would be several objects per node)."""
        pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
        state = {
            field.name: getattr(self, field.name)
            for field in attrs.fields(type(self))
            if field.name not in _NOT_STATE and field.name != "_nodes"
        }
        state["_nodes"] = len(self._nodes)
        pickler.dump(state)
        nodes = iter(self._nodes.values())
        while True:
            pickler.clear_memo()
            part = builtins.list(itertools.islice(nodes, batch))
            pickler.dump(part)
            if not part:
                return

    @classmethod
    def read_snapshot(cls, source: IO[bytes]) -> Namespace:
        """Load what :meth:`write_snapshot` wrote, reading ``source`` as it goes
        (trusted data only: this is pickle). ValueError if it is not whole."""
        # One unpickler per pickle: each numbers its objects from 0, as the pickler
        # forgot them after each.
        state = pickle.Unpickler(source).load()
        if not isinstance(state, dict) or type(state.get("_nodes")) is not int:
            raise ValueError("the snapshot does not start with a namespace's fields")
        count = state["_nodes"]
        nodes: builtins.list[Node] = []
        while True:
            part = pickle.Unpickler(source).load()
            if not part or len(nodes) > count:
                break
            nodes.extend(part)
        if len(nodes) != count:
            raise ValueError(f"the snapshot holds {len(nodes)} nodes, its header says {count}")
        state["_nodes"] = nodes
        namespace = cls.__new__(cls)
        namespace.__setstate__(state)
        return namespace

    @property
    def next_inode(self) -> int:
        return self._next_inode

    @property
    def next_chunk_id(self) -> int:
        return self._next_chunk_id

    @property
    def entry_count(self) -> int:
        """Files and directories, the root included."""
        return len(self._nodes)

    def verify(self) -> builtins.list[str]:
        """Check the internal invariants; returns what is wrong (nothing, normally).

        For tests and for a paranoid check after loading a snapshot.
        """
        problems: list[str] = []
        root = self._nodes.get(ROOT_INODE)
        if not isinstance(root, DirectoryNode):
            return ["the root directory is missing"]
        seen: set[int] = {ROOT_INODE}
        chunk_ids: set[int] = set()
        open_files: set[int] = set()
        # Its own traversal rather than _walk: a damaged tree may have cycles or
        # dangling children, and this must report them rather than loop or raise.
        stack: list[Node] = [root]
        while stack:
            node = stack.pop()
            if isinstance(node, DirectoryNode):
                for name, number in node.children.items():
                    child = self._nodes.get(number)
                    if child is None:
                        problems.append(f"inode {node.inode} lists missing inode {number}")
                    elif number in seen:
                        problems.append(f"inode {number} ({name!r}) is reachable twice")
                    else:
                        seen.add(number)
                        stack.append(child)
            if node.inode >= self._next_inode:
                problems.append(f"inode {node.inode} is not below the counter")
            if node.inode != ROOT_INODE:
                parent = self._nodes.get(node.parent)
                if (
                    not isinstance(parent, DirectoryNode)
                    or parent.children.get(node.name) != node.inode
                ):
                    problems.append(f"inode {node.inode} has a wrong parent pointer or name")
            if isinstance(node, FileNode):
                if node.length != sum(chunk.length for chunk in node.chunks):
                    problems.append(f"inode {node.inode} length is not the sum of its chunks")
                if node.lease is not None:
                    open_files.add(node.inode)
                for chunk in node.chunks:
                    if chunk.chunk_id in chunk_ids or chunk.chunk_id >= self._next_chunk_id:
                        problems.append(f"chunk {chunk.chunk_id} is duplicated or not counted")
                    if self._chunk_files.get(chunk.chunk_id) != node.inode:
                        problems.append(f"chunk {chunk.chunk_id} is not indexed to its file")
                    chunk_ids.add(chunk.chunk_id)
        if seen != set(self._nodes):
            problems.append(f"{len(set(self._nodes) - seen)} inodes are not reachable")
        if len(self._chunk_files) != len(chunk_ids):
            problems.append("the chunk index holds chunks no file has")
        if open_files != self._open_files:
            problems.append("the set of files under construction is out of date")
        if not chunk_ids.isdisjoint(self._freed):
            problems.append("a freed chunk is still held by a file")
        for inode, names in self._sorted_names.items():
            directory = self._nodes.get(inode)
            if not isinstance(directory, DirectoryNode) or names != sorted(directory.children):
                problems.append(f"the sorted names of inode {inode} are out of date")
        for inode, quota in self._quotas.items():
            directory = self._nodes.get(inode)
            if not isinstance(directory, DirectoryNode):
                problems.append(f"a quota is kept for inode {inode}, not a directory")
            elif (quota.names, quota.space) != self._usage_of(directory):
                problems.append(f"the quota use of inode {inode} is out of date")
        return problems

    # ----------------------------------------------------------------- lookups

    def _query(
        self,
        query: Callable[[str, Principal | None], T],
        path: str,
        caller: Caller | None,
    ) -> Ok[T] | Err:
        try:
            who = None if caller is None else self._who(check_caller(caller))
            return Ok(query(valid_path(path), who))
        except Refused as refusal:
            return refusal.err
        except Exception as error:
            return internal_error(f"reading {shown(path)}", error)

    # ----------------------------------------------------------------- permissions

    def _who(self, caller: Caller) -> Principal:
        return permissions.principal(caller, self._groups, self.root_group)

    def _require(self, who: Principal | None, node: Node, want: int, path: str) -> None:
        """Refuse unless ``who`` has the ``want`` bits on ``node`` (at ``path``)."""
        if who is None or who.superuser:
            return
        permissions.require(
            who,
            node,
            want,
            path,
            directory=isinstance(node, DirectoryNode),
            where=lambda: self._path_of(node),
        )

    def _require_unlink(
        self, who: Principal | None, parent: DirectoryNode, node: Node, path: str
    ) -> None:
        """Refuse unless ``who`` may remove ``node`` from ``parent``: write and search
        on the directory, and in a sticky one, owning the entry or the directory."""
        if who is None or who.superuser:
            return
        permissions.require_unlink(who, parent, node, path, lambda: self._path_of(parent))

    def _require_subtree(self, who: Principal | None, top: Node, path: str) -> None:
        """For a recursive delete: ``who`` must be able to list and empty every
        directory below ``top`` (read, write and search; sticky rules inside)."""
        if who is None or who.superuser:
            return
        for node in self._walk(top):
            if isinstance(node, DirectoryNode) and node.children:
                self._require(who, node, READ | WRITE | EXECUTE, path)
                for number in node.children.values():
                    self._require_unlink(who, node, self._nodes[number], path)

    # ----------------------------------------------------------------- quotas

    def _usage_of(self, top: Node) -> tuple[int, int]:
        """Names and space under ``top`` (itself included), as quotas count them."""
        names = space = 0
        for node in self._walk(top):
            names += 1
            if isinstance(node, FileNode):
                space += _file_space(node)
        return names, space

    def _quotas_above(self, directory: DirectoryNode) -> builtins.list[tuple[int, Quota]]:
        """The quotas of ``directory`` and of every directory above it."""
        if not self._quotas:
            return []
        found = []
        node = directory
        while True:
            quota = self._quotas.get(node.inode)
            if quota is not None:
                found.append((node.inode, quota))
            if node.inode == ROOT_INODE:
                return found
            parent = self._nodes[node.parent]
            assert isinstance(parent, DirectoryNode)
            node = parent

    def _check_quota(
        self,
        directory: DirectoryNode,
        names: int,
        space: int,
        path: str,
        skip: frozenset[int] = frozenset(),
    ) -> None:
        """Refuse with QuotaExceeded if adding ``names`` and ``space`` below
        ``directory`` would take a quota above it past its limit."""
        for inode, quota in self._quotas_above(directory):
            if inode not in skip:
                quota.check(names, space, path, partial(self._path_of, self._nodes[inode]))

    def _charge(
        self,
        directory: DirectoryNode,
        names: int,
        space: int,
        skip: frozenset[int] = frozenset(),
    ) -> None:
        """Count ``names`` and ``space`` (either may be negative) below ``directory``."""
        for inode, quota in self._quotas_above(directory):
            if inode not in skip:
                quota.charge(names, space)

    def _parent_of(self, node: Node) -> DirectoryNode:
        parent = self._nodes[node.parent]
        assert isinstance(parent, DirectoryNode)
        return parent

    def _locate(
        self, path: str, who: Principal | None = None
    ) -> tuple[DirectoryNode | None, str, Node | None]:
        """(parent directory, name, node) for a normalized path; node None if the last
        component is missing. Refuses if a directory on the way is missing or a file,
        or if ``who`` may not search one. The root has no parent: (None, "", root)."""
        node: Node = self._root()
        if path == paths.ROOT:
            return None, "", node
        names = paths.components(path)
        last = len(names) - 1
        parent = node
        for depth, name in enumerate(names):
            if not isinstance(node, DirectoryNode):
                raise Refused(
                    errors.NotADirectory,
                    f"{printable(path)}: {_prefix(names, depth)} is not a directory",
                )
            self._require(who, node, EXECUTE, path)
            parent = node
            number = node.children.get(name)
            if number is None:
                if depth == last:
                    return parent, name, None
                raise Refused(
                    errors.FileNotFound,
                    f"{printable(path)}: directory {_prefix(names, depth + 1)} does not exist",
                )
            node = self._nodes[number]
        assert isinstance(parent, DirectoryNode)
        return parent, names[last], node

    def _root(self) -> DirectoryNode:
        root = self._nodes[ROOT_INODE]
        assert isinstance(root, DirectoryNode)
        return root

    def _existing(self, path: str, who: Principal | None = None) -> Node:
        _parent, _name, node = self._locate(path, who)
        if node is None:
            raise Refused(errors.FileNotFound, f"{printable(path)}: no such file or directory")
        return node

    def _file(self, path: str, who: Principal | None = None) -> FileNode:
        node = self._existing(path, who)
        if not isinstance(node, FileNode):
            raise Refused(errors.IsADirectory, f"{printable(path)}: is a directory")
        return node

    def _file_numbered(self, inode: object, path: str) -> FileNode:
        """The file numbered ``inode``, wherever it is now; ``path`` is where the
        caller last knew it, for the refusal."""
        number = valid_integer(inode, "inode", ROOT_INODE, _MAX_INT)
        node = self._nodes.get(number)
        if not isinstance(node, FileNode):
            # Inode numbers are never used again: the file is gone.
            raise Refused(
                errors.FileNotFound,
                f"{printable(path)}: no such file: it was deleted or replaced while being "
                f"written (inode {number})",
            )
        return node

    def _writable(self, path: str, holder: str, inode: object = BY_PATH) -> tuple[str, FileNode]:
        """The file under construction whose lease ``holder`` holds, and its path: the
        file numbered ``inode`` wherever a rename took it, or (BY_PATH) the one at
        ``path``.

        The holder may go on past its lease's expiry as long as nobody recovered the
        file or took it over: there is no one it could conflict with.
        """
        if inode == BY_PATH:
            node = self._file(path)
        else:
            node = self._file_numbered(inode, path)
            path = self._path_of(node)
        if node.lease is None:
            raise Refused(errors.LeaseConflict, f"{printable(path)}: is not open for writing")
        if node.lease.holder != holder:
            raise Refused(
                errors.LeaseConflict,
                f"{printable(path)}: is being written by {printable(node.lease.holder)}, not "
                f"{printable(holder)}",
            )
        return path, node

    def _path_of(self, node: Node) -> str:
        names = []
        while node.inode != ROOT_INODE:
            names.append(node.name)
            node = self._nodes[node.parent]
        return "/" + "/".join(reversed(names))

    def _walk(self, top: Node) -> Iterator[Node]:
        """``top`` and everything below it, depth first in name order (deterministic
        everywhere, and iterative: trees can be deeper than Python's recursion limit)."""
        stack: list[Node] = [top]
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, DirectoryNode):
                for name in sorted(node.children, reverse=True):
                    stack.append(self._nodes[node.children[name]])

    def _stat(self, path: str, node: Node) -> Stat:
        if isinstance(node, DirectoryNode):
            return Stat(
                path=path,
                name=node.name,
                kind=DIRECTORY,
                inode=node.inode,
                owner=node.owner,
                group=node.group,
                mode=node.mode,
                mtime=node.mtime,
                length=0,
                replication=0,
                chunk_size=0,
                complete=True,
                under_construction=None,
            )
        return Stat(
            path=path,
            name=node.name,
            kind=FILE,
            inode=node.inode,
            owner=node.owner,
            group=node.group,
            mode=node.mode,
            mtime=node.mtime,
            length=node.length,
            replication=node.replication,
            chunk_size=node.chunk_size,
            complete=node.lease is None,
            under_construction=None if node.lease is None else node.lease.holder,
        )

    def _stat_query(self, path: str, who: Principal | None) -> Stat:
        return self._stat(path, self._existing(path, who))

    def _list_query(self, path: str, who: Principal | None) -> tuple[Stat, ...]:
        node = self._existing(path, who)
        if isinstance(node, FileNode):
            return (self._stat(path, node),)
        self._require(who, node, READ, path)
        return tuple(
            self._stat(paths.join(path, name), self._nodes[node.children[name]])
            for name in self._sorted_names_of(node)
        )

    def _list_page_query(
        self, path: str, who: Principal | None, start_after: object, limit: object
    ) -> DirectoryPage:
        if not isinstance(start_after, str):
            raise Refused(
                errors.InvalidArgument, f"start_after must be a string, not {shown(start_after)}"
            )
        count = valid_integer(limit, "limit", 1, _MAX_INT)
        node = self._existing(path, who)
        if isinstance(node, FileNode):
            included = not start_after or node.name > start_after
            return DirectoryPage(_columns([path], [node] if included else []), False)
        self._require(who, node, READ, path)
        names = self._sorted_names_of(node)
        first = bisect.bisect_right(names, start_after) if start_after else 0
        last = min(first + count, len(names))
        chosen = names[first:last]
        children, nodes = node.children, self._nodes
        prefix = path if path == paths.ROOT else path + "/"
        return DirectoryPage(
            _columns(
                [prefix + name for name in chosen], [nodes[children[name]] for name in chosen]
            ),
            last < len(names),
        )

    def _sorted_names_of(self, directory: DirectoryNode) -> builtins.list[str]:
        names = self._sorted_names.get(directory.inode)
        if names is None:
            names = self._sorted_names[directory.inode] = sorted(directory.children)
        return names

    def _du_query(self, path: str, who: Principal | None) -> Usage:
        files = directories = size = replicated = 0
        for node in self._walk(self._existing(path, who)):
            if isinstance(node, DirectoryNode):
                self._require(who, node, READ | EXECUTE, path)
                directories += 1
            else:
                files += 1
                size += node.length
                replicated += node.length * node.replication
        return Usage(files=files, directories=directories, bytes=size, replicated_bytes=replicated)

    def _tree_query(self, path: str) -> Tree:
        directories = 0
        files = []
        top = self._existing(path)
        for node in self._walk(top):
            if isinstance(node, DirectoryNode):
                directories += 1
            else:
                files.append(
                    FileChunks(
                        path=self._path_of(node),
                        replication=node.replication,
                        complete=node.lease is None,
                        length=node.length,
                        chunks=node.chunks,
                    )
                )
        return Tree(directories=directories, files=tuple(files))

    def _quota_query(self, path: str, who: Principal | None) -> QuotaUsage:
        node = self._existing(path, who)
        if not isinstance(node, DirectoryNode):
            raise Refused(errors.NotADirectory, f"{printable(path)}: quotas are set on directories")
        quota = self._quotas.get(node.inode)
        if quota is None:
            names, space = self._usage_of(node)
            return QuotaUsage(path, None, None, names, space)
        return QuotaUsage(path, quota.files, quota.bytes, quota.names, quota.space)

    def _chunks_query(self, path: str, who: Principal | None) -> tuple[ChunkRef, ...]:
        node = self._file(path, who)
        self._require(who, node, READ, path)
        return node.chunks

    # ----------------------------------------------------------------- changes
    # Below, everything before the first assignment to the state may refuse; nothing
    # after it may.

    def _link(self, parent: DirectoryNode, name: str, node: Node) -> None:
        """Enter ``node`` in ``parent`` under ``name`` (a name it does not hold)."""
        parent.children[name] = node.inode
        names = self._sorted_names.get(parent.inode)
        if names is not None:
            bisect.insort(names, name)

    def _unlink(self, parent: DirectoryNode, name: str) -> None:
        """Take ``name`` out of ``parent``."""
        del parent.children[name]
        names = self._sorted_names.get(parent.inode)
        if names is not None:
            del names[bisect.bisect_left(names, name)]

    def _add_directory(
        self, parent: DirectoryNode, name: str, mode: int, owner: str, now: float
    ) -> DirectoryNode:
        node = DirectoryNode(
            inode=self._next_inode,
            parent=parent.inode,
            name=name,
            owner=owner,
            # BSD/HDFS rule: a new entry takes its directory's group.
            group=parent.group,
            mode=mode,
            mtime=now,
        )
        self._next_inode += 1
        self._nodes[node.inode] = node
        self._link(parent, name, node)
        parent.mtime = now
        self._charge(parent, 1, 0)
        return node

    def _remove(self, parent: DirectoryNode, name: str, top: Node) -> tuple[ChunkRef, ...]:
        """Unlink ``top`` and drop its subtree; returns the chunks freed."""
        below = list(self._walk(top))
        if self._quotas:
            names, space = self._usage_of(top)
            self._charge(parent, -names, -space)
        self._unlink(parent, name)
        freed: list[ChunkRef] = []
        for node in below:
            del self._nodes[node.inode]
            self._quotas.pop(node.inode, None)
            self._sorted_names.pop(node.inode, None)
            if isinstance(node, FileNode):
                freed.extend(node.chunks)
                self._open_files.discard(node.inode)
                for chunk in node.chunks:
                    del self._chunk_files[chunk.chunk_id]
                    self._freed[chunk.chunk_id] = chunk.version
        return tuple(freed)

    def _mkdir(self, op: Mkdir) -> Ok[Stat]:
        path = valid_path(op.path)
        mode = valid_mode(op.mode)
        parents = valid_flag(op.parents, "parents")
        now = float(op.now)
        who = self._who(op.caller)
        if not parents:
            parent, name, node = self._locate(path, who)
            if node is not None:
                raise Refused(errors.FileExists, f"{printable(path)}: already exists")
            assert parent is not None  # only the root has none, and it exists
            self._require(who, parent, WRITE | EXECUTE, path)
            self._check_quota(parent, 1, 0, path)
            return Ok(
                self._stat(path, self._add_directory(parent, name, mode, op.caller.user, now))
            )
        # mkdir -p: walk as far as the tree goes, then create the rest.
        names = paths.components(path)
        directory = self._root()
        missing = len(names)
        for depth, name in enumerate(names):
            self._require(who, directory, EXECUTE, path)
            number = directory.children.get(name)
            if number is None:
                missing = depth
                break
            node = self._nodes[number]
            if not isinstance(node, DirectoryNode):
                if depth == len(names) - 1:
                    raise Refused(errors.FileExists, f"{printable(path)}: already exists as a file")
                raise Refused(
                    errors.NotADirectory,
                    f"{printable(path)}: {_prefix(names, depth + 1)} is not a directory",
                )
            directory = node
        if missing < len(names):
            self._require(who, directory, WRITE | EXECUTE, path)
            self._check_quota(directory, len(names) - missing, 0, path)
        for depth in range(missing, len(names)):
            # As mkdir -p does, directories made on the way can be entered and
            # written by their owner whatever the mode asked for the last one.
            made = mode if depth == len(names) - 1 else mode | 0o300
            directory = self._add_directory(directory, names[depth], made, op.caller.user, now)
        return Ok(self._stat(path, directory))

    def _create(self, op: Create) -> Ok[CreateResult]:
        now = float(op.now)
        lease = Lease(valid_holder(op.lease_holder), valid_expiry(op.lease_expires, now))
        return Ok(self._new_file(op, lease))

    def _create_closed(self, op: CreateClosed) -> Ok[CreateResult]:
        return Ok(self._new_file(op, None))

    def _create_with_chunk(self, op: CreateWithChunk) -> Ok[CreateResult]:
        created = self._create(op).value
        path = valid_path(op.path)
        first = AddChunk(path, op.lease_holder, op.lease_expires, caller=op.caller, now=op.now)
        try:
            chunk = self._add_chunk(first).value
        except Refused:
            # AddChunk refuses before it changes anything: the file stands without
            # its first chunk, as a Create alone would have left it.
            return Ok(created)
        return Ok(attrs.evolve(created, chunk=chunk))

    def _new_file(self, op: Create | CreateClosed, lease: Lease | None) -> CreateResult:
        """A new file at ``op.path``, open under ``lease`` or (None) complete."""
        path = valid_path(op.path)
        mode = valid_mode(op.mode)
        replication = valid_integer(op.replication, "replication", 1, MAX_REPLICATION)
        chunk_size = valid_integer(op.chunk_size, "chunk size", 1, MAX_CHUNK_SIZE)
        overwrite = valid_flag(op.overwrite, "overwrite")
        holder = lease.holder if lease is not None else None
        now = float(op.now)
        who = self._who(op.caller)
        parent, name, node = self._locate(path, who)
        if isinstance(node, DirectoryNode):
            if overwrite:
                raise Refused(errors.IsADirectory, f"{printable(path)}: is a directory")
            raise Refused(errors.FileExists, f"{printable(path)}: already exists as a directory")
        if node is not None:
            if not overwrite:
                raise Refused(errors.FileExists, f"{printable(path)}: already exists")
            self._require(who, node, WRITE, path)
            current = node.lease
            if current is not None and current.holder != holder and now < current.expires:
                raise Refused(
                    errors.LeaseConflict,
                    f"{printable(path)}: is being written by {printable(current.holder)} "
                    f"(lease until {current.expires})",
                )
        assert parent is not None  # "/" is a directory, refused above
        owner, group = op.caller.user, parent.group
        if node is None:
            self._require(who, parent, WRITE | EXECUTE, path)
            self._check_quota(parent, 1, 0, path)
        else:
            # Overwriting is truncating: the file stays whose it was.
            owner, group, mode = node.owner, node.group, node.mode
        freed = self._remove(parent, name, node) if node is not None else ()
        # A replaced file gets a new inode, as in HDFS: it is a new file.
        new = FileNode(
            inode=self._next_inode,
            parent=parent.inode,
            name=name,
            owner=owner,
            group=group,
            mode=mode,
            mtime=now,
            replication=replication,
            chunk_size=chunk_size,
            lease=lease,
        )
        self._next_inode += 1
        self._nodes[new.inode] = new
        if lease is not None:
            self._open_files.add(new.inode)
        self._link(parent, name, new)
        parent.mtime = now
        self._charge(parent, 1, 0)
        return CreateResult(stat=self._stat(path, new), freed=freed)

    def _add_chunk(self, op: AddChunk) -> Ok[ChunkRef]:
        path = valid_path(op.path)
        holder = valid_holder(op.lease_holder)
        expires = valid_expiry(op.lease_expires, float(op.now))
        path, node = self._writable(path, holder, op.inode)
        pending = _pending(node)
        if len(pending) >= MAX_PENDING_CHUNKS:
            raise Refused(
                errors.InvalidArgument,
                f"{printable(path)}: chunk {node.chunks[pending[0]].chunk_id} must be committed "
                "before another chunk is added",
            )
        # The whole chunk is set aside until its length is known (as HDFS does), so
        # that writers sharing a quota cannot all pass the check and overrun it.
        reserved = node.chunk_size * node.replication
        self._check_quota(self._parent_of(node), 0, reserved, path)
        self._charge(self._parent_of(node), 0, reserved)
        chunk = ChunkRef(chunk_id=self._next_chunk_id, version=1, length=0)
        self._next_chunk_id += 1
        node.chunks = (*node.chunks, chunk)
        self._chunk_files[chunk.chunk_id] = node.inode
        node.lease = Lease(holder, expires)
        return Ok(chunk)

    def _pending_chunk(self, path: str, node: FileNode, chunk_id: object) -> int:
        """The index of a pending chunk of ``node``; only those may change."""
        valid_integer(chunk_id, "chunk id", FIRST_CHUNK_ID, _MAX_INT)
        for index in _pending(node):
            if node.chunks[index].chunk_id == chunk_id:
                return index
        if any(chunk.chunk_id == chunk_id for chunk in node.chunks):
            raise Refused(
                errors.InvalidArgument, f"{printable(path)}: chunk {chunk_id} is already committed"
            )
        raise Refused(
            errors.InvalidArgument, f"{printable(path)}: chunk {chunk_id} is not being written"
        )

    def _committed_again(self, node: FileNode, op: CommitChunk) -> ChunkRef | None:
        """A commit that repeats the one a chunk already had (a retry): nothing to do."""
        for chunk in reversed(node.chunks):
            if chunk.chunk_id == op.chunk_id:
                if chunk.length and (chunk.version, chunk.length) == (op.version, op.length):
                    return chunk
                return None
        return None

    def _bump_chunk_version(self, op: BumpChunkVersion) -> Ok[ChunkRef]:
        path = valid_path(op.path)
        path, node = self._writable(path, valid_holder(op.lease_holder), op.inode)
        index = self._pending_chunk(path, node, op.chunk_id)
        bumped = attrs.evolve(node.chunks[index], version=node.chunks[index].version + 1)
        node.chunks = _replaced(node.chunks, index, bumped)
        return Ok(bumped)

    def _commit_chunk(self, op: CommitChunk) -> Ok[ChunkRef]:
        path = valid_path(op.path)
        path, node = self._writable(path, valid_holder(op.lease_holder), op.inode)
        again = self._committed_again(node, op)
        if again is not None:
            return Ok(again)
        index = self._pending_chunk(path, node, op.chunk_id)
        chunk = node.chunks[index]
        if index > 0 and node.chunks[index - 1].length == 0:
            raise Refused(
                errors.InvalidArgument,
                f"{printable(path)}: chunk {chunk.chunk_id} cannot be committed before chunk "
                f"{node.chunks[index - 1].chunk_id}",
            )
        version = valid_integer(op.version, "version", 1, _MAX_INT)
        if version != chunk.version:
            raise Refused(
                errors.StaleChunk,
                f"{printable(path)}: chunk {chunk.chunk_id} is at version {chunk.version}, not "
                f"{version}",
            )
        length = valid_integer(op.length, "chunk length", 1, node.chunk_size)
        committed = attrs.evolve(chunk, length=length)
        node.chunks = _replaced(node.chunks, index, committed)
        node.length += length
        self._charge(self._parent_of(node), 0, (length - node.chunk_size) * node.replication)
        return Ok(committed)

    def _renew_lease(self, op: RenewLease) -> Ok[Stat]:
        path = valid_path(op.path)
        holder = valid_holder(op.lease_holder)
        expires = valid_expiry(op.lease_expires, float(op.now))
        path, node = self._writable(path, holder, op.inode)
        node.lease = Lease(holder, expires)
        return Ok(self._stat(path, node))

    def _close(self, op: Close) -> Ok[Stat]:
        path = valid_path(op.path)
        path, node = self._writable(path, valid_holder(op.lease_holder), op.inode)
        length = valid_integer(op.length, "length", 0, _MAX_INT)
        if length != node.length:
            raise Refused(
                errors.InvalidArgument,
                f"{printable(path)}: length {length} is not the committed length {node.length}",
            )
        self._complete(node, float(op.now))
        return Ok(self._stat(path, node))

    def _commit_close(self, op: CommitClose) -> Ok[Stat]:
        path = valid_path(op.path)
        holder = valid_holder(op.lease_holder)
        path, node = self._writable(path, holder, op.inode)
        length = valid_integer(op.length, "length", 0, _MAX_INT)
        chunk_length = valid_integer(op.chunk_length, "chunk length", 0, node.chunk_size)
        commit = CommitChunk(
            path,
            holder,
            op.chunk_id,
            op.version,
            chunk_length,
            caller=op.caller,
            now=op.now,
            inode=node.inode,
        )
        if chunk_length == 0:
            index = self._pending_chunk(path, node, op.chunk_id)
            if index != len(node.chunks) - 1:
                raise Refused(
                    errors.InvalidArgument,
                    f"{printable(path)}: chunk {op.chunk_id} is not the file's last chunk",
                )
            committed = node.length
        elif self._committed_again(node, commit) is not None:
            committed = node.length
        else:
            committed = node.length + chunk_length
        if length != committed:
            raise Refused(
                errors.InvalidArgument,
                f"{printable(path)}: length {length} is not the committed length {committed}",
            )
        if chunk_length == 0:
            # Never written: its reservation ends with the others' in _complete.
            self._charge(self._parent_of(node), 0, -node.chunk_size * node.replication)
            del self._chunk_files[node.chunks[-1].chunk_id]
            node.chunks = node.chunks[:-1]
        else:
            # Refuses (a stale version, an earlier chunk pending) before any change.
            self._commit_chunk(commit)
        self._complete(node, float(op.now))
        return Ok(self._stat(path, node))

    def _complete(self, node: FileNode, now: float) -> None:
        # Chunks still being written hold no byte: their reservation ends here.
        reserved = len(_pending(node)) * node.chunk_size * node.replication
        if reserved:
            self._charge(self._parent_of(node), 0, -reserved)
        node.lease = None
        node.mtime = now
        self._open_files.discard(node.inode)

    def _recover_lease(self, op: RecoverLease) -> Ok[Stat]:
        path = valid_path(op.path)
        if op.inode == BY_PATH:
            node = self._file(path)
        else:
            node = self._file_numbered(op.inode, path)
            path = self._path_of(node)
        now = float(op.now)
        lease = node.lease
        if lease is not None:
            if now < lease.expires and not op.caller.superuser:
                raise Refused(
                    errors.LeaseConflict,
                    f"{printable(path)}: the lease of {printable(lease.holder)} runs until "
                    f"{lease.expires}",
                )
            # A chunk added but never committed holds no acknowledged byte: it goes,
            # and its partial replicas are discarded by the dataservers as abandoned.
            reserved = len(_pending(node)) * node.chunk_size * node.replication
            self._charge(self._parent_of(node), 0, -reserved)
            while node.chunks and node.chunks[-1].length == 0:
                del self._chunk_files[node.chunks[-1].chunk_id]
                node.chunks = node.chunks[:-1]
            self._complete(node, now)
        # An already complete file is not an error: the writer may have closed it
        # between the leader's decision and this entry.
        return Ok(self._stat(path, node))

    def _delete(self, op: Delete) -> Ok[DeleteResult]:
        path = valid_path(op.path)
        recursive = valid_flag(op.recursive, "recursive")
        if path == paths.ROOT:
            raise Refused(errors.InvalidPath, "/: the root directory cannot be deleted")
        who = self._who(op.caller)
        parent, name, node = self._locate(path, who)
        if node is None:
            raise Refused(errors.FileNotFound, f"{printable(path)}: no such file or directory")
        assert parent is not None
        self._require_unlink(who, parent, node, path)
        if isinstance(node, DirectoryNode) and node.children:
            if not recursive:
                raise Refused(
                    errors.DirectoryNotEmpty, f"{printable(path)}: directory is not empty"
                )
            self._require_subtree(who, node, path)
        freed = self._remove(parent, name, node)
        parent.mtime = float(op.now)
        return Ok(DeleteResult(freed=freed))

    def _rename(self, op: Rename) -> Ok[RenameResult]:
        src = valid_path(op.src)
        dst = valid_path(op.dst)
        if paths.ROOT in (src, dst):
            raise Refused(
                errors.InvalidPath,
                f"{printable(src)} -> {printable(dst)}: cannot rename the root directory",
            )
        who = self._who(op.caller)
        src_parent, src_name, node = self._locate(src, who)
        if node is None:
            raise Refused(errors.FileNotFound, f"{printable(src)}: no such file or directory")
        if src == dst:
            return Ok(RenameResult(stat=self._stat(dst, node)))
        if isinstance(node, DirectoryNode) and paths.is_ancestor(src, dst):
            raise Refused(
                errors.InvalidPath,
                f"{printable(src)} -> {printable(dst)}: cannot move a directory into itself",
            )
        dst_parent, dst_name, replaced = self._locate(dst, who)
        assert src_parent is not None and dst_parent is not None
        self._require_unlink(who, src_parent, node, src)
        if replaced is None:
            self._require(who, dst_parent, WRITE | EXECUTE, dst)
        else:
            self._require_unlink(who, dst_parent, replaced, dst)
        if isinstance(node, DirectoryNode) and src_parent is not dst_parent:
            self._require(who, node, WRITE, src)  # its ".." changes
        if replaced is not None and not (
            isinstance(replaced, FileNode) and isinstance(node, FileNode)
        ):
            raise Refused(errors.FileExists, f"{printable(dst)}: already exists")
        # Quotas above the destination only gain the entry, those above the source
        # only lose it; those above both see no change.
        above_src = frozenset(inode for inode, _ in self._quotas_above(src_parent))
        above_dst = frozenset(inode for inode, _ in self._quotas_above(dst_parent))
        moved = (0, 0)
        if above_src != above_dst:
            moved = self._usage_of(node)
            names, space = moved
            if replaced is not None:
                replaced_names, replaced_space = self._usage_of(replaced)
                names, space = names - replaced_names, space - replaced_space
            self._check_quota(dst_parent, names, space, dst, skip=above_src)
        now = float(op.now)
        freed = self._remove(dst_parent, dst_name, replaced) if replaced is not None else ()
        self._unlink(src_parent, src_name)
        if above_src != above_dst:
            self._charge(src_parent, -moved[0], -moved[1], skip=above_dst)
            self._charge(dst_parent, moved[0], moved[1], skip=above_src)
        self._link(dst_parent, dst_name, node)
        node.parent = dst_parent.inode
        node.name = dst_name
        src_parent.mtime = now
        dst_parent.mtime = now
        return Ok(RenameResult(stat=self._stat(dst, node), freed=freed))

    def _set_replication(self, op: SetReplication) -> Ok[Stat]:
        path = valid_path(op.path)
        replication = valid_integer(op.replication, "replication", 1, MAX_REPLICATION)
        who = self._who(op.caller)
        node = self._file(path, who)
        self._require(who, node, WRITE, path)
        space = _file_space(node)
        change = space // node.replication * replication - space
        self._check_quota(self._parent_of(node), 0, change, path)
        self._charge(self._parent_of(node), 0, change)
        node.replication = replication
        return Ok(self._stat(path, node))

    def _chmod(self, op: Chmod) -> Ok[Stat]:
        path = valid_path(op.path)
        mode = valid_mode(op.mode)
        who = self._who(op.caller)
        node = self._existing(path, who)
        if not who.superuser and who.user != node.owner:
            raise Refused(
                errors.PermissionDenied,
                f"{printable(path)}: permission denied: only its owner "
                f"({printable(node.owner)}) or a "
                "superuser may change its mode",
            )
        node.mode = mode
        return Ok(self._stat(path, node))

    def _chown(self, op: Chown) -> Ok[Stat]:
        path = valid_path(op.path)
        owner = None if op.owner is None else valid_name(op.owner, "owner")
        group = None if op.group is None else valid_name(op.group, "group")
        who = self._who(op.caller)
        node = self._existing(path, who)
        if not who.superuser:
            # POSIX chown/chgrp: a non-superuser may only keep the owner as it is, and
            # only the owner may change the group, to one they belong to.
            if who.user != node.owner:
                raise Refused(
                    errors.PermissionDenied,
                    f"{printable(path)}: permission denied: only its owner "
                    f"({printable(node.owner)}) or a "
                    "superuser may change its owner or group",
                )
            if owner is not None and owner != node.owner:
                raise Refused(
                    errors.PermissionDenied,
                    f"{printable(path)}: permission denied: only a superuser may give it to "
                    f"{printable(owner)}",
                )
            if group is not None and group != node.group and group not in who.groups:
                raise Refused(
                    errors.PermissionDenied,
                    f"{printable(path)}: permission denied: {who.user} is not a member of group "
                    f"{printable(group)}",
                )
        if owner is not None:
            node.owner = owner
        if group is not None:
            node.group = group
        return Ok(self._stat(path, node))

    def _change_group(self, op: ChangeGroup) -> Ok[tuple[str, ...]]:
        self._require_superuser(op.caller, "change groups")
        group = valid_name(op.group, "group")
        add = valid_flag(op.add, "add")
        if not isinstance(op.users, tuple) or not op.users:
            raise Refused(errors.InvalidArgument, "name at least one user")
        users = {valid_name(user, "user") for user in op.users}
        members = set(self._groups.get(group, ()))
        if add:
            if group not in self._groups and len(self._groups) >= MAX_GROUPS:
                raise Refused(errors.InvalidArgument, f"there are {MAX_GROUPS} groups already")
            members |= users
            if len(members) > MAX_GROUP_MEMBERS:
                raise Refused(
                    errors.InvalidArgument,
                    f"group {group} would have more than {MAX_GROUP_MEMBERS} members",
                )
        else:
            if group not in self._groups:
                raise Refused(errors.InvalidArgument, f"there is no group {group}")
            members -= users
        if members:
            self._groups[group] = sorted(members)
        else:
            self._groups.pop(group, None)
        return Ok(tuple(sorted(members)))

    def _add_user(self, op: AddUser) -> Ok[Stat]:
        self._require_superuser(op.caller, "add users")
        name = valid_name(op.name, "user name")
        now = float(op.now)
        root = self._root()
        number = root.children.get(USER_HOME[1:])
        home = None if number is None else self._nodes[number]
        if home is not None and not isinstance(home, DirectoryNode):
            raise Refused(errors.NotADirectory, f"{USER_HOME}: is not a directory")
        if home is not None and name in home.children:
            raise Refused(errors.FileExists, f"{USER_HOME}/{name}: already exists")
        if home is None:
            self._check_quota(root, 2, 0, f"{USER_HOME}/{name}")
        else:
            self._check_quota(home, 1, 0, f"{USER_HOME}/{name}")
        if home is None:
            home = self._add_directory(root, USER_HOME[1:], 0o755, self.root_owner, now)
        directory = self._add_directory(home, name, 0o750, name, now)
        directory.group = name
        return Ok(self._stat(f"{USER_HOME}/{name}", directory))

    def _set_quota(self, op: SetQuota) -> Ok[QuotaUsage]:
        self._require_superuser(op.caller, "set quotas")
        path = valid_path(op.path)
        clear = valid_flag(op.clear, "clear")
        files = None if op.files is None else valid_integer(op.files, "name quota", 1, _MAX_INT)
        size = None if op.bytes is None else valid_integer(op.bytes, "space quota", 0, _MAX_INT)
        node = self._existing(path)
        if not isinstance(node, DirectoryNode):
            raise Refused(errors.NotADirectory, f"{printable(path)}: quotas are set on directories")
        quota = self._quotas.get(node.inode)
        if clear:
            self._quotas.pop(node.inode, None)
        elif files is not None or size is not None:
            if quota is None:
                names, space = self._usage_of(node)
                quota = self._quotas[node.inode] = Quota(None, None, names, space)
            if files is not None:
                quota.files = files
            if size is not None:
                quota.bytes = size
        return Ok(self._quota_query(path, None))

    def _require_superuser(self, caller: Caller, doing: str) -> None:
        if not self._who(caller).superuser:
            raise Refused(
                errors.PermissionDenied, f"permission denied: only a superuser may {doing}"
            )

    def _forget_freed_chunks(self, op: ForgetFreedChunks) -> Ok[int]:
        if not self._who(op.caller).superuser:
            raise Refused(errors.PermissionDenied, "only a superuser may forget freed chunks")
        if not isinstance(op.chunk_ids, tuple) or len(op.chunk_ids) > MAX_FORGET:
            raise Refused(
                errors.InvalidArgument,
                f"chunk ids must be a tuple of at most {MAX_FORGET}, not {shown(op.chunk_ids)}",
            )
        chunk_ids = [valid_integer(c, "chunk id", 0, _MAX_INT) for c in op.chunk_ids]
        forgotten = 0
        for chunk_id in chunk_ids:
            if self._freed.pop(chunk_id, None) is not None:
                forgotten += 1
        return Ok(forgotten)

    def _set_decommission(self, op: SetDecommission) -> Ok[frozenset[str]]:
        if not self._who(op.caller).superuser:
            raise Refused(errors.PermissionDenied, "only a superuser may decommission")
        name = valid_name(op.dataserver, "dataserver name")
        on = valid_flag(op.on, "on")
        if on:
            self._decommissioned.add(name)
        else:
            self._decommissioned.discard(name)
        return Ok(frozenset(self._decommissioned))

    def _set_safe_mode(self, op: SetSafeMode) -> Ok[bool]:
        if not self._who(op.caller).superuser:
            raise Refused(errors.PermissionDenied, "only a superuser may change safe mode")
        self._safe_mode = valid_flag(op.on, "on")
        return Ok(self._safe_mode)
