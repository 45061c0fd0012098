"""SIGHUP: security_config.json read again and handed to the owners of its settings
(dfs.reload), with task.Clock and no network."""

from __future__ import annotations

import json
import shutil
import signal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from dfs.config import TLSFiles, load_security_config
from dfs.config.model import ConnectionLimits
from dfs.config.reload import ALL_KEYS
from dfs.protocol.limits import ServerLimits
from dfs.reload import SecurityReload, apply_limits, apply_token_lifetime
from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Identity, Role
from dfs.security.tls import NodeCredentials
from dfs.security.tokenkeys import load_token_keys
from dfs.security.tokens import TokenIssuer, TokenKeys
from dfs.trust import TrustService

HOST = "127.0.0.1"
DATASERVER_KEYS = frozenset(
    {"token_key_file", "token_previous_key_file", "crl", "crl_check_interval", "limits"}
)


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def texts(events: list[dict], level: LogLevel | None = None) -> list[str]:
    return [formatEvent(e) for e in events if level is None or e.get("log_level") == level]


def secret(path: Path, value: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(value + b"\n")
    path.chmod(mode)
    return path


class KeyHolder:
    """What mints or checks tokens, as TrustService sees it."""

    def __init__(self, keys: TokenKeys) -> None:
        self.keys = keys
        self.used: list[TokenKeys] = []

    def use(self, keys: TokenKeys) -> None:
        self.keys = keys
        self.used.append(keys)


class FakeSession:
    """What the trust service's registry needs of a session."""

    def __init__(self, name: str) -> None:
        self.peer = Identity(Role.CLIENT, name)
        self.peer_address = "127.0.0.1:1"
        self.closed = False

    def close_refused(self) -> None:
        self.closed = True


class Server:
    """A server's files (a CA, its certificate, token keys, security_config.json) and
    the services a daemon builds from them: trust, connection limits, SIGHUP."""

    def __init__(self, root: Path, used: frozenset[str] = ALL_KEYS, **settings: Any) -> None:
        self.root = root
        self.ca = CertificateAuthority.create(root / "ca")
        issued = self.ca.issue(Role.DATASERVER, "ds1", [HOST], out_dir=root / "ds1")
        self.tls = TLSFiles(
            certificate=issued.certificate_path, key=issued.key_path, ca=self.ca.certificate_path
        )
        secret(root / "token.key", b"a" * 64)
        self.config = root / "security_config.json"
        self.write(**settings)
        security = load_security_config(self.config)
        self.tokens = KeyHolder(load_token_keys(security))
        self.clock = Clock()
        self.trust = TrustService(
            self.clock,
            NodeCredentials.load(self.tls.certificate, self.tls.key, self.tls.ca),
            issued.identity,
            self.tls,
            "dataserver_config.json",
            security,
            tokens=self.tokens,
        )
        self.limits = ServerLimits(security.limits, self.clock)
        self.reload = SecurityReload(
            self.clock,
            self.trust,
            security,
            [self.trust.apply_security, partial(apply_limits, self.limits)],
            used,
            handle_sighup=False,
        )

    def write(self, **settings: Any) -> None:
        self.config.write_text(json.dumps(settings))


# -- the signal ------------------------------------------------------------------------


def test_sighup_is_handled_in_the_reactor_and_the_handler_restored(tmp_path):
    server = Server(tmp_path)
    calls: list = []

    class Reactor(Clock):
        def callFromThread(self, f, *args):
            calls.append((f, args))

    before = signal.getsignal(signal.SIGHUP)
    reload = SecurityReload(Reactor(), server.trust, server.reload.security, [], ALL_KEYS)
    reload.startService()
    try:
        signal.raise_signal(signal.SIGHUP)
        assert calls == [(reload.reload, ("SIGHUP",))]
    finally:
        reload.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


# -- what applies, what is refused ---------------------------------------------------


def test_a_file_that_cannot_be_used_is_logged_in_one_line_and_changes_nothing(tmp_path, events):
    server = Server(tmp_path, crl=None, limits={"idle_timeout": 60})
    running = server.reload.security
    in_force = server.limits.limits
    for broken in ('{"limits": {"idle_timeout": 5}', '{"limits": {"idle_timeout": -1}}'):
        server.config.write_text(broken)
        assert server.reload.reload_security() is None
    assert server.reload.security is running
    assert server.limits.limits is in_force and in_force.idle_timeout == 60
    errors = texts(events, LogLevel.error)
    assert len(errors) == 2, errors
    prefix = f"security_config.json not reloaded, the settings in use stay: {server.config}: "
    assert all(line.startswith(prefix) for line in errors), errors
    assert "invalid JSON" in errors[0] and "'limits.idle_timeout'" in errors[1]
    assert all("\n" not in line for line in errors)


def test_keys_read_only_at_start_are_named_one_line_each_and_the_rest_applies(tmp_path, events):
    server = Server(tmp_path, crl=None)
    server.write(
        superusergroup="admins",
        raft_password_file="other.password",
        limits={"connections_per_identity": 2},
    )
    plan = server.reload.reload_security()
    assert plan is not None and plan.restart == ("raft_password_file", "superusergroup")
    warnings = texts(events, LogLevel.warn)
    assert f"{server.config}: raft_password_file changed; restart to apply" in warnings
    assert f"{server.config}: superusergroup changed; restart to apply" in warnings
    assert server.limits.limits.connections_per_identity == 2
    assert server.reload.security.superusergroup == "supergroup"
    assert server.reload.security.limits.connections_per_identity == 2
    assert f"{server.config} reloaded: applied limits.connections_per_identity" in texts(events)


def test_keys_a_dataserver_does_not_read_are_neither_applied_nor_named(tmp_path, events):
    server = Server(tmp_path, used=DATASERVER_KEYS, crl=None)
    server.write(superusergroup="admins", audit_log="audit.log")
    plan = server.reload.reload_security()
    assert plan is not None and plan.changed == ()
    assert not texts(events, LogLevel.warn)
    assert f"{server.config} reloaded: no change applied" in texts(events)


def test_a_part_that_fails_is_logged_and_its_keys_are_tried_again(tmp_path, events):
    server = Server(tmp_path, crl=None)
    attempts: list[float] = []

    def broken(running, fresh):
        attempts.append(fresh.limits.idle_timeout)
        raise RuntimeError("boom")

    reload = SecurityReload(
        server.clock, server.trust, server.reload.security, [broken], ALL_KEYS, handle_sighup=False
    )
    server.write(limits={"idle_timeout": 5})
    reload.reload()
    reload.reload()
    assert attempts == [5, 5]
    assert reload.security.limits.idle_timeout == ConnectionLimits().idle_timeout
    assert any("applying" in line for line in texts(events, LogLevel.critical))


# -- the CRL -----------------------------------------------------------------------------


def test_a_new_crl_path_applies_at_once_a_bad_one_is_refused_and_none_lifts_the_checks(
    tmp_path, events
):
    server = Server(tmp_path, crl=None, crl_check_interval=10)
    shutil.copyfile(server.ca.crl_path, tmp_path / "empty.pem")  # before the revocation
    alice = server.ca.issue(Role.CLIENT, "alice", out_dir=tmp_path / "alice")
    session = FakeSession("alice")
    assert server.trust.registry.admit(session, alice.certificate) is None  # type: ignore[arg-type]
    server.ca.revoke("alice")
    server.trust.startService()
    try:
        server.write(crl="empty.pem", crl_check_interval=10)
        server.reload.reload()
        assert server.trust.crl_path == tmp_path / "empty.pem"
        assert any("checking peers against the CRL" in t for t in texts(events))
        server.clock.advance(30)
        assert not session.closed  # empty.pem does not change

        server.write(crl="ca/crl.pem", crl_check_interval=10)
        server.reload.reload()
        assert session.closed
        assert server.trust.refusal(alice.certificate) is not None
        assert server.reload.security.crl == server.ca.crl_path

        # A file that is not the CA's CRL: the one in force stays, and is named.
        (tmp_path / "junk.pem").write_bytes(b"junk")
        server.write(crl="junk.pem", crl_check_interval=10)
        server.reload.reload()
        assert server.trust.crl_path == server.ca.crl_path
        assert server.reload.security.crl == server.ca.crl_path
        assert server.trust.refusal(alice.certificate) is not None
        errors = [t for t in texts(events, LogLevel.error) if "not using the CRL" in t]
        assert len(errors) == 1 and "junk.pem" in errors[0]
        assert errors[0].endswith(f"still checking against {server.ca.crl_path}")
        assert f"{server.config} reloaded: no change applied; kept crl" in texts(events)

        # Naming no CRL is a decision: the checks stop, loudly.
        server.write(crl=None)
        server.reload.reload()
        assert server.trust.refusal(alice.certificate) is None
        assert any("names no CRL any more" in t for t in texts(events, LogLevel.warn))
    finally:
        server.trust.stopService()


def test_a_new_check_interval_applies_to_the_next_checks(tmp_path):
    server = Server(tmp_path, crl="ca/crl.pem", crl_check_interval=10)
    alice = server.ca.issue(Role.CLIENT, "alice", out_dir=tmp_path / "alice")
    server.trust.startService()
    try:
        server.write(crl="ca/crl.pem", crl_check_interval=1)
        server.reload.reload()
        server.ca.revoke("alice")
        server.clock.advance(1)
        assert server.trust.refusal(alice.certificate) is not None
    finally:
        server.trust.stopService()


# -- token keys and lifetime ------------------------------------------------------------


def test_sighup_hands_the_token_keys_security_config_names_now_to_their_user(tmp_path, events):
    server = Server(tmp_path, crl=None)
    old = tmp_path / "token.key"
    used = server.tokens.used

    server.reload.reload()
    assert used == [] and "token keys unchanged" in texts(events)

    # A rotation: the new key accepted as the previous one, then used to mint.
    new = secret(tmp_path / "token.key.new", b"b" * 64)
    server.write(token_key_file=str(old), token_previous_key_file=str(new))
    server.reload.reload()
    assert used[-1] == TokenKeys(b"a" * 64, b"b" * 64)
    server.write(token_key_file=str(new), token_previous_key_file=str(old))
    server.reload.reload()
    assert used[-1] == TokenKeys(b"b" * 64, b"a" * 64) == server.tokens.keys
    assert "token keys reloaded: current key new, previous key set" in texts(events)

    # Keys that cannot be used are logged, and the ones in use stay.
    before = len(used)
    new.chmod(0o644)
    server.reload.reload()
    assert server.reload.security.token_key_file == new  # as it was, not as refused
    server.write(token_key_file=str(tmp_path / "gone.key"))
    server.reload.reload()
    assert server.reload.security.token_key_file == new
    assert len(used) == before and server.tokens.keys == TokenKeys(b"b" * 64, b"a" * 64)
    errors = [t for t in texts(events, LogLevel.error) if t.startswith("not using new token keys")]
    assert len(errors) == 2, errors
    assert "chmod 600" in errors[0] and "gone.key" in errors[1]
    assert all("\n" not in line for line in errors)


def test_a_server_without_token_keys_reloads_none(tmp_path, events):
    server = Server(tmp_path, crl=None)
    security = server.reload.security
    trust = TrustService(
        server.clock,
        server.trust.credentials,
        server.trust.identity,
        server.tls,
        "dataserver_config.json",
        security,
    )
    assert trust.reload_token_keys(security) is False
    assert trust.apply_security(security, security) == ()
    assert not [t for t in texts(events) if "token keys" in t]


def test_a_new_token_lifetime_applies_to_tokens_minted_from_then_on(tmp_path, events):
    server = Server(tmp_path, crl=None)
    issuer = TokenIssuer(TokenKeys(b"a" * 64), server.reload.security.token_lifetime)
    reload = SecurityReload(
        server.clock,
        server.trust,
        server.reload.security,
        [partial(apply_token_lifetime, issuer)],
        ALL_KEYS,
        handle_sighup=False,
    )
    server.write(token_lifetime=60)
    reload.reload()
    assert issuer.lifetime == 60
    keys = TokenKeys(b"a" * 64)
    claims = keys.verify(
        issuer.issue(1, 1, "read", "alice", now=1000.0), 1, 1, "read", None, 1001.0
    )
    assert claims.expires == 1060.0
    assert "chunk tokens minted from now on last 60 s (was 300 s)" in texts(events)
