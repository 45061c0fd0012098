"""Where the time of one benchmark phase goes, in every process that took part.

throughput.py --profile DIR [--profiler TOOL] profiles each phase separately:

py-spy (``pip install py-spy``; the default when it is on PATH)
    samples the Python stacks of every process from outside, the benchmark itself
    included. Each gets ``<process>-<phase>.txt`` (raw collapsed stacks, input for
    flamegraph tools) and ``<process>-<phase>-top.txt`` (the lines and functions with
    the most samples). On a machine with fewer cores than busy processes, a sample
    also lands where a process waited for a core: the shares lean toward system calls.
perf (``perf`` on PATH, as root)
    samples CPU time only (cpu-clock), native frames and the kernel included, so it
    shows what py-spy cannot: copies in the kernel and libc, OpenSSL, the interpreter.
    ``<phase>-perf.txt`` lists the hottest symbols of each process.
cprofile
    the benchmark process only, with cProfile: ``client-<phase>.prof`` and a listing.

Profiling costs CPU on a machine that is already short of it: figures printed in a
profiled run are lower than in a plain one; compare the shares, not the rates.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

#: Samples per second (py-spy; perf takes a prime near twice this).
RATE = 200
#: How many rows each table of a summary shows.
TOP = 30
TOOLS = ("py-spy", "perf", "cprofile")

#: Functions that wait: a sample ending in one of them is a wait that py-spy, racing
#: the thread's state, took for work (mostly the reactor in epoll_wait).
_WAITS = frozenset({"doPoll", "wait", "_wait_for_tstate_lock", "select", "poll", "sleep"})

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def default_tool() -> str:
    return "py-spy" if shutil.which("py-spy") else "cprofile"


class PhaseProfiles:
    """Profiles one phase at a time with ``tool``; does nothing when ``folder`` is None."""

    def __init__(self, folder: Path | None, tool: str = "cprofile") -> None:
        if tool not in TOOLS:
            raise ValueError(f"unknown profiler {tool!r}; one of {', '.join(TOOLS)}")
        self.folder = folder
        self.tool = tool
        self._phase: str | None = None
        self._processes: dict[str, int] = {}
        self._samplers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self._cprofile: cProfile.Profile | None = None
        if folder is not None:
            if tool != "cprofile" and shutil.which(tool) is None:
                raise FileNotFoundError(f"{tool} is not on PATH")
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def active(self) -> bool:
        return self.folder is not None

    def start(self, phase: str, processes: dict[str, int]) -> None:
        """Start profiling ``phase``; ``processes`` names the pids to sample (the
        benchmark's own pid among them, under any name)."""
        if self.folder is None:
            return
        self._phase = phase
        self._processes = dict(processes)
        if self.tool == "cprofile":
            self._cprofile = cProfile.Profile()
            self._cprofile.enable()
        elif self.tool == "perf":
            output = self.folder / f"{phase}.perf.data"
            pids = ",".join(str(pid) for pid in processes.values())
            command = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "397", "-g"]
            self._spawn("perf", [*command, "-p", pids, "-o", str(output)], output)
        else:
            for name, pid in processes.items():
                output = self.folder / f"{name}-{phase}.txt"
                command = ["py-spy", "record", "--pid", str(pid), "--rate", str(RATE)]
                command += ["--format", "raw", "--nonblocking", "--output", str(output)]
                self._spawn(name, command, output)

    def _spawn(self, name: str, command: list[str], output: Path) -> None:
        assert self.folder is not None
        with open(self.folder / f"{self.tool}.log", "ab") as log:
            sampler = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._samplers[name] = (sampler, output)

    def stop(self) -> list[Path]:
        """Stop profiling the current phase; return the summaries written."""
        if self.folder is None or self._phase is None:
            return []
        phase, self._phase = self._phase, None
        written = []
        if self._cprofile is not None:
            self._cprofile.disable()
            stats_path = self.folder / f"client-{phase}.prof"
            self._cprofile.dump_stats(stats_path)
            text = io.StringIO()
            stats = pstats.Stats(self._cprofile, stream=text)
            stats.sort_stats("tottime").print_stats(TOP)
            stats.sort_stats("cumulative").print_stats(TOP)
            listing = stats_path.with_suffix(".txt")
            listing.write_text(text.getvalue())
            written.append(listing)
            self._cprofile = None
        samplers, self._samplers = self._samplers, {}
        for sampler, _ in samplers.values():
            if sampler.poll() is None:
                sampler.send_signal(signal.SIGINT)  # both write their output and exit
        for name, (sampler, output) in samplers.items():
            try:
                sampler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()
            if not output.exists():
                continue
            if self.tool == "perf":
                summary = self.folder / f"{phase}-perf.txt"
                summary.write_text(perf_summary(output, self._processes, title=phase))
            else:
                summary = output.with_name(f"{name}-{phase}-top.txt")
                summary.write_text(summarize(output.read_text(), title=f"{name}, {phase}"))
            written.append(summary)
        return written

    def close(self) -> None:
        """End any sampler still running (after an error or Ctrl-C)."""
        for sampler, _ in self._samplers.values():
            if sampler.poll() is None:
                os.kill(sampler.pid, signal.SIGKILL)
                sampler.wait()
        self._samplers.clear()
        if self._cprofile is not None:
            self._cprofile.disable()
            self._cprofile = None


