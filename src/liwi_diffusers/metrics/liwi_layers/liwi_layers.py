"""`evaluate` module: RGB L1 and alpha soft IoU of layer stacks under LayerD's alignment protocol.

Backed by `liwi_diffusers.metrics.core`, so it reports the numbers `liwi evaluate` reports.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import datasets
import evaluate

from liwi_diffusers.metrics._serialize import encode_each, from_npy_bytes
from liwi_diffusers.metrics.core import (
    DEFAULT_MAX_EDITS,
    MIN_LAYERS,
    aggregate_layer_results,
    evaluate_layers,
    skip_reason,
    to_rgba8,
)

_CITATION = """\
@inproceedings{suzuki2025layerd,
  title     = {LayerD: Decomposing Raster Graphic Designs into Layers},
  author    = {Suzuki, Tomoyuki and Liu, Kang-Jun and Inoue, Naoto and Yamaguchi, Kota},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2025}
}
"""

_DESCRIPTION = """\
Scores a predicted stack of RGBA layers (back to front) against the ground-truth stack. Layers that
do not overlap are grouped on each side, the two sequences are aligned by dynamic time warping with
the cost (RGB L1 + (1 - alpha soft IoU)) / 2, and up to `max_edits` greedy merges of adjacent layers
(on either side) are allowed. Reports the mean RGB L1 (lower is better) and alpha soft IoU (higher
is better) at every merge level 0..max_edits, aggregated as the LayerD reference does.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per sample, a list of predicted layers back to front: RGBA PIL images, (H, W, 4)
        uint8 arrays, or float arrays in [0, 1] (rounded to 8 bits). May be empty (then skipped).
    references: per sample, the ground-truth layers in the same form, same size as the prediction.
    max_edits: the largest number of merges (default 5).
    min_layers: samples with fewer layers on either side are skipped and counted (default 2).
    return_samples: also return every sample's levels, alignment paths and merges.
Returns:
    rgb_l1, alpha_iou, cost, avg_edits: lists indexed by the merge level 0..max_edits (None when no
        sample was scored); count: per level, how many samples made that many merges;
    num_samples, num_evaluated, num_skipped; skipped: {reason: count}; samples (with return_samples).
Examples:
    >>> import numpy as np
    >>> from liwi_diffusers.metrics import load_metric
    >>> metric = load_metric("layers")
    >>> background = np.full((8, 8, 4), 255, np.uint8)
    >>> square = np.zeros((8, 8, 4), np.uint8); square[2:6, 2:6] = 200
    >>> result = metric.compute(predictions=[[background, square]], references=[[background, square]])
    >>> result["rgb_l1"][0], result["alpha_iou"][0]
    (0.0, 1.0)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LiwiLayers(evaluate.Metric):
    """Layer-stack RGB L1 and alpha soft IoU after alignment and merges (LayerD's protocol)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("binary")),
                    "references": datasets.List(datasets.Value("binary")),
                }
            ),
            reference_urls=["https://github.com/CyberAgentAILab/LayerD"],
        )

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Add a batch of layer stacks (validated and stored losslessly as 8-bit RGBA)."""
        if predictions is not None:
            predictions = [encode_each(stack, to_rgba8, f"predictions[{i}]") for i, stack in enumerate(predictions)]
        if references is not None:
            references = [encode_each(stack, to_rgba8, f"references[{i}]") for i, stack in enumerate(references)]
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Add one sample's layer stacks."""
        prediction = None if prediction is None else encode_each(prediction, to_rgba8, "prediction")
        reference = None if reference is None else encode_each(reference, to_rgba8, "reference")
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(
        self,
        predictions: list[list[bytes]],
        references: list[list[bytes]],
        max_edits: int = DEFAULT_MAX_EDITS,
        min_layers: int = MIN_LAYERS,
        return_samples: bool = False,
    ) -> dict[str, Any]:
        results, skipped = [], Counter()
        for prediction, reference in zip(predictions, references):
            reason = skip_reason(len(prediction), len(reference), min_layers)
            if reason is not None:
                skipped[reason] += 1
                continue
            pred_layers = [from_npy_bytes(layer) for layer in prediction]
            gt_layers = [from_npy_bytes(layer) for layer in reference]
            results.append(evaluate_layers(pred_layers, gt_layers, max_edits=max_edits))
        levels = aggregate_layer_results(results, max_edits)
        output: dict[str, Any] = {
            name: [level[name] for level in levels] for name in ("rgb_l1", "alpha_iou", "cost", "avg_edits", "count")
        }
        output |= {
            "num_samples": len(predictions),
            "num_evaluated": len(results),
            "num_skipped": sum(skipped.values()),
            "skipped": dict(skipped),
        }
        if return_samples:
            output["samples"] = [result.to_dict(max_edits) for result in results]
        return output
