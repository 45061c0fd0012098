"""The records :meth:`Namespace.apply <dfs.metaserver.namespace.Namespace.apply>`
takes and gives back, and the checks of their fields.

An operation (:class:`Mkdir`, :class:`Create`, ...) is one entry of the replicated
log: the leader builds it, PySyncObj pickles it into the log, and every metaserver
applies it to its namespace. An outcome is :class:`Ok` or :class:`Err`, never an
exception: a replicated method that raises wedges the Raft group. The namespace's
checks raise :class:`Refused`, which it turns into an :class:`Err` before ``apply``
returns; the ``valid_*`` functions here are those checks for the fields an operation
carries, so that a malformed entry is refused with one line rather than breaking a
handler.

Pickles name a class by its module: these classes pickle under
:mod:`dfs.metaserver.namespace`, where they were first defined (see the list there),
so snapshots and journals written before and after this module existed read alike.
"""

from __future__ import annotations

import math
from typing import Any, Final, Generic, NoReturn, TypeVar

import attrs

from dfs.protocol import errors, paths
from dfs.security.identity import validate_name

T = TypeVar("T")

#: Field defaults and bounds of the operations.
MiB: Final = 1024 * 1024
DEFAULT_CHUNK_SIZE: Final = 64 * MiB
#: A chunk is one file on a dataserver disk; beyond this, re-replication of one chunk
#: takes too long and a bad chunk costs too much to re-read.
MAX_CHUNK_SIZE: Final = 1024 * MiB
DEFAULT_REPLICATION: Final = 3
MAX_REPLICATION: Final = 32
MAX_MODE: Final = 0o7777
#: Lease holders are client session names; a bound keeps one bad value from bloating
#: every snapshot.
MAX_HOLDER_LENGTH: Final = 255
#: Most chunk ids one ForgetFreedChunks entry carries: keeps each log entry small.
MAX_FORGET: Final = 10_000
#: errors.py has no dedicated class for a bug in the state machine; its base class is
#: the one name the reactor side can always turn into an exception.
INTERNAL_ERROR: Final = errors.DFSError.__name__
#: The ``inode`` of an operation on a file being written that names the file by its
#: path only, as every such entry written before writers followed their file does.
BY_PATH: Final = 0

C = TypeVar("C", bound=type)


# --------------------------------------------------------------------------- results


@attrs.frozen
class Ok(Generic[T]):
    """A successful operation or query and what it produced."""

    value: T

    @property
    def ok(self) -> bool:
        return True

    def unwrap(self) -> T:
        return self.value


@attrs.frozen
class Err:
    """A refused operation: ``error`` names a class of :mod:`dfs.protocol.errors`."""

    error: str
    message: str

    @property
    def ok(self) -> bool:
        return False

    def exception(self) -> errors.DFSError:
        """The exception the reactor side raises for this refusal."""
        error_class = getattr(errors, self.error, None)
        if not (isinstance(error_class, type) and issubclass(error_class, errors.DFSError)):
            error_class = errors.DFSError
        return error_class(self.message)

    def unwrap(self) -> NoReturn:
        raise self.exception()


Result = Ok[T] | Err


# --------------------------------------------------------------------------- operations


def _inode_optional(cls: C) -> C:
    """Let ``cls`` carry an ``inode`` that old log entries lack.

    The operations a writer sends name their file by inode (``BY_PATH``: by path),
    a field added after journals and snapshots holding them were written. Such an old
    entry loads with ``inode`` BY_PATH, and an entry by path pickles without the
    field, byte for byte as before, so that an earlier release reads it."""
    getstate: Any = cls.__getstate__
    setstate: Any = getattr(cls, "__setstate__")  # noqa: B009 (attrs adds it)

    def get_state(self: Any) -> dict[str, Any]:
        state: dict[str, Any] = getstate(self)
        if state.get("inode") == BY_PATH:
            del state["inode"]
        return state

    def set_state(self: Any, state: Any) -> None:
        object.__setattr__(self, "inode", BY_PATH)
        setstate(self, state)

    setattr(cls, "__getstate__", get_state)  # noqa: B010 (mypy: methods are read-only)
    setattr(cls, "__setstate__", set_state)  # noqa: B010
    return cls


