"""``dede reproduce``: the paper's detection grid (Tables 1 and 3) as one resumable command.

For a preset P (tiny / cpu / paper) everything lives under one root (default ``runs/reproduce-P``):

    simclr/, clip/                     clean encoders (``dede pretrain``; ``--method clip``)
    badencoder/, drupe/                attacks on simclr          (``dede attack ...``)
    ctrl/                              SimCLR trained on a CTRL-poisoned set; simclr is its control
    clip-backdoor/, badclip/           attacks on clip
    dede/<attack>-<aux>/               DeDe on the attacked encoder     (``dede train``)
    dede/control-<clean>-<attack's trigger>-<aux>/   DeDe on its clean encoder, same auxiliary set
    bundles/<run>/                     exported bundles (``dede export``; self-verified)
    cells/<attack>-<aux>.json          records of one cell (balanced and 1% test sets, both threshold rules,
                                       backdoored and control), plus figures in docs/figures/
    cells/baselines-<attack>.json      ASSET and DECREE on the same test sets
    cells/downstream-<attack>.json     the downstream defence (no filter, DeDe, DECREE); downstream-asset-<attack>:
                                       ASSET as the filter; downstream-robust-<attack>: the id-robust detector;
                                       downstream-none-<control>: the clean encoder
    logs/<step>.log                    each step's output

aux = ``id`` (CIFAR-10 train with 1% of the images triggered, the paper's in-distribution set), ``ood``
(``--ood-dataset``, default GTSRB: STL-10 is not available here; clean, resized to the encoder's input; another
dataset's runs and cells are named ``ood-<dataset>``, e.g. ``ood-imagenette``, so one grid can hold both;
``--ood-images N`` cuts the set to N training images, ``ood-<dataset>-<N>``) or
``id-robust`` (the ``id`` set, with DeDe trained robustly: ``drop_worst`` leaves the 5% highest-loss samples of
each batch out, our answer to a poisoned auxiliary set; not in the paper, and its control is trained the same way)
or ``id-filtered`` (the ``id`` set without the densest 5% of its embeddings, ``drop_dense``: our other answer, which
removes the clump a backdoor makes of the triggered images before training; its control is filtered the same way).
CTRL's detectors use the paper's handling: training mask ratio 0.75 and noise in the 0.99 norm ball.

A variant (``--variant``; ``VARIANTS``, read from ``variants.toml``, which also says what its make targets run)
changes how one clean encoder and the attacks on it (and, if it says so, the detectors) are trained, to test a
diagnosis: ``slip`` trains the mini-CLIP with SLIP's image-only term
(``training.pretrain.clip_train``), ``slip4`` with that term weighted 4 times the CLIP loss; ``drupe16`` trains DRUPE
for 16 epochs (is DRUPE's shortfall at the cpu preset an attack that fired on only about half of the images?);
``drupe8`` trains it as the plain grid does, in a grid of its own (the cpu preset's DRUPE on out-of-distribution sets
the plain grid did not have); ``badencoder`` does the same for BadEncoder, ``clip`` for the mini-CLIP and both of its
attacks; the ``captions`` variants train a mini-CLIP whose captions describe the image, the ``-long`` ones attack it
longer, ``captions-classonly-long12-dede3x`` trains the detectors of one of them three times as long, and
``captions-classonly-long12-crops6`` and ``drupe8-crops6`` on six random crops of each auxiliary image (``-crops12``:
twelve); ``<variant>-seed<k>`` trains the detectors of a variant of ``SEED_REPEATS`` again with seed k, nothing else
changed (the spread of one run; ``dede ensemble`` averages them); ``<variant>-content`` scores the detectors of a
variant of ``CONTENT_SCORED`` with the content-adjusted score (``service.scores``), a variant that ``rescores``
another: its steps copy that grid's encoders and detector runs (``training.research.rescore``) and calibrate the runs
again, so nothing is trained. Its grid lives in ``runs/reproduce-P-<variant>``, has only the attacks on that encoder
and only detection cells (no baselines, no downstream runs), and its records carry ``"variant"`` (figures
``reproduce-P-<variant>-*``), so they never replace the plain grid's.

Every step is a subprocess whose finished output marks it done, so an interrupted run resumes where it
stopped; ``--jobs`` runs independent steps side by side, each with ``--threads`` threads (a step that can only run
alone, such as the first pre-training, gets every job's threads). At the end the cells are merged into
``docs/results.json`` (records with ``"source": "reproduce"``) and ``docs/RESULTS.md`` (the variant grids:
``docs/research/VARIANTS.md``) is regenerated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.attacks import not_implanted_reason
from training.reporting.records import command_line, replace_in_place
from training.reporting.results import evaluated_figures, write_report
from training.research.cell import attack_summary
from training.research.grid import (
    ATTACKS,
    AUXES,
    CTRL_DEDE,
    DEFAULT_OOD,
    OUR_AUXES,
    POISONED_AUXES,
    STAGES,
    control_run,
    grid_dir,
    grid_label,
    ood_aux,
    run_name,
)
from training.research.variants import VARIANTS


def _copied(g: GridSpec, path: Path, score: str | None = None) -> list[str]:
    """The command that copies ``path`` (a directory of this grid) from the grid the variant rescores, a detector
    run calibrated again for ``score`` (``training.research.rescore``)."""
    source = g.root.parent / grid_dir(g.preset, VARIANTS[g.variant].rescores) / path.relative_to(g.root)
    return [sys.executable, "-m", "training.research.rescore", "--from", str(source), "--to", str(path),
            *(["--score", score] if score else [])]


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "training.cli", *args]


def _attacked(path: Path) -> Callable[[], bool]:
    """Done marker of an attack step: the encoder's history records the attack (CTRL writes encoder.json
    before its attack stage is measured)."""

    def done() -> bool:
        spec = path / "encoder.json"
        return spec.exists() and any(str(h.get("stage", "")).startswith("attack-")
                                     for h in json.loads(spec.read_text()).get("history", []))

    return done


@dataclass
class Step:
    """One unit of work: ``cmd`` runs as a subprocess; ``done()`` tells whether its output exists."""

    name: str
    cmd: list[str]
    done: Callable[[], bool]
    deps: list[str] = field(default_factory=list)
    skip: Callable[[], str | None] | None = None  # asked once its dependencies are done: a reason not to run


@dataclass
class GridSpec:
    preset: str
    root: Path
    attacks: list[str]
    auxes: list[str]
    ood_dataset: str = DEFAULT_OOD
    stage_sets: dict[str, list[str]] = field(default_factory=dict)  # stage -> ["key=value", ...]
    max_images: int = 0  # clean test images per cell (0 = all)
    figures: Path = Path("docs/figures")
    command: str = "dede reproduce"
    downstream: bool = True  # also the downstream defence grid (Tables 2 and 4)
    baselines: bool = True  # also ASSET and DECREE
    include_weak: bool = False  # also detectors and downstream runs for attacks that did not implant a backdoor
    variant: str = ""  # a key of VARIANTS, or "" for the plain grid
    ood_images: int = 0  # training images of the out-of-distribution set (0: the preset's aux_images)

    def __post_init__(self) -> None:
        if self.ood_images < 0:
            raise ValueError(f"ood_images (--ood-images) must be a number of images >= 1, or 0 for the preset's; "
                             f"got {self.ood_images}")
        self.auxes = [self.ood_aux if a == "ood" else a for a in self.auxes]
        if self.variant:  # a variant's grid has detection cells only
            if self.variant not in VARIANTS:
                raise ValueError(f"unknown variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
            variant = VARIANTS[self.variant]
            if other := [a for a in self.attacks if not variant.trains(a)]:
                raise ValueError(f"variant {self.variant!r} trains only {', '.join(variant.attacks) or 'the attacks'} "
                                 f"on the {variant.clean} encoder, not {', '.join(other)}")
            self.downstream = self.baselines = False

    @property
    def label(self) -> str:
        return grid_label(self.preset, self.variant)

    @property
    def rescores(self) -> bool:
        """Whether the grid copies another grid's trained encoders and detectors (``Variant.rescores``)."""
        return bool(self.variant and VARIANTS[self.variant].rescores)

    @property
    def ood_aux(self) -> str:
        return ood_aux(self.ood_dataset, self.ood_images)

    def sets(self, stage: str, extra: list[str] | None = None) -> list[str]:
        out = []
        for kv in [*(extra or []), *self.stage_sets.get(stage, [])]:
            out += ["--set", kv]
        return out


