"""``dede reproduce``: the grid, the resumable scheduler, publishing, and a tiny end-to-end cell."""

from __future__ import annotations

import json
import re
import shlex
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import needs_cifar
from training.research.reproduce import GridSpec, Step, build_grid, dry_run, merge_cells, parse_stage_sets, run_steps


def _grid(tmp_path: Path, **kw: object) -> list[Step]:
    return build_grid(GridSpec("tiny", tmp_path, **kw))  # type: ignore[arg-type]


def test_grid_covers_every_attack_and_aux_with_a_control(tmp_path: Path) -> None:
    steps = _grid(tmp_path, attacks=["badencoder", "drupe", "ctrl", "clip-backdoor", "badclip"], auxes=["id", "ood"])
    names = [s.name for s in steps]
    assert len(names) == len(set(names))
    assert {n for n in names if n.startswith("pretrain-")} == {"pretrain-simclr", "pretrain-clip"}
    cells = [n for n in names if n.startswith("cell-")]
    assert len(cells) == 10
    trains = [n for n in names if n.startswith("train-")]
    # 10 backdoored detectors + controls: BadEncoder and DRUPE share theirs (same clean encoder and trigger); on
    # the trigger-free OOD set, every attack on one clean encoder shares one (CTRL's DeDe settings keep its own)
    assert len(trains) == 10 + 7 and "train-control-simclr-drupe-id" not in names
    assert "train-control-clip-badclip-ood" not in names and "train-control-simclr-ctrl-ood" in names
    by = {s.name: s for s in steps}
    for cell, control in (("drupe-id", "control-simclr-badencoder-id"), ("drupe-ood", "control-simclr-badencoder-ood"),
                          ("badclip-id", "control-clip-badclip-id"),
                          ("badclip-ood", "control-clip-clip-backdoor-ood")):
        cmd = by[f"cell-{cell}"].cmd
        assert cmd[cmd.index("--control") + 1].endswith(control)
    ctrl = " ".join(by["train-ctrl-ood"].cmd)
    assert "mask_ratio=0.75" in ctrl and "ood_noise_quantile=0.99" in ctrl and "aux_source=gtsrb" in ctrl
    bad_id = " ".join(by["train-badencoder-id"].cmd)
    assert "poison_rate=0.01" in bad_id and f"trigger_from={tmp_path / 'badencoder'}" in bad_id
    control = " ".join(by["train-control-clip-badclip-id"].cmd)  # the control is poisoned with the SAME trigger
    assert f"--encoder {tmp_path / 'clip'}" in control and f"trigger_from={tmp_path / 'badclip'}" in control
    for s in steps:  # every dependency is in the grid and comes earlier
        assert all(names.index(d) < names.index(s.name) for d in s.deps)
    down = by["downstream-badencoder"]  # filtered by the in-distribution and the out-of-distribution detector
    assert down.cmd[down.cmd.index("--ood-bundle") + 1] == str(tmp_path / "bundles" / "badencoder-ood")
    assert {"export-badencoder-id", "export-badencoder-ood"} <= set(down.deps)
    assert "--ood-bundle" not in by["downstream-none-control-simclr-badencoder-id"].cmd
    asset = by["downstream-asset-badencoder"]  # ASSET filters in a cell of its own, with the attacked encoder
    assert "--asset" in asset.cmd and "--ood-bundle" not in asset.cmd and "--asset" not in down.cmd
    assert asset.cmd[asset.cmd.index("--trigger-from") + 1] == str(tmp_path / "badencoder")
    assert {n for n in names if n.startswith("downstream-asset-")} == {
        f"downstream-asset-{a}" for a in ("badencoder", "drupe", "ctrl", "clip-backdoor", "badclip")}
    id_only = {s.name: s for s in _grid(tmp_path, attacks=["badencoder"], auxes=["id"])}
    assert "--ood-bundle" not in id_only["downstream-badencoder"].cmd
    assert not any(n.startswith("downstream-asset-") for n in (s.name for s in _grid(
        tmp_path, attacks=["badencoder"], auxes=["id"], baselines=False)))


def test_robust_cells_train_both_detectors_robustly_on_the_poisoned_set(tmp_path: Path) -> None:
    steps = _grid(tmp_path, attacks=["badencoder", "drupe"], auxes=["id", "id-robust"])
    by = {s.name: s for s in steps}
    for name in ("badencoder-id-robust", "drupe-id-robust", "control-simclr-badencoder-id-robust"):
        line = " ".join(by[f"train-{name}"].cmd)  # the same 1%-poisoned set as `id`, trained with drop_worst
        assert "drop_worst=0.05" in line and "poison_rate=0.01" in line and "trigger_from=" in line
    assert not any("drop_worst" in " ".join(by[f"train-{n}"].cmd)
                   for n in ("badencoder-id", "control-simclr-badencoder-id"))
    cmd = by["cell-drupe-id-robust"].cmd  # a robust control of its own, shared by the attacks with one trigger
    assert cmd[cmd.index("--control") + 1].endswith("control-simclr-badencoder-id-robust")
    robust = by["downstream-robust-drupe"]  # the robust detector filters alone, in a cell of its own
    assert robust.cmd[robust.cmd.index("--only") + 1] == "dede-robust" and "--ood-bundle" not in robust.cmd
    assert robust.cmd[robust.cmd.index("--bundle") + 1] == str(tmp_path / "bundles" / "drupe-id-robust")
    assert "export-drupe-id-robust" in robust.deps and "--only" not in by["downstream-drupe"].cmd
    robust_only = [s.name for s in _grid(tmp_path, attacks=["badencoder"], auxes=["id-robust"])]
    assert "cell-badencoder-id-robust" in robust_only  # no `id` bundle: no cell that filters with one
    assert [n for n in robust_only if n.startswith("downstream-")] == ["downstream-robust-badencoder"]


def test_filtered_cells_filter_both_detectors_training_sets(tmp_path: Path) -> None:
    by = {s.name: s for s in _grid(tmp_path, attacks=["badencoder", "drupe"], auxes=["id", "id-filtered"])}
    for name in ("badencoder-id-filtered", "drupe-id-filtered", "control-simclr-badencoder-id-filtered"):
        line = " ".join(by[f"train-{name}"].cmd)  # the same 1%-poisoned set as `id`, its densest 5% left out
        assert "drop_dense=0.05" in line and "poison_rate=0.01" in line and "drop_worst" not in line
    assert "drop_dense" not in " ".join(by["train-badencoder-id"].cmd)
    cmd = by["cell-drupe-id-filtered"].cmd
    assert cmd[cmd.index("--control") + 1].endswith("control-simclr-badencoder-id-filtered")
    filt = by["downstream-filtered-drupe"]  # the filtered detector filters alone, in a cell of its own
    assert filt.cmd[filt.cmd.index("--only") + 1] == "dede-filtered"
    assert filt.cmd[filt.cmd.index("--bundle") + 1] == str(tmp_path / "bundles" / "drupe-id-filtered")
    assert "--only" not in " ".join(by["downstream-badencoder"].cmd) and "downstream-robust-drupe" not in by


