"""POSIX permission checks of the namespace, users and groups, on the pure state machine.

The integration test test_permission_matrix.py compares every decision with Linux;
these tests name each rule and the message a refused caller reads.
"""

from __future__ import annotations

from typing import Any

import pytest

from dfs.metaserver.namespace import (
    Namespace,
)
from dfs.metaserver.operations import (
    AddUser,
    Caller,
    ChangeGroup,
    Chmod,
    Chown,
    Close,
    Create,
    Delete,
    Err,
    Mkdir,
    Ok,
    Operation,
    Rename,
    SetDecommission,
    SetReplication,
)

ROOT = Caller("root-admin", superuser=True)
ALICE = Caller("alice")
BOB = Caller("bob")
CAROL = Caller("carol")


def ok(ns: Namespace, op: Operation) -> Any:
    result = ns.apply(op)
    assert isinstance(result, Ok), result
    return result.value


def denied(ns: Namespace, op: Operation) -> str:
    before = Namespace.restore(ns.snapshot())
    result = ns.apply(op)
    assert isinstance(result, Err), result
    assert result.error == "PermissionDenied", result
    assert ns == before
    return result.message


def mkdir(path: str, caller: Caller = ALICE, mode: int = 0o755, **kw: Any) -> Mkdir:
    return Mkdir(path, mode, caller=caller, now=1.0, **kw)


def create(path: str, caller: Caller = ALICE, **kw: Any) -> Create:
    return Create(path, caller=caller, now=1.0, lease_holder="c", lease_expires=60.0, **kw)


def chmod(path: str, mode: int, caller: Caller = ROOT) -> Chmod:
    return Chmod(path, mode, caller=caller, now=1.0)


def chown(path: str, owner: str | None, group: str | None, caller: Caller = ROOT) -> Chown:
    return Chown(path, owner, group, caller=caller, now=1.0)


def group(name: str, *users: str, add: bool = True, caller: Caller = ROOT) -> ChangeGroup:
    return ChangeGroup(name, users, add, caller=caller, now=1.0)


@pytest.fixture
def ns() -> Namespace:
    """/home is alice's (0755, group team = alice and bob), /home/f alice's 0640."""
    ns = Namespace()
    ok(ns, group("team", "alice", "bob"))
    ok(ns, mkdir("/home", caller=ROOT))
    ok(ns, chown("/home", "alice", "team"))
    ok(ns, create("/home/f", mode=0o640))
    ok(ns, Close("/home/f", "c", 0, caller=ROOT, now=1.0))
    ok(ns, chown("/home/f", "alice", None))
    return ns


def test_resolving_a_path_needs_search_on_every_directory_on_the_way(ns: Namespace) -> None:
    ok(ns, chmod("/home", 0o700))
    result = ns.stat("/home/f", BOB)
    assert isinstance(result, Err) and result.error == "PermissionDenied"
    assert result.message == (
        "/home/f: permission denied: bob has no search permission on directory /home"
    )
    assert isinstance(ns.stat("/home/f", ALICE), Ok)
    assert isinstance(ns.stat("/home/f"), Ok)  # the server itself sees everything
    # Even a missing name is not revealed past a directory one may not search.
    assert ns.stat("/home/nothing", BOB).error == "PermissionDenied"  # type: ignore[union-attr]


def test_listing_needs_read_and_reading_a_file_needs_read(ns: Namespace) -> None:
    ok(ns, chmod("/home", 0o711))
    assert ns.list("/home", BOB).error == "PermissionDenied"  # type: ignore[union-attr]
    assert isinstance(ns.list("/home/f", BOB), Ok)  # a file lists as itself: search suffices
    assert isinstance(ns.chunks("/home/f", BOB), Ok)  # group: r--
    chunks = ns.chunks("/home/f", CAROL)
    assert isinstance(chunks, Err)
    assert (
        chunks.message == "/home/f: permission denied: carol has no read permission on file /home/f"
    )


