"""Sizes as people read them: 1.5K, 20.0M (powers of 1024, like ls -h)."""

from __future__ import annotations


def human(size: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if abs(size) < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}P"
