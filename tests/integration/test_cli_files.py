"""The one-shot file commands (``dfs ls``, ``put``, ``get``, ...) as a user runs them:
real ``dfs`` processes against one real cluster, judged on what they print and on their
exit status. Terminal behaviour (the progress bar, Ctrl-C) runs under a pty (pexpect).

The tests share one cluster, each in its own top-level directory. Its chunks are
1 MiB, so that a file of a few MiB spans several chunks. Commands that do not depend
on each other run side by side, to keep the module quick.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import attrs
import pexpect
import pytest

from dfs.localcluster import LocalCluster, free_ports

MiB = 1024 * 1024
CHUNK_SIZE = MiB
DFS = [sys.executable, "-m", "dfs_shell.main"]
#: A human size as ls -h, du -h and df -h print it.
HUMAN = re.compile(r"\d+B|\d+\.\d[KMGTP]")

T = TypeVar("T")


@attrs.frozen
class Run:
    """What one ``dfs`` process did."""

    status: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


@attrs.frozen
class Dfs:
    """Runs ``dfs`` in an environment: ``dfs("ls", "/")``, or several at once with
    ``dfs.each(["ls", "/"], ["df"])`` (their results in the same order)."""

    env: Mapping[str, str]

    def __call__(self, *arguments: object) -> Run:
        done = subprocess.run(
            [*DFS, *map(str, arguments)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(self.env),
            timeout=120,
        )
        return Run(done.returncode, done.stdout, done.stderr.decode())

    def each(self, *commands: Sequence[object]) -> list[Run]:
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda command: self(*command), commands))


def ok(run: Run) -> Run:
    assert run.status == 0 and run.err == "", run
    return run


def failed(run: Run, stderr: str) -> None:
    """Exit status 1, nothing on stdout, exactly ``stderr`` on stderr."""
    assert (run.status, run.out, run.err) == (1, b"", stderr)


def failed_with_one_line(run: Run, start: str) -> None:
    assert (run.status, run.out) == (1, b""), run
    assert run.err.startswith(start) and run.err.count("\n") == 1, run.err


def wait_for(check: Callable[[], T | None], timeout: float = 20.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what or check}")
        time.sleep(0.1)
    return result


@pytest.fixture(scope="module")
def shared_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LocalCluster]:
    directory = tmp_path_factory.mktemp("cli") / "cluster"
    cluster = LocalCluster.create(directory, heartbeat_interval=0.2, dataserver_dead_after=2.0)
    settings = directory / "shared" / "replication_config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "chunk_size": CHUNK_SIZE}))
    failed_before = request.session.testsfailed
    try:
        cluster.start()
        cluster.wait_ready(timeout=60)
        yield cluster
    finally:
        if request.session.testsfailed > failed_before:
            for node, log in cluster.iter_logs():
                print(f"----- {node.name} log (last 40 lines) -----")
                print("\n".join(log.splitlines()[-40:]))
        cluster.stop()


def bare_env(home: Path) -> dict[str, str]:
    """An environment naming no client config: no DFS_CONFIG, and ``home``."""
    env = {key: value for key, value in os.environ.items() if key != "DFS_CONFIG"}
    env["HOME"] = str(home)
    return env


@pytest.fixture
def env(shared_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    return {**bare_env(home), "DFS_CONFIG": str(shared_cluster.client_config)}


@pytest.fixture
def dfs(env: dict[str, str]) -> Dfs:
    return Dfs(env)


def standalone_config(cluster: LocalCluster, path: Path, **changes: object) -> Path:
    """A copy of the cluster's client config that works from any folder."""
    document = json.loads(cluster.client_config.read_text())
    folder = cluster.client_config.parent
    document["tls"] = {key: str(folder / value) for key, value in document["tls"].items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**document, **changes}))
    return path


def stat_fields(run: Run) -> dict[str, str]:
    """``dfs stat`` output as {"Size": "123", "Replication": "3", ...}."""
    fields = {}
    for line in ok(run).lines:
        for part in re.split(r"\s{3,}", line.strip()):
            key, _, value = part.partition(": ")
            fields[key] = value
    return fields


# -- files in and out --------------------------------------------------------------


