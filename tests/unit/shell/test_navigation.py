"""What tree draws, from a tree of names alone."""

from __future__ import annotations

from dfs_shell.navigation import TreeNode, draw_tree, tree_summary


def directory(name: str, *children: TreeNode) -> TreeNode:
    return TreeNode(name, True, children)


def file(name: str) -> TreeNode:
    return TreeNode(name, False)


def test_tree_draws_box_lines_and_counts_what_is_below_the_root():
    root = directory(
        "/data",
        directory("logs", file("a.log"), directory("old", file("b.log"))),
        directory("empty"),
        file("readme.txt"),
    )
    assert list(draw_tree(root)) == [
        "/data",
        "├── logs",
        "│   ├── a.log",
        "│   └── old",
        "│       └── b.log",
        "├── empty",
        "└── readme.txt",
        "",
        "3 directories, 3 files",
    ]


def test_an_empty_directory_is_its_name_and_no_counts():
    assert list(draw_tree(directory("."))) == [".", "", "0 directories, 0 files"]


def test_the_summary_says_one_in_the_singular():
    assert tree_summary(1, 1) == "1 directory, 1 file"
    assert tree_summary(2, 0) == "2 directories, 0 files"
