"""The bridge between the reactor and PySyncObj, which replicates the namespace.

PySyncObj runs its own thread. The namespace lives inside a :class:`NamespaceLog`
consumer whose single replicated method applies one operation; the reactor submits
operations and gets a Deferred that fires, in the reactor thread, only once the
operation is committed and applied. Nothing in the Raft thread touches Twisted
objects: results hop over with ``reactor.callFromThread``. Reads from the reactor
take the same lock as the Raft thread's apply, so they never see half an operation.

Everything that touches PySyncObj itself (the node, its durable transport and
journal, the private names they rely on and the start-up check of those names) is
in :mod:`dfs.metaserver.syncobj`; durability is described there and in
docs/architecture.md, "Metadata on disk".
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dfs.metaserver import filelayer
from dfs.metaserver.filelayer import FileLayer
from dfs.metaserver.frozen import fork_child
from dfs.metaserver.journal import DurableJournal, JournalCorrupt, JournalFailed
from dfs.metaserver.syncobj import (
    FAIL_REASON,
    DurableSyncObj,
    ReplicatedState,
    SnapshotUnreadable,
    SyncObjConf,
    Unsupported,
    check_supported,
    monotonic,
    replicated,
    role_of,
    route_snapshot_renames,
)
from dfs.node import StartupError
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


class NamespaceLog(ReplicatedState):
    """Holds the replicated state; PySyncObj pickles what is set after __init__."""

    def __init__(self, state: StateMachine) -> None:
        # Set before ReplicatedState.__init__ so that it is not part of snapshots.
        self._lock = threading.Lock()
        super().__init__()
        self.state = state
        #: Raft address -> client address of every metaserver that has led.
        self.addresses: dict[str, str] = {}

    @replicated
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

    def fork(self, work: Callable[[Any], None], keep: Collection[int] = ()) -> int:
        """Run ``work`` on the state in a forked child (:mod:`dfs.metaserver.frozen`);
        the child's pid. Forked under the lock: the child's copy holds no half-applied
        operation, and the Raft thread waits only for the fork itself."""
        with self._lock:
            state = self.state
            return fork_child(lambda: work(state), keep)

    def address_of(self, raft: str) -> str:
        """The client address of the member at ``raft``, "" if it never led."""
        with self._lock:
            return self.addresses.get(raft, "")


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
        #: results applied in this tick, handed to the reactor together (Raft thread)
        self._results: list[tuple[Deferred[Any], Any, int]] = []
        self._lease_until = 0.0
        self.journal: DurableJournal | None = None

    def open_journal(self) -> DurableJournal:
        """Open (and check) the journal; done before the service starts so that a
        damaged journal, or a PySyncObj lacking what DFS relies on (StartupError),
        stops the metaserver with a clear message at once."""
        if self.journal is None:
            settings = self._settings
            try:
                check_supported()
            except Unsupported as error:
                raise StartupError(str(error)) from None
            route_snapshot_renames(filelayer.durable_replace)
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
        try:
            self._sync = DurableSyncObj(
                settings.self_address,
                list(settings.partners),
                conf,
                [self.namespace],
                self.open_journal(),
                applied=self._hand_over,
            )
        except Unsupported as error:
            self._report_fatal(str(error))
            return
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
                self._hand_over()
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
        if role_of(new) == "leader" and self._settings.listen:
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
            self._results.append((result, value, error))

        self._submitted += 1
        self.namespace.apply(operation, callback=done)
        return result

    def _hand_over(self) -> None:  # runs in the Raft thread, at the end of a tick
        # The results of one tick (several clients' entries are committed together)
        # cross to the reactor in one call: one wake-up, and the answers leave
        # together while this thread syncs the journal.
        if self._results:
            results, self._results = self._results, []
            self._reactor.callFromThread(self._deliver, results)

    def _deliver(self, results: list[tuple[Deferred[Any], Any, int]]) -> None:
        for result, value, error in results:
            if error == FAIL_REASON.SUCCESS:
                result.callback(value)
            else:
                # Not committed here (or outcome unknown): the caller retries, with
                # the same request id, wherever the leader is.
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
        return {
            "role": sync.role(),
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
