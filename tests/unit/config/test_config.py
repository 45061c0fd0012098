"""The configuration layer: shipped examples, defaults, one-line errors, overrides, writing."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.config import (
    Address,
    ClientConfig,
    ConfigError,
    DataserverConfig,
    MetaserverConfig,
    ReplicationConfig,
    SecurityConfig,
    TLSFiles,
    load_client_config,
    load_dataserver_config,
    load_metaserver_config,
    load_replication_config,
    load_security_config,
    override,
    write_config,
)
from dfs.config.loader import to_json

ETC = Path(__file__).resolve().parents[3] / "etc"

FILES: dict[str, tuple[type, Callable[[str | Path], Any]]] = {
    "metaserver_config.json": (MetaserverConfig, load_metaserver_config),
    "dataserver_config.json": (DataserverConfig, load_dataserver_config),
    "client_config.json": (ClientConfig, load_client_config),
    "replication_config.json": (ReplicationConfig, load_replication_config),
    "security_config.json": (SecurityConfig, load_security_config),
}


def defaults_next_to(cls: type, folder: Path) -> Any:
    """The defaults of ``cls`` as loaded from a file in ``folder`` (relative paths resolved)."""
    config = cls()
    relative = {
        name: folder / value
        for name, value in attrs.asdict(config, recurse=False).items()
        if isinstance(value, Path) and not value.is_absolute()
    }
    return attrs.evolve(config, **relative)


def write(folder: Path, data: object, name: str = "dataserver_config.json") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def error_of(call: Callable[[], object]) -> tuple[ConfigError, str]:
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return caught.value, message


def load_error(folder: Path, data: object, name: str = "dataserver_config.json") -> str:
    path = write(folder, data, name)
    error, message = error_of(lambda: FILES[name][1](path))
    assert message.startswith(f"{path}: ")
    assert error.file == str(path)
    if error.key:
        assert f"'{error.key}'" in message
    return message


# --- the shipped examples ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FILES))
def test_shipped_example_holds_every_key_with_its_default(name: str) -> None:
    cls, _ = FILES[name]
    assert json.loads((ETC / name).read_text()) == to_json(cls())


@pytest.mark.parametrize("name", sorted(FILES))
def test_shipped_example_loads_to_the_defaults_with_paths_next_to_it(name: str) -> None:
    cls, load = FILES[name]
    config = load(ETC / name)
    assert config == defaults_next_to(cls, ETC)
    assert config.source == ETC / name


@pytest.mark.parametrize("name", sorted(FILES))
def test_empty_object_gives_the_defaults(tmp_path: Path, name: str) -> None:
    cls, load = FILES[name]
    assert load(write(tmp_path, {}, name)) == defaults_next_to(cls, tmp_path)


def test_metaserver_finds_the_other_files_next_to_its_own() -> None:
    config = load_metaserver_config(ETC / "metaserver_config.json")
    assert load_replication_config(config.replication_config) == ReplicationConfig()
    assert load_security_config(config.security_config).token_lifetime == 300.0


# --- whole-file problems ----------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    error, message = error_of(lambda: load_dataserver_config(path))
    assert message == f"{path}: not found"
    assert (error.file, error.key) == (str(path), "")


def test_bad_json_gives_line_and_column(tmp_path: Path) -> None:
    text = '{\n  "name": "ds1",\n  "listen" "0.0.0.0:7200"\n}\n'
    message = load_error(tmp_path, text)
    assert message.endswith(": line 3 column 12: invalid JSON (Expecting ':' delimiter)")


def test_file_that_is_not_text_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dataserver_config.json"
    path.write_bytes(b'{"name": "\xff"}')
    assert "not UTF-8" in error_of(lambda: load_dataserver_config(path))[1]


@pytest.mark.parametrize("data", [[1, 2], "x", 3, None])
def test_top_level_must_be_an_object(tmp_path: Path, data: object) -> None:
    message = load_error(tmp_path, json.dumps(data))
    assert message.endswith(f": expected a JSON object, got {data!r}")


# --- keys and values --------------------------------------------------------------------


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"heartbeat_intervall": 1})
    assert ": unknown key 'heartbeat_intervall' (did you mean 'heartbeat_interval'? " in message
    assert "known keys: name, listen, " in message


def test_unknown_key_without_a_close_one(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"zzz": 1})
    assert "unknown key 'zzz' (known keys: " in message
    assert "did you mean" not in message


def test_unknown_key_in_a_section_names_the_path(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"tls": {"cert": "a.crt"}}, "client_config.json")
    assert "unknown key 'tls.cert' (did you mean 'tls.certificate'? " in message


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        (
            "dataserver_config.json",
            {"reserved_space": "1"},
            "key 'reserved_space': expected an integer >= 0, got '1'",
        ),
        (
            "replication_config.json",
            {"default_replication": True},
            "key 'default_replication': expected an integer >= 1 and <= 32, got True",
        ),
        (
            "replication_config.json",
            {"chunk_size": 67108864.0},
            "key 'chunk_size': expected an integer",
        ),
        (
            "dataserver_config.json",
            {"direct_io": "yes"},
            "key 'direct_io': expected true or false, got 'yes'",
        ),
        (
            "dataserver_config.json",
            {"direct_io": 1},
            "key 'direct_io': expected true or false, got 1",
        ),
        (
            "dataserver_config.json",
            {"heartbeat_interval": False},
            "key 'heartbeat_interval': expected a number > 0 and <= 3600, got False",
        ),
        (
            "dataserver_config.json",
            {"metaservers": ["127.0.0.1:7000", 7001]},
            "key 'metaservers[1]': expected host:port, got 7001",
        ),
        (
            "dataserver_config.json",
            {"metaservers": "127.0.0.1:7000"},
            "key 'metaservers': expected a non-empty list of host:port",
        ),
        (
            "dataserver_config.json",
            {"listen": "7200"},
            "key 'listen': expected host:port, got '7200'",
        ),
        (
            "dataserver_config.json",
            {"advertise": "a b:1"},
            "key 'advertise': expected host:port or null, got 'a b:1'",
        ),
        ("dataserver_config.json", {"data_dir": ""}, "key 'data_dir': expected a path, got ''"),
        (
            "client_config.json",
            {"umask": 18},
            "key 'umask': expected 3 or 4 octal digits in a string",
        ),
        ("client_config.json", {"umask": "0x12"}, "key 'umask': expected 3 or 4 octal digits"),
        ("client_config.json", {"tls": {"ca": 5}}, "key 'tls.ca': expected a path, got 5"),
        ("client_config.json", {"tls": None}, "key 'tls': expected a JSON object, got None"),
        (
            "security_config.json",
            {"superusergroup": "wheel group"},
            "key 'superusergroup': expected 1 to 64 characters",
        ),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, name: str, data: object, expected: str) -> None:
    assert f": {expected}" in load_error(tmp_path, data, name)


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        (
            "dataserver_config.json",
            '{"heartbeat_interval": -1}',
            "key 'heartbeat_interval': expected a number > 0 and <= 3600, got -1",
        ),
        ("dataserver_config.json", '{"heartbeat_interval": 3601}', "got 3601"),
        ("dataserver_config.json", '{"heartbeat_interval": NaN}', "got nan"),
        ("dataserver_config.json", '{"heartbeat_interval": Infinity}', "got inf"),
        (
            "dataserver_config.json",
            '{"capacity": 0}',
            "key 'capacity': expected an integer > 0 or null, got 0",
        ),
        (
            "dataserver_config.json",
            '{"listen": "0.0.0.0:65536"}',
            "key 'listen': expected host:port",
        ),
        (
            "dataserver_config.json",
            '{"name": "' + "n" * 65 + '"}',
            "key 'name': expected 1 to 64 characters",
        ),
        (
            "dataserver_config.json",
            '{"metaservers": []}',
            "key 'metaservers': expected a non-empty list of host:port without duplicates, got []",
        ),
        (
            "dataserver_config.json",
            '{"metaservers": ["a:1", "a:1"]}',
            "key 'metaservers': expected a non-empty list",
        ),
        (
            "replication_config.json",
            '{"max_replication": 33}',
            "key 'max_replication': expected an integer >= 1 and <= 32, got 33",
        ),
        (
            "replication_config.json",
            '{"chunk_size": 65537}',
            "key 'chunk_size': expected an integer >= 65536 and <= 1073741824"
            " and a multiple of 65536, got 65537",
        ),
        ("replication_config.json", '{"chunk_size": 8589934592}', "key 'chunk_size'"),
        (
            "replication_config.json",
            '{"balancer_threshold": 100}',
            "key 'balancer_threshold': expected a number > 0 and < 100, got 100",
        ),
        (
            "replication_config.json",
            '{"safemode_threshold": 1.5}',
            "key 'safemode_threshold': expected a number >= 0 and <= 1",
        ),
        (
            "replication_config.json",
            '{"orphan_grace": -0.5}',
            "key 'orphan_grace': expected a number >= 0, got -0.5",
        ),
        (
            "security_config.json",
            '{"token_lifetime": 0}',
            "key 'token_lifetime': expected a number >= 10 and <= 86400, got 0",
        ),
    ],
)
def test_out_of_range_names_the_key(tmp_path: Path, name: str, data: str, expected: str) -> None:
    assert expected in load_error(tmp_path, data, name)


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        (
            "replication_config.json",
            {"min_replication": 4},
            "key 'min_replication': expected an integer <= default_replication (3), got 4",
        ),
        (
            "replication_config.json",
            {"max_replication": 2},
            "key 'default_replication': expected an integer <= max_replication (2), got 3",
        ),
        (
            "dataserver_config.json",
            {"capacity": 100, "reserved_space": 100},
            "key 'reserved_space': expected an integer < capacity (100), got 100",
        ),
    ],
)
def test_fields_checked_together(tmp_path: Path, name: str, data: object, expected: str) -> None:
    assert load_error(tmp_path, data, name).endswith(f": {expected}")


def test_integers_are_numbers_too(tmp_path: Path) -> None:
    config = load_dataserver_config(write(tmp_path, {"heartbeat_interval": 5}))
    assert config.heartbeat_interval == 5.0
    assert isinstance(config.heartbeat_interval, float)


def test_values_become_python_values(tmp_path: Path) -> None:
    data = {
        "metaservers": ["[::1]:7000", "meta-2.example.com:7001"],
        "umask": "0077",
        "tls": {"certificate": "alice.crt"},
    }
    config = load_client_config(write(tmp_path, data, "client_config.json"))
    assert config.metaservers == (Address("::1", 7000), Address("meta-2.example.com", 7001))
    assert config.umask == 0o077
    # The rest of a section given in part keeps its defaults.
    assert config.tls == TLSFiles(
        tmp_path / "alice.crt", Path("/etc/dfs/tls/client.key"), Path("/etc/dfs/tls/ca.crt")
    )


def test_relative_paths_resolve_against_the_files_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    data = {"data_dir": "../data", "tls": {"ca": "tls/ca.crt", "crl": "tls/ca.crl"}}
    path = write(tmp_path / "etc", data)
    config = load_dataserver_config(os.path.relpath(path))
    assert config.data_dir == tmp_path / "data"
    assert config.tls.ca == tmp_path / "etc" / "tls" / "ca.crt"
    assert config.tls.crl == tmp_path / "etc" / "tls" / "ca.crl"
    assert config.security_config == tmp_path / "etc" / "security_config.json"
    assert config.source == path


# --- command-line overrides -------------------------------------------------------------


def test_override_parses_like_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_dataserver_config(ETC / "dataserver_config.json")
    config = override(config, "listen", "127.0.0.1:0", "--listen")
    config = override(config, "data_dir", "state/ds", "--data-dir")
    config = override(config, "heartbeat_interval", "0.5", "--heartbeat-interval")
    config = override(config, "metaservers", "10.0.0.1:7000, [::1]:7000", "--metaservers")
    config = override(config, "http_listen", "", "--http-listen")
    config = override(config, "capacity", "8589934592", "--capacity")
    config = override(config, "tls.ca", "/srv/ca.crt", "--ca")
    assert config.listen == Address("127.0.0.1", 0)
    assert config.data_dir == tmp_path / "state" / "ds"
    assert config.heartbeat_interval == 0.5
    assert config.metaservers == (Address("10.0.0.1", 7000), Address("::1", 7000))
    assert config.http_listen is None
    assert config.capacity == 8589934592
    assert config.tls.ca == Path("/srv/ca.crt")
    assert config.source == ETC / "dataserver_config.json"


@pytest.mark.parametrize(
    ("key", "text", "option", "message"),
    [
        (
            "heartbeat_interval",
            "-1",
            "--heartbeat-interval",
            "option --heartbeat-interval: expected a number > 0 and <= 3600, got '-1'",
        ),
        (
            "heartbeat_interval",
            "soon",
            "--heartbeat-interval",
            "option --heartbeat-interval: expected a number > 0 and <= 3600, got 'soon'",
        ),
        ("listen", "abc", "--listen", "option --listen: expected host:port, got 'abc'"),
        (
            "metaservers",
            "a:1,b",
            "--metaservers",
            "option --metaservers: expected host:port, got 'b'",
        ),
        (
            "metaservers",
            "",
            "--metaservers",
            "option --metaservers: expected a non-empty list of host:port without duplicates,"
            " got ''",
        ),
        (
            "reserved_space",
            "1.5",
            "--reserved-space",
            "option --reserved-space: expected an integer >= 0, got '1.5'",
        ),
        (
            "direct_io",
            "maybe",
            "--direct-io",
            "option --direct-io: expected true or false, got 'maybe'",
        ),
        (
            "name",
            "a/b",
            "--name",
            "option --name: expected 1 to 64 characters from A-Z a-z 0-9 . _ -, "
            "not starting with . or -, got 'a/b'",
        ),
    ],
)
def test_override_errors_name_the_option(key: str, text: str, option: str, message: str) -> None:
    error, got = error_of(lambda: override(DataserverConfig(), key, text, option))
    assert got == message
    assert (error.file, error.key) == (option, "")


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("Yes", True), ("on", True), ("1", True), ("false", False), ("off", False)],
)
def test_override_of_a_flag(text: str, value: bool) -> None:
    config = DataserverConfig(direct_io=not value)
    assert override(config, "direct_io", text, "--direct-io").direct_io is value


def test_override_breaking_another_key_names_that_key() -> None:
    error, message = error_of(
        lambda: override(ReplicationConfig(), "max_replication", "2", "--max")
    )
    assert message == (
        "option --max: key 'default_replication': expected an integer <= max_replication (2), got 3"
    )
    assert error.key == "default_replication"
    _, message = error_of(lambda: override(ReplicationConfig(), "min_replication", "5", "--min"))
    assert message == "option --min: expected an integer <= default_replication (3), got '5'"


def test_override_of_an_undeclared_key_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        override(DataserverConfig(), "heartbeat", "1", "--heartbeat")


# --- writing ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FILES))
def test_write_then_load_gives_an_equal_config(tmp_path: Path, name: str) -> None:
    _, load = FILES[name]
    config = load(ETC / name)
    path = tmp_path / name
    write_config(config, path)
    assert load(path) == config
    text = path.read_text()
    assert text.endswith("}\n") and '\n  "' in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_write_keeps_the_umask_as_octal_text(tmp_path: Path) -> None:
    write_config(ClientConfig(umask=0o027), tmp_path / "client_config.json")
    assert json.loads((tmp_path / "client_config.json").read_text())["umask"] == "027"


def test_write_replaces_an_existing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "old", "replication_config.json")
    write_config(ReplicationConfig(default_replication=2), path)
    assert load_replication_config(path).default_replication == 2


hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}\.)*[a-z]{1,10}", fullmatch=True),
)
addresses = st.builds(Address, hosts, st.integers(0, 65535))
segments = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,11}", fullmatch=True)
absolute_paths = st.lists(segments, min_size=1, max_size=4).map(lambda parts: Path("/", *parts))
seconds = st.floats(min_value=0, max_value=3600, exclude_min=True)


@given(addresses)
def test_address_text_round_trip(address: Address) -> None:
    assert Address.parse(str(address)) == address


@pytest.mark.parametrize(
    "text", ["abc", "host:", ":80", "h:65536", "h:-1", "h:1x", "::1:80", "[zz]:1", "h :1", "[::1]"]
)
def test_address_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        Address.parse(text)


def test_address_shows_ipv6_in_brackets() -> None:
    assert str(Address.parse("[fe80::1]:0")) == "[fe80::1]:0"
    assert Address.parse("[fe80::1]:0") == Address("fe80::1", 0)


@given(
    name=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", fullmatch=True),
    listen=addresses,
    advertise=st.none() | addresses,
    metaservers=st.lists(addresses, min_size=1, max_size=4, unique=True),
    data_dir=absolute_paths,
    heartbeat_interval=seconds,
    reserved_space=st.integers(0, 2**40),
    capacity=st.none() | st.integers(2**40 + 1, 2**50),
    direct_io=st.booleans(),
    drop_behind_reads=st.booleans(),
    tls=st.builds(
        TLSFiles, absolute_paths, absolute_paths, absolute_paths, st.none() | absolute_paths
    ),
)
def test_any_dataserver_config_survives_write_and_load(**values: Any) -> None:
    config = DataserverConfig(**values, security_config=Path("/etc/dfs/security_config.json"))
    with tempfile.TemporaryDirectory() as folder:
        write_config(config, Path(folder) / "ds.json")
        assert load_dataserver_config(Path(folder) / "ds.json") == config


@given(
    replication=st.lists(st.integers(1, 32), min_size=3, max_size=3).map(sorted),
    chunk_size=st.integers(1, 16384).map(lambda n: n * 65536),
    balancer_threshold=st.floats(min_value=0, max_value=100, exclude_min=True, exclude_max=True),
    safemode_threshold=st.floats(min_value=0, max_value=1),
    orphan_grace=st.floats(min_value=0, max_value=1e9),
)
def test_any_replication_config_survives_write_and_load(
    replication: list[int], **values: Any
) -> None:
    low, middle, high = replication
    config = ReplicationConfig(
        min_replication=low, default_replication=middle, max_replication=high, **values
    )
    with tempfile.TemporaryDirectory() as folder:
        write_config(config, Path(folder) / "r.json")
        assert load_replication_config(Path(folder) / "r.json") == config


# --- TLS files --------------------------------------------------------------------------


def test_tls_check_names_the_missing_file(tmp_path: Path) -> None:
    for name in ("a.crt", "a.key", "ca.crt"):
        (tmp_path / name).write_text("pem")
    tls = TLSFiles(tmp_path / "a.crt", tmp_path / "a.key", tmp_path / "ca.crt")
    tls.check("/etc/dfs/client_config.json")  # all there, no CRL: nothing to say

    missing = TLSFiles(tmp_path / "a.crt", tmp_path / "gone.key", tmp_path / "ca.crt")
    error, message = error_of(lambda: missing.check("/etc/dfs/client_config.json"))
    assert message == (
        f"/etc/dfs/client_config.json: key 'tls.key': expected an existing readable file, "
        f"got '{tmp_path / 'gone.key'}'"
    )
    assert (error.key, error.expected) == ("tls.key", "an existing readable file")

    folder_as_crl = TLSFiles(tls.certificate, tls.key, tls.ca, crl=tmp_path)
    error, _ = error_of(lambda: folder_as_crl.check("x.json", section="admin_tls"))
    assert error.key == "admin_tls.crl"


def test_constructing_an_inconsistent_config_in_code_fails_too() -> None:
    with pytest.raises(ValueError, match="min_replication"):
        ReplicationConfig(min_replication=5)
