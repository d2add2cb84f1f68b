"""Training data and objective of the shadow head (shadow-guided learning on composites with known shadows).

A training example is a composite made from its layers, as ADD composes them: a real photo crop as the ground,
sometimes a second real cut-out standing behind (with its own shadow, cast by the same light), then the object
with a synthesized shadow. Shadows come from one light per scene (`synthesize_shadow`): hard or soft cast shadows
projected onto the ground plane in any direction and length, their penumbra widening with distance from the
contact; soft contact shadows under the base; drop shadows; or none at all (a fifth of the objects, half of them
cut by the frame's bottom, as in photos where the base is not visible). The composite is then JPEG-compressed
like a camera photo. The exact shadow alpha is the target.

Shadow-guided learning (`shadow_guided_loss`) is two terms:

- supervised shadow alpha: binary cross-entropy of the head's logits against the true sigma (soft targets),
  over the pixels where the object's shadow can be seen (not under the object itself);
- recomposition: ``object + (1 - alpha) * (1 - sigma) * beneath`` must reproduce the photo (L1), where
  ``beneath`` is everything under the object (ground, objects behind it and their shadows).

The head gets the object's matte as a segmenter would give it (slightly blurred, eroded or dilated), and, as an
optional fourth image channel, the classical estimate of `DarkeningShadowExtractor` (zeroed for a share of the
samples, so that one head works alone and as a refiner of the classical estimate).

Everything is deterministic for a seed (numpy ``Generator``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .refiner import _jpeg, _resize  # the same resampling and JPEG artefacts as the refiner's composites

__all__ = [
    "NoShadowsError",
    "ShadowSample",
    "ShadowScenes",
    "ShadowTrainingSet",
    "check_has_shadows",
    "make_shadow_sample",
    "shadow_guided_loss",
    "synthesize_shadow",
]

NO_SHADOWS_MESSAGE = (
    "the training data holds no shadows (every shadow alpha is 0): shadow guidance has nothing to learn from; "
    "give samples with cast shadows"
)


class NoShadowsError(ValueError):
    """Training data without a single shadow: the supervised shadow term has nothing to learn from."""


@dataclass
class ShadowScenes:
    """How shadows and scenes are drawn (sizes are fractions of the object height unless noted).

    Attributes:
        p_none, p_contact, p_drop: an object without shadow; with a contact shadow only; with a drop shadow. The
            rest get a cast shadow (``p_contact_with_cast`` of them with a contact shadow too).
        p_soft: a cast shadow is soft (area light: penumbra ``soft_blur`` per unit of distance) rather than hard
            (sun: ``hard_blur``).
        length: the shadow's length on the ground (0.1: sun overhead, 1.5: low sun).
        shear: sideways lean of the shadow per unit of height (its direction on the ground).
        p_behind: the shadow falls away from the camera (up in the frame), else towards it.
        strength: opacity at the contact; ``fade``: how much of it is lost at the far end.
        object_height: object height, as a fraction of the canvas.
        p_second: a second object stands behind, lit by the same light.
        p_cut: an object without shadow has its base cut by the frame's bottom.
        p_jpeg, jpeg_quality: JPEG compression of the composite.
        p_matte_blur, p_matte_morph: the head's input matte blurred, or eroded/dilated by 1-2 px.
    """

    p_none: float = 0.2
    p_contact: float = 0.12
    p_drop: float = 0.08
    p_contact_with_cast: float = 0.5
    p_soft: float = 0.5
    hard_blur: tuple[float, float] = (0.002, 0.02)
    soft_blur: tuple[float, float] = (0.04, 0.15)
    length: tuple[float, float] = (0.1, 1.5)
    shear: tuple[float, float] = (-1.5, 1.5)
    p_behind: float = 0.7
    strength: tuple[float, float] = (0.2, 0.85)
    fade: tuple[float, float] = (0.0, 0.6)
    object_height: tuple[float, float] = (0.25, 0.6)
    p_second: float = 0.35
    p_cut: float = 0.5
    p_jpeg: float = 0.7
    jpeg_quality: tuple[int, int] = (60, 95)
    p_matte_blur: float = 0.4
    p_matte_morph: float = 0.3


@dataclass
class ShadowSample:
    """One training composite, float32, ``(S, S[, 3])``.

    Attributes:
        photo: the composite (JPEG-compressed as a camera would).
        beneath: everything under the object: ground, objects behind and their shadows (not the object's shadow).
        premultiplied: the object's colour times its alpha.
        alpha: the object's true alpha; ``matte``: the one the head is given (as a segmenter would give it).
        occupied: union of the given mattes of every object in the scene.
        sigma: the object's true shadow alpha.
        kind: ``"cast"``, ``"cast+contact"``, ``"contact"``, ``"drop"``, ``"none"``.
    """

    photo: np.ndarray
    beneath: np.ndarray
    premultiplied: np.ndarray
    alpha: np.ndarray
    matte: np.ndarray
    occupied: np.ndarray
    sigma: np.ndarray
    kind: str
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ shadows
def _blend_blurs(shape: np.ndarray, distance: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """``shape`` blurred by a sigma that grows with ``distance`` in [0, 1] (linear between the given levels)."""
    levels = [cv2.GaussianBlur(shape, (0, 0), max(0.4, s)) for s in sigmas]
    position = distance * (len(levels) - 1)
    out = np.zeros_like(shape)
    for index, level in enumerate(levels):
        weight = np.clip(1.0 - np.abs(position - index), 0.0, 1.0)
        out += weight * level
    return out


def synthesize_shadow(
    alpha: np.ndarray, rng: np.random.Generator, light: dict, scenes: ShadowScenes | None = None
) -> tuple[np.ndarray, str]:
    """The shadow alpha sigma ``(S, S)`` that ``alpha`` (an object standing on the ground) casts under ``light``.

    ``light`` is drawn once per scene by `draw_light`. Returns sigma (in [0, 0.9]) and its kind.
    """
    scenes = scenes or ShadowScenes()
    kind = light["kind"]
    rows = np.nonzero(alpha.max(axis=1) > 0.5)[0]
    if kind == "none" or not len(rows):
        return np.zeros_like(alpha), "none"
    top, bottom = float(rows[0]), float(rows[-1] + 1)
    height = max(1.0, bottom - top)
    size_y, size_x = alpha.shape
    sigma = np.zeros_like(alpha)
    if kind in ("cast", "cast+contact"):
        squash, shear = light["length"], light["shear"]
        direction = 1.0 if light["behind"] else -1.0
        # ground-plane projection: a point h above the contact line lands h * length away, leaning by shear
        matrix = np.float32(
            [[1.0, -shear, shear * bottom], [0.0, direction * squash, bottom * (1.0 - direction * squash)]]
        )
        projected = cv2.warpAffine(alpha, matrix, (size_x, size_y), flags=cv2.INTER_LINEAR)
        ys = np.arange(size_y, dtype=np.float32)[:, None]
        distance = np.clip(np.abs(ys - bottom) / max(1.0, squash * height), 0.0, 1.0) * np.ones_like(alpha)
        blur = light["blur"] * height
        cast = _blend_blurs(projected, distance, [0.5, 0.5 + 0.5 * blur, 0.5 + blur])
        cast *= light["strength"] * (1.0 - light["fade"] * distance)
        sigma = np.maximum(sigma, cast)
    if kind in ("contact", "cast+contact"):
        columns = np.nonzero(alpha[max(0, int(bottom) - max(2, int(0.1 * height))) : int(bottom)].max(axis=0) > 0.5)[0]
        if len(columns):
            center_x = 0.5 * (columns[0] + columns[-1] + 1) + light["contact_shift"] * height
            half_w = max(2.0, 0.5 * (columns[-1] + 1 - columns[0]) * light["contact_width"])
            half_h = max(1.5, light["contact_height"] * height)
            ellipse = np.zeros_like(alpha)
            cv2.ellipse(
                ellipse,
                (round(center_x), round(bottom - 0.3 * half_h)),
                (round(half_w), round(half_h)),
                0,
                0,
                360,
                1.0,
                -1,
            )
            contact = cv2.GaussianBlur(ellipse, (0, 0), max(1.0, 0.6 * half_h)) * light["contact_strength"]
            sigma = 1.0 - (1.0 - sigma) * (1.0 - contact)
    if kind == "drop":
        shift = np.float32([[1, 0, light["dx"] * height], [0, 1, light["dy"] * height]])
        moved = cv2.warpAffine(alpha, shift, (size_x, size_y), flags=cv2.INTER_LINEAR)
        sigma = cv2.GaussianBlur(moved, (0, 0), max(0.6, light["blur"] * height)) * light["strength"]
    return np.clip(sigma, 0.0, 0.9).astype(np.float32), kind


def draw_light(rng: np.random.Generator, scenes: ShadowScenes) -> dict:
    """One light for a whole scene (every object's shadow falls the same way)."""
    pick = rng.random()
    if pick < scenes.p_none:
        kind = "none"
    elif pick < scenes.p_none + scenes.p_contact:
        kind = "contact"
    elif pick < scenes.p_none + scenes.p_contact + scenes.p_drop:
        kind = "drop"
    else:
        kind = "cast+contact" if rng.random() < scenes.p_contact_with_cast else "cast"
    soft = bool(rng.random() < scenes.p_soft)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return {
        "kind": kind,
        "soft": soft,
        "blur": float(rng.uniform(*(scenes.soft_blur if soft else scenes.hard_blur))),
        "length": float(rng.uniform(*scenes.length)),
        "shear": float(rng.uniform(*scenes.shear)),
        "behind": bool(rng.random() < scenes.p_behind),
        "strength": float(rng.uniform(*scenes.strength)),
        "fade": float(rng.uniform(*scenes.fade)) if soft else float(rng.uniform(0.0, 0.2)),
        "contact_width": float(rng.uniform(0.9, 1.4)),
        "contact_height": float(rng.uniform(0.03, 0.1)),
        "contact_shift": float(rng.uniform(-0.05, 0.05)),
        "contact_strength": float(rng.uniform(0.3, 0.75)),
        "dx": float(np.cos(angle) * rng.uniform(0.02, 0.12)),
        "dy": float(abs(np.sin(angle)) * rng.uniform(0.02, 0.12)),
    }


# ------------------------------------------------------------------------------------------------ scenes
def _place(
    rgb: np.ndarray,
    alpha: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scenes: ShadowScenes,
    cut: bool,
    behind: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The cut-out scaled and flipped, standing on the ground of an empty ``size`` canvas (premultiplied, alpha)."""
    rows = np.nonzero(alpha.max(axis=1) > 0.5)[0]
    cols = np.nonzero(alpha.max(axis=0) > 0.5)[0]
    if not len(rows):
        rows, cols = np.arange(alpha.shape[0]), np.arange(alpha.shape[1])
    rgb, alpha = (
        rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1],
        alpha[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1],
    )
    factor = rng.uniform(*scenes.object_height) * size / alpha.shape[0]
    factor = min(factor, 0.7 * size / alpha.shape[1])
    shape = (max(4, round(alpha.shape[0] * factor)), max(4, round(alpha.shape[1] * factor)))
    premultiplied = _resize(rgb * alpha[:, :, None], shape)
    alpha = np.clip(_resize(alpha, shape), 0.0, 1.0)
    if rng.random() < 0.5:
        premultiplied, alpha = premultiplied[:, ::-1], alpha[:, ::-1]
    if rng.random() < 0.3:  # the same shapes in other colours
        premultiplied = np.clip(premultiplied * rng.uniform(0.7, 1.3, 3).astype(np.float32), 0, None)
    premultiplied = np.minimum(premultiplied, alpha[:, :, None])
    height, width = alpha.shape
    if cut:  # the base is below the frame
        bottom = size + int(rng.integers(max(1, height // 8), max(2, height // 3)))
    else:  # a shadow falling towards the camera needs room below the base
        bottom = int(rng.integers(int(0.5 * size), int((0.95 if behind else 0.75) * size) + 1))
    left = int(rng.integers(-width // 5, size - width + width // 5 + 1)) if size > width else (size - width) // 2
    canvas = np.zeros((size, size, 4), np.float32)
    top = bottom - height
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(size, top + height), min(size, left + width)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1, :3] = premultiplied[y0 - top : y1 - top, x0 - left : x1 - left]
        canvas[y0:y1, x0:x1, 3] = alpha[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas[:, :, :3], canvas[:, :, 3]


def _as_segmenter_gives(alpha: np.ndarray, rng: np.random.Generator, scenes: ShadowScenes) -> np.ndarray:
    """The true matte slightly damaged (blur, 1-2 px of erosion or dilation), as the head gets it in use."""
    matte = alpha
    if rng.random() < scenes.p_matte_morph:
        radius = int(rng.integers(1, 3))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        matte = cv2.erode(matte, kernel) if rng.random() < 0.5 else cv2.dilate(matte, kernel)
    if rng.random() < scenes.p_matte_blur:
        matte = cv2.GaussianBlur(matte, (0, 0), rng.uniform(0.5, 1.5))
    return np.clip(matte, 0.0, 1.0).astype(np.float32)


def make_shadow_sample(
    cutouts: Sequence[tuple[np.ndarray, np.ndarray]],
    backgrounds: Sequence[np.ndarray],
    rng: np.random.Generator,
    size: int = 192,
    scenes: ShadowScenes | None = None,
) -> ShadowSample:
    """One composite with a known shadow: ``cutouts`` are ``(rgb (h, w, 3), alpha (h, w))`` float32 pairs,
    ``backgrounds`` RGB float32 photos (the ground). See the module docstring for what is drawn."""
    if not cutouts or not backgrounds:
        raise ValueError("need at least one cut-out and one background to compose shadow training samples")
    scenes = scenes or ShadowScenes()
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    crop = min(max(16, round(size / rng.uniform(0.4, 1.2))), *background.shape[:2])
    top = int(rng.integers(0, background.shape[0] - crop + 1))
    left = int(rng.integers(0, background.shape[1] - crop + 1))
    ground = _resize(background[top : top + crop, left : left + crop], (size, size))
    if rng.random() < 0.5:
        ground = ground[:, ::-1]
    ground = np.clip(ground * rng.uniform(0.75, 1.15), 0.0, 1.0).astype(np.float32)
    light = draw_light(rng, scenes)
    cut = light["kind"] == "none" and rng.random() < scenes.p_cut
    beneath, mattes = ground, []
    if rng.random() < scenes.p_second:  # another object behind, its shadow cast by the same light
        rgb, alpha = cutouts[int(rng.integers(len(cutouts)))]
        other_premultiplied, other_alpha = _place(rgb, alpha, rng, size, scenes, cut=False, behind=light["behind"])
        other_sigma, _ = synthesize_shadow(other_alpha, rng, light, scenes)
        beneath = other_premultiplied + (1 - other_alpha[:, :, None]) * (1 - other_sigma[:, :, None]) * beneath
        mattes.append(_as_segmenter_gives(other_alpha, rng, scenes))
    rgb, alpha = cutouts[int(rng.integers(len(cutouts)))]
    premultiplied, alpha = _place(rgb, alpha, rng, size, scenes, cut=cut, behind=light["behind"])
    sigma, kind = synthesize_shadow(alpha, rng, light, scenes)
    photo = premultiplied + (1 - alpha[:, :, None]) * (1 - sigma[:, :, None]) * beneath
    photo = np.clip(photo, 0.0, 1.0).astype(np.float32)
    if rng.random() < scenes.p_jpeg:
        photo = _jpeg(photo, int(rng.integers(scenes.jpeg_quality[0], scenes.jpeg_quality[1] + 1)))
    matte = _as_segmenter_gives(alpha, rng, scenes)
    occupied = np.max([matte, *mattes], axis=0)
    return ShadowSample(
        photo=photo,
        beneath=np.clip(beneath, 0.0, 1.0).astype(np.float32),
        premultiplied=premultiplied.astype(np.float32),
        alpha=alpha.astype(np.float32),
        matte=matte,
        occupied=occupied.astype(np.float32),
        sigma=sigma,
        kind=kind,
        info={"light": light, "second": bool(mattes), "cut": cut},
    )


# ------------------------------------------------------------------------------------------------ data set
def check_has_shadows(sigmas: np.ndarray | torch.Tensor, threshold: float = 0.02) -> None:
    """Raise `NoShadowsError` (one line) when no sample has any shadow above ``threshold``."""
    peak = float(sigmas.max()) if len(sigmas) else 0.0
    if peak <= threshold:
        raise NoShadowsError(NO_SHADOWS_MESSAGE)


class ShadowTrainingSet:
    """Training samples stacked as 8-bit tensors (channels first), with the classical estimate of each.

    Channels: photo (3), beneath (3), premultiplied (3), alpha, matte, occupied, sigma, classical (1 each).
    `batch` gives float tensors in [0, 1], horizontally flipped per sample when asked.
    """

    CHANNELS = ("photo", "beneath", "premultiplied", "alpha", "matte", "occupied", "sigma", "classical")

    def __init__(self, data: torch.Tensor, kinds: Sequence[str]) -> None:
        if data.ndim != 4 or data.shape[1] != 14 or data.dtype != torch.uint8:
            raise ValueError(f"expected uint8 data (N, 14, S, S), got {data.dtype} {tuple(data.shape)}")
        self.data, self.kinds = data, list(kinds)
        check_has_shadows(self.data[:, 12])

    @classmethod
    def from_samples(cls, samples: Sequence[ShadowSample], classical: Sequence[np.ndarray]) -> ShadowTrainingSet:
        """Stack samples and their classical shadow estimates (``DarkeningShadowExtractor`` on the photo)."""
        if not samples:
            raise ValueError("no training samples")
        arrays = [cls.pack(sample, prior) for sample, prior in zip(samples, classical, strict=True)]
        return cls(torch.from_numpy(np.stack(arrays)), [s.kind for s in samples])

    @staticmethod
    def pack(sample: ShadowSample, classical: np.ndarray) -> np.ndarray:
        """One sample and its classical estimate as the 8-bit ``(14, S, S)`` array the set stacks."""
        stack = np.dstack(
            [
                sample.photo,
                sample.beneath,
                sample.premultiplied,
                sample.alpha,
                sample.matte,
                sample.occupied,
                sample.sigma,
                classical,
            ]
        )
        return np.round(np.clip(stack, 0, 1) * 255).astype(np.uint8).transpose(2, 0, 1)

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: Sequence[int], flips: Sequence[bool] | None = None) -> dict[str, torch.Tensor]:
        """Float tensors for ``indices``: ``photo, beneath, premultiplied`` (N, 3, S, S), the rest (N, 1, S, S)."""
        chunk = self.data[list(indices)].float() / 255.0
        if flips is not None:
            flip = torch.tensor(list(flips), dtype=torch.bool)
            chunk[flip] = chunk[flip].flip(-1)
        parts = torch.split(chunk, [3, 3, 3, 1, 1, 1, 1, 1], dim=1)
        return dict(zip(self.CHANNELS, parts))


# ------------------------------------------------------------------------------------------------ objective
def shadow_guided_loss(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], recomposition_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Shadow-guided learning: BCE of ``logits`` against the true sigma, plus the recomposition L1.

    Both terms count where the object's shadow can be seen (weight ``1 - alpha``, the object's own pixels hide it).
    ``recomposition_weight=0`` leaves the supervised term alone. Returns the loss and its parts (floats).
    """
    visible = 1.0 - batch["alpha"]
    supervised = F.binary_cross_entropy_with_logits(logits.float(), batch["sigma"], weight=visible)
    sigma = torch.sigmoid(logits.float())
    recomposed = batch["premultiplied"] + visible * (1.0 - sigma) * batch["beneath"]
    recomposition = (recomposed - batch["photo"]).abs().mean()
    total = supervised + recomposition_weight * recomposition
    return total, {"bce": float(supervised.detach()), "recomposition": float(recomposition.detach())}


def head_inputs(batch: dict[str, torch.Tensor], image_channels: int, use_classical: torch.Tensor | None = None):
    """``(image, object_alpha, objects_alpha)`` for `ShadowHead.logits`: the photo, plus (4 channels) the classical
    estimate where ``use_classical`` (a bool per sample) says so and zeros elsewhere."""
    image = batch["photo"]
    if image_channels == 4:
        prior = batch["classical"]
        if use_classical is not None:
            prior = prior * use_classical.to(prior.dtype)[:, None, None, None]
        image = torch.cat([image, prior], dim=1)
    elif image_channels != 3:
        raise ValueError(
            f"the shadow head takes 3 (RGB) or 4 (RGB + classical estimate) channels, got {image_channels}"
        )
    return image, batch["matte"], batch["occupied"]
