"""100,000 hostile AMP exchanges against a real metaserver and a real dataserver.

Over mutually authenticated TLS (a client certificate and a dataserver certificate
of the cluster's CA, so the servers' own checks are what stands in the way),
hypothesis generates what a hostile or broken peer could send: every command of
:mod:`dfs.protocol.commands` with arguments missing, extra, mistyped or absurd
(integers past 2**63, paths with NUL, ``..`` and 4,097 bytes, invalid UTF-8,
lists that do not parse), unknown commands, boxes without a command, answers to
nothing, keys too long, boxes too large or with too many keys, truncated boxes,
garbage, and chunk streams with absurd frames. Each hypothesis example sends one
batch of exchanges pipelined on one connection; a connection the server closes for
a protocol violation is expected, and the next batch opens a new one.

Afterwards both servers are alive, answer Ping, hold a bounded resident memory
(printed before and after), and their logs hold no traceback. The run prints how the
exchanges ended and why the servers closed connections. ``DFS_FUZZ_EXAMPLES`` sets the
number of batches (of 100 exchanges; 1,000 by default) for a shorter or longer run.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.protocols import amp

from dfs.dataserver.service import DataserverSession
from dfs.localcluster import LocalCluster, Node
from dfs.metaserver.service import MetaserverSession
from dfs.protocol import commands
from dfs.protocol.records import ChunkPage
from dfs.protocol.stream import HEADER
from dfs.protocol.version import PROTOCOL_VERSION
from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Role

EXCHANGES = 100_000
BATCH = 100
EXAMPLES = int(os.environ.get("DFS_FUZZ_EXAMPLES", EXCHANGES // BATCH))
#: A server that neither answers nor closes within this is hung.
ANSWER_DEADLINE = 60.0
#: Boxes of more than MAX_BOX_BYTES sent in the whole run (4 MiB each on the wire).
OVERSIZED_BUDGET = 12
MiB = 1024 * 1024

# -- the wire ------------------------------------------------------------------------


def pair(key: bytes, value: bytes) -> bytes:
    # A length prefix holds 65,535 at most: what is longer is cut to fit.
    value = value[:0xFFFF]
    return struct.pack("!H", len(key)) + key + struct.pack("!H", len(value)) + value


def box(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(pair(key, value) for key, value in items) + b"\x00\x00"


def encode_list(items: list[bytes]) -> bytes:
    """ListOf's encoding: each item with a 2-byte length."""
    return b"".join(struct.pack("!H", len(item)) + item for item in items)


# -- values ----------------------------------------------------------------------------

# Hostile values come mostly from pools built here (one draw picks one: hypothesis
# then generates a batch in about a millisecond per exchange), the rest from
# hypothesis' own integers, text and bytes.

INTEGER_POOL = (
    [str(n).encode() for n in (2**64, 10**19, 2**1000, -(2**1000), 4096, 4097)]
    + [
        str(n).encode()
        for n in (0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, -(2**63) - 1)
    ]
    + [
        # not integers at all
        b"",
        b" ",
        b"1.5",
        b"0x10",
        b"1e9",
        b"nan",
        b"-",
        b"++1",
        b"\xff\xfe",
        b"9" * 5000,
        b"1_0",
        "\u0661\u0662".encode(),
        b"12\x00",
    ]
)
INTEGERS = st.one_of(
    st.sampled_from(INTEGER_POOL), st.integers(-(2**70), 2**70).map(lambda n: str(n).encode())
)
SEGMENTS = ["a", "..", ".", "", "\x00", "\u00e9", "x" * 255, "x" * 256, "fuzz", "blob"]
PATH_POOL = [
    text.encode("utf-8")
    for text in [
        "/",
        "",
        "/../..",
        "/a/../../etc/passwd",
        "relative/path",
        "/fuzz",
        "/fuzz/blob",
        "/fuzz/blob/..",
        "/a\x00b",
        "/" + "x" * 4096,
        "/" + "x" * 4097,
        "/" + "/".join(["d"] * 2100),
    ]
    + ["/".join(parts) for parts in itertools.product(SEGMENTS, repeat=2)]
    + ["/" + "/".join(parts) for parts in itertools.product(SEGMENTS, repeat=3)]
]
INVALID_UTF8_POOL = [b"\xff", b"/\xc3(", b"/a\xed\xa0\x80", b"\xc0\xaf", b"/\xe2\x82", b"\x80"]
TEXT_POOL = PATH_POOL + INVALID_UTF8_POOL + [b"x" * 65535, b"127.0.0.1:1", b"-1", b"read", b"write"]
TEXT = st.one_of(
    st.sampled_from(TEXT_POOL),
    st.sampled_from(TEXT_POOL),
    st.text(max_size=20).map(lambda text: ("/" + text).encode("utf-8")),
    st.binary(max_size=30),
)
PATHS = st.sampled_from(PATH_POOL)
FLOATS = st.sampled_from(
    [b"nan", b"inf", b"-inf", b"1e308", b"1e309", b"-0", b"x", b"", b"1.5", b"-1e-320", b"0.1"]
)
BOOLEANS = st.sampled_from([b"True", b"False", b"true", b"1", b"", b"\x00", b"False\x00"])
SCALAR_POOL = INTEGER_POOL + TEXT_POOL + [b"nan", b"True", b"\x00"]
SCALARS = st.sampled_from(SCALAR_POOL)


