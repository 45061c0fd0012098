"""What a running server trusts, kept current without a restart.

:class:`TrustService` is one child service of each daemon. It holds

* the revocation list named by ``crl`` in security_config.json: checked every
  ``crl_check_interval`` seconds and at once on SIGHUP; when it changes, sessions
  whose peer it now revokes are closed, and new handshakes with those peers are
  refused (through the :class:`~dfs.protocol.session.SessionRegistry` every TLS
  connection of the server carries);
* the server's own certificate and key and the CA certificate named in the
  ``tls`` section of its config: read again on SIGHUP and used for every
  connection made afterwards, accepted or dialled, while the open ones go on;
* the chunk token keys (``token_key_file`` and ``token_previous_key_file`` in
  security_config.json, which is read again for their names): read again on SIGHUP
  and handed to whoever mints or checks tokens, so that a key rotation needs no
  restart. Keys that cannot be used are logged and the ones in use stay.

twistd leaves SIGHUP alone (the reactor handles SIGINT, SIGTERM and SIGCHLD,
twistd SIGUSR1 to reopen its log file), and Python's default for SIGHUP ends the
process; this service installs its own handler while it runs. The handler only
hands the work to the reactor (``callFromThread``): nothing is done inside the
signal handler itself.

A CRL that is missing, malformed or not signed by the cluster CA stops the server
at start (a ConfigError naming ``crl``). Later on, such a file is logged as an
error and the list in force stays: revocations are never lifted because a file
went bad, and the server does not stop.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from cryptography import x509
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dfs.config import ConfigError, SecurityConfig, TLSFiles, load_security_config
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
    """A server's credentials and revocation list, reloaded on change and on SIGHUP."""

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
        handle_sighup: bool = True,
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
        self._handle_sighup = handle_sighup
        #: who mints or checks tokens with the keys in use (None: this server has none)
        self._tokens = tokens
        self.revocations: RevocationList | None = None
        self._state: FileState | None = None
        self.registry = SessionRegistry(self.refusal)
        # Every TLS connection made from these credentials leads its session to the registry.
        credentials.attachment = self.registry
        self._loop: LoopingCall | None = None
        self._previous_handler: Any = None
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
            self._loop = LoopingCall(self._check_crl_safely)
            self._loop.clock = self._reactor
            self._loop.start(self._interval, now=False)
        if self._handle_sighup:
            self._previous_handler = signal.signal(signal.SIGHUP, self._sighup)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._handle_sighup and self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return super().stopService()

    def _check_crl_safely(self) -> None:
        # An unforeseen error must neither stop the checks nor the server.
        try:
            self.check_crl()
        except Exception:
            self.log.failure("checking the CRL {path} failed", path=str(self.crl_path))

    def _sighup(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt the reactor anywhere: do the work in its loop.
        self._reactor.callFromThread(self.reload, "SIGHUP")

    # -- reloading -----------------------------------------------------------

    def reload(self, why: str = "SIGHUP") -> None:
        """Read the node's certificate, key and CA again, then the CRL (against that
        CA), then the token keys."""
        self.log.info("{why}: reloading the certificate, key, CA, CRL and token keys", why=why)
        try:
            self.reload_credentials()
            if self.crl_path is not None:
                self.check_crl(force=True)
        except Exception:
            self.log.failure("reloading on {why} failed", why=why)
        try:
            self.reload_token_keys()
        except Exception:
            self.log.failure("reloading the token keys on {why} failed", why=why)

    def reload_token_keys(self) -> bool:
        """Use the token keys security_config.json names now; keep the ones in use
        (and log why) if the file or a key cannot be used. False when kept."""
        if self._tokens is None:
            return False
        try:
            keys = load_token_keys(load_security_config(self._security_source))
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
