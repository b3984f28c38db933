"""``dede``: one command with subcommands. Heavy imports (torch) happen inside each subcommand, so
``dede serve`` works on a runtime-only install."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from service.errors import BundleError
from training.attacks import ATTACK_NAMES, IMPLANT_MIN_GAIN
from training.reproduce import AUXES, DEFAULT_OOD


def _config_args(p: argparse.ArgumentParser, presets: list[str]) -> None:
    p.add_argument("--preset", choices=presets, default=None, help="size preset")
    p.add_argument("--config", default=None, help="JSON file of config keys")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")


def cmd_pretrain(a: argparse.Namespace) -> None:
    from training.config import resolve_config

    if a.method == "clip":
        from training.clip_train import CLIP_PRESETS, ClipConfig, pretrain_clip

        ccfg = resolve_config(ClipConfig, CLIP_PRESETS, a.preset, a.config, a.overrides)
        print(json.dumps(pretrain_clip(ccfg, a.out)))
        return
    from training.ssl import PRETRAIN_PRESETS, PretrainConfig, pretrain_simclr

    cfg = resolve_config(PretrainConfig, PRETRAIN_PRESETS, a.preset, a.config, a.overrides)
    print(json.dumps(pretrain_simclr(cfg, a.out)))


def cmd_attack(a: argparse.Namespace) -> None:
    from training.attacks import run_attack

    metrics = run_attack(a.method, a.encoder, a.out, a.preset, a.config, a.overrides)
    if a.metrics:
        Path(a.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(a.metrics).write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics))


def cmd_train(a: argparse.Namespace) -> None:
    from training.config import resolve_config
    from training.train_dede import TRAIN_PRESETS, TrainConfig, train_dede

    cfg = resolve_config(TrainConfig, TRAIN_PRESETS, a.preset, a.config, a.overrides)
    print(json.dumps(train_dede(cfg, a.encoder, a.out)))


def cmd_calibrate(a: argparse.Namespace) -> None:
    from training.calibrate import calibrate_run

    print(json.dumps(calibrate_run(a.run, a.rule, a.score)))


def cmd_export(a: argparse.Namespace) -> None:
    from training.export import export_bundle

    print(export_bundle(a.run, a.out, a.name))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from training.evaluate import evaluate_cli

    evaluate_cli(a)


def cmd_decompose(a: argparse.Namespace) -> None:
    from training.decompose import decompose_cli

    decompose_cli(a)


def cmd_ensemble(a: argparse.Namespace) -> None:
    from training.ensemble import ensemble_cli

    ensemble_cli(a)


def cmd_reproduce(a: argparse.Namespace) -> None:
    from training.reproduce import reproduce_cli

    reproduce_cli(a)


def cmd_study(a: argparse.Namespace) -> None:
    from training.study import run_study

    run_study(a.axis, a.bad_encoder, a.clean_encoder, a.out, a.results, a.report, a.n_test, tuple(a.skip))


def cmd_scan(a: argparse.Namespace) -> None:
    from training.scan import scan

    scan(a.bundle, a.source, a.output, a.batch_size)


def cmd_serve(a: argparse.Namespace) -> None:
    import os

    import uvicorn

    if a.bundle:
        os.environ["DEDE_BUNDLE"] = a.bundle
    if a.workers > 1:  # prometheus_client multiprocess mode: each worker writes its values to files
        import shutil
        import tempfile

        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="dede-metrics-")
        shutil.rmtree(metrics_dir, ignore_errors=True)  # no stale values from an earlier run
        os.makedirs(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from service.reuseport import APP, serve

    if a.reuse_port and a.workers > 1:
        serve(a.host, a.port, a.workers)
        return
    uvicorn.run(APP, factory=True, host=a.host, port=a.port, workers=a.workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dede", description="DeDe backdoor alarm for image encoders")
    sub = parser.add_subparsers(dest="command", required=True)
    presets = ["tiny", "cpu", "paper"]

    p = sub.add_parser("pretrain", help="pre-training of a clean encoder (SimCLR, or a mini-CLIP)")
    p.add_argument("--method", choices=["simclr", "clip"], default="simclr",
                   help="simclr: SimCLR ResNet-18; clip: MiniCLIP on CIFAR-10 captions (image tower = encoder)")
    _config_args(p, presets)
    p.add_argument("--out", required=True, help="output directory for the encoder")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("attack", help="backdoor an encoder")
    p.add_argument("method", choices=ATTACK_NAMES, help="attack")
    p.add_argument("--encoder", default=None,
                   help="clean encoder directory (ctrl trains from scratch: there it is the optional control)")
    _config_args(p, presets)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", default=None, help="also write the attack's metrics to this JSON file (a record to "
                                                   "commit; the encoder's own history keeps them too)")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("train", help="train the DeDe decoder on an auxiliary set (Algorithm 1)")
    p.add_argument("--encoder", required=True, help="victim encoder directory or .onnx file")
    _config_args(p, [*presets, "study"])  # study: the small detector of `dede study`
    p.add_argument("--out", required=True, help="run directory")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="(re)compute the threshold of a trained run")
    p.add_argument("--run", required=True)
    p.add_argument("--rule", default="fpr@0.01", help="'paper-1.5x' or 'fpr@<q>'")
    p.add_argument("--score", default=None, help="switch the score ('paper', 'trimmed@<k>', or 'content': the "
                   "content-adjusted score, its exponent fitted on the auxiliary images); rescores")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("export", help="write an ONNX bundle into models/<name>")
    p.add_argument("--run", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", default="models")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="AUC/TPR/FPR of a bundle on clean vs triggered images")
    p.add_argument("--bundle", required=True)
    p.add_argument("--control-bundle", default=None, help="the clean encoder's bundle (the control)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--max-images", type=int, default=0, help="limit the clean test images (0 = all)")
    p.add_argument("--results", default="docs/results.json")
    p.add_argument("--report", default="docs/RESULTS.md")
    p.add_argument("--preset", default="cpu", help="recorded in the results")
    p.add_argument("--honesty-images", type=int, default=2000,
                   help="clean test images for the honesty evaluation (trigger + benign perturbations, "
                        "several scores); 0 skips it")
    p.add_argument("--command-line", default=None, help="recorded as the command that made the results")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("decompose", help="where a detector's separation comes from: trigger pixels or the "
                                         "backdoor's embedding (pairs images with other embeddings)")
    p.add_argument("--bundle", required=True, help="the (suspected) backdoored encoder's bundle")
    p.add_argument("--control", required=True, help="the clean encoder's bundle (the control)")
    p.add_argument("--label", default=None, help="the pair's row in the report (default: the bundle and trigger); "
                                                 "a new run of a label replaces its records")
    p.add_argument("--trigger", default=None, help="test trigger (default: the attack the bundle's manifest records)")
    p.add_argument("--target-class", default=None,
                   help="the CIFAR-10 class the trigger is suspected to map to (default: the recorded attack's)")
    p.add_argument("--max-images", type=int, default=0, help="limit the non-target test images (0 = all)")
    p.add_argument("--knn-bank", type=int, default=10000, help="clean train images of the kNN probe of firing")
    p.add_argument("--results", default="docs/decomposition.json")
    p.add_argument("--report", default="docs/DECOMPOSITION.md")
    p.add_argument("--command-line", default=None, help="recorded as the command that made the results")
    p.set_defaults(func=cmd_decompose)

    p = sub.add_parser("ensemble", help="detectors of one encoder trained with different seeds: alone and with "
                                        "their scores averaged, for every ensemble size")
    p.add_argument("--bundle", action="append", required=True, help="a backdoored encoder's bundle (repeat, >= 2)")
    p.add_argument("--control", action="append", required=True, help="a clean-encoder control bundle (repeat, >= 2)")
    p.add_argument("--label", default=None, help="the ensemble's section in the report (default: from the bundles); "
                                                 "a new run of a label replaces its records")
    p.add_argument("--max-images", type=int, default=0, help="limit the CIFAR-10 test images (0 = all)")
    p.add_argument("--results", default="docs/ensemble.json")
    p.add_argument("--report", default="docs/ENSEMBLE.md")
    p.add_argument("--command-line", default=None, help="recorded as the command that made the results")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("reproduce", help="the paper's detection grid (attacks x auxiliary sets), resumable")
    p.add_argument("--preset", choices=presets, default="cpu")
    p.add_argument("--root", default=None,
                   help="working directory (default runs/reproduce-<preset>, or runs/reproduce-<preset>-<variant>)")
    p.add_argument("--variant", default="", help="train one clean encoder and its attacks differently: 'slip' (the "
                                                 "mini-CLIP with SLIP's image-only term, weight 1), 'slip4' (weight "
                                                 "4), 'drupe16' (DRUPE trained 16 epochs), 'drupe8' (DRUPE as in the "
                                                 "plain grid, a grid of its own), 'clip' (the mini-CLIP "
                                                 "and both attacks as in the plain grid, a grid of its own); "
                                                 "detection cells only")
    p.add_argument("--attack", action="append", default=[], help="only this attack (repeatable; default all, or "
                                                                  "all on the variant's encoder)")
    p.add_argument("--aux", action="append", default=[],
                   help=f"{', '.join(AUXES)} (repeatable; default all)")
    p.add_argument("--ood-dataset", default=DEFAULT_OOD,
                   help=f"the out-of-distribution auxiliary set of aux 'ood' ({DEFAULT_OOD}, imagenette, or a path); "
                        f"the runs and cells of a set other than {DEFAULT_OOD} are named ood-<its name>")
    p.add_argument("--ood-images", type=int, default=0,
                   help="train the out-of-distribution detectors on this many of its images (0: the preset's); "
                        "their runs and cells are named ood-<set>-<images>")
    p.add_argument("--stage-set", action="append", default=[], metavar="STAGE:KEY=VALUE",
                   help="override a config key of every pretrain / attack / train step (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="steps run side by side")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of each step (0: leave as is)")
    p.add_argument("--max-images", type=int, default=0, help="clean test images per cell (0 = all 10,000)")
    p.add_argument("--results", default="docs/results.json")
    p.add_argument("--report", default="docs/RESULTS.md")
    p.add_argument("--figures", default="docs/figures")
    p.add_argument("--no-downstream", action="store_true", help="leave out the downstream defence grid")
    p.add_argument("--no-baselines", action="store_true", help="leave out ASSET and DECREE")
    p.add_argument("--include-weak", action="store_true",
                   help="also train detectors (and run the downstream defence) for attacks that did not implant a "
                        f"backdoor (attack success rose by less than {IMPLANT_MIN_GAIN}); by default they are "
                        "skipped")
    p.add_argument("--dry-run", action="store_true", help="list the steps and whether each is done")
    p.add_argument("--no-publish", action="store_true", help="do not touch results.json / RESULTS.md")
    p.add_argument("--publish-only", action="store_true",
                   help="run nothing: merge the finished cells under --root into results.json / RESULTS.md")
    p.add_argument("--command-line", default=None, help="recorded as the command that made the results")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("study", help="scale and poisoning study: backdoored vs control detectors")
    p.add_argument("--axis", action="append", required=True,
                   help="decoder, epochs, aux, poison, filter, differential or encoder (repeatable)")
    p.add_argument("--bad-encoder", default="runs/demo-cpu/badencoder")
    p.add_argument("--clean-encoder", default="runs/demo-cpu/clean-encoder")
    p.add_argument("--out", default="runs/study")
    p.add_argument("--results", default="docs/study.json")
    p.add_argument("--report", default="docs/STUDY.md")
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--skip", action="append", default=[], metavar="CELL", help="leave a cell out (repeatable)")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("scan", help="score a folder or zip of images offline")
    p.add_argument("--bundle", required=True)
    p.add_argument("source")
    p.add_argument("--output", default="-", help="CSV file, '-' for stdout")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("serve", help="run the scoring service")
    p.add_argument("--bundle", default=None, help="bundle directory (else $DEDE_BUNDLE)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--reuse-port", action="store_true",
                   help="with --workers: one SO_REUSEPORT socket per process (Linux), so that the kernel spreads "
                        "connections evenly over the processes")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (ValueError, FileNotFoundError, BundleError) as exc:  # bad arguments, missing or corrupted files
        print(f"dede {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
