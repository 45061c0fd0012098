"""The one place DFS meets PySyncObj: our Raft node, its transport and journal hand-over,
the base of replicated state machines and PySyncObj's snapshot format.

DFS keeps PySyncObj's Raft (elections, replication, membership, forked snapshots) and
changes how it stores and sends (see docs/architecture.md, "Metadata on disk"):
:class:`DurableSyncObj` runs PySyncObj over :class:`dfs.metaserver.journal.DurableJournal`
and holds every outgoing Raft message (but a leader's new entries, which acknowledge
nothing) while the journal has records not yet fsynced; the tick loop syncs the
journal (one fsync for everything added since the last) before each tick's commit
decisions and before held messages leave. So a follower's acknowledgement, a vote and
the leader's own count toward a majority all stand on records that are on disk.
Snapshots are fsynced and renamed durably (:func:`route_snapshot_renames`), and a
restart that finds a snapshot newer than the journal's start trims the journal to it
instead of throwing the journal away.

PySyncObj has no API for any of this, so this module reads and replaces private names
of PySyncObj 0.3.17. Every name it relies on is listed here: classes, methods (with
their parameters where DFS passes or receives them), module-level names it replaces,
the names PySyncObj's own code uses for the attributes DFS reads, and the journal
interface. Importing this module never fails for a missing one; :func:`check_supported`
looks for them all and raises :class:`Unsupported`, one line naming what is missing and
the supported version. The metaserver calls it before it opens its journal, and each
new node checks again that the attributes are there and that the transport and journal
handed over are the ones in use: a different PySyncObj stops the metaserver at start
instead of running a node without its durability.

Nothing else in DFS imports ``pysyncobj``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import importlib
import inspect
import os
import pickle
import signal
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any

from dfs.metaserver.journal import DurableJournal, Entry

#: The PySyncObj these private names were read from, and the range DFS accepts.
SUPPORTED = "pysyncobj 0.3.17 (DFS accepts >= 0.3.17, < 0.4)"

#: Modules not found at import, and every (module, name) looked up in one.
_missing_modules: list[str] = []
_module_names: list[tuple[Any, str]] = []


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing_modules.append(f"module {name}")
        return None


def _name(module: Any, name: str, stand_in: Any = None) -> Any:
    """``module.name``, or ``stand_in`` where it is missing, so that DFS still imports
    with any PySyncObj and :func:`check_supported` can say what is missing."""
    if module is None:
        return stand_in
    _module_names.append((module, name))
    return getattr(module, name, stand_in)


def _unavailable(*_args: Any, **_kwargs: Any) -> Any:
    raise Unsupported(_message(problems()))


_syncobj = _module("pysyncobj.syncobj")
_transport = _module("pysyncobj.transport")
_node = _module("pysyncobj.node")
_serializer = _module("pysyncobj.serializer")
_journal = _module("pysyncobj.journal")
_monotonic = _module("pysyncobj.monotonic")
_version = _module("pysyncobj.version")

SyncObjConf: Any = _name(_syncobj, "SyncObjConf", _unavailable)
#: What a ``callback`` of a replicated call or a membership change gets as its error.
FAIL_REASON: Any = _name(_syncobj, "FAIL_REASON")
#: The clock PySyncObj stamps partners' answers with (see DurableSyncObj.responses).
monotonic: Callable[[], float] = _name(_monotonic, "monotonic", time.monotonic)
_SyncObj: Any = _name(_syncobj, "SyncObj", object)
_SyncObjConsumer: Any = _name(_syncobj, "SyncObjConsumer", object)
_replicated: Any = _name(_syncobj, "replicated", lambda method: method)
_RAFT_STATE: Any = _name(_syncobj, "_RAFT_STATE")
_COMMAND_TYPE: Any = _name(_syncobj, "_COMMAND_TYPE")
_TCPTransport: Any = _name(_transport, "TCPTransport", object)
_TCPNode: Any = _name(_node, "TCPNode")
_Serializer: Any = _name(_serializer, "Serializer")
_Journal: Any = _name(_journal, "Journal")
_VERSION: str = _name(_version, "VERSION", "unknown")
# Replaced for a moment (createJournal) or for good (atomicReplace): looked up only to
# check that they are there.
_name(_syncobj, "createJournal")
_name(_serializer, "atomicReplace")

#: Methods and properties used, called or replaced, with the parameters DFS passes or
#: receives where that matters.
_CLASS_NAMES: tuple[tuple[Any, str, str, tuple[str, ...] | None], ...] = (
    (_SyncObj, "SyncObj", "__init__", None),
    (_SyncObj, "SyncObj", "_SyncObj__onMessageReceived", ("self", "node", "message")),
    (_SyncObj, "SyncObj", "_SyncObj__loadDumpFile", ("self", "clearJournal")),
    (_SyncObj, "SyncObj", "_SyncObj__updateClusterConfiguration", ("self", "newNodes")),
    (_SyncObj, "SyncObj", "_SyncObj__onSetCodeVersion", ("self", "newVersion")),
    (_SyncObj, "SyncObj", "_getLeader", None),
    (_SyncObj, "SyncObj", "_isLeader", None),
    (_SyncObj, "SyncObj", "doTick", None),
    (_SyncObj, "SyncObj", "addOnTickCallback", None),
    (_SyncObj, "SyncObj", "destroy", None),
    (_SyncObj, "SyncObj", "isReady", None),
    (_SyncObj, "SyncObj", "transferLeadership", None),
    (_SyncObj, "SyncObj", "addNodeToCluster", None),
    (_SyncObj, "SyncObj", "removeNodeFromCluster", None),
    (_SyncObj, "SyncObj", "raftLastApplied", None),
    (_SyncObj, "SyncObj", "raftCommitIndex", None),
    (_SyncObj, "SyncObj", "raftCurrentTerm", None),
    (_SyncObjConsumer, "SyncObjConsumer", "_serialize", ("self",)),
    (_SyncObjConsumer, "SyncObjConsumer", "_deserialize", ("self", "data")),
    (_TCPTransport, "TCPTransport", "__init__", ("self", "syncObj", "selfNode", "otherNodes")),
    (_TCPTransport, "TCPTransport", "send", ("self", "node", "message")),
    (_TCPTransport, "TCPTransport", "destroy", ("self",)),
    (_Serializer, "Serializer", "deserialize", ("self",)),
    (_RAFT_STATE, "_RAFT_STATE", "FOLLOWER", None),
    (_RAFT_STATE, "_RAFT_STATE", "CANDIDATE", None),
    (_RAFT_STATE, "_RAFT_STATE", "LEADER", None),
    (_COMMAND_TYPE, "_COMMAND_TYPE", "NO_OP", None),
    (FAIL_REASON, "FAIL_REASON", "SUCCESS", None),
    (FAIL_REASON, "FAIL_REASON", "REQUEST_DENIED", None),
)
#: SyncObj.__init__'s keyword parameters that DFS passes.
_INIT_PARAMETERS = ("consumers", "transportClass")
#: Attributes PySyncObj sets on a node (so they can be looked for only on one) and
#: module-level names it looks up when it runs (so replacing them reaches it). Each
#: must be named by the code of the class that owns it.
_CODE_NAMES: tuple[tuple[Any, str, tuple[str, ...]], ...] = (
    (
        _SyncObj,
        "SyncObj",
        (
            "createJournal",
            "_SyncObj__conf",
            "_SyncObj__consumers",
            "_SyncObj__lastResponseTime",
            "_SyncObj__noopIDx",
            "_SyncObj__otherNodes",
            "_SyncObj__raftCommitIndex",
            "_SyncObj__raftLastApplied",
            "_SyncObj__raftLog",
            "_SyncObj__raftMatchIndex",
            "_SyncObj__raftState",
            "_SyncObj__selfNode",
            "_SyncObj__serializer",
            "_SyncObj__transport",
        ),
    ),
    (_Serializer, "Serializer", ("atomicReplace", "_Serializer__pid")),
)
#: Attributes read on every node, checked once it is built.
_NODE_ATTRIBUTES = tuple(name for name in _CODE_NAMES[0][2] if name.startswith("_SyncObj__"))


class Unsupported(Exception):
    """The installed PySyncObj lacks something DFS relies on; one line."""


def _parameters(function: Any) -> tuple[str, ...] | None:
    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


def _code_names(cls: Any) -> set[str]:
    """Every attribute and global name the code of ``cls``'s own functions uses."""
    names: set[str] = set()
    pending: list[types.CodeType] = []
    for value in vars(cls).values():
        for function in (value.fget, value.fset) if isinstance(value, property) else (value,):
            if isinstance(function, types.FunctionType):
                pending.append(function.__code__)
    while pending:
        code = pending.pop()
        names.update(code.co_names)
        pending.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    return names


