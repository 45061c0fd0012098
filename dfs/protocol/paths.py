"""The path rules of DFS: the one validator of namespace paths, the small arithmetic
on valid paths, and how a client resolves a path against its working directory.

Part of the wire contract, so that the metaserver, the client library and the shell
read a path the same way. Every path that reaches the namespace goes through
:func:`normalize` first, so the rest of the metaserver only ever sees the canonical
form: absolute, no empty, '.' or '..' components, no trailing slash (except the root
"/"). :func:`split`, :func:`components` and :func:`is_ancestor` assume that form and
do not check it again. :func:`resolve` is the client's side: it turns what a person
typed into an absolute path and leaves the checks to :func:`normalize` on the
metaserver.

The limits follow POSIX (PATH_MAX 4096 bytes, NAME_MAX 255 bytes), counted in UTF-8
because that is how names travel on the wire and how a FUSE mount would see them.
"""

from __future__ import annotations

from dfs.protocol.errors import InvalidPath

ROOT = "/"
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


def _shown(path: str) -> str:
    # A message must stay one readable line even for a 4 KiB path or one with a NUL.
    text = repr(path)
    return text if len(text) <= 80 else text[:60] + "..." + text[-17:]


def normalize(path: str) -> str:
    """Return the canonical form of ``path``, or raise :class:`InvalidPath` saying why.

    '.' components and repeated slashes go, '..' removes the component before it
    and a trailing slash is dropped. A '..' that would climb above the root is an
    error rather than being clamped at "/", so that a client bug never silently
    turns into an operation on the root.
    """
    if not isinstance(path, str):
        raise InvalidPath(f"path must be a string, not {type(path).__name__}")
    if not path.startswith("/"):
        raise InvalidPath(f"path {_shown(path)} is not absolute (it must start with '/')")
    if "\x00" in path:
        raise InvalidPath(f"path {_shown(path)} contains a NUL character")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates (from a bytes path decoded with surrogateescape) have no UTF-8.
        raise InvalidPath(f"path {_shown(path)} is not valid Unicode text") from None
    if size > MAX_PATH_BYTES:
        raise InvalidPath(
            f"path {_shown(path)} is {size} bytes long in UTF-8; at most {MAX_PATH_BYTES}"
        )
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidPath(f"path {_shown(path)} goes above the root with '..'")
            parts.pop()
            continue
        name_size = len(part.encode("utf-8"))
        if name_size > MAX_NAME_BYTES:
            raise InvalidPath(
                f"path {_shown(path)} has a component of {name_size} bytes in UTF-8; "
                f"at most {MAX_NAME_BYTES}"
            )
        parts.append(part)
    return "/" + "/".join(parts)


def resolve(cwd: str, path: str) -> str:
    """``path`` as an absolute, normalised path, a relative one taken from ``cwd`` (an
    absolute path).

    A relative '..' stops at the root, as ``cd ..`` does in any shell. An absolute
    path that climbs above the root is returned as it is, for the metaserver to refuse
    (InvalidPath): :func:`normalize`'s rule for absolute paths is kept. Nothing else
    is checked here; the metaserver's :func:`normalize` does that.
    """
    absolute = path.startswith("/")
    parts: list[str] = []
    for part in (path if absolute else cwd + "/" + path).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            elif absolute:
                return path
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def split(path: str) -> tuple[str, str]:
    """(parent, name) of a normalized path; the root splits into ("/", "")."""
    parent, _, name = path.rpartition("/")
    return (parent or ROOT, name)


def components(path: str) -> list[str]:
    """The names along a normalized path, outermost first; [] for the root."""
    return [] if path == ROOT else path[1:].split("/")


def join(parent: str, name: str) -> str:
    """The path of ``name`` inside the normalized directory path ``parent``."""
    return parent + name if parent == ROOT else parent + "/" + name


def is_ancestor(ancestor: str, path: str) -> bool:
    """True if ``ancestor`` is ``path`` itself or a directory above it (both normalized).

    Compared by components, so "/a" is not an ancestor of "/ab".
    """
    if ancestor == ROOT:
        return True
    return path == ancestor or path.startswith(ancestor + "/")
