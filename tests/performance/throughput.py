"""Benchmark: client write and read throughput on a local cluster, beside two baselines.

    .venv/bin/python tests/performance/throughput.py [--size 1G] [--files 1000] [--quick]

Starts a local cluster (1 metaserver, 3 dataservers, real twistd processes on
127.0.0.1) in a temporary folder and, with the client library, writes then reads one
file of --size random bytes at replication 1 and at replication 3, then writes and
reads --files files of 64 KiB. Beside them, measured in the same run:

(a) the same bytes sent as WriteChunkData packets of 64 KiB (amp_packet.py), 16 in
    flight, over one mutual-TLS AMP connection to a sink that throws them away
    (amp_sink.py: a PeerSession with the dataserver's certificate and no disk), and
    fetched back with ReadChunk calls and the reader's window: the ceiling of our wire;
(b) the same bytes written to a local file in 64 KiB writes, then fsynced.

Prints MB/s (10^6 bytes per second), files/s, how busy the benchmark process (the
client), the servers and the rest of the machine were, and the ratios to baseline (a)
that the targets are set on. Reads find the replicas on disk, not in the page cache,
where the dataservers write with direct I/O (their default); --cold-read also drops
them from the cache where they do not. The cluster is always stopped and the folder removed,
on an error or Ctrl-C too. Prints figures; asserts nothing.

--profile DIR profiles each phase of every process, with py-spy or perf (see
profiling.py and README.md beside this script).
"""

from __future__ import annotations

import argparse
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
from amp_packet import WINDOW, WriteChunkData  # beside this script
from profiling import TOOLS, PhaseProfiles, default_tool  # beside this script
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from dfs.client import reader as client_reader
from dfs.client import writer as client_writer
from dfs.client.client import IO_SIZE, DFSClient
from dfs.client.connection import ClientCredentials, connect_server
from dfs.config import Address, load_client_config
from dfs.localcluster import HOST, LocalCluster
from dfs.protocol.commands import ReadChunk
from dfs.protocol.session import PeerSession

HERE = Path(__file__).parent
MB = 1e6
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
_TICKS = os.sysconf("SC_CLK_TCK")

SEND = "(a) AMP/mTLS send to a sink"
FETCH = "(a') AMP/mTLS fetch from a sink"
LOCAL = "(b) local file write + fsync"

#: What the ratios are held to (the issue's targets).
WRITE_TARGET = 0.40
READ_TARGET = 0.70


class BenchmarkError(Exception):
    """The benchmark could not run or read back other bytes than it wrote."""


def parse_size(text: str) -> int:
    """``1G``, ``256M``, ``64K``, ``64KiB`` or a plain number of bytes."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS and not value[-1:].isdigit() else ""
    try:
        number = int(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (say 1G, 256M, 64K)") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return number * _UNITS[unit]


def random_bytes(size: int) -> bytes:
    """The same ``size`` bytes on every run (randbytes takes at most 256 MiB at once)."""
    rng = random.Random(1)
    piece = 2**24
    return b"".join(rng.randbytes(min(piece, size - at)) for at in range(0, size, piece))


def human(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


@attrs.frozen
class Figure:
    label: str
    rate: float
    unit: str  # "MB/s" or "files/s"
    seconds: float
    client_cpu: float  # CPU seconds of this process over the phase
    server_cpu: float  # CPU seconds of the cluster's processes (or the sink's) over the phase
    other_cpu: float  # CPU seconds of every other process of the machine over the phase
    #: (a) measured again just before this attempt (big-file phases), in MB/s
    adjacent_send: float | None = None
    #: every attempt's rate over the (a) measured just before it, in order
    attempt_ratios: tuple[float, ...] = ()


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _machine_busy_seconds() -> float:
    """CPU seconds spent by the whole machine, all cores, since boot."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICKS


