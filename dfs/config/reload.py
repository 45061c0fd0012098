"""What a reload of security_config.json changes, worked out before anything is touched.

On SIGHUP a server reads security_config.json again, whole (:mod:`dfs.reload`). This
module compares the settings in force with the fresh ones and sorts what changed:

* keys this server does not read (a dataserver has no audit log) are left out;
* keys read only at start (:data:`RESTART_TO_APPLY`) keep the value in force, and are
  named so that the operator is told a restart is needed;
* everything else goes to the owners that apply it, and each owner says which keys it
  had to keep (a new CRL that does not verify, an audit file that cannot be opened).

:meth:`ReloadPlan.settled` then gives the settings now in force: the fresh ones, but
for the keys kept. They are what the next reload compares with, so a change that
could not be applied is tried (and reported) again on the next SIGHUP.

Pure: no files, no reactor.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, cast

import attrs

from dfs.config.model import SecurityConfig

#: Keys of security_config.json a server reads only when it starts: the Raft password
#: (PySyncObj encrypts with it from the first packet), and the superuser group (the
#: group of "/" and of the namespace state replicated from it).
RESTART_TO_APPLY: frozenset[str] = frozenset({"raft_password_file", "superusergroup"})


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every setting of an attrs config as dotted key -> value (``limits.idle_timeout``),
    sections opened up, without the file it came from."""
    values: dict[str, Any] = {}
    for field in attrs.fields(type(config)):
        if field.name == "source":
            continue
        value = getattr(config, field.name)
        key = prefix + field.name
        if attrs.has(type(value)):
            values.update(flatten(value, key + "."))
        else:
            values[key] = value
    return values


def _top(key: str) -> str:
    return key.split(".", 1)[0]


@attrs.frozen
class ReloadPlan:
    """The settings in force, the fresh ones read from the file, and what differs."""

    running: SecurityConfig
    fresh: SecurityConfig
    #: dotted keys this server reads whose value changed, in the file's order
    changed: tuple[str, ...]
    #: the changed keys that only a restart applies (top-level names)
    restart: tuple[str, ...]

    @property
    def to_apply(self) -> tuple[str, ...]:
        """The changed keys a reload applies (dotted)."""
        return tuple(key for key in self.changed if _top(key) not in self.restart)

    def settled(self, kept: Iterable[str] = ()) -> SecurityConfig:
        """The settings in force after the reload: the fresh ones, but for the keys
        only a restart applies and the (top-level) keys an owner had to keep."""
        keep = set(self.restart) | {_top(key) for key in kept}
        if not keep:
            return self.fresh
        kept_values = {name: getattr(self.running, name) for name in sorted(keep)}
        settled: SecurityConfig = attrs.evolve(cast(Any, self.fresh), **kept_values)
        return settled


def plan_reload(
    running: SecurityConfig,
    fresh: SecurityConfig,
    used: Collection[str],
    restart_to_apply: Collection[str] = RESTART_TO_APPLY,
) -> ReloadPlan:
    """Compare ``running`` with ``fresh``, for a server that reads the top-level keys
    ``used``."""
    before, after = flatten(running), flatten(fresh)
    changed = tuple(
        key for key, value in after.items() if _top(key) in used and before.get(key) != value
    )
    restart: list[str] = []
    for key in changed:
        top = _top(key)
        if top in restart_to_apply and top not in restart:
            restart.append(top)
    return ReloadPlan(running=running, fresh=fresh, changed=changed, restart=tuple(restart))


#: Every top-level key of security_config.json.
ALL_KEYS: frozenset[str] = frozenset(
    field.name for field in attrs.fields(cast(Any, SecurityConfig)) if field.name != "source"
)
