"""Where ``dede evaluate`` writes: a run folder of its own by default, the committed docs/ only when asked."""

from pathlib import Path

import pytest

from training.evaluation.evaluate import PUBLISHED, output_paths


def test_by_default_a_run_folder_named_after_the_bundle_never_docs() -> None:
    results, report = output_paths("my-encoder", None, publish=False)
    root = Path("runs/evaluate/my-encoder")
    assert (results, report) == (root / "results.json", root / "RESULTS.md")
    assert output_paths("x", "out/eval", publish=False)[0] == Path("out/eval/results.json")


def test_publish_writes_the_committed_results_and_refuses_an_out_folder() -> None:
    assert output_paths("demo", None, publish=True) == PUBLISHED == (Path("docs/results.json"), Path("docs/RESULTS.md"))
    with pytest.raises(ValueError, match="does not take --out"):
        output_paths("demo", "elsewhere", publish=True)
