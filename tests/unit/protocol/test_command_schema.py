"""DFSCommand converts arguments and answers from a schema worked out once per command;
what it makes and what it raises must be what Twisted's Command makes and raises."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from twisted.protocols import amp

from dfs.protocol import commands
from dfs.protocol.commands import DFSCommand
from dfs.protocol.records import Bulk, Entry, EntryArgument


class Sample(DFSCommand):
    commandName = b"Sample"
    arguments: ClassVar[list] = [
        (b"path", amp.Unicode()),
        (b"peer-name", amp.Unicode()),
        (b"from", amp.Unicode()),
        (b"count", amp.Integer(optional=True)),
        (b"flag", amp.Boolean(optional=True)),
        (b"data", Bulk()),
        (b"items", amp.AmpList([(b"n", amp.Integer())], optional=True)),
        (b"entry", EntryArgument(optional=True)),
    ]
    response: ClassVar[list] = [
        (b"size", amp.Integer()),
        (b"note", amp.Unicode(optional=True)),
        (b"blob", Bulk()),
    ]


def twisted(method: str, command: type[amp.Command], *args: Any) -> Any:
    """What Twisted's own Command does for ``method``."""
    return getattr(amp.Command, method).__func__(command, *args)


ENTRY = Entry(
    path="/a",
    name="a",
    kind="file",
    inode=9,
    owner="u",
    group="g",
    mode=0o644,
    mtime=1.5,
    length=3,
    replication=3,
    chunk_size=1 << 26,
    complete=True,
)
FULL = {
    "path": "/a/b",
    "peer_name": "ds1",
    "From": "x",
    "count": 7,
    "flag": False,
    "data": b"x" * 200_000,
    "items": [{"n": 1}, {"n": 2}],
    "entry": ENTRY,
}
SPARSE = {"path": "/", "peer_name": "", "From": "", "data": b""}


@pytest.mark.parametrize("objects", [FULL, SPARSE], ids=["every field", "optional fields left out"])
def test_arguments_are_what_twisted_makes_and_parses(objects):
    ours = Sample.makeArguments(dict(objects), None)
    theirs = twisted("makeArguments", Sample, dict(objects), None)
    assert dict(ours) == dict(theirs) and type(ours) is type(theirs)
    assert Sample.parseArguments(ours, None) == twisted("parseArguments", Sample, theirs, None)


def test_answers_are_what_twisted_makes_and_parses():
    for objects in ({"size": 5, "note": "n", "blob": b"y" * 70_000}, {"size": 0, "blob": b""}):
        ours = Sample.makeResponse(dict(objects), None)
        theirs = twisted("makeResponse", Sample, dict(objects), None)
        assert dict(ours) == dict(theirs)
        assert Sample.parseResponse(ours, None) == twisted("parseResponse", Sample, theirs, None)


def test_missing_and_unknown_fields_fail_as_in_twisted():
    with pytest.raises(amp.InvalidSignature, match="bogus is not a valid argument"):
        Sample.makeArguments({**SPARSE, "bogus": 1}, None)
    without_path = {key: value for key, value in SPARSE.items() if key != "path"}
    with pytest.raises(KeyError):
        Sample.makeArguments(without_path, None)
    box = Sample.makeArguments(dict(SPARSE), None)
    del box[b"path"]
    with pytest.raises(KeyError):
        Sample.parseArguments(box, None)
    with pytest.raises(KeyError):
        twisted("parseArguments", Sample, box, None)


def test_every_command_has_a_schema_with_the_names_twisted_would_use():
    for value in vars(commands).values():
        if isinstance(value, type) and issubclass(value, DFSCommand):
            arguments, response, allowed = value._schemas()
            assert [field[1] for field in arguments] == [
                amp._wireNameToPythonIdentifier(wire) for wire, _ in value.arguments
            ]
            assert [field[0] for field in response] == [wire for wire, _ in value.response]
            assert allowed == {field[1] for field in arguments}
