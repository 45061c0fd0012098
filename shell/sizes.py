"""Sizes as people read them: 1.5K, 20.0M (powers of 1024, like ls -h)."""

from __future__ import annotations


def human(size: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if abs(size) < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}P"


_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``512K``, ``1.5G``, ``10T`` (powers of 1024, an
    optional trailing B or iB); ValueError with the reason otherwise."""
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B") or "B"
    unit = cleaned[-1] if cleaned[-1] in _UNITS else ""
    number = cleaned[: len(cleaned) - len(unit)] if unit else cleaned
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size such as 1048576, 512K, 1.5G or 10T") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a size: it must be 0 or more")
    return int(value * _UNITS[unit])
