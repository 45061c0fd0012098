"""Secret files on disk: refuse to use one that others can read, as ssh does.

A server's private key, the token key and the Raft password are read only after
checking that neither the group nor others may read (or write) the file: a
secret that other local users can read is no longer a secret, and a server that
quietly went on with it would hide that from its operator. The refusal is a
:class:`~dfs.config.ConfigError` naming the config file, the key, the secret's
path, its mode and the command that fixes it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dfs.config import ConfigError

#: Permission bits a secret file must not have: any access for group or others.
FORBIDDEN_BITS = stat.S_IRWXG | stat.S_IRWXO


def exposure(path: Path) -> str | None:
    """Why ``path`` is not private enough (a sentence), or None if it is.

    Follows symbolic links, as reading the file does: it is the target's mode
    that decides who can read the secret.
    """
    mode = os.stat(path).st_mode
    bits = stat.S_IMODE(mode) & FORBIDDEN_BITS
    if not bits:
        return None
    who = []
    if bits & stat.S_IRWXG:
        who.append("its group")
    if bits & stat.S_IRWXO:
        who.append("other users")
    return f"mode {stat.S_IMODE(mode):04o} lets {' and '.join(who)} use it"


def check_private(path: Path, source: str, key: str, what: str) -> None:
    """Raise ConfigError if the secret ``what`` at ``path`` (named by ``key`` in the
    config file ``source``) can be read by anyone but its owner."""
    try:
        problem = exposure(path)
    except OSError as error:
        raise _unreadable(path, source, key, what, error) from None
    if problem is not None:
        raise ConfigError(
            file=source,
            key=key,
            expected=f"{what} readable by its owner only (run: chmod 600 {path})",
            got=f"{path}: {problem}",
        )


def read_secret(path: Path, source: str, key: str, what: str) -> bytes:
    """The bytes of a private secret file, surrounding whitespace removed.

    Raises ConfigError if the file is missing, unreadable, empty, or readable by
    group or others.
    """
    check_private(path, source, key, what)
    try:
        data = Path(path).read_bytes().strip()
    except OSError as error:
        raise _unreadable(path, source, key, what, error) from None
    if not data:
        raise ConfigError(
            file=source, key=key, expected=f"a file holding {what}", got=f"{path}: an empty file"
        )
    return data


def _unreadable(path: Path, source: str, key: str, what: str, error: OSError) -> ConfigError:
    return ConfigError(
        file=source,
        key=key,
        expected=f"a readable file holding {what}",
        got=f"{path}: {error.strerror or error}",
    )
