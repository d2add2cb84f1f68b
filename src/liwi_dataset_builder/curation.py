"""Foreground and background curation: one photo in, reusable assets out.

plan (agent) -> per chosen object: matte (alpha + straight colour) -> cast shadow -> crop
             -> background: the photo itself when clean, else objects removed (shadows lifted,
                holes inpainted), or nothing when too much would have to be invented
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image

from liwi_diffusers.layers import alpha_bbox, to_uint8

from .assets import BackgroundAsset, ForegroundAsset, PhotoAssets
from .sources import Photo

__all__ = ["curate_photo", "plausible_cast_shadow", "working_image"]


def working_image(image: Image.Image, working_size: int) -> np.ndarray:
    """The photo as float32 RGB with its long side at most ``working_size`` (area-resampled)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    scale = min(1.0, working_size / max(rgb.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    # 8-bit values from here on: curation results do not depend on float noise of the resize.
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0


def plausible_cast_shadow(alpha: np.ndarray, sigma: np.ndarray, max_mass: float = 1.5) -> tuple[bool, str]:
    """Whether an extracted shadow looks like a cast shadow of the object: on the ground, not huge.

    Most of its mass must lie below the object's middle row (shadows fall on what the object stands
    on; dark surroundings beside or above it are more likely texture), and its total darkening must
    not exceed ``max_mass`` times the object's alpha mass.
    """
    mass = float(sigma.sum())
    if mass <= 0:
        return True, "none"
    rows = np.flatnonzero((alpha > 0.5).any(axis=1))
    if rows.size == 0:
        return False, "empty object"
    middle = (rows[0] + rows[-1]) / 2.0
    low_share = float(sigma[int(np.ceil(middle)) :].sum()) / mass
    if low_share < 0.6:
        return False, f"only {low_share:.0%} of it below the object's middle"
    if mass > max_mass * float(alpha.sum()):
        return False, f"darkening {mass / float(alpha.sum()):.1f}x the object's area"
    return True, "ok"


def curate_photo(image: Image.Image, photo: Photo, tools: Any, working_size: int) -> PhotoAssets:
    """Plan, then curate the foreground objects and the background of one photo."""
    rgb = working_image(image, working_size)
    height, width = rgb.shape[:2]
    proposals = tools.proposer(rgb, max_objects=getattr(tools.spec, "max_objects", 3) + 2)
    plan = tools.planner.plan(rgb, proposals)
    assets = PhotoAssets(photo.photo_id, photo.ref.describe(), plan=plan.to_dict())
    occupied = np.zeros((height, width), np.float32)
    for index in plan.remove:
        occupied = np.maximum(occupied, proposals[index].mask.astype(np.float32))

    alphas, shadows = [], []
    for choice in plan.objects:
        matte = tools.matter(rgb, proposals[choice.index].mask)
        rgba = matte.rgba()
        ok, why = tools.rules.check_foreground(rgba)
        if not ok:
            assets.notes.append(f"object #{choice.index} ({choice.label}) rejected: {why}")
            continue
        occupied = np.maximum(occupied, matte.alpha)
        alphas.append((choice, rgba))
    for choice, rgba in alphas:
        sigma = np.asarray(tools.shadow_extractor(rgb, rgba[:, :, 3], occupied), np.float32)
        shadows.append(sigma)  # lifted from the background whatever happens next
        ok, why = plausible_cast_shadow(rgba[:, :, 3], sigma)
        if not ok:
            assets.notes.append(f"object #{choice.index}: extracted shadow dropped ({why}); one will be synthesized")
            sigma = np.zeros_like(sigma)
        support = (rgba[:, :, 3] > 0) | (sigma > 0)
        left, top, right, bottom = alpha_bbox(support.astype(np.float32)) or (0, 0, width, height)
        left, top = max(0, left - 2), max(0, top - 2)
        right, bottom = min(width, right + 2), min(height, bottom + 2)
        crop = rgba[top:bottom, left:right].copy()
        crop[crop[:, :, 3] < 0.5 / 255.0] = 0.0  # colour under zero alpha is meaningless
        cut_bottom = bool((rgba[-max(1, height // 100) :, :, 3] > 0.5).any())
        assets.foregrounds.append(
            ForegroundAsset(
                to_uint8(crop),
                to_uint8(sigma[top:bottom, left:right]),
                choice.label,
                photo.photo_id,
                photo.ref.describe(),
                float(proposals[choice.index].score),
                cut_bottom,
            )
        )

    if plan.clean_background:
        assets.background = BackgroundAsset(to_uint8(rgb), "clean", photo.photo_id, photo.ref.describe())
    elif plan.use_as_background:
        lift = np.clip(1.0 - np.sum(shadows, axis=0), 1e-3, 1.0) if shadows else np.ones((height, width), np.float32)
        shadow_free = np.clip(rgb / lift[:, :, None], 0.0, 1.0)
        hole = occupied > 0.01
        background = tools.inpainter(shadow_free, hole) if hole.any() else shadow_free
        assets.background = BackgroundAsset(to_uint8(background), "inpainted", photo.photo_id, photo.ref.describe())
        assets.notes.append(f"background: {hole.mean():.0%} inpainted")
    else:
        assets.notes.append("not used as a background: " + plan.reason)
    return assets
