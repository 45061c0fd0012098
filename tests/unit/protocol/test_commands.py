"""The wire contract: bulk data framing, error table, command table."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.protocols import amp

from dfs.protocol import errors
from dfs.protocol.commands import ALL_COMMANDS, Bulk, DFSCommand, ReadChunk


def through_the_wire(argument: amp.Argument, value: bytes) -> bytes:
    strings: dict[bytes, bytes] = {}
    argument.toBox(b"data", strings, {"data": value}, None)
    box = amp.AmpBox(strings)
    wire = box.serialize()  # raises TooLong if any value exceeded 65,535 bytes
    parsed = amp.parse(io.BytesIO(wire))[0]
    objects: dict[str, bytes] = {}
    argument.fromBox(b"data", parsed, objects, None)
    return objects["data"]


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536 + 5])
def test_bulk_carries_any_length(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert through_the_wire(Bulk(), data) == data


@given(st.binary(max_size=300_000))
def test_bulk_round_trip(data):
    assert through_the_wire(Bulk(), data) == data


def test_a_read_answer_with_a_full_block_serialises():
    box = ReadChunk.makeResponse({"data": b"x" * 65536, "checksums": [1]}, None)
    assert len(box.serialize()) > 65536


def test_every_error_has_a_unique_code_and_every_command_declares_them_all():
    codes = [error.code for error in errors.ALL_ERRORS]
    assert len(codes) == len(set(codes))
    for command in ALL_COMMANDS:
        assert issubclass(command, DFSCommand)
        assert set(errors.ALL_ERRORS) <= set(command.errors), command
        assert command.allowed_roles, f"{command.__name__} allows nobody"


def test_command_names_are_unique():
    names = [command.commandName for command in ALL_COMMANDS]
    assert len(names) == len(set(names))
