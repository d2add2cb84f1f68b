"""Real-model adapters for the tool interfaces of `liwi_diffusers.tools`.

- `TransformersProposer`: object proposals from a ``transformers`` pipeline: ``mask-generation``
  (SAM), ``image-segmentation`` (Mask2Former, DETR, SegFormer...), ``zero-shot-object-detection``
  (OWL-ViT, Grounding DINO) or ``object-detection``; boxes become masks by GrabCut inside the box.
- `TransformersDepthOrderer`: back-to-front order of object masks from a ``depth-estimation``
  pipeline (DPT, Depth Anything); `BottomEdgeOrderer` is the weight-free default.
- `DiffusersInpainter`: background completion with a ``diffusers`` inpainting pipeline.

The vision-language agent lives in `liwi_dataset_builder.agent` (`TransformersVLM`). Models load
by Hub id or local folder; every adapter also accepts a ready pipeline object (that is how the
tests pass tiny random models).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image

from liwi_diffusers.layers import to_uint8
from liwi_diffusers.tools.proposals import ObjectProposal

__all__ = ["BottomEdgeOrderer", "DiffusersInpainter", "TransformersDepthOrderer", "TransformersProposer"]


def _as_rgb(image: Any) -> np.ndarray:
    from liwi_diffusers.layers import to_float_image

    return to_float_image(image, 3, "image")


def _to_pil(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(to_uint8(rgb), "RGB")


def _model_id(model: Any) -> str:
    inner = getattr(model, "model", None)
    return (
        getattr(inner, "name_or_path", "")
        or getattr(getattr(inner, "config", None), "_name_or_path", "")
        or (type(inner).__name__ if inner is not None else type(model).__name__)
    )


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else 0.0


def grabcut_in_box(rgb: np.ndarray, box: tuple[int, int, int, int], iterations: int = 4) -> np.ndarray:
    """The object inside ``box`` (left, top, right, bottom) as a mask, by GrabCut (box rectangle as fallback)."""
    height, width = rgb.shape[:2]
    left, top = max(0, int(box[0])), max(0, int(box[1]))
    right, bottom = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    fallback = np.zeros((height, width), bool)
    fallback[top:bottom, left:right] = True
    if right - left < 4 or bottom - top < 4 or (right - left) * (bottom - top) >= 0.95 * height * width:
        return fallback
    mask = np.zeros((height, width), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    image8 = np.round(rgb * 255).astype(np.uint8)[:, :, ::-1].copy()
    cv2.setRNGSeed(0)  # GrabCut's initialisation uses OpenCV's global random generator
    try:
        cv2.grabCut(image8, mask, (left, top, right - left, bottom - top), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return fallback
    result = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
    return result if result.sum() >= 0.05 * fallback.sum() else fallback


class TransformersProposer:
    """Object proposals (the `ObjectProposer` interface) from a ``transformers`` pipeline.

    Args:
        model: a Hub id or local folder, or a ready ``transformers`` pipeline.
        task: ``mask-generation``, ``image-segmentation``, ``zero-shot-object-detection`` or
            ``object-detection`` (taken from the pipeline when one is given).
        labels: candidate labels for zero-shot detection.
        threshold: proposals scoring lower are dropped.
        max_objects: default cap on the number of proposals.
        min_area: components smaller than this share of the image are dropped.
        call_kwargs: extra arguments for each pipeline call (e.g. ``points_per_batch`` for SAM).
    Masks overlapping a better one by more than ``nms_iou`` (IoU) are dropped.
    """

    def __init__(
        self,
        model: Any,
        task: str | None = None,
        labels: Sequence[str] | None = None,
        threshold: float = 0.3,
        max_objects: int = 4,
        min_area: float = 0.002,
        nms_iou: float = 0.7,
        device: Any = None,
        call_kwargs: dict[str, Any] | None = None,
        **pipeline_kwargs: Any,
    ) -> None:
        if isinstance(model, str):
            if task is None:
                raise ValueError("give the pipeline task with a model id, e.g. task='mask-generation'")
            from transformers import pipeline

            self.pipe = pipeline(task, model=model, device=device, **pipeline_kwargs)
            self.model_id = model
        else:
            self.pipe = model
            self.model_id = _model_id(model)
        self.task = task or getattr(self.pipe, "task", None)
        if self.task not in ("mask-generation", "image-segmentation", "zero-shot-object-detection", "object-detection"):
            raise ValueError(f"unsupported proposer task {self.task!r}")
        if self.task == "zero-shot-object-detection" and not labels:
            raise ValueError("zero-shot-object-detection needs candidate labels")
        self.labels = list(labels or [])
        self.threshold = threshold
        self.max_objects = max_objects
        self.min_area = min_area
        self.nms_iou = nms_iou
        self.call_kwargs = dict(call_kwargs or {})

    @property
    def name(self) -> str:
        return f"{self.task}:{self.model_id}"

    def __call__(self, image: Any, max_objects: int | None = None) -> list[ObjectProposal]:
        """Proposals for ``image`` (PIL or float RGB), best first."""
        rgb = _as_rgb(image)
        limit = self.max_objects if max_objects is None else max_objects
        if limit <= 0:
            return []
        candidates = self._candidates(rgb)
        candidates = [c for c in candidates if c[1] >= self.threshold and c[0].mean() >= self.min_area]
        candidates.sort(key=lambda c: -c[1])  # stable: ties keep the model's order
        kept: list[ObjectProposal] = []
        for mask, score, label in candidates:
            if any(_mask_iou(mask, other.mask) > self.nms_iou for other in kept):
                continue
            kept.append(ObjectProposal(mask, float(np.clip(score, 0.0, 1.0)), label or "object"))
            if len(kept) >= limit:
                break
        return kept

    def _candidates(self, rgb: np.ndarray) -> list[tuple[np.ndarray, float, str]]:
        height, width = rgb.shape[:2]
        pil = _to_pil(rgb)
        if self.task == "mask-generation":
            output = self.pipe(pil, **self.call_kwargs)
            scores = output["scores"]
            scores = scores.tolist() if hasattr(scores, "tolist") else list(scores)
            return [
                (_resize_mask(np.asarray(m), height, width), float(s), "object")
                for m, s in zip(output["masks"], scores)
            ]
        if self.task == "image-segmentation":
            results = []
            for item in self.pipe(pil, **self.call_kwargs):
                mask = _resize_mask(np.asarray(item["mask"]) > 127, height, width)
                score = 1.0 if item.get("score") is None else float(item["score"])  # semantic: no score
                results += [(part, score, item.get("label") or "object") for part in _components(mask, self.min_area)]
            return results
        kwargs = dict(self.call_kwargs)
        if self.task == "zero-shot-object-detection":
            kwargs["candidate_labels"] = self.labels
        kwargs.setdefault("threshold", self.threshold)
        results = []
        for item in self.pipe(pil, **kwargs):
            box = item["box"]
            bounds = (box["xmin"], box["ymin"], box["xmax"], box["ymax"])
            results.append((grabcut_in_box(rgb, bounds), float(item["score"]), item.get("label") or "object"))
        return results


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.ndim == 3:
        mask = mask[0]
    if mask.shape != (height, width):
        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask


def _components(mask: np.ndarray, min_area: float) -> list[np.ndarray]:
    """Connected parts of a (semantic) mask, each at least ``min_area`` of the image."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    minimum = min_area * mask.size
    return [labels == k for k in range(1, count) if (labels == k).sum() >= minimum]


