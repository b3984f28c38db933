"""Scoring through ONNX Runtime: uint8 images -> paper scores and backdoor flags. No torch here.

    x = normalise(images)                        (B, 3, H, W)
    e = encoder(x)                               (B, E)
    keep = kept patch ids                        (B, K), K = int(N * (1 - alpha_test))
    patch_error = detector(x, e, keep)           (B, N) squared error per masked patch
    score = compute_score(patch_error, kind, x)  (B,)  kind from the manifest: 'paper' = the sum
    flag = score > threshold

Kept patches are drawn per image from a generator seeded by the image's own pixels, so the same image
always gets the same score (for 32x32 bundles at alpha_test = 0.99, K = 0 and nothing is random).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.calibration import p_values
from service.errors import BundleError
from service.imaging import normalize
from service.manifest import Manifest, load_calibration, load_manifest
from service.scores import compute_score

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # run on the GPU, take CUDA device memory
log = logging.getLogger("dede.scoring")


@dataclass
class ScoreResult:
    scores: np.ndarray  # (B,) float32
    flags: np.ndarray  # (B,) bool
    threshold: float
    seconds: dict[str, float] = field(default_factory=dict)  # per stage: encoder, detector


_gpu_libraries_preloaded = False


def _preload_gpu_libraries() -> None:
    """onnxruntime-gpu (>= 1.21) loads CUDA and cuDNN from the nvidia-* wheels (those PyTorch installs) when
    asked to; without them on the loader path its CUDA provider falls back to the CPU. Done once per process,
    and only when a GPU provider is requested and built in; a failure leaves the fallback to be reported."""
    global _gpu_libraries_preloaded
    if _gpu_libraries_preloaded or not hasattr(ort, "preload_dlls"):
        return
    _gpu_libraries_preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # the provider in use (``Scorer.provider``) tells what came of it
        log.warning("onnxruntime.preload_dlls failed: %s: %s", type(exc).__name__, exc)


def _session(path: Path, providers: tuple[str, ...], threads: int) -> ort.InferenceSession:
    available = ort.get_available_providers()
    chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    if any(p in GPU_PROVIDERS for p in chosen):
        _preload_gpu_libraries()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    # two sessions run one after the other: threads of one that spin-wait for work would steal the cores
    # the other needs (measured: twice the time per batch on 2 cores)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt models
        raise BundleError(f"{path} could not be loaded by ONNX Runtime: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (ONNX Runtime's span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


# An input or output the bundle contract wants: name (None: any), element type, dims (None: any size).
IOSpec = tuple[str | None, str, tuple[int | None, ...]]
FLOAT, INT64 = "tensor(float)", "tensor(int64)"


def check_io(path: Path, kind: str, args: list[ort.NodeArg], expected: list[IOSpec]) -> None:
    """Refuse a model whose inputs or outputs (``kind``) are not ``expected``: their number, names, types, ranks and
    fixed sizes. A dimension the model leaves symbolic fits any size; a shape it leaves unknown ([]) fits any."""
    def show(name: str | None, dtype: str, dims: list[object] | tuple[object, ...]) -> str:
        return f"{name or '<any name>'} {dtype} [{', '.join('*' if d is None else str(d) for d in dims)}]"

    want = ", ".join(show(*e) for e in expected)
    if len(args) != len(expected):
        raise BundleError(f"{path} has {len(args)} {kind}s ({', '.join(a.name for a in args)}), the bundle contract "
                          f"wants {len(expected)}: {want} (swapped or foreign model?)")
    for arg, (name, dtype, dims) in zip(args, expected, strict=True):
        shape = arg.shape or []
        fits = (name is None or arg.name == name) and arg.type == dtype and (not shape or (
            len(shape) == len(dims) and all(d is None or not isinstance(a, int) or a == d
                                            for a, d in zip(shape, dims, strict=True))))
        if not fits:
            raise BundleError(f"{path}: {kind} {show(arg.name, arg.type, shape)} does not fit the bundle contract's "
                              f"{show(name, dtype, dims)}; the contract's {kind}s: {want} (swapped or foreign model?)")


class Scorer:
    def __init__(self, manifest: Manifest, bundle_dir: str | Path, providers: tuple[str, ...] = DEFAULT_PROVIDERS,
                 threads: int = 0, mask_draws: int = 1, fixed_batch: int = 0) -> None:
        self.manifest = manifest
        bundle = Path(bundle_dir)
        self.encoder = _session(bundle / manifest.encoder.file, providers, threads)
        self.detector = _session(bundle / manifest.detector.file, providers, threads)
        self._check_models(bundle)
        self.threshold = float(manifest.threshold.value)
        incident = manifest.threshold.incident
        self.incident_threshold = float(incident.value) if incident else None
        self.calibration = load_calibration(bundle, manifest)  # (n,) ascending, or None: no p-values
        self.size = manifest.encoder.input_size
        self._enc_in = self.encoder.get_inputs()[0].name
        self._enc_out = self.encoder.get_outputs()[0].name
        self._device = "cuda" if self.on_gpu else "cpu"
        if mask_draws < 1:
            raise ValueError("mask_draws must be >= 1")
        self.mask_draws = mask_draws
        if fixed_batch < 0:
            raise ValueError("fixed_batch must be >= 0")
        # > 0: every model call runs exactly this many images (padded with black images, or in chunks), so the
        # sessions see one input shape. On CUDA a batch of a new size cost about half a second of CPU on an H100
        # (docs/PERFORMANCE.md), and the batcher's batches come in every size; on the CPU padding only costs work.
        self.fixed_batch = fixed_batch
        self.warmed_up: list[int] = []  # the batch sizes ``warm_up`` ran

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, providers: tuple[str, ...] = DEFAULT_PROVIDERS,
                    threads: int = 0, mask_draws: int = 1, fixed_batch: int = 0,
                    manifest_sha256: str | None = None) -> Scorer:
        """The bundle's scorer (``manifest_sha256``: manifest.json must have this sha256, ``DEDE_BUNDLE_SHA256``).
        Every way the bundle fails to load is a one-line ``BundleError``; ``warm_up`` (the service's start, and
        ``dede scan``'s) turns models that load but fail to run into one too."""
        return cls(load_manifest(bundle_dir, expected_sha256=manifest_sha256), bundle_dir, providers, threads,
                   mask_draws, fixed_batch)

    def _check_models(self, bundle: Path) -> None:
        """The sessions' inputs and outputs are the bundle contract's (training.export), sized as the manifest
        says: a swapped, foreign or mismatched model is refused here, not by a failing first request."""
        m = self.manifest
        s, e, k, n = m.encoder.input_size, m.encoder.embed_dim, m.detector.kept_patches, m.detector.num_patches
        image: IOSpec = ("image", FLOAT, (None, 3, s, s))
        enc, det = bundle / m.encoder.file, bundle / m.detector.file
        check_io(enc, "input", self.encoder.get_inputs(), [(None, FLOAT, (None, 3, s, s))])
        check_io(enc, "output", self.encoder.get_outputs(), [(None, FLOAT, (None, e))])
        check_io(det, "input", self.detector.get_inputs(),
                 [image, ("embedding", FLOAT, (None, e)), ("keep", INT64, (None, k))])
        check_io(det, "output", self.detector.get_outputs(),
                 [("score", FLOAT, (None,)), ("reconstruction", FLOAT, (None, 3, s, s)),
                  ("patch_error", FLOAT, (None, n))])

    def p_values(self, scores: np.ndarray) -> np.ndarray | None:
        """(B,) scores -> (B,) conformal p-values (``service.calibration``), None without calibration scores."""
        return None if self.calibration is None else p_values(scores, self.calibration)

    @property
    def provider(self) -> str:
        """The execution provider actually running the detector (ORT falls back silently)."""
        return self.detector.get_providers()[0]

    @property
    def on_gpu(self) -> bool:
        """Whether the models actually run on the GPU (CUDA, or TensorRT, which falls back to CUDA)."""
        return self.provider in GPU_PROVIDERS

    def check(self, images: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape (B, {self.size}, {self.size}, 3), "
                             f"got {images.dtype} {images.shape}")

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) -> float32 (B, 3, H, W)."""
        self.check(images)
        return self._normalize(images)

    def _normalize(self, images: np.ndarray) -> np.ndarray:
        enc = self.manifest.encoder
        return normalize(images, enc.mean, enc.std)

    def fixed_chunks(self, images: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """With ``fixed_batch``: the images in chunks of exactly that many, the last padded with black images, each
        with its count of real images; without: the images as they are."""
        self.check(images)
        fixed = self.fixed_batch
        if not fixed:
            return [(images, len(images))]
        chunks = []
        for i in range(0, max(len(images), 1), fixed):
            chunk = images[i : i + fixed]
            pad = np.zeros((fixed - len(chunk), *images.shape[1:]), np.uint8)
            chunks.append((np.concatenate([chunk, pad]), len(chunk)))
        return chunks

    def keep_ids(self, images: np.ndarray, draw: int = 0) -> np.ndarray:
        """(B, H, W, 3) -> (B, K) int64 kept patch ids, seeded by each image's content (and the draw)."""
        det = self.manifest.detector
        K, N = det.kept_patches, det.num_patches
        out = np.zeros((len(images), K), dtype=np.int64)
        if K:
            for i, img in enumerate(images):
                digest = hashlib.sha256(img.tobytes() + draw.to_bytes(4, "little")).digest()
                out[i] = np.random.default_rng(int.from_bytes(digest[:8], "little")).choice(N, K, replace=False)
        return out

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Everything the models give for uint8 (B, H, W, 3) images: the normalised input ``x``,
        ``embedding`` (B, E), ``patch_error`` (B, N), ``reconstruction`` (B, 3, H, W), and stage timings
        (``encoder_s``, ``detector_s``). Runs in ``fixed_chunks``, as ``score`` does."""
        parts = [(self._run(chunk), n) for chunk, n in self.fixed_chunks(images)]
        return {key: (np.concatenate([out[key][:n] for out, n in parts]) if parts[0][0][key].ndim
                      else np.array(sum(float(out[key]) for out, _ in parts)))
                for key in parts[0][0]}

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = self._normalize(images)  # checked by fixed_chunks
        t0 = time.perf_counter()
        (e,) = self.encoder.run(None, {self._enc_in: x})
        t1 = time.perf_counter()
        _, recon, patch_error = self.detector.run(
            None, {"image": x, "embedding": e.astype(np.float32), "keep": self.keep_ids(images)})
        t2 = time.perf_counter()
        return {"x": x, "embedding": e, "patch_error": patch_error, "reconstruction": recon,
                "encoder_s": np.array(t1 - t0), "detector_s": np.array(t2 - t1)}

    def warm_up(self) -> list[int]:
        """Runs the batch size ``score`` runs (``fixed_batch``, else 1), so that start-up, not the first requests,
        pays for the sessions' first run. -> the sizes run."""
        size = self.fixed_batch or 1
        try:
            result = self.score(np.zeros((size, self.size, self.size, 3), dtype=np.uint8))
        except Exception as exc:  # ONNX Runtime's own types: a model that loads but does not run as the bundle says
            raise BundleError(f"the bundle's models failed a trial run of {size} image(s): {_one_line(exc)}") from exc
        if result.scores.shape != (size,):
            raise BundleError(f"the bundle's models gave {result.scores.shape} scores for {size} image(s)")
        self.warmed_up = [size]
        return self.warmed_up

    def score(self, images: np.ndarray) -> ScoreResult:
        """Scores of uint8 (B, H, W, 3) images. With kept patches and ``mask_draws`` > 1, the mean score
        over that many content-seeded masks (less variance, ``mask_draws`` x the detector's cost). With
        ``fixed_batch``, the models run on ``fixed_chunks`` and the padding's rows are dropped."""
        parts = [(self._score(chunk), n) for chunk, n in self.fixed_chunks(images)]
        scores = np.concatenate([out[:n] for (out, _), n in parts]).astype(np.float32)
        seconds = {stage: sum(t[stage] for (_, t), _ in parts) for stage in ("encoder", "detector")}
        return ScoreResult(scores, scores > self.threshold, self.threshold, seconds)

    def _score(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        x = self._normalize(images)  # checked by fixed_chunks
        draws = self.mask_draws if self.manifest.detector.kept_patches else 1
        t0 = time.perf_counter()
        x_dev, e_dev = self.embed_on_device(x)
        t1 = time.perf_counter()
        scores = self.draw_scores(images, x, x_dev, e_dev, draws).mean(0)
        t2 = time.perf_counter()
        return scores, {"encoder": t1 - t0, "detector": t2 - t1}

    def on_device(self, array: np.ndarray) -> ort.OrtValue:
        """``array`` as an ONNX Runtime value where the sessions run (CUDA memory on the GPU), as ``draw_scores``
        takes its inputs. On the CPU the value shares the array's memory."""
        return ort.OrtValue.ortvalue_from_numpy(array, self._device, 0)

    def embed_on_device(self, x: np.ndarray) -> tuple[ort.OrtValue, ort.OrtValue]:
        """The normalised images ``x`` (B, 3, H, W) and their embeddings (B, E), both on the device, for
        ``draw_scores``. IO binding: the input is copied to the device once, and the embedding stays there."""
        x_dev = self.on_device(x)
        enc = self.encoder.io_binding()
        enc.bind_ortvalue_input(self._enc_in, x_dev)
        enc.bind_output(self._enc_out, self._device, 0)
        self.encoder.run_with_iobinding(enc)
        return x_dev, enc.get_outputs()[0]

    def draw_scores(self, images: np.ndarray, x: np.ndarray, x_dev: ort.OrtValue, e_dev: ort.OrtValue,
                    draws: int) -> np.ndarray:
        """(D, B) scores of uint8 (B, H, W, 3) ``images`` under ``draws`` content-seeded masks (draws 0 .. D-1), from
        their normalised copy ``x`` (B, 3, H, W), on the device as ``x_dev``, and their embeddings ``e_dev`` there."""
        errors = np.stack([self._patch_errors(x_dev, e_dev, self.keep_ids(images, d)) for d in range(draws)])
        return compute_score(errors, self.manifest.detector.score, x)

    def _patch_errors(self, x_dev: ort.OrtValue, e_dev: ort.OrtValue, keep: np.ndarray) -> np.ndarray:
        """Detector on device-resident inputs (the normalised images and their embeddings); only the per-patch
        errors come back -> (B, N)."""
        det = self.detector.io_binding()
        det.bind_ortvalue_input("image", x_dev)
        det.bind_ortvalue_input("embedding", e_dev)
        det.bind_cpu_input("keep", keep)
        for name in ("score", "reconstruction"):
            det.bind_output(name, self._device, 0)
        det.bind_output("patch_error", "cpu")
        self.detector.run_with_iobinding(det)
        return det.get_outputs()[2].numpy()
