"""The permission matrix: DFS decides as a Linux file system does.

For each operation, each representative mode and each kind of caller (the owner, a
member of the file's group, anyone else, a superuser), the same step is taken on a
real cluster and on a local directory by a process running under unprivileged uids
and gids with the same ownership, and the outcomes (allowed, denied, or another
error) must agree cell for cell. Switching ids takes root: CI runs as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from dfs.client.client import DFSClient
from dfs.config import load_client_config
from dfs.localcluster import LocalCluster
from dfs.protocol.errors import DFSError, PermissionDenied

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to other uids and gids needs root (CI runs as root)"
)

# Linux ids of the people in the matrix; their DFS names are the keys.
UIDS = {"alice": 61001, "bob": 61002, "carol": 61003, "dave": 61004}
GIDS = {"team": 61010, "crew": 61011, "outsiders": 61012}
PRIMARY = {"alice": 61021, "bob": 61022, "carol": 61023}
# Who is in which group, the same on both sides. alice owns every entry under test
# (dave owns the "foreign" ones), and team is their group.
MEMBERS = {"team": ["alice", "bob"], "crew": ["alice", "bob"], "outsiders": ["dave"]}
CALLERS = ("owner", "member", "other", "superuser")
USER_OF = {"owner": "alice", "member": "bob", "other": "carol", "superuser": "admin"}

# The triple of each class alone, then common modes, then the sticky bit.
MODES = sorted(
    {value << shift for shift in (6, 3, 0) for value in range(8)}
    | {0o777, 0o755, 0o750, 0o711, 0o644, 0o640}
    | {0o1777, 0o1770, 0o1733, 0o1755}
)

# operation -> which entry carries the mode under test: the directory "d" or the
# file "d/f". The other one is 0755 (directory) or 0644 (file).
OPERATIONS = {
    "stat": "d",
    "list": "d",
    "read": "f",
    "write": "f",
    "create": "d",
    "mkdir": "d",
    "delete": "d",
    "delete-foreign": "d",
    "rmdir": "d",
    "rename-out": "d",
    "rename-out-foreign": "d",
    "rename-in": "d",
    "chmod": "f",
    "chown": "f",
    "chgrp": "f",
    "chgrp-foreign": "f",
}


@attrs.frozen
class Cell:
    operation: str
    mode: int
    caller: str

    @property
    def name(self) -> str:
        return f"{self.operation}-{self.mode:04o}-{self.caller}"

    @property
    def dir_mode(self) -> int:
        return self.mode if OPERATIONS[self.operation] == "d" else 0o755

    @property
    def file_mode(self) -> int:
        return self.mode if OPERATIONS[self.operation] == "f" else 0o644

    @property
    def file_owner(self) -> str:
        return (
            "dave"
            if self.operation.endswith("-foreign") and "chgrp" not in self.operation
            else "alice"
        )


CELLS = [Cell(op, mode, caller) for op in OPERATIONS for mode in MODES for caller in CALLERS]


# -- the same step, on Linux --------------------------------------------------------

# Runs in a child process under the caller's ids: takes each cell's step on its own
# fixture and prints {cell name: outcome}.
LINUX_STEPS = r"""
import errno, json, os, sys
cells, ids = json.load(open(sys.argv[1]))
outcomes = {}
for name, operation, base in cells:
    d, f = base + "/d", base + "/d/f"
    try:
        if operation == "stat":
            os.stat(f)
        elif operation == "list":
            os.listdir(d)
        elif operation == "read":
            with open(f, "rb") as handle:
                handle.read()
        elif operation == "write":
            os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))
        elif operation == "create":
            os.close(os.open(d + "/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        elif operation == "mkdir":
            os.mkdir(d + "/new")
        elif operation in ("delete", "delete-foreign"):
            os.unlink(f)
        elif operation == "rmdir":
            os.rmdir(d + "/e")
        elif operation in ("rename-out", "rename-out-foreign"):
            os.rename(f, base + "/o/f")
        elif operation == "rename-in":
            os.rename(base + "/o/g", d + "/g")
        elif operation == "chmod":
            os.chmod(f, 0o600)
        elif operation == "chown":
            os.chown(f, ids["dave"], -1)
        elif operation == "chgrp":
            os.chown(f, -1, ids["crew"])
        elif operation == "chgrp-foreign":
            os.chown(f, -1, ids["outsiders"])
        outcomes[name] = "ok"
    except PermissionError:
        outcomes[name] = "denied"
    except OSError as error:
        outcomes[name] = errno.errorcode.get(error.errno, str(error.errno))
print(json.dumps(outcomes))
"""


# The steps need only the standard library, and an interpreter the unprivileged ids
# can run: the virtualenv's may live in a folder only root can enter.
STEP_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def _linux_fixture(top: Path, cell: Cell) -> Path:
    base = top / cell.name
    d = base / "d"
    d.mkdir(parents=True)
    base.chmod(0o755)
    (d / "f").write_bytes(b"x")
    (d / "e").mkdir()
    os.chown(d / "e", UIDS["alice"], GIDS["team"])
    os.chown(d / "f", UIDS[cell.file_owner], GIDS["team"])
    os.chmod(d / "f", cell.file_mode)
    other = base / "o"
    other.mkdir()
    other.chmod(0o777)
    (other / "g").write_bytes(b"x")
    os.chown(other / "g", UIDS["alice"], GIDS["team"])
    os.chown(d, UIDS["alice"], GIDS["team"])
    os.chmod(d, cell.dir_mode)
    return base


def linux_outcomes(top: Path) -> dict[str, str]:
    for cell in CELLS:
        _linux_fixture(top, cell)
    outcomes: dict[str, str] = {}
    ids = {**UIDS, **GIDS}
    for caller in CALLERS:
        mine = [[c.name, c.operation, str(top / c.name)] for c in CELLS if c.caller == caller]
        plan = top / f"plan-{caller}.json"
        plan.write_text(json.dumps([mine, ids]))
        plan.chmod(0o644)
        if caller == "superuser":
            credentials: dict[str, Any] = {}
        else:
            user = USER_OF[caller]
            credentials = {
                "user": UIDS[user],
                "group": PRIMARY[user],
                "extra_groups": [GIDS[g] for g, names in MEMBERS.items() if user in names],
            }
        done = subprocess.run(
            [STEP_PYTHON, "-c", LINUX_STEPS, str(plan)],
            cwd=top,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            **credentials,
        )
        outcomes.update(json.loads(done.stdout))
    return outcomes


# -- the same step, on DFS ----------------------------------------------------------


async def batched(steps: list[Callable[[], Awaitable[Any]]], size: int = 48) -> list[Any]:
    """Run the steps ``size`` at a time: the metaserver commits them in groups."""
    results: list[Any] = []
    for start in range(0, len(steps), size):
        batch = [Deferred.fromCoroutine(step()) for step in steps[start : start + size]]  # type: ignore[arg-type]
        results += await gatherResults(batch, consumeErrors=True)
    return results


async def _empty_file(client: DFSClient, path: str) -> None:
    writer = await client.create(path)
    await writer.close()


async def _dfs_fixture(admin: DFSClient, cell: Cell) -> None:
    base = f"/matrix/{cell.name}"
    d = f"{base}/d"
    await admin.mkdir(d, parents=True, mode=0o755)
    await _empty_file(admin, f"{d}/f")
    await admin.mkdir(f"{d}/e")
    await admin.chown(f"{d}/e", "alice", "team")
    await admin.chown(f"{d}/f", cell.file_owner, "team")
    await admin.chmod(f"{d}/f", cell.file_mode)
    await admin.mkdir(f"{base}/o")
    await admin.chmod(f"{base}/o", 0o777)
    await _empty_file(admin, f"{base}/o/g")
    await admin.chown(f"{base}/o/g", "alice", "team")
    await admin.chown(d, "alice", "team")
    await admin.chmod(d, cell.dir_mode)


async def _dfs_step(client: DFSClient, cell: Cell) -> str:
    base = f"/matrix/{cell.name}"
    d, f = f"{base}/d", f"{base}/d/f"
    operation = cell.operation
    try:
        if operation == "stat":
            await client.stat(f)
        elif operation == "list":
            await client.listdir(d)
        elif operation == "read":
            await client.read_file(f)
        elif operation == "write":
            writer = await client.create(f, overwrite=True)
            await writer.close()
        elif operation == "create":
            await _empty_file(client, f"{d}/new")
        elif operation == "mkdir":
            await client.mkdir(f"{d}/new")
        elif operation in ("delete", "delete-foreign"):
            await client.delete(f)
        elif operation == "rmdir":
            await client.delete(f"{d}/e")
        elif operation in ("rename-out", "rename-out-foreign"):
            await client.rename(f, f"{base}/o/f")
        elif operation == "rename-in":
            await client.rename(f"{base}/o/g", f"{d}/g")
        elif operation == "chmod":
            await client.chmod(f, 0o600)
        elif operation == "chown":
            await client.chown(f, owner="dave")
        elif operation == "chgrp":
            await client.chown(f, group="crew")
        elif operation == "chgrp-foreign":
            await client.chown(f, group="outsiders")
    except PermissionDenied:
        return "denied"
    except DFSError as error:
        return type(error).__name__
    return "ok"


async def dfs_outcomes(cluster: LocalCluster) -> dict[str, str]:
    admin = await DFSClient.connect(reactor, load_client_config(cluster.client_config))
    clients = {"superuser": admin}
    try:
        for group, members in MEMBERS.items():
            await admin.group_add(group, members)
        await batched([lambda cell=cell: _dfs_fixture(admin, cell) for cell in CELLS])
        for caller in ("owner", "member", "other"):
            config = cluster.add_user(USER_OF[caller])
            clients[caller] = await DFSClient.connect(reactor, load_client_config(config))
        names = [cell.name for cell in CELLS]
        outcomes = await batched(
            [lambda cell=cell: _dfs_step(clients[cell.caller], cell) for cell in CELLS]
        )
        return dict(zip(names, outcomes, strict=True))
    finally:
        for client in clients.values():
            client.close()


@pytest.fixture
def linux_top() -> Any:
    # Not under pytest's tmp_path: its root folder is 0700, and the callers must reach it.
    top = Path(tempfile.mkdtemp(prefix="dfs-matrix-", dir="/tmp"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_every_cell_of_the_permission_matrix_agrees_with_linux(
    cluster: LocalCluster, linux_top: Path
) -> None:
    expected = linux_outcomes(linux_top)
    actual = await dfs_outcomes(cluster)
    assert set(expected) == set(actual) == {cell.name for cell in CELLS}
    differences = [
        f"{name}: Linux {expected[name]}, DFS {actual[name]}"
        for name in sorted(expected)
        if expected[name] != actual[name]
    ]
    denied = sum(outcome == "denied" for outcome in expected.values())
    print(
        f"\nREPORT permission matrix: {len(OPERATIONS)} operations x {len(MODES)} modes x "
        f"{len(CALLERS)} callers = {len(CELLS)} cells compared with Linux "
        f"({denied} denied, {len(CELLS) - denied} allowed), {len(differences)} differ"
    )
    assert not differences, "\n".join(differences[:60])
