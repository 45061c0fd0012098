"""The namespace against a simple model: a dict from path to entry.

Hypothesis drives both with random mkdir, create, write, close, recover, delete,
rename, list and stat calls over a small set of paths (so that they collide), and
checks after every step that they agree on the outcome, on the error when there is
one, and on every entry. Snapshots and retried request ids are mixed in.
"""

from __future__ import annotations

import itertools
import pickle
from typing import Any

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dfs.metaserver.namespace import (
    MAX_PENDING_CHUNKS,
    ChunkRef,
    Namespace,
)
from dfs.metaserver.operations import (
    AddChunk,
    BumpChunkVersion,
    Caller,
    Chmod,
    Chown,
    Close,
    CommitChunk,
    Create,
    Delete,
    Err,
    Mkdir,
    Ok,
    Operation,
    RecoverLease,
    Rename,
    RenewLease,
)
from dfs.metaserver.raft import NamespaceLog
from dfs.protocol import paths
from dfs.protocol.records import Entry as WireEntry

CHUNK_SIZE = 100
NAMES = ["a", "b"]
ALL_PATHS = ["/"] + [
    "/" + "/".join(parts) for depth in (1, 2, 3) for parts in itertools.product(NAMES, repeat=depth)
]
# Superusers all: this machine checks the tree, leases and request ids against the
# model; permissions have their own tests (test_permissions.py and the matrix).
CALLERS = [
    Caller("alice", superuser=True),
    Caller("bob", superuser=True),
    Caller("dfs", superuser=True),
]
HOLDERS = ["c1", "c2"]

path_strategy = st.sampled_from(ALL_PATHS)
callers = st.sampled_from(CALLERS)
holders = st.sampled_from(HOLDERS)
modes = st.sampled_from([0o755, 0o700, 0o644, 0o1777])


def spell(path: str, how: int) -> str:
    """One of several spellings that all normalize to ``path``."""
    if how == 1:
        return path + "/"
    if how == 2:
        return "/." + path
    if how == 3:
        return path.replace("/", "//")
    if how == 4:
        return path.rstrip("/") + "/x/.."
    return path


spellings = st.integers(0, 4)


@attrs.define
class ModelDir:
    owner: str
    group: str
    mode: int


@attrs.define
class ModelFile:
    owner: str
    group: str
    mode: int
    chunks: list[ChunkRef] = attrs.Factory(list)
    holder: str | None = None
    expires: float = 0.0

    @property
    def length(self) -> int:
        return sum(chunk.length for chunk in self.chunks)

    def pending(self) -> list[int]:
        """Indexes of the chunks added and not committed: the trailing empty ones."""
        index = len(self.chunks)
        while index > 0 and self.chunks[index - 1].length == 0:
            index -= 1
        return list(range(index, len(self.chunks)))

    def index(self, chunk_id: int) -> int | None:
        for index, chunk in enumerate(self.chunks):
            if chunk.chunk_id == chunk_id:
                return index
        return None


ModelEntry = ModelDir | ModelFile


class NamespaceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ns = Namespace()
        # Other members of the group: they get every operation the way the Raft
        # journal carries it (pickled) and must end up in the very same state.
        self.replicas = [Namespace(), Namespace()]
        self.model: dict[str, ModelEntry] = {"/": ModelDir("dfs", "supergroup", 0o755)}
        self.now = 1.0
        self.next_chunk = 1
        self.freed: set[int] = set()
        self.requests = itertools.count()
        self.last_request: tuple[Operation, Ok[Any] | Err] | None = None

    # -- the model's rules -------------------------------------------------------

    def walk_error(self, path: str) -> str | None:
        """The error of reaching ``path``'s parent: a missing or file ancestor."""
        names = paths.components(path)
        for depth in range(1, len(names)):
            ancestor = "/" + "/".join(names[:depth])
            entry = self.model.get(ancestor)
            if entry is None:
                return "FileNotFound"
            if isinstance(entry, ModelFile):
                return "NotADirectory"
        return None

    def file_error(self, path: str) -> str | None:
        """The error of reaching an existing file at ``path``."""
        error = self.walk_error(path)
        if error is not None:
            return error
        entry = self.model.get(path)
        if entry is None:
            return "FileNotFound"
        if isinstance(entry, ModelDir):
            return "IsADirectory"
        return None

    def lease_error(self, path: str, holder: str) -> str | None:
        error = self.file_error(path)
        if error is not None:
            return error
        entry = self.model[path]
        assert isinstance(entry, ModelFile)
        if entry.holder != holder:
            return "LeaseConflict"
        return None

    def subtree(self, path: str) -> list[str]:
        return sorted(p for p in self.model if paths.is_ancestor(path, p))

    def group_of_parent(self, path: str) -> str:
        return self.model[paths.split(path)[0]].group

    # -- choosing arguments: mostly ones that get past the first check ------------------

    def pick(self, data: st.DataObject, likely: list[str]) -> str:
        """Usually one of ``likely``, sometimes any path (to reach the refusals)."""
        if likely and data.draw(st.integers(0, 4)) > 0:
            return data.draw(st.sampled_from(sorted(likely)))
        return data.draw(path_strategy)

    def creatable(self) -> list[str]:
        return [
            path
            for path in ALL_PATHS
            if path not in self.model and isinstance(self.model.get(paths.split(path)[0]), ModelDir)
        ]

    def files(self, *, open_only: bool = False) -> list[str]:
        return [
            path
            for path, entry in self.model.items()
            if isinstance(entry, ModelFile) and (entry.holder is not None or not open_only)
        ]

    def pick_open_file(self, data: st.DataObject) -> tuple[str, str]:
        """A path and a holder: usually a file being written and its own holder."""
        path = self.pick(data, self.files(open_only=True))
        entry = self.model.get(path)
        if isinstance(entry, ModelFile) and entry.holder and data.draw(st.integers(0, 4)):
            return path, entry.holder
        return path, data.draw(holders)

    # -- driving both ----------------------------------------------------------------

    def common(self, caller: Caller, request: bool) -> dict[str, Any]:
        request_id = f"r{next(self.requests)}" if request else ""
        return {"caller": caller, "now": self.now, "request_id": request_id}

    def apply(self, op: Operation, expected_error: str | None) -> Any:
        result = self.ns.apply(op)
        for replica in self.replicas:
            assert replica.apply(pickle.loads(pickle.dumps(op))) == result
        if op.request_id:
            self.last_request = (op, result)
        if expected_error is None:
            assert isinstance(result, Ok), (op, result)
            return result.value
        assert isinstance(result, Err), (op, result)
        assert result.error == expected_error, (op, result)
        return None

    # -- rules -------------------------------------------------------------------------

    @rule(
        data=st.data(),
        how=spellings,
        parents=st.booleans(),
        mode=modes,
        caller=callers,
        request=st.booleans(),
    )
    def mkdir(
        self,
        data: st.DataObject,
        how: int,
        parents: bool,
        mode: int,
        caller: Caller,
        request: bool,
    ) -> None:
        path = self.pick(data, self.creatable())
        error: str | None = None
        to_make: list[str] = []
        if parents:
            names = paths.components(path)
            chain = ["/" + "/".join(names[:depth]) for depth in range(1, len(names) + 1)]
            for index, step in enumerate(chain):
                entry = self.model.get(step)
                if entry is None:
                    to_make = chain[index:]
                    break
                if isinstance(entry, ModelFile):
                    error = "FileExists" if step == path else "NotADirectory"
                    break
        else:
            error = self.walk_error(path) or ("FileExists" if path in self.model else None)
            to_make = [path]
        op = Mkdir(spell(path, how), mode, parents, **self.common(caller, request))
        made = self.apply(op, error)
        if error is None:
            for step in to_make:
                # mkdir -p leaves the directories on the way enterable by their owner.
                made_mode = mode if step == to_make[-1] else mode | 0o300
                self.model[step] = ModelDir(caller.user, self.group_of_parent(step), made_mode)
            assert made.path == path and made.kind == "directory"

    @rule(
        data=st.data(),
        how=spellings,
        overwrite=st.booleans(),
        holder=holders,
        duration=st.sampled_from([1.0, 5.0, 30.0]),
        mode=modes,
        caller=callers,
        request=st.booleans(),
    )
    def create(
        self,
        data: st.DataObject,
        how: int,
        overwrite: bool,
        holder: str,
        duration: float,
        mode: int,
        caller: Caller,
        request: bool,
    ) -> None:
        path = self.pick(data, self.creatable() + self.files())
        error = self.walk_error(path)
        entry = self.model.get(path)
        if error is None:
            if isinstance(entry, ModelDir):
                error = "IsADirectory" if overwrite else "FileExists"
            elif isinstance(entry, ModelFile):
                if not overwrite:
                    error = "FileExists"
                elif entry.holder not in (None, holder) and self.now < entry.expires:
                    error = "LeaseConflict"
        op = Create(
            spell(path, how),
            mode,
            2,
            CHUNK_SIZE,
            overwrite,
            lease_holder=holder,
            lease_expires=self.now + duration,
            **self.common(caller, request),
        )
        result = self.apply(op, error)
        if error is None:
            freed = entry.chunks if isinstance(entry, ModelFile) else []
            assert result.freed == tuple(freed)
            self.freed.update(chunk.chunk_id for chunk in freed)
            # Overwriting truncates: the file keeps its owner, group and mode.
            self.model[path] = ModelFile(
                entry.owner if isinstance(entry, ModelFile) else caller.user,
                entry.group if isinstance(entry, ModelFile) else self.group_of_parent(path),
                entry.mode if isinstance(entry, ModelFile) else mode,
                holder=holder,
                expires=self.now + duration,
            )

    def pick_chunk(self, data: st.DataObject, entry: ModelEntry | None) -> int:
        """A chunk id: usually one of the file's, most often a pending one."""
        if isinstance(entry, ModelFile) and entry.chunks and data.draw(st.integers(0, 4)):
            pending = [entry.chunks[index] for index in entry.pending()]
            if pending and data.draw(st.integers(0, 2)):
                return data.draw(st.sampled_from(pending)).chunk_id
            return data.draw(st.sampled_from(entry.chunks)).chunk_id
        return data.draw(st.integers(1, self.next_chunk + 1))

    @rule(data=st.data(), request=st.booleans())
    def add_chunk(self, data: st.DataObject, request: bool) -> None:
        path, holder = self.pick_open_file(data)
        error = self.lease_error(path, holder)
        entry = self.model.get(path)
        if error is None:
            assert isinstance(entry, ModelFile)
            if len(entry.pending()) >= MAX_PENDING_CHUNKS:
                error = "InvalidArgument"
        common = self.common(CALLERS[0], request)
        chunk = self.apply(AddChunk(path, holder, self.now + 10, **common), error)
        if error is not None:
            return
        assert isinstance(entry, ModelFile)
        assert chunk == ChunkRef(self.next_chunk, 1, 0)
        self.next_chunk += 1
        entry.chunks.append(chunk)
        entry.expires = self.now + 10

    @rule(
        data=st.data(),
        length=st.integers(0, CHUNK_SIZE + 1),
        stale=st.booleans(),
        request=st.booleans(),
    )
    def commit_chunk(self, data: st.DataObject, length: int, stale: bool, request: bool) -> None:
        path, holder = self.pick_open_file(data)
        error = self.lease_error(path, holder)
        entry = self.model.get(path)
        chunk_id = self.pick_chunk(data, entry)
        index = entry.index(chunk_id) if isinstance(entry, ModelFile) else None
        version = 1
        if isinstance(entry, ModelFile) and index is not None:
            version = entry.chunks[index].version
            version -= 1 if stale and version > 1 else 0
        expected = None
        if error is None:
            assert isinstance(entry, ModelFile)
            chunks = entry.chunks
            chunk = chunks[index] if index is not None else None
            if (
                chunk is not None
                and chunk.length
                and (chunk.version, chunk.length)
                == (
                    version,
                    length,
                )
            ):
                expected = chunk  # a repeated commit changes nothing
            elif index is None or index not in entry.pending():
                error = "InvalidArgument"
            elif index > 0 and chunks[index - 1].length == 0:
                error = "InvalidArgument"  # the one before commits first
            elif chunk is not None and version != chunk.version:
                error = "StaleChunk"
            elif not 1 <= length <= CHUNK_SIZE:
                error = "InvalidArgument"
            else:
                expected = attrs.evolve(chunk, length=length)
        common = self.common(CALLERS[0], request)
        op = CommitChunk(path, holder, chunk_id, version, length, **common)
        committed = self.apply(op, error)
        if error is None:
            assert isinstance(entry, ModelFile) and index is not None
            assert committed == expected
            entry.chunks[index] = committed

    @rule(data=st.data(), request=st.booleans())
    def bump_chunk(self, data: st.DataObject, request: bool) -> None:
        path, holder = self.pick_open_file(data)
        error = self.lease_error(path, holder)
        entry = self.model.get(path)
        chunk_id = self.pick_chunk(data, entry)
        index = entry.index(chunk_id) if isinstance(entry, ModelFile) else None
        if error is None:
            assert isinstance(entry, ModelFile)
            if index is None or index not in entry.pending():
                error = "InvalidArgument"
        common = self.common(CALLERS[0], request)
        bumped = self.apply(BumpChunkVersion(path, holder, chunk_id, **common), error)
        if error is None:
            assert isinstance(entry, ModelFile) and index is not None
            chunk = entry.chunks[index]
            assert bumped == attrs.evolve(chunk, version=chunk.version + 1)
            entry.chunks[index] = bumped

    @rule(data=st.data(), caller=callers)
    def close(self, data: st.DataObject, caller: Caller) -> None:
        path, holder = self.pick_open_file(data)
        right_length = data.draw(st.integers(0, 3)) > 0
        error = self.lease_error(path, holder)
        entry = self.model.get(path)
        length = entry.length if isinstance(entry, ModelFile) else 0
        if error is None and not right_length:
            error = "InvalidArgument"
        op = Close(path, holder, length + (0 if right_length else 1), **self.common(caller, True))
        closed = self.apply(op, error)
        if error is None:
            assert isinstance(entry, ModelFile)
            entry.holder = None
            assert closed.complete and closed.length == entry.length

    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        path, holder = self.pick_open_file(data)
        error = self.lease_error(path, holder)
        self.apply(RenewLease(path, holder, self.now + 10, **self.common(CALLERS[0], False)), error)
        if error is None:
            entry = self.model[path]
            assert isinstance(entry, ModelFile)
            entry.expires = self.now + 10

    @rule(data=st.data(), caller=callers)
    def recover_lease(self, data: st.DataObject, caller: Caller) -> None:
        path = self.pick(data, self.files(open_only=True))
        error = self.file_error(path)
        entry = self.model.get(path)
        if error is None:
            assert isinstance(entry, ModelFile)
            if entry.holder is not None and self.now < entry.expires and not caller.superuser:
                error = "LeaseConflict"
        recovered = self.apply(RecoverLease(path, **self.common(caller, False)), error)
        if error is None:
            assert isinstance(entry, ModelFile)
            if entry.holder is not None:
                # Trailing chunks without a committed byte go with the lease.
                while entry.chunks and entry.chunks[-1].length == 0:
                    entry.chunks.pop()
            entry.holder = None
            assert recovered.complete and recovered.length == entry.length

    @rule(data=st.data(), how=spellings, recursive=st.booleans(), request=st.booleans())
    def delete(self, data: st.DataObject, how: int, recursive: bool, request: bool) -> None:
        # Half the time a directory with something in it: the refusal and the recursion.
        full = [p for p in self.model if p != "/" and len(self.subtree(p)) > 1]
        entries = [p for p in self.model if p != "/"]
        path = self.pick(data, full if data.draw(st.booleans()) else entries)
        error: str | None
        if path == "/":
            error = "InvalidPath"
        else:
            error = self.walk_error(path)
            if error is None and path not in self.model:
                error = "FileNotFound"
        below = self.subtree(path) if error is None else []
        if error is None and len(below) > 1 and not recursive:
            error = "DirectoryNotEmpty"
        op = Delete(spell(path, how), recursive, **self.common(CALLERS[0], request))
        result = self.apply(op, error)
        if error is None:
            freed = []
            for gone in below:
                entry = self.model.pop(gone)
                if isinstance(entry, ModelFile):
                    freed.extend(entry.chunks)
            assert result.freed == tuple(freed)
            self.freed.update(chunk.chunk_id for chunk in freed)

    @rule(data=st.data(), how=spellings, request=st.booleans())
    def rename(self, data: st.DataObject, how: int, request: bool) -> None:
        # Half the time file onto file, the one case where the target is replaced.
        files_only = data.draw(st.booleans())
        src = self.pick(data, self.files() if files_only else [p for p in self.model if p != "/"])
        dst = self.pick(data, self.files() if files_only else self.creatable() + self.files())
        error: str | None = None
        source = self.model.get(src)
        target = self.model.get(dst)
        if "/" in (src, dst):
            error = "InvalidPath"
        else:
            error = self.walk_error(src) or ("FileNotFound" if source is None else None)
        if error is None and src != dst:
            if isinstance(source, ModelDir) and paths.is_ancestor(src, dst):
                error = "InvalidPath"
            else:
                error = self.walk_error(dst)
                if error is None and target is not None:
                    if not (isinstance(source, ModelFile) and isinstance(target, ModelFile)):
                        error = "FileExists"
        op = Rename(spell(src, how), spell(dst, 4 - how), **self.common(CALLERS[1], request))
        result = self.apply(op, error)
        if error is None:
            assert result.stat.path == dst
            if src == dst:
                assert result.freed == ()
                return
            freed = target.chunks if isinstance(target, ModelFile) else []
            assert result.freed == tuple(freed)
            self.freed.update(chunk.chunk_id for chunk in freed)
            self.model.pop(dst, None)
            for old in self.subtree(src):
                self.model[dst + old[len(src) :]] = self.model.pop(old)

    @rule(data=st.data(), how=spellings)
    def stat(self, data: st.DataObject, how: int) -> None:
        path = self.pick(data, list(self.model))
        error = self.walk_error(path) or (None if path in self.model else "FileNotFound")
        result = self.ns.stat(spell(path, how))
        if error is None:
            assert isinstance(result, Ok)
            self.check_entry(path, result.value)
        else:
            assert isinstance(result, Err) and result.error == error, result

    @rule(data=st.data(), how=spellings)
    def list(self, data: st.DataObject, how: int) -> None:
        path = self.pick(data, list(self.model))
        error = self.walk_error(path) or (None if path in self.model else "FileNotFound")
        result = self.ns.list(spell(path, how))
        if error is not None:
            assert isinstance(result, Err) and result.error == error, result
            return
        assert isinstance(result, Ok), result
        if isinstance(self.model[path], ModelFile):
            expected = [path]
        else:
            expected = sorted(
                p for p in self.model if p != "/" and paths.split(p)[0] == path and p != path
            )
        assert [entry.path for entry in result.value] == expected
        for entry in result.value:
            self.check_entry(entry.path, entry)

    @rule(
        data=st.data(),
        how=spellings,
        start_after=st.sampled_from(["", "a", "b", "m", "z"]),
        limit=st.integers(1, 3),
    )
    def list_page(self, data: st.DataObject, how: int, start_after: str, limit: int) -> None:
        path = self.pick(data, list(self.model))
        error = self.walk_error(path) or (None if path in self.model else "FileNotFound")
        result = self.ns.list_page(spell(path, how), start_after=start_after, limit=limit)
        if error is not None:
            assert isinstance(result, Err) and result.error == error, result
            return
        assert isinstance(result, Ok), result
        if isinstance(self.model[path], ModelFile):
            listed = [path]
        else:
            listed = sorted(
                p for p in self.model if p != "/" and paths.split(p)[0] == path and p != path
            )
        after = [p for p in listed if not start_after or paths.split(p)[1] > start_after]
        assert [entry.path for entry in result.value.entries] == after[:limit]
        assert result.value.more == (len(after) > limit)
        for entry in result.value.entries:
            # What stat says of it (checked against the model), less the lease holder.
            stat = self.ns.stat(entry.path)
            assert isinstance(stat, Ok), stat
            fields = [field.name for field in attrs.fields(WireEntry)]
            assert entry == WireEntry(*(getattr(stat.value, name) for name in fields))

    @rule(
        data=st.data(),
        owner=st.sampled_from([None, "carol"]),
        group=st.sampled_from([None, "staff", "web"]),
        mode=modes,
    )
    def chown_and_chmod(
        self, data: st.DataObject, owner: str | None, group: str | None, mode: int
    ) -> None:
        path = self.pick(data, list(self.model))
        error = self.walk_error(path) or (None if path in self.model else "FileNotFound")
        common = self.common(CALLERS[2], False)
        self.apply(Chown(path, owner, group, **common), error)
        self.apply(Chmod(path, mode, **common), error)
        if error is None:
            entry = self.model[path]
            entry.owner = owner or entry.owner
            entry.group = group or entry.group
            entry.mode = mode

    @rule(seconds=st.sampled_from([0.5, 3.0, 20.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def snapshot_and_restore(self) -> None:
        copy = Namespace.restore(self.ns.snapshot())
        assert copy == self.ns
        self.ns = copy

    @precondition(lambda self: self.last_request is not None)
    @rule()
    def retry_last_request(self) -> None:
        assert self.last_request is not None
        op, first = self.last_request
        before = Namespace.restore(self.ns.snapshot())
        # A retry may reach a leader with a later clock; the first outcome still holds.
        again = self.ns.apply(attrs.evolve(op, now=self.now))
        assert again == first
        assert self.ns == before
        for replica in self.replicas:
            assert replica.apply(attrs.evolve(op, now=self.now)) == first

    @rule(junk=st.one_of(st.none(), st.integers(), st.text(max_size=5), st.tuples(st.text())))
    def junk_never_raises(self, junk: Any) -> None:
        # A replicated method that raised would wedge the whole group: whatever
        # reaches the log, every replica answers with an error value instead.
        before = Namespace.restore(self.ns.snapshot())
        log = NamespaceLog(self.ns)
        assert isinstance(log.apply(junk, _doApply=True), Err)  # as PySyncObj applies it
        assert self.ns == before

    # -- agreement -----------------------------------------------------------------------

    def check_entry(self, path: str, stat: Any) -> None:
        entry = self.model[path]
        assert stat.path == path
        assert (stat.owner, stat.group, stat.mode) == (entry.owner, entry.group, entry.mode)
        if isinstance(entry, ModelDir):
            assert stat.kind == "directory"
        else:
            assert stat.kind == "file"
            assert stat.length == entry.length
            assert stat.under_construction == entry.holder
            assert stat.complete == (entry.holder is None)

    @invariant()
    def every_replica_holds_the_same_namespace(self) -> None:
        for replica in self.replicas:
            assert replica == self.ns

    @invariant()
    def namespace_agrees_with_model(self) -> None:
        assert self.ns.verify() == []
        assert self.ns.entry_count == len(self.model)
        for path in self.model:
            result = self.ns.stat(path)
            assert isinstance(result, Ok), (path, result)
            self.check_entry(path, result.value)
        for path in self.model:
            entry = self.model[path]
            if isinstance(entry, ModelFile):
                chunks = self.ns.chunks(path)
                assert chunks == Ok(tuple(entry.chunks))
                for chunk in entry.chunks:
                    assert self.ns.chunk_version(chunk.chunk_id) == chunk.version
                    assert self.ns.chunk_file(chunk.chunk_id).path == path  # type: ignore[union-attr]
        for chunk_id in self.freed:
            assert self.ns.chunk_version(chunk_id) is None
        expired = sorted(
            path
            for path, entry in self.model.items()
            if isinstance(entry, ModelFile) and entry.holder and self.now >= entry.expires
        )
        assert [lease.path for lease in self.ns.expired_leases(self.now)] == expired
        assert self.ns.next_chunk_id == self.next_chunk


NamespaceMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestNamespaceAgainstModel = NamespaceMachine.TestCase
