"""Records of results files (docs/results.json, docs/study.json): merging a new evaluation into them."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

Record = dict[str, Any]


def replace_in_place(old: list[Record], new: list[Record], key: Callable[[Record], Hashable]) -> list[Record]:
    """``new`` replaces every old record with the same ``key``. The new records of a key take the place of the
    first old record they replace, so that the file's order (and its diff) stays stable; records of a key not
    seen before go to the end, in their order."""
    fresh: dict[Hashable, list[Record]] = {}
    for r in new:
        fresh.setdefault(key(r), []).append(r)
    replaced = set(fresh)
    merged: list[Record] = []
    for r in old:
        if key(r) not in replaced:
            merged.append(r)
        else:  # the first old record of a replaced key gets the new records; the key's other old records go
            merged += fresh.pop(key(r), [])
    return merged + [r for recs in fresh.values() for r in recs]
