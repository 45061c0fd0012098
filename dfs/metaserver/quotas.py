"""Directory quotas, as in HDFS: a name quota and a space quota per directory.

A :class:`Quota` is kept in the namespace for each directory that has one, with
what its subtree uses of it, and updated by every change below it; the namespace
finds the quotas above an entry, and these methods check and count against each.
:class:`QuotaUsage` is what ``count -q`` shows.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from dfs.metaserver.operations import Refused, printable
from dfs.protocol import errors


@attrs.define
class Quota:
    """A directory's limits, as in HDFS, and what its subtree uses of them.

    ``files`` bounds the names below it, the directory itself included (files and
    directories); ``bytes`` bounds the space: each file's bytes times its
    replication, a chunk being written counting as a whole chunk until committed.
    None is no limit.
    """

    files: int | None
    bytes: int | None
    names: int = 0
    space: int = 0

    def check(self, names: int, space: int, path: str, directory: Callable[[], str]) -> None:
        """Refuse with QuotaExceeded if adding ``names`` and ``space`` for a request on
        ``path`` would take this quota past a limit; ``directory`` gives the path of
        the directory it belongs to, for the message."""
        if names > 0 and self.files is not None and self.names + names > self.files:
            raise Refused(
                errors.QuotaExceeded,
                f"{printable(path)}: the name quota of {printable(directory())} "
                f"is {self.files} files and directories, {self.names} in use",
            )
        if space > 0 and self.bytes is not None and self.space + space > self.bytes:
            raise Refused(
                errors.QuotaExceeded,
                f"{printable(path)}: the space quota of {printable(directory())} "
                f"is {self.bytes} bytes (times replication), {self.space} in use, "
                f"{space} more needed",
            )

    def charge(self, names: int, space: int) -> None:
        """Count ``names`` and ``space`` (either may be negative) against this quota."""
        self.names += names
        self.space += space


@attrs.frozen
class QuotaUsage:
    """What ``count -q`` shows of a directory: its limits (None: none) and use."""

    path: str
    files: int | None
    bytes: int | None
    names: int
    space: int
