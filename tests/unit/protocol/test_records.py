"""The records of dfs.protocol.records on the wire: packed pages round-trip, and a
malformed page is one clear MalformedRecord."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.protocols import amp

from dfs.protocol.commands import (
    AddChunk,
    CloseFile,
    CommitChunk,
    Create,
    FinishChunkWrite,
    GetChunks,
    ListDirectory,
    OpenChunkWrite,
    RecoverChunkWrite,
    ReplicateChunk,
    ReportBadReplica,
    Stat,
)
from dfs.protocol.errors import MalformedRecord
from dfs.protocol.records import (
    PAGE_HEADER_BYTES,
    PAGE_LIMIT,
    ChunkPage,
    ChunkRecord,
    Entry,
    EntryArgument,
    EntryColumns,
    EntryPage,
    Location,
    LocationArgument,
    LocationList,
    chunk_record_size,
    entry_size,
    pack_chunks,
    pack_entries,
    pack_entry,
    pack_entry_page,
    unpack_chunks,
    unpack_entries,
    unpack_entry,
)


def through_the_wire(argument: amp.Argument, value: Any) -> Any:
    strings: dict[bytes, bytes] = {}
    argument.toBox(b"data", strings, {"data": value}, None)
    wire = amp.AmpBox(strings).serialize()  # raises TooLong past 65,535 bytes a value
    parsed = amp.parse(io.BytesIO(wire))[0]
    objects: dict[str, Any] = {}
    argument.fromBox(b"data", parsed, objects, None)
    return objects["data"]


def entry(index: int = 0, **changes: Any) -> Entry:
    fields: dict[str, Any] = {
        "path": f"/data/f{index:06}",
        "name": f"f{index:06}",
        "kind": "file",
        "inode": 10 + index,
        "owner": "alice",
        "group": "staff",
        "mode": 0o644,
        "mtime": 1712345678.25 + index,
        "length": 3 * index,
        "replication": 3,
        "chunk_size": 64 * 1024 * 1024,
        "complete": index % 2 == 0,
    }
    fields.update(changes)
    return Entry(**fields)


texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
int64 = st.integers(-(2**63), 2**63 - 1)
entries = st.builds(
    Entry,
    path=texts,
    name=texts,
    kind=st.sampled_from(["file", "directory"]),
    inode=int64,
    owner=texts,
    group=texts,
    mode=int64,
    mtime=st.floats(allow_nan=False),
    length=int64,
    replication=int64,
    chunk_size=int64,
    complete=st.booleans(),
)
locations = st.builds(
    Location,
    host=st.from_regex(r"[a-z0-9.\-]{1,20}", fullmatch=True)
    | st.sampled_from(["::1", "fe80::1", "10.0.0.7"]),
    port=st.integers(1, 65535),
)
chunks = st.builds(
    ChunkRecord,
    chunk_id=int64,
    version=int64,
    length=int64,
    locations=st.lists(locations).map(tuple),
    token=texts,
)


@given(st.lists(entries, max_size=20))
def test_a_page_of_entries_round_trips_and_its_size_is_known(page: list[Entry]) -> None:
    packed = pack_entries(page)
    assert unpack_entries(packed) == page
    assert len(packed) == PAGE_HEADER_BYTES + sum(entry_size(one) for one in page)


def columns(page: list[Entry]) -> EntryColumns:
    """``page`` column by column, as the metaserver reads it."""
    return EntryColumns(
        paths=[one.path for one in page],
        names=[one.name for one in page],
        directories=[one.is_dir for one in page],
        inodes=[one.inode for one in page],
        owners=[one.owner for one in page],
        groups=[one.group for one in page],
        modes=[one.mode for one in page],
        mtimes=[one.mtime for one in page],
        lengths=[one.length for one in page],
        replications=[one.replication for one in page],
        chunk_sizes=[one.chunk_size for one in page],
        completes=[one.complete for one in page],
    )


@given(st.lists(entries, max_size=20))
def test_a_page_in_columns_is_its_entries_and_packs_as_they_do(page: list[Entry]) -> None:
    page_columns = columns(page)
    assert len(page_columns) == len(page)
    assert list(page_columns) == page
    assert [page_columns[index] for index in range(-len(page), len(page))] == page + page
    assert page_columns[1:3] == page[1:3]
    assert pack_entries(page_columns) == pack_entries(page)
    assert unpack_entries(pack_entries(page_columns)) == page


@given(st.lists(entries, max_size=20), st.integers(0, 2_000))
def test_a_packed_page_holds_the_leading_entries_that_fit_the_limit(
    page: list[Entry], limit: int
) -> None:
    packed, count = pack_entry_page(columns(page), limit)
    assert unpack_entries(packed) == page[:count]
    if count > 1:
        assert len(packed) <= limit
    if count < len(page):
        # The next entry would not have fitted (the first is sent whatever its size).
        assert count == 0 or len(pack_entries(page[: count + 1])) > limit
        assert count >= 1 or not page


def test_a_page_packed_by_the_sender_crosses_the_wire_as_its_entries() -> None:
    page = [entry(index, kind="directory" if index % 3 else "file") for index in range(5_000)]
    packed, count = pack_entry_page(columns(page), PAGE_LIMIT)
    assert count == len(page)
    assert through_the_wire(EntryPage(), packed) == page
    assert through_the_wire(EntryPage(), columns(page)) == page


@given(st.lists(chunks, max_size=20))
def test_a_page_of_chunks_round_trips_and_its_size_is_known(page: list[ChunkRecord]) -> None:
    packed = pack_chunks(page)
    assert unpack_chunks(packed) == page
    assert len(packed) == PAGE_HEADER_BYTES + sum(chunk_record_size(one) for one in page)


def test_a_page_larger_than_an_amp_value_crosses_the_wire_in_pieces() -> None:
    page = [entry(index) for index in range(10_000)]
    assert len(pack_entries(page)) > 0xFFFF
    assert len(pack_entries(page)) < PAGE_LIMIT
    assert through_the_wire(EntryPage(), page) == page


def test_one_entry_and_a_page_of_chunks_cross_the_wire() -> None:
    one = entry(7, kind="directory", complete=True)
    assert through_the_wire(EntryArgument(), one) == one
    assert one.is_dir and not entry(1).is_dir
    here, there = Location("h1", 7001), Location("h2", 7001)
    records = [ChunkRecord(1, 2, 3, (here, there), "tok"), ChunkRecord(4, 5, 6, (), "")]
    assert through_the_wire(ChunkPage(), records) == records


def test_the_commands_answer_with_the_records() -> None:
    assert [name for name, _ in Stat.response] == [b"entry"]
    assert isinstance(dict(ListDirectory.response)[b"entries"], EntryPage)
    assert isinstance(dict(GetChunks.response)[b"chunks"], ChunkPage)


GOOD = pack_entries([entry(1), entry(2)])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter than its header"),
        (b"\x02" + GOOD[1:], "format 2, expected 1"),
        (GOOD[:20], "do not fit"),
        (GOOD[:5] + b"\x04" + GOOD[6:], "unknown flag bits"),
        (GOOD[:-1], "does not end with NUL"),
        (GOOD[:-2] + b"\xff\x00", "not UTF-8"),
        (GOOD + b"x\x00", "9 text values, expected 8"),
        (struct.pack("<BI", 1, 0) + b"x", "text after the last record"),
        (struct.pack("<BI", 1, 2**32 - 1), "do not fit"),
    ],
)
def test_a_malformed_page_is_one_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedRecord) as raised:
        unpack_entries(data)
    assert reason in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_page_where_one_entry_is_expected_is_malformed() -> None:
    with pytest.raises(MalformedRecord, match="a page of 2, expected 1"):
        EntryArgument().fromString(GOOD)


def test_text_with_nul_cannot_be_packed() -> None:
    with pytest.raises(ValueError, match="NUL"):
        pack_entries([entry(1, name="a\x00b")])
    with pytest.raises(ValueError, match="space"):
        pack_chunks([ChunkRecord(1, 1, 1, (Location("a b", 1),), "")])


@given(locations)
def test_a_location_crosses_the_wire_as_its_host_and_port(location: Location) -> None:
    assert through_the_wire(LocationArgument(), location) == location
    text = str(location).encode()
    assert LocationArgument().toString(location) == text
    # A list of locations is the same bytes as a list of their texts.
    together = [location, Location("ds2", 7200)]
    assert LocationList().toString(together) == amp.ListOf(amp.Unicode()).toString(
        [str(one) for one in together]
    )
    assert LocationList().fromString(LocationList().toString(together)) == together


@pytest.mark.parametrize(
    "text", ["", "ds1", "ds1:", ":7200", "ds1:0", "ds1:70000", "a b:1", "::1:7"]
)
def test_a_malformed_location_is_one_clear_error(text: str) -> None:
    with pytest.raises(MalformedRecord, match="malformed location"):
        LocationArgument().fromString(text.encode())


def test_the_commands_carry_replica_locations_as_location_records() -> None:
    assert isinstance(dict(AddChunk.response)[b"targets"], LocationList)
    assert isinstance(dict(Create.response)[b"targets"], LocationList)
    assert isinstance(dict(CommitChunk.arguments)[b"locations"], LocationList)
    assert isinstance(dict(CloseFile.arguments)[b"locations"], LocationList)
    assert isinstance(dict(FinishChunkWrite.response)[b"locations"], LocationList)
    assert isinstance(dict(OpenChunkWrite.arguments)[b"downstream"], LocationList)
    assert isinstance(dict(RecoverChunkWrite.arguments)[b"downstream"], LocationList)
    assert isinstance(dict(ReplicateChunk.arguments)[b"sources"], LocationList)
    assert isinstance(dict(ReplicateChunk.response)[b"source"], LocationArgument)
    assert isinstance(dict(ReportBadReplica.arguments)[b"address"], LocationArgument)


# -- one entry packed and unpacked the short way (Stat's answer): the page of one
# the general columns make, refusing what they refuse

ONE = Entry("/a/b", "b", "file", 7, "alice", "staff", 0o644, 1.5, 3, 3, 1 << 26, True)


@given(entries)
def test_one_entry_is_packed_as_a_page_of_one_and_comes_back(entry: Entry) -> None:
    packed = pack_entry(entry)
    assert packed == pack_entries([entry])
    assert unpack_entry(packed) == entry == unpack_entries(packed)[0]


@given(st.binary(max_size=80))
def test_any_bytes_unpack_as_the_page_reader_says_or_fail_as_it_fails(data: bytes) -> None:
    try:
        expected: object = unpack_entries(data)
    except MalformedRecord as error:
        expected = str(error)
    try:
        got: object = [unpack_entry(data)]
    except MalformedRecord as error:
        got = str(error)
    if isinstance(expected, list) and len(expected) != 1:
        assert isinstance(got, str) and "expected 1" in got
    else:
        assert got == expected


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1],
        lambda data: data[:5] + b"\x04" + data[6:],
        lambda data: data[:-2] + b"\xff\x00",
        lambda data: data + b"x\x00",
        lambda data: b"\x02" + data[1:],
    ],
)
def test_a_damaged_entry_is_malformed(damage) -> None:
    with pytest.raises(MalformedRecord):
        unpack_entry(damage(pack_entry(ONE)))


def test_text_with_nul_or_an_integer_too_large_is_refused_as_by_the_page() -> None:
    with pytest.raises(ValueError, match="NUL"):
        pack_entry(Entry("/a\x00", "b", "file", 7, "u", "g", 1, 1.0, 1, 1, 1, True))
    with pytest.raises(ValueError, match="64-bit"):
        pack_entry(Entry("/a", "b", "file", 2**64, "u", "g", 1, 1.0, 1, 1, 1, True))