def _unless_implanted(g: GridSpec, attacks: list[str]) -> Callable[[], str | None] | None:
    """A step's skip check: skip it when none of ``attacks`` implanted a backdoor (an attack that did not take
    cannot test a detector), unless the grid includes weak attacks."""
    if g.include_weak:
        return None

    def reason() -> str | None:
        reasons = [not_implanted_reason(g.root / a) for a in attacks]
        return "; ".join(r for r in reasons if r) if all(reasons) else None

    return reason


def _detector_steps(g: GridSpec, name: str, attack: str, aux: str, control: bool) -> list[Step]:
    """Train a DeDe detector on the attacked (or, for a control, the clean) encoder, then export it. Training is
    skipped when no attack that needs this detector implanted a backdoor; its dependants are skipped with it."""
    r, clean = g.root, ATTACKS[attack]["clean"]
    users = [a for a in g.attacks if control_run(a, aux) == name] if control else [attack]
    encoder = r / (clean if control else attack)
    aux_sets = (["aux_source=cifar10", "poison_rate=0.01", f"trigger_from={r / attack}"] if aux in POISONED_AUXES
                else [f"aux_source={g.ood_dataset}", "poison_rate=0"]
                + ([f"aux_images={g.ood_images}"] if g.ood_images else []))
    ours = list(OUR_AUXES[aux].sets) if aux in OUR_AUXES else []
    extra = aux_sets + (CTRL_DEDE if attack == "ctrl" else []) + ours
    run_dir = r / "dede" / name
    variant = [kv for s in (VARIANTS[g.variant].train_sets if g.variant else ()) for kv in ("--set", s)]
    train = (_copied(g, run_dir, VARIANTS[g.variant].score) if g.rescores else
             _python("train", "--encoder", str(encoder), "--preset", g.preset, *g.sets("train", extra), *variant,
                     "--out", str(run_dir)))
    return [Step(f"train-{name}", train,
                 (run_dir / "run.json").exists, [f"attack-{attack}"] + ([f"pretrain-{clean}"] if control else []),
                 _unless_implanted(g, users)),
            Step(f"export-{name}", _python("export", "--run", str(run_dir), "--name", name,
                                           "--out", str(r / "bundles")),
                 (r / "bundles" / name / "manifest.json").exists, [f"train-{name}"])]