@attrs.frozen
class Caller:
    """Who asks for an operation, as the reactor side established it: the user is
    the name in the certificate, ``superuser`` is true for an admin certificate.
    Groups are not the caller's to say: the namespace knows who is in which."""

    user: str
    superuser: bool = False


@attrs.frozen
class Operation:
    """Fields every operation carries; keyword-only so each operation's own fields
    can be given positionally.

    ``now`` is the leader's clock when it accepted the request: replicas applying the
    entry later must all see the same time. ``request_id`` ("" for none) lets a client
    retry a mutation whose outcome it did not learn without applying it twice.
    """

    caller: Caller = attrs.field(kw_only=True)
    now: float = attrs.field(kw_only=True)
    request_id: str = attrs.field(default="", kw_only=True)


@attrs.frozen
class Mkdir(Operation):
    path: str
    mode: int = 0o755
    parents: bool = False


@attrs.frozen
class Create(Operation):
    """Create a file and open it for writing under a lease."""

    path: str
    mode: int = 0o644
    replication: int = DEFAULT_REPLICATION
    chunk_size: int = DEFAULT_CHUNK_SIZE
    overwrite: bool = False
    lease_holder: str = attrs.field(kw_only=True)
    lease_expires: float = attrs.field(kw_only=True)


@_inode_optional
@attrs.frozen
class AddChunk(Operation):
    """Append a new, empty chunk to a file under construction (and renew the lease).

    The chunk is *pending* until committed; a file has at most MAX_PENDING_CHUNKS."""

    path: str
    lease_holder: str
    lease_expires: float
    #: The file's inode (BY_PATH: ``path`` names it): its writer follows it through
    #: renames, and ``path`` only names it in messages.
    inode: int = attrs.field(default=BY_PATH, kw_only=True)


@_inode_optional
@attrs.frozen
class BumpChunkVersion(Operation):
    """Pipeline recovery: give a pending chunk a new version so stale replicas show."""

    path: str
    lease_holder: str
    chunk_id: int
    #: The file's inode (BY_PATH: ``path`` names it): its writer follows it through
    #: renames, and ``path`` only names it in messages.
    inode: int = attrs.field(default=BY_PATH, kw_only=True)


@_inode_optional
@attrs.frozen
class CommitChunk(Operation):
    """Record the acknowledged length (at least one byte) of the file's first pending
    chunk: chunks are committed in order."""

    path: str
    lease_holder: str
    chunk_id: int
    version: int
    length: int
    #: The file's inode (BY_PATH: ``path`` names it): its writer follows it through
    #: renames, and ``path`` only names it in messages.
    inode: int = attrs.field(default=BY_PATH, kw_only=True)


@_inode_optional
@attrs.frozen
class RenewLease(Operation):
    path: str
    lease_holder: str
    lease_expires: float
    #: The file's inode (BY_PATH: ``path`` names it): its writer follows it through
    #: renames, and ``path`` only names it in messages.
    inode: int = attrs.field(default=BY_PATH, kw_only=True)


@_inode_optional
@attrs.frozen
class Close(Operation):
    """Complete a file; ``length`` must be the sum of its committed chunk lengths."""

    path: str
    lease_holder: str
    length: int
    #: The file's inode (BY_PATH: ``path`` names it): its writer follows it through
    #: renames, and ``path`` only names it in messages.
    inode: int = attrs.field(default=BY_PATH, kw_only=True)


@attrs.frozen
class CreateClosed(Operation):
    """Create an empty, complete file (no lease): an empty file in one entry."""

    path: str
    mode: int = 0o644
    replication: int = DEFAULT_REPLICATION
    chunk_size: int = DEFAULT_CHUNK_SIZE
    overwrite: bool = False


