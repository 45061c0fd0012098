"""How chmod, chown and chgrp read their arguments."""

from __future__ import annotations

import argparse

import pytest

from dfs_shell.attributes import parse_group, parse_mode, parse_owner


@pytest.mark.parametrize(
    ("text", "mode"), [("755", 0o755), ("0640", 0o640), ("1777", 0o1777), ("0", 0)]
)
def test_modes_are_octal(text, mode):
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", ["", "8", "u+x", "77777", "-1", "0x1ff"])
def test_other_modes_are_usage_errors(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_mode(text)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("alice", ("alice", None)), ("alice:staff", ("alice", "staff")), (":staff", (None, "staff"))],
)
def test_owner_group_or_both(text, parsed):
    assert parse_owner(text) == parsed


@pytest.mark.parametrize("text", ["", ":", "alice:"])
def test_an_owner_argument_that_names_nothing_is_a_usage_error(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_owner(text)


def test_a_group_is_one_name():
    assert parse_group("staff") == "staff"
    for text in ("", "a:b"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_group(text)
