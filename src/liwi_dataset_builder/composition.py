"""Layered composition: curated foregrounds (with shadows) placed on curated backgrounds.

Each sample gets a random square crop of a background, one to a few objects at varied scale,
position and flip, a back-to-front order (mostly by depth: the object standing lower in the frame
is nearer), bounded occlusion, and a shadow per object: the one extracted from its photo, or a
synthesized one (a sheared, squashed, blurred footprint of its alpha on the ground, or a soft drop
shadow) in a light direction shared by the whole sample. The layers are then quantized to 8 bits
and the composite is *made* from them with `LayeredImage.compose`, so the ground truth is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from liwi_diffusers.layers import LayeredImage, alpha_bbox

from .assets import BackgroundAsset, ForegroundAsset

__all__ = ["ComposedSample", "CompositionConfig", "compose_sample", "synthesize_shadow"]


@dataclass
class CompositionConfig:
    """How samples are laid out (all sizes are fractions of the square canvas side)."""

    resolution: int = 512
    min_objects: int = 1
    max_objects: int = 3
    object_height: tuple[float, float] = (0.3, 0.65)
    max_object_width: float = 0.75
    min_visible_fraction: float = 0.5
    placement_tries: int = 12
    depth_order_probability: float = 0.75
    shadow_strength: tuple[float, float] = (0.2, 0.6)
    cast_shadow_probability: float = 0.75
    background_crop: tuple[float, float] = (0.75, 1.0)
    flip_probability: float = 0.5


@dataclass
class ComposedSample:
    """One layered sample: 8-bit-exact layers and the composite made from them."""

    layered: LayeredImage
    composite: np.ndarray
    shadow_kinds: list[str]
    foregrounds: list[ForegroundAsset]
    background: BackgroundAsset

    @property
    def composite_uint8(self) -> np.ndarray:
        return np.round(self.composite * 255.0).astype(np.uint8)


@dataclass
class _Placed:
    asset: ForegroundAsset
    rgba: np.ndarray  # (R, R, 4) straight colour on the canvas
    shadow: np.ndarray  # (R, R) extracted shadow moved with the object (zeros when none)
    bottom: float  # canvas y of the object's lowest pixel row (exclusive)
    height: float  # object height on the canvas, px


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = width < array.shape[1] or height < array.shape[0]
    out = cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return out.reshape(height, width, -1) if array.ndim == 3 else out


def _crop_background(asset: BackgroundAsset, rng: np.random.Generator, config: CompositionConfig) -> np.ndarray:
    image = asset.image.astype(np.float32) / 255.0
    height, width = image.shape[:2]
    side = max(1, round(min(height, width) * rng.uniform(*config.background_crop)))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = _resize(image[top : top + side, left : left + side], config.resolution, config.resolution)
    if rng.random() < config.flip_probability:
        crop = crop[:, ::-1]
    return np.clip(crop, 0.0, 1.0)


def _paste(canvas: np.ndarray, patch: np.ndarray, left: int, top: int) -> None:
    """Write ``patch`` into ``canvas`` at ``(left, top)``, clipped to the canvas."""
    height, width = canvas.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + patch.shape[1], width), min(top + patch.shape[0], height)
    if x0 < x1 and y0 < y1:
        canvas[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]


def _place(asset: ForegroundAsset, rng: np.random.Generator, config: CompositionConfig) -> _Placed:
    """Scale, flip and position one foreground on an empty canvas."""
    size = config.resolution
    rgba = asset.rgba.astype(np.float32) / 255.0
    shadow = asset.shadow.astype(np.float32) / 255.0
    box = alpha_bbox(rgba[:, :, 3], 0.02) or (0, 0, rgba.shape[1], rgba.shape[0])
    object_height, object_width = box[3] - box[1], box[2] - box[0]
    scale = rng.uniform(*config.object_height) * size / object_height
    scale = min(scale, config.max_object_width * size / object_width)
    width, height = max(1, round(rgba.shape[1] * scale)), max(1, round(rgba.shape[0] * scale))
    # Resize premultiplied colour so no colour from alpha-0 pixels bleeds into the edges.
    alpha = rgba[:, :, 3:4]
    stack = np.clip(_resize(np.concatenate([rgba[:, :, :3] * alpha, alpha], axis=2), width, height), 0.0, 1.0)
    alpha = stack[:, :, 3:4]
    color = np.where(alpha > 1e-4, stack[:, :, :3] / np.maximum(alpha, 1e-4), 0.0)
    patch = np.concatenate([np.clip(color, 0.0, 1.0), alpha], axis=2)
    patch_shadow = np.clip(_resize(shadow, width, height), 0.0, 1.0)
    if rng.random() < config.flip_probability:
        patch, patch_shadow = patch[:, ::-1], patch_shadow[:, ::-1]
    left, top, right, bottom = alpha_bbox(patch[:, :, 3], 0.02) or (0, 0, width, height)
    # Horizontal: keep the object on the canvas. Vertical: stand on the lower part of the frame.
    low, high = -left, size - right
    offset_x = int(rng.integers(low, high + 1)) if high >= low else (low + high) // 2
    if asset.cut_bottom:
        offset_y = size - bottom
    else:
        floor_low = max(0.45 * size, bottom - top)
        floor_high = max(floor_low, 0.98 * size)
        offset_y = round(rng.uniform(floor_low, floor_high)) - bottom
    canvas = np.zeros((size, size, 4), np.float32)
    canvas_shadow = np.zeros((size, size), np.float32)
    _paste(canvas, patch, offset_x, offset_y)
    _paste(canvas_shadow, patch_shadow, offset_x, offset_y)
    return _Placed(asset, canvas, canvas_shadow, float(offset_y + bottom), float(bottom - top))


def _visible_fractions(alphas: Sequence[np.ndarray]) -> list[float]:
    """Per object (back to front), the share of its alpha mass not hidden by the objects in front."""
    fractions = []
    above = np.ones_like(alphas[0])
    for alpha in reversed(alphas):
        mass = float(alpha.sum())
        fractions.append(float((alpha * above).sum()) / mass if mass > 0 else 0.0)
        above = above * (1.0 - alpha)
    return fractions[::-1]


def synthesize_shadow(
    alpha: np.ndarray,
    bottom: float,
    object_height: float,
    rng: np.random.Generator,
    light: dict[str, float],
) -> np.ndarray:
    """A plausible shadow alpha (sigma) for an object on the canvas that has none.

    ``light["kind"]`` is ``cast`` (the alpha projected onto the ground behind or in front of the
    object: squashed by ``squash``, sheared by ``shear``, sharper near the contact line and softer
    and fainter further away) or ``drop`` (the alpha shifted by ``dx, dy`` and blurred). The result
    is scaled by ``light["strength"]`` (0.2 to 0.6 by default).
    """
    size_y, size_x = alpha.shape
    if light["kind"] == "drop":
        shift = np.float32([[1, 0, light["dx"] * size_x], [0, 1, light["dy"] * size_y]])
        moved = cv2.warpAffine(alpha, shift, (size_x, size_y), flags=cv2.INTER_LINEAR)
        blur = max(0.6, light["blur"] * object_height)
        return np.clip(cv2.GaussianBlur(moved, (0, 0), blur) * light["strength"], 0.0, 1.0)
    squash, shear = light["squash"], light["shear"]
    # x' = x + shear * (bottom - y) ; y' = bottom -/+ squash * (bottom - y): the ground-plane projection.
    direction = -1.0 if light["behind"] else 1.0
    matrix = np.float32(
        [[1.0, -shear, shear * bottom], [0.0, -direction * squash, bottom + direction * squash * bottom]]
    )
    projected = cv2.warpAffine(alpha, matrix, (size_x, size_y), flags=cv2.INTER_LINEAR)
    sharp = cv2.GaussianBlur(projected, (0, 0), max(0.6, 0.01 * object_height))
    soft = cv2.GaussianBlur(projected, (0, 0), max(1.0, light["blur"] * object_height))
    rows = np.arange(size_y, dtype=np.float32)[:, None]
    reach = max(1.0, squash * object_height)
    distance = np.clip(np.abs(rows - bottom) / reach, 0.0, 1.0)
    shadow = ((1.0 - distance) * sharp + distance * soft) * (1.0 - 0.5 * distance)
    return np.clip(shadow * light["strength"], 0.0, 1.0)


def _sample_light(rng: np.random.Generator, config: CompositionConfig) -> dict[str, float]:
    """One light for the whole sample, so every synthesized shadow falls the same way."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return {
        "kind": "cast" if rng.random() < config.cast_shadow_probability else "drop",
        "strength": float(rng.uniform(*config.shadow_strength)),
        "squash": float(rng.uniform(0.15, 0.5)),
        "shear": float(rng.uniform(-1.2, 1.2)),
        "behind": bool(rng.random() < 0.8),
        "blur": float(rng.uniform(0.02, 0.06)),
        "dx": float(np.cos(angle) * rng.uniform(0.01, 0.04)),
        "dy": float(abs(np.sin(angle)) * rng.uniform(0.01, 0.04)),
    }


