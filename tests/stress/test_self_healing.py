"""Self-healing under faults injected into real processes (issue 5).

Each test runs its own cluster (one metaserver, dataservers as real twistd
processes, replication 3, 1 MiB chunks so that files have many chunks), injects one
fault while clients keep writing files of random content, and ends with the same
checks: fsck healthy, every acknowledged file read back byte for byte, every
replica the metaserver lists byte-identical on its dataserver's disk, and no chunk
held by more than three dataservers.

Each test prints a ``REPORT`` line (``pytest -s`` shows it; a failed test shows it
with its captured output): how much data had to be copied and how long the cluster
took to be fully replicated again, from the fault or from its detection to the
first healthy fsck (polled every 0.25 s).

The ledger follows tests/stress/test_metaserver_group.py: a file whose write_file
returned is acknowledged and must read back identical; a write that raised has an
unknown outcome and is not counted, but the file must then be absent or a prefix of
what was being written (never other bytes).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from dfs.client.admin import FsckReport
from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster, Node
from dfs.protocol.records import Location

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
CHUNK = MiB
REPLICATION = 3
COPIES_PER_DATASERVER = 2
FSCK_EVERY = 0.25


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def connect(cluster: LocalCluster) -> DFSClient:
    return await DFSClient.connect(reactor, load_client_config(cluster.client_config))


def five_dataservers(make_cluster: Callable[..., LocalCluster], **options: Any) -> LocalCluster:
    replication = {
        "chunk_size": CHUNK,
        "default_replication": REPLICATION,
        "rereplication_per_dataserver": COPIES_PER_DATASERVER,
        **options.pop("replication", {}),
    }
    dataservers = options.pop("dataservers", 5)
    return make_cluster(dataservers=dataservers, replication=replication, **options)


def report(line: str) -> None:
    """The measured figures: printed at once, so a test failing later shows them too."""
    print(f"REPORT {line}", flush=True)


def mib(nbytes: float) -> str:
    return f"{nbytes / MiB:.1f} MiB"


# -- the workload -------------------------------------------------------------------


@attrs.define
class Ledger:
    """What the writers were told: acknowledged, or failed (outcome unknown)."""

    acked: dict[str, bytes] = attrs.field(factory=dict)
    unknown: dict[str, bytes] = attrs.field(factory=dict)
    errors: list[str] = attrs.field(factory=list)

    @property
    def acked_bytes(self) -> int:
        return sum(len(data) for data in self.acked.values())


@attrs.define
class Writers:
    """Several clients writing files of random size and content, each into its own
    folder, one after the other, held together to ``rate`` bytes per second so that
    a test moves tens of MiB, not hundreds."""

    clients: list[DFSClient]
    ledger: Ledger
    rng: random.Random
    rate: float = 4 * MiB
    #: stop after writing this many bytes (None: until stopped)
    budget: int | None = None
    #: seconds between 64 KiB pieces (0: each file in one write_file), so that
    #: slow writers keep chunks open across several heartbeats
    trickle: float = 0.0
    sizes: tuple[int, int] = (CHUNK // 2, 3 * CHUNK + CHUNK // 2)
    running: bool = True
    written: int = 0
    started: float = 0.0
    done: list[Deferred[None]] = attrs.field(factory=list)

    @classmethod
    async def start(cls, cluster: LocalCluster, ledger: Ledger, count: int = 3, **kw: Any):
        clients = [await connect(cluster) for _ in range(count)]
        writers = cls(clients, ledger, random.Random(kw.pop("seed", 5)), **kw)
        writers.started = time.monotonic()
        for number, client in enumerate(clients):
            await client.mkdir(f"/w{number}", parents=True)
            writers.done.append(Deferred.fromCoroutine(writers._write(client, f"/w{number}")))
        return writers

    async def _write(self, client: DFSClient, folder: str) -> None:
        index = 0
        while self.running:
            path = f"{folder}/{index}"
            index += 1
            data = self.rng.randbytes(self.rng.randint(*self.sizes))
            try:
                if self.trickle:
                    await self._trickle(client, path, data)
                else:
                    await client.write_file(path, data)
            except Exception as error:
                self.ledger.unknown[path] = data
                self.ledger.errors.append(f"{path}: {type(error).__name__}: {error}")
            else:
                self.ledger.acked[path] = data
            self.written += len(data)
            if self.budget is not None and self.written >= self.budget:
                self.running = False
            # Hold the pace: the next file when the bytes so far are due.
            due = self.started + self.written / self.rate
            while self.running and time.monotonic() < due:
                await sleep(min(0.1, due - time.monotonic()))

    async def _trickle(self, client: DFSClient, path: str, data: bytes) -> None:
        writer = await client.create(path)
        try:
            for start in range(0, len(data), 65536):
                await writer.write(data[start : start + 65536])
                await sleep(self.trickle)
            await writer.close()
        except BaseException:
            await client.discard(writer)
            raise

    async def stop(self) -> None:
        self.running = False
        await gatherResults(self.done)
        for client in self.clients:
            client.close()


async def prewrite(client: DFSClient, ledger: Ledger, rng: random.Random, count: int) -> None:
    """Files written before the fault, so that it hits data at rest too."""
    await client.mkdir("/rest", parents=True)
    for index in range(count):
        data = rng.randbytes(rng.randint(CHUNK, 3 * CHUNK) + rng.randint(1, 4096))
        await client.write_file(f"/rest/{index}", data)
        ledger.acked[f"/rest/{index}"] = data


class PipelineLosses:
    """Counts the writers' pipeline recoveries (a dataserver leaving a pipeline), which
    the user does not see: the clients log them in this process."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if str(event.get("log_format", "")).startswith("dataserver {address} left the pipeline"):
            self.events.append(f"{event.get('address')} chunk {event.get('chunk_id')}")

    def __enter__(self) -> PipelineLosses:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *_: object) -> None:
        globalLogPublisher.removeObserver(self)


