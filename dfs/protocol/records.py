"""The records DFS commands carry, defined once for every side.

:class:`Entry` is what Stat and ListDirectory say about a file or directory;
:class:`ChunkRecord` is what GetChunks says about one chunk of a file;
:class:`Location` is where a replica of a chunk is, or is to be written: a
dataserver's address, as a chunk record, a new chunk's targets, a write pipeline's
downstream and a repair order's sources name it. Each comes with AMP argument types:
one record as one value (:class:`EntryArgument`, :class:`LocationArgument`), a list
of locations (:class:`LocationList`), and a whole page of records packed into one
compact value (:class:`EntryPage`, :class:`ChunkPage`), cut into AMP values as
:class:`Bulk` cuts bytes, rather than one AMP box per record, which is several times
slower to encode and decode and several times larger.

Decoding is strict: a value that is not exactly what the encoder writes raises
:class:`~dfs.protocol.errors.MalformedRecord` with one line saying what is wrong,
so a caller gets a clear error, never a traceback from deep inside a parser.

The packed page format (version 1) is columnar, all integers little-endian::

    u8 format (1), u32 count n
    n bytes   flags: bit 0 directory, bit 1 complete (entries only)
    n int64   for each integer field, in field order
    n float64 mtime (entries only)
    UTF-8     the text fields, column after column, every value ended by NUL

Paths and identity names never hold NUL (see :mod:`dfs.protocol.paths` and
:func:`dfs.security.identity.validate_name`), and a chunk's locations are
``host:port`` addresses, so NUL can end each value. Column after column keeps the
encoder and decoder to a handful of calls into C per page, whatever its length.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, overload

import attrs
from twisted.protocols import amp

from dfs.config.model import Address
from dfs.protocol.errors import MalformedRecord

FILE: Final = "file"
DIRECTORY: Final = "directory"

#: The version of the packed page format, its first byte.
PAGE_FORMAT: Final = 1
_HEADER = struct.Struct("<BI")
_DIRECTORY_FLAG: Final = 1
_COMPLETE_FLAG: Final = 2


# Without slots: a frozen attrs class with a __dict__ is built nearly twice as fast,
# and a client builds thousands of entries per page.
@attrs.frozen(slots=False)
class Entry:
    """A file or directory as Stat and ListDirectory show it.

    Directories have length, replication and chunk_size 0 and are always complete.
    """

    path: str
    name: str
    kind: str  # FILE or DIRECTORY
    inode: int
    owner: str
    group: str
    mode: int
    mtime: float
    length: int
    replication: int
    chunk_size: int
    complete: bool

    @property
    def is_dir(self) -> bool:
        return self.kind == DIRECTORY


@attrs.frozen
class Location(Address):
    """Where a replica of a chunk is, or is to be written: the address a dataserver
    serves clients and peers at, as it registered it. On the wire ``host:port``
    (an IPv6 host in brackets); dialled as the :class:`~dfs.config.Address` it is."""

    @classmethod
    def decode(cls, text: str) -> Location:
        """The location ``text`` names; MalformedRecord unless it is ``host:port``
        with a port from 1 to 65535."""
        try:
            address = Address.parse(text)
        except ValueError:
            raise MalformedRecord(f"malformed location: expected host:port, got {text!r}") from None
        if address.port == 0:
            raise MalformedRecord(f"malformed location: {text!r} has port 0")
        return cls(address.host, address.port)


@attrs.frozen
class ChunkRecord:
    """One chunk of a file as GetChunks gives it: where its live replicas are, best
    first for the reader, and a read token for the caller (dfs.security.tokens)."""

    chunk_id: int
    version: int
    length: int
    locations: tuple[Location, ...]
    token: str


# -- packing -----------------------------------------------------------------------


def _ints(columns: Sequence[Sequence[int]], count: int) -> bytes:
    values = [value for column in columns for value in column]
    try:
        return struct.pack(f"<{len(values)}q", *values)
    except struct.error:
        raise ValueError(
            f"an integer of a page of {count} records is not a 64-bit integer"
        ) from None


def _text(columns: Iterable[Iterable[str]]) -> bytes:
    # Every value is ended by NUL, so an empty value still counts as one. A value
    # holding NUL shows as one NUL too many in the joined text: one pass in C.
    parts = [value for column in columns for value in column]
    if not parts:
        return b""
    text = "\x00".join(parts)
    if text.count("\x00") != len(parts) - 1:
        raise ValueError("a text field holds a NUL character")
    return (text + "\x00").encode("utf-8")


@attrs.frozen(eq=False)
class EntryColumns(Sequence[Entry]):
    """A page of entries column by column, as the metaserver reads it from its
    namespace: packed as it is (:func:`pack_entry_page`), with no :class:`Entry` built
    per entry. As a sequence, it is its entries in order (built when asked for)."""

    paths: Sequence[str]
    names: Sequence[str]
    directories: Sequence[bool]
    inodes: Sequence[int]
    owners: Sequence[str]
    groups: Sequence[str]
    modes: Sequence[int]
    mtimes: Sequence[float]
    lengths: Sequence[int]
    replications: Sequence[int]
    chunk_sizes: Sequence[int]
    completes: Sequence[bool]

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> list[Entry]: ...

    def __getitem__(self, index: int | slice) -> Entry | list[Entry]:
        if isinstance(index, slice):
            return self.entries()[index]
        path, name, directory, *rest = (
            column[index] for column in attrs.astuple(self, recurse=False)
        )
        return Entry(path, name, DIRECTORY if directory else FILE, *rest)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())

    def head(self, count: int) -> EntryColumns:
        """The first ``count`` entries."""
        return EntryColumns(*(column[:count] for column in attrs.astuple(self, recurse=False)))

    def entries(self) -> list[Entry]:
        """The entries, in order."""
        kinds = [DIRECTORY if directory else FILE for directory in self.directories]
        return list(
            map(
                Entry,
                self.paths,
                self.names,
                kinds,
                self.inodes,
                self.owners,
                self.groups,
                self.modes,
                self.mtimes,
                self.lengths,
                self.replications,
                self.chunk_sizes,
                self.completes,
            )
        )


def _columns_of(entries: Sequence[Entry]) -> EntryColumns:
    return EntryColumns(
        paths=[entry.path for entry in entries],
        names=[entry.name for entry in entries],
        directories=[entry.kind == DIRECTORY for entry in entries],
        inodes=[entry.inode for entry in entries],
        owners=[entry.owner for entry in entries],
        groups=[entry.group for entry in entries],
        modes=[entry.mode for entry in entries],
        mtimes=[entry.mtime for entry in entries],
        lengths=[entry.length for entry in entries],
        replications=[entry.replication for entry in entries],
        chunk_sizes=[entry.chunk_size for entry in entries],
        completes=[entry.complete for entry in entries],
    )


def _pack_columns(page: EntryColumns) -> bytes:
    count = len(page)
    flags = bytes(
        (_DIRECTORY_FLAG if directory else 0) | (_COMPLETE_FLAG if complete else 0)
        for directory, complete in zip(page.directories, page.completes, strict=True)
    )
    integers = _ints(
        [page.inodes, page.modes, page.lengths, page.replications, page.chunk_sizes], count
    )
    mtimes = struct.pack(f"<{count}d", *page.mtimes)
    text = _text([page.paths, page.names, page.owners, page.groups])
    return _HEADER.pack(PAGE_FORMAT, count) + flags + integers + mtimes + text


def pack_entries(entries: Sequence[Entry] | EntryColumns) -> bytes:
    """A page of entries as one packed value (see the module's docstring)."""
    if not isinstance(entries, EntryColumns):
        entries = _columns_of(entries)
    return _pack_columns(entries)


def pack_entry_page(page: EntryColumns, limit: int) -> tuple[bytes, int]:
    """The leading entries of ``page`` that fit one packed value of at most ``limit``
    bytes, packed, and how many they are (at least one, if the page has any)."""
    packed = _pack_columns(page)
    if len(packed) <= limit:
        return packed, len(page)
    size = PAGE_HEADER_BYTES
    count = 0
    for texts in zip(page.paths, page.names, page.owners, page.groups, strict=True):
        size += ENTRY_FIXED_BYTES + sum(len(text.encode()) + 1 for text in texts)
        if size > limit and count:
            break
        count += 1
    return _pack_columns(page.head(count)), count


def _joined(locations: Iterable[Location]) -> str:
    # Locations are separated by spaces: a host name or IP address holds none.
    texts = [str(location) for location in locations]
    if any(" " in text or not text for text in texts):
        raise ValueError("a chunk location is empty or holds a space")
    return " ".join(texts)


def pack_chunks(chunks: Sequence[ChunkRecord]) -> bytes:
    """A page of chunk records as one packed value. A chunk's locations are one text
    field, its addresses separated by spaces (an address holds none)."""
    count = len(chunks)
    integers = _ints(
        [
            [chunk.chunk_id for chunk in chunks],
            [chunk.version for chunk in chunks],
            [chunk.length for chunk in chunks],
        ],
        count,
    )
    text = _text(
        [[_joined(chunk.locations) for chunk in chunks], [chunk.token for chunk in chunks]]
    )
    return _HEADER.pack(PAGE_FORMAT, count) + bytes(count) + integers + text


# -- unpacking ---------------------------------------------------------------------


class _Reader:
    """Walks a packed page, raising MalformedRecord for anything out of place."""

    def __init__(self, data: bytes, what: str) -> None:
        if not isinstance(data, bytes):
            raise MalformedRecord(f"{what}: expected bytes, got {type(data).__name__}")
        self.data = data
        self.what = what
        if len(data) < _HEADER.size:
            self.fail(f"{len(data)} bytes, shorter than its header")
        form, self.count = _HEADER.unpack_from(data)
        if form != PAGE_FORMAT:
            self.fail(f"format {form}, expected {PAGE_FORMAT}")
        self.offset = _HEADER.size

    def fail(self, reason: str) -> Any:
        raise MalformedRecord(f"malformed {self.what}: {reason}")

    def take(self, size: int) -> int:
        start = self.offset
        if size > len(self.data) - start:
            self.fail(f"{self.count} records do not fit its {len(self.data)} bytes")
        self.offset += size
        return start

    def flags(self, allowed: int) -> bytes:
        start = self.take(self.count)
        flags = self.data[start : self.offset]
        if flags.translate(None, bytes(range(allowed + 1))):
            self.fail("unknown flag bits")
        return flags

    def numbers(self, code: str, columns: int) -> list[tuple[Any, ...]]:
        size = struct.calcsize(f"<{self.count}{code}")
        values = [
            struct.unpack_from(f"<{self.count}{code}", self.data, self.take(size))
            for _ in range(columns)
        ]
        return values

    def text(self, columns: int) -> list[list[str]]:
        rest = self.data[self.offset :]
        self.offset = len(self.data)
        expected = self.count * columns
        if not expected:
            if rest:
                self.fail("text after the last record")
            return [[] for _ in range(columns)]
        if not rest.endswith(b"\x00"):
            self.fail("its text does not end with NUL")
        try:
            values = rest[:-1].decode("utf-8").split("\x00")
        except UnicodeDecodeError as error:
            self.fail(f"text that is not UTF-8 ({error.reason} at byte {error.start})")
        if len(values) != expected:
            self.fail(f"{len(values)} text values, expected {expected}")
        return [values[index * self.count : (index + 1) * self.count] for index in range(columns)]


_KIND_OF_FLAGS: Final = (FILE, DIRECTORY, FILE, DIRECTORY)
_COMPLETE_OF_FLAGS: Final = (False, False, True, True)


def unpack_entries(data: bytes) -> list[Entry]:
    """The entries of a value :func:`pack_entries` wrote; MalformedRecord for any
    other value."""
    reader = _Reader(data, "page of entries")
    flags = reader.flags(_DIRECTORY_FLAG | _COMPLETE_FLAG)
    inodes, modes, lengths, replications, chunk_sizes = reader.numbers("q", 5)
    (mtimes,) = reader.numbers("d", 1)
    paths, names, owners, groups = reader.text(4)
    # A lookup per flags byte (checked to be 0 to 3 above), not a test per entry.
    kinds = list(map(_KIND_OF_FLAGS.__getitem__, flags))
    completes = list(map(_COMPLETE_OF_FLAGS.__getitem__, flags))
    return list(
        map(
            Entry,
            paths,
            names,
            kinds,
            inodes,
            owners,
            groups,
            modes,
            mtimes,
            lengths,
            replications,
            chunk_sizes,
            completes,
        )
    )


def unpack_chunks(data: bytes) -> list[ChunkRecord]:
    """The chunk records of a value :func:`pack_chunks` wrote; MalformedRecord for
    any other value."""
    reader = _Reader(data, "page of chunks")
    reader.flags(0)
    chunk_ids, versions, lengths = reader.numbers("q", 3)
    locations, tokens = reader.text(2)
    # A page names a few dataservers many times over: decode each address once.
    known: dict[str, Location] = {}

    def decoded(text: str) -> Location:
        location = known.get(text)
        if location is None:
            location = known[text] = Location.decode(text)
        return location

    return [
        ChunkRecord(
            chunk_id,
            version,
            length,
            tuple(map(decoded, where.split(" "))) if where else (),
            token,
        )
        for chunk_id, version, length, where, token in zip(
            chunk_ids, versions, lengths, locations, tokens, strict=True
        )
    ]


# -- AMP argument types --------------------------------------------------------------


#: A page of exactly one entry up to its text: header, flags, the integers, mtime.
_ONE_ENTRY = struct.Struct("<BIB5qd")


def pack_entry(entry: Entry) -> bytes:
    """``pack_entries([entry])``, byte for byte, in one struct call: Stat answers
    one entry, and the general columns cost three times more for one."""
    path, name, owner, group = entry.path, entry.name, entry.owner, entry.group
    if "\x00" in path or "\x00" in name or "\x00" in owner or "\x00" in group:
        return pack_entries([entry])  # which says what is wrong
    try:
        head = _ONE_ENTRY.pack(
            PAGE_FORMAT,
            1,
            (_DIRECTORY_FLAG if entry.kind == DIRECTORY else 0)
            | (_COMPLETE_FLAG if entry.complete else 0),
            entry.inode,
            entry.mode,
            entry.length,
            entry.replication,
            entry.chunk_size,
            entry.mtime,
        )
    except struct.error:
        return pack_entries([entry])
    return head + f"{path}\x00{name}\x00{owner}\x00{group}\x00".encode()


def unpack_entry(data: bytes) -> Entry:
    """The one entry of a page :func:`pack_entry` wrote; MalformedRecord for any
    other value (as :func:`unpack_entries` says it)."""
    if type(data) is bytes and len(data) > _ONE_ENTRY.size and data[-1] == 0:
        form, count, flags, inode, mode, length, replication, chunk_size, mtime = (
            _ONE_ENTRY.unpack_from(data)
        )
        if form == PAGE_FORMAT and count == 1 and flags <= _DIRECTORY_FLAG | _COMPLETE_FLAG:
            try:
                texts = data[_ONE_ENTRY.size : -1].decode("utf-8").split("\x00")
            except UnicodeDecodeError:
                texts = []
            if len(texts) == 4:
                path, name, owner, group = texts
                return Entry(
                    path,
                    name,
                    DIRECTORY if flags & _DIRECTORY_FLAG else FILE,
                    inode,
                    owner,
                    group,
                    mode,
                    mtime,
                    length,
                    replication,
                    chunk_size,
                    bool(flags & _COMPLETE_FLAG),
                )
    entries = unpack_entries(data)
    if len(entries) != 1:
        raise MalformedRecord(f"malformed entry: a page of {len(entries)}, expected 1")
    return entries[0]


class EntryArgument(amp.Argument):
    """One :class:`Entry` as one value (a page of one: at most 4.5 KB, as a path
    is at most 4,096 bytes)."""

    def toString(self, inObject: Entry) -> bytes:
        return pack_entry(inObject)

    def fromString(self, inString: bytes) -> Entry:
        return unpack_entry(inString)


class LocationArgument(amp.Argument):
    """One :class:`Location` as its ``host:port`` text."""

    def toString(self, inObject: Location) -> bytes:
        return str(inObject).encode("utf-8")

    def fromString(self, inString: bytes) -> Location:
        try:
            text = inString.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRecord("malformed location: not UTF-8 text") from None
        return Location.decode(text)


class LocationList(amp.ListOf):
    """A list of :class:`Location`, each its ``host:port`` text: the same bytes as a
    ListOf(Unicode()) of those texts."""

    def __init__(self, optional: bool = False) -> None:
        super().__init__(LocationArgument(), optional)


class Bulk(amp.Argument):
    """Bytes of any length: AMP values hold at most 65,535 bytes, so the data is cut
    into pieces under the keys ``name``, ``name.1``, ``name.2``, ... and joined again."""

    PIECE = 0xFFFF

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: object) -> None:  # type: ignore[override]
        data = objects[amp._wireNameToPythonIdentifier(name)]
        view = memoryview(data)
        strings[name] = bytes(view[: self.PIECE])
        for index, start in enumerate(range(self.PIECE, len(data), self.PIECE), start=1):
            strings[name + b".%d" % index] = bytes(view[start : start + self.PIECE])

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: object) -> None:  # type: ignore[override]
        pieces = [strings[name]]
        index = 1
        while (key := name + b".%d" % index) in strings:
            pieces.append(strings[key])
            index += 1
        objects[amp._wireNameToPythonIdentifier(name)] = b"".join(pieces)


