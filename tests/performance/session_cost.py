"""What the session layer alone costs per request: both ends in this one process.

    .venv/bin/python tests/performance/session_cost.py [--calls 20000] [--rounds 5] [--profile]

Two :class:`~dfs.protocol.session.PeerSession` (a client and a server) talk over an
in-memory wire: no TLS, no sockets, no reactor. Each call is sent, the bytes moved to
the server, its answer moved back, and the caller's Deferred fired, so what is
measured is the AMP request path of both ends together (box parsing, dispatch,
argument conversion, answer and error handling), the figure request_cost.py cannot
isolate on a busy machine. Beside it, the same with plain Twisted AMP protocols
(``twisted.protocols.amp.AMP``). With ``--profile`` it prints cProfile's top entries
for the Stat-like call.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from dfs.protocol.commands import ANY_ROLE, DFSCommand, Ping
from dfs.protocol.errors import FileNotFound
from dfs.protocol.records import Entry, EntryArgument
from dfs.protocol.session import PeerSession
from dfs.security.identity import Identity, Role

META = Identity(Role.METASERVER, "meta1")
ALICE = Identity(Role.CLIENT, "alice")

ENTRY = Entry(
    path="/bench/file",
    name="file",
    kind="file",
    inode=7,
    owner="alice",
    group="users",
    mode=0o644,
    mtime=1.0,
    length=0,
    replication=3,
    chunk_size=64 << 20,
    complete=True,
)


class BenchStat(DFSCommand):
    """As Stat: one path, one packed entry back."""

    commandName = b"BenchStat"
    arguments: ClassVar[list] = [(b"path", amp.Unicode())]
    response: ClassVar[list] = [(b"entry", EntryArgument())]
    allowed_roles = ANY_ROLE


class PlainPing(amp.Command):
    commandName = b"PlainPing"
    arguments: ClassVar[list] = []
    response: ClassVar[list] = [(b"name", amp.Unicode())]


class Server(PeerSession):
    @BenchStat.responder
    def stat(self, path: str) -> dict[str, Any]:
        if path == "/missing":
            raise FileNotFound(path)
        return {"entry": ENTRY}


class PlainServer(amp.AMP):
    @PlainPing.responder
    def ping(self) -> dict[str, str]:
        return {"name": "sink"}


def wire(server: amp.AMP, client: amp.AMP) -> Callable[[], None]:
    """Connect two protocols in memory; the function moves what each wrote."""
    to_server, to_client = StringTransport(), StringTransport()
    server.makeConnection(to_client)
    client.makeConnection(to_server)

    def pump() -> None:
        while True:
            up = to_server.value()
            down = to_client.value()
            if not up and not down:
                return
            to_server.clear()
            to_client.clear()
            if up:
                server.dataReceived(up)
            if down:
                client.dataReceived(down)

    return pump


def sessions() -> tuple[PeerSession, PeerSession, Callable[[], None]]:
    server, client = Server(META), PeerSession(ALICE)
    pump = wire(server, client)
    server.authenticated(ALICE)
    client.authenticated(META)
    return server, client, pump


def run_calls(
    client: amp.AMP, pump: Callable[[], None], calls: int, make: Callable[[], Any]
) -> None:
    answered = []
    append = answered.append
    for _ in range(calls):
        make().addBoth(append)
        pump()
    assert len(answered) == calls, len(answered)
    assert not any(isinstance(item, BaseException) for item in answered)


def measures(calls: int) -> dict[str, Callable[[], None]]:
    _, client, pump = sessions()
    plain_server, plain_client = PlainServer(), amp.AMP()
    plain_pump = wire(plain_server, plain_client)

    def missing() -> Any:
        return client.callRemote(BenchStat, path="/missing").addErrback(
            lambda failure: failure.trap(FileNotFound)
        )

    return {
        "plain AMP Ping": lambda: run_calls(
            plain_client, plain_pump, calls, lambda: plain_client.callRemote(PlainPing)
        ),
        "Ping": lambda: run_calls(client, pump, calls, lambda: client.callRemote(Ping)),
        "Stat-like": lambda: run_calls(
            client, pump, calls, lambda: client.callRemote(BenchStat, path="/bench/file")
        ),
        "Stat-like, FileNotFound": lambda: run_calls(client, pump, calls, missing),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    arguments = parser.parse_args()
    table = measures(arguments.calls)
    if arguments.profile:
        profile = cProfile.Profile()
        profile.runcall(table["Stat-like"])
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    best: dict[str, float] = {}
    for _ in range(arguments.rounds):
        for name, action in table.items():
            started = time.process_time()
            action()
            spent = (time.process_time() - started) / arguments.calls
            best[name] = min(best.get(name, spent), spent)
    print(f"CPU per call, both ends, best of {arguments.rounds} rounds of {arguments.calls}")
    for name, spent in best.items():
        print(f"{name:<26} {spent * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
