"""Edits on a decomposed photo: hide, delete, move and scale objects, change shadow strength.

Plain functions on plain data, so that the Space's handlers stay thin and the edits can be tested
without Gradio. Edits never touch the decomposition itself: an `EditSession` keeps the original
layers (as 8-bit arrays, which is what the exported files hold anyway) plus one `ObjectEdit` per
object, and `apply_edits` renders a fresh `LayeredImage` from them every time. Moving or scaling an
object twice therefore resamples it once, and "reset" is just forgetting the edits. An object split into
parts (`LayeredImage.parts`, the Space's depth 2 and 3) is edited as one: its parts follow it, so the
edited layers and the files exported from them keep its group of parts.

    >>> session = EditSession.from_layered(layered)
    >>> session = update_edit(session, 0, dx=40, scale=1.5, shadow_strength=0.5)
    >>> session = update_edit(session, 1, visible=False)   # the background shows through
    >>> edited = apply_edits(session)                      # a LayeredImage
    >>> picture = edited.compose()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from liwi_diffusers.layers import LayeredImage, LayerPart, layer_name, parse_layer_name, to_uint8

__all__ = [
    "MAX_SCALE",
    "MAX_SHADOW_STRENGTH",
    "MIN_SCALE",
    "EditSession",
    "ObjectEdit",
    "apply_edits",
    "delete_object",
    "move_parts",
    "object_choices",
    "reset_edits",
    "scale_shadow",
    "shown_layer_names",
    "shown_objects",
    "transform_layer",
    "update_edit",
]

MIN_SCALE = 0.1
MAX_SCALE = 4.0
MAX_SHADOW_STRENGTH = 3.0


@dataclass(frozen=True)
class ObjectEdit:
    """What the user changed about one object (the identity edit by default).

    Attributes:
        visible: False hides the object and its shadow (the background shows through).
        deleted: True removes the object from the edited layers and from exported files.
        dx, dy: shift in pixels (right, down).
        scale: size factor about the centre of the object's box.
        shadow_strength: factor on the shadow's alpha (0 removes the shadow, 1 keeps it).
    """

    visible: bool = True
    deleted: bool = False
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    shadow_strength: float = 1.0

    def __post_init__(self) -> None:
        if not MIN_SCALE <= self.scale <= MAX_SCALE:
            raise ValueError(f"scale must be between {MIN_SCALE} and {MAX_SCALE}, got {self.scale}")
        if not 0.0 <= self.shadow_strength <= MAX_SHADOW_STRENGTH:
            raise ValueError(f"shadow strength must be between 0 and {MAX_SHADOW_STRENGTH}, got {self.shadow_strength}")

    @property
    def moves(self) -> bool:
        """Whether the object's pixels have to be resampled."""
        return self.dx != 0 or self.dy != 0 or self.scale != 1.0


@dataclass
class EditSession:
    """The decomposition a user is editing, and their edits (one `ObjectEdit` per original object)."""

    background: np.ndarray  # (H, W, 3) uint8
    foregrounds: list[np.ndarray]  # per object (H, W, 4) uint8, straight RGBA
    shadows: list[np.ndarray]  # per object (H, W) uint8
    labels: list[str]
    edits: list[ObjectEdit] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)  # of the original layers (`LayeredImage.layer_names`)
    parts: dict[int, list[LayerPart]] = field(default_factory=dict)  # objects split into parts: leaves as uint8

    def __post_init__(self) -> None:
        if not self.edits:
            self.edits = [ObjectEdit() for _ in self.foregrounds]
        if not len(self.foregrounds) == len(self.shadows) == len(self.labels) == len(self.edits):
            raise ValueError("an EditSession needs one shadow, label and edit per foreground")
        if not self.layer_names:
            self.layer_names = self.original().layer_names()

    @classmethod
    def from_layered(cls, layered: LayeredImage) -> EditSession:
        """Start editing ``layered`` (stored at 8 bits per channel; objects with parts as their 8-bit parts)."""
        if layered.parts:
            layered = layered.quantized()  # an object with parts is then exactly what its 8-bit parts show
        return cls(
            to_uint8(layered.background),
            [to_uint8(fg) for fg in layered.foregrounds],
            [to_uint8(shadow) for shadow in layered.shadows],
            list(layered.labels),
            layer_names=layered.layer_names(),
            parts={k: [_leaves_only(part, to_uint8) for part in tree] for k, tree in (layered.parts or {}).items()},
        )

    @property
    def num_objects(self) -> int:
        """Objects of the original decomposition, deleted ones included."""
        return len(self.foregrounds)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.background.shape[1]), int(self.background.shape[0])

    def original(self) -> LayeredImage:
        """The decomposition without any edit."""
        return LayeredImage(
            self.background, list(self.foregrounds), list(self.shadows), list(self.labels), parts=self.parts
        )

    def object_layer_names(self, index: int) -> list[str]:
        """Names of object ``index``'s layers in `layer_names`: its shadow, then its object layer or its parts."""
        starts = [k for k, name in enumerate(self.layer_names) if parse_layer_name(name)[0] == "shadow"]
        ends = [*starts[1:], len(self.layer_names)]
        return self.layer_names[starts[index] : ends[index]]

    def is_edited(self) -> bool:
        return any(edit != ObjectEdit() for edit in self.edits)