class EntryPage(Bulk):
    """A list of :class:`Entry` packed into one value, cut into AMP values as
    :class:`Bulk` is: a page of thousands of entries is one argument. The sender
    gives a list of entries, :class:`EntryColumns`, or a page already packed
    (:func:`pack_entry_page`); the receiver gets a list of entries."""

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: object) -> None:  # type: ignore[override]
        key = amp._wireNameToPythonIdentifier(name)
        page = objects[key]
        packed = page if isinstance(page, bytes) else pack_entries(page)
        super().toBox(name, strings, {key: packed}, proto)

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: object) -> None:  # type: ignore[override]
        key = amp._wireNameToPythonIdentifier(name)
        packed: dict[str, bytes] = {}
        super().fromBox(name, strings, packed, proto)
        objects[key] = unpack_entries(packed[key])


class ChunkPage(Bulk):
    """A list of :class:`ChunkRecord` packed into one value, as EntryPage."""

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: object) -> None:  # type: ignore[override]
        key = amp._wireNameToPythonIdentifier(name)
        super().toBox(name, strings, {key: pack_chunks(objects[key])}, proto)

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: object) -> None:  # type: ignore[override]
        key = amp._wireNameToPythonIdentifier(name)
        packed: dict[str, bytes] = {}
        super().fromBox(name, strings, packed, proto)
        objects[key] = unpack_chunks(packed[key])


#: The most bytes a sender puts in a packed page: 32 AMP values, half of what a DFS
#: session takes in one box (dfs.protocol.session.MAX_BOX_BYTES).
PAGE_LIMIT: Final = 32 * Bulk.PIECE
#: What one packed entry takes besides its text: flags, five integers and mtime.
ENTRY_FIXED_BYTES: Final = 1 + 5 * 8 + 8
#: The same for a chunk record: flags and three integers.
CHUNK_FIXED_BYTES: Final = 1 + 3 * 8
#: The header of a packed page.
PAGE_HEADER_BYTES: Final = _HEADER.size


def entry_size(entry: Entry) -> int:
    """The bytes ``entry`` takes in a packed page."""
    return (
        ENTRY_FIXED_BYTES
        + len(entry.path.encode())
        + len(entry.name.encode())
        + len(entry.owner.encode())
        + len(entry.group.encode())
        + 4
    )


def chunk_record_size(chunk: ChunkRecord) -> int:
    """The bytes ``chunk`` takes in a packed page."""
    return (
        CHUNK_FIXED_BYTES + len(_joined(chunk.locations).encode()) + len(chunk.token.encode()) + 2
    )
