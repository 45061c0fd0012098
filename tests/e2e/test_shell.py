"""The dfs shell in a real pseudo-terminal (pexpect) against a real local cluster.

Each test types into ``python -m dfs_shell.main`` as a person would (TAB, Up, Ctrl-C,
Ctrl-D) and reads the screen. Every wait is an ``expect`` with a deadline; every
child is closed, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from dfs.localcluster import DESCRIPTION, LocalCluster

#: The prompt: user@host:port:/working/directory>
PROMPT = re.compile(r"[\w.-]+@127\.0\.0\.1:\d+:/[^\s>\x1b]*>")

UP = "\x1b[A"
CTRL_D = "\x04"
CTRL_R = "\x12"
ENTER = "\r"


#: Terminal control sequences (colours, cursor moves), left out of what tests read.
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]?")


class Terminal:
    """One shell in a pseudo-terminal."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child

    def expect(self, pattern: str | re.Pattern[str], timeout: float = 30) -> str:
        self.child.expect(pattern, timeout=timeout)
        return CONTROL.sub("", str(self.child.before) + str(self.child.after))

    def prompt(self, timeout: float = 30) -> str:
        """Wait for the prompt: what was shown before it."""
        self.child.expect(PROMPT, timeout=timeout)
        return CONTROL.sub("", str(self.child.before))

    def run(self, line: str, timeout: float = 60) -> str:
        """Type a line and Enter; what it printed before the next prompt."""
        self.child.send(line + ENTER)
        return self.enter(timeout)

    def enter(self, timeout: float = 60) -> str:
        """After Enter: the line is drawn once more, then a new line, the output and the
        next prompt. What was printed between."""
        self.child.expect("\n", timeout=timeout)
        return self.prompt(timeout)


@pytest.fixture
def terminal_env(tmp_path: Path) -> dict[str, str]:
    """A user of their own: home, history and local cluster folder in tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ)
    env.pop("DFS_CONFIG", None)
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(tmp_path / "data-home"),
        TERM="xterm",
        # Nobody answers cursor position requests in a pexpect terminal.
        PROMPT_TOOLKIT_NO_CPR="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def environment(terminal_env: dict[str, str], cluster: LocalCluster) -> dict[str, str]:
    return {**terminal_env, "DFS_CONFIG": str(cluster.client_config)}


def as_foreground_job() -> None:
    """Run in the child before dfs starts: SIGINT at its default disposition, as a
    terminal's shell starts a command. A test run started in the background by a
    script ignores SIGINT, and its children would inherit that, and ignore Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    """``spawn(env, *arguments)``: dfs in a pseudo-terminal, closed at the end."""
    children: list[pexpect.spawn] = []

    def spawn(env: dict[str, str], *arguments: str) -> Terminal:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "dfs_shell.main", *arguments],
            env=env,
            cwd=str(tmp_path),
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(40, 160),
            timeout=30,
            preexec_fn=as_foreground_job,
        )
        # What the terminal showed, for the reader of a failed test.
        child.logfile_read = (tmp_path / f"terminal{len(children)}.log").open("w")
        children.append(child)
        return Terminal(child)

    yield spawn
    for child in children:
        child.close(force=True)
        child.logfile_read.close()


@pytest.fixture
def open_shell(
    spawn: Callable[..., Terminal], environment: dict[str, str]
) -> Callable[..., Terminal]:
    """``open_shell()``: the shell on the test's cluster, at its first prompt."""

    def open_shell(*arguments: str) -> Terminal:
        terminal = spawn(environment, *arguments)
        terminal.prompt(timeout=60)
        return terminal

    return open_shell