def compose_sample(
    background: BackgroundAsset,
    foregrounds: Sequence[ForegroundAsset],
    rng: np.random.Generator,
    config: CompositionConfig | None = None,
) -> ComposedSample:
    """Lay ``foregrounds`` out on ``background`` and make the composite from the 8-bit layers.

    Objects that cannot be placed with at least ``min_visible_fraction`` of them visible after
    ``placement_tries`` layouts are dropped, the most hidden first (a sample keeps at least one).
    """
    config = config or CompositionConfig()
    if not foregrounds:
        raise ValueError("compose_sample needs at least one foreground asset")
    canvas = _crop_background(background, rng, config)
    assets = list(foregrounds)
    while True:
        for _ in range(config.placement_tries):
            placed = [_place(asset, rng, config) for asset in assets]
            if rng.random() < config.depth_order_probability:
                order = sorted(range(len(placed)), key=lambda k: (placed[k].bottom, k))  # lower in frame = nearer
            else:
                order = [int(k) for k in rng.permutation(len(placed))]
            placed = [placed[k] for k in order]
            visible = _visible_fractions([p.rgba[:, :, 3] for p in placed])
            if min(visible) >= config.min_visible_fraction:
                break
        else:
            if len(assets) > 1:
                worst = placed[int(np.argmin(visible))].asset
                assets = [asset for asset in assets if asset is not worst]
                continue
        break
    light = _sample_light(rng, config)
    shadows, kinds = [], []
    for item in placed:
        if item.asset.has_shadow and float(item.shadow.max()) > 0.01:
            shadows.append(item.shadow)
            kinds.append("extracted")
        else:
            shadows.append(synthesize_shadow(item.rgba[:, :, 3], item.bottom, item.height, rng, light))
            kinds.append(f"synthesized-{light['kind']}")
    foreground_layers = []
    for item in placed:
        rgba = item.rgba.copy()
        rgba[rgba[:, :, 3] < 0.5 / 255.0] = 0.0  # colour under (8-bit) zero alpha is meaningless: store black
        foreground_layers.append(rgba)
    layered = LayeredImage(canvas, foreground_layers, shadows, [item.asset.label for item in placed]).quantized()
    composite = np.round(np.clip(layered.compose(), 0.0, 1.0) * 255.0).astype(np.float32) / 255.0
    return ComposedSample(layered, composite, kinds, [item.asset for item in placed], background)
