"""The namespace backup file: what ``dfs admin backup`` writes and a restore reads.

A backup is the namespace taken by the Raft leader at one applied index, behind a
header saying what it is and ahead of a trailer that seals it (format 2)::

    DFS-NAMESPACE-BACKUP\\n
    {"created": ..., "dfs_version": ..., "format": 2, "leader": ..., "raft_index": ...,
     "raft_term": ...}\\n
    <payload: the namespace (Namespace.write_snapshot), a stream of pickles>
    DFS-BACKUP-END <payload length, 20 digits> <SHA-256, 64 hex digits>\\n

The SHA-256 covers every byte before the trailer, so a changed byte anywhere is
caught. Both ends stream: :func:`write` sends the bytes to a file as the namespace is
serialised, hashing them on the way, and :func:`check` reads the file back a block at
a time; neither holds the whole backup in memory.

Format 1 (DFS before the leader wrote backups to disk) put ``payload_length`` and
``sha256`` (over the header's other fields, as canonical JSON, a newline and the
payload) in the header and the namespace in one pickle; :func:`check` and
:meth:`Backup.namespace` still read it.

The payload is pickle, which runs code when it is loaded: a backup is trusted data,
written and read by the operator, and :func:`check` checks magic, format, length and
checksum before anything unpickles it. Keep backup files where only the operator can
write them.

Only the namespace is in a backup: chunk locations are soft state that the
dataservers report again after a restore.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import time
from typing import IO, Any

import attrs

from dfs import __version__
from dfs.metaserver import operations as ops
from dfs.metaserver.namespace import Namespace

MAGIC = b"DFS-NAMESPACE-BACKUP\n"
#: The format this version writes, and the ones it restores.
FORMAT = 2
FORMATS = (1, 2)
#: The start of the trailer of a format 2 backup, and the trailer's whole length.
END = b"DFS-BACKUP-END "
TRAILER_LENGTH = len(END) + 20 + 1 + 64 + 1
_TRAILER = re.compile(rb"DFS-BACKUP-END ([0-9]{20}) ([0-9a-f]{64})\n")
#: A header line longer than this is not a backup header.
MAX_HEADER = 64 * 1024
#: The most a page of a backup being fetched (ReadBackup) may hold.
MAX_PAGE = 4 * 1024 * 1024
#: Bytes read at a time while checking a backup.
BLOCK = 1024 * 1024


class BackupInvalid(Exception):
    """The file is not a backup this version can restore; one line saying why."""


@attrs.frozen
class BackupHeader:
    """What a backup says about itself."""

    dfs_version: str
    #: Unix time the leader took the snapshot.
    created: float
    #: Name of the metaserver that took it (the Raft leader then).
    leader: str
    #: The Raft index of the last operation in the snapshot, and its term.
    raft_index: int
    raft_term: int
    #: Bytes of the namespace (format 2: from the trailer).
    payload_length: int
    format: int = FORMAT

    def fields(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Written:
    """A backup file as :func:`write` wrote it: its size and the SHA-256 of all of it
    (what a copy of the file is checked against)."""

    size: int
    sha256: str


@attrs.frozen
class Backup:
    """A backup file that :func:`check` found whole."""

    header: BackupHeader
    #: Where the namespace starts in the file.
    offset: int

    def namespace(self, source: IO[bytes]) -> Namespace:
        """Unpickle the namespace from the file :func:`check` checked, reading it as
        it goes. BackupInvalid if it cannot be loaded."""
        source.seek(self.offset)
        try:
            if self.header.format == 1:
                loaded = pickle.Unpickler(source).load()
                if not isinstance(loaded, Namespace):
                    raise TypeError(f"it holds a {type(loaded).__name__}")
                return loaded
            return Namespace.read_snapshot(source)
        except Exception as error:
            raise BackupInvalid(f"the namespace in the backup cannot be loaded: {error}") from None


class _Hashing:
    """A file that hashes and counts the bytes written through it."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        self._out.write(data)
        return len(data)


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def write(
    namespace: Namespace,
    out: IO[bytes],
    *,
    leader: str,
    raft_index: int,
    raft_term: int,
    created: float | None = None,
) -> Written:
    """Write a backup of ``namespace`` to ``out`` (a buffered binary file), streaming:
    the bytes leave as the namespace is serialised."""
    fields = {
        "dfs_version": __version__,
        "created": time.time() if created is None else created,
        "leader": leader,
        "raft_index": raft_index,
        "raft_term": raft_term,
        "format": FORMAT,
    }
    hashing = _Hashing(out)
    hashing.write(MAGIC + _canonical(fields) + b"\n")
    start = hashing.size
    namespace.write_snapshot(hashing)
    trailer = END + b"%020d %s\n" % (hashing.size - start, hashing.digest.hexdigest().encode())
    whole = hashing.digest.copy()
    whole.update(trailer)
    out.write(trailer)
    return Written(hashing.size + len(trailer), whole.hexdigest())


