"""Service configuration: one pydantic-settings class, environment variables prefixed ``DEDE_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEDE_", extra="ignore")

    bundle: Path = Field(Path("models/demo-cifar10-badencoder"), description="bundle directory (read-only)")
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0, description="per request body, enforced while reading")
    max_image_pixels: int = Field(25_000_000, gt=0, description="width x height of one decoded image")
    max_batch_images: int = Field(64, gt=0, description="images per /score/batch request")
    providers: str = Field("CUDAExecutionProvider,CPUExecutionProvider",
                           description="ONNX Runtime execution providers, in order of preference")
    require_gpu: bool = Field(False, description="refuse to start unless CUDA or TensorRT is the provider in use")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per session (0 = ORT default)")
    mask_draws: int = Field(1, ge=1, le=64, description="masks averaged per image when the test mask keeps patches")
    batching: bool = Field(True, description="dynamic micro-batching of concurrent requests")
    max_batch_size: int = Field(64, gt=0, description="images per model call when batching")
    gpu_fixed_batch: bool = Field(True, description="on the GPU, run every model call at max_batch_size images "
                                  "(padded): one input shape, tuned once at start-up")
    max_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits for more requests")
    model_concurrency: int = Field(1, ge=1, le=64, description="batches scored at once (each in its own thread)")
    max_queue: int = Field(1024, gt=0, description="images queued for scoring before 503 Overloaded")
    request_timeout_s: float = Field(30.0, gt=0, description="longest wait for a score before 503")
    api_key: SecretStr | None = Field(None, description="when set, requests need header X-API-Key")

    @property
    def provider_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.providers.split(",") if p.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
