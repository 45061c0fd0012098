"""The one file layer under the Raft journal, its metadata and its snapshots.

Everything the metaserver must find again after a crash or a power cut is written
through :class:`FileLayer`, so that what "durable" means is decided in one place:
bytes are durable once the file is fsynced, a new name once its folder is fsynced.
Tests swap in :class:`dfs.metaserver.powercut.PowerCutFileLayer`, which forgets
every byte and every name that was not made durable when the "power" is cut.

PySyncObj writes its snapshots itself (in a forked child) and renames them into
place without fsync; :func:`dfs.metaserver.syncobj.route_snapshot_renames` has it
call :func:`durable_replace` instead, which fsyncs the new file, renames it and
fsyncs the folder through the layer registered for that folder.
"""

from __future__ import annotations

import os
from pathlib import Path


class FileLayer:
    """Plain POSIX files: the layer every metaserver runs on."""

    def open_append(self, path: Path) -> int:
        """A descriptor for writing at the end of ``path``, created if missing
        (the new name is durable only after :meth:`fsync_dir`)."""
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)
        os.lseek(fd, size, os.SEEK_SET)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def datasync(self, fd: int) -> None:
        """Make the bytes and the size of a file durable (not its times)."""
        os.fdatasync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read(self, path: Path) -> bytes | None:
        """The whole file, or None when there is none."""
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def rename(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def fsync_dir(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_path(self, path: Path) -> None:
        """Make the bytes of a file written by someone else (a snapshot) durable."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_file(self, path: Path, data: bytes) -> None:
        """Replace ``path`` with ``data`` so that a crash leaves the old or the new
        content, never a mix: a temporary file, fsync, rename, fsync the folder."""
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self.write(fd, data)
            self.fsync(fd)
        finally:
            self.close(fd)
        self.replace(temporary, path)

    def replace(self, source: Path, target: Path) -> None:
        """Durably rename a complete file over ``target``."""
        self.fsync_path(source)
        self.rename(source, target)
        self.fsync_dir(target.parent)


#: Folder -> the layer its files go through. Consulted by :func:`durable_replace`,
#: also in the child PySyncObj forks to write a snapshot.
_LAYERS: dict[Path, FileLayer] = {}
_DEFAULT = FileLayer()


def register(directory: Path, layer: FileLayer) -> None:
    _LAYERS[Path(directory).absolute()] = layer


def layer_for(path: Path) -> FileLayer:
    return _LAYERS.get(Path(path).absolute().parent, _DEFAULT)


def durable_replace(source: str, target: str) -> bool:
    """How PySyncObj's snapshots are put in place: fsync, rename, fsync the folder."""
    layer_for(Path(target)).replace(Path(source), Path(target))
    return True
