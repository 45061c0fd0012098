"""Path rules: the one validator and the arithmetic on canonical paths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.protocol import paths
from dfs.protocol.errors import InvalidPath


@pytest.mark.parametrize(
    ("given_path", "canonical"),
    [
        ("/", "/"),
        ("//", "/"),
        ("/a", "/a"),
        ("/a/", "/a"),
        ("/a//b///c/", "/a/b/c"),
        ("/./a/./b/.", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/a/..", "/"),
        ("/a/b/../../c/..", "/"),
        ("/a/.../b", "/a/.../b"),
        ("/a/..b/.c", "/a/..b/.c"),
        ("/ünïcødé/ファイル", "/ünïcødé/ファイル"),
        ("/with space/tab\there", "/with space/tab\there"),
    ],
)
def test_normalize_gives_the_canonical_form(given_path: str, canonical: str) -> None:
    assert paths.normalize(given_path) == canonical


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "not absolute"),
        ("a/b", "not absolute"),
        ("./a", "not absolute"),
        ("/a\x00b", "NUL"),
        ("/..", "above the root"),
        ("/a/../..", "above the root"),
        ("/../a", "above the root"),
        ("/" + "x" * 256, "component of 256 bytes"),
        ("/" + "é" * 128, "component of 256 bytes"),
        ("/" + "/".join(["x" * 200] * 21), "bytes long"),
        ("/a\udc80", "not valid Unicode"),
    ],
)
def test_normalize_refuses_bad_paths_saying_why(bad: str, reason: str) -> None:
    with pytest.raises(InvalidPath, match=reason):
        paths.normalize(bad)


@pytest.mark.parametrize("bad", [None, b"/a", 7, ["/a"]])
def test_normalize_refuses_what_is_not_a_string(bad: object) -> None:
    with pytest.raises(InvalidPath, match="must be a string"):
        paths.normalize(bad)  # type: ignore[arg-type]


def test_limits_are_counted_in_utf8_bytes() -> None:
    assert paths.normalize("/" + "x" * 255) == "/" + "x" * 255
    assert paths.normalize("/" + "é" * 127) == "/" + "é" * 127
    longest = "/" + "/".join(["x" * 255] * 16)[: paths.MAX_PATH_BYTES - 1]
    assert len(longest.encode()) == paths.MAX_PATH_BYTES
    assert paths.normalize(longest) == longest.rstrip("/")
    with pytest.raises(InvalidPath):
        paths.normalize(longest + "x")


def test_message_of_a_huge_path_stays_short() -> None:
    with pytest.raises(InvalidPath) as caught:
        paths.normalize("/" + "x" * 5000)
    assert len(str(caught.value)) < 200
    assert "\n" not in str(caught.value)


def test_split_components_and_join() -> None:
    assert paths.split("/") == ("/", "")
    assert paths.split("/a") == ("/", "a")
    assert paths.split("/a/b/c") == ("/a/b", "c")
    assert paths.components("/") == []
    assert paths.components("/a/b") == ["a", "b"]
    assert paths.join("/", "a") == "/a"
    assert paths.join("/a", "b") == "/a/b"


def test_is_ancestor_compares_whole_components() -> None:
    assert paths.is_ancestor("/", "/")
    assert paths.is_ancestor("/", "/a/b")
    assert paths.is_ancestor("/a", "/a")
    assert paths.is_ancestor("/a", "/a/b")
    assert not paths.is_ancestor("/a", "/ab")
    assert not paths.is_ancestor("/a/b", "/a")
    assert not paths.is_ancestor("/a", "/")


# -- properties --------------------------------------------------------------------

names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\x00"),
    min_size=1,
    max_size=8,
).filter(lambda name: name not in (".", ".."))
canonical_paths = st.lists(names, max_size=6).map(lambda parts: "/" + "/".join(parts))
# Spellings that every canonical path may arrive in.
noise = st.sampled_from(["", "/", "//", "/.", "/./", "/x/..", "/./y/../"])


@given(st.text(max_size=40))
def test_normalize_is_idempotent_or_refuses(text: str) -> None:
    try:
        once = paths.normalize(text)
    except InvalidPath:
        return
    assert paths.normalize(once) == once
    assert once == "/" or not once.endswith("/")
    assert "//" not in once
    assert all(part not in ("", ".", "..") for part in paths.components(once))


@given(st.lists(st.tuples(names, noise), max_size=6))
def test_noisy_spellings_normalize_to_the_same_path(parts: list[tuple[str, str]]) -> None:
    canonical = "/" + "/".join(name for name, _ in parts)
    noisy = "/" + "".join(name + extra + "/" for name, extra in parts)
    assert paths.normalize(noisy) == canonical


@given(canonical_paths)
def test_split_then_join_gives_the_path_back(path: str) -> None:
    parent, name = paths.split(path)
    if path == "/":
        assert (parent, name) == ("/", "")
    else:
        assert paths.join(parent, name) == path
        assert paths.components(path) == [*paths.components(parent), name]


@given(canonical_paths, canonical_paths)
def test_is_ancestor_agrees_with_components(a: str, b: str) -> None:
    prefix = paths.components(a)
    assert paths.is_ancestor(a, b) == (paths.components(b)[: len(prefix)] == prefix)


# -- resolving what a person typed against a working directory (client side)


@pytest.mark.parametrize(
    ("cwd", "path", "resolved"),
    [
        ("/", "a", "/a"),
        ("/data", "logs/app.log", "/data/logs/app.log"),
        ("/data", ".", "/data"),
        ("/data", "", "/data"),
        ("/data/logs", "..", "/data"),
        ("/data", "../other/./x/", "/other/x"),
        ("/", "..", "/"),
        ("/a", "../../..", "/"),
        ("/data", "/abs//path/", "/abs/path"),
        ("/data", "/a/b/../c", "/a/c"),
        ("/", "//a", "/a"),
    ],
)
def test_resolve_takes_relative_paths_from_the_working_directory(cwd, path, resolved):
    assert paths.resolve(cwd, path) == resolved


@pytest.mark.parametrize("path", ["/..", "/../escape", "/up/../.."])
def test_an_absolute_path_above_the_root_is_left_for_the_metaserver_to_refuse(path):
    assert paths.resolve("/data", path) == path


names = st.sampled_from(["a", "b", ".", "..", ""])


@given(st.lists(names, max_size=8), st.lists(names, max_size=8))
def test_a_relative_path_always_resolves_to_an_absolute_normal_path(cwd_parts, parts):
    cwd = paths.resolve("/", "/".join(cwd_parts))
    resolved = paths.resolve(cwd, "/".join(parts).lstrip("/"))
    assert resolved.startswith("/") and "//" not in resolved
    assert resolved == "/" or not resolved.endswith("/")
    assert not {".", ".."} & set(resolved.split("/"))


@given(st.lists(names, max_size=8))
def test_an_absolute_path_resolves_as_the_metaserver_normalizes_it(parts):
    path = "/" + "/".join(parts)
    try:
        canonical = paths.normalize(path)
    except InvalidPath:
        assert paths.resolve("/data", path) == path
    else:
        assert paths.resolve("/data", path) == canonical
