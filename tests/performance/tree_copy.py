"""Benchmark: ``dfs put -r`` and ``dfs get -r`` of a folder of many small files.

    .venv/bin/python tests/performance/tree_copy.py [--files 1000] [--size 65536]
        [--repeat 3] [--jobs 1,8,16] [--moosefs]

Makes a folder of ``--files`` random files of ``--size`` bytes, starts a local cluster
(one metaserver, three dataservers, real twistd processes on 127.0.0.1), and times,
``--repeat`` times for each ``--jobs`` value, the commands as a user runs them, each
in a process of its own: ``dfs put -r -j N --replication 3 FOLDER /runK`` and, after
dropping the page cache, ``dfs get -r -j N /runK OUT``. Prints the median, fastest and
slowest seconds and the files per second of the median.

With ``--moosefs`` (root, /dev/fuse, Debian's moosefs-* packages) it then runs
``moosefs_tree_copy.sh`` beside this script on the same folder: MooseFS 3.0 with three
chunkservers, goal 3, ``cp -r`` into the mount and back out, and prints the DFS/MooseFS
time ratios (below 1: DFS is faster). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dfs.localcluster import LocalCluster

HERE = Path(__file__).resolve().parent
DFS = [sys.executable, "-m", "dfs_shell.main"]


def make_folder(folder: Path, files: int, size: int) -> None:
    folder.mkdir(parents=True)
    for index in range(files):
        (folder / f"f{index:05d}.bin").write_bytes(os.urandom(size))


def drop_page_cache(cluster: LocalCluster) -> None:
    """The whole page cache when allowed (as the MooseFS side does), else at least
    the dataservers' chunk files."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return
    except OSError:
        pass
    for node in cluster.dataservers:
        for path in (node.directory / "data").rglob("*.chunk"):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()}")
    return elapsed


def count_files(folder: Path) -> tuple[int, int]:
    paths = [path for path in folder.rglob("*") if path.is_file()]
    return len(paths), sum(path.stat().st_size for path in paths)


def summary(label: str, seconds: list[float], files: int) -> str:
    median = statistics.median(seconds)
    return (
        f"{label:<26} median {median:7.2f} s  ({files / median:7.1f} files/s)  "
        f"fastest {min(seconds):6.2f} s  slowest {max(seconds):6.2f} s"
    )


def bench_dfs(
    folder: Path, work: Path, arguments: argparse.Namespace
) -> dict[int, tuple[list[float], list[float]]]:
    cluster = LocalCluster.create(work / "cluster", metaservers=1, dataservers=3)
    cluster.start()
    results: dict[int, tuple[list[float], list[float]]] = {}
    try:
        cluster.wait_ready(timeout=60)
        env = {**os.environ, "DFS_CONFIG": str(cluster.client_config)}
        run = 0
        for jobs in arguments.jobs:
            puts: list[float] = []
            gets: list[float] = []
            for _ in range(arguments.repeat):
                run += 1
                remote = f"/run{run}"
                back = work / "back" / f"run{run}"
                back.parent.mkdir(exist_ok=True)
                put = [*DFS, "put", "-r", "-j", str(jobs), "--replication", "3", str(folder)]
                puts.append(timed([*put, remote], env))
                drop_page_cache(cluster)
                gets.append(timed([*DFS, "get", "-r", "-j", str(jobs), remote, str(back)], env))
                if count_files(back) != count_files(folder):
                    print(f"warning: {back} holds {count_files(back)}, not {count_files(folder)}")
                shutil.rmtree(back)
                timed([*DFS, "rm", "-r", remote], env)
            results[jobs] = (puts, gets)
            print(summary(f"dfs put -r -j {jobs}", puts, arguments.files), flush=True)
            print(summary(f"dfs get -r -j {jobs}", gets, arguments.files), flush=True)
    finally:
        cluster.stop()
    return results


def bench_moosefs(folder: Path, repeat: int) -> tuple[list[float], list[float]] | None:
    script = HERE / "moosefs_tree_copy.sh"
    done = subprocess.run(
        ["bash", str(script), str(folder), str(repeat)], capture_output=True, text=True
    )
    if done.returncode != 0:
        print(f"moosefs: failed ({done.returncode}): {done.stderr.strip()}")
        return None
    puts = [float(m) for m in re.findall(r"^put_run\d+: ([\d.]+) s$", done.stdout, re.M)]
    gets = [float(m) for m in re.findall(r"^get_run\d+: ([\d.]+) s$", done.stdout, re.M)]
    backs = re.findall(r"^files_back_run\d+: (\d+)$", done.stdout, re.M)
    if not puts or not gets:
        print(f"moosefs: no figures in its output:\n{done.stdout}{done.stderr}")
        return None
    print(f"moosefs: {done.stdout.splitlines()[0]}; files back per run: {', '.join(backs)}")
    return puts, gets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64 * 1024, help="bytes per file")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--jobs",
        type=lambda text: [int(value) for value in text.split(",")],
        default=[1, 8, 16],
        help="comma-separated values of dfs put/get -j (default 1,8,16)",
    )
    parser.add_argument("--moosefs", action="store_true", help="also time cp -r on MooseFS")
    arguments = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dfs-tree-copy-"))
    try:
        folder = work / "source"
        make_folder(folder, arguments.files, arguments.size)
        print(
            f"{arguments.files} files of {arguments.size} bytes, replication 3, "
            f"{arguments.repeat} runs each; {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        dfs = bench_dfs(folder, work, arguments)
        if not arguments.moosefs:
            return
        moosefs = bench_moosefs(folder, arguments.repeat)
        if moosefs is None:
            return
        print(summary("moosefs cp -r in", moosefs[0], arguments.files))
        print(summary("moosefs cp -r out", moosefs[1], arguments.files))
        put_base, get_base = (statistics.median(values) for values in moosefs)
        for jobs, (puts, gets) in dfs.items():
            print(
                f"ratio DFS/MooseFS -j {jobs:<3} put -r {statistics.median(puts) / put_base:5.2f}"
                f"  get -r {statistics.median(gets) / get_base:5.2f}  (below 1: DFS faster)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
