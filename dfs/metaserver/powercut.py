"""A file layer for tests that can "cut the power": what was not made durable is lost.

It behaves like :class:`dfs.metaserver.filelayer.FileLayer` (real files in a real
folder) and keeps, beside them in ``.powercut/``, what a disk would still hold after
a power loss: for each file (by inode) its content at its last fsync, and for the
folder the names it had at its last fsync. :meth:`PowerCutFileLayer.cut` puts the
folder back to exactly that, like SQLite's crash-test VFS or Jepsen's LazyFS:
bytes written but not fsynced are gone, a file created or renamed without a
folder fsync is gone or back under its old name.

The bookkeeping lives on disk under a file lock, so it also holds for the child
PySyncObj forks to write a snapshot. Call :meth:`cut` only once nothing writes to
the folder any more (every node using it is stopped).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dfs.metaserver.filelayer import FileLayer

SHADOW = ".powercut"


class PowerCutFileLayer(FileLayer):
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).absolute()
        self._shadow = self.directory / SHADOW
        self._shadow.mkdir(parents=True, exist_ok=True)
        self.cuts = 0

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        with open(self._shadow / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    state = json.loads((self._shadow / "state.json").read_text())
                except FileNotFoundError:
                    state = {"names": {}}
                yield state
                temporary = self._shadow / "state.json.tmp"
                temporary.write_text(json.dumps(state))
                os.replace(temporary, self._shadow / "state.json")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _keep(self, inode: int, content: bytes) -> None:
        temporary = self._shadow / f"{inode}.tmp"
        temporary.write_bytes(content)
        os.replace(temporary, self._shadow / str(inode))

    # -- the durability points ------------------------------------------------------

    def fsync(self, fd: int) -> None:
        with self._locked():
            size = os.fstat(fd).st_size
            self._keep(os.fstat(fd).st_ino, os.pread(fd, size, 0))

    def datasync(self, fd: int) -> None:
        self.fsync(fd)

    def fsync_path(self, path: Path) -> None:
        with self._locked():
            self._keep(os.stat(path).st_ino, Path(path).read_bytes())

    def fsync_dir(self, directory: Path) -> None:
        assert Path(directory).absolute() == self.directory, directory
        with self._locked() as state:
            state["names"] = {
                entry.name: entry.inode()
                for entry in os.scandir(self.directory)
                if entry.is_file() and entry.name != SHADOW
            }

    def open_append(self, path: Path) -> int:
        existed = Path(path).exists()
        fd = super().open_append(path)
        if not existed:
            # A new file has no durable content, whatever an old file with the
            # same inode number left in the shadow.
            with self._locked():
                (self._shadow / str(os.fstat(fd).st_ino)).unlink(missing_ok=True)
        return fd

    # -- the power cut ----------------------------------------------------------------

    def cut(self) -> None:
        """Put the folder back to what was durable, and start again from there."""
        with self._locked() as state:
            contents = {}
            for name, inode in state["names"].items():
                kept = self._shadow / str(inode)
                contents[name] = kept.read_bytes() if kept.exists() else b""
            for entry in os.scandir(self.directory):
                if entry.name == SHADOW:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            for leftover in self._shadow.iterdir():
                if leftover.name not in ("lock", "state.json"):
                    leftover.unlink()
            names = {}
            for name, content in contents.items():
                target = self.directory / name
                target.write_bytes(content)
                inode = os.stat(target).st_ino
                self._keep(inode, content)
                names[name] = inode
            state["names"] = names
        self.cuts += 1
