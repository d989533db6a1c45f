"""Argument checks shared by every module, so each rule and its message exist once."""

from __future__ import annotations


def positive_int(name: str, value) -> int:
    """``value`` if it is an int >= 1 (a bool is not), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