class CpuMeter:
    """CPU seconds used by this process, by the given server processes, and by the
    rest of the machine: on a shared machine a busy neighbour lowers every figure."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids
        self._client = time.process_time()
        self._servers = sum(_cpu_seconds(pid) for pid in pids)
        self._machine = _machine_busy_seconds()

    def read(self) -> tuple[float, float, float]:
        client = time.process_time() - self._client
        servers = sum(_cpu_seconds(pid) for pid in self._pids) - self._servers
        machine = _machine_busy_seconds() - self._machine
        return client, servers, max(0.0, machine - client - servers)


@attrs.define
class Sink:
    """The amp_sink.py process: started, its port learned, stopped by its pid."""

    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(cls, config: Path, log: Path, timeout: float = 30.0, plain: bool = False) -> Sink:
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(HERE / "amp_sink.py"), "--config", str(config)]
                + (["--plain"] if plain else []),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,  # Ctrl-C reaches us; we stop it in order
            )
        sink = cls(process, 0)
        try:
            sink.port = sink._read_port(log, timeout)
        except BaseException:
            sink.stop()
            raise
        return sink

    def _read_port(self, log: Path, timeout: float) -> int:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise BenchmarkError(f"amp_sink did not start within {timeout:.0f}s")
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise BenchmarkError(f"amp_sink did not start: {log.read_text().strip()[-500:]}")
        return int(line.split()[-1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


# -- what is measured ---------------------------------------------------------------


async def send_through_amp(session: PeerSession, data: bytes) -> None:
    """``data`` as WriteChunkData packets, with the window the file writer keeps."""
    in_flight: deque[Deferred[Any]] = deque()
    view = memoryview(data)
    packet = client_writer.PACKET
    for offset in range(0, len(data), packet):
        if len(in_flight) >= WINDOW:
            await in_flight.popleft()
        in_flight.append(
            session.callRemote(
                WriteChunkData,
                chunk_id=1,
                version=1,
                offset=offset,
                data=bytes(view[offset : offset + packet]),
            )
        )
    while in_flight:
        await in_flight.popleft()


async def fetch_through_amp(session: PeerSession, size: int) -> None:
    """``size`` bytes as ReadChunk answers, with the window the file reader keeps."""
    pending: deque[Deferred[Any]] = deque()
    block = client_reader.BLOCK
    received = 0
    for offset in range(0, size, block):
        if len(pending) >= client_reader.WINDOW:
            received += len((await pending.popleft())["data"])
        pending.append(
            session.callRemote(
                ReadChunk, chunk_id=1, version=1, offset=offset, length=min(block, size - offset)
            )
        )
    while pending:
        received += len((await pending.popleft())["data"])
    if received != size:
        raise BenchmarkError(f"sink sent {received} bytes, {size} asked for")


def write_local_file(path: Path, data: bytes) -> None:
    """Baseline (b): 64 KiB writes, as the chunk store does, then one fsync."""
    view = memoryview(data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset in range(0, len(data), client_writer.PACKET):
            os.write(fd, view[offset : offset + client_writer.PACKET])
        os.fsync(fd)
    finally:
        os.close(fd)


async def write_dfs_file(
    client: DFSClient, path: str, data: bytes, replication: int, io_size: int
) -> None:
    """As ``dfs put`` does: the file in io_size pieces, then closed (complete)."""
    writer = await client.create(path, replication=replication)
    for offset in range(0, len(data), io_size):
        await writer.write(data[offset : offset + io_size])
    await writer.close()


async def read_dfs_file(client: DFSClient, path: str, data: bytes, io_size: int) -> None:
    """As ``dfs get`` does: io_size pieces until the end; each is checked against
    what was written (0.1 ms per 4 MiB piece)."""
    reader = await client.open(path)
    try:
        if reader.length != len(data):
            raise BenchmarkError(f"{path} is {reader.length} bytes, {len(data)} were written")
        offset = 0
        while offset < len(data):
            piece = await reader.read(io_size)
            if not piece:
                raise BenchmarkError(f"{path} ended at {offset} bytes")
            if not data.startswith(piece, offset):  # compares in place, copies nothing
                raise BenchmarkError(f"{path}: other bytes read back near offset {offset}")
            offset += len(piece)
    finally:
        reader.close()


def measure_local_file(path: Path, data: bytes, repeat: int) -> Figure:
    """Baseline (b), the fastest of ``repeat`` attempts."""
    best: Figure | None = None
    for _ in range(repeat):
        meter = CpuMeter([])
        started = time.perf_counter()
        write_local_file(path, data)
        seconds = time.perf_counter() - started
        figure = Figure(LOCAL, len(data) / MB / seconds, "MB/s", seconds, *meter.read())
        path.unlink()
        print(f"  {LOCAL:<38} {figure.rate:9.1f} MB/s     ({seconds:.1f} s)", file=sys.stderr)
        if best is None or figure.rate > best.rate:
            best = figure
    assert best is not None
    return best


def drop_page_cache(cluster: LocalCluster) -> None:
    """Evict the chunk files of every dataserver from the page cache (--cold-read)."""
    for node in cluster.dataservers:
        for path in (node.directory / "data").rglob("*.chunk"):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# -- the run ------------------------------------------------------------------------


@attrs.define
class Benchmark:
    args: argparse.Namespace
    cluster: LocalCluster
    sink: Sink
    data: bytes
    profiles: PhaseProfiles
    figures: list[Figure] = attrs.field(factory=list)
    #: the session to the sink, for (a) measured again next to each big-file phase
    sink_session: PeerSession | None = None

    def _server_pids(self, with_sink: bool) -> dict[str, int]:
        if with_sink:
            return {"sink": self.sink.process.pid}
        return self.cluster.running()

    async def measure(
        self,
        phase: str,
        label: str,
        amount: float,
        unit: str,
        action: Callable[[int], Awaitable[object]],
        *,
        sink: bool = False,
        before: Callable[[], object] | None = None,
        adjacent: bool = False,
    ) -> Figure:
        """Run ``action(attempt)`` --repeat times; keep the fastest attempt. With
        ``adjacent``, (a) is measured again just before each attempt: the machine's
        speed drifts over a run, and a ratio is truer to a baseline taken next to it."""
        best: Figure | None = None
        ratios: list[float] = []
        for attempt in range(self.args.repeat):
            send_rate = None
            if adjacent and self.sink_session is not None:
                started = time.perf_counter()
                await send_through_amp(self.sink_session, self.data)
                send_rate = len(self.data) / MB / (time.perf_counter() - started)
            if before is not None:
                before()
            servers = self._server_pids(sink)
            if self.profiles.active:
                name = phase if self.args.repeat == 1 else f"{phase}.{attempt}"
                self.profiles.start(name, {"client": os.getpid(), **servers})
                await deferLater(reactor, 1.0)  # let the samplers attach
            meter = CpuMeter(list(servers.values()))
            started = time.perf_counter()
            await action(attempt)
            seconds = time.perf_counter() - started
            cpu = meter.read()
            self.profiles.stop()
            scale = MB if unit == "MB/s" else 1
            figure = Figure(label, amount / scale / seconds, unit, seconds, *cpu, send_rate)
            next_to = f", (a) just before: {send_rate:.1f} MB/s" if send_rate else ""
            print(
                f"  {label:<38} {figure.rate:9.1f} {unit:<8} ({seconds:.1f} s{next_to})",
                file=sys.stderr,
                flush=True,
            )
            if send_rate:
                ratios.append(figure.rate / send_rate)
            if best is None or figure.rate > best.rate:
                best = figure
        assert best is not None
        best = attrs.evolve(best, attempt_ratios=tuple(ratios))
        self.figures.append(best)
        return best

    async def run(self) -> None:
        data, size = self.data, len(self.data)
        config = load_client_config(self.cluster.client_config)
        credentials = ClientCredentials.from_config(config)

        session = await connect_server(
            reactor, Address(HOST, self.sink.port), credentials, timeout=config.connect_timeout
        )
        try:
            await self.measure(
                "send",
                SEND,
                size,
                "MB/s",
                lambda _: send_through_amp(session, data),
                sink=True,
            )
            await self.measure(
                "fetch",
                FETCH,
                size,
                "MB/s",
                lambda _: fetch_through_amp(session, size),
                sink=True,
            )
            self.sink_session = session
            await self._dfs_phases(config)
        finally:
            session.abort()

    async def _dfs_phases(self, config: Any) -> None:
        args, data, size = self.args, self.data, len(self.data)
        client = await DFSClient.connect(reactor, config)
        try:
            await client.mkdir("/bench", parents=True)
            for replication in (1, 3):
                path = f"/bench/big.r{replication}"
                await self.measure(
                    f"write-r{replication}",
                    f"write, replication {replication}",
                    size,
                    "MB/s",
                    lambda attempt, path=path, r=replication: write_dfs_file(
                        client, f"{path}.{attempt}", data, r, args.io_size
                    ),
                    adjacent=True,
                )
                last = f"{path}.{args.repeat - 1}"
                await self.measure(
                    f"read-r{replication}",
                    f"read, replication {replication}" + (" (cold)" if args.cold_read else ""),
                    size,
                    "MB/s",
                    lambda _, last=last: read_dfs_file(client, last, data, args.io_size),
                    before=(lambda: drop_page_cache(self.cluster)) if args.cold_read else None,
                    adjacent=True,
                )
            if args.files:
                await self._small_files(client)
        finally:
            client.close()

    async def _small_files(self, client: DFSClient) -> None:
        count, file_size, data = self.args.files, self.args.file_size, self.data
        if len(data) < file_size:
            data = random_bytes(file_size)
        spread = max(1, len(data) - file_size + 1)
        starts = [(i * 7919 * file_size) % spread for i in range(count)]

        def paths(attempt: int) -> list[str]:
            return [f"/bench/small{attempt}/f{i:05d}" for i in range(count)]

        async def write_all(attempt: int) -> None:
            await client.mkdir(f"/bench/small{attempt}")
            for path, start in zip(paths(attempt), starts, strict=True):
                await client.write_file(path, data[start : start + file_size], replication=3)

        async def read_all(attempt: int) -> None:
            for path, start in zip(paths(self.args.repeat - 1), starts, strict=True):
                got = await client.read_file(path)
                if len(got) != file_size or not data.startswith(got, start):
                    raise BenchmarkError(f"{path}: other bytes read back")

        label = human(file_size)
        await self.measure(
            "small-write", f"{label} files written, replication 3", count, "files/s", write_all
        )
        await self.measure("small-read", f"{label} files read", count, "files/s", read_all)


def run_reactor(benchmark: Benchmark) -> None:
    """Run ``benchmark.run()`` on the reactor of this thread; Ctrl-C (or SIGTERM) stops
    it and raises KeyboardInterrupt here."""
    outcome: list[Any] = []

    def done(result: Any) -> None:
        outcome.append(result)
        reactor.stop()

    def shutting_down() -> None:
        # Twisted's signal handlers stop the reactor; the connections it then drops
        # fail the run with ConnectionLost, which must not hide the interruption.
        if not outcome:
            outcome.append(KeyboardInterrupt())

    reactor.addSystemEventTrigger("before", "shutdown", shutting_down)
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(benchmark.run()).addBoth(done))
    reactor.run()
    if not outcome or isinstance(outcome[0], KeyboardInterrupt):
        raise KeyboardInterrupt
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()


def _row(label: str, value: str, *rest: str) -> str:
    return "  ".join((f"{label:<40}{value:>10}", *rest)).rstrip()


def report(benchmark: Benchmark, baseline_b: Figure) -> str:
    figures = benchmark.figures
    by_label = {figure.label: figure for figure in figures}
    lines = [
        _row(
            "",
            "rate",
            f"{'':<8}{'seconds':>8}",
            f"{'client':>7}",
            f"{'servers':>7}",
            f"{'others':>7}",
        )
    ]
    for figure in [*figures[:2], baseline_b, *figures[2:]]:
        lines.append(
            _row(
                figure.label,
                f"{figure.rate:.1f}",
                f"{figure.unit:<8}{figure.seconds:>8.1f}",
                *(
                    f"{100 * cpu / figure.seconds:>6.0f}%"
                    for cpu in (figure.client_cpu, figure.server_cpu, figure.other_cpu)
                ),
            )
        )

    def find(prefix: str) -> Figure | None:
        return next((f for f in figures if f.label.startswith(prefix)), None)

    send, fetch = by_label[SEND].rate, by_label[FETCH].rate
    lines += ["", _row("ratio", "", "target")]
    for prefix, target in (
        ("write, replication 3", WRITE_TARGET),
        ("read, replication 3", READ_TARGET),
        ("write, replication 1", None),
        ("read, replication 1", None),
    ):
        figure = find(prefix)
        if figure is None:
            continue
        ratio = figure.rate / send
        # Judged against (a) measured just before the phase, when it was.
        judged = figure.rate / figure.adjacent_send if figure.adjacent_send else ratio
        if figure.adjacent_send:
            lines.append(_row(f"{figure.label} / (a) first", f"{ratio:.0%}"))
            label = f"{figure.label} / (a) just before"
        else:
            label = f"{figure.label} / (a)"
        if target is None:
            lines.append(_row(label, f"{judged:.0%}"))
        else:
            verdict = "met" if judged >= target else "NOT MET"
            lines.append(_row(label, f"{judged:.0%}", f">= {target:.0%}", verdict))
        if len(figure.attempt_ratios) > 1:
            # The fastest attempt is judged; the others show how far the run spread.
            each = ", ".join(f"{r:.0%}" for r in figure.attempt_ratios)
            lines.append(_row("  each attempt / (a) just before it", "", each))
    read3 = find("read, replication 3")
    if read3 is not None:
        lines.append(
            _row(f"{read3.label} / (a')", f"{read3.rate / fetch:.0%}", "(a') is the read direction")
        )
    write3 = find("write, replication 3")
    if write3 is not None:
        lines.append(
            _row(
                "write, replication 3 / ((b) / 3)",
                f"{write3.rate / (baseline_b.rate / 3):.0%}",
                "its 3 replicas share this machine's one disk",
            )
        )
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=parse_size, default=None, help="big file (default 1G)")
    parser.add_argument("--files", type=int, default=None, help="small files (default 1000)")
    parser.add_argument("--file-size", type=parse_size, default=64 * 1024, help="default 64K")
    parser.add_argument(
        "--io-size", type=parse_size, default=IO_SIZE, help="bytes per write/read call (4M)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="folder for the temporary folder")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --size 64M --files 50 unless given"
    )
    parser.add_argument("--repeat", type=int, default=1, help="keep the best of N (default 1)")
    parser.add_argument("--cold-read", action="store_true", help="drop chunk files from cache")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs) afterwards")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR", help="profile phases")
    parser.add_argument(
        "--profiler", choices=TOOLS, default=None, help="py-spy if on PATH, else cprofile"
    )
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 64 * 2**20 if args.quick else 2**30
    if args.files is None:
        args.files = 50 if args.quick else 1000
    if args.files < 0:
        parser.error("--files must not be negative")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    tool = args.profiler or default_tool()
    if args.profile and tool == "cprofile":
        print("profiling this process only, with cProfile", file=sys.stderr)
    try:
        profiles = PhaseProfiles(args.profile.absolute() if args.profile else None, tool)
    except FileNotFoundError as error:
        parser.error(str(error))

    # SIGTERM ends the run the way Ctrl-C does: through the finally that stops the cluster.
    signal.signal(signal.SIGTERM, _interrupt)
    folder = Path(tempfile.mkdtemp(prefix="dfs-throughput-", dir=args.dir))
    cluster: LocalCluster | None = None
    sink: Sink | None = None
    failed = False
    try:
        print(f"generating {human(args.size)} of random bytes", file=sys.stderr, flush=True)
        data = random_bytes(args.size)
        baseline_b = measure_local_file(folder / "baseline.bin", data, args.repeat)
        print(f"starting a local cluster in {folder}", file=sys.stderr, flush=True)
        cluster = LocalCluster.create(folder / "cluster", metaservers=1, dataservers=3)
        cluster.start()
        cluster.wait_ready(timeout=60)
        sink = Sink.start(cluster.dataservers[0].config_path, folder / "amp_sink.log")
        benchmark = Benchmark(args, cluster, sink, data, profiles)
        run_reactor(benchmark)

        print(
            f"\nDFS throughput: 1 metaserver + 3 dataservers on {HOST}, {os.cpu_count()} cores\n"
            f"file {human(args.size)}, {human(args.io_size)} per call, packets"
            f" {human(client_writer.PACKET)}, window {WINDOW},"
            f" best of {args.repeat}; MB = 10^6 bytes\n"
            "cpu: % of one core used by this process (the client), by the servers (the\n"
            "cluster, or the sink for (a)), and by everything else on the machine (other\n"
            "programs, and kernel threads writing our files back)\n"
        )
        print(report(benchmark, baseline_b))
        busy = [f for f in [baseline_b, *benchmark.figures] if f.other_cpu > 0.5 * f.seconds]
        if busy:
            print(
                "\nother processes took more than half a core during: "
                + ", ".join(f.label for f in busy)
                + "; those figures are low"
            )
        if profiles.active:
            print(f"\nprofiles in {args.profile} (figures above are lowered by sampling)")
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        failed = True
        traceback.print_exc()
        if cluster is not None:
            for node, log in cluster.iter_logs():
                print(f"----- {node.name} log (last 20 lines) -----", file=sys.stderr)
                print("\n".join(log.splitlines()[-20:]), file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cleanup(profiles, sink, cluster, folder, keep=args.keep)
        if failed and not args.keep:
            print("(run with --keep to keep the logs)", file=sys.stderr)


def cleanup(
    profiles: PhaseProfiles,
    sink: Sink | None,
    cluster: LocalCluster | None,
    folder: Path,
    *,
    keep: bool,
) -> None:
    """Stop every process this run started, then remove its folder, each step even
    when one before it failed."""
    try:
        profiles.close()
        if sink is not None:
            sink.stop()
    finally:
        try:
            if cluster is not None:
                cluster.stop()
        finally:
            if keep:
                print(f"kept {folder}", file=sys.stderr)
            else:
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