def problems() -> list[str]:
    """What DFS relies on and the installed PySyncObj lacks (empty when all is there)."""
    found = list(_missing_modules)
    found.extend(
        f"{module.__name__}.{name}" for module, name in _module_names if not hasattr(module, name)
    )
    for owner, owner_name, name, parameters in _CLASS_NAMES:
        if owner is None or owner is object:
            continue  # the class itself is missing, and already named
        if not hasattr(owner, name):
            found.append(f"{owner_name}.{name}")
        elif parameters is not None and _parameters(getattr(owner, name)) != parameters:
            found.append(f"{owner_name}.{name}({', '.join(parameters)})")
    if _SyncObj is not object:
        init = _parameters(_SyncObj.__init__) or ()
        found.extend(f"SyncObj.__init__({name}=)" for name in _INIT_PARAMETERS if name not in init)
    for owner, owner_name, needed in _CODE_NAMES:
        if owner is None or owner is object:
            continue
        names = _code_names(owner)
        found.extend(f"{owner_name} using {name}" for name in needed if name not in names)
    if _Journal is not None:
        # Every method of PySyncObj's journal interface, which SyncObj calls on ours.
        interface = [
            name
            for name, value in vars(_Journal).items()
            if isinstance(value, types.FunctionType) and name != "__init__"
        ]
        found.extend(
            f"DurableJournal.{name} (pysyncobj.journal.Journal has it)"
            for name in interface
            if not hasattr(DurableJournal, name)
        )
    return found


