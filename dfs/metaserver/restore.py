"""Rebuild a metaserver's Raft state from a namespace backup, offline.

Run on every metaserver host of the group, with the metaserver stopped and its
``data_dir/raft`` empty (moved aside or new)::

    dfs-meta-restore --config /etc/dfs/metaserver_config.json BACKUP

It checks the backup (magic, format, SHA-256: see :mod:`dfs.metaserver.backup`)
before unpickling anything, closes the files that were being written at backup
time at their committed length, and writes a Raft snapshot (PySyncObj's
``raft.dump``) holding the namespace and the group's membership (``raft_listen``
and ``raft_partners`` of the config). The backup is read and the snapshot written
a piece at a time: neither file is ever whole in memory, only the namespace.
Every member restored from the same backup gets the same snapshot, at the same
Raft index, so the group starts from it as if it had compacted its log there: no
member holds an entry another lacks, and a member added later receives the
snapshot from the leader.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from dfs.config import ConfigError, load_metaserver_config
from dfs.metaserver import syncobj
from dfs.metaserver.backup import BackupInvalid, check, describe, recover_leases
from dfs.metaserver.filelayer import FileLayer
from dfs.metaserver.namespace import Namespace

PROGRAM = "dfs-meta-restore"
#: The files a metaserver keeps in data_dir/raft (see dfs.metaserver.journal).
RAFT_FILES = ("raft.journal", "raft.meta", "raft.dump")


class RestoreRefused(Exception):
    """Restoring here would lose or mix state; one line saying why."""


def write_raft_snapshot(out: IO[bytes], namespace: Namespace, members: Sequence[str]) -> None:
    """Write PySyncObj's snapshot file of a group whose whole state is ``namespace``
    to ``out``: what :class:`dfs.metaserver.raft.NamespaceLog` holds, the last two log
    entries and the members' Raft addresses. Raises syncobj.Unsupported."""
    consumer = {"state": namespace, "addresses": {}}
    # The log ends with two no-ops at the start of term 0, as a new group's first
    # entry is; the restored group's first leader appends after them.
    before, last = syncobj.noop_entry(1, 0), syncobj.noop_entry(2, 0)
    syncobj.write_full_dump(out, [consumer], before, last, members)


def restore(
    backup_path: Path,
    data_dir: Path,
    members: Sequence[str],
    layer: FileLayer | None = None,
) -> tuple[Namespace, list[str], str]:
    """Write the Raft state of a member of ``members`` into ``data_dir/raft`` from the
    backup file at ``backup_path``. Returns the namespace, the files closed and a
    description of the backup. Raises BackupInvalid, RestoreRefused, OSError or
    syncobj.Unsupported."""
    syncobj.check_supported()
    with open(backup_path, "rb") as source:
        backup = check(source)
        raft_dir = data_dir / "raft"
        present = [name for name in RAFT_FILES if (raft_dir / name).exists()]
        if present:
            raise RestoreRefused(
                f"{raft_dir} already holds Raft state ({', '.join(present)}): stop the "
                "metaserver and move that folder aside first"
            )
        namespace = backup.namespace(source)
    problems = namespace.verify()
    if problems:
        raise BackupInvalid(f"the namespace in the backup is inconsistent: {problems[0]}")
    closed = recover_leases(namespace, backup.header.created)
    raft_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = raft_dir / "raft.dump"
    temporary = target.with_name(target.name + ".tmp")
    with open(temporary, "wb") as out:
        write_raft_snapshot(out, namespace, members)
    (layer or FileLayer()).replace(temporary, target)
    return namespace, closed, describe(backup.header)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Rebuild this metaserver's Raft state from a backup taken with "
        "'dfs admin backup'. Run it on every metaserver of the group, each stopped and "
        "with an empty data_dir/raft, then start them.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default="/etc/dfs/metaserver_config.json",
        help="the metaserver's config (data_dir, raft_listen, raft_partners)",
    )
    parser.add_argument("--data-dir", help="restore into this folder instead of data_dir")
    parser.add_argument("backup", metavar="BACKUP", help="the backup file")
    args = parser.parse_args(argv)
    try:
        config = load_metaserver_config(args.config)
        data_dir = Path(args.data_dir) if args.data_dir else config.data_dir
        members = sorted({str(config.raft_listen), *(str(p) for p in config.raft_partners)})
        namespace, closed, description = restore(Path(args.backup), data_dir, members)
    except ConfigError as error:
        return _fail(f"configuration error: {error}", 78)
    except OSError as error:
        return _fail(f"{error.filename or args.backup}: {error.strerror or error}", 74)
    except BackupInvalid as error:
        return _fail(f"{args.backup}: {error}", 65)
    except RestoreRefused as error:
        return _fail(str(error), 73)
    except syncobj.Unsupported as error:
        return _fail(str(error), 70)
    print(f"restored {args.backup}: {description}")
    print(
        f"{namespace.entry_count} files and directories into {data_dir / 'raft'} "
        f"for the group {', '.join(members)}"
    )
    for path in closed:
        print(f"closed at its committed length (was being written): {path}")
    return 0


def _fail(message: str, status: int) -> int:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