@attrs.frozen
class CreateWithChunk(Create):
    """Create a file open for writing, as :class:`Create`, and add its first chunk, as
    :class:`AddChunk`, in one entry. The chunk is left out (``CreateResult.chunk`` is
    None) where AddChunk would be refused, a quota for instance: the file is created
    all the same, and the writer's own AddChunk meets the refusal."""


@_inode_optional
@attrs.frozen
class CommitClose(Operation):
    """Commit the file's last pending chunk, as :class:`CommitChunk`, and close the
    file, as :class:`Close`, in one entry; ``chunk_length`` 0 drops that chunk instead
    (nothing was written to it). Nothing changes unless both parts can be done."""

    path: str
    lease_holder: str
    chunk_id: int
    version: int
    chunk_length: int
    length: int
    #: The file's inode (BY_PATH: ``path`` names it): its writer follows it through
    #: renames, and ``path`` only names it in messages.
    inode: int = attrs.field(default=BY_PATH, kw_only=True)


@_inode_optional
@attrs.frozen
class RecoverLease(Operation):
    """Close a file whose writer went away, at the length its chunks committed."""

    path: str
    #: The file's inode (BY_PATH: ``path`` names it): its writer follows it through
    #: renames, and ``path`` only names it in messages.
    inode: int = attrs.field(default=BY_PATH, kw_only=True)


@attrs.frozen
class Delete(Operation):
    path: str
    recursive: bool = False


@attrs.frozen
class Rename(Operation):
    src: str
    dst: str


@attrs.frozen
class SetReplication(Operation):
    path: str
    replication: int


@attrs.frozen
class Chmod(Operation):
    path: str
    mode: int


@attrs.frozen
class Chown(Operation):
    """Change owner and/or group; None leaves that one as it is."""

    path: str
    owner: str | None = None
    group: str | None = None


@attrs.frozen
class ChangeGroup(Operation):
    """Add ``users`` to ``group`` (``add``) or take them out; a group with no
    member left is gone. Superusers only."""

    group: str
    users: tuple[str, ...]
    add: bool


@attrs.frozen
class AddUser(Operation):
    """Give user ``name`` a home: ``/user/<name>`` owned by them, group ``name``,
    mode 0750 (``/user`` itself is made if missing). Superusers only."""

    name: str


@attrs.frozen
class SetQuota(Operation):
    """Set a directory's name quota (``files``) and/or space quota (``bytes``); None
    leaves that one as it is, ``clear`` removes both. Superusers only."""

    path: str
    files: int | None = None
    bytes: int | None = None
    clear: bool = False


@attrs.frozen
class SetDecommission(Operation):
    """Drain the dataserver named ``dataserver`` (``on``) or take it back: cluster
    state every leader must know, so it is replicated. Superusers only."""

    dataserver: str
    on: bool


@attrs.frozen
class SetSafeMode(Operation):
    """An administrator's safe mode: no namespace change until turned off.
    Superusers only."""

    on: bool


@attrs.frozen
class ForgetFreedChunks(Operation):
    """The freed chunks ``chunk_ids`` have no replica left on any dataserver: the
    namespace stops remembering them (see ``Namespace.freed_chunks``). The leader
    submits it, one entry for many chunks. Superusers only.

    New since the split, so it pickles under this module's name (the rule of
    ``namespace.PICKLED_HERE`` is for the classes that moved)."""

    chunk_ids: tuple[int, ...]


# --------------------------------------------------------------------------- checks


class Refused(Exception):
    """Raised by checks before any change; the namespace turns it into an Err before
    ``apply`` returns."""

    def __init__(self, error: type[errors.DFSError], message: str) -> None:
        super().__init__(message)
        self.err = Err(error.__name__, message)


def valid_mode(value: object) -> int:
    """A mode: permission bits and setuid/setgid/sticky, 0..0o7777."""
    return valid_integer(value, "mode", 0, MAX_MODE)