def downstream_steps(g: GridSpec) -> list[Step]:
    """Tables 2 and 4: per attack, its in-distribution detector (and, when the grid has it, its out-of-distribution
    one) filters a downstream classifier's data, and, with the baselines, ASSET does in a cell of its own; per
    clean encoder, the "no attack" rows (its control bundle, poisoned with the trigger of its first attack). With
    aux ``id-robust`` (``id-filtered``), that detector filters too, in a cell of its own
    (``downstream-robust-<attack>``, ``downstream-filtered-<attack>``)."""
    r, steps = g.root, []

    def command(bundle: str, attack: str, trigger_from: str) -> list[str]:
        return [sys.executable, "-m", "training.research.downstream", "--bundle", str(r / "bundles" / bundle),
                "--attack", attack, "--trigger-from", str(r / trigger_from), "--preset", g.preset,
                *g.sets("downstream"), "--command-line", g.command]

    for aux, ours in OUR_AUXES.items():
        for a in g.attacks if aux in g.auxes else []:
            bundle, cell = run_name(a, aux, False), r / "cells" / f"downstream-{ours.short}-{a}.json"
            steps.append(Step(cell.stem, [*command(bundle, a, a), "--only", ours.detector, "--out", str(cell)],
                              cell.exists, [f"export-{bundle}", f"attack-{a}"]))
    if "id" not in g.auxes:  # the other cells filter with the paper's detector
        return steps
    jobs = [(a, run_name(a, "id", False), a) for a in g.attacks]
    firsts = {ATTACKS[a]["clean"]: a for a in reversed(g.attacks)}
    jobs += [("none", control_run(a, "id"), a) for a in firsts.values()]
    for attack, bundle, trigger_from in jobs:
        cell = r / "cells" / (f"downstream-{attack}.json" if attack != "none" else f"downstream-none-{bundle}.json")
        base = command(bundle, attack, trigger_from)
        needs = [f"export-{bundle}", f"attack-{trigger_from}"]
        cmd, deps = [*base, "--out", str(cell)], list(needs)
        if attack != "none" and g.ood_aux in g.auxes:  # the recommended detector (clean OOD aux) filters too
            ood = run_name(attack, g.ood_aux, False)
            cmd += ["--ood-bundle", str(r / "bundles" / ood)]
            deps.append(f"export-{ood}")
        steps.append(Step(cell.stem, cmd, cell.exists, deps))
        if attack != "none" and g.baselines:  # ASSET fitted on each downstream training set: a cell of its own
            asset = r / "cells" / f"downstream-asset-{attack}.json"
            steps.append(Step(asset.stem, [*base, "--asset", "--out", str(asset)], asset.exists, needs))
    return steps


