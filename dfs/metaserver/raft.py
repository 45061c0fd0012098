"""The bridge between the reactor and PySyncObj, which replicates the namespace.

PySyncObj runs its own thread. The namespace lives inside a :class:`NamespaceLog`
consumer whose single replicated method applies one operation; the reactor submits
operations and gets a Deferred that fires, in the reactor thread, only once the
operation is committed and applied. Nothing in the Raft thread touches Twisted
objects: results hop over with ``reactor.callFromThread``. Reads from the reactor
take the same lock as the Raft thread's apply, so they never see half an operation.

Durability (see docs/architecture.md, "Metadata on disk"): :class:`DurableSyncObj`
runs PySyncObj over :class:`dfs.metaserver.journal.DurableJournal` and holds every
outgoing Raft message while the journal has records not yet fsynced; the tick loop
syncs the journal (one fsync for everything added since the last) before each
tick's commit decisions and before held messages leave. So a follower's
acknowledgement, a vote and the leader's own count toward a majority all stand on
records that are on disk. Snapshots are fsynced and renamed durably, and a restart
that finds a snapshot newer than the journal's start trims the journal to it
instead of throwing the journal away.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs
import pysyncobj.syncobj
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.monotonic import monotonic
from pysyncobj.syncobj import _RAFT_STATE
from pysyncobj.transport import TCPTransport
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dfs.metaserver import filelayer
from dfs.metaserver.filelayer import FileLayer
from dfs.metaserver.journal import DurableJournal, JournalCorrupt, JournalFailed
from dfs.protocol.errors import InvalidArgument, NotLeader

T = TypeVar("T")


class StateMachine(Protocol):
    def apply(self, operation: Any) -> Any: ...


@attrs.frozen
class MemberAddress:
    """A metaserver's Raft address and the address clients reach it at, replicated
    by each new leader so that followers can send clients to it."""

    raft: str
    listen: str


class NamespaceLog(SyncObjConsumer):  # type: ignore[misc]
    """Holds the replicated state; PySyncObj pickles what is set after __init__."""

    def __init__(self, state: StateMachine) -> None:
        # Set before SyncObjConsumer.__init__ so that it is not part of snapshots.
        self._lock = threading.Lock()
        super().__init__()
        self.state = state
        #: Raft address -> client address of every metaserver that has led.
        self.addresses: dict[str, str] = {}

    @replicated  # type: ignore[misc]
    def apply(self, operation: Any) -> Any:
        # state.apply never raises: a raising replicated method wedges the group.
        with self._lock:
            if isinstance(operation, MemberAddress):
                self.addresses[operation.raft] = operation.listen
                return None
            return self.state.apply(operation)

    def read(self, query: Callable[[Any], T]) -> T:
        with self._lock:
            return query(self.state)

    def address_of(self, raft: str) -> str:
        """The client address of the member at ``raft``, "" if it never led."""
        with self._lock:
            return self.addresses.get(raft, "")


class SnapshotUnreadable(Exception):
    """The snapshot on disk cannot be loaded: starting without it would diverge."""


class DurableTransport(TCPTransport):  # type: ignore[misc]
    """PySyncObj's TCP transport, holding outgoing messages while the journal has
    unsynced records; :meth:`release` syncs the journal, then sends them in order."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self.journal: DurableJournal | None = None
        self._held: list[tuple[Any, Any]] = []

    def send(self, node: Any, message: Any) -> bool:
        if self._held or (self.journal is not None and self.journal.dirty):
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
    original = pysyncobj.syncobj.createJournal
    pysyncobj.syncobj.createJournal = lambda _path: journal
    try:
        yield
    finally:
        pysyncobj.syncobj.createJournal = original


