"""The arithmetic of head and tail: which bytes and lines they print."""

from __future__ import annotations

import io
from argparse import Namespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs_shell.content import _head, _tail, lines_end, tail_lines_start, tail_range


@pytest.mark.parametrize(
    ("length", "count", "expected"),
    [(100, 10, (90, 10)), (5, 10, (0, 5)), (0, 3, (0, 0)), (7, 0, (7, 0))],
)
def test_tail_range_is_the_last_count_bytes(length, count, expected):
    assert tail_range(length, count) == expected


def test_lines_end_is_just_after_the_count_th_newline():
    assert lines_end(b"a\nb\nc\n", 2) == 4
    assert lines_end(b"a\nb", 2) is None
    assert lines_end(b"a\nb", 0) == 0


def test_tail_lines_start_needs_more_of_the_file_until_it_has_the_lines():
    assert tail_lines_start(b"a\nb\nc\n", 2, whole=True) == 2
    assert tail_lines_start(b"b\nc", 2, whole=False) is None
    assert tail_lines_start(b"x\nb\nc", 2, whole=False) == 2
    assert tail_lines_start(b"only", 3, whole=True) == 0
    assert tail_lines_start(b"a\nb\n", 0, whole=True) == 4


class Reader(io.BytesIO):
    """A file as the blocking client opens it: seek and read."""


lines = st.lists(st.text(alphabet="ab", max_size=5), max_size=12)


@given(lines, st.booleans(), st.integers(0, 15))
def test_head_and_tail_print_what_coreutils_print(parts, ends_with_newline, count):
    data = ("\n".join(parts) + ("\n" if ends_with_newline and parts else "")).encode()
    kept = data.splitlines(keepends=True)

    def run(part) -> bytes:
        out = io.BytesIO()
        part(Reader(data), Namespace(bytes=None, lines=count), out)
        return out.getvalue()

    assert run(_head) == b"".join(kept[:count])
    assert run(_tail) == (b"".join(kept[-count:]) if count else b"")
    out = io.BytesIO()
    _tail(Reader(data), Namespace(bytes=count, lines=10), out)
    assert out.getvalue() == data[len(data) - min(count, len(data)) :]


def test_tail_reads_backwards_without_reading_the_whole_file(monkeypatch):
    monkeypatch.setattr("dfs_shell.content.BLOCK", 8)
    data = b"".join(b"line %04d\n" % number for number in range(1000))
    reader = Reader(data)
    reads: list[int] = []
    read = reader.read

    def counting(size: int = -1) -> bytes:
        reads.append(size)
        return read(size)

    reader.read = counting  # type: ignore[method-assign]
    out = io.BytesIO()
    _tail(reader, Namespace(bytes=None, lines=3), out)
    assert out.getvalue() == b"line 0997\nline 0998\nline 0999\n"
    assert sum(reads) < 100