def check(source: IO[bytes]) -> Backup:
    """Check a backup file (magic, format, length, SHA-256), reading it a block at a
    time; raises :class:`BackupInvalid`. Nothing is unpickled here."""
    size = source.seek(0, 2)
    source.seek(0)
    if source.read(len(MAGIC)) != MAGIC:
        raise BackupInvalid("not a DFS namespace backup (its first line is not the magic)")
    line = source.readline(MAX_HEADER)
    if not line.endswith(b"\n"):
        raise BackupInvalid("the backup header is truncated or damaged")
    offset = len(MAGIC) + len(line)
    try:
        fields = json.loads(line)
        if not isinstance(fields, dict):
            raise ValueError("not an object")
        version = fields.get("format")
        if version not in FORMATS:
            raise BackupInvalid(
                f"backup format {version!r}: this version of DFS restores formats "
                f"{' and '.join(map(str, FORMATS))}"
            )
        if version == 1:
            stored = fields.pop("sha256")
            header = BackupHeader(**fields)
        else:
            header = BackupHeader(**fields, payload_length=size - offset - TRAILER_LENGTH)
    except BackupInvalid:
        raise
    except (ValueError, KeyError, TypeError) as error:
        raise BackupInvalid(f"the backup header is damaged ({error})") from None
    if version == 1:
        # The header's fields, a newline, then the payload to the end of the file.
        digest = hashlib.sha256(_canonical(fields) + b"\n")
        start, end = offset, size
        stated = header.payload_length
    else:
        # Everything before the trailer.
        digest = hashlib.sha256()
        start, end = 0, size - TRAILER_LENGTH
        source.seek(max(end, 0))
        trailer = _TRAILER.fullmatch(source.read(TRAILER_LENGTH))
        if end < offset or trailer is None:
            raise BackupInvalid("the backup has no end mark: the file is truncated or damaged")
        stated, stored = int(trailer[1]), trailer[2].decode()
    actual = end - offset if version == 2 else size - offset
    if actual != stated:
        raise BackupInvalid(
            f"the backup holds {actual} bytes of namespace, it says {stated}: the file is "
            "truncated or damaged"
        )
    source.seek(start)
    remaining = end - start
    while remaining > 0:
        block = source.read(min(BLOCK, remaining))
        if not block:
            break
        digest.update(block)
        remaining -= len(block)
    if digest.hexdigest() != stored:
        raise BackupInvalid("SHA-256 checksum mismatch: the backup file is damaged")
    return Backup(header, offset)


def describe(header: BackupHeader) -> str:
    """One line about a backup, for people."""
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(header.created))
    return (
        f"taken {created} by {header.leader} at Raft index {header.raft_index} "
        f"(term {header.raft_term}), DFS {header.dfs_version}, "
        f"{header.payload_length} bytes of namespace"
    )


def recover_leases(namespace: Namespace, now: float) -> list[str]:
    """Close every file still being written when the backup was taken, at the length
    its committed chunks give (its writer is gone: the group it wrote to no longer
    exists). Returns their paths. ``now`` must be the same on every member (the
    backup's time), or the restored members would disagree on the files' mtimes."""
    admin = ops.Caller(user="dfs", superuser=True)
    closed = []
    for expired in namespace.expired_leases(float("inf")):
        result = namespace.apply(
            ops.RecoverLease(expired.path, caller=admin, now=now, inode=expired.inode)
        )
        if isinstance(result, ops.Ok):
            closed.append(expired.path)
    return closed