def test_creating_needs_write_and_search_on_the_directory(ns: Namespace) -> None:
    message = denied(ns, create("/home/g", caller=BOB))
    assert message == (
        "/home/g: permission denied: bob has no write and search permission on directory /home"
    )
    denied(ns, mkdir("/home/sub", caller=CAROL))
    ok(ns, chmod("/home", 0o775))
    assert ok(ns, create("/home/g", caller=BOB)).stat.owner == "bob"
    assert ok(ns, mkdir("/home/sub", caller=BOB)).group == "team"


def test_overwriting_needs_write_on_the_file_and_keeps_it_whose_it_was(ns: Namespace) -> None:
    denied(ns, create("/home/f", caller=BOB, overwrite=True))
    ok(ns, chmod("/home/f", 0o660))
    replaced = ok(ns, create("/home/f", caller=BOB, overwrite=True, mode=0o600)).stat
    assert (replaced.owner, replaced.group, replaced.mode) == ("alice", "team", 0o660)


def test_deleting_needs_write_on_the_directory_not_on_the_file(ns: Namespace) -> None:
    ok(ns, chmod("/home/f", 0o000))
    denied(ns, Delete("/home/f", caller=BOB, now=2.0))
    ok(ns, chmod("/home", 0o775))
    ok(ns, Delete("/home/f", caller=BOB, now=2.0))


def test_in_a_sticky_directory_only_the_owners_and_superusers_remove_entries(
    ns: Namespace,
) -> None:
    ok(ns, chmod("/home", 0o1777))
    message = denied(ns, Delete("/home/f", caller=BOB, now=2.0))
    assert message == (
        "/home/f: permission denied: /home is sticky and bob owns neither it nor the entry"
    )
    denied(ns, Rename("/home/f", "/home/g", caller=CAROL, now=2.0))
    ok(ns, create("/home/bobs", caller=BOB))
    ok(ns, Rename("/home/bobs", "/home/bobs2", caller=BOB, now=2.0))  # the entry's owner
    ok(ns, Delete("/home/bobs2", caller=ALICE, now=2.0))  # the directory's owner
    ok(ns, Delete("/home/f", caller=ROOT, now=2.0))


def test_a_recursive_delete_needs_to_empty_every_directory_below(ns: Namespace) -> None:
    ok(ns, chmod("/home", 0o777))
    ok(ns, mkdir("/home/tree/deep", caller=BOB, parents=True))
    ok(ns, chmod("/home/tree/deep", 0o755, caller=BOB))
    ok(ns, create("/home/tree/deep/leaf", caller=BOB))
    ok(ns, chmod("/home/tree/deep", 0o555, caller=BOB))
    assert "/home/tree/deep" in denied(ns, Delete("/home/tree", True, caller=BOB, now=2.0))
    ok(ns, chmod("/home/tree/deep", 0o755, caller=BOB))
    ok(ns, Delete("/home/tree", True, caller=BOB, now=2.0))


def test_moving_a_directory_to_another_parent_needs_write_on_it(ns: Namespace) -> None:
    ok(ns, chmod("/home", 0o777))
    ok(ns, mkdir("/home/a", caller=BOB))
    ok(ns, mkdir("/home/b", caller=BOB))
    ok(ns, mkdir("/home/a/moved", caller=BOB, mode=0o555))
    denied(ns, Rename("/home/a/moved", "/home/b/moved", caller=BOB, now=2.0))
    ok(ns, Rename("/home/a/moved", "/home/a/renamed", caller=BOB, now=2.0))  # same parent


def test_only_the_owner_or_a_superuser_changes_the_mode(ns: Namespace) -> None:
    message = denied(ns, chmod("/home/f", 0o777, caller=BOB))
    assert message == (
        "/home/f: permission denied: only its owner (alice) or a superuser may change its mode"
    )
    assert ok(ns, chmod("/home/f", 0o600, caller=ALICE)).mode == 0o600


