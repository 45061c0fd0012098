"""How much room a dataserver offers: capacity, free space and space used by chunks."""

from __future__ import annotations

import shutil
from pathlib import Path

import attrs


@attrs.frozen
class SpaceMeasure:
    capacity: int
    free: int
    used: int


def measure_space(
    data_dir: Path, *, capacity: int | None, reserved: int, used: int
) -> SpaceMeasure:
    """Space as reported to metaservers.

    ``capacity`` defaults to the size of the file system holding ``data_dir``. Free
    space is what the file system has left, never more than the capacity not yet
    used, less the reserved space that is kept for the operating system.
    """
    disk = shutil.disk_usage(data_dir)
    total = capacity if capacity is not None else disk.total
    free = max(0, min(disk.free, total - used) - reserved)
    return SpaceMeasure(capacity=total, free=free, used=used)