# -- looking at the cluster -----------------------------------------------------------


def chunk_files(node: Node) -> dict[int, tuple[int, Path]]:
    """chunk id -> (version, path) of every complete replica on a dataserver's disk."""
    found = {}
    for path in (node.directory / "data" / "chunks").glob("*/*.chunk"):
        chunk_id, _, version = path.stem.partition("_")
        found[int(chunk_id)] = (int(version), path)
    return found


def replica_bytes(node: Node) -> int:
    """Bytes of the replicas on a dataserver's disk, complete or being written (the
    dataserver counts both against its capacity)."""
    sizes = {}
    for path in (node.directory / "data" / "chunks").glob("*/*.chunk*"):
        try:
            # A replica renamed from .chunk.tmp to .chunk while listed counts once.
            sizes[path.name.removesuffix(".tmp")] = path.stat().st_size
        except FileNotFoundError:
            pass  # finished, or deleted, meanwhile
    return sum(sizes.values())


def quarantined(node: Node) -> set[str]:
    return {p.name for p in (node.directory / "data" / "quarantine").glob("*.chunk*")}


def disk_holders(cluster: LocalCluster) -> dict[int, dict[str, int]]:
    """chunk id -> {dataserver: version} over every running dataserver's disk."""
    holders: dict[int, dict[str, int]] = {}
    for node in cluster.dataservers:
        if node.pid() is None:
            continue
        for chunk_id, (version, _) in chunk_files(node).items():
            holders.setdefault(chunk_id, {})[node.name] = version
    return holders


async def equals(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def free_of(client: DFSClient, name: str) -> int:
    """The free space a dataserver last reported, as the metaserver lists it."""
    [free] = [d["free"] for d in await client.dataservers() if d["name"] == name]
    return free


def five_alive() -> dict[str, str]:
    return {f"ds{i}": "alive" for i in range(1, 6)}


def node_at(cluster: LocalCluster, address: Location) -> Node:
    [node] = [node for node in cluster.dataservers if node.address == str(address)]
    return node


async def states(client: DFSClient) -> dict[str, str]:
    return {d["name"]: d["state"] for d in await client.dataservers()}


async def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout:g}s: {what}")
        await sleep(every)