def _lists() -> list[bytes]:
    """ListOf and AmpList values: well formed with hostile items, cut short, nested
    boxes of hostile values, boxes cut short."""
    pool = []
    for size in (0, 1, 2, 30, 3000):
        for item in (b"1", b"x" * 300, b"\xff", b"/a/../b", b"9" * 400, b""):
            pool.append(encode_list([item] * size))
    pool += [wire[:-1] for wire in pool if wire]
    for items in ([(b"chunk_id", b"1"), (b"version", b"nan")], [(b"k", b"\xff")], []):
        wire = box(items) * 3
        pool += [wire, wire[:-1], wire[:3]]
    pool += [b"\x00", b"\xff\xff", b"\x00\x05ab"]
    return pool


LIST_POOL = _lists()
LISTS = st.one_of(st.sampled_from(LIST_POOL), st.binary(max_size=100))


def values_for(argument: amp.Argument) -> st.SearchStrategy[bytes]:
    if isinstance(argument, amp.Boolean):
        return BOOLEANS
    if isinstance(argument, amp.Integer):
        return INTEGERS
    if isinstance(argument, amp.Float):
        return FLOATS
    if isinstance(argument, amp.String):  # and Unicode
        return TEXT
    if isinstance(argument, (amp.ListOf, amp.AmpList)):
        return LISTS
    return st.binary(max_size=70_000)


# -- exchanges -------------------------------------------------------------------------


@attrs.frozen
class Exchange:
    """One thing sent. A ``box`` gets ``_ask`` added by the sender when ``ask`` is
    "tag" (a fresh tag), "bogus" (a tag that is not a number) or "none"; ``raw`` is
    sent as it is and ends the connection's use (``terminal``)."""

    kind: str
    items: list[tuple[bytes, bytes]] = attrs.field(factory=list)
    ask: str = "tag"
    raw: bytes = b""
    terminal: bool = False


UNKNOWN_NAMES = st.one_of(
    st.sampled_from([b"NoSuchCommand", b"", b"\x00", b"Ping\x00", b"ping", b"x" * 255, b"\xff"]),
    st.binary(min_size=1, max_size=40),
)
EXTRA_KEYS = st.binary(min_size=1, max_size=255).filter(lambda key: not key.startswith(b"_"))


