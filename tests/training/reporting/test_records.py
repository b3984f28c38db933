"""Merging a new evaluation into a results file: replaced in place, nothing stale, nothing duplicated."""

from __future__ import annotations

import json
from pathlib import Path

from training.evaluation.evaluate import merge_records
from training.reporting.records import replace_in_place


def rec(bundle: str, attack: str, test: str, v: int) -> dict[str, object]:
    return {"bundle": bundle, "attack": attack, "preset": "cpu", "test": test, "v": v}


def test_new_records_take_the_place_of_the_first_record_they_replace() -> None:
    old = [{"k": "a", "v": 0}, {"k": "b", "v": 0}, {"k": "a", "v": 1}, {"k": "c", "v": 0}]
    new = [{"k": "c", "v": 2}, {"k": "d", "v": 2}, {"k": "a", "v": 2}, {"k": "a", "v": 3}]
    merged = replace_in_place(old, new, lambda r: r["k"])
    assert [(r["k"], r["v"]) for r in merged] == [("a", 2), ("a", 3), ("b", 0), ("c", 2), ("d", 2)]
    assert replace_in_place(old, [], lambda r: r["k"]) == old


def test_a_new_evaluation_replaces_its_records_in_place(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    merge_records(path, [rec("a", "badencoder", "balanced", 0), rec("a", "badencoder", "unbalanced-1%", 0),
                         rec("b", "none", "balanced", 0), rec("a", "badencoder", "honesty", 0)])
    merged = merge_records(path, [rec("a", "badencoder", "balanced", 1), rec("c", "none", "balanced", 1)])
    # bundle a's two detection records become the one new record, where they were; its honesty record is kept;
    # a bundle not evaluated before goes to the end
    assert [(r["bundle"], r["test"], r["v"]) for r in merged] == [
        ("a", "balanced", 1), ("b", "balanced", 0), ("a", "honesty", 0), ("c", "balanced", 1)]
    assert json.loads(path.read_text()) == merged


def test_merging_into_a_file_creates_it_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    from training.reporting.records import merge_into

    path = tmp_path / "docs" / "x.json"  # neither the file nor its folder exists yet
    assert merge_into(path, [{"k": "a", "v": 0}, {"k": "b", "v": 0}], lambda r: r["k"]) == json.loads(
        path.read_text())
    merged = merge_into(path, [{"k": "a", "v": 1}], lambda r: r["k"])
    assert merged == json.loads(path.read_text()) == [{"k": "a", "v": 1}, {"k": "b", "v": 0}]
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
