"""Every error a DFS command can answer with, and its code on the wire.

The names and codes are part of the wire contract: a server raises one of these
classes in a responder, AMP sends its code and message, and the caller gets the
same class back. ``ERROR_CODES`` is the single mapping from class to code.
"""

from __future__ import annotations


class DFSError(Exception):
    """Base of every error that crosses the wire. The message is one line."""

    code: bytes = b"DFS_ERROR"
    #: The POSIX-like wording a command-line user sees after the path.
    user_text: str = "Error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message or self.user_text


class NotLeader(DFSError):
    """This metaserver is not the Raft leader; the message is the leader's host:port
    (empty when no leader is known yet)."""

    code = b"NOT_LEADER"
    user_text = "Not the leader"

    @property
    def leader(self) -> str | None:
        # An empty message crosses the wire as the user text (str() of the error).
        if not self.message or self.message == self.user_text:
            return None
        return self.message


class FileNotFound(DFSError):
    code = b"FILE_NOT_FOUND"
    user_text = "No such file or directory"


class FileExists(DFSError):
    code = b"FILE_EXISTS"
    user_text = "File exists"


class NotADirectory(DFSError):
    code = b"NOT_A_DIRECTORY"
    user_text = "Not a directory"


class IsADirectory(DFSError):
    code = b"IS_A_DIRECTORY"
    user_text = "Is a directory"


class DirectoryNotEmpty(DFSError):
    code = b"DIRECTORY_NOT_EMPTY"
    user_text = "Directory not empty"


class PermissionDenied(DFSError):
    code = b"PERMISSION_DENIED"
    user_text = "Permission denied"


class LeaseConflict(DFSError):
    code = b"LEASE_CONFLICT"
    user_text = "File is being written by another client"


class QuotaExceeded(DFSError):
    code = b"QUOTA_EXCEEDED"
    user_text = "Disk quota exceeded"


class NoSpace(DFSError):
    code = b"NO_SPACE"
    user_text = "No space left on device"


class ChecksumMismatch(DFSError):
    code = b"CHECKSUM_MISMATCH"
    user_text = "Checksum mismatch"


class StaleChunk(DFSError):
    code = b"STALE_CHUNK"
    user_text = "Stale chunk replica"


class InvalidToken(DFSError):
    code = b"INVALID_TOKEN"
    user_text = "Invalid or expired access token"


class InvalidPath(DFSError):
    code = b"INVALID_PATH"
    user_text = "Invalid path"


class SafeMode(DFSError):
    """The leader takes no namespace change: it is waiting for chunk reports after
    its start (clients wait and retry), or an administrator put it in safe mode (the
    message then starts with :attr:`MANUAL`, and clients give up at once)."""

    code = b"SAFE_MODE"
    user_text = "Cluster is in safe mode"
    MANUAL = "safe mode entered by an administrator"

    @property
    def manual(self) -> bool:
        return self.message.startswith(self.MANUAL)


class InvalidArgument(DFSError):
    code = b"INVALID_ARGUMENT"
    user_text = "Invalid argument"


class UnknownDataserver(DFSError):
    """A heartbeat from a dataserver this metaserver has no registration for
    (it restarted, or declared the dataserver dead): register again."""

    code = b"UNKNOWN_DATASERVER"
    user_text = "Dataserver not registered"


class PipelineBroken(DFSError):
    """A dataserver further down a write pipeline failed; the message is its
    host:port, so the writer knows which one to leave out."""

    code = b"PIPELINE_BROKEN"
    user_text = "Write pipeline broken"

    @property
    def address(self) -> str:
        return self.message


class ChunkNotFound(DFSError):
    """This dataserver holds no replica of the chunk (at any version)."""

    code = b"CHUNK_NOT_FOUND"
    user_text = "No such chunk replica"


class BackupFailed(DFSError):
    """The leader could not write the backup asked for; the message says why."""

    code = b"BACKUP_FAILED"
    user_text = "Backup failed"


class MalformedRecord(DFSError):
    """A packed record or page of records (:mod:`dfs.protocol.records`) that is not
    what its encoder writes. Raised where the value is decoded, never sent as an
    answer: a peer that sends one is broken or not speaking DFS."""

    code = b"MALFORMED_RECORD"
    user_text = "Malformed answer from the server"


ALL_ERRORS: tuple[type[DFSError], ...] = (
    NotLeader,
    FileNotFound,
    FileExists,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    PermissionDenied,
    LeaseConflict,
    QuotaExceeded,
    NoSpace,
    ChecksumMismatch,
    StaleChunk,
    InvalidToken,
    InvalidPath,
    SafeMode,
    InvalidArgument,
    UnknownDataserver,
    PipelineBroken,
    ChunkNotFound,
    BackupFailed,
)

ERROR_CODES: dict[type[Exception], bytes] = {error: error.code for error in ALL_ERRORS}