def baseline_steps(g: GridSpec) -> list[Step]:
    """ASSET and DECREE per attack (Tables 1 and 3), on the same test pools as the DeDe cells."""
    steps = []
    for a in g.attacks:
        clean, cell = ATTACKS[a]["clean"], g.root / "cells" / f"baselines-{a}.json"
        cmd = [sys.executable, "-m", "training.research.baselines", "--root", str(g.root), "--attack", a,
               "--clean", clean, "--preset", g.preset, "--max-images", str(g.max_images),
               "--command-line", g.command, "--out", str(cell)]
        steps.append(Step(cell.stem, cmd, cell.exists, [f"attack-{a}", f"pretrain-{clean}"]))
    return steps


def build_grid(g: GridSpec) -> list[Step]:
    r, p = g.root, ["--preset", g.preset]
    steps: list[Step] = []
    cleans = sorted({ATTACKS[a]["clean"] for a in g.attacks})
    variant = VARIANTS[g.variant] if g.variant else None

    def variant_sets(clean: str, stage: str) -> list[str]:
        if variant is None or variant.clean != clean:
            return []
        return list(variant.pretrain_sets if stage == "pretrain" else variant.attack_sets)

    for clean in cleans:
        method = ["--method", "clip"] if clean == "clip" else []
        pretrain = (_copied(g, r / clean) if g.rescores else
                    _python("pretrain", *method, *p, *g.sets("pretrain", variant_sets(clean, "pretrain")),
                            "--out", str(r / clean)))
        steps.append(Step(f"pretrain-{clean}", pretrain, (r / clean / "encoder.json").exists))
    for a in g.attacks:
        clean = ATTACKS[a]["clean"]
        attack = (_copied(g, r / a) if g.rescores else
                  _python("attack", a, "--encoder", str(r / clean), *p,
                          *g.sets("attack", variant_sets(clean, "attack")), "--out", str(r / a)))
        steps.append(Step(f"attack-{a}", attack, _attacked(r / a), [f"pretrain-{clean}"]))
    added: set[str] = set()
    for aux in g.auxes:  # aux-major: with few workers, every in-distribution cell finishes first
        for a in g.attacks:
            for name, control in ((run_name(a, aux, False), False), (control_run(a, aux), True)):
                if name not in added:
                    added.add(name)
                    steps += _detector_steps(g, name, a, aux, control)
            cell = r / "cells" / f"{a}-{aux}.json"
            cmd = [sys.executable, "-m", "training.research.cell", "--root", str(r), "--attack", a, "--aux", aux,
                   "--bundle", str(r / "bundles" / run_name(a, aux, False)),
                   "--control", str(r / "bundles" / control_run(a, aux)), "--preset", g.preset,
                   "--max-images", str(g.max_images), "--knn-bank", "1000" if g.preset == "tiny" else "10000",
                   "--command-line", g.command, "--figures", str(g.figures), "--label", g.label, "--out", str(cell)]
            steps.append(Step(f"cell-{a}-{aux}", cmd, cell.exists,
                              [f"export-{run_name(a, aux, False)}", f"export-{control_run(a, aux)}"]))
        if aux == "id" and g.baselines:
            steps += baseline_steps(g)
    if g.downstream:  # last: it filters with the out-of-distribution detectors too
        steps += downstream_steps(g)
    return steps


