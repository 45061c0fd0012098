"""What a running server trusts, kept current without a restart.

:class:`TrustService` is one child service of each daemon. It holds

* the revocation list named by ``crl`` in security_config.json: checked every
  ``crl_check_interval`` seconds and at once on SIGHUP; when it changes, sessions
  whose peer it now revokes are closed, and new handshakes with those peers are
  refused (through the :class:`~dfs.protocol.session.SessionRegistry` every TLS
  connection of the server carries). SIGHUP may also name another CRL file (or
  none), or another interval (:meth:`TrustService.apply_security`);
* the server's own certificate and key and the CA certificate named in the
  ``tls`` section of its config: read again on SIGHUP and used for every
  connection made afterwards, accepted or dialled, while the open ones go on;
* the chunk token keys (``token_key_file`` and ``token_previous_key_file`` in
  security_config.json, which is read again for their names): read again on SIGHUP
  and handed to whoever mints or checks tokens, so that a key rotation needs no
  restart. Keys that cannot be used are logged and the ones in use stay.

SIGHUP itself is handled by :class:`dfs.reload.SecurityReload`, which calls
:meth:`TrustService.reload_credentials`, then reads security_config.json and hands it
to :meth:`TrustService.apply_security` (and to the other owners of its settings).

A CRL that is missing, malformed or not signed by the cluster CA stops the server
at start (a ConfigError naming ``crl``). Later on, such a file is logged as an
error and the list in force stays: revocations are never lifted because a file
went bad, and the server does not stop. Only security_config.json naming no CRL
any more lifts them.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dfs.config import ConfigError, SecurityConfig, TLSFiles
from dfs.protocol.session import SessionRegistry
from dfs.security.identity import Identity, InvalidIdentity, identity_from_certificate
from dfs.security.revocation import (
    CRLError,
    FileState,
    RevocationList,
    describe_certificate,
    parse_crl,
)
from dfs.security.secrets import check_private
from dfs.security.tls import NodeCredentials
from dfs.security.tokenkeys import load_token_keys
from dfs.security.tokens import TokenKeys


class TokenKeyUser(Protocol):
    """What mints or checks chunk tokens (the metaserver's TokenIssuer, the
    dataserver's ChunkAccess): the keys in use, and a way to change them."""

    @property
    def keys(self) -> TokenKeys: ...

    def use(self, keys: TokenKeys) -> None: ...


#: The keys of security_config.json the token keys are read from.
TOKEN_KEYS = ("token_key_file", "token_previous_key_file")


def read_crl(path: Path, authority: x509.Certificate) -> tuple[RevocationList, FileState]:
    """The CRL at ``path`` checked against ``authority``; CRLError (one line) if unusable."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
            mtime_ns = os.fstat(stream.fileno()).st_mtime_ns
    except FileNotFoundError:
        raise CRLError(f"{path} not found") from None
    except OSError as error:
        raise CRLError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        revocations = parse_crl(data, authority)
    except CRLError as error:
        raise CRLError(f"{path}: {error}") from None
    return revocations, FileState.of(mtime_ns, data)


class TrustService(Service):
    """A server's credentials, revocation list and token keys, reloaded on change and
    on SIGHUP."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        credentials: NodeCredentials,
        identity: Identity,
        tls: TLSFiles,
        config_source: str,
        security: SecurityConfig,
        *,
        tokens: TokenKeyUser | None = None,
    ) -> None:
        self._reactor = reactor
        self.credentials = credentials
        self.identity = identity
        self._tls = tls
        self._config_source = config_source
        self.crl_path = security.crl
        self._security_source = str(security.source)
        self._interval = security.crl_check_interval
        #: who mints or checks tokens with the keys in use (None: this server has none)
        self._tokens = tokens
        self.revocations: RevocationList | None = None
        self._state: FileState | None = None
        self.registry = SessionRegistry(self.refusal)
        # Every TLS connection made from these credentials leads its session to the registry.
        credentials.attachment = self.registry
        self._loop: LoopingCall | None = None
        if self.crl_path is not None:
            try:
                self.revocations, self._state = read_crl(self.crl_path, credentials.ca_certificate)
            except CRLError as error:
                raise ConfigError(
                    file=self._security_source,
                    key="crl",
                    expected="a CRL signed by the cluster CA (dfs ca revoke writes one)",
                    got=str(error),
                ) from None

    # -- the check every peer passes ---------------------------------------

    def refusal(self, certificate: x509.Certificate) -> str | None:
        if self.revocations is None:
            return None
        return self.revocations.refusal(certificate)

    # -- service -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.crl_path is not None:
            count = len(self.revocations) if self.revocations is not None else 0
            self.log.info(
                "checking peers against the CRL {path} ({count} revoked), "
                "every {interval:g} s and on SIGHUP",
                path=str(self.crl_path),
                count=count,
                interval=self._interval,
            )
            self._warn_if_outdated()
        self._schedule_checks()

    def stopService(self) -> Any:
        self._stop_checks()
        return super().stopService()

    def _schedule_checks(self) -> None:
        """Check the CRL every interval while the service runs and names one."""
        self._stop_checks()
        if self.running and self.crl_path is not None:
            self._loop = LoopingCall(self._check_crl_safely)
            self._loop.clock = self._reactor
            self._loop.start(self._interval, now=False)

    def _stop_checks(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _check_crl_safely(self) -> None:
        # An unforeseen error must neither stop the checks nor the server.
        try:
            self.check_crl()
        except Exception:
            self.log.failure("checking the CRL {path} failed", path=str(self.crl_path))

    # -- reloading -----------------------------------------------------------

    def apply_security(self, running: SecurityConfig, fresh: SecurityConfig) -> tuple[str, ...]:
        """Use what ``fresh`` (security_config.json read again) says of the token keys
        and the CRL; the keys kept at their ``running`` value because their new value
        cannot be used (and was logged)."""
        kept: list[str] = []
        if self._tokens is not None and not self.reload_token_keys(fresh):
            kept.extend(TOKEN_KEYS)
        if not self.use_crl(fresh.crl, fresh.crl_check_interval):
            kept.append("crl")
        return tuple(kept)

    def reload_token_keys(self, security: SecurityConfig) -> bool:
        """Use the token keys ``security`` names; keep the ones in use (and log why)
        if a key cannot be used. False when kept, or when this server has none."""
        if self._tokens is None:
            return False
        try:
            keys = load_token_keys(security)
        except ConfigError as error:
            self.log.error(
                "not using new token keys: {reason}; keeping the ones in use", reason=str(error)
            )
            return False
        before = self._tokens.keys
        if keys == before:
            self.log.info("token keys unchanged")
            return True
        self._tokens.use(keys)
        self.log.info(
            "token keys reloaded: current key {current}, previous key {previous}",
            current="unchanged" if keys.current == before.current else "new",
            previous="none" if keys.previous is None else "set",
        )
        return True

    def use_crl(self, path: Path | None, interval: float) -> bool:
        """Check peers against the CRL at ``path`` (None: against none) every
        ``interval`` seconds from now on; read it at once. False, with one error
        logged, if a new file cannot be used: the list in force stays, and so does
        the file it is read from."""
        if interval != self._interval:
            self.log.info(
                "checking the CRL every {interval:g} s (was {before:g} s)",
                interval=interval,
                before=self._interval,
            )
            self._interval = interval
            self._schedule_checks()
        if path == self.crl_path:
            self.check_crl(force=True)
            return True
        before = self.crl_path
        if path is None:
            count = len(self.revocations) if self.revocations is not None else 0
            self.crl_path, self.revocations, self._state = None, None, None
            self._stop_checks()
            self.log.warn(
                "{file} names no CRL any more: peers are no longer checked for revocation "
                "(the {count} certificates revoked by {before} are let in again)",
                file=self._security_source,
                count=count,
                before=str(before),
            )
            return True
        try:
            revocations, state = read_crl(path, self.credentials.ca_certificate)
        except CRLError as error:
            keeping = "no CRL in use" if before is None else "still checking against " + str(before)
            self.log.error(
                "not using the CRL {path}: {reason}; {keeping}",
                path=str(path),
                reason=str(error),
                keeping=keeping,
            )
            return False
        self.crl_path, self.revocations, self._state = path, revocations, state
        self.log.info(
            "checking peers against the CRL {path} from now on ({count} revoked; was {before})",
            path=str(path),
            count=len(revocations),
            before="no CRL" if before is None else str(before),
        )
        self._warn_if_outdated()
        self._schedule_checks()
        self._close_revoked()
        return True

    def reload_credentials(self) -> bool:
        """Use the certificate, key and CA now in the files for new connections.

        Keeps the current ones (and logs why) unless the new certificate carries the
        same identity, goes with the key, and is signed by the CA.
        """
        tls = self._tls
        try:
            tls.check(self._config_source)
            check_private(tls.key, self._config_source, "tls.key", "the private key")
            fresh = NodeCredentials.load(tls.certificate, tls.key, tls.ca)
            certificate = fresh.certificate
            identity = identity_from_certificate(certificate)
            certificate.verify_directly_issued_by(fresh.ca_certificate)
        except (ConfigError, InvalidIdentity) as error:
            self._keep_credentials(str(error))
            return False
        except Exception as error:
            # PEM errors, a key that does not match, a signature by another CA...
            self._keep_credentials(f"{type(error).__name__}: {error}")
            return False
        if identity != self.identity:
            self._keep_credentials(
                f"the new certificate is for {identity}, this server is {self.identity}"
            )
            return False
        old = self.credentials.certificate
        if certificate == old and fresh.ca_certificate == self.credentials.ca_certificate:
            self.log.info("certificate, key and CA unchanged")
            return True
        self.credentials.replace(fresh)
        self.log.info(
            "new connections now use the certificate {certificate}, valid until {until} "
            "(was serial {old:#x}); open connections keep theirs",
            certificate=describe_certificate(certificate),
            until=certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"),
            old=old.serial_number,
        )
        return True

    def _keep_credentials(self, reason: str) -> None:
        self.log.error(
            "not using the new certificate in {path}: {reason}; keeping serial {serial:#x}",
            path=str(self._tls.certificate),
            reason=reason,
            serial=self.credentials.certificate.serial_number,
        )

    def check_crl(self, force: bool = False) -> None:
        """Load the CRL if it changed (or if ``force``) and close sessions it revokes."""
        if self.crl_path is None:
            return
        try:
            revocations, state = read_crl(self.crl_path, self.credentials.ca_certificate)
        except CRLError as error:
            self._keep_revocations(str(error), force)
            return
        if state.same_content(self._state):
            self._state = state
            if force:
                self.log.info(
                    "CRL {path} unchanged: {count} revoked certificates",
                    path=str(self.crl_path),
                    count=len(revocations),
                )
            return
        before = len(self.revocations) if self.revocations is not None else 0
        self.revocations, self._state = revocations, state
        self.log.info(
            "CRL {path} loaded: {count} revoked certificates (before: {before})",
            path=str(self.crl_path),
            count=len(revocations),
            before=before,
        )
        self._warn_if_outdated()
        self._close_revoked()

    def _close_revoked(self) -> None:
        closed = self.registry.sweep()
        if closed:
            self.log.warn(
                "closed {closed} connections whose peer the CRL now revokes", closed=closed
            )

    def _keep_revocations(self, reason: str, force: bool) -> None:
        # Say it once per bad version of the file (and on every SIGHUP), not every check.
        marker = FileState(mtime_ns=-1, size=-1, digest=reason)
        if not force and marker == self._state:
            return
        self._state = marker
        count = len(self.revocations) if self.revocations is not None else 0
        self.log.critical(
            "the CRL cannot be used: {reason}; still refusing the {count} certificates "
            "of the last good list until it is fixed",
            reason=reason,
            count=count,
        )

    def _warn_if_outdated(self) -> None:
        if self.revocations is not None and self.revocations.is_outdated(datetime.now(UTC)):
            assert self.revocations.next_update is not None
            self.log.warn(
                "the CRL {path} was due for renewal on {when}; it may miss revocations "
                "(sign a fresh one with 'dfs ca crl --renew')",
                path=str(self.crl_path),
                when=self.revocations.next_update.strftime("%Y-%m-%d %H:%M UTC"),
            )