class DurableSyncObj(SyncObj):  # type: ignore[misc]
    """A SyncObj over a :class:`DurableJournal`; see the module docstring."""

    def __init__(
        self,
        self_address: str,
        partners: list[str],
        conf: SyncObjConf,
        consumers: list[Any],
        journal: DurableJournal,
    ) -> None:
        # Attributes set before SyncObj.__init__ stay out of its snapshots.
        self._journal = journal
        with _journal_given(journal):
            super().__init__(
                self_address, partners, conf, consumers=consumers, transportClass=DurableTransport
            )
        self._transport.journal = journal
        self.addOnTickCallback(self.release)

    @property
    def _transport(self) -> DurableTransport:
        return self._SyncObj__transport  # type: ignore[no-any-return]

    def release(self) -> None:
        """Sync the journal and send the messages held until it was synced."""
        self._transport.release()

    # -- what the reactor asks -------------------------------------------------------

    def leader_address(self) -> str | None:
        leader = self._getLeader()
        return None if leader is None else str(leader.address)

    def leader_settled(self) -> bool:
        """Leader, and its own term's first entry is applied: everything committed
        by earlier leaders is in the state it serves."""
        noop = self._SyncObj__noopIDx
        return bool(self._isLeader()) and noop is not None and self.raftLastApplied >= noop

    def responses(self) -> list[float]:
        """When each partner last answered this leader (monotonic seconds)."""
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
        self._transport.destroy()
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

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
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
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    # -- loading a snapshot ------------------------------------------------------------

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
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
        if not clearJournal and len(journal) and journal[0][1] > before[1]:
            # Entries between the snapshot and the journal's start are nowhere: going
            # on would silently drop them from this node.
            raise SnapshotUnreadable(
                f"{path} ends at entry {last[1]} but the journal starts at entry "
                f"{journal[0][1]}: entries in between are missing"
            )
        position = None if clearJournal else _position(journal, before, last)
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


def _position(journal: DurableJournal, before: tuple, last: tuple) -> int | None:
    """Where the snapshot's last two entries sit in the journal, if they do."""
    if len(journal) < 2:
        return None
    position = before[1] - journal[0][1]
    if 0 <= position < len(journal) - 1:
        if tuple(journal[position]) == before and tuple(journal[position + 1]) == last:
            return position
    return None


@attrs.frozen
class RaftSettings:
    self_address: str
    partners: tuple[str, ...]
    data_dir: Path
    password: str | None
    #: Where clients reach this metaserver: followers send clients there.
    listen: str = ""
    #: Off only to measure what the fsync costs: a power cut can then lose
    #: acknowledged changes.
    fsync: bool = True
    #: Compact the journal into a snapshot after this many entries or seconds.
    compaction_entries: int = 5000
    compaction_seconds: float = 300.0
    #: Election timeout range, and the heartbeat period (PySyncObj's names).
    election_timeout: tuple[float, float] = (0.4, 1.0)
    heartbeat: float = 0.05
    layer: FileLayer = attrs.field(factory=FileLayer)

    @property
    def lease(self) -> float:
        """How long a leader may serve reads on the strength of a majority's last
        answers: under the shortest election timeout, with room for delivery and
        scheduling, so no other leader can have been elected meanwhile."""
        return 0.75 * self.election_timeout[0]


class RaftFatal(Exception):
    """The node cannot go on without risking acknowledged changes."""


FATAL = (JournalCorrupt, JournalFailed, SnapshotUnreadable)