def command_exchanges(
    served: list[type[commands.DFSCommand]], known: dict[bytes, list[bytes]]
) -> st.SearchStrategy[Exchange]:
    """Commands for a server that serves ``served``: mostly those, some of the others
    (the server answers them UNHANDLED), some unknown ones."""
    # A chunk stream ends AMP on its connection: it comes as a terminal exchange only.
    others = [
        command
        for command in commands.ALL_COMMANDS
        if command not in served and command is not commands.OpenChunkStream
    ]

    def argument_values(key: bytes, argument: amp.Argument) -> st.SearchStrategy[bytes | None]:
        """One draw for an argument: missing (None), mistyped, plausible or hostile."""
        plausible = [st.sampled_from(known[key])] * 3 if key in known else []
        typed = values_for(argument)
        return st.one_of(st.none(), SCALARS, *plausible, typed, typed, typed, typed)

    plans = {
        command: [(key, argument_values(key, argument)) for key, argument in command.arguments]
        for command in commands.ALL_COMMANDS
    }

    @st.composite
    def build(draw: st.DrawFn) -> Exchange:
        pick = draw(st.integers(0, 19))
        if pick == 0:
            name, kind, plan = draw(UNKNOWN_NAMES), "unknown command", []
        else:
            command = draw(st.sampled_from(served if pick > 2 else others))
            name, kind, plan = command.commandName, command.__name__, plans[command]
        items = [(b"_command", name)]
        for key, values in plan:
            value = draw(values)
            if value is not None:
                items.append((key, value))
        if draw(st.integers(0, 9)) == 0:
            items.append((draw(EXTRA_KEYS), draw(SCALARS)))  # extra
        ask = draw(st.sampled_from(["tag"] * 8 + ["none", "bogus"]))
        return Exchange(kind=kind, items=items, ask=ask)

    return build()


@st.composite
def terminal_exchanges(draw: st.DrawFn) -> Exchange:
    """What breaks the framing: the server closes the connection, or waits for the
    rest of a box that never comes."""
    kind = draw(
        st.sampled_from(
            [
                "key too long",
                "value cut short",
                "truncated box",
                "box without a command",
                "empty box",
                "too many keys",
                "oversized box",
                "garbage",
                "chunk stream",
                "answer to nothing",
                "error to nothing",
            ]
        )
    )
    raw: bytes
    if kind == "key too long":
        raw = struct.pack("!H", draw(st.integers(256, 0xFFFF))) + b"k" * 256
    elif kind == "value cut short":
        raw = pair(b"_command", b"Ping")[:-4] + struct.pack("!H", 0xFFFF) + b"v" * 100
    elif kind == "truncated box":
        whole = box([(b"_command", b"Stat"), (b"_ask", b"1"), (b"path", draw(PATHS))])
        raw = whole[: draw(st.integers(1, len(whole) - 1))]
    elif kind == "box without a command":
        raw = box(draw(st.lists(st.tuples(EXTRA_KEYS, st.binary(max_size=20)), max_size=4)))
    elif kind == "empty box":
        raw = b"\x00\x00"
    elif kind == "too many keys":
        raw = b"".join(pair(b"%05d" % i, b"") for i in range(draw(st.integers(1100, 3000))))
    elif kind == "oversized box":
        raw = b"".join(pair(b"v%d" % i, b"x" * 0xFFFF) for i in range(66)) + b"\x00\x00"
    elif kind == "answer to nothing":
        raw = box([(b"_answer", draw(INTEGERS)), (b"name", b"x")])
    elif kind == "error to nothing":
        items = [(b"_error", draw(INTEGERS)), (b"_error_code", draw(TEXT))]
        raw = box(items + draw(st.sampled_from([[], [(b"_error_description", b"no")]])))
    elif kind == "garbage":
        raw = draw(st.binary(min_size=1, max_size=3000))
    else:
        frames = draw(
            st.lists(
                st.tuples(
                    st.integers(0, 255),
                    st.sampled_from([0, 1, 2**63, 2**64 - 1]),
                    st.sampled_from([0, 1, 2**63, 2**64 - 1]),
                    st.sampled_from([0, 1, 65535, 2**63, 2**64 - 1]),
                    st.sampled_from([0, 1, 65536, 65537, 2**31, 2**32 - 1]),
                ),
                min_size=1,
                max_size=4,
            )
        )
        raw = box([(b"_command", b"OpenChunkStream"), (b"_ask", b"999999")]) + b"".join(
            HEADER.pack(*frame) + b"d" * min(frame[4], 70_000) for frame in frames
        )
    return Exchange(kind=kind, raw=raw, ask="none", terminal=True)


# -- connections -----------------------------------------------------------------------


@attrs.define
class Certificate:
    role: str
    certificate: Path
    key: Path


