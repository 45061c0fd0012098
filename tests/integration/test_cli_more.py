"""The commands that came with the interactive shell, run one-shot as a user runs them:
cd/pwd/lcd/lls, ls -R/-d, tree, find, head/tail, cp, put -r/get -r, chmod/chown/chgrp,
help; judged on what they print and on their exit status.

The cluster's chunks are 64 KiB, so that a file of a few hundred KiB spans several.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

from dfs.localcluster import LocalCluster

CHUNK_SIZE = 65536

Dfs = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster(replication={"chunk_size": CHUNK_SIZE})


@pytest.fixture
def run(cluster: LocalCluster, dfs: Callable[..., subprocess.CompletedProcess[str]]) -> Dfs:
    def run(*arguments: object) -> subprocess.CompletedProcess[str]:
        return dfs("-c", str(cluster.client_config), *map(str, arguments))

    return run


def ok(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0 and done.stderr == "", done
    return done.stdout.splitlines()


def failed(done: subprocess.CompletedProcess[str], stderr: str, status: int = 1) -> None:
    assert (done.returncode, done.stdout, done.stderr) == (status, "", stderr), done


def make_tree(root: Path) -> None:
    """root/{a.txt, sub/{b.txt, deeper/c.bin}, empty/}"""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.txt").write_text("beta\n")
    (root / "sub" / "deeper" / "c.bin").write_bytes(os.urandom(3 * CHUNK_SIZE + 17))


def local_files(root: Path) -> dict[str, bytes | None]:
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def test_put_r_get_r_and_cp_r_copy_whole_trees(run, tmp_path):
    source = tmp_path / "photos"
    make_tree(source)

    ok(run("mkdir", "/backup"))
    ok(run("put", "-r", source, "/backup"))  # an existing directory: into it
    assert ok(run("ls", "-R", "/backup/photos")) == [
        "/backup/photos:",
        "a.txt",
        "empty",
        "sub",
        "",
        "/backup/photos/empty:",
        "",
        "/backup/photos/sub:",
        "b.txt",
        "deeper",
        "",
        "/backup/photos/sub/deeper:",
        "c.bin",
    ]
    # Again: the files exist; -f replaces them.
    again = run("put", "-r", source, "/backup")
    assert again.returncode == 1 and again.stdout == ""
    assert "dfs: put: /backup/photos/a.txt: File exists\n" in again.stderr
    ok(run("put", "-r", "-f", source, "/backup"))
    failed(run("put", source, "/x"), f"dfs: put: {source}: Is a directory (use -r)\n")

    restored = tmp_path / "restored"
    ok(run("get", "-r", "/backup/photos", restored))  # a new folder: the copy itself
    assert local_files(restored) == local_files(source)
    again = run("get", "-r", "/backup/photos", restored)  # into the existing folder
    assert again.returncode == 0, again
    assert local_files(restored / "photos") == local_files(source)
    refused = run("get", "-r", "/backup/photos", tmp_path)
    assert refused.returncode == 1
    assert f"dfs: get: {source / 'a.txt'}: File exists (use -f to overwrite)\n" in refused.stderr
    failed(
        run("get", "/backup/photos", tmp_path / "x"), "dfs: get: /backup/photos: Is a directory\n"
    )

    ok(run("cp", "-r", "/backup/photos", "/copy"))
    copied, original = ok(run("find", "/copy")), ok(run("find", "/backup/photos"))
    assert copied[0] == "/copy" and len(copied) == 7
    assert [path[len("/copy") :] for path in copied] == [
        path[len("/backup/photos") :] for path in original
    ]
    got = tmp_path / "c.bin"
    ok(run("get", "/copy/sub/deeper/c.bin", got))
    assert got.read_bytes() == (source / "sub" / "deeper" / "c.bin").read_bytes()
    failed(run("cp", "/copy", "/other"), "dfs: cp: /copy: Is a directory\n")
    failed(run("cp", "/copy/a.txt", "/copy/sub/b.txt"), "dfs: cp: /copy/sub/b.txt: File exists\n")
    ok(run("cp", "-f", "/copy/a.txt", "/copy/sub/b.txt"))
    ok(run("cp", "/copy/a.txt", "/copy/sub/b.txt", "/copy/empty"))
    assert ok(run("cat", "/copy/sub/b.txt", "/copy/empty/b.txt")) == ["alpha", "alpha"]
    assert ok(run("ls", "/copy/empty")) == ["a.txt", "b.txt"]
    failed(
        run("cp", "-r", "/copy", "/copy/sub"),
        "dfs: cp: /copy: Invalid argument: cannot copy a directory into itself, /copy/sub/copy\n",
    )


def test_head_and_tail_read_across_chunks(run, tmp_path):
    lines = [f"line {number:06d} {'x' * 40}\n" for number in range(8000)]  # ~ 400 KiB
    text = "".join(lines)
    (tmp_path / "log.txt").write_text(text)
    ok(run("put", tmp_path / "log.txt", "/log.txt"))
    assert int(ok(run("stat", "/log.txt"))[2].split()[-1]) > 5 * CHUNK_SIZE

    assert ok(run("head", "/log.txt")) == [line.rstrip("\n") for line in lines[:10]]
    assert run("head", "-n", "3", "/log.txt").stdout == "".join(lines[:3])
    assert run("head", "-c", "100", "/log.txt").stdout == text[:100]
    assert ok(run("tail", "/log.txt")) == [line.rstrip("\n") for line in lines[-10:]]
    assert run("tail", "-n", "2000", "/log.txt").stdout == "".join(lines[-2000:])
    assert run("tail", "-c", 3 * CHUNK_SIZE + 5, "/log.txt").stdout == text[-(3 * CHUNK_SIZE + 5) :]
    assert run("tail", "-n", "0", "/log.txt").stdout == ""
    failed(run("tail", "/"), "dfs: tail: /: Is a directory\n")
    failed(run("head", "/nope"), "dfs: head: /nope: No such file or directory\n")
    usage = run("head", "-n", "-3", "/log.txt")
    assert usage.returncode == 2 and "usage: dfs head" in usage.stderr


def test_cd_pwd_tree_find_and_ls_d(run, tmp_path):
    make_tree(tmp_path / "t")
    ok(run("put", "-r", tmp_path / "t", "/t"))

    assert ok(run("cd", "/t/sub")) == []
    failed(run("cd", "/t/nope"), "dfs: cd: /t/nope: No such file or directory\n")
    failed(run("cd", "t/a.txt"), "dfs: cd: t/a.txt: Not a directory\n")
    assert ok(run("pwd")) == ["/"]  # one-shot, every command starts at /
    assert ok(run("ls", "t/sub")) == ["b.txt", "deeper"]  # relative: from /
    assert ok(run("ls", "-d", "/t/sub", "t/a.txt")) == ["/t/sub", "t/a.txt"]
    assert ok(run("tree", "/t")) == [
        "/t",
        "├── a.txt",
        "├── empty",
        "└── sub",
        "    ├── b.txt",
        "    └── deeper",
        "        └── c.bin",
        "",
        "3 directories, 3 files",
    ]
    failed(run("tree", "/t/a.txt"), "dfs: tree: /t/a.txt: Not a directory\n")
    assert ok(run("find", "/t", "-name", "*.txt")) == ["/t/a.txt", "/t/sub/b.txt"]
    assert ok(run("find", "t", "-type", "d")) == ["t", "t/empty", "t/sub", "t/sub/deeper"]
    assert ok(run("find", "/t/sub", "-type", "f", "-name", "c*")) == ["/t/sub/deeper/c.bin"]
    failed(run("find", "/none"), "dfs: find: /none: No such file or directory\n")

    assert ok(run("du", "-s", "/t"))[0].split() == [
        str(3 * CHUNK_SIZE + 17 + 11),
        str(3 * (3 * CHUNK_SIZE + 17 + 11)),
        "/t",
    ]
    assert ok(run("rm", "-f", "/t/nope", "/t/a.txt")) == []
    failed(run("rm", "/t/a.txt"), "dfs: rm: /t/a.txt: No such file or directory\n")


def test_local_side_lcd_and_lls(run, tmp_path):
    make_tree(tmp_path / "here")
    assert ok(run("lls", tmp_path / "here")) == ["a.txt", "empty", "sub"]
    long = ok(run("lls", "-l", tmp_path / "here"))
    assert long[0].split()[0] == "-rw-r--r--" or long[0].startswith("-rw")
    assert long[0].split()[1] == "6" and long[0].endswith(" a.txt")
    assert long[1].startswith("d")
    assert ok(run("lcd", tmp_path)) == []
    failed(
        run("lcd", tmp_path / "nope"), f"dfs: lcd: {tmp_path / 'nope'}: No such file or directory\n"
    )
    failed(
        run("lls", tmp_path / "nope"), f"dfs: lls: {tmp_path / 'nope'}: No such file or directory\n"
    )


def test_chmod_chown_and_chgrp_show_in_ls_l(run, tmp_path):
    (tmp_path / "f").write_text("x\n")
    ok(run("mkdir", "-p", "/p/q"))
    ok(run("put", tmp_path / "f", "/p/q/f"))

    ok(run("chmod", "640", "/p/q/f"))
    ok(run("chown", "alice:science", "/p"))
    ok(run("chgrp", "-R", "staff", "/p/q"))
    ok(run("chmod", "-R", "1777", "/p/q"))
    ok(run("chown", "-R", "bob", "/p/q"))

    def long(path: str) -> list[list[str]]:
        return [line.split() for line in ok(run("ls", "-l", "-d", path))]

    assert [long("/p")[0][i] for i in (0, 2, 3)] == ["drwxr-xr-x", "alice", "science"]
    assert [long("/p/q")[0][i] for i in (0, 2, 3)] == ["drwxrwxrwt", "bob", "staff"]
    assert [long("/p/q/f")[0][i] for i in (0, 2, 3)] == ["-rwxrwxrwt", "bob", "staff"]

    failed(run("chmod", "644", "/p/none"), "dfs: chmod: /p/none: No such file or directory\n")
    bad = run("chown", "bad name", "/p")
    assert (bad.returncode, bad.stdout) == (1, "")
    assert (
        bad.stderr.startswith("dfs: chown: /p: Invalid argument: owner")
        and bad.stderr.count("\n") == 1
    )
    for usage in (run("chmod", "u+x", "/p"), run("chown", "alice:", "/p")):
        assert usage.returncode == 2 and "usage: dfs ch" in usage.stderr


def test_help_lists_the_commands_and_shows_one(run):
    listing = ok(run("help"))
    assert "Files in DFS:" in listing and "The local side:" in listing
    assert any(line.split()[:1] == ["exit"] for line in listing)
    assert run("help", "cp").stdout == run("cp", "--help").stdout
    assert "examples:" in run("help", "tail").stdout
    failed(run("help", "nonsense"), "dfs: help: nonsense: no such command\n", status=2)


def as_foreground_job() -> None:
    """Run in the child before dfs starts: SIGINT at its default disposition, as a
    terminal's shell starts a command. A test run started in the background by a
    script ignores SIGINT, and its children would inherit that, and ignore Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupted(env: dict[str, str], command: str, after: float) -> tuple[int | None, str]:
    """``dfs COMMAND`` on a terminal, interrupted with Ctrl-C ``after`` seconds after a
    progress bar first shows (the bar is redrawn in pieces, so later figures cannot be
    matched)."""
    line = f"exec {sys.executable} -m dfs_shell.main {command}"
    child = pexpect.spawn(
        "/bin/sh",
        ["-c", line],
        env=env,
        dimensions=(24, 100),
        timeout=60,
        preexec_fn=as_foreground_job,
    )
    try:
        child.expect(r"\d+\.\d% \[")
        time.sleep(after)
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        return child.exitstatus, child.before.decode(errors="replace")
    finally:
        child.close(force=True)


def test_ctrl_c_in_a_recursive_put_or_get_removes_only_the_file_being_copied(
    make_cluster, dfs, tmp_path
):
    # Chunks of the default size, so that one big file is still moving when Ctrl-C comes.
    cluster = make_cluster()
    env = {**os.environ, "DFS_CONFIG": str(cluster.client_config)}
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("first\n")
    with open(source / "sub" / "big.bin", "wb") as big:
        # Big enough to be still moving half a second in (a few seconds each way).
        big.truncate(512 * 1024 * 1024)

    status, screen = interrupted(env, f"put -r --replication 1 {source} /up", 0.7)
    assert status == 130 and screen.rstrip().endswith("dfs: interrupted"), screen
    config = ["-c", str(cluster.client_config)]
    assert ok(dfs(*config, "find", "/up")) == ["/up", "/up/a.txt", "/up/sub"]

    ok(dfs(*config, "put", "--replication", "1", source / "sub" / "big.bin", "/up/sub/"))
    status, screen = interrupted(env, f"get -r /up {tmp_path / 'down'}", 0.5)
    assert status == 130 and screen.rstrip().endswith("dfs: interrupted"), screen
    assert local_files(tmp_path / "down") == {"a.txt": b"first\n", "sub": None}
