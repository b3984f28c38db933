"""Liveness, readiness and the loaded bundle's summary."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import ScorerDep, require_loaded
from service.schemas import Health, Info, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: {"description": "not ready"}})
async def readyz(request: Request) -> Ready:
    scorer = require_loaded(request, "the model is not loaded or not warmed up").scorer
    return Ready(status="ready", model=scorer.manifest.name, provider=scorer.provider)


@router.get("/info", response_model=Info)
async def info(scorer: ScorerDep) -> Info:
    m = scorer.manifest
    return Info(model=m.name, version=m.version, provider=scorer.provider, input_size=m.encoder.input_size,
                embed_dim=m.encoder.embed_dim, architecture=m.encoder.architecture,
                patch_size=m.detector.patch_size, test_mask_ratio=m.detector.test_mask_ratio,
                kept_patches=m.detector.kept_patches, score=m.detector.score, threshold=m.threshold.value,
                threshold_rule=m.threshold.rule,
                incident_threshold=m.threshold.incident.value if m.threshold.incident else None,
                incident_rule=m.threshold.incident.rule if m.threshold.incident else None,
                calibration_images=m.calibration.count if m.calibration else None, aux_dataset=m.provenance.aux_dataset,
                poison_rate=m.provenance.poison_rate, drop_worst=m.provenance.drop_worst,
                drop_dense=m.provenance.drop_dense, preset=m.provenance.preset,
                created=m.provenance.created, code_version=m.provenance.code_version)