class Connection:
    """A TLS connection to one server, and the boxes it answered."""

    def __init__(self, address: str, ca: Path, certificate: Certificate) -> None:
        host, port = address.rsplit(":", 1)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca)
        context.load_cert_chain(certificate.certificate, certificate.key)
        raw = socket.create_connection((host, int(port)), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.buffer = bytearray()
        self.closed = False
        self.tag = 0
        # Every connection states its protocol version first (dfs.protocol.version);
        # the hostile exchanges come after it.
        version = str(PROTOCOL_VERSION).encode()
        self.send(
            amp.AmpBox(_command=b"Hello", _ask=b"0", protocol=version, software=b"fuzz").serialize()
        )
        next(self.boxes(time.monotonic() + 10), None)

    def next_tag(self) -> bytes:
        self.tag += 1
        return b"%d" % self.tag

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError):
            self.closed = True
        return not self.closed

    def boxes(self, deadline: float) -> Iterator[dict[bytes, bytes]]:
        """Boxes as they arrive, until the server closes or ``deadline`` passes."""
        while True:
            parsed = self._parse()
            if parsed is not None:
                yield parsed
                continue
            if self.closed:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                return
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
            self.buffer += data

    def _parse(self) -> dict[bytes, bytes] | None:
        view, position, found = self.buffer, 0, {}
        while True:
            if len(view) < position + 2:
                return None
            (length,) = struct.unpack_from("!H", view, position)
            if length == 0:
                del self.buffer[: position + 2]
                return found
            if len(view) < position + 2 + length + 2:
                return None
            key = bytes(view[position + 2 : position + 2 + length])
            position += 2 + length
            (length,) = struct.unpack_from("!H", view, position)
            if len(view) < position + 2 + length:
                return None
            found[key] = bytes(view[position + 2 : position + 2 + length])
            position += 2 + length

    def ends_soon(self, seconds: float) -> bool:
        """True if the server closes the connection within ``seconds``."""
        deadline = time.monotonic() + seconds
        for _ in self.boxes(deadline):
            pass
        return self.closed

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


@attrs.define
class Tally:
    sent: int = 0
    outcomes: collections.Counter[str] = attrs.field(factory=collections.Counter)
    kinds: collections.Counter[str] = attrs.field(factory=collections.Counter)
    connections: int = 0
    oversized: int = 0
    #: seconds spent sending and waiting for the servers (the rest is generating)
    waited: float = 0.0


def exchange_batch(
    connection: Connection, exchanges: list[Exchange], tally: Tally
) -> Connection | None:
    """Send ``exchanges`` pipelined and wait for their answers, then the terminal one
    (if any) alone; the connection if it can go on, None if it ended."""
    waiting: set[bytes] = set()
    wire = []
    for exchange in exchanges:
        tally.sent += 1
        tally.kinds[exchange.kind] += 1
        if exchange.terminal:
            continue
        items = list(exchange.items)
        if exchange.ask == "tag":
            tag = connection.next_tag()
            waiting.add(tag)
            items.append((b"_ask", tag))
        elif exchange.ask == "bogus":
            items.append((b"_ask", b"not-a-tag\xff"))
            tally.outcomes["sent with a bogus tag"] += 1
        else:
            tally.outcomes["sent without a tag"] += 1
        wire.append(box(items))
    asked = len(waiting)
    if connection.send(b"".join(wire)):
        deadline = time.monotonic() + ANSWER_DEADLINE
        for answer in connection.boxes(deadline):
            tag = answer.get(b"_answer", answer.get(b"_error"))
            if tag not in waiting:
                continue
            waiting.discard(tag)
            if b"_answer" in answer:
                tally.outcomes["answered"] += 1
            else:
                code = answer.get(b"_error_code", b"?").decode("ascii", "replace")
                assert code != "UNKNOWN", f"an unexpected error: {answer!r}"
                tally.outcomes[f"error {code}"] += 1
            if not waiting:
                break
        if waiting and not connection.closed:
            raise AssertionError(
                f"hung: {len(waiting)} of {asked} requests neither answered nor closed "
                f"within {ANSWER_DEADLINE:g} s"
            )
    tally.outcomes["connection closed before the answer"] += len(waiting)
    terminal = [exchange for exchange in exchanges if exchange.terminal]
    if terminal:
        if connection.closed:
            tally.outcomes[f"not sent: closed before ({terminal[0].kind})"] += 1
        else:
            connection.send(terminal[0].raw)
            closed = connection.closed or connection.ends_soon(0.05)
            outcome = "closed by the server" if closed else "server waiting for more"
            tally.outcomes[f"{outcome} ({terminal[0].kind})"] += 1
        connection.close()
        return None
    if connection.closed:
        connection.close()
        return None
    return connection


