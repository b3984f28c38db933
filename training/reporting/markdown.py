"""Markdown table cells, shared by every generated report."""

from __future__ import annotations

from typing import Any


def fmt(v: Any, digits: int = 3) -> str:
    """A value for a table: `digits` decimals for a float, "-" for None, anything else as str."""
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)
