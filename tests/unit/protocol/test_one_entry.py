"""One entry packed and unpacked the short way (Stat's answer) is the page of one
the general columns make, and refuses what they refuse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.protocol.errors import MalformedRecord
from dfs.protocol.records import Entry, pack_entries, pack_entry, unpack_entries, unpack_entry

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