# -- the servers -----------------------------------------------------------------------


def resident_bytes(node: Node) -> int:
    pid = node.pid()
    assert pid is not None, f"{node.name} is not running"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {node.name}")


def ping(node: Node, ca: Path, certificate: Certificate) -> dict[bytes, bytes]:
    connection = Connection(node.address, ca, certificate)
    try:
        assert connection.send(box([(b"_command", b"Ping"), (b"_ask", b"1")]))
        for answer in connection.boxes(time.monotonic() + 10):
            if answer.get(b"_answer") == b"1":
                return answer
        raise AssertionError(f"{node.name} did not answer Ping within 10 s")
    finally:
        connection.close()


def put_file(cluster: LocalCluster, tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(os.urandom(300_000))
    env = {**os.environ, "DFS_CONFIG": str(cluster.client_config), "HOME": str(tmp_path)}
    for arguments in (["mkdir", "/fuzz"], ["put", str(source), "/fuzz/blob"]):
        done = subprocess.run(
            [sys.executable, "-m", "dfs_shell.main", *arguments],
            capture_output=True,
            env=env,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done


def chunk_values(meta: Node, ca: Path, certificate: Certificate) -> dict[bytes, list[bytes]]:
    """Real chunk ids, versions and read tokens of /fuzz/blob, for plausible reads."""
    connection = Connection(meta.address, ca, certificate)
    try:
        request = [(b"_command", b"GetChunks"), (b"_ask", b"1"), (b"path", b"/fuzz/blob")]
        request += [(b"first", b"0"), (b"limit", b"10")]
        connection.send(box(request))
        for answer in connection.boxes(time.monotonic() + 20):
            if answer.get(b"_answer") == b"1":
                objects: dict[str, Any] = {}
                ChunkPage().fromBox(b"chunks", answer, objects, None)
                chunks = objects["chunks"]
                print(f"\n/fuzz/blob: {len(chunks)} chunk(s), read tokens used in ReadChunk")
                return {
                    b"chunk_id": [str(chunk.chunk_id).encode() for chunk in chunks],
                    b"version": [str(chunk.version).encode() for chunk in chunks],
                    b"token": [chunk.token.encode() for chunk in chunks] or [b""],
                }
        raise AssertionError(f"GetChunks of /fuzz/blob failed: {connection.buffer!r}")
    finally:
        connection.close()


#: What a server logs when something escaped its error handling.
PROBLEMS = ("Traceback", "Unhandled Error", "Unhandled error", "UNKNOWN", "Unexpected")


def logs(cluster: LocalCluster) -> Iterator[tuple[Node, str]]:
    """Every line each node logged (twistd rotates its log every megabyte)."""
    for node in cluster.nodes:
        for path in sorted(node.logfile.parent.glob(node.logfile.name + "*")):
            for line in path.read_text(errors="replace").splitlines():
                yield node, line


#: Lines that are expected refusals whatever they quote: a command name the fuzzer made
#: up may itself hold a word of PROBLEMS (hypothesis borrows constants such as
#: b"UNKNOWN_DATASERVER" from the code under test).
EXPECTED = ("refused unknown command ",)


def problems_in_logs(cluster: LocalCluster) -> list[str]:
    found = []
    for node, line in logs(cluster):
        if any(expected in line for expected in EXPECTED):
            continue
        if any(problem in line for problem in PROBLEMS):
            found.append(f"{node.name}: {line}")
    return found


def closing_reasons(cluster: LocalCluster) -> collections.Counter[str]:
    """Why the servers closed connections, as their logs say (addresses left out)."""
    reasons: collections.Counter[str] = collections.Counter()
    for node, line in logs(cluster):
        if "refused input from" in line or "refused connection from" in line:
            reason = line.split(": ", 2)[-1]
            reasons[f"{node.name}: {re.sub(r'[0-9]+', 'N', reason)[:90]}"] += 1
    return reasons


@pytest.mark.slow
def test_hostile_exchanges_crash_nothing_hang_nothing_and_leave_memory_bounded(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(
        dataservers=1, replication={"default_replication": 1, "min_replication": 1}
    )
    meta, data = cluster.metaservers[0], cluster.dataservers[0]
    ca_path = cluster.directory / "ca" / "ca.crt"
    authority = CertificateAuthority.load(cluster.directory / "ca")
    certificates = []
    for role, name in ((Role.CLIENT, "fuzzer"), (Role.DATASERVER, "fuzzds")):
        issued = authority.issue(role, name, out_dir=tmp_path)
        certificates.append(Certificate(role.value, issued.certificate_path, issued.key_path))
    put_file(cluster, tmp_path)
    known: dict[bytes, list[bytes]] = {
        b"path": [b"/fuzz/blob", b"/fuzz", b"/fuzz/new", b"/"],
        b"source": [b"/fuzz/blob"],
        b"destination": [b"/fuzz/moved"],
        b"name": [b"fuzzds", b"ds1"],
        b"offset": [b"0", b"65536", b"131072"],
        b"length": [b"65536", b"300000"],
        b"request_id": [b"fuzz-1"],
        **chunk_values(meta, ca_path, certificates[0]),
    }

    before = {node.name: resident_bytes(node) for node in (meta, data)}
    tally = Tally()
    open_connections: dict[tuple[str, str], Connection] = {}
    served = {
        "meta": sorted(MetaserverSession._commandDispatch, key=bytes),  # type: ignore[attr-defined]
        "data": sorted(DataserverSession._commandDispatch, key=bytes),  # type: ignore[attr-defined]
    }
    by_name = {command.commandName: command for command in commands.ALL_COMMANDS}
    exchanges = {
        target: command_exchanges(
            [by_name[name] for name in names if name in by_name and name != b"OpenChunkStream"],
            known,
        )
        for target, names in served.items()
    }

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(draws=st.data())
    def run(draws: st.DataObject) -> None:
        target = draws.draw(st.sampled_from(["meta", "data"]), "target")
        who = draws.draw(st.sampled_from([0, 0, 0, 1]), "certificate")
        exchange = exchanges[target]
        boxes = draws.draw(st.lists(exchange, min_size=BATCH - 1, max_size=BATCH - 1), "boxes")
        last = draws.draw(st.one_of(exchange, terminal_exchanges(), exchange, exchange), "last")
        if last.kind == "oversized box":
            if tally.oversized >= OVERSIZED_BUDGET:
                last = Exchange(kind="empty box", raw=b"\x00\x00", ask="none", terminal=True)
            tally.oversized += 1
        node = meta if target == "meta" else data
        certificate = certificates[who]
        key = (target, certificate.role)
        connection = open_connections.pop(key, None)
        if connection is None:
            connection = Connection(node.address, ca_path, certificate)
            tally.connections += 1
        began = time.monotonic()
        kept = exchange_batch(connection, [*boxes, last], tally)
        tally.waited += time.monotonic() - began
        if kept is not None:
            open_connections[key] = kept

    started = time.monotonic()
    try:
        run()
    finally:
        for connection in open_connections.values():
            connection.close()
    took = time.monotonic() - started

    print(
        f"\nREPORT fuzz: {tally.sent} exchanges in {took:.0f} s ({tally.waited:.0f} s sending "
        f"and waiting) over {tally.connections} connections"
    )
    for outcome, count in sorted(tally.outcomes.items(), key=lambda item: -item[1]):
        print(f"REPORT fuzz:   {count:7d}  {outcome}")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(tally.kinds.items()))
    print(f"REPORT fuzz:   by kind: {kinds}")
    assert tally.sent >= EXAMPLES * BATCH

    for node in (meta, data):
        assert ping(node, ca_path, certificates[0])[b"name"] == node.name.encode()
    after = {node.name: resident_bytes(node) for node in (meta, data)}
    for name in before:
        print(
            f"REPORT fuzz: {name} resident {before[name] / MiB:.1f} MiB before, "
            f"{after[name] / MiB:.1f} MiB after"
        )
    print("REPORT fuzz: the servers closed connections for:")
    for reason, count in closing_reasons(cluster).most_common():
        print(f"REPORT fuzz:   {count:7d}  {reason}")
    assert cluster.running().keys() >= {meta.name, data.name}
    problems = problems_in_logs(cluster)
    assert not problems, "\n".join(problems[:20])
    for name in before:
        assert after[name] < 2 * before[name] + 100 * MiB, f"{name} grew too much"