def test_another_ood_dataset_gets_runs_and_cells_of_its_own(tmp_path: Path) -> None:
    g = GridSpec("tiny", tmp_path, ["badencoder"], ["id", "ood"], "imagenette")
    by = {s.name: s for s in build_grid(g)}
    assert g.auxes == ["id", "ood-imagenette"] and "cell-badencoder-ood" not in by  # GTSRB's cells stay untouched
    train = " ".join(by["train-badencoder-ood-imagenette"].cmd)
    assert "aux_source=imagenette" in train and "poison_rate=0" in train
    cell = by["cell-badencoder-ood-imagenette"].cmd
    assert cell[cell.index("--aux") + 1] == "ood-imagenette"
    assert cell[cell.index("--control") + 1].endswith("control-simclr-badencoder-ood-imagenette")
    down = by["downstream-badencoder"].cmd  # the downstream defence filters with that set's detector
    assert down[down.index("--ood-bundle") + 1] == str(tmp_path / "bundles" / "badencoder-ood-imagenette")
    assert GridSpec("tiny", tmp_path, ["badencoder"], ["ood"], "/data/stl10.zip").auxes == ["ood-stl10"]
    assert GridSpec("tiny", tmp_path, ["badencoder"], ["ood"]).auxes == ["ood"]
    cut = GridSpec("tiny", tmp_path, ["badencoder"], ["ood"], ood_images=3040)  # the default set, cut
    assert cut.auxes == ["ood-gtsrb-3040"]
    train = " ".join({s.name: s for s in build_grid(cut)}["train-badencoder-ood-gtsrb-3040"].cmd)
    assert "aux_source=gtsrb" in train and "aux_images=3040" in train
    with pytest.raises(ValueError, match="--ood-images"):  # a negative count is refused, not named ood-gtsrb--5
        GridSpec("tiny", tmp_path, ["badencoder"], ["ood"], ood_images=-5)
    from training.reporting.reproduce import _aux_label
    assert (_aux_label({"aux": "gtsrb-ood", "aux_kind": "ood-gtsrb-3040", "aux_train_images": 3040})
            == "gtsrb-ood, 3,040 training images")
    assert _aux_label({"aux": "x-ood", "aux_kind": "ood-cifar-100", "aux_train_images": 18000}) == "x-ood"  # a name


def _sets(cmd: list[str]) -> list[str]:
    """The ``--set key=value`` settings of a command, in order."""
    return [kv for flag, kv in zip(cmd, cmd[1:], strict=False) if flag == "--set"]


def _by_name(tmp_path: Path, **kw: object) -> dict[str, Step]:
    return {s.name: s for s in _grid(tmp_path, **kw)}


def test_the_variants_table_loads_with_its_twins_and_make_targets() -> None:
    from training.research.variants import CONTENT_SCORED, SEED_REPEATS, TABLE, VARIANTS

    long12, crops6 = VARIANTS["captions-classonly-long12"], VARIANTS["captions-classonly-long12-crops6"]
    # an entry with a base: every field of the base but those it writes (its base's retrain too)
    assert crops6 == replace(long12, train_sets=("aux_crops=6", "epochs=15"), about=crops6.about)
    assert VARIANTS["drupe8-crops6"].retrain and VARIANTS["drupe8-crops6"].attacks == ("drupe",)
    content = VARIANTS["captions-classonly-long12-crops6-content"]  # the rescoring twin
    assert (content.rescores, content.train_sets, content.retrain, content.attacks, content.score) == (
        "captions-classonly-long12-crops6", ("score=content",), False, crops6.attacks, "content")
    assert content.about.startswith("the `captions-classonly-long12-crops6` grid's detectors and controls, copied")
    seed = VARIANTS["captions-classonly-long12-crops6-seed3"]  # a seed repeat: one attack, the seed last
    assert (seed.attacks, seed.train_sets, seed.rescores) == (("clip-backdoor",), (*crops6.train_sets, "seed=3"), "")
    assert "CLIP Backdoor detector and control trained again with seed 3 (another initialisation, mask stream and " \
           "held-out split, other crops)" in seed.about
    rescored = VARIANTS["captions-classonly-long12-crops6-content-seed3"]  # the twin's repeat rescores the repeat
    assert (rescored.train_sets, rescored.rescores) == (("score=content",), "captions-classonly-long12-crops6-seed3")
    twins = {f"{n}-content" for n in CONTENT_SCORED} | {f"{n}-seed{k}" for n, (_, ks) in SEED_REPEATS.items()
                                                         for k in ks}
    assert twins == {n for n in VARIANTS if n.endswith("-content") or "-seed" in n} and len(VARIANTS) == 33
    targets = {t.name: t for t in TABLE.targets}
    assert {t.variant for t in TABLE.targets} == set(VARIANTS)  # every variant's grid has a make target
    assert targets["reproduce-clip-imagenette"].runs == ("$(IMAGENETTE_OOD)", "--aux ood")  # a target of its own name
    assert targets["reproduce-drupe16-gtsrb3040"].variant == "drupe16"
    assert not targets["reproduce-slip"].command_line and targets["reproduce-drupe8"].command_line


_SMALL_TABLE = """
[make.variables]
IMG = "--aux ood --ood-dataset imagenette"

[variant.a]
clean = "simclr"
pretrain_sets = []
attack_sets = ["epochs=3"]
about = "a"
attacks = ["drupe"]
make = ["$(IMG)", "--aux ood"]

[variant.a.seeds]
attack = "drupe"
seeds = [1, 2]

[variant.a.content]
make = ["--aux ood"]

[variant.a.content.seeds]
attack = "drupe"
seeds = [2]

[variant.b]
base = "a"
train_sets = ["epochs=9"]
about = "b"
make = {reproduce-b-extra = ["--aux id"]}
"""


def test_a_table_entry_overrides_its_base_and_generates_its_twins_and_make_rules() -> None:
    from training.research.variants import load_table, makefile

    table = load_table(tomllib.loads(_SMALL_TABLE))
    assert list(table.variants) == ["a", "a-seed1", "a-seed2", "a-content", "a-content-seed2", "b"]
    assert table.variants["b"] == replace(table.variants["a"], train_sets=("epochs=9",), about="b")
    assert table.variants["a-seed2"].train_sets == ("seed=2",)
    assert table.variants["a-content-seed2"].rescores == "a-seed2"
    assert table.seed_repeats == {"a": ("drupe", (1, 2)), "a-content": ("drupe", (2,))}
    assert [(t.name, t.variant, t.runs) for t in table.targets] == [
        ("reproduce-a", "a", ("$(IMG)", "--aux ood")), ("reproduce-a-content", "a-content", ("--aux ood",)),
        ("reproduce-b-extra", "b", ("--aux id",))]
    rules = makefile(table)
    assert "\nIMG := --aux ood --ood-dataset imagenette\n" in rules
    assert "\n## --variant a $(IMG); then --aux ood\nreproduce-a:\n\t$(call variant-grid,a,$(IMG))\n" \
           "\t$(call variant-grid,a,--aux ood)\n" in rules


