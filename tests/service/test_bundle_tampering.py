"""Tampered bundles that the file hashes alone let through: an edited threshold or normalisation in manifest.json,
models with external data, a manifest other than the pinned one, swapped or foreign models. Each is refused at
load (``load_manifest`` / ``Scorer.from_bundle``, the service's start, ``dede scan``) with a one-line
``BundleError`` that says what is wrong."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.errors import BundleError
from service.manifest import external_tensor, load_manifest, sha256_file, threshold_range
from service.scoring import Scorer
from tests.conftest import CONTROL_BUNDLE, DEMO_BUNDLE, EXAMPLES


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """The demo bundle as a bundle made before calibration scores: the threshold (fpr@0.01) is checked against the
    recorded statistics only (tests/service/test_pvalues.py checks the calibrated bundle's exact thresholds)."""
    dst = tmp_path / "b"
    shutil.copytree(DEMO_BUNDLE, dst)
    (dst / "calibration.f32").unlink()

    def legacy(d: dict[str, Any]) -> None:
        t = d["threshold"]
        d.pop("calibration")
        t.pop("incident")
        t["alternatives"] = {k: v for k, v in t["alternatives"].items() if k in ("paper-1.5x", "fpr@0.01")}
        t.update(rule="fpr@0.01", value=t["alternatives"]["fpr@0.01"])

    edit(dst, legacy)
    return dst


def edit(bundle: Path, fn: Callable[[dict[str, Any]], object]) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def rehash(bundle: Path) -> None:
    """Make the manifest's file hashes match the files again, so that only the newer checks can object."""
    edit(bundle, lambda d: [d[part].update(sha256=sha256_file(bundle / d[part]["file"]))
                            for part in ("encoder", "detector")])


def refused(bundle: Path, match: str, **kwargs: Any) -> str:
    """The one-line ``BundleError`` that ``Scorer.from_bundle`` (hence the service and ``dede scan``) raises."""
    with pytest.raises(BundleError, match=match) as info:
        Scorer.from_bundle(bundle, ("CPUExecutionProvider",), **kwargs).warm_up()
    assert "\n" not in info.value.message
    return info.value.message


@pytest.mark.parametrize("demo", [DEMO_BUNDLE, CONTROL_BUNDLE])
def test_the_committed_bundles_pass_every_check(demo: Path) -> None:
    m = load_manifest(demo)
    lo, hi = threshold_range(m.threshold.rule, m.threshold.aux_train, m.threshold.holdout)
    assert lo <= m.threshold.value <= hi
    for rule, value in m.threshold.alternatives.items():
        lo, hi = threshold_range(rule, m.threshold.aux_train, m.threshold.holdout)
        assert lo <= value <= hi
    assert Scorer.from_bundle(demo, ("CPUExecutionProvider",)).warm_up() == [1]


# --- the threshold against its calibration statistics ---


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # the alarm switched off, or every image an alert
        (lambda t: t.update(value=1e30), r"threshold.value 1e\+30 is outside \[4501.\d+, 8502.\d+\]"),
        (lambda t: t.update(value=10.0), r"threshold.value 10 is outside \[4501.\d+, 8502.\d+\]"),
        # consistent value and alternative, still far above the held-out scores' upper quantile
        (lambda t: (t.update(value=9000.0), t["alternatives"].update({"fpr@0.01": 9000.0})), "threshold.value 9000"),
        # the deployed value left alone, an alternative (what `dede evaluate` reports) edited
        (lambda t: t["alternatives"].update({"paper-1.5x": 1e9}), r"threshold.alternatives\['paper-1.5x'\] 1e\+09"),
        # another rule named without its value: paper-1.5x is 1.5 x the auxiliary mean (3763.4)
        (lambda t: t.update(rule="paper-1.5x"), r"threshold.value 58\d\d.\d+ is outside \[3763.\d+, 3763.\d+\]"),
        # the statistics edited to fit a huge threshold are refused by what they imply of each other
        (lambda t: (t.update(value=1e30), t["alternatives"].clear(), t["holdout"]["quantiles"].clear()),
         r"threshold.value 1e\+30 is outside \[2397.6, 13186\]"),
        (lambda t: t["holdout"].update(std=float("nan")), "holdout.std"),
        (lambda t: t.update(value=float("inf")), "threshold.value"),
        (lambda t: t["holdout"].update(count=0), r"outside \[inf, -inf\]"),
    ],
)
def test_a_threshold_its_statistics_do_not_allow_is_refused(bundle: Path, change: Callable[[dict[str, Any]], object],
                                                            message: str) -> None:
    edit(bundle, lambda d: change(d["threshold"]))
    with pytest.raises(BundleError, match=message) as info:
        load_manifest(bundle)
    assert "\n" not in info.value.message
    refused(bundle, message)