def object_choices(session: EditSession) -> list[tuple[str, int]]:
    """``(display name, index)`` of the objects still there, for a dropdown (deleted ones left out): ``object 2``,
    or ``object 2 (3 parts)`` for an object split into parts."""
    choices = []
    for index, edit in enumerate(session.edits):
        if edit.deleted:
            continue
        name = layer_name("object", index + 1, session.labels[index])
        leaves = sum(len(part.leaves()) for part in session.parts.get(index, []))
        choices.append((f"{name} ({leaves} parts)" if leaves else name, index))
    return choices


def shown_objects(session: EditSession) -> list[int]:
    """Indices (0-based, into the original objects) of the objects `apply_edits` keeps, back to front."""
    return [index for index, edit in enumerate(session.edits) if edit.visible and not edit.deleted]


def shown_layer_names(session: EditSession) -> list[str]:
    """Names of the layers `apply_edits` gives, with the objects' original numbers ("object 3" stays object 3
    after object 1 is hidden): the original `LayeredImage.layer_names`, less those of objects not shown."""
    names = session.layer_names[:1]
    for index in shown_objects(session):
        names += session.object_layer_names(index)
    return names


def update_edit(session: EditSession, index: int, **changes: float | bool) -> EditSession:
    """A new session where object ``index`` (0-based) has ``changes`` (fields of `ObjectEdit`) applied."""
    _check_index(session, index)
    if session.edits[index].deleted:
        raise ValueError(f"object {index + 1} was deleted; reset the edits to bring it back")
    edits = list(session.edits)
    edits[index] = replace(edits[index], **changes)
    return replace(session, edits=edits)


def delete_object(session: EditSession, index: int) -> EditSession:
    """A new session without object ``index`` (it and its shadow leave the edited layers)."""
    return update_edit(session, index, deleted=True, visible=False)


def reset_edits(session: EditSession) -> EditSession:
    """A new session with every edit undone (deleted objects come back)."""
    return replace(session, edits=[ObjectEdit() for _ in session.edits])


def apply_edits(session: EditSession) -> LayeredImage:
    """The edited layers: hidden and deleted objects left out, the others moved, scaled and re-shadowed.

    Objects keep their back-to-front order; the result composes with `LayeredImage.compose()` and
    exports with `save_layered` like any decomposition.
    """
    background = session.background
    foregrounds, shadows, labels = [], [], []
    parts: dict[int, list[LayerPart]] = {}
    for index in shown_objects(session):
        foreground, shadow = session.foregrounds[index], session.shadows[index]
        label, edit = session.labels[index], session.edits[index]
        rgba = foreground.astype(np.float32) / 255.0
        sigma = shadow.astype(np.float32) / 255.0
        tree = session.parts.get(index)
        if edit.moves:
            center = _alpha_center(rgba[:, :, 3])
            moved, sigma = transform_layer(rgba, sigma, edit.dx, edit.dy, edit.scale, center)
            if tree:
                tree = move_parts(tree, moved, _coefficients(edit.dx, edit.dy, edit.scale, center))
            rgba = moved
        if tree:
            parts[len(foregrounds)] = tree
        foregrounds.append(rgba)
        shadows.append(scale_shadow(sigma, edit.shadow_strength))
        labels.append(label)
    return LayeredImage(background, foregrounds, shadows, labels, parts=parts)


