"""The namespace's permission checks: POSIX mode bits, owner and group, the sticky
bit and superusers.

Plain functions over a :class:`Principal` and an entry's owner, group and mode; the
namespace finds the entries a request touches and says which checks it needs (see
:class:`~dfs.metaserver.namespace.Namespace`, "Permissions"). A refusal is raised as
:class:`~dfs.metaserver.operations.Refused` (PermissionDenied), which the namespace
answers as an :class:`~dfs.metaserver.operations.Err`. Group membership is
replicated state, so every replica judges a request the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Final, Protocol

import attrs

from dfs.metaserver.operations import Caller, Refused, printable
from dfs.protocol import errors

#: Permission bits, as in a mode's owner, group or other triple.
READ: Final = 4
WRITE: Final = 2
EXECUTE: Final = 1
#: The sticky bit: in such a directory only an entry's owner, the directory's owner
#: or a superuser may delete or rename the entry.
STICKY: Final = 0o1000


class Owned(Protocol):
    """What the checks read of a file or directory."""

    @property
    def owner(self) -> str: ...

    @property
    def group(self) -> str: ...

    @property
    def mode(self) -> int: ...


@attrs.frozen
class Principal:
    """A caller as the permission checks see it: with its groups, and superuser if
    its certificate is an admin's or it belongs to the superuser group."""

    user: str
    groups: frozenset[str]
    superuser: bool


def principal(
    caller: Caller, groups: Mapping[str, Collection[str]], superuser_group: str
) -> Principal:
    """``caller`` with the groups it belongs to (``groups``: group -> members)."""
    member_of = frozenset(group for group, members in groups.items() if caller.user in members)
    return Principal(
        user=caller.user,
        groups=member_of,
        superuser=caller.superuser or superuser_group in member_of,
    )


def bits_in_words(want: int, directory: bool) -> str:
    """Permission bits in words: "read", "write and search", ..."""
    execute = "search" if directory else "execute"
    words = [
        word for bit, word in ((READ, "read"), (WRITE, "write"), (EXECUTE, execute)) if want & bit
    ]
    return " and ".join(words)


def require(
    who: Principal | None,
    node: Owned,
    want: int,
    path: str,
    *,
    directory: bool,
    where: Callable[[], str],
) -> None:
    """Refuse unless ``who`` has the ``want`` bits on ``node``, a directory or a file,
    for a request on ``path``; ``where`` gives the node's own path for the message.
    None (the metaserver itself) and superusers pass."""
    if who is None or who.superuser:
        return
    if node.owner == who.user:
        bits = node.mode >> 6
    elif node.group in who.groups:
        bits = node.mode >> 3
    else:
        bits = node.mode
    if bits & want != want:
        kind = "directory" if directory else "file"
        raise Refused(
            errors.PermissionDenied,
            f"{printable(path)}: permission denied: {who.user} has no "
            f"{bits_in_words(want, directory)} permission on {kind} {printable(where())}",
        )


def require_unlink(
    who: Principal | None, parent: Owned, node: Owned, path: str, where: Callable[[], str]
) -> None:
    """Refuse unless ``who`` may remove ``node`` from the directory ``parent`` (at
    ``where()``): write and search on the directory, and in a sticky one, owning the
    entry or the directory."""
    require(who, parent, WRITE | EXECUTE, path, directory=True, where=where)
    if (
        who is not None
        and not who.superuser
        and parent.mode & STICKY
        and who.user not in (node.owner, parent.owner)
    ):
        raise Refused(
            errors.PermissionDenied,
            f"{printable(path)}: permission denied: {printable(where())} is sticky and "
            f"{who.user} owns neither it nor the entry",
        )
