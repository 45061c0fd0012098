"""What a reload of security_config.json would change: worked out with no file and no
reactor (dfs.config.reload)."""

from __future__ import annotations

from pathlib import Path

import attrs

from dfs.config import SecurityConfig
from dfs.config.model import ConnectionLimits
from dfs.config.reload import ALL_KEYS, RESTART_TO_APPLY, flatten, plan_reload

RUNNING = SecurityConfig(crl=Path("/etc/dfs/crl.pem"), source=Path("/etc/dfs/security_config.json"))
DATASERVER = frozenset(
    {"token_key_file", "token_previous_key_file", "crl", "crl_check_interval", "limits"}
)


def fresh(**changes: object) -> SecurityConfig:
    """The file read again, with ``changes``; a new object, as the loader makes."""
    return attrs.evolve(RUNNING, **changes)


def test_an_unchanged_file_changes_nothing():
    plan = plan_reload(RUNNING, fresh(), ALL_KEYS)
    assert plan.changed == () and plan.restart == () and plan.to_apply == ()
    assert plan.settled() == RUNNING


def test_a_changed_limit_is_named_by_its_dotted_key_and_applies():
    limits = attrs.evolve(RUNNING.limits, idle_timeout=60.0, connections_per_identity=2)
    plan = plan_reload(RUNNING, fresh(limits=limits, crl=None), ALL_KEYS)
    assert plan.changed == ("crl", "limits.idle_timeout", "limits.connections_per_identity")
    assert plan.restart == ()
    assert plan.to_apply == plan.changed
    assert plan.settled().limits == limits and plan.settled().crl is None


def test_keys_read_only_at_start_keep_their_value_and_are_named_the_rest_applies():
    new = fresh(
        superusergroup="admins",
        raft_password_file=Path("/etc/dfs/raft2.password"),
        crl_check_interval=5.0,
        audit_log=Path("/srv/audit/dfs-audit.log"),
    )
    plan = plan_reload(RUNNING, new, ALL_KEYS)
    assert plan.restart == ("raft_password_file", "superusergroup")
    assert set(plan.restart) == RESTART_TO_APPLY
    assert plan.to_apply == ("crl_check_interval", "audit_log")
    settled = plan.settled()
    assert settled.superusergroup == RUNNING.superusergroup
    assert settled.raft_password_file == RUNNING.raft_password_file
    assert settled.crl_check_interval == 5.0
    assert settled.audit_log == Path("/srv/audit/dfs-audit.log")
    # The next reload of the same file names them again, and nothing else.
    again = plan_reload(settled, new, ALL_KEYS)
    assert again.restart == plan.restart and again.to_apply == ()


def test_keys_a_server_does_not_read_are_left_out():
    new = fresh(
        audit_log=Path("/srv/audit/dfs-audit.log"), superusergroup="admins", token_lifetime=60.0
    )
    plan = plan_reload(RUNNING, new, DATASERVER)
    assert plan.changed == () and plan.restart == ()


def test_keys_an_owner_kept_stay_at_the_value_in_force():
    limits = attrs.evolve(RUNNING.limits, buffered_bytes=2 * 1048576)
    new = fresh(crl=Path("/elsewhere/crl.pem"), limits=limits, crl_check_interval=1.0)
    plan = plan_reload(RUNNING, new, DATASERVER)
    settled = plan.settled(["crl", "limits.buffered_bytes"])
    assert settled.crl == RUNNING.crl
    assert settled.limits == RUNNING.limits  # a section is kept whole
    assert settled.crl_check_interval == 1.0
    assert settled.source == RUNNING.source


def test_flatten_opens_sections_and_leaves_out_the_source():
    values = flatten(RUNNING)
    assert "source" not in values
    assert values["limits.handshake_timeout"] == ConnectionLimits().handshake_timeout
    assert {key.split(".")[0] for key in values} == ALL_KEYS
