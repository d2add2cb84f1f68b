"""Training objectives, degradations and data preparation for LiWi models (used by `examples/train_lora.py`)."""

from .configs import SMALL_CONFIGS, build_from_scratch_pipeline
from .data import (
    LayeredBatch,
    LiWiTrainDataset,
    augment_batch,
    bucket_batches,
    check_dataset_columns,
    collate,
    layered_to_frames,
    processing_size,
)
from .degradation import (
    DegradationConfig,
    blur,
    boundary_band,
    degrade_alpha,
    degrade_image_boundaries,
    dilate,
    erode,
    jpeg_like,
)
from .loading import load_training_output
from .losses import (
    boundary_weights,
    flow_matching_loss,
    flow_matching_target,
    noisy_latents,
    recomposition_loss,
    restoration_loss,
    sample_flow_sigmas,
    shadow_loss,
)

__all__ = [
    "SMALL_CONFIGS",
    "DegradationConfig",
    "LayeredBatch",
    "LiWiTrainDataset",
    "augment_batch",
    "blur",
    "boundary_band",
    "boundary_weights",
    "bucket_batches",
    "build_from_scratch_pipeline",
    "check_dataset_columns",
    "collate",
    "degrade_alpha",
    "degrade_image_boundaries",
    "dilate",
    "erode",
    "flow_matching_loss",
    "flow_matching_target",
    "jpeg_like",
    "layered_to_frames",
    "load_training_output",
    "noisy_latents",
    "processing_size",
    "recomposition_loss",
    "restoration_loss",
    "sample_flow_sigmas",
    "shadow_loss",
]
