"""Response bodies of the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel


class ScoreResponse(BaseModel):
    backdoor: bool
    score: float
    threshold: float
    model: str
    model_version: str


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
    aux_dataset: str
    poison_rate: float
    preset: str
    created: str
    code_version: str
