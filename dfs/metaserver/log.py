"""The replicated log as the metaserver's request handlers see it.

Handlers submit namespace operations, read the namespace, and ask whether this
metaserver may answer from it; they do not know Raft. :class:`RaftLog` is the real
log (the Raft service and the namespace it replicates); unit tests give handlers a
log of their own that applies operations at once.

The caller side of a request is here too: who asks (:func:`caller`), who holds a
write lease (:func:`holder`), and the fields every operation carries
(:func:`stamp`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

from dfs.metaserver import namespace as ns
from dfs.metaserver import operations as ops
from dfs.metaserver.frozen import fork_child
from dfs.metaserver.raft import NamespaceLog, RaftService
from dfs.protocol.errors import NotLeader
from dfs.security.identity import Identity, Role

T = TypeVar("T")


class ReplicatedLog(Protocol):
    """What a handler needs of the replicated namespace."""

    @property
    def ready(self) -> bool:
        """The namespace is replayed from the journal and may be read."""

    @property
    def serving(self) -> bool:
        """This metaserver leads, settled in its term and within its lease."""

    def check_serving(self) -> None:
        """NotLeader (naming the leader) unless :attr:`serving`."""

    def submit(self, operation: ops.Operation) -> Deferred[Any]:
        """Fires with the operation's result (``ops.Ok`` or ``ops.Err``) once committed
        and applied; NotLeader if it was not committed here."""

    def read(self, query: Callable[[ns.Namespace], T]) -> T:
        """``query`` run on the namespace, never between two halves of an operation."""

    def position(self) -> tuple[int, int]:
        """The last applied entry's index and the current term."""

    def fork(self, work: Callable[[ns.Namespace], None], keep: Collection[int] = ()) -> int:
        """Run ``work`` on the namespace as it is now, in a forked child that keeps
        the descriptors ``keep`` (see :mod:`dfs.metaserver.frozen`); the child's pid.
        The log is held up only for the fork itself."""


class RaftLog:
    """The replicated log of a running metaserver: its Raft service and namespace."""

    def __init__(self, raft: RaftService, namespace: NamespaceLog) -> None:
        self._raft = raft
        self._namespace = namespace

    @property
    def ready(self) -> bool:
        return self._raft.ready

    @property
    def serving(self) -> bool:
        return self._raft.serving

    def check_serving(self) -> None:
        self._raft.check_serving()

    def submit(self, operation: ops.Operation) -> Deferred[Any]:
        return self._raft.submit(operation)

    def read(self, query: Callable[[ns.Namespace], T]) -> T:
        return self._namespace.read(query)

    def position(self) -> tuple[int, int]:
        status = self._raft.status()
        return int(status.get("last_applied", 0)), int(status.get("term", 0))

    def fork(self, work: Callable[[ns.Namespace], None], keep: Collection[int] = ()) -> int:
        return self._namespace.fork(work, keep)


async def commit(log: ReplicatedLog, operation: ops.Operation) -> Any:
    """Submit ``operation``; its value once committed, or its error raised."""
    result = await log.submit(operation)
    if isinstance(result, ops.Err):
        raise result.exception()
    return result.value


def lookup(log: ReplicatedLog, query: Callable[[ns.Namespace], ops.Ok[T] | ops.Err]) -> T:
    """The value of a namespace query, or its error raised."""
    result = log.read(query)
    if isinstance(result, ops.Err):
        raise result.exception()
    return result.value


#: Who a metaserver's own operations come from (freed chunks forgotten): the
#: superuser the namespace's root belongs to, as allocation's lease recovery names it.
METASERVER = ops.Caller(user="dfs", superuser=True)


def caller(identity: Identity) -> ops.Caller:
    """The namespace's view of who asks: an admin certificate is a superuser."""
    return ops.Caller(user=identity.name, superuser=identity.role is Role.ADMIN)


def holder(identity: Identity, client_id: str) -> str:
    """The write lease's holder: this identity's client. Another identity presenting
    the same client id is another holder."""
    return f"{identity.name}|{client_id}"


def stamp(identity: Identity, now: float, request_id: str = "") -> dict[str, Any]:
    """The fields every operation carries: who, when (the leader's clock), and the
    request id that makes a retry safe."""
    return {"caller": caller(identity), "now": now, "request_id": request_id}


class MemoryLog:
    """A log of one member that applies each operation at once, in memory: for
    unit tests of the handlers (as Twisted ships MemoryReactor). ``serving`` and
    ``ready`` are set by the test; a follower's NotLeader names ``leader``."""

    def __init__(self, namespace: ns.Namespace | None = None) -> None:
        self.namespace = namespace if namespace is not None else ns.Namespace()
        self.ready = True
        self.serving = True
        self.leader = ""
        self.submitted: list[ops.Operation] = []

    def check_serving(self) -> None:
        if not self.serving:
            raise NotLeader(self.leader)

    def submit(self, operation: ops.Operation) -> Deferred[Any]:
        if not self.serving:
            return fail(NotLeader(self.leader))
        self.submitted.append(operation)
        return succeed(self.namespace.apply(operation))

    def read(self, query: Callable[[ns.Namespace], T]) -> T:
        return query(self.namespace)

    def position(self) -> tuple[int, int]:
        return len(self.submitted), 1

    def fork(self, work: Callable[[ns.Namespace], None], keep: Collection[int] = ()) -> int:
        namespace = self.namespace
        return fork_child(lambda: work(namespace), keep)