@pytest.fixture
def dfs(environment: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The one-shot dfs command, to prepare and check what the shell cannot see."""

    def dfs(*arguments: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "dfs_shell.main", *arguments],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        return done

    return dfs


def test_tab_completes_a_remote_path(open_shell: Callable[..., Terminal], dfs) -> None:
    dfs("mkdir", "-p", "/data/inside")
    shell = open_shell()
    shell.child.send("ls /da")
    shell.child.send("\t")
    shell.expect("ta/")
    assert "inside" in shell.run("")
    shell.child.send(CTRL_D)
    shell.child.expect(pexpect.EOF, timeout=30)


def test_put_and_get_a_directory_with_progress(
    open_shell: Callable[..., Terminal], tmp_path: Path
) -> None:
    source = tmp_path / "photos"
    (source / "2024").mkdir(parents=True)
    contents = {
        f"{folder}p{number}.bin": os.urandom(3 * 1024 * 1024 + number)
        for folder in ("", "2024/")
        for number in range(2)
    }
    for name, data in contents.items():
        (source / name).write_bytes(data)
    shell = open_shell()
    shown = shell.run("put -r photos /photos")
    # One bar for the whole tree (its files go several at once), drawn to its end.
    assert re.search(r"\(4 files\) +100\.0%", shown), shown
    assert "dfs:" not in shown
    shown = shell.run("get -r /photos back")
    assert re.search(r"\(4 files\) +100\.0%", shown), shown
    back = tmp_path / "back"
    copied = {
        str(path.relative_to(back)): path.read_bytes() for path in back.rglob("*") if path.is_file()
    }
    assert copied == contents
    listing = shell.run("ls /photos/2024")
    assert sorted(re.findall(r"p\d\.bin", listing)) == ["p0.bin", "p1.bin"]


def test_an_error_is_one_line_and_the_prompt_comes_back(
    open_shell: Callable[..., Terminal],
) -> None:
    shell = open_shell()
    shown = shell.run("ls /no/such/place")
    assert "dfs: ls: /no/such/place: No such file or directory" in shown
    assert "Traceback" not in shown
    shown = shell.run("put")
    assert "error:" in shown and "Traceback" not in shown
    shown = shell.run("ls 'unclosed")
    assert "dfs: No closing quotation" in shown
    # Ctrl-C at the prompt drops the line, runs nothing.
    shell.child.send("mkdir /never")
    shell.child.sendintr()
    shell.enter()
    assert shell.run("ls /").strip() == ""
    assert "dfs: shell: already in the shell" in shell.run("shell")
    shell.child.send("exit" + ENTER)
    shell.child.expect(pexpect.EOF, timeout=30)


def test_ctrl_c_during_a_large_put_leaves_nothing_behind(
    open_shell: Callable[..., Terminal], tmp_path: Path, dfs
) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        out.truncate(512 * 1024 * 1024)
    shell = open_shell()
    shell.child.send("put big.bin /big.bin" + ENTER)
    # Bytes are moving (the bar shows a rate; it redraws only what changed, so the
    # rate is the one figure sure to be drawn whole), far from all of them.
    shell.expect(re.compile(r"[1-9][\d.]*[KM]/s"), timeout=60)
    shell.child.sendintr()
    shown = shell.prompt(timeout=30)
    assert "dfs: put: interrupted" in shown
    assert "Traceback" not in shown
    assert dfs("ls", "/").stdout == ""
    # The shell goes on, on the same connection.
    assert "big.bin" not in shell.run("ls /")


def test_history_is_recalled_in_a_new_shell(
    open_shell: Callable[..., Terminal], environment: dict[str, str]
) -> None:
    first = open_shell()
    first.run("mkdir /remembered")
    first.child.send(CTRL_D)
    first.child.expect(pexpect.EOF, timeout=30)
    assert Path(environment["XDG_DATA_HOME"], "dfs", "history").exists()

    second = open_shell()
    second.child.send(UP)
    second.expect("mkdir /remembered")
    shown = second.run("")
    assert "dfs: mkdir: /remembered: File exists" in shown
    # Ctrl-R searches the history; Enter ends the search, a second one runs the line.
    second.child.send(CTRL_R + "rememb")
    second.expect("reverse-i-search")
    second.expect("ered")
    second.child.send(ENTER)
    assert "File exists" in second.run("")


def test_dfs_local_starts_the_local_cluster_and_opens_the_shell(
    spawn: Callable[..., Terminal], terminal_env: dict[str, str]
) -> None:
    folder = Path(terminal_env["XDG_DATA_HOME"], "dfs", "local")
    try:
        shell = spawn(terminal_env, "local")
        shell.expect(f"starting the local cluster in {folder}")
        shell.prompt(timeout=120)
        shown = shell.run("local status")
        assert re.search(r"meta1 +metaserver .* running", shown), shown
        shell.run("mkdir /from-local")
        assert "from-local" in shell.run("ls /")
        shell.child.send("exit" + ENTER)
        shell.child.expect(pexpect.EOF, timeout=30)

        # Running already: the shell opens at once, on the same cluster.
        again = spawn(terminal_env, "local")
        again.prompt(timeout=60)
        assert "from-local" in again.run("ls /")
    finally:
        if (folder / DESCRIPTION).exists():
            LocalCluster.open(folder).stop()


def test_a_lost_connection_is_reported_and_the_next_command_reconnects(
    open_shell: Callable[..., Terminal], cluster: LocalCluster
) -> None:
    # A client that gives up on a silent cluster in seconds, not the default minute.
    impatient = cluster.client_config.with_name("impatient_config.json")
    config = json.loads(cluster.client_config.read_text())
    impatient.write_text(json.dumps({**config, "request_timeout": 3, "connect_timeout": 2}))
    shell = open_shell("-c", str(impatient))
    shell.run("mkdir /before")
    meta = cluster.metaservers[0]
    cluster.stop_node(meta)
    shown = shell.run("ls /")
    assert re.search(r"dfs: ls: .*(connection|reach|answer)", shown), shown
    assert "Traceback" not in shown
    cluster.start_node(meta)
    cluster.wait_ready(timeout=60)
    deadline = time.monotonic() + 60
    while "before" not in (shown := shell.run("ls /")):
        assert time.monotonic() < deadline, shown
    shell.child.send(CTRL_D)
    shell.child.expect(pexpect.EOF, timeout=30)
