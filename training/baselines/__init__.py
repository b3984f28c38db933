"""The two baseline detectors the DeDe paper compares against (Tables 1 and 3).

- ``training.baselines.asset``: ASSET (Pan et al., USENIX Security 2023) as the DeDe authors adapted it to
  SSL encoders: per-sample scores for a pool of images, and ASSET's own threshold rule.
- ``training.baselines.decree``: DECREE (Feng et al., CVPR 2023): trigger inversion on an encoder with clean
  data only, the encoder-level verdict (PL1 < 0.1) and the per-sample score the DeDe paper derives from it.

Both are library modules (pure functions over an encoder, its ``EncoderSpec`` and uint8 image arrays); the
CLI and the reproduce grid call them.
"""

from training.baselines.asset import (
    ASSET_PRESETS,
    AssetConfig,
    AssetResult,
    adjusted_outlyingness,
    asset_base_images,
    asset_config,
    asset_flags,
    asset_scores,
    asset_threshold,
    medcouple,
    offset_scores,
    run_asset,
)
from training.baselines.decree import (
    DECREE_APPLICABLE,
    DECREE_PRESETS,
    DecreeConfig,
    DecreeResult,
    decree_applicable,
    decree_flags,
    decree_scores,
    decree_threshold,
    invert_trigger,
)

__all__ = [
    "ASSET_PRESETS", "AssetConfig", "AssetResult", "adjusted_outlyingness", "asset_base_images", "asset_config",
    "asset_flags", "asset_scores",
    "asset_threshold", "medcouple", "offset_scores", "run_asset",
    "DECREE_APPLICABLE", "DECREE_PRESETS", "DecreeConfig", "DecreeResult", "decree_applicable", "decree_flags",
    "decree_scores", "decree_threshold", "invert_trigger",
]
