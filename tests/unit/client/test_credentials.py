"""A client's credentials from its config: unreadable files and unusable revocation
lists are configuration errors naming the key; a usable list refuses what it lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfs.client.connection import ClientCredentials
from dfs.config import ConfigError, load_client_config
from dfs.protocol.session import SessionRegistry
from dfs.security.ca import CertificateAuthority
from dfs.security.identity import Role

HOST = "127.0.0.1"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


def client_config(tmp_path: Path, authority: CertificateAuthority, **tls: str | None) -> Path:
    issued = authority.issue(Role.CLIENT, "alice", out_dir=tmp_path / "alice")
    files: dict[str, str | None] = {
        "certificate": str(issued.certificate_path),
        "key": str(issued.key_path),
        "ca": str(authority.certificate_path),
        "crl": None,
    }
    files.update(tls)
    path = tmp_path / "client_config.json"
    path.write_text(json.dumps({"metaservers": [f"{HOST}:7000"], "tls": files}))
    return path


@pytest.mark.parametrize("key", ["certificate", "key", "ca"])
def test_a_missing_file_is_a_config_error_naming_its_key(tmp_path, ca, key):
    missing = str(tmp_path / "nowhere.pem")
    config = load_client_config(client_config(tmp_path, ca, **{key: missing}))
    with pytest.raises(ConfigError) as raised:
        ClientCredentials.from_config(config)
    assert raised.value.key == f"tls.{key}"
    assert missing in str(raised.value)


def test_without_a_crl_no_server_is_checked(tmp_path, ca):
    credentials = ClientCredentials.from_config(load_client_config(client_config(tmp_path, ca)))
    assert credentials.credentials.attachment is None


def test_a_crl_refuses_the_servers_it_lists(tmp_path, ca):
    meta1 = ca.issue(Role.METASERVER, "meta1", [HOST], out_dir=tmp_path / "meta1")
    meta2 = ca.issue(Role.METASERVER, "meta2", [HOST], out_dir=tmp_path / "meta2")
    ca.revoke("meta1")
    config = load_client_config(client_config(tmp_path, ca, crl=str(ca.crl_path)))
    registry = ClientCredentials.from_config(config).credentials.attachment
    assert isinstance(registry, SessionRegistry)
    refusal = registry.admit(object(), meta1.certificate)
    assert refusal is not None and refusal.startswith("certificate revoked")
    assert registry.admit(object(), meta2.certificate) is None


@pytest.mark.parametrize("content", [b"not a CRL\n", None])
def test_an_unusable_crl_is_a_config_error_naming_tls_crl(tmp_path, ca, content):
    if content is None:
        # A CRL signed by another CA.
        other = CertificateAuthority.create(tmp_path / "other")
        crl = other.crl_path
    else:
        crl = tmp_path / "crl.pem"
        crl.write_bytes(content)
    config = load_client_config(client_config(tmp_path, ca, crl=str(crl)))
    with pytest.raises(ConfigError) as raised:
        ClientCredentials.from_config(config)
    assert raised.value.key == "tls.crl"
    assert "CRL signed by the cluster CA" in str(raised.value)
