"""SIGHUP: a running server reads its certificate and security_config.json again.

:class:`SecurityReload` is one child service of each daemon. On SIGHUP it

1. reads the server's own certificate, key and CA again
   (:meth:`dfs.trust.TrustService.reload_credentials`), for new connections;
2. reads security_config.json again, whole. A file that cannot be read or fails its
   checks is logged in one line and changes nothing (the CRL in force is still read
   again, as on every SIGHUP). Otherwise the settings in force and the fresh ones are
   compared (:func:`dfs.config.reload.plan_reload`): a changed key that only a restart
   applies is logged in one line naming it, and the rest is handed to the owners of
   the settings (the *parts*: the trust service for the token keys and the CRL, the
   listener's connection limits, the metaserver's token lifetime and audit log). Each
   part applies what it can, logs what it cannot, and says which keys it kept.

twistd leaves SIGHUP alone (the reactor handles SIGINT, SIGTERM and SIGCHLD, twistd
SIGUSR1 to reopen its log file), and Python's default for SIGHUP ends the process;
this service installs its own handler while it runs. The handler only hands the work
to the reactor (``callFromThread``): nothing is done inside the signal handler itself.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Collection, Iterable, Sequence
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from dfs.config import ConfigError, SecurityConfig, load_security_config
from dfs.config.reload import ReloadPlan, flatten, plan_reload
from dfs.protocol.limits import ServerLimits
from dfs.security.tokens import TokenIssuer
from dfs.trust import TrustService

#: An owner of some settings of security_config.json: given the settings in force and
#: the fresh ones, it applies what it can and returns the keys it kept at their value
#: in force (having logged why).
SecurityPart = Callable[[SecurityConfig, SecurityConfig], Iterable[str]]

log = Logger(namespace="dfs.reload")


class SecurityReload(Service):
    """Reloads the server's certificate and security_config.json on SIGHUP."""

    log = log

    def __init__(
        self,
        reactor: Any,
        trust: TrustService,
        security: SecurityConfig,
        parts: Sequence[SecurityPart],
        used: Collection[str],
        *,
        handle_sighup: bool = True,
    ) -> None:
        self._reactor = reactor
        self._trust = trust
        #: the settings in force (those a restart or a bad value kept included)
        self.security = security
        self._parts = tuple(parts)
        #: the keys of security_config.json this server reads
        self._used = frozenset(used)
        self._handle_sighup = handle_sighup
        self._previous_handler: Any = None

    @property
    def _file(self) -> str:
        return str(self.security.source)

    def startService(self) -> None:
        super().startService()
        if self._handle_sighup:
            self._previous_handler = signal.signal(signal.SIGHUP, self._sighup)

    def stopService(self) -> Any:
        if self._handle_sighup and self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return super().stopService()

    def _sighup(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt the reactor anywhere: do the work in its loop.
        self._reactor.callFromThread(self.reload, "SIGHUP")

    def reload(self, why: str = "SIGHUP") -> None:
        """Read the certificate, key and CA again, then security_config.json."""
        self.log.info(
            "{why}: reloading the certificate, key and CA, and {file}", why=why, file=self._file
        )
        try:
            self._trust.reload_credentials()
        except Exception:
            self.log.failure("reloading the certificate on {why} failed", why=why)
        try:
            self.reload_security()
        except Exception:
            self.log.failure("reloading {file} on {why} failed", file=self._file, why=why)

    def reload_security(self) -> ReloadPlan | None:
        """Read security_config.json and apply what changed; None (and nothing
        changed) when the file cannot be used."""
        try:
            fresh = load_security_config(self._file)
        except ConfigError as error:
            # The error names the file first.
            self.log.error(
                "security_config.json not reloaded, the settings in use stay: {reason}",
                file=self._file,
                reason=str(error),
            )
            # The CRL's content is no setting: SIGHUP reads it again all the same.
            self._trust.check_crl(force=True)
            return None
        plan = plan_reload(self.security, fresh, self._used)
        for key in plan.restart:
            self.log.warn("{file}: {key} changed; restart to apply", file=self._file, key=key)
        kept: set[str] = set()
        for part in self._parts:
            try:
                kept.update(part(self.security, fresh))
            except Exception:
                self.log.failure("applying {file} failed", file=self._file)
                # Keep the values in force: the next SIGHUP tries them all again.
                kept.update(plan.changed)
        self.security = plan.settled(kept)
        kept_tops = {key.split(".", 1)[0] for key in kept} & self._used
        applied = [key for key in plan.to_apply if key.split(".", 1)[0] not in kept_tops]
        self.log.info(
            "{file} reloaded: {applied}{kept}",
            file=self._file,
            applied="applied " + ", ".join(applied) if applied else "no change applied",
            kept="; kept " + ", ".join(sorted(kept_tops)) if kept_tops else "",
        )
        return plan


def apply_limits(
    limits: ServerLimits, running: SecurityConfig, fresh: SecurityConfig
) -> tuple[str, ...]:
    """Hold connections accepted from now on to ``fresh.limits`` (a part of
    :class:`SecurityReload`, with ``functools.partial``); open ones keep theirs."""
    before, after = flatten(limits.limits), flatten(fresh.limits)
    changes = [
        f"{key} {after[key]} (was {before[key]})" for key in after if after[key] != before[key]
    ]
    if not changes:
        return ()
    limits.use(fresh.limits)
    log.info(
        "connection limits for new connections: {changes}; open connections keep theirs "
        "and still count towards connections_per_identity",
        changes=", ".join(changes),
    )
    return ()


def apply_token_lifetime(
    issuer: TokenIssuer, running: SecurityConfig, fresh: SecurityConfig
) -> tuple[str, ...]:
    """Mint tokens that last ``fresh.token_lifetime`` from now on (a part of
    :class:`SecurityReload`); tokens already given keep their expiry."""
    if fresh.token_lifetime != issuer.lifetime:
        log.info(
            "chunk tokens minted from now on last {lifetime:g} s (was {before:g} s)",
            lifetime=fresh.token_lifetime,
            before=issuer.lifetime,
        )
        issuer.lifetime = fresh.token_lifetime
    return ()
