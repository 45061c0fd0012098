"""Fixtures shared by the unit tests: the metaserver's owners over an in-memory log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from dfs.config import ReplicationConfig
from dfs.metaserver.backupfolder import BackupFolder
from dfs.metaserver.log import MemoryLog
from dfs.metaserver.registry import DataserverRegistry
from dfs.metaserver.service import Handlers, wire
from dfs.security.tokens import TokenIssuer, TokenKeys

#: The key the handlers' tokens are minted with in unit tests.
TOKEN_KEY = b"k" * 32


@pytest.fixture
def make_handlers(tmp_path: Path) -> Callable[..., Handlers]:
    """``make_handlers(clock, log=..., registry=..., keys=..., **replication settings)``:
    the owners wired as makeService wires them, over a :class:`MemoryLog`; backups go
    to ``tmp_path/backups``."""

    def make(
        clock: Clock,
        log: MemoryLog | None = None,
        registry: DataserverRegistry | None = None,
        session_for: Callable[[str], Any] = lambda name: None,
        lease_period: float = 60.0,
        keys: TokenKeys | None = None,
        **replication: Any,
    ) -> Handlers:
        log = log if log is not None else MemoryLog()
        backups = BackupFolder(clock, log, tmp_path / "backups")
        backups.startService()
        return wire(
            clock,
            log,
            registry if registry is not None else DataserverRegistry(dead_after=5.0),
            ReplicationConfig(**replication),
            TokenIssuer(keys or TokenKeys(TOKEN_KEY), 300.0),
            lease_period,
            session_for,
            backups,
        )

    return make