def test_a_genuine_rule_switch_is_accepted(bundle: Path) -> None:
    """``dede calibrate --rule paper-1.5x`` writes the alternative it recorded as the value: that is consistent."""
    edit(bundle, lambda d: d["threshold"].update(rule="paper-1.5x", value=d["threshold"]["alternatives"]["paper-1.5x"]))
    assert load_manifest(bundle).threshold.value == pytest.approx(3763.398, rel=1e-6)


def test_the_tampered_threshold_stops_the_service_and_scan(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from training.cli import main
    from training.scan import scan

    edit(bundle, lambda d: d["threshold"].update(value=1e30))
    with pytest.raises(BundleError, match="threshold.value"), TestClient(create_app(Settings(bundle=bundle))):
        pass
    with pytest.raises(BundleError, match="threshold.value"):
        scan(str(bundle), str(EXAMPLES))
    assert main(["scan", "--bundle", str(bundle), str(EXAMPLES)]) == 2
    out = capsys.readouterr()
    assert out.out == ""  # no CSV line with the tampered threshold
    assert out.err.count("\n") == 1 and out.err.startswith("dede scan: error: ") and "threshold.value 1e+30" in out.err


# --- the normalisation ---


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.update(std=[1e-6, 0.2, 0.2]), r"encoder.std.0: Input should be greater than 0.001"),
        (lambda e: e.update(std=[0.2, 0.0, 0.2]), r"encoder.std.1"),
        (lambda e: e.update(std=[0.2, 0.2, float("nan")]), r"encoder.std.2"),
        (lambda e: e.update(std=[0.2, 0.2, 1e6]), r"encoder.std.2: Input should be less than or equal to 10"),
        (lambda e: e.update(mean=[1e6, 0.5, 0.5]), r"encoder.mean.0: Input should be less than or equal to 10"),
        (lambda e: e.update(mean=[0.5, float("-inf"), 0.5]), r"encoder.mean.1"),
    ],
)
def test_a_normalisation_out_of_range_is_refused(bundle: Path, change: Callable[[dict[str, Any]], object],
                                                 message: str) -> None:
    edit(bundle, lambda d: change(d["encoder"]))
    refused(bundle, message)


# --- external data: ONNX Runtime would read files no hash covers ---


def test_a_model_with_external_data_is_refused(bundle: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(bundle / "encoder.onnx"))
    onnx.save_model(model, str(bundle / "encoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=1024)
    rehash(bundle)  # encoder.onnx's hash is right: only the external-data rule objects
    assert (bundle / "weights.bin").is_file()
    message = refused(bundle, "keeps its data in an external file")
    assert "encoder.onnx" in message


def test_external_data_is_found_wherever_a_tensor_can_be() -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def external(name: str) -> Any:
        t = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value="../../etc/passwd")
        return t

    def model(graph: Any, **kwargs: Any) -> bytes:
        return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **kwargs)
                     .SerializeToString())

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    plain = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    assert external_tensor(model(plain)) is None
    as_initializer = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y],
                                       initializer=[external("w")])
    assert external_tensor(model(as_initializer)) == "w"
    as_constant = helper.make_graph([helper.make_node("Constant", [], ["c"], value=external("c")),
                                     helper.make_node("Add", ["x", "c"], ["y"])], "g", [x], [y])
    assert external_tensor(model(as_constant)) == "c"
    branch = helper.make_graph([helper.make_node("Identity", ["b"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
                               initializer=[external("b")])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    in_subgraph = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=plain)],
                                    "g", [cond], [y])
    assert external_tensor(model(in_subgraph)) == "b"
    sparse = helper.make_sparse_tensor(external("values"), helper.make_tensor("idx", TensorProto.INT64, [1], [0]),
                                       [4])
    as_sparse = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    as_sparse.sparse_initializer.append(sparse)
    assert external_tensor(model(as_sparse)) == "values"
    function = helper.make_function("local", "f", ["a"], ["b"],
                                    [helper.make_node("Constant", [], ["b"], value=external("in_function"))],
                                    [helper.make_opsetid("", 17)])
    assert external_tensor(model(plain, functions=[function])) == "in_function"
    for broken in (b"not an onnx model", model(plain)[:-3], b"\x0a\xff"):
        with pytest.raises(ValueError):
            external_tensor(broken)


