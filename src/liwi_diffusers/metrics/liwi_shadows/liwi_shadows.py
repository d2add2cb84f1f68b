"""`evaluate` module: balanced error rate and L1 of shadow layers.

Backed by `liwi_diffusers.metrics.core`, so it reports the numbers `liwi evaluate` reports.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

from liwi_diffusers.metrics._serialize import encode_each, from_npy_bytes
from liwi_diffusers.metrics.core import aggregate_shadow_errors, combine_shadows, shadow_errors, to_alpha

_CITATION = """\
@inproceedings{vicente2016large,
  title     = {Large-Scale Training of Shadow Detectors with Noisily-Annotated Shadow Examples},
  author    = {Vicente, Tomas F. Yago and Hou, Le and Yu, Chen-Ping and Hoai, Minh and Samaras, Dimitris},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2016}
}
"""

_DESCRIPTION = """\
Shadow quality of a layer decomposition. Per image, each side's shadow layers (alpha sigma_k: the
fraction of light object k removes) are combined into the total shadow 1 - prod_k (1 - sigma_k), so
no object correspondence is needed. Reports the balanced error rate (BER) of the shadow masks
sigma >= threshold, pooled over the dataset, and the mean L1 of the shadow alpha. Lower is better.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per image, a list of predicted shadow layers: (H, W) uint8 or float arrays in
        [0, 1], or PIL images (mode L). May be empty (no shadow predicted).
    references: per image, the ground-truth shadow layers in the same form.
    threshold: a pixel is in shadow when sigma >= threshold (default 0.1, 10% of the light removed).
    return_samples: also return every image's errors and counts.
Returns:
    ber: 1 - (TPR + TNR) / 2 as a fraction (x100 for the usual percentage), from the pooled counts;
    shadow_error_rate (1 - TPR), non_shadow_error_rate (1 - TNR), shadow_l1 (mean over images of
    the mean |sigma_pred - sigma_gt|), num_images; num_skipped counts images where both lists are
    empty (nothing gives their size); samples (with return_samples).
Examples:
    >>> import numpy as np
    >>> from liwi_diffusers.metrics import load_metric
    >>> metric = load_metric("shadows")
    >>> shadow = np.zeros((16, 16)); shadow[4:8, 4:12] = 0.5
    >>> metric.compute(predictions=[[shadow]], references=[[shadow]])["ber"]
    0.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LiwiShadows(evaluate.Metric):
    """Balanced error rate and L1 of the combined shadow alpha."""

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
        )

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Add a batch of per-image shadow-layer lists (validated, stored losslessly as float64)."""
        if predictions is not None:
            predictions = [encode_each(shadows, to_alpha, f"predictions[{i}]") for i, shadows in enumerate(predictions)]
        if references is not None:
            references = [encode_each(shadows, to_alpha, f"references[{i}]") for i, shadows in enumerate(references)]
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Add one image's shadow layers."""
        prediction = None if prediction is None else encode_each(prediction, to_alpha, "prediction")
        reference = None if reference is None else encode_each(reference, to_alpha, "reference")
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(
        self,
        predictions: list[list[bytes]],
        references: list[list[bytes]],
        threshold: float = 0.1,
        return_samples: bool = False,
    ) -> dict[str, Any]:
        errors, skipped = [], 0
        for prediction, reference in zip(predictions, references):
            pred_maps = [from_npy_bytes(shadow) for shadow in prediction]
            gt_maps = [from_npy_bytes(shadow) for shadow in reference]
            if not pred_maps and not gt_maps:
                skipped += 1
                continue
            shape = (pred_maps or gt_maps)[0].shape
            errors.append(shadow_errors(combine_shadows(pred_maps, shape), combine_shadows(gt_maps, shape), threshold))
        output = aggregate_shadow_errors(errors) | {"num_skipped": skipped}
        if return_samples:
            output["samples"] = errors
        return output
