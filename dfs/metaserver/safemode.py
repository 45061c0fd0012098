"""Safe mode: when the metaserver may change the namespace and decide about replicas.

One object answers for all three reasons a metaserver holds back:

- loading: the namespace is not yet replayed from the journal, so nothing is served;
- automatic: after this process starts, nothing is decided (and the namespace takes no
  change) until ``safemode_threshold`` of the committed chunks have a replica reported
  and ``safemode_min_dataservers`` are alive, plus ``safemode_extension`` seconds;
- manual: an administrator's safe mode, replicated state in the namespace.

Writers keep renewing their leases through safe mode, and an administrator can still
enter or leave it and decommission dataservers: those go through
:meth:`SafeMode.check_serving` rather than :meth:`SafeMode.check_mutation`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from dfs.config import ReplicationConfig
from dfs.metaserver import operations as ops
from dfs.metaserver.log import ReplicatedLog, commit, stamp
from dfs.metaserver.registry import DataserverRegistry
from dfs.protocol.errors import InvalidArgument
from dfs.protocol.errors import SafeMode as SafeModeError
from dfs.security.identity import Identity

#: Seconds between on-demand recounts while the automatic safe mode lasts.
RECOUNT = 0.1


class SafeMode:
    log = Logger()

    def __init__(
        self,
        clock: Any,
        log: ReplicatedLog,
        config: ReplicationConfig,
        registry: DataserverRegistry,
        census: Callable[[], tuple[int, int]],
    ) -> None:
        self._clock = clock
        self._log = log
        self._config = config
        self._registry = registry
        #: (committed chunks with a live replica reported, committed chunks)
        self._census = census
        self._automatic = True
        self._threshold_met_at: float | None = None
        self._last_count = float("-inf")
        self.reported_chunks = 0
        self.total_chunks = 0

    # -- asking ----------------------------------------------------------------------

    @property
    def manual(self) -> bool:
        return bool(self._log.read(lambda namespace: namespace.safe_mode))

    @property
    def on(self) -> bool:
        return self._automatic or self.manual

    @property
    def deciding(self) -> bool:
        """Replica decisions (copies, removals, deletions sent out, leases recovered)
        may be taken: this metaserver serves, and is out of safe mode."""
        return self._log.serving and self._log.ready and not self.on

    def check_serving(self) -> None:
        """NotLeader on a follower (its copy may lag), SafeMode while loading."""
        self._log.check_serving()
        if not self._log.ready:
            raise SafeModeError("the metaserver is still loading the namespace; retry shortly")

    def check_mutation(self) -> None:
        """As :meth:`check_serving`, and SafeMode if the namespace may not change now."""
        self.check_serving()
        if self.manual:
            raise SafeModeError(f"{SafeModeError.MANUAL}: leave it with `dfs admin safemode leave`")
        if self._automatic:
            now = self._clock.seconds()
            # Counted on demand too, so that a leader with nothing to wait for serves
            # at once rather than at the next replication pass; at most ten times a second.
            if now - self._last_count >= RECOUNT:
                self._last_count = now
                self.counted(*self._census(), now)
            if self._automatic:
                raise SafeModeError(f"{self._reason()}; retry shortly")

    # -- counting --------------------------------------------------------------------

    def counted(self, reported: int, total: int, now: float) -> None:
        """The latest count of committed chunks with a replica reported; the automatic
        safe mode ends once the threshold has held for ``safemode_extension``."""
        self.reported_chunks, self.total_chunks = reported, total
        if not self._automatic:
            return
        if not self._threshold_met():
            self._threshold_met_at = None
            return
        if self._threshold_met_at is None:
            self._threshold_met_at = now
        if now - self._threshold_met_at >= self._config.safemode_extension:
            self._automatic = False
            self.log.info(
                "leaving safe mode: {reported} of {total} chunks reported, "
                "{alive} dataservers alive",
                reported=reported,
                total=total,
                alive=self._alive(),
            )

    def refresh(self) -> None:
        """Bring the counts up to date now, while the automatic safe mode lasts."""
        if self._automatic and self._log.ready:
            self.counted(*self._census(), self._clock.seconds())

    def _alive(self) -> int:
        return len(self._registry.alive())

    def _threshold_met(self) -> bool:
        share = self.reported_chunks / self.total_chunks if self.total_chunks else 1.0
        return (
            share >= self._config.safemode_threshold
            and self._alive() >= self._config.safemode_min_dataservers
        )

    def _reason(self) -> str:
        if self.manual:
            return SafeModeError.MANUAL
        if not self._automatic:
            return ""
        if self._alive() < self._config.safemode_min_dataservers:
            return (
                f"waiting for dataservers: {self._alive()} alive, "
                f"{self._config.safemode_min_dataservers} needed"
            )
        if not self._threshold_met():
            return (
                f"waiting for chunk reports: {self.reported_chunks} of {self.total_chunks} "
                f"chunks reported, {self._config.safemode_threshold:.2%} needed"
            )
        return "chunk reports complete; leaving safe mode after safemode_extension"

    # -- administrators ----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        on = self.on
        return {
            "on": on,
            "manual": self.manual,
            "reason": self._reason() if on else "",
            "reported_chunks": self.reported_chunks,
            "total_chunks": self.total_chunks,
            "threshold": self._config.safemode_threshold,
            "dataservers_alive": self._alive(),
            "min_dataservers": self._config.safemode_min_dataservers,
        }

    async def control(self, identity: Identity, action: str) -> dict[str, Any]:
        """``get``, ``enter`` or ``leave`` (which also ends the automatic safe mode)."""
        self._log.check_serving()
        if action in ("enter", "leave"):
            self.check_serving()
            now = self._clock.seconds()
            await commit(self._log, ops.SetSafeMode(action == "enter", **stamp(identity, now)))
            if action == "leave" and self._automatic:
                self._automatic = False
                self.log.warn("safe mode left on an administrator's order")
            self.log.info("{admin}: safe mode {action}", admin=identity.name, action=action)
        elif action != "get":
            raise InvalidArgument(f"safe mode action {action!r}: expected get, enter or leave")
        self.refresh()
        return self.state()
