"""Training data and objective of the matte refiner (degradation-restoration on composites of real cut-outs).

A training example is a crop of a composite (a real RGBA cut-out pasted over a real photo, as ADD composes them,
so the composite's matte is exact) with its clean matte as the target and a damaged copy of that matte as the
input. `degrade_matte` damages mattes the way a salient-object segmenter gets them wrong at a photo's full
resolution: predicted small and upsampled, edges displaced by a smooth field, blobs added or bitten off along the
outline, eroded or dilated, blurred, soft ramps shifted (gamma), noise and JPEG-like blocking. The loss is L1,
weighted up in the band where either matte changes (`refiner_loss`).

Everything is deterministic for a seed: numpy ``Generator`` for composites, ``torch.Generator`` for degradations.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .degradation import blur, boundary_band, degrade_image_boundaries, dilate, erode, jpeg_like

__all__ = [
    "Cutout",
    "RefinerDegradation",
    "composite_crop",
    "degrade_matte",
    "make_refiner_batch",
    "refiner_loss",
    "segmenter_like",
]


@dataclass
class RefinerDegradation:
    """Probabilities and strengths of the matte degradations (drawn per sample).

    Attributes:
        p_resample, resample_factor: predicted at ``1 / factor`` of the resolution and brought back (bilinear).
        p_warp, max_shift, warp_cell: edges displaced by a smooth random field of at most ``max_shift`` pixels,
            varying over about ``warp_cell`` pixels.
        p_blobs, max_blobs, blob_radius: discs added to or bitten off the matte on its outline.
        p_erode, p_dilate, max_radius: grey-level erosion or dilation.
        p_blur, max_blur_sigma: Gaussian blur.
        p_gamma, gamma: ``alpha ** gamma`` (moves the 0.5 level of a soft ramp).
        p_noise, max_noise: additive noise in the band of the clean matte.
        p_jpeg, jpeg_quality: JPEG-like compression of the matte.
        p_image: probability of damaging the photo's boundary band too (blur, noise, JPEG-like).
    """

    p_resample: float = 0.6
    resample_factor: tuple[int, int] = (2, 8)
    p_warp: float = 0.6
    max_shift: float = 5.0
    warp_cell: int = 24
    p_blobs: float = 0.4
    max_blobs: int = 6
    blob_radius: tuple[int, int] = (2, 10)
    p_erode: float = 0.25
    p_dilate: float = 0.25
    max_radius: int = 4
    p_blur: float = 0.5
    max_blur_sigma: float = 3.0
    p_gamma: float = 0.4
    gamma: tuple[float, float] = (0.5, 2.0)
    p_noise: float = 0.3
    max_noise: float = 0.08
    p_jpeg: float = 0.2
    jpeg_quality: tuple[int, int] = (20, 70)
    p_image: float = 0.2


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """An integer in ``[low, high]`` (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def segmenter_like(
    alpha: torch.Tensor, config: RefinerDegradation, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A segmenter's typical outline errors on one matte ``(1, 1, H, W)``: displaced edges, blobs on the outline.

    Each part is applied with its probability (`RefinerDegradation`); the same generator state gives the same
    result.
    """
    matte = alpha
    height, width = alpha.shape[-2:]
    if _uniform(generator) < config.p_warp:
        cells = (max(2, height // config.warp_cell), max(2, width // config.warp_cell))
        field = torch.randn((1, 2, *cells), generator=generator, dtype=alpha.dtype)
        field = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=False)
        field = field / field.abs().amax().clamp(min=1e-6) * _uniform(generator, 0.5, 1.0) * config.max_shift
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=alpha.dtype), torch.arange(width, dtype=alpha.dtype), indexing="ij"
        )
        grid_x = (xs + field[0, 0]) / max(1, width - 1) * 2 - 1
        grid_y = (ys + field[0, 1]) / max(1, height - 1) * 2 - 1
        grid = torch.stack([grid_x, grid_y], dim=-1)[None]
        matte = F.grid_sample(matte, grid, mode="bilinear", padding_mode="border", align_corners=True)
    if _uniform(generator) < config.p_blobs:
        outline = torch.nonzero(boundary_band(alpha, 1)[0, 0] > 0.25)
        if len(outline):
            ys, xs = torch.meshgrid(
                torch.arange(height, dtype=alpha.dtype), torch.arange(width, dtype=alpha.dtype), indexing="ij"
            )
            for _ in range(_randint(generator, 1, config.max_blobs)):
                y, x = outline[_randint(generator, 0, len(outline) - 1)].tolist()
                radius = _randint(generator, *config.blob_radius)
                disc = (((ys - y) ** 2 + (xs - x) ** 2) <= radius**2).to(alpha.dtype)[None, None]
                disc = blur(disc, 1.0)
                matte = torch.maximum(matte, disc) if _uniform(generator) < 0.5 else matte * (1 - disc)
    return matte.clamp(0, 1)


def degrade_matte(
    alpha: torch.Tensor, config: RefinerDegradation | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Damaged copies of clean mattes ``(N, 1, H, W)`` in [0, 1] (the refiner's training inputs).

    Per sample, each with its probability: segmenter-like outline errors (`segmenter_like`), down- and up-sampling,
    erosion or dilation, blur, a gamma on the soft ramp, noise in the boundary band and JPEG-like compression.
    Deterministic for a ``generator``.
    """
    config = config or RefinerDegradation()
    out = []
    for clean in alpha.split(1):
        height, width = clean.shape[-2:]
        matte = segmenter_like(clean, config, generator)
        if _uniform(generator) < config.p_resample:
            factor = _uniform(generator, *config.resample_factor)
            size = (max(2, round(height / factor)), max(2, round(width / factor)))
            matte = F.interpolate(matte, size=size, mode="area")
            matte = F.interpolate(matte, size=(height, width), mode="bilinear", align_corners=False)
        if _uniform(generator) < config.p_erode:
            matte = erode(matte, _randint(generator, 1, config.max_radius))
        elif _uniform(generator) < config.p_dilate:
            matte = dilate(matte, _randint(generator, 1, config.max_radius))
        if _uniform(generator) < config.p_blur:
            matte = blur(matte, _uniform(generator, 0.5, config.max_blur_sigma))
        if _uniform(generator) < config.p_gamma:
            matte = matte.clamp(0, 1) ** _uniform(generator, *config.gamma)
        if _uniform(generator) < config.p_noise:
            noise = torch.randn(matte.shape, generator=generator, dtype=matte.dtype)
            matte = matte + _uniform(generator, 0.0, config.max_noise) * noise * boundary_band(clean, 4)
        if _uniform(generator) < config.p_jpeg:
            matte = jpeg_like(matte.clamp(0, 1), _randint(generator, *config.jpeg_quality))
        out.append(matte.clamp(0, 1))
    return torch.cat(out)


def refiner_loss(
    refined: torch.Tensor, clean: torch.Tensor, coarse: torch.Tensor, width: int = 6, boundary_weight: float = 8.0
) -> torch.Tensor:
    """L1 between the refined and clean mattes, ``1 + boundary_weight`` times heavier where either the clean or
    the coarse matte changes (their boundary bands ``width`` pixels wide): the pixels the refiner is for."""
    band = torch.maximum(boundary_band(clean, width), boundary_band(coarse, width))
    weights = 1.0 + boundary_weight * band
    error = (refined.float() - clean.float()).abs()
    return (error * weights).sum() / weights.sum().clamp(min=1e-8)


# ---------------------------------------------------------------------------------------------- composites
@dataclass
class Cutout:
    """A real object cut out of a photo: straight colour ``rgb`` ``(h, w, 3)`` and ``alpha`` ``(h, w)``, float32."""

    rgb: np.ndarray
    alpha: np.ndarray
    name: str = ""


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    height, width = size
    shrinking = height < array.shape[0] or width < array.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(array, np.float32), (width, height), interpolation=interpolation)
    return out


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), np.float32) / 255.0


