"""The namespace backup file: what ``dfs admin backup`` writes and a restore reads.

A backup is the namespace (:meth:`Namespace.snapshot`, a pickle) taken by the Raft
leader at one applied index, behind a header saying what it is::

    DFS-NAMESPACE-BACKUP\\n
    {"format": 1, "dfs_version": ..., "created": ..., "leader": ..., "raft_index": ...,
     "raft_term": ..., "payload_length": ..., "sha256": ...}\\n
    <payload: the namespace snapshot>

``sha256`` covers the header's other fields (as canonical JSON) and the payload, so a
changed byte anywhere is caught. The payload is a pickle, which runs code when it
is loaded: a backup is trusted data, written and read by the operator, and
:func:`parse` checks magic, format, length and checksum before anything unpickles
it. Keep backup files where only the operator can write them.

Only the namespace is in a backup: chunk locations are soft state that the
dataservers report again after a restore.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

import attrs

from dfs import __version__
from dfs.metaserver import operations as ops
from dfs.metaserver.namespace import Namespace

MAGIC = b"DFS-NAMESPACE-BACKUP\n"
FORMAT = 1
#: A header line longer than this is not a backup header.
MAX_HEADER = 64 * 1024
#: The most a page of a backup being fetched (ReadBackup) may hold.
MAX_PAGE = 4 * 1024 * 1024


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
    payload_length: int
    format: int = FORMAT

    def fields(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Backup:
    header: BackupHeader
    #: The namespace snapshot (a pickle: see the module docstring).
    payload: bytes

    def namespace(self) -> Namespace:
        """Unpickle the namespace; only after :func:`parse` checked the file."""
        try:
            return Namespace.restore(self.payload)
        except Exception as error:
            raise BackupInvalid(f"the namespace in the backup cannot be loaded: {error}") from None


def _checksum(fields: dict[str, Any], payload: bytes) -> str:
    digest = hashlib.sha256(_canonical(fields))
    digest.update(b"\n")
    digest.update(payload)
    return digest.hexdigest()


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def encode(
    payload: bytes,
    *,
    leader: str,
    raft_index: int,
    raft_term: int,
    created: float | None = None,
) -> bytes:
    """A backup file holding ``payload`` (a namespace snapshot)."""
    header = BackupHeader(
        dfs_version=__version__,
        created=time.time() if created is None else created,
        leader=leader,
        raft_index=raft_index,
        raft_term=raft_term,
        payload_length=len(payload),
    )
    fields = header.fields()
    line = _canonical({**fields, "sha256": _checksum(fields, payload)})
    return MAGIC + line + b"\n" + payload


def parse(data: bytes) -> Backup:
    """Check a backup file (magic, format, length, SHA-256) and split it; raises
    :class:`BackupInvalid`. Nothing is unpickled here."""
    if not data.startswith(MAGIC):
        raise BackupInvalid("not a DFS namespace backup (its first line is not the magic)")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        raise BackupInvalid("the backup header is truncated or damaged")
    try:
        fields = json.loads(data[len(MAGIC) : end])
        if not isinstance(fields, dict):
            raise ValueError("not an object")
        stored = fields.pop("sha256")
        version = fields.get("format")
        if version != FORMAT:
            raise BackupInvalid(
                f"backup format {version!r}: this version of DFS restores format {FORMAT}"
            )
        header = BackupHeader(**fields)
    except BackupInvalid:
        raise
    except (ValueError, KeyError, TypeError) as error:
        raise BackupInvalid(f"the backup header is damaged ({error})") from None
    payload = data[end + 1 :]
    if len(payload) != header.payload_length:
        raise BackupInvalid(
            f"the backup is {len(payload)} bytes after its header, its header says "
            f"{header.payload_length}: the file is truncated or damaged"
        )
    if _checksum(fields, payload) != stored:
        raise BackupInvalid("SHA-256 checksum mismatch: the backup file is damaged")
    return Backup(header, payload)


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


@attrs.define
class HeldBackup:
    data: bytes
    sha256: str
    expires: float


class BackupStore:
    """The backups the leader took and keeps while an administrator fetches them a
    page at a time: every page of one backup comes from the same snapshot.

    A backup goes once it has not been read for ``keep`` seconds; only the newest
    ``most`` are kept (each is a whole namespace in memory)."""

    def __init__(self, clock: Any, keep: float = 300.0, most: int = 2) -> None:
        self._clock = clock
        self._keep = keep
        self._most = most
        self._held: dict[str, HeldBackup] = {}

    def add(self, data: bytes) -> tuple[str, HeldBackup]:
        self._expire()
        while len(self._held) >= self._most:
            del self._held[next(iter(self._held))]
        backup_id = secrets.token_hex(8)
        held = HeldBackup(data, hashlib.sha256(data).hexdigest(), self._deadline())
        self._held[backup_id] = held
        return backup_id, held

    def page(self, backup_id: str, offset: int, length: int) -> bytes | None:
        """Bytes ``offset`` to ``offset + length`` of a held backup (fewer at its
        end); None for a backup not (or no longer) held here."""
        self._expire()
        held = self._held.get(backup_id)
        if held is None:
            return None
        held.expires = self._deadline()
        return held.data[offset : offset + length]

    def _deadline(self) -> float:
        return float(self._clock.seconds()) + self._keep

    def _expire(self) -> None:
        now = self._clock.seconds()
        for backup_id in [key for key, held in self._held.items() if held.expires <= now]:
            del self._held[backup_id]
