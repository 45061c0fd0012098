"""The bridge between the reactor and PySyncObj, which replicates the namespace.

PySyncObj runs its own thread. The namespace lives inside a :class:`NamespaceLog`
consumer whose single replicated method applies one operation; the reactor submits
operations and gets a Deferred that fires, in the reactor thread, only once the
operation is committed and applied. Nothing in the Raft thread touches Twisted
objects: results hop over with ``reactor.callFromThread``. Reads from the reactor
take the same lock as the Raft thread's apply, so they never see half an operation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dfs.protocol.errors import NotLeader

T = TypeVar("T")


class StateMachine(Protocol):
    def apply(self, operation: Any) -> Any: ...


class NamespaceLog(SyncObjConsumer):  # type: ignore[misc]
    """Holds the replicated state; PySyncObj pickles what is set after __init__."""

    def __init__(self, state: StateMachine) -> None:
        # Set before SyncObjConsumer.__init__ so that it is not part of snapshots.
        self._lock = threading.Lock()
        super().__init__()
        self.state = state

    @replicated  # type: ignore[misc]
    def apply(self, operation: Any) -> Any:
        # state.apply never raises: a raising replicated method wedges the group.
        with self._lock:
            return self.state.apply(operation)

    def read(self, query: Callable[[Any], T]) -> T:
        with self._lock:
            return query(self.state)


@attrs.frozen
class RaftSettings:
    self_address: str
    partners: tuple[str, ...]
    data_dir: Path
    password: str | None


class RaftService(Service):
    """Owns the SyncObj and the one thread that drives it.

    PySyncObj's own tick thread sleeps up to its tick period between polls, and a
    lone leader has nothing to wake it once a command is in its log, so a single
    metaserver answered one request at a time in ~5 ms. This thread ticks again at
    once after a tick that made progress (a lone leader commits on the tick after
    the one that appended), then with a short wait while any submitted operation is
    unanswered, and a long one when idle; socket events and new commands wake it
    either way. A lone metaserver commits a mutation in ~0.15 ms.
    """

    log = Logger()

    BUSY_WAIT = 0.0005
    QUICK_TICKS = 3
    IDLE_WAIT = 0.05

    def __init__(self, reactor: Any, settings: RaftSettings, namespace: NamespaceLog) -> None:
        self._reactor = reactor
        self._settings = settings
        self.namespace = namespace
        self._sync: SyncObj | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # Written by one thread each, read by the tick thread: no lock needed.
        self._submitted = 0
        self._answered = 0

    def startService(self) -> None:
        super().startService()
        settings = self._settings
        conf = SyncObjConf(
            password=settings.password,
            journalFile=str(settings.data_dir / "raft.journal"),
            fullDumpFile=str(settings.data_dir / "raft.dump"),
            # One request at a time must not wait for the next heartbeat: without
            # batching, a submitted command wakes the Raft thread at once.
            appendEntriesUseBatch=False,
            dynamicMembershipChange=True,
            connectionTimeout=100000,
            autoTick=False,
        )
        self._sync = SyncObj(
            settings.self_address, list(settings.partners), conf, consumers=[self.namespace]
        )
        self._stopping.clear()
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

    def _tick_loop(self, sync: SyncObj) -> None:
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
            except Exception as error:
                self._reactor.callFromThread(
                    self.log.error, "Raft tick failed: {error}", error=repr(error)
                )
                time.sleep(self.IDLE_WAIT)
        sync.destroy()

    def submit(self, operation: Any) -> Deferred[Any]:
        """Replicate ``operation``; fires with its result once committed and applied."""
        result: Deferred[Any] = Deferred()

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
        return ""

    @property
    def ready(self) -> bool:
        return self._sync is not None and self._sync.isReady()