async def wait_state(client: DFSClient, name: str, state: str, timeout: float = 30.0) -> float:
    """Wait until the metaserver shows dataserver ``name`` in ``state``; when it did."""

    async def reached() -> bool:
        return (await states(client)).get(name) == state

    await wait_for(reached, timeout, f"{name} {state}")
    return time.monotonic()


def describe(report: FsckReport) -> str:
    counters = {k: v for k, v in report.summary.items() if v}
    problems = [f"{p.path}#{p.index} {p.problem} {p.replicas}/{p.wanted}" for p in report.problems]
    return f"{counters} problems {problems[:5]}"


async def first_healthy(
    client: DFSClient,
    since: float,
    timeout: float,
    what: str,
    condition: Callable[[FsckReport], bool] = lambda report: True,
) -> float:
    """Seconds from ``since`` to the first healthy fsck (also meeting ``condition``),
    asking every 0.25 s."""
    deadline = time.monotonic() + timeout
    while True:
        fsck = await client.fsck("/")
        if fsck.healthy and condition(fsck):
            return time.monotonic() - since
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not healthy after {timeout:g}s: {describe(fsck)}")
        await sleep(FSCK_EVERY)


def meta_log(cluster: LocalCluster) -> list[str]:
    return cluster.metaservers[0].logfile.read_text().splitlines()


def replication_status(cluster: LocalCluster) -> dict[str, Any]:
    status = cluster.status(cluster.metaservers[0]) or {}
    return status.get("replication") or {}


# -- the checks every test ends with ---------------------------------------------------


async def check_everything(cluster: LocalCluster, client: DFSClient, ledger: Ledger) -> None:
    """fsck healthy; every acknowledged file identical, read through the client and
    on every replica's disk; unknown outcomes absent or a prefix; no chunk held by
    more than three dataservers (waiting for pending deletions to go out)."""
    fsck = await client.fsck("/")
    assert fsck.healthy, describe(fsck)
    assert fsck.summary["files"] >= len(ledger.acked)
    for path, data in ledger.acked.items():
        assert await client.read_file(path) == data, f"{path} reads back different bytes"
        reader = await client.open(path)
        reader.close()
        for chunk in reader._chunks:
            assert len(chunk.locations) == REPLICATION, (path, chunk)
            expected = data[chunk.offset : chunk.offset + chunk.length]
            for address in chunk.locations:
                node = node_at(cluster, address)
                version, replica = chunk_files(node).get(chunk.chunk_id, (None, None))
                assert version == chunk.version, f"{node.name} lacks {chunk} of {path}"
                assert replica.read_bytes() == expected, f"{replica} differs from {path}"
    for path, data in ledger.unknown.items():
        try:
            stored = await client.read_file(path)
        except Exception:
            continue  # removed by the writer giving up (or still open, nothing committed)
        assert data.startswith(stored), f"{path} (write failed) holds other bytes"
    # Surplus replicas go out with heartbeat answers: give them a moment.
    await wait_for(
        lambda: max((len(h) for h in disk_holders(cluster).values()), default=0) <= REPLICATION,
        15,
        "no chunk on more than three dataservers' disks",
        every=0.25,
    )


def show_errors(ledger: Ledger) -> str:
    return "; ".join(ledger.errors[:5])