def perf_summary(data: Path, processes: dict[str, int], *, title: str) -> str:
    """Each process's share of the CPU samples, then its hottest symbols."""
    names = {str(pid): name for name, pid in processes.items()}

    def report(sort: str) -> list[str]:
        command = ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none"]
        result = subprocess.run(
            [*command, "--sort", sort, "--percent-limit", "0.2"],
            capture_output=True,
            text=True,
            check=False,
        )
        rows = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
        return [_name_pids(row, names) for row in rows]

    out = [f"{title}: CPU samples (perf cpu-clock), % of all samples of the phase"]
    out += ["", "by process and library:", *report("pid,dso")[: 2 * TOP]]
    out += ["", "by process, library and symbol:", *report("pid,dso,sym")[: 3 * TOP]]
    return "\n".join(out) + "\n"


def _name_pids(row: str, names: dict[str, str]) -> str:
    for pid, name in names.items():
        row = row.replace(f"{pid}:python", f"{name}({pid})")
    return row


def _parse(frame: str) -> tuple[str, str]:
    """(function with its file, function with its file and line) of one raw frame."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, frame
    function = match["function"]
    file = _short(match["file"])
    line = match["line"]
    where = f"{function} ({file})"
    return where, f"{function} ({file}:{line})" if line else where


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    for marker in ("/dfs/", "/tests/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def summarize(raw: str, *, title: str, top: int = TOP) -> str:
    """Tables of one py-spy raw profile: self samples by line and by function, and
    inclusive samples (the function or anything it calls) by function."""
    self_lines: Counter[str] = Counter()
    self_functions: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = waits = 0
    for entry in raw.splitlines():
        stack, _, count_text = entry.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_parse(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        function, line = frames[-1]
        if function.split(" ", 1)[0].rsplit(".", 1)[-1] in _WAITS:
            waits += count
            continue
        total += count
        self_functions[function] += count
        self_lines[line] += count
        for function in {function for function, _ in frames}:
            inclusive[function] += count
    out = [
        f"{title}: {total} samples at {RATE}/s of work, about {total / RATE:.1f} CPU seconds"
        f" ({waits} more were waits: not counted)"
    ]
    for heading, table in (
        ("self, by line", self_lines),
        ("self, by function", self_functions),
        ("inclusive, by function", inclusive),
    ):
        out.append(f"\n{heading}:")
        for name, count in table.most_common(top):
            out.append(f"  {100 * count / max(total, 1):5.1f}%  {count:7d}  {name}")
    return "\n".join(out) + "\n"
