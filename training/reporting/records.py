"""Records of results files (docs/results.json, docs/research/study.json, ...): merging a new evaluation into them."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Hashable
from pathlib import Path
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


def merge_into(path: Path, new: list[Record], key: Callable[[Record], Hashable]) -> list[Record]:
    """Merge ``new`` into the JSON list of records at ``path`` (``replace_in_place``; a missing file is an empty
    list), write it back and return the merged list. The file is read just before it is written and replaced
    whole (through a temporary file of this process), so a reader never sees half a file."""
    old = json.loads(path.read_text()) if path.exists() else []
    merged = replace_in_place(old, new, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=1))
    tmp.replace(path)
    return merged


def command_line(recorded: str | None) -> str:
    """The command a record says made it: ``--command-line`` when given (a make target), else this process's."""
    return recorded or "dede " + " ".join(sys.argv[1:])


def require_bundles(paths: list[str]) -> None:
    for b in paths:
        if not (Path(b) / "manifest.json").is_file():
            raise FileNotFoundError(f"{b} is not a bundle (no manifest.json); build it first")


def publish_by_label(records: list[Record], head: Record, results: Path, report: Path,
                     write_report: Callable[[list[Record], Path], None]) -> list[Record]:
    """Every record with ``head`` (its ``label`` and provenance) merged into ``results`` in place of the label's
    earlier records, and ``report`` regenerated from the whole file -> the new records."""
    new = [{**head, **r} for r in records]
    write_report(merge_into(results, new, lambda r: r["label"]), report)
    return new