# -- 1. kill -9 ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_kill_one_then_a_second_dataserver_during_writes(make_cluster):
    """kill -9 one dataserver of five while three clients write; the second is
    killed during the first one's repair: as soon as the metaserver declares the
    first dead, while fsck still shows its chunks lacking a replica (chunks on both
    are down to one replica and go first). Writes go on without an error to the
    user: a pipeline that loses its dataserver recovers. Three dataservers are
    left, enough for replication 3."""
    cluster = five_dataservers(make_cluster)
    rng = random.Random(1)
    client = await connect(cluster)
    ledger = Ledger()
    await prewrite(client, ledger, rng, 8)
    with PipelineLosses() as losses:
        writers = await Writers.start(cluster, ledger)
        try:
            await sleep(1.5)
            first, second = cluster.node("ds2"), cluster.node("ds4")
            lost = chunk_files(first)
            cluster.kill_node(first)
            killed = time.monotonic()
            dead = await wait_state(client, first.name, "dead")
            fsck = await client.fsck("/")
            lacking_at_second_kill = fsck.summary["under_replicated"] + fsck.summary["missing"]
            lost_second = chunk_files(second)
            cluster.kill_node(second)
            dead2 = await wait_state(client, second.name, "dead")
            healed = await first_healthy(
                client,
                dead2,
                60,
                "after the second kill",
                lambda r: r.summary["dataservers_dead"] == 2,
            )
            await sleep(1.0)  # the writers go on with three dataservers
        finally:
            await writers.stop()
    report(
        f"kill-one: {mib(sum(p.stat().st_size for _, p in lost.values()))} in {len(lost)} "
        f"chunks lost with {first.name}, declared dead {dead - killed:.1f} s after kill -9; "
        f"{second.name} ({len(lost_second)} chunks) killed then with {lacking_at_second_kill} "
        f"chunks still lacking a replica; fully replicated again {healed:.1f} s after the "
        f"second was declared dead ({COPIES_PER_DATASERVER} copies at a time per dataserver); "
        f"{len(ledger.acked)} files ({mib(ledger.acked_bytes)}) acknowledged, "
        f"{len(ledger.errors)} write errors, {len(losses.events)} pipeline recoveries"
    )
    assert lacking_at_second_kill > 0, "the second kill came after the repair, not during"
    assert not ledger.errors, show_errors(ledger)
    assert len(writers.clients) * 3 < len(ledger.acked)
    await check_everything(cluster, client, ledger)
    client.close()


# -- 2. corrupt replicas -------------------------------------------------------------


def corrupt(path: Path, rng: random.Random, flips: int = 3) -> None:
    """Flip ``flips`` random bytes of a replica's data file, behind the dataserver."""
    size = path.stat().st_size
    with open(path, "r+b") as replica:
        for offset in rng.sample(range(size), flips):
            replica.seek(offset)
            byte = replica.read(1)
            replica.seek(offset)
            replica.write(bytes([byte[0] ^ (1 + rng.randrange(255))]))
        replica.flush()
        os.fsync(replica.fileno())


@pytest_twisted.ensureDeferred
async def test_corrupted_replicas_are_found_quarantined_and_replaced(make_cluster):
    """Random bytes flipped in replicas on several dataservers (never every replica
    of a chunk; some chunks lose two of their three), with the scrubber passing
    every 2 s at 200 MiB/s; every file is read at once, the readers hitting some
    corrupt replicas before the scrubber does (the replica each reader tries first)
    and reporting them. Every corrupt replica ends in its dataserver's quarantine
    folder and a good copy replaces it."""
    cluster = five_dataservers(
        make_cluster,
        dataserver_options={"scrub_interval": 2.0, "scrub_bandwidth": 200 * MiB},
    )
    rng = random.Random(2)
    client = await connect(cluster)
    ledger = Ledger()
    await prewrite(client, ledger, rng, 12)
    readers = {path: await client.open(path) for path in ledger.acked}
    chunks = [(path, chunk) for path, reader in readers.items() for chunk in reader._chunks]
    rng.shuffle(chunks)
    by_reader, by_scrubber = chunks[:5], chunks[5:13]
    damaged: list[tuple[Node, Path]] = []
    # For the readers: the replica each one will try first.
    for _, chunk in by_reader:
        node = node_at(cluster, chunk.locations[0])
        damaged.append((node, chunk_files(node)[chunk.chunk_id][1]))
    # For the scrubber (or a reader failing over): one or two replicas of others.
    for number, (_, chunk) in enumerate(by_scrubber):
        for address in chunk.locations[1 : 2 + number % 2]:
            node = node_at(cluster, address)
            damaged.append((node, chunk_files(node)[chunk.chunk_id][1]))
    for _, path in damaged:
        corrupt(path, rng)
    corrupted = time.monotonic()
    for path, reader in readers.items():
        try:
            assert await reader.read() == ledger.acked[path], f"{path} read back wrong"
        finally:
            reader.close()
    for path, data in ledger.acked.items():
        assert await client.read_file(path) == data, f"{path} read back wrong"

    def all_quarantined() -> bool:
        return all(path.name in quarantined(node) for node, path in damaged)

    await wait_for(all_quarantined, 30, "every corrupt replica quarantined", every=0.25)
    healed = await first_healthy(client, corrupted, 60, "after the corruption")
    statuses = [cluster.status(node) or {} for node in cluster.dataservers]
    scrubbed = sum((s.get("scrubber") or {}).get("corrupt_found", 0) for s in statuses)
    verified = sum((s.get("replication") or {}).get("corrupt", 0) for s in statuses)
    reported = sum("a reader reported" in line for line in meta_log(cluster))
    report(
        f"corrupt-replicas: {len(damaged)} replicas of {len(by_reader) + len(by_scrubber)} "
        f"chunks corrupted on {len({n.name for n, _ in damaged})} dataservers; "
        f"{reported} reported by readers ({verified} confirmed corrupt), {scrubbed} found by "
        f"the scrubber; fully replicated again {healed:.1f} s after the corruption"
    )
    # Each corrupt replica was quarantined once, by one of the two, and nothing else was.
    assert scrubbed + verified == len(damaged)
    in_quarantine = [n for node in cluster.dataservers for n in quarantined(node)]
    assert len([n for n in in_quarantine if n.endswith(".chunk")]) == len(damaged), in_quarantine
    assert verified >= 1, "no reader's report led to a quarantine"
    await check_everything(cluster, client, ledger)
    client.close()