# --- the pinned manifest digest (DEDE_BUNDLE_SHA256) ---


def test_a_manifest_other_than_the_pinned_one_is_refused(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    pinned = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert Settings(bundle=bundle, bundle_sha256=pinned).bundle_sha256 == pinned
    assert load_manifest(bundle, expected_sha256=pinned.upper()).name == "demo-cifar10-badencoder"
    edit(bundle, lambda d: d.update(version="2"))  # a consistent, valid manifest: only the pin tells
    actual = sha256_file(bundle / "manifest.json")
    for check in (lambda: Settings(bundle=bundle, bundle_sha256=pinned),
                  lambda: load_manifest(bundle, expected_sha256=pinned),
                  lambda: Scorer.from_bundle(bundle, manifest_sha256=pinned)):
        with pytest.raises(BundleError, match=f"has sha256 {actual}, but DEDE_BUNDLE_SHA256 pins {pinned}"):
            check()
    monkeypatch.setenv("DEDE_BUNDLE", str(bundle))
    monkeypatch.setenv("DEDE_BUNDLE_SHA256", pinned)
    with pytest.raises(BundleError, match="DEDE_BUNDLE_SHA256 pins"):
        Settings()
    monkeypatch.setenv("DEDE_BUNDLE_SHA256", actual)
    assert Settings().bundle_sha256 == actual
    with pytest.raises(BundleError, match="does not exist"):
        Settings(bundle=bundle / "nope", bundle_sha256=pinned)


# --- swapped, foreign and mismatched models: a BundleError, never ONNX Runtime's traceback ---


def test_swapped_models_with_swapped_hashes_are_refused(bundle: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from training.scan import scan

    (bundle / "encoder.onnx").rename(bundle / "tmp.onnx")
    (bundle / "detector.onnx").rename(bundle / "encoder.onnx")
    (bundle / "tmp.onnx").rename(bundle / "detector.onnx")
    rehash(bundle)
    load_manifest(bundle)  # every hash matches
    refused(bundle, "encoder.onnx has 3 inputs .image, embedding, keep., the bundle contract wants 1")
    with pytest.raises(BundleError, match="has 3 inputs"), TestClient(create_app(Settings(bundle=bundle))):
        pass
    with pytest.raises(BundleError, match="has 3 inputs"):
        scan(str(bundle), str(EXAMPLES))


def test_dede_serve_refuses_a_tampered_bundle_on_one_line(bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from training.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("a server was started on a tampered bundle"))
    monkeypatch.setenv("DEDE_BUNDLE", str(DEMO_BUNDLE))  # restored afterwards (dede serve --bundle sets it)
    monkeypatch.delenv("DEDE_BUNDLE_SHA256", raising=False)
    edit(bundle, lambda d: d["encoder"].update(embed_dim=64))  # valid JSON and hashes; the models disagree
    assert main(["serve", "--bundle", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dede serve: error: ") and err.count("\n") == 1 and "does not fit" in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["encoder"].update(embed_dim=64), r"encoder.onnx: output embedding tensor\(float\) \[batch, 128\] "
                                                      r"does not fit the bundle contract's <any name> tensor\(float\) "
                                                      r"\[\*, 64\]"),
        (lambda d: d["detector"].update(kept_patches=16, test_mask_ratio=0.75) or d["threshold"].update(
            mask_ratio=0.75), r"detector.onnx: input keep tensor\(int64\) \[batch, 0\] does not fit"),
    ],
)
def test_a_manifest_that_does_not_describe_its_models_is_refused(
        bundle: Path, change: Callable[[dict[str, Any]], object], message: str) -> None:
    edit(bundle, change)
    refused(bundle, message)


def test_foreign_models_are_refused(bundle: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def identity(shape: list[Any] | None) -> bytes:
        x = helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)
        y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, shape)
        graph = helper.make_graph([helper.make_node("Identity", ["image"], ["embedding"])], "g", [x], [y])
        return bytes(onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())

    # a valid model with the right names and a shape that cannot be the embedding
    (bundle / "encoder.onnx").write_bytes(identity(["batch", 3, 32, 32]))
    rehash(bundle)
    refused(bundle, r"output embedding tensor\(float\) \[batch, 3, 32, 32\] does not fit")
    # shapes left unknown pass the interface check; the trial run at load finds the mismatch
    (bundle / "encoder.onnx").write_bytes(identity(None))
    rehash(bundle)
    refused(bundle, "failed a trial run of 1 image")
    # a valid protobuf that is no model at all
    (bundle / "detector.onnx").write_bytes(b"")
    rehash(bundle)
    refused(bundle, "could not be loaded by ONNX Runtime")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not utf-8", "not valid JSON"),
        (b"[1, 2]", "does not match the bundle schema: Input should be a valid dictionary"),
        (b"{}", "does not match the bundle schema: name: Field required; version: Field required"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_a_broken_manifest_is_one_line(bundle: Path, content: bytes, message: str) -> None:
    (bundle / "manifest.json").write_bytes(content)
    refused(bundle, message)


def test_missing_keys_are_named_on_one_line(bundle: Path) -> None:
    edit(bundle, lambda d: (d.pop("threshold"), d["encoder"].pop("sha256")))
    message = refused(bundle, "does not match the bundle schema")
    assert "encoder.sha256: Field required" in message and "threshold: Field required" in message


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 2000])
def test_every_threshold_the_calibration_writes_passes(n: int) -> None:
    """A genuine record always loads: ``training.calibrate`` on skewed, tied and constant scores, every rule, float32
    as the trainer scores. Its fpr thresholds are exactly the conformal thresholds of the scores it ships (what
    ``load_calibration`` checks); the statistics range applies to bundles without calibration scores, whose
    thresholds were numpy quantiles."""
    pytest.importorskip("torch")
    import numpy as np

    from service.calibration import images_needed, threshold_at
    from service.manifest import ThresholdInfo
    from training.calibrate import calibration_record

    rng = np.random.default_rng(n)
    samples = [rng.lognormal(7, 1.5, n), rng.exponential(1.0, n), np.full(n, 3.5), rng.integers(0, 3, n) + 1.0,
               np.r_[np.full(max(n - 1, 1), 1.0), [1e6]][:n]]
    for scores in samples:
        aux, hold = scores.astype(np.float32), rng.permutation(scores).astype(np.float32)
        cal = np.sort(hold)
        for rule in ("paper-1.5x", "fpr@0.01", "fpr@0.05", "fpr@0.1", "fpr@0.001", "fpr@0.5", "fpr@0.0001"):
            if rule != "paper-1.5x" and n < images_needed(float(rule.removeprefix("fpr@"))):
                with pytest.raises(ValueError, match="held-out calibration images"):
                    calibration_record(rule, aux, hold, 0.99)
                continue
            t = ThresholdInfo.model_validate(calibration_record(rule, aux, hold, 0.99))
            if rule != "paper-1.5x":
                assert t.value == threshold_at(cal, float(rule.removeprefix("fpr@")))
            if t.incident is not None:
                q = float(t.incident.rule.removeprefix("fpr@"))
                assert n >= images_needed(q) and t.incident.value == max(threshold_at(cal, q), t.value)