@pytest.mark.parametrize(("old", "new", "message"), [
    ('about = "a"\n', 'about = "a"\nepochs = 3\n', r"\[variant\.a\]: unknown field\(s\) epochs in \[variant\.a\]"),
    ('base = "a"', 'base = "nope"', r"\[variant\.b\]: unknown base 'nope'"),
    ('about = "b"', 'about = "b"\nrescores = "a"', r"\[variant\.b\]: a variant that rescores 'a' sets the score only"),
    ('[variant.a.content]\n', '[variant.a.content]\ntrain_sets = ["epochs=3"]\n',
     r"unknown field\(s\) train_sets in \[variant\.a\.content\]"),
    ('clean = "simclr"\n', "", r"\[variant\.a\]: missing field\(s\) clean"),
    ('attacks = ["drupe"]', 'attacks = ["badclip"]', r"attacks badclip are not attacks on the simclr encoder"),
    ("pretrain_sets = []", 'pretrain_sets = "x"', r"field pretrain_sets must be a list of strings"),
    ('attack = "drupe"', 'attack = "badencoder"', r"attack 'badencoder' is not an attack that 'a' trains"),
    ("seeds = [1, 2]", "seeds = [0]", r"\[variant\.a\.seeds\]: seeds must list distinct seeds >= 1"),
    ('"$(IMG)"', '"$(NOPE)"', r"make target reproduce-a uses \$\(NOPE\), not in \[make.variables\]"),
    ('"--aux id"', '"--aux id,ood"', r"splits arguments at commas"),
])
def test_a_bad_table_entry_is_refused_with_what_and_where(old: str, new: str, message: str) -> None:
    from training.research.variants import load_table

    assert old in _SMALL_TABLE
    with pytest.raises(ValueError, match=message):
        load_table(tomllib.loads(_SMALL_TABLE.replace(old, new, 1)))


