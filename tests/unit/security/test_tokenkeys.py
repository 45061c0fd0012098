"""The token keys a server loads from security_config.json, and the ones it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfs.config import ConfigError, load_security_config
from dfs.security.tokenkeys import load_token_issuer, load_token_keys
from dfs.security.tokens import READ, TokenKeys


def security(tmp_path: Path, **keys: object) -> Path:
    path = tmp_path / "security_config.json"
    path.write_text(json.dumps(keys))
    return path


def secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_the_current_and_previous_keys_are_loaded(tmp_path: Path) -> None:
    secret(tmp_path / "token.key", "new")
    secret(tmp_path / "old.key", "old")
    config = load_security_config(
        security(tmp_path, token_previous_key_file="old.key", token_lifetime=20)
    )
    keys = load_token_keys(config)
    assert keys == TokenKeys(b"new", b"old")
    issuer = load_token_issuer(config)
    assert issuer.lifetime == 20
    old_token = TokenKeys(b"old").mint(1, 1, READ, "alice", 100)
    keys.verify(old_token, 1, 1, READ, "alice", 50)


@pytest.mark.parametrize(
    ("files", "key", "problem"),
    [
        ({}, "token_key_file", "No such file"),
        ({"token.key": 0o640}, "token_key_file", "lets its group"),
        ({"token.key": 0o600, "old.key": 0o604}, "token_previous_key_file", "other users"),
        ({"token.key": 0o600}, "token_previous_key_file", "No such file"),
    ],
)
def test_a_missing_or_exposed_key_is_refused_naming_the_key(
    tmp_path: Path, files: dict[str, int], key: str, problem: str
) -> None:
    for name, mode in files.items():
        secret(tmp_path / name, "k", mode)
    config = load_security_config(security(tmp_path, token_previous_key_file="old.key"))
    with pytest.raises(ConfigError) as caught:
        load_token_keys(config)
    assert f"key '{key}'" in str(caught.value)
    assert problem in str(caught.value)