def _placed(cutout: Cutout, rng: np.random.Generator, size: int, scale: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """The cut-out scaled, maybe flipped, and positioned so that a random point of its outline is in the crop."""
    long_side = max(cutout.alpha.shape)
    factor = rng.uniform(*scale) * size / long_side
    shape = (max(4, round(cutout.alpha.shape[0] * factor)), max(4, round(cutout.alpha.shape[1] * factor)))
    rgb, alpha = _resize(cutout.rgb, shape), np.clip(_resize(cutout.alpha, shape), 0, 1)
    if rng.random() < 0.5:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    if rng.random() < 0.25:  # edges in other orientations
        turns = int(rng.integers(1, 4))
        rgb, alpha = np.rot90(rgb, turns), np.rot90(alpha, turns)
    if rng.random() < 0.3:  # colour jitter: the same shapes in other colours
        rgb = np.clip(rgb * rng.uniform(0.7, 1.3, 3).astype(np.float32) + rng.uniform(-0.1, 0.1), 0, 1)
    edge = np.argwhere((alpha > 0.05) & (alpha < 0.95))
    if not len(edge):
        edge = (
            np.argwhere(alpha > 0.5) if (alpha > 0.5).any() else np.array([[alpha.shape[0] // 2, alpha.shape[1] // 2]])
        )
    y, x = edge[rng.integers(len(edge))]
    target_y, target_x = rng.integers(size // 4, 3 * size // 4 + 1, 2)
    return rgb, alpha, int(target_y - y), int(target_x - x)


def _paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> np.ndarray:
    """``patch`` placed at ``(top, left)`` on a zero canvas shaped like ``canvas`` (clipped at its borders)."""
    out = np.zeros(canvas.shape[:2] + patch.shape[2:], np.float32)
    height, width = canvas.shape[:2]
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(height, top + patch.shape[0]), min(width, left + patch.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


def composite_crop(
    cutouts: Sequence[Cutout],
    backgrounds: Sequence[np.ndarray],
    rng: np.random.Generator,
    size: int = 192,
    scale: tuple[float, float] = (0.6, 5.0),
    p_behind: float = 0.3,
    p_front: float = 0.2,
    jpeg_quality: tuple[int, int] = (60, 95),
    p_jpeg: float = 0.7,
) -> tuple[np.ndarray, np.ndarray]:
    """One training crop: ``(rgb (size, size, 3), clean matte (size, size))``, float32.

    A random cut-out is pasted over a random crop of a random background with a point of its outline inside the
    crop; sometimes another cut-out stands behind it (edges the refiner must not snap to) or in front of it
    (occlusion: the target is what stays visible). The composite is made from the layers, so the matte is exact;
    it is then JPEG-compressed like a camera photo (``p_jpeg``).
    """
    background = backgrounds[rng.integers(len(backgrounds))]
    zoom = rng.uniform(0.5, 1.5)
    crop = max(8, round(size / zoom))
    crop = min(crop, *background.shape[:2])
    top = rng.integers(0, background.shape[0] - crop + 1)
    left = rng.integers(0, background.shape[1] - crop + 1)
    canvas = _resize(background[top : top + crop, left : left + crop], (size, size))
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]

    def layer(cutout: Cutout) -> tuple[np.ndarray, np.ndarray]:
        rgb, alpha, y, x = _placed(cutout, rng, size, scale)
        return _paste(canvas, rgb, y, x), _paste(canvas, alpha, y, x)

    if rng.random() < p_behind:
        rgb, alpha = layer(cutouts[rng.integers(len(cutouts))])
        canvas = alpha[:, :, None] * rgb + (1 - alpha[:, :, None]) * canvas
    rgb, target = layer(cutouts[rng.integers(len(cutouts))])
    canvas = target[:, :, None] * rgb + (1 - target[:, :, None]) * canvas
    if rng.random() < p_front:
        rgb, alpha = layer(cutouts[rng.integers(len(cutouts))])
        canvas = alpha[:, :, None] * rgb + (1 - alpha[:, :, None]) * canvas
        target = target * (1 - alpha)
    canvas = np.clip(canvas, 0, 1).astype(np.float32)
    if rng.random() < p_jpeg:
        canvas = _jpeg(canvas, int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1)))
    return canvas, np.clip(target, 0, 1).astype(np.float32)


def make_refiner_batch(
    cutouts: Sequence[Cutout],
    backgrounds: Sequence[np.ndarray],
    batch_size: int,
    rng: np.random.Generator,
    generator: torch.Generator,
    size: int = 192,
    degradation: RefinerDegradation | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image (N, 3, S, S), coarse (N, 1, S, S), clean (N, 1, S, S))`` for one training step.

    ``degradation=None`` gives the ablation's "clean inputs only" batches: the coarse matte is the clean one.
    """
    if not cutouts or not backgrounds:
        raise ValueError("need at least one cut-out and one background to compose training crops")
    crops = [composite_crop(cutouts, backgrounds, rng, size) for _ in range(batch_size)]
    image = torch.from_numpy(np.stack([c[0] for c in crops])).permute(0, 3, 1, 2).contiguous()
    clean = torch.from_numpy(np.stack([c[1] for c in crops]))[:, None].contiguous()
    if degradation is None:
        return image, clean.clone(), clean
    coarse = degrade_matte(clean, degradation, generator)
    if _uniform(generator) < degradation.p_image:
        image = degrade_image_boundaries(image, clean, generator=generator)
    return image, coarse, clean