def _message(found: Sequence[str]) -> str:
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    return f"pysyncobj {_VERSION} is not supported: missing {shown}; DFS needs {SUPPORTED}"


def check_supported() -> None:
    """Raise :class:`Unsupported` (one line) if the installed PySyncObj lacks a name
    DFS relies on."""
    found = problems()
    if found:
        raise Unsupported(_message(found))


# -- replicated state --------------------------------------------------------------------


class ReplicatedState(_SyncObjConsumer):
    """Base of a state machine inside a :class:`DurableSyncObj`: its methods marked
    :func:`replicated` are applied on every member in log order, and the fields it
    sets after ``ReplicatedState.__init__`` are what snapshots hold."""


#: Marks a method of a :class:`ReplicatedState` as a log entry: calling it appends the
#: call to the log (with ``callback=`` for the result and a FAIL_REASON); every member
#: runs it once committed. It must never raise: that wedges the whole group.
replicated: Callable[[Callable[..., Any]], Callable[..., Any]] = _replicated


def role_of(state: int) -> str:
    """The name of a Raft state as PySyncObj's ``onStateChanged`` reports it."""
    if _RAFT_STATE is None:
        return str(state)
    roles = {
        _RAFT_STATE.FOLLOWER: "follower",
        _RAFT_STATE.CANDIDATE: "candidate",
        _RAFT_STATE.LEADER: "leader",
    }
    return roles.get(state, str(state))