def run_steps(steps: list[Step], logs: Path, jobs: int = 1, threads: int = 0) -> list[str]:
    """Run every step not yet done, respecting dependencies, ``jobs`` at a time. Returns failed steps (their
    dependants are skipped); a step whose ``skip`` check gives a reason is skipped with its dependants, which
    is not a failure. Finished and skipped steps print one progress line each."""
    logs.mkdir(parents=True, exist_ok=True)
    by_name = {s.name: s for s in steps}
    assert all(d in by_name for s in steps for d in s.deps), "a step depends on a step outside the grid"
    done = {s.name for s in steps if s.done()}
    todo = [s for s in steps if s.name not in done]
    total, start = len(todo), time.time()
    print(f"reproduce: {len(steps)} steps, {len(done)} already done, {total} to run ({jobs} at a time)")
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    failed: list[str] = []
    skipped: set[str] = set()  # by their own skip check, or because a dependency was: not failures
    checked: set[str] = set()  # skip checks already passed (a ready step may wait for a free slot)
    env = os.environ | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    finished = 0
    while todo or running:
        for s in [s for s in todo if any(d in failed for d in s.deps)]:
            todo.remove(s)
            failed.append(s.name)
            print(f"  skipped {s.name}: a dependency failed")
        for s in [s for s in todo if any(d in skipped for d in s.deps)]:
            todo.remove(s)
            skipped.add(s.name)
            print(f"  skipped {s.name}: a dependency was skipped")
        ready = [s for s in todo if all(d in done for d in s.deps)]
        for s in [s for s in ready if s.name not in checked]:
            checked.add(s.name)
            if s.skip is not None and (reason := s.skip()):
                ready.remove(s)
                todo.remove(s)
                skipped.add(s.name)
                print(f"  skipped {s.name}: {reason}")
        while ready and len(running) < jobs:
            s = ready.pop(0)
            todo.remove(s)
            log = open(logs / f"{s.name}.log", "wb")  # noqa: SIM115 - closed when the process ends
            log.write((" ".join(s.cmd) + "\n").encode())
            log.flush()
            # alone: nothing runs and nothing else is ready, and only a finished step makes another one ready,
            # so it runs alone to its end and may use every job's threads (the pre-training at the start)
            alone = threads and jobs > 1 and not running and not ready
            step_env = env | {"OMP_NUM_THREADS": str(threads * jobs)} if alone else env
            running[s.name] = (subprocess.Popen(s.cmd, stdout=log, stderr=subprocess.STDOUT, env=step_env),
                               time.time())
            print(f"  started {s.name}" + (f" ({threads * jobs} threads: nothing else can run beside it)"
                                           if alone else ""))
        time.sleep(0.5)
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            finished += 1
            ok = proc.returncode == 0 and by_name[name].done()
            (done.add(name) if ok else failed.append(name))
            elapsed = time.time() - start
            print(f"[{finished}/{total}] {'done' if ok else 'FAILED'} {name} in {time.time() - t0:.0f}s "
                  f"(elapsed {elapsed / 60:.1f} min" + (f", log {logs / (name + '.log')})" if not ok else ")"),
                  flush=True)
    return failed


def dry_run(steps: list[Step]) -> dict[str, str]:
    """Each step's state without running anything: ``done``, ``skip`` (its own skip check, or a dependency's) or
    ``todo``. Steps come in dependency order (``build_grid`` guarantees it)."""
    state: dict[str, str] = {}
    for s in steps:
        if s.done():
            state[s.name] = "done"
        elif any(state.get(d) == "skip" for d in s.deps) or (s.skip is not None and s.skip()):
            state[s.name] = "skip"
        else:
            state[s.name] = "todo"
    return state


def collect(root: Path, preset: str, command: str, variant: str = "") -> list[dict[str, Any]]:
    """Every finished cell's records, and one ``attack`` record per attacked encoder under ``root``; a variant's
    records carry its name."""

    records: list[dict[str, Any]] = []
    calibrated: dict[str, dict[str, float]] = {}  # bundle -> what its run's calibration says, read once
    for f in sorted((root / "cells").glob("*.json")):
        for r in json.loads(f.read_text()):
            if "aux_kind" in r and r["bundle"] not in calibrated:
                calibrated[r["bundle"]] = calibration_fields(root / "dede" / r["bundle"])
            records.append({**r, **calibrated[r["bundle"]]} if "aux_kind" in r else r)
    records += [r for a in ATTACKS if (r := attack_summary(root, a, preset, command)) is not None]
    return [{**r, "variant": variant} for r in records] if variant else records