# -- 3. a full dataserver ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_full_dataserver_refuses_chunks_without_failing_writes(make_cluster):
    """Five dataservers offering 256 MiB each, one of them (ds5) with 248 MiB of it
    reserved: room for 8 chunks, and as eager to take chunks as the others (its use
    looks as low). Eight slow clients write 36 MiB; ds5 fills to its reserved-space limit
    and refuses further chunks (placement stops choosing it; a pipeline it refuses
    with NoSpace goes on without it), no user write fails and ds5 never holds more
    than its limit. Then another dataserver is killed: the repairs fill the others,
    never ds5 past its limit."""
    capacity = 256 * MiB
    limit = 8 * CHUNK
    cluster = five_dataservers(
        make_cluster, dataservers=4, dataserver_options={"capacity": capacity}
    )
    full = cluster.add_dataserver(capacity=capacity, reserved_space=capacity - limit)
    cluster.start_node(full)
    client = await connect(cluster)
    await wait_for(lambda: equals(states(client), five_alive()), 30, f"{full.name} registered")
    ledger = Ledger()
    peak = 0

    def sample() -> None:
        nonlocal peak
        peak = max(peak, replica_bytes(full))

    with PipelineLosses() as losses:
        writers = await Writers.start(
            cluster, ledger, count=8, rate=10 * MiB, budget=36 * MiB, trickle=0.05
        )
        try:
            filled = None
            while writers.running:
                sample()
                if filled is None and await free_of(client, full.name) < CHUNK:
                    filled = time.monotonic() - writers.started
                await sleep(0.1)
        finally:
            await writers.stop()
        assert not ledger.errors, show_errors(ledger)
        assert filled is not None, f"{full.name} never filled up"
        victim = cluster.node("ds1")
        cluster.kill_node(victim)
        dead = await wait_state(client, victim.name, "dead")
        healed = await first_healthy(client, dead, 60, "after the kill")
        sample()
    refused_pipelines = [e for e in losses.events if e.startswith(full.address)]
    refused_copies = [
        line for line in meta_log(cluster) if f"to {full.name} failed: NoSpace" in line
    ]
    report(
        f"full-disk: {full.name} full {filled:.1f} s into the writes; peak {peak} bytes stored "
        f"there, limit {limit}; {len(ledger.acked)} files ({mib(ledger.acked_bytes)}) "
        f"acknowledged, {len(ledger.errors)} write errors, {len(losses.events)} pipeline "
        f"recoveries ({len(refused_pipelines)} of them refusals by {full.name}), "
        f"{len(refused_copies)} copy orders to {full.name} refused (NoSpace); after kill -9 "
        f"of {victim.name} fully replicated again {healed:.1f} s after it was declared dead"
    )
    assert not ledger.errors, show_errors(ledger)
    await check_everything(cluster, client, ledger)
    client.close()
    assert peak <= limit, f"{full.name} held {peak} bytes, past its limit of {limit}"


