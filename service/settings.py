"""Service configuration: one pydantic-settings class, environment variables prefixed ``DEDE_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.imaging import WORST_BYTES_PER_PIXEL
from service.manifest import MANIFEST, check_manifest_digest


class Settings(BaseSettings):
    """Validated once at start-up: a setting that cannot work (an empty API key, a queue smaller than a batch, a
    bundle other than the pinned one) stops the start with a message naming the ``DEDE_`` variable."""

    # hide_input_in_errors: a validation error never echoes a value (DEDE_API_KEY is a secret)
    model_config = SettingsConfigDict(env_prefix="DEDE_", extra="ignore", hide_input_in_errors=True)

    bundle: Path = Field(Path("models/demo-cifar10-badencoder"),
                         description="the bundle directory, read once at start-up (read-only; a file whose sha256 "
                         "differs from the manifest stops the start)")
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest request body in bytes, enforced "
                                  "while reading (chunked uploads included); 413 beyond")
    max_image_pixels: int = Field(25_000_000, gt=0, description="largest image, width x height (an upload's is read "
                                  "from its header, before decoding); 413 beyond")
    max_batch_images: int = Field(64, gt=0, description="images per /score/batch or V2 infer request")
    providers: str = Field("CUDAExecutionProvider,CPUExecutionProvider",
                           description="ONNX Runtime execution providers, comma-separated, in order of preference; "
                           "those not available are skipped. Put TensorrtExecutionProvider first to try TensorRT")
    require_gpu: bool = Field(False, description="refuse to start unless CUDA or TensorRT is the provider in use "
                              "(ONNX Runtime otherwise falls back to the CPU silently)")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per session (0 = ORT default); with "
                                  "--workers N on C cores, about C / N")
    mask_draws: int = Field(1, ge=1, le=64, description="for a bundle whose test mask keeps patches: the score is the "
                            "mean over this many masks, each seeded by the image's pixels")
    batching: bool = Field(True, description="dynamic micro-batching of concurrent requests")
    max_batch_size: int = Field(64, gt=0, description="images per model call when batching")
    gpu_fixed_batch: bool = Field(True, description="on the GPU, run every model call at max_batch_size images "
                                  "(padded): one input shape, tuned once at start-up")
    max_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits for more requests, in milliseconds")
    model_concurrency: int = Field(1, ge=1, le=64, description="batches scored at once (each in its own thread)")
    max_queue: int = Field(1024, gt=0, description="images waiting for or in scoring; beyond it, new requests get "
                           "503 with Retry-After")
    request_timeout_s: float = Field(30.0, gt=0, description="longest wait for a score, in seconds, before 503")
    # --- connections (enforced by ``service.protocol.GuardedHttpProtocol``, which ``dede serve`` runs) ---
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line and headers together, in bytes; "
                                  "431 beyond, counted as they arrive, before anything is parsed into the request")
    header_timeout_s: float = Field(10.0, gt=0, description="longest time from a connection (or the end of the "
                                    "previous response) to the end of the request's headers; 408 and close beyond")
    body_timeout_s: float = Field(30.0, gt=0, description="longest time to receive a request body once its headers "
                                  "are in; 408 and close beyond")
    max_connections: int = Field(256, gt=0, description="open connections per process; a connection beyond it is "
                                 "answered 503 (Retry-After) and closed")
    # --- decoding: its own threads and a memory budget shared by every request ---
    upload_budget_bytes: int = Field(256 * 1024 * 1024, gt=0, description="request bodies held in memory at once, "
                                     "all requests together; a request that would exceed it waits, then 503")
    decode_budget_bytes: int = Field(512 * 1024 * 1024, gt=0, description="estimated bytes of decoded pixels in "
                                     "flight, all requests together; an image that would exceed it waits, then "
                                     "503; an image larger than the whole budget is refused (413)")
    decode_threads: int = Field(2, ge=1, le=64, description="threads that decode images (apart from the model's)")
    decode_timeout_s: float = Field(5.0, gt=0, description="longest decode of one image; 422 beyond (the thread "
                                    "finishes in the background and keeps its share of the budget until then)")
    max_jpeg_scans: int = Field(64, ge=1, description="scans in a progressive JPEG, counted before decoding; 422 "
                                "beyond (a normal progressive JPEG has about 10)")
    max_text_bytes: int = Field(64 * 1024, ge=1024, description="decompressed PNG text chunks per image; 422 beyond")
    # --- which image the downstream classifier sees ---
    exif: Literal["both", "apply", "ignore"] = Field("both", description="EXIF orientation: score the image as "
                                                     "stored and rotated (both, the default), or only as the "
                                                     "downstream loader shows it (apply: browsers, Hugging Face "
                                                     "load_image; ignore: PIL and torchvision's default loader)")
    alpha: Literal["any", "black", "white", "drop"] = Field("any", description="transparent images: score every "
                                                            "common way of flattening them (any, the default), or "
                                                            "only the downstream's: composited on black or white, "
                                                            "or the colour channels with the alpha dropped "
                                                            "(PIL's convert('RGB'), torchvision's default loader)")
    degenerate_std: float = Field(2.0, ge=0, description="an upload whose every view has a pixel standard "
                                  "deviation at most this (0-255) is answered reason 'degenerate' and never "
                                  "alerts: flat images score high for no backdoor reason")
    api_key: SecretStr | None = Field(None, description="when set, the scoring endpoints (/score, /score/batch, V2 "
                                      "infer) need the header X-API-Key with this value (compared in constant time)")
    bundle_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="when set, the sha256 that "
                                      "the bundle's manifest.json must have (it holds the models' hashes, so this "
                                      "pins the whole bundle); another stops the start")

    @field_validator("api_key")
    @classmethod
    def _usable_api_key(cls, key: SecretStr | None) -> SecretStr | None:
        """An empty key would let every request in; one with surrounding whitespace (a secret file's trailing
        newline) none, as no client sends it."""
        if key is None:
            return None
        value = key.get_secret_value()
        if not value.strip():
            raise ValueError("DEDE_API_KEY is set but empty (or only whitespace), which would let every request "
                             "in: set a key, or unset DEDE_API_KEY to serve without one")
        if value != value.strip():
            raise ValueError("DEDE_API_KEY has leading or trailing whitespace (a trailing newline from a secret "
                             "file?), which no client sends: strip it")
        return key

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        """The batcher needs room for one full batch (``service.batching.Batcher``)."""
        if self.batching and self.max_queue < self.max_batch_size:
            raise ValueError(f"DEDE_MAX_QUEUE ({self.max_queue}) is below DEDE_MAX_BATCH_SIZE "
                             f"({self.max_batch_size}): the queue must hold at least one full batch; raise "
                             "DEDE_MAX_QUEUE or lower DEDE_MAX_BATCH_SIZE")
        return self

    @model_validator(mode="after")
    def _budgets_hold_the_largest_request(self) -> Settings:
        """Each budget must fit one request at its limits, or that request could never be served."""
        if self.upload_budget_bytes < 2 * self.max_upload_bytes:
            raise ValueError(f"DEDE_UPLOAD_BUDGET_BYTES ({self.upload_budget_bytes}) is below twice "
                             f"DEDE_MAX_UPLOAD_BYTES ({self.max_upload_bytes}): a body is held at twice its length")
        if self.decode_budget_bytes < WORST_BYTES_PER_PIXEL * self.max_image_pixels:
            raise ValueError(f"DEDE_DECODE_BUDGET_BYTES ({self.decode_budget_bytes}) cannot decode an image of "
                             f"DEDE_MAX_IMAGE_PIXELS ({self.max_image_pixels}): it needs "
                             f"{WORST_BYTES_PER_PIXEL} bytes a pixel; raise it or lower DEDE_MAX_IMAGE_PIXELS")
        return self

    @model_validator(mode="after")
    def _pinned_bundle(self) -> Settings:
        """With ``bundle_sha256``: the bundle's manifest.json has it, else ``BundleError`` naming both digests."""
        if self.bundle_sha256 is not None:
            check_manifest_digest(self.bundle / MANIFEST, self.bundle_sha256)
        return self

    @property
    def provider_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.providers.split(",") if p.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