def calibration_fields(run: Path) -> dict[str, float]:
    """What a detector's ``calibration.json`` adds to its records: the mean DeDe score of its own training images and
    of its held-out calibration images (a decoder that memorises its auxiliary set scores the first lower) and, for a
    ``content@a`` score, the correlation its exponent was fitted with; empty when the run is not there."""
    if not (f := run / "calibration.json").exists():
        return {}
    cal = json.loads(f.read_text())
    fit = {"content_fit_r": cal["content_fit"]["r"]} if "content_fit" in cal else {}
    return {"score_mean_train": cal["aux_train"]["mean"], "score_mean_holdout": cal["holdout"]["mean"], **fit}


def merge_cells(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``new`` records replace every old record of the same source, preset, variant and cell, in place; the rest is
    kept.
    An attack record (``kind`` attack, rebuilt from the encoder at every publish) whose measurements did not change
    keeps its old ``command``: a later, narrower run (``--aux``, ``--attack``) did not train that attack."""

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r.get("source"), r.get("preset"), r.get("variant", ""), r.get("cell")

    def unchanged(r: dict[str, Any], before: dict[str, Any] | None) -> bool:
        return before is not None and {**r, "command": None} == {**before, "command": None}

    attacks = {key(r): r for r in old if r.get("kind") == "attack"}
    new = [{**r, "command": attacks[key(r)].get("command")} if unchanged(r, attacks.get(key(r))) else r for r in new]
    return replace_in_place(old, new, key)


def publish(records: list[dict[str, Any]], results: Path, report: Path) -> None:
    """Merge the cell records into results.json and regenerate RESULTS.md and research/VARIANTS.md next to it."""
    old = json.loads(results.read_text()) if results.exists() else []
    merged = merge_cells(old, records)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(merged, indent=1))
    write_report(merged, report, evaluated_figures(merged, report))
    print(f"wrote {len(records)} records to {results} and regenerated {report}")


def parse_stage_sets(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        stage, sep, kv = item.partition(":")
        if not sep or stage not in STAGES or "=" not in kv:
            raise ValueError(f"--stage-set {item!r} must look like STAGE:key=value with STAGE in {STAGES}")
        out.setdefault(stage, []).append(kv)
    return out


def reproduce_cli(a: argparse.Namespace) -> None:
    for name in a.attack:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
    for aux in a.aux:
        if aux not in AUXES:
            raise ValueError(f"unknown aux {aux!r}; valid: {', '.join(AUXES)}")
    attacks = a.attack or [n for n in ATTACKS  # a variant: by default the attacks it trains
                           if a.variant not in VARIANTS or VARIANTS[a.variant].trains(n)]
    command = command_line(a.command_line)
    root = Path(a.root or Path("runs") / grid_dir(a.preset, a.variant))
    g = GridSpec(a.preset, root, attacks, a.aux or list(AUXES), a.ood_dataset, parse_stage_sets(a.stage_set),
                 a.max_images, Path(a.figures), command, not a.no_downstream, not a.no_baselines, a.include_weak,
                 a.variant, a.ood_images)
    steps = build_grid(g)
    if a.dry_run:
        for s, state in dry_run(steps).items():
            print(f"{state}  {s}")
        return
    failed = [] if a.publish_only else run_steps(steps, root / "logs", a.jobs, a.threads)
    records = collect(root, a.preset, command, a.variant)
    if a.publish_only and not records:  # e.g. a fresh checkout: runs/ is not committed, docs/ already hold them
        raise FileNotFoundError(f"no finished cells or attacked encoders under {root}: nothing to publish "
                                f"({a.results} and {a.report} are left as they are)")
    if records and not a.no_publish:
        publish(records, Path(a.results), Path(a.report))
    if failed:
        raise RuntimeError(f"{len(failed)} step(s) failed or were skipped: {', '.join(failed)}; see {root}/logs")