class RaftService(Service):
    """Owns the DurableSyncObj and the one thread that drives it.

    PySyncObj's own tick thread sleeps up to its tick period between polls, and a
    lone leader has nothing to wake it once a command is in its log, so a single
    metaserver answered one request at a time in ~5 ms. This thread ticks again at
    once after a tick that made progress (a lone leader commits on the tick after
    the one that appended), then with a short wait while any submitted operation is
    unanswered, and a long one when idle; socket events and new commands wake it
    either way. After every tick it syncs the journal and releases held messages,
    so every tick's commit decisions stand on records already on disk.
    """

    log = Logger()

    BUSY_WAIT = 0.0005
    QUICK_TICKS = 3
    IDLE_WAIT = 0.05

    def __init__(
        self,
        reactor: Any,
        settings: RaftSettings,
        namespace: NamespaceLog,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._settings = settings
        self.namespace = namespace
        self._on_fatal = on_fatal
        self._sync: DurableSyncObj | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._halting = False
        # Written by one thread each, read by the others: no lock needed.
        self._submitted = 0
        self._answered = 0
        self._lease_until = 0.0
        self.journal: DurableJournal | None = None

    def open_journal(self) -> DurableJournal:
        """Open (and check) the journal; done before the service starts so that a
        damaged journal stops the metaserver with a clear message at once."""
        if self.journal is None:
            settings = self._settings
            filelayer.install()
            filelayer.register(settings.data_dir, settings.layer)
            self.journal = DurableJournal(settings.data_dir, settings.layer, settings.fsync)
        return self.journal

    def startService(self) -> None:
        super().startService()
        settings = self._settings
        low, high = settings.election_timeout
        conf = SyncObjConf(
            password=settings.password,
            journalFile=str(settings.data_dir / "raft.journal"),
            fullDumpFile=str(settings.data_dir / "raft.dump"),
            # One request at a time must not wait for the next heartbeat: without
            # batching, a submitted command wakes the Raft thread at once.
            appendEntriesUseBatch=False,
            dynamicMembershipChange=True,
            connectionTimeout=100000,
            # A partner that restarts is reached again within a fraction of an
            # election timeout, not PySyncObj's default 5 s.
            connectionRetryTime=min(0.5, low),
            # A Raft port held by something else fails the start instead of
            # retrying forever.
            bindRetryTime=0.5,
            maxBindRetries=20,
            raftMinTimeout=low,
            raftMaxTimeout=high,
            appendEntriesPeriod=settings.heartbeat,
            # A leader cut off from a majority steps down within an election timeout.
            leaderFallbackTimeout=low,
            logCompactionMinEntries=settings.compaction_entries,
            logCompactionMinTime=settings.compaction_seconds,
            logCompactionSplit=False,
            onStateChanged=self._state_changed,
            autoTick=False,
        )
        self._sync = DurableSyncObj(
            settings.self_address,
            list(settings.partners),
            conf,
            [self.namespace],
            self.open_journal(),
        )
        self._stopping.clear()
        self._halting = False
        self._thread = threading.Thread(
            target=self._tick_loop, args=(self._sync,), name="raft", daemon=True
        )
        self._thread.start()
        self.log.info(
            "Raft node {address} started with partners {partners}",
            address=settings.self_address,
            partners=", ".join(settings.partners) or "none",
        )

    def stopService(self) -> None:
        super().stopService()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._sync = None

    def _tick_loop(self, sync: DurableSyncObj) -> None:
        # A tick appends new commands to the log and the next one commits them: on a
        # group of one nothing else would wake that next tick, so after any progress
        # the loop ticks again at once (a few times) before it waits.
        quick = 0
        answered = self._answered
        while not self._stopping.is_set():
            busy = self._submitted != self._answered
            if self._answered != answered:
                answered, quick = self._answered, 0
            if busy and quick < self.QUICK_TICKS:
                wait = 0.0
                quick += 1
            elif busy:
                wait = self.BUSY_WAIT
            else:
                wait, quick = self.IDLE_WAIT, 0
            try:
                sync.doTick(wait)
                if self._halting:
                    sync.halt()
                    return
                sync.release()
                self._renew_lease(sync)
            except FATAL as error:
                self._fatal(sync, f"{type(error).__name__}: {error}")
                return
            except Exception as error:
                self._reactor.callFromThread(
                    self.log.error, "Raft tick failed: {error}", error=repr(error)
                )
                time.sleep(self.IDLE_WAIT)
        sync.end_snapshot(wait=5.0)
        sync.destroy()

    def halt(self) -> None:
        """Stop the way a crash or a power cut would: whatever the journal holds
        unsynced stays unsynced, and no held message leaves. For tests."""
        self._halting = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._sync = None
        self._lease_until = 0.0
        self.running = False

    def _fatal(self, sync: DurableSyncObj, message: str) -> None:
        # Stop taking part at once: no message may leave this node any more.
        sync.halt()
        self._sync = None
        self._reactor.callFromThread(self._report_fatal, message)

    def _report_fatal(self, message: str) -> None:
        self.log.critical("Raft stopped, this metaserver cannot go on: {message}", message=message)
        if self._on_fatal is not None:
            self._on_fatal(message)

    def _renew_lease(self, sync: DurableSyncObj) -> None:
        if not sync.leader_settled():
            self._lease_until = 0.0
            return
        others = len(self._settings.partners)
        needed = (others + 1) // 2  # partners that must have answered, beside this node
        if needed == 0:
            self._lease_until = math.inf
            return
        answers = sorted(sync.responses(), reverse=True)
        if len(answers) >= needed:
            self._lease_until = answers[needed - 1] + self._settings.lease

    def _state_changed(self, old: int, new: int) -> None:  # runs in the Raft thread
        if new == _RAFT_STATE.LEADER and self._settings.listen:
            # Tell the group where clients reach the new leader.
            self.namespace.apply(MemberAddress(self._settings.self_address, self._settings.listen))

    # -- the reactor's side ---------------------------------------------------------------

    def submit(self, operation: Any) -> Deferred[Any]:
        """Replicate ``operation``; fires with its result once committed and applied."""
        result: Deferred[Any] = Deferred()
        sync = self._sync
        if sync is None:
            result.errback(NotLeader(""))
            return result

        def done(value: Any, error: int) -> None:  # runs in the Raft thread
            self._answered += 1
            self._reactor.callFromThread(self._deliver, result, value, error)

        self._submitted += 1
        self.namespace.apply(operation, callback=done)
        return result

    def _deliver(self, result: Deferred[Any], value: Any, error: int) -> None:
        if error == FAIL_REASON.SUCCESS:
            result.callback(value)
        else:
            # Not committed here (or outcome unknown): the caller retries, with the
            # same request id, wherever the leader is.
            result.errback(NotLeader(self.leader_hint()))

    def leader_hint(self) -> str:
        """The client address of the leader as far as this node knows, or ""."""
        sync = self._sync
        if sync is None:
            return ""
        leader = sync.leader_address()
        if leader is None:
            return ""
        if leader == self._settings.self_address:
            return self._settings.listen
        return self.namespace.address_of(leader)

    @property
    def serving(self) -> bool:
        """Leader, settled in its term and holding its lease: what it reads and
        writes is current. Everyone else sends clients to the leader."""
        return self._sync is not None and monotonic() < self._lease_until

    def check_serving(self) -> None:
        if not self.serving:
            raise NotLeader(self.leader_hint())

    @property
    def ready(self) -> bool:
        return self._sync is not None and self._sync.isReady()

    def change_membership(self, adding: bool, raft_address: str) -> Deferred[None]:
        """Add or remove a member: fires once the change is committed. The group
        changes one member at a time, and only on the leader."""
        result: Deferred[None] = Deferred()
        sync = self._sync
        if sync is None or not self.serving:
            result.errback(NotLeader(self.leader_hint()))
            return result
        if not adding and raft_address == self._settings.self_address:
            # The leader cannot remove itself: hand over first; the caller asks again.
            sync.transferLeadership()
            result.errback(NotLeader(""))
            return result

        def done(_value: Any, error: int) -> None:  # runs in the Raft thread
            self._reactor.callFromThread(finish, error)

        def finish(error: int) -> None:
            if error == FAIL_REASON.SUCCESS:
                result.callback(None)
            elif error == FAIL_REASON.REQUEST_DENIED:
                what = "already a member" if adding else "not a member"
                result.errback(
                    InvalidArgument(
                        f"{raft_address}: refused: {what}, or another change of the group "
                        "is not committed yet"
                    )
                )
            else:
                result.errback(NotLeader(self.leader_hint()))

        if adding:
            sync.addNodeToCluster(raft_address, callback=done)
        else:
            sync.removeNodeFromCluster(raft_address, callback=done)
        return result

    def status(self) -> dict[str, Any]:
        """This node's view of the group, for /api/v1/status and ``dfs admin meta``."""
        sync = self._sync
        if sync is None:
            return {"role": "stopped"}
        # Single reads of plain values: safe from the reactor thread, unlike
        # SyncObj.getStatus, which walks dictionaries the Raft thread changes.
        roles = {
            _RAFT_STATE.FOLLOWER: "follower",
            _RAFT_STATE.CANDIDATE: "candidate",
            _RAFT_STATE.LEADER: "leader",
        }
        state = sync._SyncObj__raftState
        return {
            "role": roles.get(state, str(state)),
            "serving": self.serving,
            "leader": self.leader_hint(),
            "term": sync.raftCurrentTerm,
            "commit_index": sync.raftCommitIndex,
            "last_applied": sync.raftLastApplied,
            "log_entries": len(self.journal) if self.journal is not None else 0,
            "namespace_entries": self.namespace.read(
                lambda state: getattr(state, "entry_count", None)
            ),
            "journal_syncs": self.journal.syncs if self.journal is not None else 0,
            "raft": self._settings.self_address,
            "members": [{"raft": raft, "match_index": match} for raft, match in sync.members()],
        }
