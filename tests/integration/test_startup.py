"""Start-up of the real daemons: a bad configuration stops them before they listen,
with one line naming the file (or option), the key and what was expected."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from dfs.localcluster import LocalCluster, free_ports, twistd_argv

EX_CONFIG = 78


@pytest.fixture
def created(tmp_path) -> LocalCluster:
    """A cluster laid out on disk but not started."""
    return LocalCluster.create(tmp_path / "cluster", dataservers=1)


def run_twistd(*arguments: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        twistd_argv("--nodaemon", "--pidfile=", *arguments),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def edit_config(path, **changes) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def assert_one_line_refusal(result, *fragments: str) -> None:
    assert result.returncode == EX_CONFIG, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_twistd_lists_both_plugins():
    result = run_twistd("--help")
    assert result.returncode == 0
    assert "dfs-meta" in result.stdout and "dfs-data" in result.stdout


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("{", ["line 1 column 2", "invalid JSON"]),
        ("[]", ["expected", "object"]),
        ({"heartbeat_intervall": 1}, ["unknown key 'heartbeat_intervall'", "heartbeat_interval"]),
        ({"heartbeat_interval": "fast"}, ["key 'heartbeat_interval'", "expected a number"]),
        ({"heartbeat_interval": -1}, ["key 'heartbeat_interval'", "> 0", "got -1"]),
        ({"metaservers": ["nowhere"]}, ["key 'metaservers", "host:port"]),
        ({"tls": {"certificate": "missing.crt"}}, ["key 'tls.certificate'", "existing"]),
    ],
)
def test_a_bad_dataserver_config_stops_it_before_it_listens(created, content, fragments):
    node = created.dataservers[0]
    if isinstance(content, dict):  # keys changed in a valid file
        edit_config(node.config_path, **content)
    else:  # the whole file replaced
        node.config_path.write_text(content)
    result = run_twistd("dfs-data", "--config", str(node.config_path), cwd=node.directory)
    assert_one_line_refusal(
        result, "dfs-data: configuration error:", str(node.config_path), *fragments
    )
    assert port_is_free(node.listen_port)


def test_a_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.json"
    result = run_twistd("dfs-meta", "--config", str(missing))
    assert_one_line_refusal(result, str(missing), "not found")


def test_a_bad_option_is_named(created):
    node = created.metaservers[0]
    result = run_twistd("dfs-meta", "--config", str(node.config_path), "--listen", "nowhere")
    assert_one_line_refusal(result, "option --listen", "host:port", "'nowhere'")


def test_a_certificate_of_the_wrong_role_is_refused(created):
    node = created.dataservers[0]
    client = created.directory / "client"
    edit_config(
        node.config_path,
        tls={
            "certificate": str(client / "admin.crt"),
            "key": str(client / "admin.key"),
            "ca": str(created.directory / "ca" / "ca.crt"),
        },
    )
    result = run_twistd("dfs-data", "--config", str(node.config_path))
    assert_one_line_refusal(
        result, "key 'tls.certificate'", "a dataserver certificate", "admin:admin"
    )


def test_a_name_that_is_not_the_certificates_is_refused(created):
    node = created.metaservers[0]
    result = run_twistd("dfs-meta", "--config", str(node.config_path), "--name", "meta9")
    assert_one_line_refusal(result, "key 'name'", "'meta1'", "'meta9'")


def test_options_override_the_file(created):
    """--listen and --http-listen win over the file: the node answers on the new ports."""
    node = created.metaservers[0]
    listen, http = free_ports(2)
    process = subprocess.Popen(
        twistd_argv(
            "--nodaemon",
            "--pidfile",
            "",
            "--logfile",
            str(node.directory / "override.log"),
            "dfs-meta",
            "--config",
            str(node.config_path),
            "--listen",
            f"127.0.0.1:{listen}",
            "--http-listen",
            f"127.0.0.1:{http}",
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        import time
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=1):
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "the node never answered on the new port"
                time.sleep(0.05)
        assert not port_is_free(listen)
        assert port_is_free(node.listen_port)
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_a_port_in_use_stops_the_daemon_with_one_line(created):
    node = created.metaservers[0]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.listen_port))
        squatter.listen()
        result = run_twistd("dfs-meta", "--config", str(node.config_path))
    assert result.returncode == 71, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"dfs-meta: error: cannot listen on {node.address}: Address already in use"]


def test_a_wildcard_listen_address_needs_an_advertised_address(created):
    node = created.dataservers[0]
    result = run_twistd(
        "dfs-data", "--config", str(node.config_path), "--listen", f"0.0.0.0:{node.listen_port}"
    )
    assert_one_line_refusal(result, "key 'advertise'", "wildcard")


@pytest.mark.parametrize(
    ("program", "secret", "key"),
    [
        ("dfs-meta", "meta1/meta1.key", "key 'tls.key'"),
        ("dfs-data", "ds1/ds1.key", "key 'tls.key'"),
        ("dfs-meta", "shared/raft.password", "key 'raft_password_file'"),
        ("dfs-meta", "shared/token.key", "key 'token_key_file'"),
        ("dfs-data", "shared/token.key", "key 'token_key_file'"),
    ],
)
def test_a_secret_others_can_read_stops_the_server_naming_the_fix(created, program, secret, key):
    path = created.directory / secret
    path.chmod(0o640)
    node = created.metaservers[0] if program == "dfs-meta" else created.dataservers[0]
    result = run_twistd(program, "--config", str(node.config_path), cwd=node.directory)
    assert_one_line_refusal(
        result,
        f"{program}: configuration error:",
        key,
        f"run: chmod 600 {path}",
        "mode 0640 lets its group use it",
    )
    assert port_is_free(node.listen_port)


def test_a_pysyncobj_lacking_a_name_dfs_relies_on_stops_the_metaserver_with_one_line(created):
    node = created.metaservers[0]
    argv = twistd_argv("--nodaemon", "--pidfile=", "dfs-meta", "--config", str(node.config_path))
    # twistd as it would run under a PySyncObj release that renamed a method DFS replaces.
    argv[2] = "import pysyncobj.syncobj as s; del s.SyncObj._SyncObj__loadDumpFile; " + argv[2]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 70, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "dfs-meta: error: pysyncobj 0.3.17 is not supported: missing "
        "SyncObj._SyncObj__loadDumpFile; DFS needs pysyncobj 0.3.17"
    ), lines[0]
    assert not (node.directory / "data" / "raft" / "raft.journal").exists()