def test_chown_is_for_superusers_and_chgrp_for_the_owner_to_their_groups(ns: Namespace) -> None:
    ok(ns, group("crew", "alice"))
    assert "only a superuser may give it to bob" in denied(ns, chown("/home/f", "bob", None, ALICE))
    ok(ns, chown("/home/f", "alice", None, ALICE))  # keeping the owner is no change
    assert "alice is not a member of group staff" in denied(
        ns, chown("/home/f", None, "staff", ALICE)
    )
    assert ok(ns, chown("/home/f", None, "crew", ALICE)).group == "crew"
    denied(ns, chown("/home/f", None, "team", BOB))  # a member, but not the owner
    assert ok(ns, chown("/home/f", "bob", "staff", ROOT)).owner == "bob"


def test_setting_replication_needs_write_on_the_file(ns: Namespace) -> None:
    denied(ns, SetReplication("/home/f", 2, caller=BOB, now=2.0))
    ok(ns, SetReplication("/home/f", 2, caller=ALICE, now=2.0))


def test_du_needs_read_and_search_below(ns: Namespace) -> None:
    ok(ns, mkdir("/home/private", mode=0o700))
    assert ns.du("/home", BOB).error == "PermissionDenied"  # type: ignore[union-attr]
    assert isinstance(ns.du("/home", ALICE), Ok)


def test_members_of_the_superuser_group_are_superusers() -> None:
    ns = Namespace(root_group="admins")
    denied(ns, mkdir("/top", caller=CAROL))
    denied(ns, group("admins", "carol", caller=CAROL))
    ok(ns, group("admins", "carol"))
    assert ns.is_superuser(CAROL)
    ok(ns, mkdir("/top", caller=CAROL))
    ok(ns, SetDecommission("ds1", True, caller=CAROL, now=1.0))
    ok(ns, group("admins", "carol", add=False))
    assert not ns.is_superuser(CAROL)
    denied(ns, mkdir("/other", caller=CAROL))


def test_groups_are_changed_by_superusers_and_vanish_when_empty(ns: Namespace) -> None:
    message = denied(ns, group("team", "carol", caller=ALICE))
    assert message == "permission denied: only a superuser may change groups"
    assert ok(ns, group("team", "carol", "bob")) == ("alice", "bob", "carol")
    assert ns.groups() == {"team": ("alice", "bob", "carol")}
    assert ns.groups_of("carol") == ("team",)
    ok(ns, group("team", "alice", "bob", "carol", add=False))
    assert ns.groups() == {}
    refused = ns.apply(group("nobody", "carol", add=False))
    assert isinstance(refused, Err) and refused.error == "InvalidArgument"
    bad = ns.apply(group("a b", "carol"))
    assert isinstance(bad, Err) and bad.error == "InvalidArgument"


def test_adding_a_user_makes_their_private_home(ns: Namespace) -> None:
    home = ok(ns, AddUser("carol", caller=ROOT, now=3.0))
    assert (home.path, home.owner, home.group, home.mode) == (
        "/user/carol",
        "carol",
        "carol",
        0o750,
    )
    assert ns.stat("/user").value.mode == 0o755  # type: ignore[union-attr]
    assert ns.apply(AddUser("carol", caller=ROOT, now=3.0)).error == "FileExists"  # type: ignore[union-attr]
    denied(ns, AddUser("dave", caller=ALICE, now=3.0))
    # carol may now work in her home; others may not look in.
    ok(ns, create("/user/carol/notes", caller=CAROL))
    assert ns.list("/user/carol", BOB).error == "PermissionDenied"  # type: ignore[union-attr]


def test_groups_survive_a_snapshot(ns: Namespace) -> None:
    restored = Namespace.restore(ns.snapshot())
    assert restored.groups() == {"team": ("alice", "bob")}
    assert restored == ns


def test_a_snapshot_from_before_groups_and_quotas_loads_with_none() -> None:
    ns = Namespace(root_mode=0o777)
    ok(ns, mkdir("/kept", caller=ALICE))
    state = ns.__getstate__()
    del state["_groups"], state["_quotas"]
    older = Namespace.__new__(Namespace)
    older.__setstate__(state)
    assert older.groups() == {}
    assert older.verify() == []
    assert older.stat("/kept").value.owner == "alice"  # type: ignore[union-attr]
    ok(older, group("team", "alice"))
