"""Response bodies of the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Explanation(BaseModel):
    """``?explain=true``: see ``service.explain``."""

    reconstruction_png: str = Field(description="base64 PNG: the decoder's reconstruction, model input size")
    error_map_png: str = Field(description="base64 PNG: per-patch error / the image's largest patch error, "
                               "coloured (dark = low, yellow = highest), model input size")
    patch_errors: list[float] = Field(description="squared error per patch, row-major; their sum is the "
                                      "'paper' score")
    error_map_max: float = Field(description="the largest patch error (the map's brightest colour)")
    patch_size: int


class ScoreResponse(BaseModel):
    backdoor: bool = Field(description="the alert: p_value <= the alert FPR (score > threshold), never for a "
                           "degenerate image")
    score: float
    p_value: float | None = Field(None, description="conformal p-value: the share of held-out clean images that "
                                  "score at least as high, (1 + count) / (1 + n); absent for bundles without "
                                  "calibration scores")
    incident: bool = Field(False, description="past the incident threshold (a stricter FPR than the alert's)")
    reason: str | None = Field(None, description="'degenerate': a flat or empty image (all one colour, fully "
                               "transparent), not scored as an alert")
    threshold: float
    view: str = Field("stored", description="the view the score belongs to, the highest-scoring one: 'stored', or "
                      "what was done to the image as a downstream loader would (exif=applied|ignored, "
                      "alpha=black|white|dropped)")
    model: str
    model_version: str
    explanation: Explanation | None = Field(None, description="only with ?explain=true")


class BatchResponse(BaseModel):
    results: list[ScoreResponse]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: str
    provider: str


class Info(BaseModel):
    model: str
    version: str
    provider: str
    input_size: int
    embed_dim: int
    architecture: str
    patch_size: int
    test_mask_ratio: float
    kept_patches: int
    score: str
    threshold: float
    threshold_rule: str
    incident_threshold: float | None = None  # None: a bundle made before operating points
    incident_rule: str | None = None
    calibration_images: int | None = None  # held-out images behind the p-values; the smallest p is 1/(n+1)
    aux_dataset: str
    poison_rate: float
    drop_worst: float | None = None  # robust training's share of each batch left out; None: not recorded
    drop_dense: float | None = None  # share of auxiliary images left out as the densest clump; None: not recorded
    preset: str
    created: str
    code_version: str
