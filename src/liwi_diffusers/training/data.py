"""Training data: LiWi-format rows as fixed-size layer tensors, aspect buckets and augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..layered_dataset import row_to_layered
from ..layers import LayeredImage, compose_layers
from ..pipelines.pipeline_liwi import processing_size

__all__ = [
    "REQUIRED_COLUMNS",
    "LayeredBatch",
    "LiWiTrainDataset",
    "augment_batch",
    "bucket_batches",
    "check_dataset_columns",
    "collate",
    "layered_to_frames",
    "processing_size",
]

REQUIRED_COLUMNS = ("composite", "background", "foregrounds", "shadows")


def check_dataset_columns(column_names: Sequence[str], what: str = "dataset") -> None:
    """Raise a `ValueError` naming the LiWi columns that ``column_names`` lacks."""
    missing = [name for name in REQUIRED_COLUMNS if name not in column_names]
    if missing:
        raise ValueError(
            f"{what} is not in LiWi format: missing column(s) {missing} (needs {list(REQUIRED_COLUMNS)}; "
            f"has {list(column_names)})"
        )


@dataclass
class LayeredBatch:
    """A batch of layered images at one processing size, channel first, floats in [0, 1].

    Attributes:
        composite: ``(B, 3, H, W)``, re-composed from the layers (exact ground truth).
        background: ``(B, 3, H, W)``, opaque.
        colors: ``(B, K, 3, H, W)`` straight colours, back to front.
        alphas, shadows: ``(B, K, 1, H, W)``.
    """

    composite: torch.Tensor
    background: torch.Tensor
    colors: torch.Tensor
    alphas: torch.Tensor
    shadows: torch.Tensor

    def to(self, device: torch.device | str) -> LayeredBatch:
        return LayeredBatch(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))

    def recompose(self) -> LayeredBatch:
        """The same layers with the composite computed from them (after augmentation)."""
        composite = compose_layers(
            self.background, self.colors.transpose(0, 1), self.alphas.transpose(0, 1), self.shadows.transpose(0, 1)
        )
        return LayeredBatch(composite.clamp(0, 1), self.background, self.colors, self.alphas, self.shadows)


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == size:
        return tensor
    shrinking = tensor.shape[-2] > size[0] or tensor.shape[-1] > size[1]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=shrinking).clamp(0, 1)


def layered_to_frames(
    layered: LayeredImage, num_layers: int, size: tuple[int, int], bake_shadows: bool = False
) -> dict[str, torch.Tensor]:
    """One layered image as tensors with exactly ``num_layers`` objects at ``size`` (H, W).

    More objects than ``num_layers``: the back-most ones (with their shadows) are composed into the background,
    which keeps the composite exact. Fewer: empty objects (alpha 0, no shadow) are added on top. Colours are
    resized premultiplied, so transparent pixels do not bleed into edges. With ``bake_shadows`` (training
    without shadow-guided learning), every shadow is multiplied into the background and into the colours of
    the objects beneath it and the shadow layers become empty; the composite is unchanged.
    """
    background = torch.from_numpy(layered.background).permute(2, 0, 1).float()
    count = layered.num_objects
    if count:
        rgba = torch.from_numpy(np.stack(layered.foregrounds)).permute(0, 3, 1, 2).float()
        shadows = torch.from_numpy(np.stack(layered.shadows))[:, None].float()
    else:
        rgba = background.new_zeros(0, 4, *background.shape[-2:])
        shadows = background.new_zeros(0, 1, *background.shape[-2:])
    colors, alphas = rgba[:, :3], rgba[:, 3:]
    if bake_shadows and count:
        light = torch.ones_like(shadows[0])
        for k in range(count - 1, -1, -1):  # light above object k: prod over m > k of (1 - sigma_m)
            colors[k] = colors[k] * light
            light = light * (1 - shadows[k])
        background = background * light
        shadows = torch.zeros_like(shadows)
    if count > num_layers:
        extra = count - num_layers
        background = compose_layers(background, colors[:extra], alphas[:extra], shadows[:extra])
        colors, alphas, shadows = colors[extra:], alphas[extra:], shadows[extra:]
    premultiplied = _resize(colors * alphas, size)
    alphas = _resize(alphas, size)
    colors = torch.where(alphas > 1e-4, premultiplied / alphas.clamp(min=1e-4), _resize(colors, size)).clamp(0, 1)
    shadows = _resize(shadows, size)
    background = _resize(background[None], size)[0]
    missing = num_layers - colors.shape[0]
    if missing > 0:
        colors = torch.cat([colors, colors.new_zeros(missing, 3, *size)])
        alphas = torch.cat([alphas, alphas.new_zeros(missing, 1, *size)])
        shadows = torch.cat([shadows, shadows.new_zeros(missing, 1, *size)])
    return {"background": background, "colors": colors, "alphas": alphas, "shadows": shadows}


class LiWiTrainDataset(torch.utils.data.Dataset):
    """LiWi-format rows (a `datasets.Dataset` or a list of dicts) as tensors at their bucket's processing size.

    Args:
        rows: the split; needs the columns of `REQUIRED_COLUMNS`.
        resolution: processing resolution (pixels on a side for a square image).
        size_multiple: the VAE factor times the patch size; ``resolution`` must be a multiple of it.
        num_layers: objects per sample; 0 means each sample keeps its own count (up to ``max_num_layers``) and
            batches are bucketed by count as well as by size.
        max_num_layers: the most objects kept when ``num_layers`` is 0 (extra back objects go to the background).
        bake_shadows: see `layered_to_frames`.
    """

    def __init__(
        self,
        rows: Any,
        resolution: int,
        size_multiple: int,
        num_layers: int = 0,
        max_num_layers: int = 4,
        bake_shadows: bool = False,
    ) -> None:
        if resolution % size_multiple:
            raise ValueError(
                f"--resolution {resolution} is not a multiple of the VAE factor times the patch size "
                f"({size_multiple}); use e.g. {max(size_multiple, round(resolution / size_multiple) * size_multiple)}"
            )
        if len(rows) == 0:
            raise ValueError("the training split is empty")
        column_names = getattr(rows, "column_names", None) or list(rows[0].keys())
        check_dataset_columns(column_names)
        self.rows = rows
        self.resolution = resolution
        self.size_multiple = size_multiple
        self.num_layers = num_layers
        self.max_num_layers = max_num_layers
        self.bake_shadows = bake_shadows
        self._sizes = self._metadata(rows, column_names)
        self.keys = [self._bucket_key(index) for index in range(len(rows))]

    @staticmethod
    def _metadata(rows: Any, column_names: Sequence[str]) -> list[dict[str, Any]] | None:
        """``height``/``width``/``num_objects`` of every row without decoding images, when the rows have them."""
        names = ["height", "width", "num_objects"]
        if not all(name in column_names for name in names):
            return None
        if hasattr(rows, "select_columns"):
            return rows.select_columns(names).to_list()
        return [{name: row[name] for name in names} for row in rows]

    def _shape_and_count(self, index: int) -> tuple[int, int, int]:
        row = self._sizes[index] if self._sizes is not None else self.rows[index]
        if row.get("height") and row.get("width") and row.get("num_objects") is not None:
            return int(row["height"]), int(row["width"]), int(row["num_objects"])
        layered = row_to_layered(self.rows[index])
        return layered.height, layered.width, layered.num_objects

    def _bucket_key(self, index: int) -> tuple[int, int, int]:
        height, width, count = self._shape_and_count(index)
        size = processing_size(height, width, self.resolution, self.size_multiple)
        layers = self.num_layers or max(1, min(count, self.max_num_layers))
        return size[0], size[1], layers

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        height, width, layers = self.keys[index]
        return layered_to_frames(row_to_layered(self.rows[index]), layers, (height, width), self.bake_shadows)


def bucket_batches(
    keys: Sequence[Any], batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False
) -> list[list[int]]:
    """Shuffled batches of indices, each within one bucket (same processing size and object count)."""
    buckets: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        buckets.setdefault(key, []).append(index)
    batches = []
    for key in sorted(buckets):
        members = buckets[key]
        order = torch.randperm(len(members), generator=generator).tolist()
        shuffled = [members[i] for i in order]
        for start in range(0, len(shuffled), batch_size):
            batch = shuffled[start : start + batch_size]
            if len(batch) == batch_size or not drop_last:
                batches.append(batch)
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def collate(items: Sequence[dict[str, torch.Tensor]]) -> LayeredBatch:
    """Stack same-bucket samples and re-compose their composite."""
    stacked = {name: torch.stack([item[name] for item in items]) for name in items[0]}
    return LayeredBatch(
        stacked["background"], stacked["background"], stacked["colors"], stacked["alphas"], stacked["shadows"]
    ).recompose()


def augment_batch(
    batch: LayeredBatch, generator: torch.Generator, flip_prob: float = 0.5, brightness: float = 0.1
) -> LayeredBatch:
    """Per sample: horizontal flip of every layer, and one brightness factor for every colour (the shadows'
    darkening stays the same); the composite is re-composed, so the ground truth stays exact."""
    background, colors, alphas, shadows = batch.background, batch.colors, batch.alphas, batch.shadows
    flips = torch.rand(background.shape[0], generator=generator) < flip_prob
    scales = 1 + brightness * (2 * torch.rand(background.shape[0], generator=generator) - 1)

    def flip(tensor: torch.Tensor) -> torch.Tensor:
        mask = flips.to(tensor.device).view(-1, *([1] * (tensor.ndim - 1)))
        return torch.where(mask, tensor.flip(-1), tensor)

    scale = scales.to(background.device).view(-1, 1, 1, 1)
    background = (flip(background) * scale).clamp(0, 1)
    colors = (flip(colors) * scale[:, None]).clamp(0, 1)
    return LayeredBatch(batch.composite, background, colors, flip(alphas), flip(shadows)).recompose()
