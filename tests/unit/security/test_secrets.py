"""Secret files readable by anyone but their owner are refused, naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfs.config import ConfigError
from dfs.security.secrets import check_private, exposure, read_secret


def _secret(tmp_path: Path, mode: int, text: str = "s3cret\n") -> Path:
    path = tmp_path / "token.key"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_files_are_accepted(tmp_path: Path, mode: int) -> None:
    path = _secret(tmp_path, mode)
    assert exposure(path) is None
    assert read_secret(path, "security_config.json", "token_key_file", "the token key") == b"s3cret"


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o640, "its group"), (0o604, "other users"), (0o644, "its group and other users")],
)
def test_a_secret_others_can_read_is_refused_with_the_fix(
    tmp_path: Path, mode: int, who: str
) -> None:
    path = _secret(tmp_path, mode)
    with pytest.raises(ConfigError) as caught:
        read_secret(path, "/etc/dfs/security_config.json", "token_key_file", "the token key")
    message = str(caught.value)
    assert message.startswith("/etc/dfs/security_config.json: key 'token_key_file': ")
    assert f"run: chmod 600 {path}" in message
    assert f"mode {mode:04o} lets {who} use it" in message


def test_a_group_writable_secret_is_refused_too(tmp_path: Path) -> None:
    path = _secret(tmp_path, 0o620)
    with pytest.raises(ConfigError, match="lets its group use it"):
        check_private(path, "dataserver_config.json", "tls.key", "the private key")


def test_a_missing_or_empty_secret_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file or directory"):
        read_secret(tmp_path / "absent", "s.json", "raft_password_file", "the Raft password")
    empty = _secret(tmp_path, 0o600, "\n")
    with pytest.raises(ConfigError, match="an empty file"):
        read_secret(empty, "s.json", "raft_password_file", "the Raft password")