def move_parts(tree: list[LayerPart], moved: np.ndarray, coefficients: tuple[float, ...]) -> list[LayerPart]:
    """The parts of an object after it was moved or scaled: ``moved`` (its resampled RGBA) shared out among them.

    Every pixel belongs to one leaf part: the one that shows most there in the original, or, outside the object,
    the nearest one. That ownership is moved with the object (nearest-neighbour, so it stays one leaf per pixel)
    and each leaf takes ``moved`` on its pixels. The parts therefore compose to ``moved`` exactly, with no seam
    where resampled parts would overlap.
    """
    leaves = [leaf for part in tree for _, leaf in part.leaves()]
    alphas = np.stack([np.asarray(leaf.rgba)[:, :, 3] for leaf in leaves])
    owner = np.argmax(alphas, axis=0)
    owned = alphas.max(axis=0) > 0
    if owned.any() and not owned.all():
        _, (rows, cols) = ndimage.distance_transform_edt(~owned, return_indices=True)
        owner = owner[rows, cols]
    owner = np.rint(_affine(owner.astype(np.float32), coefficients, Image.Resampling.NEAREST)).astype(np.int64)
    shares = iter([np.where((owner == k)[:, :, None], moved, 0.0).astype(np.float32) for k in range(len(leaves))])

    def rebuild(part: LayerPart) -> LayerPart:
        if not part.parts:
            return LayerPart(next(shares), part.label)
        return LayerPart(None, part.label, [rebuild(p) for p in part.parts])

    return [rebuild(part) for part in tree]


def _leaves_only(part: LayerPart, transform: Callable[[np.ndarray], np.ndarray]) -> LayerPart:
    """``part`` with ``transform`` applied to its leaves' RGBA; a part with parts keeps no RGBA of its own (it is
    its parts' composite)."""
    if not part.parts:
        return LayerPart(transform(np.asarray(part.rgba)), part.label)
    return LayerPart(None, part.label, [_leaves_only(p, transform) for p in part.parts])


def scale_shadow(shadow: np.ndarray, strength: float) -> np.ndarray:
    """Shadow alpha times ``strength``, clipped to [0, 1] (0: no shadow, 1: unchanged, >1: darker)."""
    if strength < 0:
        raise ValueError(f"shadow strength must be >= 0, got {strength}")
    return np.clip(np.asarray(shadow, np.float32) * np.float32(strength), 0.0, 1.0)


def transform_layer(
    rgba: np.ndarray,
    shadow: np.ndarray,
    dx: float,
    dy: float,
    scale: float,
    center: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Move an object by ``(dx, dy)`` px and scale it by ``scale`` about ``center`` ``(x, y)``; its shadow follows.

    ``rgba`` is straight ``(H, W, 4)`` float in [0, 1], ``shadow`` ``(H, W)``. Colour is resampled
    premultiplied (bilinear), so edges do not pick up the colour of transparent pixels; what leaves
    the canvas is cut off.
    """
    coefficients = _coefficients(dx, dy, scale, center)
    alpha = rgba[:, :, 3]
    channels = [rgba[:, :, c] * alpha for c in range(3)] + [alpha, np.asarray(shadow, np.float32)]
    moved = [_affine(channel, coefficients) for channel in channels]
    new_alpha = np.clip(moved[3], 0.0, 1.0)
    safe = np.where(new_alpha > 1e-6, new_alpha, 1.0)
    colors = [np.where(new_alpha > 1e-6, np.clip(premultiplied / safe, 0.0, 1.0), 0.0) for premultiplied in moved[:3]]
    out = np.stack([*colors, new_alpha], axis=2).astype(np.float32)
    return out, np.clip(moved[4], 0.0, 1.0).astype(np.float32)


def _coefficients(dx: float, dy: float, scale: float, center: tuple[float, float]) -> tuple[float, ...]:
    """PIL's affine coefficients for a move by ``(dx, dy)`` and a scale about ``center``: PIL maps every output
    pixel (x, y) back to the input pixel (a x + b y + c, d x + e y + f)."""
    cx, cy = center
    inverse = 1.0 / scale
    return (inverse, 0.0, cx - (cx + dx) * inverse, 0.0, inverse, cy - (cy + dy) * inverse)


def _affine(
    channel: np.ndarray, coefficients: tuple[float, ...], resample: Image.Resampling = Image.Resampling.BILINEAR
) -> np.ndarray:
    height, width = channel.shape
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), "F")
    moved = image.transform((width, height), Image.Transform.AFFINE, coefficients, resample)
    return np.asarray(moved, dtype=np.float32)


def _alpha_center(alpha: np.ndarray) -> tuple[float, float]:
    """Centre of the box of the visible pixels (the canvas centre for an empty layer)."""
    rows = np.flatnonzero((alpha > 0).any(axis=1))
    cols = np.flatnonzero((alpha > 0).any(axis=0))
    if rows.size == 0:
        return alpha.shape[1] / 2.0, alpha.shape[0] / 2.0
    return (cols[0] + cols[-1] + 1) / 2.0, (rows[0] + rows[-1] + 1) / 2.0


def _check_index(session: EditSession, index: int) -> None:
    if not isinstance(index, (int, np.integer)) or not 0 <= index < session.num_objects:
        raise IndexError(f"no object {index!r}: this decomposition has objects 0..{session.num_objects - 1}")
