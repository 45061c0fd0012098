"""What every DFS daemon shares: twistd options, credentials, listeners, startup errors.

A daemon's ``makeService`` loads its config, applies the command-line overrides,
checks its certificate, and composes services with the helpers here. Any
configuration problem ends the program before it listens, with one line naming
the file (or option), the key and what was expected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

from cryptography import x509
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorCore
from twisted.internet.protocol import Factory
from twisted.python import usage
from twisted.web.server import Site

from dfs.config import Address, ConfigError, TLSFiles, override
from dfs.protocol.limits import LimitedFactory, ServerLimits
from dfs.security.identity import Identity, InvalidIdentity, Role, identity_from_certificate
from dfs.security.secrets import check_private
from dfs.security.tls import NodeCredentials

C = TypeVar("C")


class NodeOptions(usage.Options):
    """Options common to dfs-meta and dfs-data; each overrides its config file."""

    #: (option name, config key) pairs that override the file when given.
    overrides: tuple[tuple[str, str], ...] = (
        ("name", "name"),
        ("listen", "listen"),
        ("http-listen", "http_listen"),
        ("data-dir", "data_dir"),
    )
    optParameters: list[list[Any]] = [
        ["config", "c", None, "Path of the JSON configuration file."],
        ["name", None, None, "Node name (must match the name in its certificate)."],
        ["listen", None, None, "HOST:PORT for AMP over mutual TLS."],
        ["http-listen", None, None, "HOST:PORT for /health, /metrics and /api/v1/status."],
        ["data-dir", None, None, "Folder for this node's state."],
    ]


def apply_overrides(config: C, options: NodeOptions) -> C:
    for option, key in options.overrides:
        value = options.get(option)
        if value is not None:
            config = override(config, key, value, f"--{option}")
    return config


class StartupError(Exception):
    """The node's own data forbids starting (a damaged journal, say); one line."""


def exit_on_config_error(program: str, build: Callable[[], C]) -> C:
    """Run ``build``; on a ConfigError print one line and exit with status 78
    (EX_CONFIG), on a StartupError with status 70 (EX_SOFTWARE)."""
    try:
        return build()
    except ConfigError as error:
        _fail(program, str(error))
    except StartupError as error:
        _fail(program, str(error), status=70)


def stop_at_once(program: str, message: str) -> NoReturn:
    """End the process now, with one line on stderr and status 70: for a node that
    must not send or acknowledge anything more (its journal can no longer be written)."""
    print(f"{program}: error: {message}", file=sys.__stderr__, flush=True)
    os._exit(70)


def _fail(program: str, message: str, status: int = 78) -> NoReturn:
    kind = "configuration error" if status == 78 else "error"
    # sys.__stderr__: once twistd has started logging, sys.stderr goes to the log.
    print(f"{program}: {kind}: {message}", file=sys.__stderr__, flush=True)
    raise SystemExit(status)


def load_credentials(tls: TLSFiles, source: str, role: Role) -> tuple[NodeCredentials, Identity]:
    """Load the node's certificate, key and CA and check the certificate's role."""
    tls.check(source)
    check_private(tls.key, source, "tls.key", "the private key")
    try:
        credentials = NodeCredentials.load(tls.certificate, tls.key, tls.ca)
    except Exception as error:
        raise ConfigError(
            file=source,
            key="tls",
            expected="a PEM certificate, its private key and the CA certificate",
            got=f"{type(error).__name__}: {error}",
        ) from None
    certificate = x509.load_pem_x509_certificate(tls.certificate.read_bytes())
    try:
        identity = identity_from_certificate(certificate)
    except InvalidIdentity as error:
        raise ConfigError(
            file=source, key="tls.certificate", expected="a DFS node certificate", got=str(error)
        ) from None
    if identity.role is not role:
        raise ConfigError(
            file=source,
            key="tls.certificate",
            expected=f"a {role.value} certificate",
            got=str(identity),
        )
    return credentials, identity


def check_name(name: str, identity: Identity, source: str) -> None:
    if name != identity.name:
        raise ConfigError(
            file=source,
            key="name",
            expected=f"the name in the certificate ({identity.name!r})",
            got=repr(name),
        )


def tls_listener(
    program: str,
    reactor: IReactorCore,
    address: Address,
    credentials: NodeCredentials,
    factory: Factory,
    limits: ServerLimits | None = None,
) -> IService:
    """The AMP listener; with ``limits``, every connection it accepts is held to them
    (:mod:`dfs.protocol.limits`; the daemon keeps ``limits`` to change them on SIGHUP)."""
    endpoint = SSL4ServerEndpoint(
        reactor, address.port, credentials.server_options(), interface=address.host
    )
    if limits is not None:
        factory = LimitedFactory(factory, limits)
    return _Listener(endpoint, factory, program, address)


def http_listener(program: str, reactor: IReactorCore, address: Address, site: Site) -> IService:
    endpoint = TCP4ServerEndpoint(reactor, address.port, interface=address.host)
    return _Listener(endpoint, site, program, address)


class _Listener(StreamServerEndpointService):
    """A listening port that a daemon cannot do without: failing to bind it stops
    the daemon at start-up with one line, not a traceback, and not a daemon that
    runs on without listening."""

    def __init__(self, endpoint: Any, factory: Any, program: str, address: Address) -> None:
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True
        self._program = program
        self._address = address

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            reason = error.socketError.strerror if error.socketError else str(error)
            _fail(self._program, f"cannot listen on {self._address}: {reason}", 71)


def add_all(parent: Any, services: Iterable[IService]) -> None:
    for child in services:
        child.setServiceParent(parent)
