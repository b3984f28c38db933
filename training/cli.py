"""``dede``: one command with subcommands, the product's first and the research ones in a group of their own.

Every command imports what it needs inside its own function: these lazy imports keep ``dede serve`` (and
``dede --help``) free of torch on a runtime-only install, and they are the only imports in the package that are
not at the top of a module."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.errors import BundleError
from training.attacks import ATTACK_NAMES, IMPLANT_MIN_GAIN
from training.config import EncoderOptions
from training.research.grid import AUXES, DEFAULT_OOD

PRESETS = ["tiny", "cpu", "paper"]


def _config_args(p: argparse.ArgumentParser, presets: list[str]) -> None:
    p.add_argument("--preset", choices=presets, default=None, help="size preset")
    p.add_argument("--config", default=None, help="JSON file of config keys")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")


def _research_encoders() -> None:
    """Register the encoder architectures that live outside the core (the mini-CLIP's image tower), so that a
    command that loads an encoder directory can build any encoder ``dede pretrain`` or ``dede attack`` wrote."""
    import training.pretrain.clip_model  # noqa: F401  (registers ``clip_image`` with training.encoders)


def cmd_pretrain(a: argparse.Namespace) -> None:
    from training.config import resolve_config

    if a.method == "clip":
        from training.pretrain.clip_train import CLIP_PRESETS, ClipConfig, pretrain_clip

        ccfg = resolve_config(ClipConfig, CLIP_PRESETS, a.preset, a.config, a.overrides)
        print(json.dumps(pretrain_clip(ccfg, a.out)))
        return
    from training.pretrain.simclr import PRETRAIN_PRESETS, PretrainConfig, pretrain_simclr

    cfg = resolve_config(PretrainConfig, PRETRAIN_PRESETS, a.preset, a.config, a.overrides)
    print(json.dumps(pretrain_simclr(cfg, a.out)))


def cmd_attack(a: argparse.Namespace) -> None:
    from training.attacks import run_attack

    metrics = run_attack(a.method, a.encoder, a.out, a.preset, a.config, a.overrides)
    if a.metrics:
        Path(a.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(a.metrics).write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics))


def _encoder_options(a: argparse.Namespace) -> EncoderOptions:
    def three(text: str | None, flag: str) -> tuple[float, float, float] | None:
        if text is None:
            return None
        values = tuple(float(v) for v in text.split(","))
        if len(values) != 3:
            raise ValueError(f"{flag} takes three comma-separated numbers (R,G,B), got {text!r}")
        return values  # type: ignore[return-value]

    return EncoderOptions(a.weights, a.input_size, three(a.mean, "--mean"), three(a.std, "--std"), a.output)


def cmd_train(a: argparse.Namespace) -> None:
    from dataclasses import asdict

    from training.config import TRAIN_PRESETS, TrainConfig, input_size_layer, resolve_config
    from training.data import aux_layout

    _research_encoders()
    options = _encoder_options(a)
    layer: dict[str, object] = {}
    if a.encoder:  # the input size decides the detector's patch size and widths (config.input_size_layer)
        from training.user_encoders import open_encoder

        _, spec = open_encoder(a.encoder, options)
        layer = input_size_layer(a.preset, spec.input_size)
    if a.aux:  # a plain folder of images or a <split>/<class>/ tree: which one, from what it holds
        layer |= {"aux_source": a.aux, "aux_split": aux_layout(a.aux)}
    cfg = resolve_config(TrainConfig, TRAIN_PRESETS, a.preset, a.config, a.overrides, layer)
    if a.show_config:
        print(json.dumps(asdict(cfg), indent=1))
        return
    if not a.encoder or not a.out:
        raise ValueError("--encoder and --out are required (or --show-config to print the resolved config)")
    from training.train import train_dede

    print(json.dumps(train_dede(cfg, a.encoder, a.out, options)))


def cmd_calibrate(a: argparse.Namespace) -> None:
    _research_encoders()
    from training.calibrate import calibrate_bundle, calibrate_run

    if a.bundle:
        print(json.dumps(calibrate_bundle(a.bundle, a.rule, a.incident, a.holdout)))
        return
    print(json.dumps(calibrate_run(a.run, a.rule, a.score, a.encoder, _encoder_options(a), a.incident)))


def cmd_export(a: argparse.Namespace) -> None:
    _research_encoders()
    from training.export import export_bundle

    print(export_bundle(a.run, a.out, a.name, encoder=a.encoder, options=_encoder_options(a)))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from training.evaluation.evaluate import evaluate_cli

    evaluate_cli(a)


def cmd_decompose(a: argparse.Namespace) -> None:
    from training.research.decompose import decompose_cli

    decompose_cli(a)


def cmd_ensemble(a: argparse.Namespace) -> None:
    from training.research.ensemble import ensemble_cli

    ensemble_cli(a)


def cmd_reproduce(a: argparse.Namespace) -> None:
    from training.research.reproduce import reproduce_cli

    reproduce_cli(a)


def cmd_study(a: argparse.Namespace) -> None:
    from training.research.study import run_study

    run_study(a.axis, a.bad_encoder, a.clean_encoder, a.out, a.results, a.report, a.n_test, tuple(a.skip))


def cmd_scan(a: argparse.Namespace) -> None:
    from training.scan import scan

    scan(a.bundle, a.source, a.output, a.batch_size)


def cmd_serve(a: argparse.Namespace) -> None:
    import os

    import uvicorn
    from pydantic import ValidationError

    from service.scoring import Scorer
    from service.settings import Settings

    if a.bundle:
        os.environ["DEDE_BUNDLE"] = a.bundle
    # The settings and the bundle are checked here, before any server starts, so that a mistake is one line on
    # stderr (main) instead of a traceback from each worker. The bundle is loaded once on the CPU, then let go.
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = f"DEDE_{str(err['loc'][0]).upper()}" if err["loc"] else ""
            message = err["msg"].removeprefix("Value error, ")
            problems.append(message if name in message else f"{name}: {message}")
        raise ValueError(f"invalid settings: {'; '.join(problems)}") from None
    Scorer.from_bundle(settings.bundle, ("CPUExecutionProvider",), mask_draws=settings.mask_draws,
                       manifest_sha256=settings.bundle_sha256).warm_up()
    if a.workers > 1:  # prometheus_client multiprocess mode: each worker writes its values to files
        import shutil
        import tempfile

        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="dede-metrics-")
        shutil.rmtree(metrics_dir, ignore_errors=True)  # no stale values from an earlier run
        os.makedirs(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from service.protocol import GuardedHttpProtocol
    from service.reuseport import APP, serve

    if a.reuse_port and a.workers > 1:
        serve(a.host, a.port, a.workers)
        return
    # GuardedHttpProtocol: httptools with a header cap, header/body timeouts and a connection limit
    uvicorn.run(APP, factory=True, host=a.host, port=a.port, workers=a.workers, http=GuardedHttpProtocol)


PRODUCT, RESEARCH = "product commands", "research commands (the paper's attacks, grid and studies)"


@dataclass(frozen=True)
class Command:
    name: str
    group: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


def _encoder_args(p: argparse.ArgumentParser, required: bool) -> None:
    """The one ``--encoder`` syntax (training.user_encoders)."""
    p.add_argument("--encoder", default=None, required=required,
                   help="the encoder: a directory written by dede pretrain/attack, FILE.onnx, timm:ARCH, hf:DIR "
                        "(save_pretrained) or open_clip:ARCH" + ("" if required else
                                                                 " (default: the one the run was trained with)"))
    p.add_argument("--weights", default=None, help="timm:/open_clip: a safetensors file as state_dict() saves it")
    p.add_argument("--input-size", type=int, default=None,
                   help="the square input side; required for an ONNX model with dynamic height/width")
    p.add_argument("--mean", default=None, metavar="R,G,B", help="input mean (default: the model's own, else "
                                                                  "ImageNet's above 32 px, CIFAR-10's at 32 px)")
    p.add_argument("--std", default=None, metavar="R,G,B", help="input std (with --mean)")
    p.add_argument("--output", default=None, help="ONNX: the output that is the embedding (when it has several)")


def _train_args(p: argparse.ArgumentParser) -> None:
    _encoder_args(p, required=False)
    p.add_argument("--aux", default=None, metavar="DIR",
                   help="the auxiliary images: a plain folder (or zip) of images, or a <split>/<class>/ tree; "
                        "sets aux_source and aux_split")
    _config_args(p, [*PRESETS, "study"])  # study: the small detector of `dede study`
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument("--show-config", action="store_true",
                   help="print the resolved config (defaults < preset < the encoder's input size < --config < "
                        "--set) and exit")


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="a run directory (dede train): its calibration.json")
    where.add_argument("--bundle", help="a bundle (dede export): its manifest, in place, from its calibration "
                       "scores (or --holdout)")
    _encoder_args(p, required=False)
    p.add_argument("--rule", default="fpr@0.001", help="the alert threshold: 'fpr@<q>' (conformal: FPR <= q; "
                   "needs >= 1/q held-out images) or 'paper-1.5x'")
    p.add_argument("--incident", default="auto", help="the incident threshold: 'fpr@<q>', or 'auto' (fpr@0.0001, "
                   "or the strictest q the held-out images allow)")
    p.add_argument("--holdout", default=None, help="with --bundle: score these clean images through the bundle as "
                   "its calibration scores: a dataset[:split], a folder, or 'auto' (the held-out split rebuilt from "
                   "the bundle's provenance, checked by its fingerprint)")
    p.add_argument("--score", default=None, help="switch the score ('paper', 'trimmed@<k>', or 'content': the "
                   "content-adjusted score, its exponent fitted on the auxiliary images); rescores")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True)
    _encoder_args(p, required=False)
    p.add_argument("--name", required=True)
    p.add_argument("--out", default="models")


def _scan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("source")
    p.add_argument("--output", default="-", help="CSV file, '-' for stdout")
    p.add_argument("--batch-size", type=int, default=256)


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="bundle directory (else $DEDE_BUNDLE)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--reuse-port", action="store_true",
                   help="with --workers: one SO_REUSEPORT socket per process (Linux), so that the kernel spreads "
                        "connections evenly over the processes")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("--control-bundle", default=None, help="the clean encoder's bundle (the control)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--max-images", type=int, default=0, help="limit the clean test images (0 = all)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write results.json, RESULTS.md and figures/ here (default: runs/evaluate/<bundle name>)")
    p.add_argument("--publish", action="store_true",
                   help="write into the project's committed docs/results.json and docs/RESULTS.md instead (what "
                        "`make evaluate` does for the demo bundles)")
    p.add_argument("--preset", default=None, help="recorded in the results (default: the bundle's own preset)")
    p.add_argument("--honesty-images", type=int, default=2000,
                   help="clean test images for the honesty evaluation (trigger + benign perturbations, "
                        "several scores); 0 skips it")
    p.add_argument("--command-line", default=None, help="recorded as the command that made the results")


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["simclr", "clip"], default="simclr",
                   help="simclr: SimCLR ResNet-18; clip: MiniCLIP on CIFAR-10 captions (image tower = encoder)")
    _config_args(p, PRESETS)
    p.add_argument("--out", required=True, help="output directory for the encoder")


def _attack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", choices=ATTACK_NAMES, help="attack")
    p.add_argument("--encoder", default=None,
                   help="clean encoder directory (ctrl trains from scratch: there it is the optional control)")
    _config_args(p, PRESETS)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", default=None, help="also write the attack's metrics to this JSON file (a record to "
                                                   "commit; the encoder's own history keeps them too)")


def _reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESETS, default="cpu")
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


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--axis", action="append", required=True,
                   help="decoder, epochs, aux, poison, filter, differential or encoder (repeatable)")
    p.add_argument("--bad-encoder", default="runs/demo-cpu/badencoder")
    p.add_argument("--clean-encoder", default="runs/demo-cpu/clean-encoder")
    p.add_argument("--out", default="runs/study")
    p.add_argument("--results", default="docs/research/study.json")
    p.add_argument("--report", default="docs/research/STUDY.md")
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--skip", action="append", default=[], metavar="CELL", help="leave a cell out (repeatable)")


def _decompose_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="the (suspected) backdoored encoder's bundle")
    p.add_argument("--control", required=True, help="the clean encoder's bundle (the control)")
    p.add_argument("--label", default=None, help="the pair's row in the report (default: the bundle and trigger); "
                                                 "a new run of a label replaces its records")
    p.add_argument("--trigger", default=None, help="test trigger (default: the attack the bundle's manifest records)")
    p.add_argument("--target-class", default=None,
                   help="the CIFAR-10 class the trigger is suspected to map to (default: the recorded attack's)")
    p.add_argument("--max-images", type=int, default=0, help="limit the non-target test images (0 = all)")
    p.add_argument("--knn-bank", type=int, default=10000, help="clean train images of the kNN probe of firing")
    p.add_argument("--results", default="docs/research/decomposition.json")
    p.add_argument("--report", default="docs/research/DECOMPOSITION.md")
    p.add_argument("--command-line", default=None, help="recorded as the command that made the results")


def _ensemble_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", action="append", required=True, help="a backdoored encoder's bundle (repeat, >= 2)")
    p.add_argument("--control", action="append", required=True, help="a clean-encoder control bundle (repeat, >= 2)")
    p.add_argument("--label", default=None, help="the ensemble's section in the report (default: from the bundles); "
                                                 "a new run of a label replaces its records")
    p.add_argument("--max-images", type=int, default=0, help="limit the CIFAR-10 test images (0 = all)")
    p.add_argument("--results", default="docs/research/ensemble.json")
    p.add_argument("--report", default="docs/research/ENSEMBLE.md")
    p.add_argument("--command-line", default=None, help="recorded as the command that made the results")


COMMANDS = [
    Command("train", PRODUCT, "train the DeDe decoder on an auxiliary set (Algorithm 1)", _train_args, cmd_train),
    Command("calibrate", PRODUCT, "(re)compute the threshold of a trained run", _calibrate_args, cmd_calibrate),
    Command("export", PRODUCT, "write an ONNX bundle into models/<name>", _export_args, cmd_export),
    Command("scan", PRODUCT, "score a folder or zip of images offline", _scan_args, cmd_scan),
    Command("serve", PRODUCT, "run the scoring service", _serve_args, cmd_serve),
    Command("evaluate", PRODUCT, "AUC/TPR/FPR of a bundle on clean vs triggered images", _evaluate_args,
            cmd_evaluate),
    Command("pretrain", RESEARCH, "pre-training of a clean encoder (SimCLR, or a mini-CLIP)", _pretrain_args,
            cmd_pretrain),
    Command("attack", RESEARCH, "backdoor an encoder", _attack_args, cmd_attack),
    Command("reproduce", RESEARCH, "the paper's detection grid (attacks x auxiliary sets), resumable",
            _reproduce_args, cmd_reproduce),
    Command("study", RESEARCH, "scale and poisoning study: backdoored vs control detectors", _study_args, cmd_study),
    Command("decompose", RESEARCH, "where a detector's separation comes from: the trigger's pixels or the backdoor's "
            "embedding", _decompose_args, cmd_decompose),
    Command("ensemble", RESEARCH, "detectors of one encoder trained with different seeds, alone and averaged",
            _ensemble_args, cmd_ensemble),
]


def _train_epilog() -> str:
    """The config keys that matter to a user, with their defaults and each preset's value."""
    from training.config import TRAIN_PRESETS, TrainConfig, config_keys

    rows = config_keys(TrainConfig, {p: TRAIN_PRESETS[p] for p in PRESETS})
    width = max(len(r["key"]) for r in rows)
    lines = ["config keys (--set KEY=VALUE; the research keys: docs/CONFIGURATION.md; --show-config prints all):"]
    for r in rows:
        presets = ", ".join(f"{p} {v}" for p, v in r["presets"].items())
        lines.append(f"  {r['key']:<{width}}  {r['default']!r}{f' ({presets})' if presets else ''}: {r['help']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    groups = {g: [c for c in COMMANDS if c.group == g] for g in (PRODUCT, RESEARCH)}
    width = max(len(c.name) for c in COMMANDS)
    listing = "\n\n".join(f"{g}:\n" + "\n".join(f"  {c.name:<{width}}  {c.help}" for c in cs)
                           for g, cs in groups.items())
    parser = argparse.ArgumentParser(prog="dede", description="DeDe backdoor alarm for image encoders",
                                     epilog=listing + "\n\n`dede COMMAND --help` for a command's options.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        p = sub.add_parser(c.name, description=c.help, formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=_train_epilog() if c.name == "train" else None)
        c.add_args(p)
        p.set_defaults(func=c.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (ValueError, FileNotFoundError, BundleError, MemoryError) as exc:  # bad arguments, files, sizes
        print(f"dede {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