def valid_integer(value: object, what: str, low: int, high: int) -> int:
    """An int (not a bool) within ``low..high``; ``what`` names it in a refusal."""
    # bool is an int to Python, but True as a mode or a length is always a bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise Refused(errors.InvalidArgument, f"{what} must be an integer, not {shown(value)}")
    if not low <= value <= high:
        raise Refused(errors.InvalidArgument, f"{what} {shown(value)} is not within {low}..{high}")
    return value


def valid_flag(value: object, what: str) -> bool:
    """A bool; ``what`` names it in a refusal."""
    if not isinstance(value, bool):
        raise Refused(errors.InvalidArgument, f"{what} must be true or false, not {shown(value)}")
    return value


def valid_time(value: object, what: str) -> float:
    """A finite number of seconds, as a float."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            number = math.inf
        if math.isfinite(number):
            return number
    raise Refused(errors.InvalidArgument, f"{what} must be a finite number, not {shown(value)}")


def valid_holder(value: object) -> str:
    """A lease holder: a client session name of 1..MAX_HOLDER_LENGTH characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_HOLDER_LENGTH:
        raise Refused(
            errors.InvalidArgument,
            f"lease holder must be a string of 1..{MAX_HOLDER_LENGTH} characters, "
            f"not {shown(value)}",
        )
    return value


def valid_expiry(value: object, now: float) -> float:
    """A lease's expiry, after ``now``."""
    expires = valid_time(value, "lease expiry")
    if expires <= now:
        # A lease that is over before it starts is the caller's bug, not a decision.
        raise Refused(errors.InvalidArgument, f"lease expiry {expires} is not after now ({now})")
    return expires


def valid_name(value: object, what: str) -> str:
    """A user or group name, by the rule of names in certificates."""
    try:
        return validate_name(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise Refused(errors.InvalidArgument, f"{what}: {error}") from None


def valid_path(path: object) -> str:
    """The canonical form of a path (:func:`dfs.protocol.paths.normalize`)."""
    try:
        return paths.normalize(path)  # type: ignore[arg-type]
    except errors.InvalidPath as error:
        raise Refused(errors.InvalidPath, error.message) from None


def check_common(operation: object) -> Operation:
    """An operation with the fields every operation carries well formed."""
    if not isinstance(operation, Operation):
        raise Refused(
            errors.InvalidArgument, f"{type(operation).__name__} is not a namespace operation"
        )
    check_caller(operation.caller)
    valid_time(operation.now, "now")
    if not isinstance(operation.request_id, str):
        raise Refused(
            errors.InvalidArgument,
            f"request id must be a string, not {shown(operation.request_id)}",
        )
    return operation


def check_caller(caller: object) -> Caller:
    """A well-formed :class:`Caller`."""
    if not isinstance(caller, Caller):
        raise Refused(errors.InvalidArgument, f"caller must be a Caller, not {shown(caller)}")
    if not isinstance(caller.user, str) or not caller.user:
        raise Refused(
            errors.InvalidArgument,
            f"caller user must be a non-empty string, not {shown(caller.user)}",
        )
    valid_flag(caller.superuser, "caller superuser")
    return caller


def internal_error(doing: str, error: Exception) -> Err:
    """The Err for a bug met while ``doing`` something: apply() never raises."""
    # Only the exception's type and text: they are the same on every replica, unlike a
    # traceback, and the result may be remembered in the replicated state.
    try:
        text = str(error)[:200]
    except Exception:  # an exception whose __str__ fails must not escape apply()
        text = ""
    return Err(INTERNAL_ERROR, f"internal error {doing}: {type(error).__name__}: {text}")


def printable(text: str) -> str:
    """A path or name as messages show it: as is, unless that would break the line."""
    return text if text.isprintable() else repr(text)


def shown(value: object) -> str:
    """A value as a message shows it: short, one line, and the same on every replica
    (a plain object's repr carries its memory address)."""
    if isinstance(value, bool | float | None):
        return repr(value)
    if isinstance(value, int):
        # str() of a huge int raises ValueError (the int digit limit) and is unreadable.
        return (
            repr(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
        )
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:45] + "..." + text[-12:]
    return f"a {type(value).__name__}"