# --------------------------------------------------------------------------------------- depth
class BottomEdgeOrderer:
    """Weight-free depth order: the lower an object's bottom edge in the frame, the nearer it is."""

    name = "bottom-edge"

    def order(self, image: Any, masks: Sequence[np.ndarray]) -> list[int]:
        """Indices of ``masks`` back to front."""

        def key(index: int) -> tuple[int, float, int]:
            rows = np.flatnonzero(np.asarray(masks[index]).any(axis=1))
            return (int(rows[-1]) if rows.size else 0, -float(np.asarray(masks[index]).sum()), index)

        return sorted(range(len(masks)), key=key)


class TransformersDepthOrderer:
    """Back-to-front order of object masks from a ``transformers`` depth-estimation pipeline.

    DPT and Depth Anything predict relative inverse depth (larger is nearer); set
    ``larger_is_nearer=False`` for a model that predicts metric depth.
    """

    def __init__(self, model: Any, device: Any = None, larger_is_nearer: bool = True, **pipeline_kwargs: Any) -> None:
        if isinstance(model, str):
            from transformers import pipeline

            self.pipe = pipeline("depth-estimation", model=model, device=device, **pipeline_kwargs)
            self.model_id = model
        else:
            self.pipe = model
            self.model_id = _model_id(model)
        self.larger_is_nearer = larger_is_nearer

    @property
    def name(self) -> str:
        return f"depth-estimation:{self.model_id}"

    def nearness(self, image: Any) -> np.ndarray:
        """``(H, W)`` float32 in [0, 1]: 1 is the nearest point of the photo."""
        rgb = _as_rgb(image)
        output = self.pipe(_to_pil(rgb))
        depth = output["predicted_depth"]
        depth = depth.detach().float().cpu().numpy() if hasattr(depth, "detach") else np.asarray(depth, np.float32)
        depth = np.squeeze(depth).astype(np.float32)
        if depth.shape != rgb.shape[:2]:
            depth = cv2.resize(depth, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        low, high = float(depth.min()), float(depth.max())
        depth = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
        return depth if self.larger_is_nearer else 1.0 - depth

    def order(self, image: Any, masks: Sequence[np.ndarray]) -> list[int]:
        """Indices of ``masks`` back to front (by the median nearness inside each)."""
        near = self.nearness(image)
        levels = [float(np.median(near[np.asarray(m, bool)])) if np.asarray(m, bool).any() else 0.0 for m in masks]
        return sorted(range(len(masks)), key=lambda k: (levels[k], k))


# ------------------------------------------------------------------------------------ inpainting
class DiffusersInpainter:
    """Background completion (the `Inpainter` interface) with a ``diffusers`` inpainting pipeline.

    The photo is brought to ``working_size`` on its long side (a multiple of 16), inpainted with a
    fixed seed (deterministic), brought back, and blended in over the hole dilated by ``dilation``
    pixels, with a soft edge of ``feather`` pixels (Gaussian sigma) around it; pixels farther away
    stay exactly as they were.
    """

    def __init__(
        self,
        pipeline: Any,
        prompt: str = "empty background, nothing in the foreground, natural photo",
        negative_prompt: str = "object, person, animal, text, watermark",
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int = 0,
        working_size: int = 512,
        dilation: int = 4,
        feather: int = 3,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if isinstance(pipeline, str):
            from diffusers import AutoPipelineForInpainting

            kwargs = {"dtype": dtype} if dtype is not None else {}
            self.pipe = AutoPipelineForInpainting.from_pretrained(pipeline, **kwargs)
            if device is not None:
                self.pipe.to(device)
            self.model_id = pipeline
        else:
            self.pipe = pipeline
            self.model_id = getattr(getattr(pipeline, "config", None), "_name_or_path", "") or type(pipeline).__name__
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.working_size = working_size
        self.dilation = dilation
        self.feather = feather

    @property
    def name(self) -> str:
        return f"diffusers:{self.model_id}"

    def __call__(self, image: Any, mask: Any) -> np.ndarray:
        """``(H, W, 3)`` float32: ``image`` with the pixels where ``mask`` > 0 filled."""
        import torch

        rgb = _as_rgb(image)
        height, width = rgb.shape[:2]
        hole = np.asarray(mask, dtype=np.float32) > 0
        if hole.shape != (height, width):
            raise ValueError(f"mask is {hole.shape[::-1]} but the image is {width}x{height}")
        if not hole.any():
            return rgb.copy()
        if self.dilation > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.dilation + 1,) * 2)
            hole = cv2.dilate(hole.astype(np.uint8), kernel).astype(bool)
        scale = self.working_size / max(height, width)
        work_w = max(16, round(width * scale / 16) * 16)
        work_h = max(16, round(height * scale / 16) * 16)
        small = cv2.resize(rgb, (work_w, work_h), interpolation=cv2.INTER_AREA)
        small_hole = cv2.resize(hole.astype(np.uint8) * 255, (work_w, work_h), interpolation=cv2.INTER_NEAREST)
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        output = self.pipe(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt if self.guidance_scale > 1 else None,
            image=_to_pil(small),
            mask_image=Image.fromarray(small_hole, "L"),
            height=work_h,
            width=work_w,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=generator,
            output_type="np",
        )
        filled = np.asarray(output.images[0], np.float32)
        filled = cv2.resize(filled, (width, height), interpolation=cv2.INTER_LINEAR)
        weight = hole.astype(np.float32)
        if self.feather > 0:
            weight = np.maximum(weight, cv2.GaussianBlur(weight, (0, 0), self.feather))
        return np.clip(weight[:, :, None] * filled + (1.0 - weight[:, :, None]) * rgb, 0.0, 1.0).astype(np.float32)