def test_every_make_run_of_the_table_is_a_grid_of_its_variant(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main
    from training.research.variants import TABLE

    for t in TABLE.targets:
        for run in t.runs:
            args = shlex.split(re.sub(r"\$\((\w+)\)", lambda m: TABLE.variables[m.group(1)], run))
            assert main(["reproduce", "--preset", "cpu", "--variant", t.variant, *args, "--root",
                         str(tmp_path / t.variant), "--dry-run"]) == 0, (t.name, run)
            assert "todo  cell-" in capsys.readouterr().out


def test_a_variant_trains_its_encoder_differently_in_a_grid_of_its_own(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    slip = _by_name(tmp_path, attacks=["clip-backdoor", "badclip"], auxes=["id", "ood"], variant="slip")
    for name in ("pretrain-clip", "attack-clip-backdoor", "attack-badclip"):
        assert "ssl_weight=1" in _sets(slip[name].cmd)
    assert not any("ssl_weight" in " ".join(s.cmd) for n, s in slip.items() if not n.startswith(("pretrain", "attack")))
    assert not any(n.startswith(("downstream-", "baselines-")) for n in slip)  # detection cells only
    cell = slip["cell-badclip-ood"].cmd
    assert cell[cell.index("--label") + 1] == "tiny-slip"  # figures never overwrite the plain grid's
    plain = _by_name(tmp_path, attacks=["clip-backdoor"], auxes=["id"])
    assert "ssl_weight" not in " ".join(plain["pretrain-clip"].cmd)
    assert plain["cell-clip-backdoor-id"].cmd[plain["cell-clip-backdoor-id"].cmd.index("--label") + 1] == "tiny"
    with pytest.raises(ValueError, match="only the attacks on the clip encoder, not badencoder"):
        _grid(tmp_path, attacks=["badencoder", "badclip"], auxes=["id"], variant="slip")
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        _grid(tmp_path, attacks=["badclip"], auxes=["id"], variant="nope")
    # the CLI: the variant's attacks by default
    assert main(["reproduce", "--preset", "tiny", "--variant", "drupe16", "--aux", "ood", "--dry-run"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"attack-drupe", "cell-drupe-ood"} <= set(listed) and "attack-badencoder" not in listed


def test_a_detector_variant_and_a_seed_repeat_train_the_detectors_of_another_variants_encoders(
        tmp_path: Path) -> None:
    long12 = _by_name(tmp_path, attacks=["clip-backdoor", "badclip"], auxes=["ood"],
                      variant="captions-classonly-long12", stage_sets={"train": ["epochs=90"]})
    # the 12-epoch attack again, its detector and control trained 270 epochs: after the command line's epochs
    x3 = _by_name(tmp_path, attacks=["clip-backdoor"], auxes=["ood"], variant="captions-classonly-long12-dede3x",
                  stage_sets={"train": ["epochs=90"]})
    assert x3["attack-clip-backdoor"].cmd == long12["attack-clip-backdoor"].cmd
    assert {"poison_attributes=false", "epochs=12"} <= set(_sets(x3["attack-clip-backdoor"].cmd))
    for name in ("train-clip-backdoor-ood", "train-control-clip-clip-backdoor-ood"):
        assert [kv for kv in _sets(x3[name].cmd) if kv.startswith("epochs=")] == ["epochs=90", "epochs=270"]
        assert "epochs=270" not in _sets(long12[name].cmd)
    with pytest.raises(ValueError, match="trains only clip-backdoor on the clip encoder, not badclip"):
        _grid(tmp_path, attacks=["badclip"], auxes=["ood"], variant="captions-classonly-long12-dede3x")
    # a seed repeat: the variant's detector settings, then the seed; CLIP Backdoor only
    seed2 = _by_name(tmp_path, attacks=["clip-backdoor"], auxes=["ood"], variant="captions-classonly-long12-seed2",
                     stage_sets={"train": ["epochs=90"]})
    assert seed2["attack-clip-backdoor"].cmd == long12["attack-clip-backdoor"].cmd
    for name in ("train-clip-backdoor-ood", "train-control-clip-clip-backdoor-ood"):
        assert _sets(seed2[name].cmd) == [*_sets(long12[name].cmd), "seed=2"]
    with pytest.raises(ValueError, match="trains only clip-backdoor"):
        _grid(tmp_path, attacks=["badclip"], auxes=["ood"], variant="captions-classonly-long12-seed2")


def test_a_robustly_trained_detector_is_a_detector_of_its_own() -> None:
    from training.research.cell import detector_fields

    run = {"train_wall_s": 12.5, "device": "cpu", "epochs": 15, "train_mask_ratio": 0.9, "drop_worst": 0.0}
    plain = detector_fields(run)
    assert plain["dede_epochs"] == 15 and plain["train_wall_partial"] is False and "detector" not in plain
    assert "detector" not in detector_fields({k: v for k, v in run.items() if k != "drop_worst"})  # older runs
    robust = detector_fields(run | {"drop_worst": 0.05})
    assert robust["detector"] == "dede-robust" and robust["dede_drop_worst"] == 0.05
    aux = {"n_poisoned": 200, "dense_filter": {"share": 0.05, "dropped": 1000, "poisoned_dropped": 191}}
    filtered = detector_fields(run | {"drop_dense": 0.05, "aux": aux})
    assert (filtered["detector"], filtered["dede_drop_dense"]) == ("dede-filtered", 0.05)
    assert (filtered["aux_poisoned_dropped"], filtered["aux_poisoned"]) == (191, 200)
    assert "detector" not in detector_fields(run | {"drop_dense": 0.0, "aux": {}})
    assert detector_fields(run | {"aux": {"n_train": 3040}})["aux_train_images"] == 3040  # a cut set's rows say so


def test_stage_sets_reach_every_step_of_their_stage(tmp_path: Path) -> None:
    sets = parse_stage_sets(["train:epochs=1", "pretrain:time_budget_s=60"])
    steps = _grid(tmp_path, attacks=["badencoder"], auxes=["id"], stage_sets=sets)
    for s in steps:
        cmd = " ".join(s.cmd)
        assert ("epochs=1" in cmd) == s.name.startswith("train-")
        assert ("time_budget_s=60" in cmd) == s.name.startswith("pretrain-")
    with pytest.raises(ValueError, match="STAGE:key=value"):
        parse_stage_sets(["export:x=1"])


def _touch(path: Path, fail: bool = False) -> list[str]:
    code = "import sys; sys.exit(1)" if fail else f"open({str(path)!r}, 'a').write('x')"
    return [sys.executable, "-c", code]


def test_scheduler_resumes_and_skips_dependants_of_failures(tmp_path: Path) -> None:
    a, b, c, d = (tmp_path / n for n in "abcd")
    steps = [Step("a", _touch(a), a.exists), Step("b", _touch(b), b.exists, ["a"]),
             Step("c", _touch(c, fail=True), c.exists), Step("d", _touch(d), d.exists, ["c"])]
    failed = run_steps(steps, tmp_path / "logs", jobs=2)
    assert sorted(failed) == ["c", "d"] and a.exists() and b.exists() and not d.exists()
    assert (tmp_path / "logs" / "c.log").exists()
    a.write_text("done before")
    assert run_steps(steps[:2], tmp_path / "logs") == []  # already done: nothing runs again
    assert a.read_text() == "done before" and b.read_text() == "x"


def _threads(path: Path) -> list[str]:
    """A step that writes the OMP_NUM_THREADS it was started with."""
    return [sys.executable, "-c", f"import os; open({str(path)!r}, 'w').write(os.environ['OMP_NUM_THREADS'])"]


def test_a_step_that_runs_alone_gets_every_jobs_threads(tmp_path: Path) -> None:
    pre, x, y, z = (tmp_path / n for n in ("pre", "x", "y", "z"))
    # pre runs alone (nothing else is ready): both jobs' threads; then x and y side by side: one job's each
    steps = [Step("pre", _threads(pre), pre.exists), Step("x", _threads(x), x.exists, ["pre"]),
             Step("y", _threads(y), y.exists, ["pre"])]
    assert run_steps(steps, tmp_path / "logs", jobs=2, threads=1) == []
    assert (pre.read_text(), x.read_text(), y.read_text()) == ("2", "1", "1")
    assert run_steps([Step("z", _threads(z), z.exists)], tmp_path / "logs", jobs=1, threads=3) == []
    assert z.read_text() == "3"  # one job: its own threads


def _attacked_encoder(path: Path, before: float, after: float) -> Path:
    path.mkdir(parents=True)
    (path / "encoder.json").write_text(json.dumps({"history": [
        {"stage": "pretrain-simclr", "epochs": 6},
        {"stage": "attack-x", "trigger": "ctrl", "asr_before": before, "attack_success_rate": after}]}))
    return path


def test_an_attack_that_did_not_implant_skips_its_detectors_and_their_dependants(tmp_path: Path) -> None:
    from training.attacks import not_implanted_reason

    assert not_implanted_reason(_attacked_encoder(tmp_path / "strong", 0.07, 0.97)) is None
    weak = _attacked_encoder(tmp_path / "ctrl", 0.060, 0.054)
    assert "did not implant a backdoor (attack success 0.060 -> 0.054" in str(not_implanted_reason(weak))
    assert not_implanted_reason(tmp_path / "not-run-yet") is None  # unknown until the attack ran
    steps = {s.name: s for s in _grid(tmp_path, attacks=["ctrl", "badencoder"], auxes=["id"])}
    skips = {n: s.skip for n, s in steps.items() if s.skip is not None}
    assert skips["train-ctrl-id"]()
    assert skips["train-control-simclr-ctrl-id"]()  # its control serves no other attack
    assert skips["train-badencoder-id"]() is None  # not attacked yet here: not judged
    assert all(s.skip is None for s in _grid(tmp_path, attacks=["ctrl"], auxes=["id"], include_weak=True))
    states = dry_run(list(steps.values()))  # what --dry-run prints: the skipped detectors' dependants too
    assert states["train-ctrl-id"] == states["export-ctrl-id"] == states["cell-ctrl-id"] == "skip"
    assert states["downstream-ctrl"] == states["downstream-asset-ctrl"] == "skip"
    assert states["train-badencoder-id"] == "todo"
    # the scheduler: a skipped step's dependants are skipped too, and none of that is a failure
    a, b, c = (tmp_path / n for n in "abc")
    run = [Step("a", _touch(a), a.exists, skip=lambda: "no backdoor"), Step("b", _touch(b), b.exists, ["a"]),
           Step("c", _touch(c), c.exists)]
    assert run_steps(run, tmp_path / "logs") == []
    assert c.exists() and not a.exists() and not b.exists()


def test_merge_replaces_the_same_cell_and_preset_and_keeps_the_rest() -> None:
    old = [{"source": "reproduce", "preset": "cpu", "cell": "badencoder-id", "auc": 0.1},
           {"source": "reproduce", "preset": "paper", "cell": "badencoder-id", "auc": 0.3},
           {"source": "reproduce", "preset": "cpu", "cell": "drupe-id", "auc": 0.4},
           {"bundle": "demo", "attack": "badencoder", "preset": "cpu", "auc": 0.9}]
    new = [{"source": "reproduce", "preset": "cpu", "cell": "badencoder-id", "auc": 0.2}]
    assert sorted(r["auc"] for r in merge_cells(old, new)) == [0.2, 0.3, 0.4, 0.9]
    variant = [{"source": "reproduce", "preset": "cpu", "variant": "slip", "cell": "badencoder-id", "auc": 0.5}]
    assert sorted(r["auc"] for r in merge_cells(old, variant)) == [0.1, 0.3, 0.4, 0.5, 0.9]  # a grid of its own
    # an attack record rebuilt by a narrower later run keeps the command that trained the attack ...
    attack = {"source": "reproduce", "preset": "cpu", "kind": "attack", "cell": "attack-drupe", "attack_asr": 0.5}
    first = merge_cells(old, [attack | {"command": "dede reproduce --preset cpu"}])
    again = merge_cells(first, [attack | {"command": "dede reproduce --preset cpu --aux id-filtered"}])
    assert [r["command"] for r in again if r.get("kind") == "attack"] == ["dede reproduce --preset cpu"]
    # ... unless the attack changed (it was trained again)
    retrained = merge_cells(first, [attack | {"attack_asr": 0.6, "command": "dede reproduce --attack drupe"}])
    assert [r["command"] for r in retrained if r.get("kind") == "attack"] == ["dede reproduce --attack drupe"]
    assert len(again) == len(first) == len(old) + 1


@needs_cifar
def test_tiny_reproduce_cell_end_to_end_and_resume(tmp_path: Path) -> None:
    from training.cli import main

    args = ["reproduce", "--preset", "tiny", "--root", str(tmp_path / "r"), "--attack", "badencoder", "--aux", "id",
            "--max-images", "64", "--results", str(tmp_path / "results.json"), "--report", str(tmp_path / "R.md"),
            "--figures", str(tmp_path / "fig"), "--stage-set", "train:epochs=1", "--no-downstream",
            "--no-baselines", "--include-weak"]  # a tiny attack need not implant
    assert main(args) == 0
    published = json.loads((tmp_path / "results.json").read_text())
    (attack,) = [r for r in published if r.get("kind") == "attack"]  # the attacked encoder's own record
    assert attack["attack"] == "badencoder" and 0 <= attack["attack_asr"] <= 1 and attack["attack_wall_s"] > 0
    assert list(attack["stage_epochs"]) == ["pretrain-simclr", "attack-badencoder"]  # a budget stop shows here
    records = [r for r in published if r.get("kind") != "attack"]
    assert {(r["attack"], r["test"], r["threshold_rule"]) for r in records} == {
        (a, t, rule) for a in ("badencoder", "none") for t in ("balanced", "unbalanced-1%")
        for rule in ("fpr@0.01", "paper-1.5x")}
    bal = next(r for r in records if r["attack"] == "badencoder" and r["test"] == "balanced")
    assert bal["n_clean"] == bal["n_triggered"] == 64 and 0 <= bal["auc"] <= 1 and bal["dede_epochs"] == 1
    assert bal["aux"] == "cifar10-id-1%" and bal["source"] == "reproduce" and bal["wall_s"] > 0
    ctl = next(r for r in records if r["attack"] == "none" and r["test"] == "balanced")
    assert ctl["control_for"] == "badencoder" and ctl["bundle"] == "control-simclr-badencoder-id"
    # the triggered images split by where the backdoor fired: the control is scored on the backdoored's split
    assert (ctl["n_fired"], ctl["n_unfired"]) == (bal["n_fired"], bal["n_unfired"])
    assert bal["fired_by"] == "this encoder's kNN class" and ctl["fired_by"] == "the backdoored encoder's kNN class"
    assert bal["n_fired"] == round(bal["knn_asr"] * (bal["n_fired"] + bal["n_unfired"]))
    assert "n_fired" not in next(r for r in records if r["test"] == "unbalanced-1%")
    for r in (bal, ctl):  # each detector's own training and held-out score means, from its run
        cal = json.loads((tmp_path / "r" / "dede" / r["bundle"] / "calibration.json").read_text())
        assert (r["score_mean_train"], r["score_mean_holdout"]) == (cal["aux_train"]["mean"], cal["holdout"]["mean"])
    assert bal["score_mean_train"] != ctl["score_mean_train"]  # two detectors, each read from its own run
    assert "content_fit_r" not in bal  # the paper score fits nothing
    assert (tmp_path / "fig" / "reproduce-tiny-badencoder-id.png").stat().st_size > 1000
    assert (tmp_path / "fig" / "reproduce-tiny-badencoder-id-reconstructions.png").exists()
    assert "Reproduction of the paper's detection tables, preset `tiny`" in (tmp_path / "R.md").read_text()
    cell = tmp_path / "r" / "cells" / "badencoder-id.json"
    stamp = cell.stat().st_mtime
    assert main(args) == 0  # resumed: every step is done, nothing recomputed
    assert cell.stat().st_mtime == stamp


def _cell_records(attack: str, aux: str, auc: float, ctl_auc: float,
                  trigger: str = "badencoder") -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for test in ("balanced", "unbalanced-1%"):
        for rule in ("fpr@0.01", "paper-1.5x"):
            for name, a in ((attack, auc), ("none", ctl_auc)):
                out.append({"attack": name, "detector": "dede", "test": test, "threshold_rule": rule, "auc": a,
                            "tpr": 0.5, "fpr": 0.01, "n_clean": 100, "n_triggered": 100, "aux": f"x-{aux}",
                            "aux_kind": aux, "test_trigger": trigger, "trigger": trigger,
                            "deployed": rule == "fpr@0.01",
                            "cell": f"{attack}-{aux}", "preset": "cpu", "source": "reproduce",
                            "attack_asr": 0.9 if name != "none" else 0.08, "encoder_clean_acc": 0.5,
                            "train_wall_s": 10.0, "eval_wall_s": 5.0, "dede_epochs": 15,
                            **({"control_for": attack} if name == "none" else {})})
    return out


def test_report_puts_our_numbers_next_to_the_papers_and_checks_the_targets() -> None:
    from training.reporting.reproduce import plain_grid_lines

    recs = (_cell_records("drupe", "ood-imagenette", 0.962, 0.6) + _cell_records("badencoder", "id", 0.961, 0.612)
            + _cell_records("drupe", "ood", 0.912, 0.55))
    for r in (robust := _cell_records("badencoder", "id-robust", 0.944, 0.633)):
        r.update({"detector": "dede-robust", "dede_drop_worst": 0.05, "aux": "x-id"})
    recs += robust
    for r in (filtered := _cell_records("badencoder", "id-filtered", 0.971, 0.701)):
        r.update({"detector": "dede-filtered", "dede_drop_dense": 0.05, "aux": "x-id", "aux_poisoned": 200,
                  "aux_poisoned_dropped": 191 if r["attack"] != "none" else 4})
    recs += filtered
    recs.append({"source": "reproduce", "preset": "cpu", "cell": "baselines-drupe", "attack": "drupe",
                 "detector": "asset", "test": "balanced", "threshold_rule": "asset-get_t", "auc": 0.777,
                 "aux": "cifar10-train-4000-at-1%",
                 "tpr": 0.3, "fpr": 0.2, "auc_best_epoch": 0.8, "asset_flagged": 200, "asset_flagged_poisoned": 3,
                 "asset_train_poison_rate": 0.01})
    recs.append({"source": "reproduce", "preset": "cpu", "cell": "downstream-drupe", "kind": "downstream",
                 "dataset": "gtsrb", "train_set": "poisoned-1%", "detector": "dede", "attack": "drupe", "ca": 0.5,
                 "asr": 0.04, "bundle": "drupe-id", "wall_s": 3.0})
    recs.append({"source": "reproduce", "preset": "cpu", "cell": "downstream-robust-drupe", "kind": "downstream",
                 "dataset": "gtsrb", "train_set": "poisoned-1%", "detector": "dede-robust", "attack": "drupe",
                 "ca": 0.48, "asr": 0.02, "bundle": "drupe-id-robust", "wall_s": 300.0})
    recs.append({"source": "reproduce", "preset": "cpu", "cell": "downstream-filtered-drupe", "kind": "downstream",
                 "dataset": "gtsrb", "train_set": "poisoned-1%", "detector": "dede-filtered", "attack": "drupe",
                 "ca": 0.47, "asr": 0.015, "bundle": "drupe-id-filtered", "wall_s": 280.0})
    recs.append({"source": "reproduce", "preset": "cpu", "cell": "downstream-asset-drupe", "kind": "downstream",
                 "dataset": "gtsrb", "train_set": "poisoned-1%", "detector": "asset", "attack": "drupe", "ca": 0.45,
                 "asr": 0.9, "bundle": "drupe-id", "wall_s": 700.0, "n_train": 20220, "n_train_removed": 310,
                 "n_poison_train": 202, "n_poison_removed": 4, "n_test_clean": 12630, "n_test_triggered": 12360,
                 "test_clean_flagged": 150, "test_triggered_flagged": 160, "asset_train_images": 10000,
                 "trusted_images": 1000, "asset_epochs": 10, "asset_flagged": 55})
    recs.append({"source": "reproduce", "preset": "cpu", "cell": "attack-ctrl", "kind": "attack", "attack": "ctrl",
                 "trigger": "ctrl", "attack_asr": 0.054, "asr_before": 0.06, "encoder_clean_acc": 0.495,
                 "clean_accuracy_before": 0.492, "attack_wall_s": 7758.0,
                 "stage_epochs": {"pretrain-simclr": 6, "attack-ctrl": 6}})
    recs.append({"source": "reproduce", "preset": "cpu", "cell": "attack-badencoder", "kind": "attack",
                 "attack": "badencoder", "trigger": "badencoder", "attack_asr": 0.5, "attack_wall_s": 60.0,
                 "stage_epochs": {"pretrain-simclr": 6, "attack-badencoder": 8},
                 "asr_curve": [{"epoch": 0, "asr": 0.08, "clean_accuracy": 0.49},
                               {"epoch": 4, "asr": 0.7, "clean_accuracy": 0.48}]})
    text = "\n".join(plain_grid_lines(recs))
    assert "badencoder: epoch 0 0.080 / 0.490, epoch 4 0.700 / 0.480." in text  # the attack success as it trained
    assert "Attack success while" not in "\n".join(plain_grid_lines([r for r in recs if "asr_curve" not in r]))
    # an attack with cells: the cells' numbers, completed by its own record (the epochs of each stage)
    assert "| badencoder | badencoder | 0.080 -> 0.900 |" in text and "| 6 + 8 ep, 60 s |" in text
    # an attack with no DeDe cell is still reported, and one that did not take is called out
    assert "| ctrl | ctrl | 0.060 -> 0.054 | 0.492 -> 0.495 |" in text
    assert "DECREE's verdict is about the encoder): ctrl." in text and "| 6 + 6 ep, 7758 s |" in text
    bad = next(line for line in text.splitlines() if line.startswith("| badencoder | badencoder | x-id"))
    assert "| 0.961 | 0.612 | 0.981 |" in bad and "met (>= 0.95)" in bad  # ours, control, the paper's Table 1
    assert "| 10 s (15 ep) + 5 s |" in bad  # the cpu preset's 15 epochs: no "n/N"
    rob = next(line for line in text.splitlines() if line.startswith("| badencoder | badencoder | x-id, robust"))
    assert "x-id, robust (drop_worst 0.05) | 0.944 | 0.633 | 0.981 |" in rob and "missed (>= 0.95)" in rob
    assert text.index("| x-id |") < text.index("| x-id, robust")  # after the paper's rows of the attack
    assert "the share x of highest-loss samples" in text  # the legend, only where a robust cell is shown
    assert "highest-loss" not in "\n".join(plain_grid_lines([r for r in recs if "dede_drop_worst" not in r]))
    filt = next(line for line in text.splitlines() if line.startswith("| badencoder | badencoder | x-id, dense"))
    assert ("x-id, dense-filtered (drop_dense 0.05: 191 of 200 triggered left out; control: 4) | 0.971 | 0.701 | "
            "0.981 |") in filt
    assert "met (>= 0.95)" in filt and text.index("| x-id, robust") < text.index("| x-id, dense")
    assert "10 nearest neighbours" in text  # its legend, only where a filtered cell is shown
    assert "nearest" not in "\n".join(plain_grid_lines([r for r in recs if "dede_drop_dense" not in r]))
    drupe = next(line for line in text.splitlines() if line.startswith("| drupe | badencoder | x-ood |"))
    assert "| 0.912 | 0.550 | 0.976 |" in drupe and "missed (>= 0.95)" in drupe  # the paper's DeDe OOD row
    imagenette = next(line for line in text.splitlines() if line.startswith("| drupe | badencoder | x-ood-imagenette"))
    assert "| 0.962 | 0.600 | 0.976 |" in imagenette and "met (>= 0.95)" in imagenette  # compared with it too
    assert text.index("| drupe | badencoder | x-ood |") < text.index("| drupe | badencoder | x-ood-imagenette")
    assert "| asset (asset-get_t) | drupe | 0.777 | 0.800 |" in text and "94.7 / 27.6 / 0.858" in text
    assert "| cifar10-train-4000-at-1% | 200, 1.5% (1.0%) |" in text  # step-2 flags: 3 of 200 poisoned, vs 1%
    assert "| DeDe (deployed fpr@0.01), poisoned-1% | 50.0 / 4.0 (80.5 / 0.9) |" in text  # Table 4, DRUPE
    assert "| ASSET (fitted on the set it filters), poisoned-1% | 45.0 / 90.0 (80.8 / 54.1) |" in text
    assert "| DeDe, robust training on the poisoned aux (deployed), poisoned-1% | 48.0 / 2.0 |" in text
    assert "a cell of its own: `downstream-robust-<attack>`" in text
    assert "| DeDe, the poisoned aux dense-filtered (deployed), poisoned-1% | 47.0 / 1.5 |" in text
    assert "(aux `id-filtered`: `downstream-filtered-<attack>`)" in text
    assert "trains on 10,000 images of it" in text and "base set is 1,000 trusted clean images" in text
    assert "| drupe | gtsrb | 310 of 20220 | 4 of 202 | 150 of 12630 / 160 of 12360 | 10, 55 | 700 s |" in text


def test_report_splits_each_cell_by_whether_the_backdoor_fired() -> None:
    from training.reporting.reproduce import plain_grid_lines

    recs = _cell_records("drupe", "ood", 0.912, 0.55) + _cell_records("badencoder", "id", 0.961, 0.612)
    for r in recs:
        if r["test"] == "balanced" and r["cell"] == "drupe-ood":
            bd = r["attack"] != "none"
            r.update({"deployed": r["threshold_rule"] == "fpr@0.01", "n_fired": 510, "n_unfired": 390,
                      "auc_fired": 0.981 if bd else 0.612, "auc_unfired": 0.803 if bd else 0.598,
                      "tpr_fired": 0.7 if bd else 0.02, "tpr_unfired": 0.25 if bd else 0.01})
    text = "\n".join(plain_grid_lines(recs))
    assert "Did the backdoor fire?" in text
    row = next(line for line in text.splitlines() if line.startswith("| drupe | badencoder | x-ood | 510 / 390"))
    assert row == "| drupe | badencoder | x-ood | 510 / 390 | 0.912 | 0.981 | 0.803 | 0.612 / 0.598 | 70.0 / 25.0 |"
    assert not any(line.startswith("| badencoder | badencoder | x-id | ") and "/ 390" in line
                   for line in text.splitlines())  # a cell evaluated before the split has no row
    assert "Did the backdoor fire?" not in "\n".join(plain_grid_lines(_cell_records("drupe", "ood", 0.9, 0.5)))


def test_a_stage_stopped_by_its_budget_shows_the_epochs_its_preset_schedules() -> None:
    from training.reporting.reproduce import _epochs, planned_epochs

    assert planned_epochs("pretrain-simclr", "paper") == 1000 and planned_epochs("attack-badencoder", "paper") == 200
    assert planned_epochs("dede", "cpu") == 15 and planned_epochs("attack-ctrl", "cpu") == 6
    assert planned_epochs("pretrain-clip", "cpu") == 5 and planned_epochs("attack-drupe", "paper") == 120
    assert planned_epochs("dede", "custom") is None and planned_epochs("attack-unknown", "cpu") is None
    assert _epochs({"pretrain-simclr": 23, "attack-badencoder": 24}, "paper") == "23/1000 + 24/200 ep"
    assert _epochs({"pretrain-simclr": 6, "attack-badencoder": 8}, "cpu") == "6 + 8 ep"  # full schedules
    assert _epochs({"pretrain-simclr": None, "attack-badencoder": 3}, "custom") == "? + 3 ep"


def test_decree_is_called_not_applicable_to_triggers_without_a_fixed_patch() -> None:
    from training.reporting.reproduce import verdict_lines

    verdict = {"kind": "verdict", "detector": "decree", "attack": "badclip", "encoder_role": "backdoored",
               "pl1": 0.05, "trojaned": True, "found": True, "best_cos": 0.99, "steps": 80, "baseline_wall_s": 5.0}
    cells = [{"attack": "badclip", "test_trigger": t, "detector": "dede"} for t in ("badclip", "noise-patch")]
    text = "\n".join(verdict_lines([verdict, *cells]))
    assert "| badclip | backdoored | 0.050 | trojaned |" in text
    assert "not applicable to the noise-patch test of badclip" in text and "the badclip test" not in text
    assert "not applicable" not in "\n".join(verdict_lines([verdict, cells[0]]))


def test_a_variants_cells_get_a_section_of_their_own() -> None:
    from training.reporting.reproduce import plain_grid_lines, variant_grid_lines

    plain = _cell_records("clip-backdoor", "ood", 0.577, 0.531)
    slip = [{**r, "variant": "slip", "auc": r["auc"] + 0.3} for r in _cell_records("clip-backdoor", "ood", 0.6, 0.5)]
    lines = plain_grid_lines(slip + plain)  # the plain grids' sections (RESULTS.md), whatever the records' order
    assert lines == plain_grid_lines(plain + slip) == plain_grid_lines(plain)
    variant = variant_grid_lines(slip + plain, figures="../figures")  # VARIANTS.md, one folder deeper
    assert variant == variant_grid_lines(plain + slip, figures="../figures")
    assert [line for line in lines if line.startswith("## ")] == [
        "## Reproduction of the paper's detection tables, preset `cpu`"]
    assert [line for line in variant if line.startswith("## ")] == [
        "## Reproduction of the paper's detection tables, preset `cpu`, variant `slip`"]
    text, other = "\n".join(lines), "\n".join(variant)
    assert "| 0.577 | 0.531 |" in text and "| 0.900 | 0.800 |" in other  # each grid's own numbers
    assert "| 0.900 | 0.800 |" not in text and "| 0.577 | 0.531 |" not in other
    assert "SLIP's image-only" in other and "SLIP" not in text
    assert "(figures/reproduce-cpu-clip-backdoor-ood.png)" in text
    assert "(../figures/reproduce-cpu-slip-clip-backdoor-ood.png)" in other
    assert variant_grid_lines(plain) == []  # no variant grid: nothing for VARIANTS.md


def test_retrained_cells_are_set_next_to_the_plain_grids_and_summarised() -> None:
    from training.reporting.reproduce import plain_grid_lines, retrain_lines, variant_grid_lines

    def grid(variant: str, *cells: tuple[str, float, float, str]) -> list[dict[str, object]]:
        return [{**r, **({"variant": variant} if variant else {})}
                for attack, auc, ctl, trig in cells for r in _cell_records(attack, "ood", auc, ctl, trig)]

    badclip = [{**r, "cell": "badclip-ood"} for r in _cell_records("badclip", "ood", 0.52, 0.52, "noise-patch")]
    plain = grid("", ("badencoder", 0.985, 0.807, "badencoder"), ("drupe", 0.897, 0.807, "badencoder"),
                 ("badclip", 0.586, 0.556, "badclip")) + badclip
    retrained = (grid("drupe8", ("drupe", 0.896, 0.830, "badencoder"))
                 # a control copied from the drupe8 grid: the same pair of numbers
                 + grid("badencoder", ("badencoder", 0.965, 0.830, "badencoder"))
                 + grid("clip", ("badclip", 0.629, 0.542, "badclip"))
                 + [{**r, "variant": "clip", "auc": 0.6} for r in badclip]
                 + grid("slip", ("badclip", 0.7, 0.5, "badclip")))  # another recipe: not a retrain
    text = "\n".join(retrain_lines(plain + retrained))
    assert text.startswith("## Retrains: the same cells trained again")
    assert "| drupe8 | drupe-ood | badencoder | 0.900 / 0.900 | 0.897 / 0.896 (-0.001) |" in text
    assert "| badencoder | badencoder-ood | badencoder |" in text and "0.985 / 0.965 (-0.020)" in text
    assert "| clip | badclip-ood | noise-patch |" in text and "0.520 / 0.600 (+0.080)" in text  # listed
    assert "slip" not in text.split("|---|")[1]
    # the noise patch reuses the BadCLIP detector, the copied control counts once
    assert "backdoored detectors: 3 retrained, AUC difference mean |d| 0.021, largest +0.043" in text
    assert "their controls: 2 rows" in text and "mean |d| 0.018, largest +0.023" in text
    assert retrain_lines(plain + grid("slip", ("badclip", 0.7, 0.5, "badclip"))) == []
    assert text in "\n".join(variant_grid_lines(plain + retrained))  # with the variants
    # the extra test trigger's figure is linked in its grid's section
    assert ("[detection, noise-patch trigger](figures/reproduce-cpu-badclip-ood-noise-patch.png)"
            in "\n".join(plain_grid_lines(plain)))


def test_seed_repeats_are_named_by_the_variant_they_repeat() -> None:
    from training.research.variants import SEED_REPEATS, VARIANTS, seed_repeat

    assert seed_repeat("captions-classonly-long12") == ("captions-classonly-long12", 0)
    assert seed_repeat("captions-classonly-long12-seed2") == ("captions-classonly-long12", 2)
    assert seed_repeat("captions-classonly-long12-crops6-seed1") == ("captions-classonly-long12-crops6", 1)
    for name in ("captions-classonly-long12-seed9", "drupe16", "drupe16-seed1", "captions-classonly-long12-seedx", ""):
        assert seed_repeat(name) is None
    assert seed_repeat("drupe8-seed1") == ("drupe8", 1) and seed_repeat("drupe8-seed2") is None
    assert seed_repeat("drupe8-content-seed1") == ("drupe8-content", 1)
    for name, (attack, seeds) in SEED_REPEATS.items():
        for seed in seeds:
            repeat, base = VARIANTS[f"{name}-seed{seed}"], VARIANTS[name]
            if base.rescores:  # the seed-k grid's detectors, scored as the variant scores its base's
                assert repeat.train_sets == base.train_sets and repeat.rescores == f"{base.rescores}-seed{seed}"
                assert repeat.rescores in VARIANTS
            else:
                assert repeat.train_sets == (*base.train_sets, f"seed={seed}") and not repeat.rescores
            assert repeat.attacks == (attack,) and repeat.clean == base.clean
            assert not repeat.retrain  # the detector only: not a retrain of the plain grid's recipe


def test_a_content_variant_copies_its_base_grid_and_calibrates_the_detectors_again(tmp_path: Path) -> None:
    from training.research.variants import CONTENT_SCORED, VARIANTS, Variant

    for name in CONTENT_SCORED:
        v = VARIANTS[f"{name}-content"]
        assert (v.rescores, v.train_sets, v.score, v.attacks) == (name, ("score=content",), "content",
                                                                  VARIANTS[name].attacks)
    root = tmp_path / "reproduce-tiny-drupe8-content"
    steps = {s.name: s for s in _grid(root, attacks=["drupe"], auxes=["ood", "id-filtered"], variant="drupe8-content")}
    base = tmp_path / "reproduce-tiny-drupe8"

    def copied(step: str) -> tuple[str, str, list[str]]:
        cmd = steps[step].cmd
        assert cmd[1:3] == ["-m", "training.research.rescore"]
        return cmd[cmd.index("--from") + 1], cmd[cmd.index("--to") + 1], cmd[cmd.index("--to") + 2:]

    assert copied("pretrain-simclr") == (str(base / "simclr"), str(root / "simclr"), [])
    assert copied("attack-drupe") == (str(base / "drupe"), str(root / "drupe"), [])
    for run in ("drupe-ood", "control-simclr-badencoder-ood", "drupe-id-filtered",
                "control-simclr-badencoder-id-filtered"):
        assert copied(f"train-{run}") == (str(base / "dede" / run), str(root / "dede" / run), ["--score", "content"])
        assert steps[f"export-{run}"].cmd[3] == "export"  # exported and evaluated in this grid as usual
    assert {"cell-drupe-ood", "cell-drupe-id-filtered"} <= set(steps)
    seed = {s.name: s for s in _grid(tmp_path / "reproduce-tiny-x", attacks=["drupe"], auxes=["ood"],
                                     variant="drupe8-content-seed1")}
    cmd = seed["train-drupe-ood"].cmd
    assert cmd[cmd.index("--from") + 1] == str(tmp_path / "reproduce-tiny-drupe8-seed1" / "dede" / "drupe-ood")
    with pytest.raises(ValueError, match="sets the score only"):
        Variant("simclr", (), (), "x", rescores="drupe8", train_sets=("score=content", "epochs=3"))


def test_seed_repeats_are_listed_with_their_mean_and_spread() -> None:
    from training.reporting.reproduce import seed_lines, variant_grid_lines

    def grid(variant: str, auc: float, ctl: float) -> list[dict[str, object]]:
        return [{**r, "variant": variant, "cell": f"{r.get('control_for') or r['attack']}-ood-imagenette"}
                for r in _cell_records("clip-backdoor", "ood-imagenette", auc, ctl, "clip-patch")]

    base = "captions-classonly-long12-crops6"
    recs = grid(base, 0.898, 0.552) + grid(f"{base}-seed1", 0.817, 0.550) + grid(f"{base}-seed2", 0.85, 0.56)
    text = "\n".join(seed_lines(recs))
    assert text.startswith("## Seed repeats")
    assert f"| {base} | clip-backdoor-ood-imagenette | 0 | 0.898 | 0.552 | 0.346 |" in text
    assert f"| {base} | clip-backdoor-ood-imagenette | 2 | 0.850 | 0.560 | 0.290 |" in text
    # mean 0.855, sample sd 0.0407; controls 0.554 +- 0.0053
    assert "3 seeds: AUC 0.855 +- 0.041, range 0.817 - 0.898; control 0.554 +- 0.005." in text
    assert text in "\n".join(variant_grid_lines(recs))
    assert seed_lines(grid(base, 0.898, 0.552) + grid("captions-classonly-long12", 0.86, 0.55)) == []  # one seed each
    assert seed_lines(grid("drupe16", 0.9, 0.8) + grid("drupe16-seed1", 0.8, 0.8)) == []  # not a seed repeat


def test_content_scored_detectors_are_set_next_to_the_paper_scores_of_the_same_detectors() -> None:
    from training.reporting.reproduce import content_lines, variant_grid_lines

    def grid(variant: str, auc: float, ctl: float, score: str = "paper") -> list[dict[str, object]]:
        return [{**r, "variant": variant, "score": score, "cell": f"{r.get('control_for') or r['attack']}-ood"}
                for r in _cell_records("drupe", "ood", auc, ctl, "badencoder")]

    paper = grid("drupe8", 0.933, 0.851) + grid("drupe8-seed1", 0.949, 0.884)
    content = grid("drupe8-content", 0.917, 0.795, "content@0.28") + grid("drupe8-content-seed1", 0.951, 0.8)
    for r in content[:8]:
        r["content_fit_r"] = 0.4 if r["attack"] == "none" else 0.381
    text = "\n".join(content_lines(paper + content))
    assert text.startswith("## The content-adjusted score against the paper score")
    assert ("| drupe8 | drupe-ood | badencoder | 0.280 (r 0.38) / 0.280 (r 0.40) | 0.933 / 0.917 (-0.016) | "
            "0.851 / 0.795 | "
            "0.082 / 0.122 |") in text
    assert "| drupe8-seed1 | drupe-ood | badencoder | - / - | 0.949 / 0.951 (+0.002) |" in text
    assert "backdoored detectors 2, AUC difference (content - paper) mean -0.007, from -0.016 to +0.002" in text
    assert ("controls (a control shared by two cells counts twice) mean -0.070, from -0.084 to -0.056; the gap over "
            "the control (AUC - control) mean +0.063, from +0.040 to +0.086.") in text
    assert text in "\n".join(variant_grid_lines(paper + content))
    assert content_lines(paper) == [] and content_lines(content) == []  # nothing to pair


def test_training_and_held_out_score_means_are_listed_per_detector() -> None:
    from training.reporting.reproduce import memorisation_lines

    recs = _cell_records("clip-backdoor", "ood", 0.8, 0.55, "clip-patch")
    assert memorisation_lines(recs) == []  # runs not on this machine: no table
    for r in recs:
        r.update({"variant": "captions-classonly-long12-dede3x", "dede_epochs": 270, "aux_train_images": 3040,
                  "score_mean_train": 2000.0 if r["attack"] == "none" else 2275.0, "score_mean_holdout": 2920.0})
    text = "\n".join(memorisation_lines(recs))
    assert ("| cpu-captions-classonly-long12-dede3x | clip-backdoor-ood | backdoored | 270 | 3040 | 2275 | 2920 | "
            "1.284 |") in text
    assert "| control | 270 | 3040 | 2000 | 2920 | 1.460 |" in text
    assert text.count("| cpu-captions") == 2  # one row per detector, not per test set or threshold rule


def test_publishing_without_finished_cells_says_so_and_leaves_the_docs(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    results, report = tmp_path / "results.json", tmp_path / "RESULTS.md"
    assert main(["reproduce", "--preset", "tiny", "--publish-only", "--root", str(tmp_path / "runs"),
                 "--results", str(results), "--report", str(report)]) == 2
    assert "no finished cells" in capsys.readouterr().err
    assert not results.exists() and not report.exists()
