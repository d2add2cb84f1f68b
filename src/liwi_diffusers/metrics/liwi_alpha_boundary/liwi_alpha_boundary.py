"""`evaluate` module: SAD, MSE, gradient and connectivity errors of alpha mattes (alphamatting.com).

Backed by `liwi_diffusers.metrics.core`, so it reports the numbers `liwi evaluate` reports.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

from liwi_diffusers.metrics._serialize import encode_each, from_npy_bytes, to_npy_bytes
from liwi_diffusers.metrics.core import MetricInputError, aggregate_alpha_errors, alpha_matting_errors, to_alpha

_CITATION = """\
@inproceedings{rhemann2009perceptually,
  title     = {A Perceptually Motivated Online Benchmark for Image Matting},
  author    = {Rhemann, Christoph and Rother, Carsten and Wang, Jue and Gelautz, Margrit and Kohli, Pushmeet
               and Rott, Pamela},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2009}
}
@inproceedings{xu2017deep,
  title     = {Deep Image Matting},
  author    = {Xu, Ning and Price, Brian and Cohen, Scott and Huang, Thomas},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2017}
}
"""

_DESCRIPTION = """\
Boundary quality of predicted alpha mattes against ground truth: the sum of absolute differences
(SAD), the mean squared error (MSE), the gradient error (squared difference of Gaussian-gradient
magnitudes, sigma 1.4) and the connectivity error, evaluated over the unknown region of a trimap.
Alpha is in [0, 1]; SAD, gradient and connectivity are sums divided by 1000, MSE is a mean (the
Deep Image Matting convention). All four are lower-is-better.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted mattes: (H, W) uint8 or float arrays in [0, 1], or PIL images (mode L, or
        the alpha band of an LA/RGBA image).
    references: ground-truth mattes in the same form and size.
    trimaps: optional, one per matte: uint8 trimaps (128 = unknown) or boolean masks of the region.
    region: without trimaps, "band" (default: the unknown band of a trimap made from the ground
        truth by dilating alpha > 0 and eroding alpha == 1 by `width` px) or "all" (every pixel).
    width: the band's half width in pixels (default 10).
    sigma: the Gaussian of the gradient error (default 1.4). step: connectivity threshold step (0.1).
    return_samples: also return every matte's errors.
Returns:
    sad, mse, gradient, connectivity: means over mattes whose region is not empty (None if none);
    num_mattes; num_empty (mattes with an empty region, left out); samples (with return_samples).
Examples:
    >>> import numpy as np
    >>> from liwi_diffusers.metrics import load_metric
    >>> metric = load_metric("alpha_boundary")
    >>> gt = np.zeros((32, 32)); gt[8:24, 8:24] = 1.0
    >>> metric.compute(predictions=[gt], references=[gt])["sad"]
    0.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LiwiAlphaBoundary(evaluate.Metric):
    """SAD, MSE, gradient and connectivity errors of alpha mattes."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("binary"), "references": datasets.Value("binary")}
            ),
            reference_urls=["http://www.alphamatting.com/"],
        )

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Add a batch of mattes (validated, stored losslessly as float64)."""
        if predictions is not None:
            predictions = encode_each(predictions, to_alpha, "predictions")
        if references is not None:
            references = encode_each(references, to_alpha, "references")
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Add one pair of mattes."""
        prediction = None if prediction is None else to_npy_bytes(to_alpha(prediction, "prediction"))
        reference = None if reference is None else to_npy_bytes(to_alpha(reference, "reference"))
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(
        self,
        predictions: list[bytes],
        references: list[bytes],
        trimaps: list[Any] | None = None,
        region: str = "band",
        width: int = 10,
        sigma: float = 1.4,
        step: float = 0.1,
        return_samples: bool = False,
    ) -> dict[str, Any]:
        if trimaps is not None and len(trimaps) != len(predictions):
            raise MetricInputError(f"got {len(trimaps)} trimaps for {len(predictions)} mattes; need one each")
        if region not in ("band", "all"):
            raise MetricInputError(f"region must be 'band' or 'all', got {region!r}")
        errors = []
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            chosen = trimaps[index] if trimaps is not None else (None if region == "band" else "all")
            errors.append(
                alpha_matting_errors(
                    from_npy_bytes(prediction), from_npy_bytes(reference), chosen, width=width, sigma=sigma, step=step
                )
            )
        output = aggregate_alpha_errors(errors)
        if return_samples:
            output["samples"] = errors
        return output
