"""Service configuration: one pydantic-settings class, environment variables prefixed ``DEDE_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEDE_", extra="ignore")

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
    api_key: SecretStr | None = Field(None, description="when set, the scoring endpoints (/score, /score/batch, V2 "
                                      "infer) need the header X-API-Key with this value (compared in constant time)")

    @property
    def provider_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.providers.split(",") if p.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