# -- 4. SIGSTOP / SIGCONT ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_paused_dataserver_comes_back_and_loses_its_surplus_replicas(make_cluster):
    """SIGSTOP one dataserver of five while three clients write, and keep it paused
    past the dead timeout until its chunks are fully replicated elsewhere; then
    SIGCONT. It registers again, its replicas are surplus (or stale) and the
    metaserver has one replica of each such chunk deleted, so no chunk keeps more
    than three."""
    cluster = five_dataservers(make_cluster)
    rng = random.Random(4)
    client = await connect(cluster)
    ledger = Ledger()
    await prewrite(client, ledger, rng, 8)
    paused = cluster.node("ds3")
    with PipelineLosses() as losses:
        writers = await Writers.start(cluster, ledger)
        try:
            await sleep(1.0)
            held = chunk_files(paused)
            removals_before = replication_status(cluster).get("removals", 0)
            cluster.signal_node(paused, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                dead = await wait_state(client, paused.name, "dead")
                healed = await first_healthy(client, dead, 60, "while paused")
            finally:
                cluster.signal_node(paused, signal.SIGCONT)
            resumed = time.monotonic()
            back = await wait_state(client, paused.name, "alive")
            surplus = sum(
                1 for holders in disk_holders(cluster).values() if len(holders) > REPLICATION
            )
            settled = await first_healthy(client, back, 60, "after SIGCONT")
            await sleep(1.0)
        finally:
            await writers.stop()
    removals = replication_status(cluster).get("removals", 0) - removals_before
    report(
        f"pause: {paused.name} ({len(held)} chunks) paused {resumed - stopped:.1f} s, declared "
        f"dead after {dead - stopped:.1f} s, its chunks fully replicated again {healed:.1f} s "
        f"after that; registered again {back - resumed:.1f} s after SIGCONT with "
        f"{surplus} chunks on more than 3 disks, healthy {settled:.1f} s later "
        f"({removals} replicas removed); {len(ledger.acked)} files acknowledged, "
        f"{len(ledger.errors)} write errors, {len(losses.events)} pipeline recoveries"
    )
    assert not ledger.errors, show_errors(ledger)
    assert removals >= 1
    await check_everything(cluster, client, ledger)
    # Every replica left on a disk is at its chunk's current version (no stale one).
    current = {}
    for path in ledger.acked:
        reader = await client.open(path)
        reader.close()
        current.update({c.chunk_id: c.version for c in reader._chunks})
    for chunk_id, holders in disk_holders(cluster).items():
        if chunk_id in current:
            assert set(holders.values()) == {current[chunk_id]}, (chunk_id, holders)
    client.close()


# -- 5. new dataservers and the balancer -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_new_dataservers_are_balanced_in(make_cluster):
    """Three dataservers of 64 MiB hold about 20 MiB each (every chunk on each);
    two empty ones join and the balancer runs with a 10 % threshold until it says
    balanced and stops itself. The new ones hold data and every dataserver's use
    (used / capacity, as the metaserver lists them) is within 10 points of the mean."""
    capacity = 64 * MiB
    threshold = 10.0
    cluster = five_dataservers(
        make_cluster,
        dataservers=3,
        dataserver_options={"capacity": capacity},
        replication={"replication_interval": 0.5},
    )
    rng = random.Random(5)
    client = await connect(cluster)
    ledger = Ledger()
    await prewrite(client, ledger, rng, 10)
    new = [cluster.add_dataserver() for _ in range(2)]
    for node in new:
        cluster.start_node(node)
    await wait_for(
        lambda: equals(states(client), five_alive()),
        30,
        "the new dataservers registered",
    )
    state = await client.balancer("start", threshold=threshold)
    started = time.monotonic()
    assert state["running"] and state["spread"] > threshold, state

    async def done() -> dict[str, Any] | None:
        status = await client.balancer("status")
        return status if not status["running"] and status["balanced"] else None

    status = await wait_for(done, 90, "balancer balanced and stopped", every=0.25)
    balanced = time.monotonic() - started
    healed = await first_healthy(client, started, 30, "after balancing")

    async def uses() -> dict[str, float] | None:
        listed = {d["name"]: d for d in await client.dataservers()}
        use = {name: d["used"] / d["capacity"] for name, d in listed.items()}
        mean = sum(d["used"] for d in listed.values()) / sum(d["capacity"] for d in listed.values())
        within = all(abs(u - mean) * 100 <= threshold for u in use.values())
        return use if within else None

    # Space reports follow the moves by a heartbeat or two.
    use = await wait_for(uses, 10, "every dataserver within the threshold")
    report(
        f"balance: {status['moved_chunks']} chunks ({mib(status['moved_bytes'])}) moved to "
        f"{', '.join(n.name for n in new)} in {balanced:.1f} s, healthy {healed:.1f} s after "
        f"the start; use " + ", ".join(f"{name} {100 * u:.0f}%" for name, u in sorted(use.items()))
    )
    for node in new:
        assert chunk_files(node), f"{node.name} got no data"
    assert status["moved_chunks"] > 0
    await check_everything(cluster, client, ledger)
    client.close()


# -- 6. decommission -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_decommission_during_writes(make_cluster):
    """Decommission one dataserver of five while three clients write; it drains
    (its chunks copied elsewhere) and is shown ``decommissioned``; it never receives
    a chunk allocated after the decommission (nor a copy); then it is stopped, and
    nothing is lost."""
    cluster = five_dataservers(make_cluster)
    rng = random.Random(6)
    client = await connect(cluster)
    ledger = Ledger()
    await prewrite(client, ledger, rng, 8)
    leaving = cluster.node("ds1")
    with PipelineLosses() as losses:
        writers = await Writers.start(cluster, ledger)
        try:
            await sleep(1.0)
            await client.decommission(leaving.name)
            decommissioned_at = time.monotonic()
            held = chunk_files(leaving)
            # Any chunk allocated from now on has a larger id than this one's.
            await client.write_file("/probe", b"p")
            ledger.acked["/probe"] = b"p"
            probe = await client.open("/probe")
            probe.close()
            after = probe._chunks[0].chunk_id
            seen: set[int] = set()

            async def drained() -> bool:
                seen.update(chunk_files(leaving))
                return (await states(client))[leaving.name] == "decommissioned"

            await wait_for(drained, 60, f"{leaving.name} decommissioned", every=0.1)
            drained_in = time.monotonic() - decommissioned_at
            healed = await first_healthy(client, decommissioned_at, 30, "after the drain")
            await sleep(1.0)
            seen.update(chunk_files(leaving))
        finally:
            await writers.stop()
    copies_to = [
        line
        for line in meta_log(cluster)
        if "copy of chunk" in line and f"to {leaving.name} in" in line
    ]
    new_chunks = sorted(c for c in seen if c > after)
    in_flight = sorted(c for c in seen if c <= after and c not in held)
    cluster.stop_node(leaving)
    report(
        f"decommission: {leaving.name} held {len(held)} chunks at the decommission "
        f"(+{len(in_flight)} from pipelines already open, 0 allowed after), drained "
        f"in {drained_in:.1f} s during writes, healthy {healed:.1f} s after the decommission; "
        f"{len(ledger.acked)} files acknowledged, {len(ledger.errors)} write errors, "
        f"{len(losses.events)} pipeline recoveries"
    )
    assert not ledger.errors, show_errors(ledger)
    assert not new_chunks, f"{leaving.name} got chunks allocated after: {new_chunks[:5]}"
    assert not copies_to, copies_to[:3]
    await wait_for(
        lambda: equals(states(client), {**five_alive(), leaving.name: "dead"}),
        30,
        f"{leaving.name} stopped",
    )
    await check_everything(cluster, client, ledger)
    client.close()