# -- snapshots ---------------------------------------------------------------------------


def route_snapshot_renames(replace: Callable[[str, str], bool]) -> None:
    """Have PySyncObj put every new snapshot in place with ``replace(temporary, target)``
    (its own renames without fsync), also in the child it forks to write one."""
    check_supported()
    _serializer.atomicReplace = replace


def noop_entry(index: int, term: int) -> Entry:
    """The log entry a new leader appends at the start of its term."""
    check_supported()
    return (bytes([_COMMAND_TYPE.NO_OP]), index, term)


def write_full_dump(
    out: IO[bytes],
    consumers: Sequence[dict[str, Any]],
    before: Entry,
    last: Entry,
    members: Iterable[str],
) -> None:
    """Write to ``out`` a snapshot file as PySyncObj writes it (``fullDumpFile``): the
    fields of each consumer (what :class:`ReplicatedState` snapshots), the log's last
    two entries and the members' Raft addresses. The same arguments give the same
    bytes. The bytes go to ``out`` as they are compressed, never whole in memory."""
    check_supported()
    data = ([{}, *consumers], last, before, {_TCPNode(member) for member in members})
    # mtime 0: every member restored from one backup writes the same bytes.
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as compressed:
        pickle.dump(data, compressed, protocol=pickle.HIGHEST_PROTOCOL)


def node_at(address: str) -> Any:
    """PySyncObj's handle of the member at a Raft address (messages come from one)."""
    check_supported()
    return _TCPNode(address)


# -- the node ----------------------------------------------------------------------------


class SnapshotUnreadable(Exception):
    """The snapshot on disk cannot be loaded: starting without it would diverge."""


class DurableTransport(_TCPTransport):
    """PySyncObj's TCP transport, holding outgoing messages while the journal has
    unsynced records; :meth:`release` syncs the journal, then sends them in order.

    A leader's ``append_entries`` (only a leader sends them) is the one message that
    goes at once, while nothing is held: it acknowledges nothing, so the followers
    store and sync the new entries while the leader syncs its own. The leader counts
    itself toward a majority only at the start of its next tick, after the sync that
    ends this one; an entry a follower holds and the leader lost in a crash was never
    committed, never answered, and Raft lets the next leader keep or overwrite it."""

    #: What a node may send before its own journal is synced.
    UNHELD = "append_entries"

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self.journal: DurableJournal | None = None
        self._held: list[tuple[Any, Any]] = []

    def send(self, node: Any, message: Any) -> bool:
        if self._held or (
            self.journal is not None and self.journal.dirty and message.get("type") != self.UNHELD
        ):
            self._held.append((node, message))
            return True
        return bool(super().send(node, message))

    def release(self) -> None:
        if self.journal is not None:
            self.journal.sync()
        held, self._held = self._held, []
        for node, message in held:
            super().send(node, message)


@contextlib.contextmanager
def _journal_given(journal: DurableJournal) -> Iterator[None]:
    # SyncObj.__init__ builds its journal with the module's createJournal and offers
    # no parameter for another one: hand ours over for the length of the call.
    original = _syncobj.createJournal
    _syncobj.createJournal = lambda _path: journal
    try:
        yield
    finally:
        _syncobj.createJournal = original