def test_put_get_and_cat_copy_a_multi_chunk_file_byte_for_byte(dfs, tmp_path):
    data = os.urandom(3 * MiB + 12345)
    source = tmp_path / "blob.bin"
    source.write_bytes(data)
    copy = tmp_path / "copy.bin"

    ok(dfs("mkdir", "/trip"))
    put = ok(dfs("put", source, "/trip/blob.bin"))
    stat, get, cat = dfs.each(
        ["stat", "/trip/blob.bin"],
        ["get", "/trip/blob.bin", copy],
        ["cat", "/trip/blob.bin", "/trip/blob.bin"],
    )

    # Off a terminal no progress bar is drawn, on either stream.
    assert ok(put).out == b"" and ok(get).out == b""
    fields = stat_fields(stat)
    assert fields["Size"] == str(len(data))
    assert fields["Chunk size"] == str(CHUNK_SIZE)  # so four chunks
    assert copy.read_bytes() == data
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blob.bin", "copy.bin"]
    assert ok(cat).out == data + data


def test_put_into_a_directory_and_get_into_a_folder(dfs, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (local / name).write_text(f"this is {name}\n")
    out = tmp_path / "out"
    out.mkdir()

    ok(dfs("mkdir", "/into"))
    ok(dfs("put", local / "a.txt", local / "b.txt", "/into"))
    into_existing, two_replicas, refused, get_two = dfs.each(
        ["put", local / "c.txt", "/into"],  # an existing directory, no trailing /
        ["put", "--replication", "2", local / "a.txt", "/into/two.txt"],
        ["put", local / "b.txt", "/into/a.txt"],
        ["get", "/into/a.txt", "/into/b.txt", out],
    )
    ok(into_existing)
    ok(two_replicas)
    failed(refused, "dfs: put: /into/a.txt: File exists\n")
    ok(get_two)
    assert sorted(path.name for path in out.iterdir()) == ["a.txt", "b.txt"]
    assert (out / "a.txt").read_text() == "this is a.txt\n"

    listing, stat, forced, exists, nowhere, get_forced = dfs.each(
        ["ls", "/into"],
        ["stat", "/into/two.txt"],
        ["put", "-f", local / "b.txt", "/into/a.txt"],
        ["get", "/into/b.txt", out],
        ["get", "/into/b.txt", tmp_path / "no" / "such" / "b.txt"],
        ["get", "-f", "/into/c.txt", out / "a.txt"],
    )
    assert ok(listing).lines == ["a.txt", "b.txt", "c.txt", "two.txt"]
    assert stat_fields(stat)["Replication"] == "2"
    ok(forced)
    failed(exists, f"dfs: get: {out / 'b.txt'}: File exists (use -f to overwrite)\n")
    failed(nowhere, f"dfs: get: {tmp_path / 'no/such/b.txt'}: No such file or directory\n")
    ok(get_forced)
    assert (out / "a.txt").read_text() == "this is c.txt\n"
    assert ok(dfs("cat", "/into/a.txt")).text == "this is b.txt\n"


def test_put_dash_streams_standard_input_into_a_file(dfs, env, tmp_path):
    data = os.urandom(3 * MiB + 5)
    (tmp_path / "f").write_bytes(data)
    ok(dfs("mkdir", "/stdin"))

    # From a pipe written in pieces, as from a program still producing it.
    put = subprocess.Popen(
        [*DFS, "put", "-", "/stdin/piped.bin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert put.stdin is not None
    for start in range(0, len(data), 100_000):
        put.stdin.write(data[start : start + 100_000])
        put.stdin.flush()
    put.stdin.close()
    assert put.wait(timeout=60) == 0
    assert put.stdout is not None and put.stderr is not None
    assert (put.stdout.read(), put.stderr.read()) == (b"", b"")

    # From a file (< file).
    with open(tmp_path / "f", "rb") as source:
        redirected = subprocess.run(
            [*DFS, "put", "--replication", "2", "-", "/stdin/redirected.bin"],
            stdin=source,
            capture_output=True,
            env=env,
            timeout=60,
        )
    assert (redirected.returncode, redirected.stderr) == (0, b"")

    piped, from_file, stat, empty = dfs.each(
        ["cat", "/stdin/piped.bin"],
        ["cat", "/stdin/redirected.bin"],
        ["stat", "/stdin/redirected.bin"],
        ["put", "-", "/stdin/empty.bin"],  # standard input is /dev/null here
    )
    assert ok(piped).out == data
    assert ok(from_file).out == data
    assert stat_fields(stat)["Replication"] == "2"
    ok(empty)

    exists, into_directory, with_others = dfs.each(
        ["put", "-", "/stdin/piped.bin"],
        ["put", "-", "/stdin/"],
        ["put", tmp_path / "f", "-", "/stdin"],
    )
    failed(exists, "dfs: put: /stdin/piped.bin: File exists\n")
    failed(into_directory, "dfs: put: /stdin/: Is a directory (name the file to write to)\n")
    failed(with_others, "dfs: put: -: standard input can only be copied on its own\n")
    assert ok(dfs("ls", "/stdin")).lines == ["empty.bin", "piped.bin", "redirected.bin"]
    assert ok(dfs("stat", "/stdin/empty.bin")).text.count("Size: 0\n") == 1


# -- looking at the namespace ----------------------------------------------------------


def test_ls_stat_and_du_show_sizes_that_agree(dfs, tmp_path):
    (tmp_path / "small.bin").write_bytes(os.urandom(1536))
    (tmp_path / "big.bin").write_bytes(os.urandom(2 * MiB + MiB // 2))
    ok(dfs("mkdir", "-p", "/sizes/sub"))
    ok(dfs("put", tmp_path / "small.bin", tmp_path / "big.bin", "/sizes/"))

    ls, ls_file, ls_d, ls_l, ls_lh, stat_file, stat_dir, du, du_s, du_sh = dfs.each(
        ["ls", "/sizes"],
        ["ls", "/sizes/big.bin"],
        ["ls", "-d", "/sizes"],
        ["ls", "-l", "/sizes"],
        ["ls", "-lh", "/sizes"],
        ["stat", "/sizes/big.bin"],
        ["stat", "/sizes/sub"],
        ["du", "/sizes"],
        ["du", "-s", "/sizes"],
        ["du", "-s", "-h", "/sizes"],
    )
    assert ok(ls).lines == ["big.bin", "small.bin", "sub"]
    assert ok(ls_file).lines == ["/sizes/big.bin"]
    assert ok(ls_d).lines == ["/sizes"]

    long = {line.split()[-1]: line.split() for line in ok(ls_l).lines}
    assert set(long) == {"big.bin", "small.bin", "sub"}
    mode, replication, owner, group, size, day, minute, _ = long["big.bin"]
    assert [mode, replication, owner, group, size] == [
        "-rw-r--r--",
        "3",
        "admin",
        "supergroup",
        "2621440",
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", day) and re.fullmatch(r"\d\d:\d\d", minute)
    assert long["small.bin"][4] == "1536"
    assert long["sub"][:2] == ["drwxr-xr-x", "-"] and long["sub"][4] == "0"
    human = {line.split()[-1]: line.split()[4] for line in ok(ls_lh).lines}
    assert human == {"big.bin": "2.5M", "small.bin": "1.5K", "sub": "0B"}

    fields = stat_fields(stat_file)
    assert fields["Path"] == "/sizes/big.bin"
    assert fields["Type"] == "file"
    assert fields["Size"] == "2621440"
    assert fields["Replication"] == "3"
    assert fields["Mode"] == "(0644/-rw-r--r--)"
    assert (fields["Owner"], fields["Group"]) == ("admin", "supergroup")
    directory = stat_fields(stat_dir)
    assert (directory["Type"], directory["Size"]) == ("directory", "0")

    usage = {line.split()[2]: line.split()[:2] for line in ok(du).lines}
    assert usage == {
        "/sizes/big.bin": ["2621440", "7864320"],
        "/sizes/small.bin": ["1536", "4608"],
        "/sizes/sub": ["0", "0"],
    }
    assert ok(du_s).lines == ["2622976      7868928      /sizes"]
    assert ok(du_sh).lines[0].split() == ["2.5M", "7.5M", "/sizes"]


def test_df_counts_the_live_dataservers_and_the_space_they_use(dfs, tmp_path):
    (tmp_path / "file").write_bytes(os.urandom(2 * MiB))
    ok(dfs("put", tmp_path / "file", "/df.bin"))

    def df() -> list[str] | None:
        header, line = ok(dfs("df")).lines
        assert header.split() == ["Size", "Used", "Available", "Use%", "Dataservers"]
        # The dataservers report what they store with their next heartbeats.
        return line.split() if int(line.split()[1]) >= 3 * 2 * MiB else None

    size, used, available, percent, *servers = wait_for(df, what="df counts the new file")
    assert servers == ["3", "alive,", "0", "dead"]
    assert int(available) <= int(size)
    assert percent == f"{100 * int(used) / int(size):.0f}%"

    _, line = ok(dfs("df", "-h")).lines
    assert all(HUMAN.fullmatch(value) for value in line.split()[:3]), line
    assert line.split()[4:] == ["3", "alive,", "0", "dead"]


def test_count_shows_directories_files_and_bytes_and_with_q_the_quotas(dfs, tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 1000)
    ok(dfs("mkdir", "-p", "/counted/sub"))
    ok(dfs("put", tmp_path / "f", "/counted/a"))
    ok(dfs("put", tmp_path / "f", "/counted/sub/b"))
    plain, with_quotas, a_file = dfs.each(
        ["count", "/counted"],
        ["count", "-q", "-v", "/counted"],
        ["count", "/counted/a"],
    )
    assert ok(plain).text.split() == ["2", "2", "2000", "/counted"]
    header, line = ok(with_quotas).lines
    assert header.split() == [
        "QUOTA",
        "REM_QUOTA",
        "SPACE_QUOTA",
        "REM_SPACE_QUOTA",
        "DIR_COUNT",
        "FILE_COUNT",
        "CONTENT_SIZE",
        "PATHNAME",
    ]
    assert line.split() == ["none", "inf", "none", "inf", "2", "2", "2000", "/counted"]
    assert ok(a_file).text.split() == ["0", "1", "1000", "/counted/a"]


def test_admin_status_lists_the_leader_and_every_dataserver_alive(dfs):
    lines = ok(dfs("admin", "status")).lines
    assert lines[0].split()[:4] == ["METASERVER", "NAME", "RAFT", "ROLE"]
    assert lines[1].split()[3] == "leader"
    assert lines[-1] == "3 dataservers: 3 alive, 0 dead, 0 decommissioning, 0 decommissioned"
    states = {line.split()[0]: line.split()[2] for line in lines if line.startswith("ds")}
    assert states == {"ds1": "alive", "ds2": "alive", "ds3": "alive"}


def test_a_trailing_slash_on_a_file_path_is_not_a_directory_for_every_command(dfs, tmp_path):
    (tmp_path / "f").write_text("a file\n")
    ok(dfs("mkdir", "/slash"))
    ok(dfs("put", tmp_path / "f", "/slash/f"))
    file = "/slash/f/"
    commands = [
        ["ls", file],
        ["ls", "/slash/f/."],
        ["stat", file],
        ["cat", file],
        ["head", file],
        ["tail", file],
        ["rm", file],
        ["mv", file, "/slash/moved"],
        ["cp", file, "/slash/copied"],
        ["get", file, tmp_path / "got"],
        ["du", file],
        ["du", "-s", file],
        ["count", file],
        ["setrep", "2", file],
        ["chmod", "600", file],
        ["chown", "admin", file],
        ["chgrp", "supergroup", file],
        ["find", file],
        ["tree", file],
        ["cd", file],
        ["admin", "fsck", file],
    ]
    for command, run in zip(commands, dfs.each(*commands), strict=True):
        name = " ".join(command[:2]) if command[0] == "admin" else command[0]
        shown = "/slash/f/." if command[1] == "/slash/f/." else file
        failed(run, f"dfs: {name}: {shown}: Not a directory\n")
    # Nothing was changed, moved, copied or fetched.
    assert ok(dfs("ls", "-l", "/slash/")).text.split()[:2] == ["-rw-r--r--", "3"]
    assert ok(dfs("ls", "/slash/")).lines == ["f"]
    assert not (tmp_path / "got").exists()

    # Local paths too, as the system resolves them; and a destination that ends in a
    # slash is a directory to put into.
    failed(
        dfs("put", f"{tmp_path / 'f'}/", "/slash/g"),
        f"dfs: put: {tmp_path / 'f'}/: Not a directory\n",
    )
    failed(
        dfs("get", "/slash/f", f"{tmp_path / 'f'}/"),
        f"dfs: get: {tmp_path / 'f'}/: Not a directory\n",
    )
    failed(dfs("put", tmp_path / "f", file), "dfs: put: /slash/f/f: Not a directory\n")
    failed(dfs("mv", "/slash/f", "/nowhere/"), "dfs: mv: /slash/f: No such file or directory\n")
    ok(dfs("mkdir", "/slash/in/"))
    ok(dfs("mv", "/slash/f", "/slash/in/"))
    assert ok(dfs("ls", "-R", "/slash/")).lines == ["/slash/:", "in", "", "/slash/in:", "f"]


# -- changing the namespace ------------------------------------------------------------


def test_mkdir_mv_rm_and_setrep(dfs, tmp_path):
    (tmp_path / "f").write_bytes(b"some bytes")
    failed(dfs("mkdir", "/ns/a/b"), "dfs: mkdir: /ns/a/b: No such file or directory\n")
    ok(dfs("mkdir", "-p", "/ns/a/b"))
    again, exists, put = dfs.each(
        ["mkdir", "-p", "/ns/a/b"], ["mkdir", "/ns/a"], ["put", tmp_path / "f", "/ns/a/b/f"]
    )
    ok(again)
    failed(exists, "dfs: mkdir: /ns/a: File exists\n")
    ok(put)

    # A file renamed across directories, moved into a directory, and that directory
    # renamed: the file ends up as /ns/moved/g.
    ok(dfs("mv", "/ns/a/b/f", "/ns/g"))
    ok(dfs("mv", "/ns/g", "/ns/a"))
    ok(dfs("mv", "/ns/a", "/ns/moved"))
    ok(dfs("setrep", "2", "/ns/moved/g"))

    ls_top, ls_moved, cat, stat, du, not_empty = dfs.each(
        ["ls", "/ns"],
        ["ls", "/ns/moved"],
        ["cat", "/ns/moved/g"],
        ["stat", "/ns/moved/g"],
        ["du", "/ns/moved/g"],
        ["rm", "/ns/moved"],
    )
    assert ok(ls_top).lines == ["moved"]
    assert ok(ls_moved).lines == ["b", "g"]
    assert ok(cat).out == b"some bytes"
    assert stat_fields(stat)["Replication"] == "2"
    assert ok(du).lines[0].split() == ["10", "20", "/ns/moved/g"]
    failed(not_empty, "dfs: rm: /ns/moved: Directory not empty\n")

    ok(dfs("rm", "/ns/moved/g"))
    ok(dfs("rm", "-r", "/ns/moved"))  # still holding b
    gone, forced = dfs.each(["ls", "/ns"], ["rm", "-f", "/ns/nothing", "/"])
    assert ok(gone).lines == []
    # -f: a missing path is no failure and says nothing; other failures still count.
    failed_with_one_line(forced, "dfs: rm: /: Invalid path: ")


# -- errors ------------------------------------------------------------------------------


def test_a_missing_path_fails_with_one_line_naming_it(dfs, tmp_path):
    path = "/missing/file"
    commands = [
        ["ls", path],
        ["stat", path],
        ["cat", path],
        ["du", path],
        ["rm", path],
        ["setrep", "2", path],
        ["mv", path, "/elsewhere"],
        ["get", path, tmp_path / "copy"],
    ]
    for command, run in zip(commands, dfs.each(*commands), strict=True):
        failed(run, f"dfs: {command[0]}: {path}: No such file or directory\n")


def test_a_missing_local_file_and_one_bad_path_among_good_ones(dfs, tmp_path):
    put, mixed = dfs.each(["put", tmp_path / "absent", "/absent"], ["stat", "/", "/missing", "/"])
    failed(put, f"dfs: put: {tmp_path / 'absent'}: No such file or directory\n")
    # The good paths are still done; the status says that one failed.
    assert mixed.status == 1
    assert mixed.text.count("Path: /\n") == 2
    assert mixed.err == "dfs: stat: /missing: No such file or directory\n"


def test_an_invalid_path_is_refused_with_the_reason(dfs):
    # (A relative path is taken from the working directory, / here: see test_cli_more.)
    invalid = ["/../escape", "/up/../..", "/" + "n" * 256]
    longest = "/" + "n" * 255
    *refused, fine = dfs.each(*[["mkdir", path] for path in invalid], ["mkdir", longest])
    for path, run in zip(invalid, refused, strict=True):
        failed_with_one_line(run, f"dfs: mkdir: {path}: Invalid path: ")
    ok(fine)


def test_a_wrong_command_line_exits_2_before_looking_for_a_cluster(tmp_path):
    commands = [["nonsense"], ["ls", "--nonsense"], ["put", "only-one"], ["setrep", "x", "/"], []]
    *wrong, nothing = Dfs(bare_env(tmp_path)).each(*commands)
    for command, run in zip(commands, wrong, strict=False):
        assert run.status == 2, command
        assert "usage: dfs" in run.err and "no client config" not in run.err, command
    # No command at all opens the shell, which needs a cluster: one line, exit 1.
    assert nothing.status == 1 and nothing.err.startswith("dfs: shell: "), nothing.err


# -- which cluster -------------------------------------------------------------------------


def test_the_config_comes_from_c_then_dfs_config_then_home(shared_cluster, tmp_path):
    config = str(shared_cluster.client_config)
    empty_home = bare_env(tmp_path / "empty")
    missing = str(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    configured_home = bare_env(tmp_path / "home")
    standalone_config(shared_cluster, tmp_path / "home" / ".config" / "dfs" / "client_config.json")

    nothing, c, long_c, from_env, c_first, named_missing, bad, from_home = [
        Dfs(env)(*command)
        for env, command in [
            (empty_home, ["ls", "/"]),
            (empty_home, ["-c", config, "ls", "-d", "/"]),
            (empty_home, ["--config", config, "ls", "-d", "/"]),
            ({**empty_home, "DFS_CONFIG": config}, ["ls", "-d", "/"]),
            ({**empty_home, "DFS_CONFIG": missing}, ["-c", config, "ls", "-d", "/"]),
            ({**empty_home, "DFS_CONFIG": missing}, ["ls", "/"]),
            (empty_home, ["-c", broken, "ls", "/"]),
            (configured_home, ["ls", "-d", "/"]),
        ]
    ]
    failed(nothing, "dfs: ls: no client config: give -c CONFIG or set DFS_CONFIG\n")
    for run in (c, long_c, from_env, c_first, from_home):
        assert ok(run).lines == ["/"]
    failed_with_one_line(named_missing, f"dfs: ls: {missing}")
    failed_with_one_line(bad, f"dfs: ls: {broken}")

    # A config naming a key file that is not there: the file and the key, not errno.
    no_key = standalone_config(shared_cluster, tmp_path / "no_key.json")
    document = json.loads(no_key.read_text())
    document["tls"]["key"] = str(tmp_path / "gone.key")
    no_key.write_text(json.dumps(document))
    failed_with_one_line(
        Dfs(empty_home)("-c", str(no_key), "ls", "/"),
        f"dfs: ls: {no_key}: key 'tls.key': expected an existing readable file",
    )


def test_a_metaserver_that_is_down_or_silent_is_one_line_not_a_traceback(
    shared_cluster, dfs, tmp_path
):
    (port,) = free_ports(1)
    down = standalone_config(
        shared_cluster, tmp_path / "down.json", metaservers=[f"127.0.0.1:{port}"]
    )
    with socket.socket() as silent:
        # Takes connections (the kernel does) and never says a word.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = standalone_config(
            shared_cluster,
            tmp_path / "silent.json",
            metaservers=[f"127.0.0.1:{silent.getsockname()[1]}"],
            connect_timeout=1,
        )
        ls, put, timed_out = dfs.each(
            ["-c", down, "ls", "/"], ["-c", down, "put", down, "/x"], ["-c", mute, "ls", "/"]
        )
    failed_with_one_line(ls, "dfs: ls: cannot reach the cluster: ")
    failed_with_one_line(put, "dfs: put: cannot reach the cluster: ")
    assert (timed_out.status, timed_out.out) == (1, b"")
    assert timed_out.err.startswith("dfs: ls: cannot reach the cluster: ")
    assert "Traceback" not in timed_out.err


# -- pipes and terminals -----------------------------------------------------------------


def test_cat_into_a_pipe_closed_early_stops_quietly(dfs, env, tmp_path):
    data = os.urandom(3 * MiB)
    (tmp_path / "f").write_bytes(data)
    ok(dfs("put", tmp_path / "f", "/pipe.bin"))

    # As in `dfs cat /pipe.bin | head -c 10`.
    cat = subprocess.Popen(
        [*DFS, "cat", "/pipe.bin"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert cat.stdout is not None and cat.stderr is not None
    assert cat.stdout.read(10) == data[:10]
    cat.stdout.close()
    err = cat.stderr.read()
    assert cat.wait(timeout=60) == 141  # as for a cat ended by SIGPIPE
    assert err == b""


def as_foreground_job() -> None:
    """Run in the child before dfs starts: SIGINT at its default disposition, as a
    terminal's shell starts a command. A test run started in the background by a
    script ignores SIGINT, and its children would inherit that, and ignore Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def on_terminal(env: Mapping[str, str], command: str) -> Iterator[pexpect.spawn]:
    """``dfs COMMAND`` on a terminal of 100 columns (through sh, for redirections);
    ended by force if the test leaves it running."""
    line = "exec " + " ".join(DFS) + " " + command
    child = pexpect.spawn(
        "/bin/sh",
        ["-c", line],
        env=dict(env),
        dimensions=(24, 100),
        timeout=60,
        preexec_fn=as_foreground_job,
    )
    try:
        yield child
    finally:
        child.close(force=True)


def finish(child: pexpect.spawn) -> tuple[int | None, str]:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before.decode(errors="replace")


def test_put_and_get_on_a_terminal_draw_a_progress_bar(dfs, env, tmp_path):
    data = os.urandom(4 * MiB)
    (tmp_path / "f").write_bytes(data)

    # The bar is drawn on the terminal even when stdout is a file, and reads no keys.
    with on_terminal(env, f"put {tmp_path / 'f'} /bar.bin > {tmp_path / 'out'} < /dev/null") as put:
        put.expect(r"/bar\.bin +\d+\.\d% \[")
        put.expect("/4.0M")
        status, screen = finish(put)
    assert status == 0, screen
    assert "Traceback" not in screen and "Warning" not in screen, screen
    assert (tmp_path / "out").read_bytes() == b""

    with on_terminal(env, f"get /bar.bin {tmp_path / 'copy'}") as get:
        get.expect(r"/bar\.bin +\d+\.\d% \[")
        status, screen = finish(get)
    assert status == 0, screen
    assert (tmp_path / "copy").read_bytes() == data


def test_put_dash_draws_a_bar_for_a_file_and_none_for_a_terminal(dfs, env, tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(4 * MiB))

    # Standard input a file: its size is known, so the bar shows.
    with on_terminal(env, f"put - /stdin-bar.bin < {tmp_path / 'f'}") as put:
        put.expect(r"/stdin-bar\.bin +\d+\.\d% \[")
        status, screen = finish(put)
    assert status == 0, screen
    assert ok(dfs("cat", "/stdin-bar.bin")).out == (tmp_path / "f").read_bytes()

    # Standard input the terminal: typed lines until Ctrl-D, and no bar.
    with on_terminal(env, "put - /typed.txt") as put:
        put.sendline("typed in")
        put.sendeof()
        status, screen = finish(put)
    assert status == 0, screen
    assert "%" not in screen, screen
    assert ok(dfs("cat", "/typed.txt")).text == "typed in\n"


def test_ctrl_c_during_put_exits_130_and_leaves_no_file(dfs, env, tmp_path):
    # Big enough that the copy is still going when the interrupt arrives (a put of
    # 24 MiB could end before the bar it waits for was drawn).
    with open(tmp_path / "f", "wb") as big:
        big.truncate(256 * MiB)

    with on_terminal(env, f"put {tmp_path / 'f'} /interrupted.bin") as put:
        put.expect(r"\d+\.\d% \[")
        put.sendintr()
        status, screen = finish(put)
    assert status == 130, screen
    assert screen.rstrip().endswith("dfs: interrupted"), screen
    failed(
        dfs("stat", "/interrupted.bin"), "dfs: stat: /interrupted.bin: No such file or directory\n"
    )


def test_ctrl_c_during_get_exits_130_and_leaves_no_local_file(dfs, env, tmp_path):
    # Big enough that the copy is still going when the interrupt arrives.
    with open(tmp_path / "f", "wb") as big:
        big.truncate(128 * MiB)
    ok(dfs("put", "--replication", "1", str(tmp_path / "f"), "/to-interrupt.bin"))

    with on_terminal(env, f"get /to-interrupt.bin {tmp_path / 'got'}") as get:
        get.expect(r"\d+\.\d% \[")
        get.sendintr()
        status, screen = finish(get)
    assert status == 130, screen
    assert screen.rstrip().endswith("dfs: interrupted"), screen
    assert sorted(path.name for path in tmp_path.iterdir()) == ["f"], screen


# -- trees, several files at once ---------------------------------------------------------


def test_put_r_and_get_r_copy_a_tree_of_many_files_several_at_once(dfs, tmp_path):
    source = tmp_path / "tree"
    files = {}
    for index in range(60):
        path = source / f"d{index % 3}" / ("deep" if index % 2 else "") / f"f{index:02d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        files[path.relative_to(source)] = os.urandom(1000 + index)
        path.write_bytes(files[path.relative_to(source)])
    (source / "empty-dir").mkdir()

    ok(dfs("put", "-r", "-j", "6", source, "/tree"))
    ok(dfs("get", "-r", "-j", "6", "/tree", tmp_path / "back"))

    back = tmp_path / "back"
    assert {p.relative_to(back): p.read_bytes() for p in back.rglob("*") if p.is_file()} == files
    assert (back / "empty-dir").is_dir()
    assert ok(dfs("ls", "/tree")).lines == ["d0", "d1", "d2", "empty-dir"]


def test_put_r_and_get_r_report_each_failed_file_and_copy_the_others(dfs, tmp_path):
    source = tmp_path / "tree"
    source.mkdir()
    for name in ("a", "b", "c", "d"):
        (source / name).write_text(f"new {name}\n")
    # Into an existing folder, as cp -r: the tree goes in under its own name.
    ok(dfs("mkdir", "-p", "/partly/tree"))
    ok(dfs("put", source / "b", "/partly/tree/b"))
    (tmp_path / "back" / "tree").mkdir(parents=True)
    (tmp_path / "back" / "tree" / "c").write_text("mine\n")

    failed(dfs("put", "-r", source, "/partly"), "dfs: put: /partly/tree/b: File exists\n")
    assert ok(dfs("ls", "/partly/tree")).lines == ["a", "b", "c", "d"]
    assert ok(dfs("cat", "/partly/tree/d")).text == "new d\n"

    failed(
        dfs("get", "-r", "/partly/tree", tmp_path / "back"),
        f"dfs: get: {tmp_path / 'back' / 'tree' / 'c'}: File exists (use -f to overwrite)\n",
    )
    assert (tmp_path / "back" / "tree" / "c").read_text() == "mine\n"
    assert (tmp_path / "back" / "tree" / "a").read_text() == "new a\n"
    ok(dfs("get", "-r", "-f", "/partly/tree", tmp_path / "back"))
    assert (tmp_path / "back" / "tree" / "c").read_text() == "new c\n"


def test_a_jobs_below_one_is_refused(dfs, tmp_path):
    run = dfs("put", "-r", "-j", "0", tmp_path, "/nowhere")
    assert run.status == 2 and "must be at least 1, got 0" in run.err, run


def test_ctrl_c_during_put_r_exits_130_and_leaves_no_partial_file(dfs, env, tmp_path):
    source = tmp_path / "big"
    source.mkdir()
    for index in range(6):
        with open(source / f"f{index}", "wb") as big:
            big.truncate(16 * MiB)

    with on_terminal(env, f"put -r -j 3 {source} /interrupted-tree") as put:
        put.expect(r"\d+\.\d% \[")
        put.sendintr()
        status, screen = finish(put)
    assert status == 130, screen
    assert screen.rstrip().endswith("dfs: interrupted"), screen
    # Each file is there whole or not at all.
    sizes = {
        line.split()[-1]: int(line.split()[4])
        for line in ok(dfs("ls", "-l", "/interrupted-tree")).lines
    }
    assert set(sizes.values()) <= {16 * MiB}, sizes
