"""Learned box and point prompts: a `PromptHead` reading the segmenter's own features says which object is meant.

A salient-object segmenter answers "what stands out in this crop"; a box or a click asks "what is this object".
`LearnedPromptSegmenter` runs the segmenter (ISNet) once on a view around the prompt (the box plus a margin; for a
point, the whole photo, then a crop around what that found), keeps its decoder features, and a trained
`PromptHead` turns them and the prompt into the object's mask. `ToolChainDecomposer(prompt_head=FOLDER)` (or
`PromptSegmenter(learned=...)`) uses it for every box and point.

**Opt-in, and no weights ship**: the head trained by ``examples/train_prompt_head.py`` on the COCO photos that
can be had offline (1436 instances of 275 photos, 4 epochs on 2 CPU cores) scores below the selection rules of
`PromptSegmenter` on the real-photo benchmark (see the README's prompt section), so the rules stay the default.
The recipe, the model and this adapter are here for a head trained on more data.

    >>> from liwi_diffusers.tools import LearnedPromptSegmenter
    >>> prompts = LearnedPromptSegmenter.from_pretrained("prompt-out/prompt-head")   # + the downloaded ISNet
    >>> mask = prompts.box_mask(photo, (120, 40, 380, 300))       # (H, W) float32 in [0, 1]
    >>> mask = prompts.point_mask(photo, (250, 180))

torch is imported when a head is loaded, not when `liwi_diffusers.tools` is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["LearnedPromptSegmenter", "PromptHeadError", "deepest_point"]


class PromptHeadError(ValueError):
    """A prompt head that cannot be loaded or used."""


def deepest_point(mask: np.ndarray) -> tuple[float, float]:
    """The centre ``(x, y)`` of the pixel of ``mask`` farthest from its edge (where people click on an object)."""
    solid = np.pad(np.asarray(mask, bool), 1).astype(np.uint8)
    if not solid.any():
        raise ValueError("deepest_point: the mask is empty")
    distance = cv2.distanceTransform(solid, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x) + 0.5, float(y) + 0.5


class LearnedPromptSegmenter:
    """Masks of prompted objects from a `PromptHead` on an `OnnxSegmenter`'s features.

    Args:
        head: the trained `PromptHead`.
        segmenter: the `OnnxSegmenter` whose features the head was trained on (ISNet); it must run at
            ``view_side`` (the prepared model).
        view_side: the segmenter's pass per view, in pixels (the head was trained at 512).
        box_margin: a box's view is the box grown by this share of its width and height on each side.
        point_refine_below: after the whole-photo view, a point's object whose box is smaller than this share of
            the photo's longer side is looked at again in a view around it (small objects need the detail).
        point_margin: that second view is the object's box grown by this share of its longer side on each side.
        sharpness: the coverage is ``sigmoid(sharpness * logits)``: the head's logits are those of a 1/4-size grid
            upsampled, so their ramp spans several pixels; a steeper one keeps the edge soft over about a pixel and
            leaves the matting to the matter, as the segmenter's own mattes do (8 against 1: box IoU 0.613 ->
            0.696 on the real-photo benchmark, masks only).
        device: where the head runs.
    """

    def __init__(
        self,
        head: Any,
        segmenter: Any,
        view_side: int = 512,
        box_margin: float = 0.1,
        point_refine_below: float = 0.6,
        point_margin: float = 0.25,
        sharpness: float = 8.0,
        device: str = "cpu",
    ) -> None:
        from ..models.prompt_head import PromptHead

        if not isinstance(head, PromptHead):
            raise PromptHeadError(f"expected a PromptHead, got {type(head).__name__}")
        if not hasattr(segmenter, "features"):
            raise PromptHeadError(
                f"the prompt head reads a segmenter's features; {type(segmenter).__name__} gives none "
                "(use liwi_diffusers.tools.OnnxSegmenter)"
            )
        self.head = head.to(device).eval()
        self.segmenter = segmenter
        self.view_side = int(view_side)
        self.box_margin = float(box_margin)
        self.point_refine_below = float(point_refine_below)
        self.point_margin = float(point_margin)
        self.sharpness = float(sharpness)
        self.device = device

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, segmenter: Any = None, **kwargs: Any) -> LearnedPromptSegmenter:
        """A head from a folder saved by ``PromptHead.save_pretrained`` (``examples/train_prompt_head.py``'s output).

        ``segmenter`` defaults to the downloaded default segmenter (`OnnxSegmenter.from_cache`).

        Raises:
            PromptHeadError: the folder holds no prompt head, or weights that do not match its config.
        """
        from ..models.prompt_head import PromptHead
        from .segmenter import OnnxSegmenter

        if not (Path(path) / "config.json").is_file():
            raise PromptHeadError(f"{path}: no prompt head here (config.json missing)")
        try:
            head = PromptHead.from_pretrained(path)
        except (OSError, ValueError, RuntimeError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise PromptHeadError(f"{path}: the prompt head's weights do not match its config ({first})") from None
        return cls(head, segmenter if segmenter is not None else OnnxSegmenter.from_cache(), **kwargs)

    # -------------------------------------------------------------- views
    def _view_logits(
        self,
        image: np.ndarray,
        crop: tuple[int, int, int, int],
        box: tuple[float, float, float, float] | None,
        points: Sequence[tuple[float, float]],
        negatives: Sequence[tuple[float, float]],
    ) -> np.ndarray:
        """The head's logits for one view (``crop`` of ``image``), resized to the crop; prompts in photo pixels."""
        import torch

        from ..models.prompt_head import prompt_maps

        x0, y0, x1, y1 = crop
        matte, maps = self.segmenter.features(image[y0:y1, x0:x1], self.view_side)
        levels = maps[1:5] if len(maps) >= 5 else maps[:4]  # ISNet: from 1/4 to 1/32 of the view (not 1/2, 1/64)
        grid = levels[0].shape[-2:]
        sx, sy = grid[1] / (x1 - x0), grid[0] / (y1 - y0)

        def to_grid(x: float, y: float) -> tuple[float, float]:
            return (x - x0) * sx, (y - y0) * sy

        grid_box = None if box is None else (*to_grid(box[0], box[1]), *to_grid(box[2], box[3]))
        prompts = prompt_maps(
            grid, grid_box, [to_grid(*p) for p in points], [to_grid(*p) for p in negatives if _inside(p, crop)]
        )
        small = cv2.resize(matte, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
        rgb = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
        rgb = np.round(np.clip(rgb, 0, 1) * 255) / 255  # as trained (the views were kept as 8-bit)
        with torch.no_grad():
            logits = self.head(
                [
                    torch.from_numpy(level.astype(np.float16).astype(np.float32))[None].to(self.device)
                    for level in levels
                ],
                torch.from_numpy(small.astype(np.float16).astype(np.float32))[None, None].to(self.device),
                torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32))[None].to(self.device),
                prompts[None].to(self.device),
            )
        logits = logits[0, 0].float().cpu().numpy() * self.sharpness
        return cv2.resize(logits, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)

    # -------------------------------------------------------------- prompts
    def box_mask(
        self,
        image: np.ndarray,
        box: tuple[int, int, int, int],
        negatives: Sequence[tuple[int, int]] = (),
        points: Sequence[tuple[int, int]] = (),
    ) -> np.ndarray:
        """Coverage ``(H, W)`` float32 of the object in ``box`` (x0, y0, x1, y1 pixels; nothing outside it)."""
        height, width = image.shape[:2]
        x0, y0, x1, y1 = (int(v) for v in box)
        mx, my = self.box_margin * (x1 - x0) + 2, self.box_margin * (y1 - y0) + 2
        crop = (
            max(0, int(x0 - mx)),
            max(0, int(y0 - my)),
            min(width, int(np.ceil(x1 + mx))),
            min(height, int(np.ceil(y1 + my))),
        )
        logits = self._view_logits(
            image, crop, (x0, y0, x1, y1), [_centre(p) for p in points], [_centre(p) for p in negatives]
        )
        out = np.zeros((height, width), np.float32)
        out[crop[1] : crop[3], crop[0] : crop[2]] = _sigmoid(logits)
        inside = np.zeros((height, width), bool)
        inside[y0:y1, x0:x1] = True
        return out * inside

    def point_mask(
        self, image: np.ndarray, point: tuple[int, int], negatives: Sequence[tuple[int, int]] = ()
    ) -> np.ndarray:
        """Coverage ``(H, W)`` float32 of the object under ``point`` (x, y pixels)."""
        height, width = image.shape[:2]
        at = _centre(point)
        negative_centres = [_centre(p) for p in negatives]
        out = _sigmoid(self._view_logits(image, (0, 0, width, height), None, [at], negative_centres))
        region = _component_at(out >= 0.5, point)
        if region is None:
            return out * (out >= 0.05)
        ys, xs = np.nonzero(region)
        bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        side = max(bx1 - bx0, by1 - by0)
        if side < self.point_refine_below * max(height, width):
            pad = self.point_margin * side + 4
            crop = (
                max(0, int(bx0 - pad)),
                max(0, int(by0 - pad)),
                min(width, int(np.ceil(bx1 + pad))),
                min(height, int(np.ceil(by1 + pad))),
            )
            refined = np.zeros((height, width), np.float32)
            refined[crop[1] : crop[3], crop[0] : crop[2]] = _sigmoid(
                self._view_logits(image, crop, None, [at], negative_centres)
            )
            if _component_at(refined >= 0.5, point) is not None:
                out = refined
        keep = _component_at(out >= 0.5, point)
        if keep is None:
            return out * (out >= 0.05)
        grown = cv2.dilate(keep.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        return out * grown


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))).astype(np.float32)


def _centre(point: Sequence[int | float]) -> tuple[float, float]:
    return float(point[0]) + 0.5, float(point[1]) + 0.5


def _inside(point: tuple[float, float], crop: tuple[int, int, int, int]) -> bool:
    return crop[0] <= point[0] < crop[2] and crop[1] <= point[1] < crop[3]


def _component_at(solid: np.ndarray, point: Sequence[int | float]) -> np.ndarray | None:
    """The connected region of ``solid`` holding ``point``; else the region nearest to it; None when empty."""
    count, labels = cv2.connectedComponents(solid.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    x = min(max(int(point[0]), 0), solid.shape[1] - 1)
    y = min(max(int(point[1]), 0), solid.shape[0] - 1)
    label = labels[y, x]
    if label == 0:  # the point fell beside every region: take the nearest one
        ys, xs = np.nonzero(solid)
        nearest = int(np.argmin((xs - x) ** 2 + (ys - y) ** 2))
        label = labels[ys[nearest], xs[nearest]]
    return labels == label