class DurableSyncObj(_SyncObj):
    """A SyncObj over a :class:`DurableJournal`; see the module docstring. Build it in
    the thread that will tick it (``autoTick=False`` in ``conf``)."""

    def __init__(
        self,
        self_address: str,
        partners: list[str],
        conf: Any,
        consumers: list[ReplicatedState],
        journal: DurableJournal,
        applied: Callable[[], None] | None = None,
    ) -> None:
        check_supported()
        # Attributes set before SyncObj.__init__ stay out of its snapshots.
        self._journal = journal
        self._applied = applied
        with _journal_given(journal):
            super().__init__(
                self_address, partners, conf, consumers=consumers, transportClass=DurableTransport
            )
        self._check_built()
        self.transport.journal = journal
        self.addOnTickCallback(self.release)

    def _check_built(self) -> None:
        """What PySyncObj sets up in SyncObj.__init__ is there, and uses what DFS
        handed over: a node that held no messages or wrote PySyncObj's own journal
        would acknowledge what is not on disk."""
        found = [f"SyncObj().{name}" for name in _NODE_ATTRIBUTES if not hasattr(self, name)]
        if not found:
            if not isinstance(self._SyncObj__transport, DurableTransport):
                found.append("SyncObj() using transportClass")
            if self._SyncObj__raftLog is not self._journal:
                found.append("SyncObj() using createJournal")
        if found:
            with contextlib.suppress(Exception):
                self.destroy()
            raise Unsupported(_message(found))

    @property
    def transport(self) -> DurableTransport:
        return self._SyncObj__transport

    def release(self) -> None:
        """At the end of a tick: call ``applied`` (what this tick applied can be
        answered while the journal syncs), sync the journal and send the messages
        held until it was synced."""
        if self._applied is not None:
            self._applied()
        self.transport.release()

    # -- what the reactor asks -------------------------------------------------------

    def role(self) -> str:
        """ "leader", "candidate" or "follower"; a single read, safe from any thread."""
        return role_of(self._SyncObj__raftState)

    def leader_address(self) -> str | None:
        leader = self._getLeader()
        return None if leader is None else str(leader.address)

    def leader_settled(self) -> bool:
        """Leader, and its own term's first entry is applied: everything committed
        by earlier leaders is in the state it serves."""
        noop = self._SyncObj__noopIDx
        return bool(self._isLeader()) and noop is not None and self.raftLastApplied >= noop

    def responses(self) -> list[float]:
        """When each partner last answered this leader (:func:`monotonic` seconds)."""
        try:
            return list(self._SyncObj__lastResponseTime.values())
        except RuntimeError:  # changed size while being read: ask again next time
            return []

    def members(self) -> list[tuple[str, int]]:
        """The other members (raft addresses) and, on the leader, how far each has
        replicated the log (-1 elsewhere)."""
        for _ in range(3):  # the Raft thread may change them while we read
            try:
                nodes = [str(node.address) for node in list(self._SyncObj__otherNodes)]
                matched = {
                    str(node.address): index
                    for node, index in list(self._SyncObj__raftMatchIndex.items())
                }
                break
            except RuntimeError:
                continue
        else:
            return []
        leading = self._isLeader()
        return sorted((node, matched.get(node, -1) if leading else -1) for node in nodes)

    def halt(self) -> None:
        """Stop at once, as a crash would: nothing is synced; a snapshot being
        written by a child process is killed (tests cutting the power use this)."""
        self.end_snapshot(wait=0.0)
        self.transport.destroy()
        self._journal._destroy()

    def end_snapshot(self, wait: float) -> None:
        """Let a snapshot being written by a child process finish for up to ``wait``
        seconds, then kill it. The child holds copies of this process's listening
        sockets; left running it would keep the Raft port from a restarted node."""
        serializer = self._SyncObj__serializer
        pid = serializer._Serializer__pid
        if pid <= 0:
            return
        deadline = time.monotonic() + wait
        with contextlib.suppress(ChildProcessError):
            while time.monotonic() < deadline:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
                time.sleep(0.01)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        # A snapshot not seen to its end is not used: the next one starts afresh.
        serializer._Serializer__pid = 0

    # -- receiving ------------------------------------------------------------------------

    def receive(self, node: Any, message: dict[str, Any]) -> None:
        """Handle a Raft message from ``node`` (PySyncObj's transport calls this)."""
        # SyncObj's own handler takes the leader's commit index from every
        # append_entries and commits its log up to it, also from the messages that
        # carry no entries to check the log against: a snapshot sent in pieces, or
        # the "snapshot not ready yet" message. A follower whose log still holds
        # entries of a deposed leader then applies them: the replicas diverge. Only
        # messages that verified the log (or installed the whole snapshot) may
        # move the commit index.
        if message.get("type") == "append_entries" and "prevLogIdx" not in message:
            serialized = message.get("serialized")
            if serialized is None or not serialized[2]:
                message = {**message, "commit_index": 0}
            elif serialized[2]:
                # The last piece of the leader's snapshot: it is about to replace ours.
                # A snapshot of our own still being written is older; left to finish,
                # it would be renamed over the leader's, behind the journal's new start.
                self.end_snapshot(wait=0.0)
        _SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        self.receive(node, message)

    # -- loading a snapshot ------------------------------------------------------------

    def load_snapshot(self, clear_journal: bool) -> None:
        """Load the snapshot file into the consumers and line the journal up with it
        (PySyncObj calls this at start and when a leader's snapshot has arrived)."""
        # Replaces SyncObj's own: that one clears the whole journal when its first
        # entries are not the snapshot's last two, which after a crash between
        # writing a snapshot and trimming the journal throws committed entries away,
        # and it carries on with an empty state when the snapshot cannot be read.
        path = self._SyncObj__conf.fullDumpFile
        try:
            data = self._SyncObj__serializer.deserialize()
        except Exception as error:
            raise SnapshotUnreadable(f"{path}: {type(error).__name__}: {error}") from error
        if data[0] is not None:
            self_data, consumers_data = data[0][0], data[0][1:]
            for key, value in self_data.items():
                self.__dict__[key] = value
            for consumer, consumer_data in zip(
                self._SyncObj__consumers, consumers_data, strict=True
            ):
                consumer._deserialize(consumer_data)
        journal = self._SyncObj__raftLog
        before, last = tuple(data[2]), tuple(data[1])
        if not clear_journal and len(journal) and journal[0][1] > before[1]:
            # Entries between the snapshot and the journal's start are nowhere: going
            # on would silently drop them from this node.
            raise SnapshotUnreadable(
                f"{path} ends at entry {last[1]} but the journal starts at entry "
                f"{journal[0][1]}: entries in between are missing"
            )
        position = None if clear_journal else _position(journal, before, last)
        if position is None:
            journal.clear()
            journal.add(*before)
            journal.add(*last)
        elif position > 0:
            journal.deleteEntriesTo(position)
        self._SyncObj__raftLastApplied = last[1]
        commit_index: int = self._SyncObj__raftCommitIndex  # type: ignore[has-type]
        if commit_index > journal[-1][1]:
            self._SyncObj__raftCommitIndex = journal[-1][1]
        if self._SyncObj__conf.dynamicMembershipChange:
            me = self._SyncObj__selfNode
            self._SyncObj__updateClusterConfiguration([node for node in data[3] if node != me])
        self._SyncObj__onSetCodeVersion(0)
        release_free_memory()

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        self.load_snapshot(clearJournal)


def release_free_memory() -> None:
    """Give the C library's free memory back to the system, where it can (glibc).

    Loading a snapshot takes memory for a while (the unpickler keeps what it made
    until the end) and glibc keeps what was freed in the middle of its heap: a
    restarted metaserver would hold some 50 bytes per file more than it uses."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError, TypeError):
        return
    trim(0)


def _position(journal: DurableJournal, before: tuple, last: tuple) -> int | None:
    """Where the snapshot's last two entries sit in the journal, if they do."""
    if len(journal) < 2:
        return None
    position = before[1] - journal[0][1]
    if 0 <= position < len(journal) - 1:
        if tuple(journal[position]) == before and tuple(journal[position + 1]) == last:
            return position
    return None
