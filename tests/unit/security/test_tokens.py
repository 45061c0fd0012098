"""Chunk access tokens: what one grants, and every way one is refused."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.client.grants import ChunkGrant
from dfs.protocol.errors import InvalidToken
from dfs.security.tokens import (
    COPY,
    READ,
    WRITE,
    ChunkToken,
    TokenIssuer,
    TokenKeys,
    expiry,
    is_expired,
)

KEY = b"k" * 32
OLD_KEY = b"o" * 32
KEYS = TokenKeys(KEY)
NOW = 1_800_000_000.0

names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", fullmatch=True)
ids = st.integers(min_value=0, max_value=2**63 - 1)
operations = st.sampled_from([READ, WRITE, COPY])


@given(ids, ids, operations, names, st.floats(min_value=0, max_value=4e9))
def test_a_minted_token_grants_exactly_what_it_names(chunk_id, version, operation, user, expires):
    token = KEYS.mint(chunk_id, version, operation, user, expires)
    claims = KEYS.verify(token, chunk_id, version, operation, user, now=expires - 1)
    assert claims == ChunkToken(chunk_id, version, operation, user, claims.expires)
    assert claims.expires == math.ceil(expires)
    assert expiry(token) == claims.expires
    assert len(token) < 300


@given(st.text(max_size=600))
def test_any_text_is_refused_with_invalid_token_and_nothing_else(text):
    with pytest.raises(InvalidToken):
        KEYS.verify(text, 1, 1, READ, "alice", NOW)


@given(st.data())
def test_changing_any_character_of_a_token_makes_it_worthless(data):
    token = KEYS.mint(5, 2, WRITE, "alice", NOW + 60)
    position = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from("ABCabc012-_."))
    tampered = token[:position] + replacement + token[position + 1 :]
    if tampered != token:
        with pytest.raises(InvalidToken):
            KEYS.verify(tampered, 5, 2, WRITE, "alice", NOW)


GOOD = dict(chunk_id=5, version=2, operation=READ, user="alice")


def mint(keys: TokenKeys = KEYS, expires: float = NOW + 60, **changes: object) -> str:
    fields = {**GOOD, **changes}
    return keys.mint(
        fields["chunk_id"], fields["version"], fields["operation"], fields["user"], expires
    )


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "no token: read of chunk 5 needs a token from the metaserver"),
        ("", "no token: read of chunk 5 needs a token from the metaserver"),
        ("t1.abc", "malformed token: expected t1.<fields>.<mac>"),
        ("t1.!!.??", "malformed token: not base64url"),
        ("t1.YWJj.YWJj", "malformed token: its fields do not parse"),
        (mint(TokenKeys(b"not the cluster's key")), "forged token: not signed with a token key"),
        (mint(chunk_id=6), "wrong chunk: token is for chunk 6, not 5"),
        (mint(version=1), "wrong version: token is for chunk 5 version 1, not 2"),
        (mint(operation=WRITE), "wrong operation: token allows write, not read"),
        (mint(user="mallory"), "wrong user: token is for mallory, not alice"),
        (mint(expires=NOW - 3), "expired token: chunk 5 read token expired 3.0 s ago"),
    ],
)
def test_every_refusal_says_why(token, message):
    with pytest.raises(InvalidToken) as caught:
        KEYS.verify(token, 5, 2, READ, "alice", NOW)
    assert str(caught.value).startswith(message)
    assert is_expired(caught.value) == message.startswith("expired")


def test_a_forged_tokens_claims_are_not_looked_at():
    """A token signed with another key is forged, whatever else is wrong with it."""
    token = mint(TokenKeys(b"attacker"), chunk_id=99, expires=0)
    with pytest.raises(InvalidToken, match="forged"):
        KEYS.verify(token, 5, 2, READ, "alice", NOW)


def test_a_token_expires_at_the_second_it_names():
    token = mint(expires=NOW)
    KEYS.verify(token, 5, 2, READ, "alice", NOW - 0.001)
    with pytest.raises(InvalidToken, match="expired"):
        KEYS.verify(token, 5, 2, READ, "alice", NOW)


def test_any_user_is_accepted_when_the_caller_checks_none():
    KEYS.verify(mint(user="bob"), 5, 2, READ, None, NOW)


def test_during_a_rotation_the_new_key_mints_and_both_verify():
    rotated = TokenKeys(KEY, previous=OLD_KEY)
    old_token = mint(TokenKeys(OLD_KEY))
    new_token = rotated.mint(5, 2, READ, "alice", NOW + 60)
    assert new_token == mint(KEYS)
    for token in (old_token, new_token):
        rotated.verify(token, 5, 2, READ, "alice", NOW)
    # Once the rotation is over, the old key's tokens are worthless.
    with pytest.raises(InvalidToken, match="forged"):
        KEYS.verify(old_token, 5, 2, READ, "alice", NOW)


def test_keys_do_not_show_in_a_repr_and_an_empty_one_is_refused():
    assert "k" * 32 not in repr(TokenKeys(KEY, OLD_KEY))
    with pytest.raises(ValueError):
        TokenKeys(b"")


def test_minting_refuses_an_unknown_operation_or_a_name_a_token_cannot_carry():
    with pytest.raises(ValueError):
        KEYS.mint(5, 2, "delete", "alice", NOW)
    with pytest.raises(ValueError):
        KEYS.mint(5, 2, READ, "al:ice", NOW)


def test_the_issuer_gives_tokens_its_lifetime_unless_told_otherwise():
    issuer = TokenIssuer(KEYS, lifetime=300)
    assert expiry(issuer.issue(5, 2, READ, "alice", NOW)) == NOW + 300
    assert expiry(issuer.issue(5, 2, COPY, "ds1", NOW, lifetime=900)) == NOW + 900
    assert expiry("not a token") is None


def test_a_client_renews_within_a_margin_of_expiry_and_not_in_a_storm():
    grant = ChunkGrant(mint(expires=NOW + 300), received=NOW)
    assert not grant.renewal_due(NOW + 280)
    assert grant.renewal_due(NOW + 291)
    # A short lifetime: a quarter of it.
    short = ChunkGrant(mint(expires=NOW + 12), received=NOW)
    assert not short.renewal_due(NOW + 8)
    assert short.renewal_due(NOW + 9.5)
    # This clock runs far ahead of the metaserver's: every token looks nearly out,
    # yet a renewal is due only a margin after the last one.
    skewed = ChunkGrant(mint(expires=NOW + 300), received=NOW + 1000)
    assert not skewed.renewal_due(NOW + 1005)
    assert skewed.renewal_due(NOW + 1010)
