"""Loading the chunk token keys named in security_config.json.

Metaservers (which mint tokens) and dataservers (which check them) read the same
keys: ``token_key_file``, and during a rotation ``token_previous_key_file``. Each is
a secret file: missing, empty, or readable by group or others, the server refuses
to start (a ConfigError naming the file and the fix).
"""

from __future__ import annotations

from dfs.config import SecurityConfig
from dfs.security.secrets import read_secret
from dfs.security.tokens import TokenIssuer, TokenKeys


def load_token_keys(security: SecurityConfig) -> TokenKeys:
    source = str(security.source)
    current = read_secret(security.token_key_file, source, "token_key_file", "the token key")
    previous = None
    if security.token_previous_key_file is not None:
        previous = read_secret(
            security.token_previous_key_file,
            source,
            "token_previous_key_file",
            "the previous token key",
        )
    return TokenKeys(current, previous)


def load_token_issuer(security: SecurityConfig) -> TokenIssuer:
    return TokenIssuer(load_token_keys(security), security.token_lifetime)
