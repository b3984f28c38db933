"""One step of a grid that rescores another (``reproduce.Variant.rescores``): copy a finished directory of that grid
(a clean encoder, an attacked one, a detector run without its resume checkpoint) into this one; a detector run is then
calibrated again for another score (``training.calibrate.calibrate_run``, with the run's own threshold rule). Its
decoder, training record and wall time stay those of the grid it came from; its threshold, ``calibration.json`` and
``run.json``'s score are new. The copy is made under a temporary name and renamed once complete, so an interrupted
step leaves nothing that looks done.

    python -m training.research.rescore --from runs/reproduce-cpu-drupe8/dede/drupe-ood \
        --to runs/reproduce-cpu-drupe8-content/dede/drupe-ood --score content
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from training.calibrate import calibrate_run

RESUME_ONLY = "checkpoint.pt"  # a training run's resume state: a finished run copied here is never resumed


def rescore(source: Path, dest: Path, score: str | None = None) -> None:
    if not (source / "encoder.json").exists() and not (source / "run.json").exists():
        raise FileNotFoundError(f"{source} holds no finished encoder or detector run: run the grid it belongs to "
                                "first (its make target)")
    if score is not None and not (source / "run.json").exists():
        raise ValueError(f"{source} is not a detector run: only a detector is calibrated for a score")
    if dest.exists():
        raise FileExistsError(f"{dest} exists; remove it to copy it again")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(RESUME_ONLY))
    if score is not None:
        rule = json.loads((partial / "calibration.json").read_text())["rule"]
        record = calibrate_run(partial, rule, score=score)
        print(f"{dest.name}: {record['score']}, threshold ({rule}) {record['value']:.4f}")
    partial.rename(dest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.research.rescore", description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="source", required=True, type=Path, help="the other grid's directory")
    p.add_argument("--to", dest="dest", required=True, type=Path, help="this grid's directory (must not exist)")
    p.add_argument("--score", help="calibrate the copied detector run for this score (service.scores; 'content': "
                                   "its exponent fitted)")
    a = p.parse_args(argv)
    try:
        rescore(a.source, a.dest, a.score)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
