"""Recursive decomposition: split an object layer into its parts with the same peeling (a tree of layers).

`decompose_layer` takes object layer ``index`` of a `LayeredImage` apart:

    crop the object's box -> show its straight colour over a fill made from its own colours (so its outline does
    not stand out and the segmenter looks inside it) -> run the decomposer (segment, peel) on that crop -> give
    every pixel of the object to the inner layer that shows most there ("rest" where the inner background
    shows most) -> parts smaller than `MIN_PART_SHARE` of the object, or covering most of it, and specks cut
    off from a part go to their nearest neighbour

Each part holds the object's own straight colour and alpha on its pixels and nothing elsewhere, so the parts
partition the object: composed with "over" they give the object layer exactly (in 8 bits too), and the whole
tree recomposes to the photo as the object layer did. Parts have no shadows: the object's shadow stays with the
object. A split is kept only with at least two parts; otherwise the object stays whole and the metadata says why.

`decompose_to_depth` does this for every object (and then every part) ``depth - 1`` times, as
``liwi decompose --depth K`` does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from ..layers import LayeredImage, LayerPart, alpha_bbox

__all__ = ["MAX_DEPTH", "MIN_PART_SHARE", "WHOLE_OBJECT_SHARE", "decompose_layer", "decompose_to_depth"]

MAX_DEPTH = 3  # levels of the tree at most: objects, their parts, the parts' parts
MIN_PART_SHARE = 0.02  # a part has at least this share of its object's pixels
MIN_SPECK_SHARE, MIN_SPECK_PIXELS = 0.002, 16  # smaller pieces cut off from a part go to their neighbour
WHOLE_OBJECT_SHARE = 0.85  # an inner layer with this share of the object or more is the object itself, not a part
REST_LABEL = "rest"  # the part of an object that no inner layer took
MARGIN = 4  # pixels of fill around the object's box in the crop the decomposer sees


def decompose_layer(
    layered: LayeredImage,
    index: int,
    decomposer: Callable[..., LayeredImage] | None = None,
    num_layers: int | None = None,
) -> LayeredImage:
    """A copy of ``layered`` with object layer ``index`` (0-based) split into parts, one level deeper.

    An object without parts gets parts; an object that has parts already gets each of its leaf parts split
    again (so calling this twice gives a depth-3 tree). Parts are `LayerPart`s in ``result.parts[index]``, back to
    front: first the "rest" (what no inner layer took, when it is big enough), then the parts the decomposer
    peeled, in its order.

    Args:
        layered: the layered image (not changed).
        index: the object to split.
        decomposer: ``decomposer(image, num_layers=...) -> LayeredImage`` run on the object's crop; default
            ``ToolChainDecomposer(extract_shadows=False)`` (the learned segmenter when downloaded, else the
            weight-free tools). A `ToolChainDecomposer` is used with its shadow search off (a shallow copy).
        num_layers: parts at most per split, besides the rest (None or 0: automatic).
    Returns:
        The new layered image; ``metadata["parts"][str(index + 1)]`` records per split how many parts were found
        and why the decomposer stopped (or why the layer stayed whole).
    """
    if not isinstance(layered, LayeredImage):
        raise TypeError(f"decompose_layer expects a LayeredImage, got {type(layered).__name__}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index must be an int (0-based object index), got {type(index).__name__}")
    if not 0 <= index < layered.num_objects:
        raise IndexError(
            f"object index {index} out of range for {layered.num_objects} object"
            f"{'' if layered.num_objects == 1 else 's'} (indices are 0-based)"
        )
    decomposer = _for_parts(decomposer)
    parts = dict(layered.parts or {})
    notes: list[dict[str, Any]] = []
    if index in parts:
        tree = [_split_leaves(part, decomposer, num_layers, notes) for part in parts[index]]
    else:
        split, note = _split(layered.foregrounds[index], decomposer, num_layers)
        notes.append(note)
        tree = split
    if tree:
        parts[index] = tree
    metadata = dict(layered.metadata)
    record = dict(metadata.get("parts", {}))
    record[str(index + 1)] = [*record.get(str(index + 1), []), *notes]
    metadata["parts"] = record
    return LayeredImage(
        layered.background, list(layered.foregrounds), list(layered.shadows), list(layered.labels), metadata, parts
    )


def decompose_to_depth(
    layered: LayeredImage,
    depth: int,
    decomposer: Callable[..., LayeredImage] | None = None,
    num_layers: int | None = None,
) -> LayeredImage:
    """Split every object layer ``depth - 1`` times (`decompose_layer`): depth 1 is ``layered`` itself.

    Depth 2 gives every object its parts, depth 3 the parts' parts (at most `MAX_DEPTH`).
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)):
        raise TypeError(f"depth must be an int, got {type(depth).__name__}")
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be between 1 (objects only) and {MAX_DEPTH}, got {depth}")
    if depth > 1:
        decomposer = _for_parts(decomposer)
    for _ in range(depth - 1):
        for index in range(layered.num_objects):
            layered = decompose_layer(layered, index, decomposer, num_layers)
    return layered


def _for_parts(decomposer: Callable[..., LayeredImage] | None) -> Callable[..., LayeredImage]:
    """The decomposer for parts: a tool chain sharing the given one's tools, with no shadow search (parts have
    none) and no grid of crops inside the object's crop (four more segmenter passes per object, for parts of
    what is already one salient thing)."""
    from .decomposer import ToolChainDecomposer

    if decomposer is None:
        return ToolChainDecomposer(extract_shadows=False, tiles=0)
    if isinstance(decomposer, ToolChainDecomposer) and (decomposer.extract_shadows or decomposer.tiles > 1):
        _ = decomposer.segmenter  # resolve (load) it once, so that the copy shares the loaded model
        decomposer = copy.copy(decomposer)
        decomposer.extract_shadows = False
        decomposer.tiles = 0
    return decomposer


def _split_leaves(
    part: LayerPart, decomposer: Callable[..., LayeredImage], num_layers: int | None, notes: list[dict[str, Any]]
) -> LayerPart:
    """``part`` with each of its leaves split once more (a leaf that does not split stays a leaf)."""
    if part.parts:
        return LayerPart(None, part.label, [_split_leaves(p, decomposer, num_layers, notes) for p in part.parts])
    assert part.rgba is not None
    split, note = _split(part.rgba, decomposer, num_layers)
    notes.append(note)
    return LayerPart(part.rgba, part.label, split)


def _split(
    rgba: np.ndarray, decomposer: Callable[..., LayeredImage], num_layers: int | None
) -> tuple[list[LayerPart], dict[str, Any]]:
    """Leaf parts of one straight RGBA layer (``[]`` when it does not split) and a note on what happened."""
    alpha = rgba[:, :, 3]
    box = alpha_bbox(alpha)
    if box is None:
        return [], {"parts_found": 0, "stop_reason": "empty layer"}
    height, width = alpha.shape
    left, top = max(box[0] - MARGIN, 0), max(box[1] - MARGIN, 0)
    right, bottom = min(box[2] + MARGIN, width), min(box[3] + MARGIN, height)
    window = (slice(top, bottom), slice(left, right))
    crop_alpha = alpha[window]
    inner = decomposer(_object_on_fill(rgba[window], decomposer), num_layers=num_layers)
    if inner.size != (right - left, bottom - top):
        raise ValueError(
            f"the decomposer returned {inner.width}x{inner.height} layers for a {right - left}x{bottom - top} crop; "
            "decompose_layer needs layers the size of the image it was given"
        )
    reason = str(inner.metadata.get("stop_reason", ""))

    # Visible weight of each inner layer (the inner background, the "rest", first); shadows are not parts.
    alphas = [fg[:, :, 3] for fg in inner.foregrounds]
    weights = [np.ones(crop_alpha.shape, np.float32)]
    for a in alphas:
        weights = [w * (1 - a) for w in weights] + [a]
    owner = np.argmax(np.stack(weights), axis=0)
    support = crop_alpha > 0
    kept = _kept_owners(owner, support)
    if len(kept) < 2:
        why = "no part found inside the object" if not alphas else "the parts found do not split the object"
        return [], {"parts_found": 0, "stop_reason": f"{why}; {reason}" if reason else why}
    # Pixels of dropped layers, and specks cut off from the main body of a part, go to the nearest other part.
    moved = support & ~np.isin(owner, kept)
    for layer in kept:
        moved |= _specks(support & (owner == layer), max(MIN_SPECK_PIXELS, round(MIN_SPECK_SHARE * support.sum())))
    if moved.any():
        _, (rows, cols) = ndimage.distance_transform_edt(~(support & ~moved), return_indices=True)
        owner = np.where(moved, owner[rows, cols], owner)
    labels = [REST_LABEL, *inner.labels]
    parts = []
    for layer in kept:
        part = np.zeros_like(rgba)
        mine = support & (owner == layer)
        part[window][mine] = rgba[window][mine]
        parts.append(LayerPart(part, labels[layer]))
    return parts, {"parts_found": len(parts), "stop_reason": reason}


def _specks(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Pieces of ``mask`` under ``min_pixels`` pixels, except its largest piece (so a part never vanishes)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return np.zeros_like(mask)
    areas = stats[1:, cv2.CC_STAT_AREA]
    small = [1 + i for i, area in enumerate(areas) if area < min_pixels and i != int(np.argmax(areas))]
    return np.isin(labels, small)


def _kept_owners(owner: np.ndarray, support: np.ndarray) -> list[int]:
    """Inner layers (0: the rest) that own enough of the object, and not nearly all of it, back to front."""
    total = int(support.sum())
    counts = np.bincount(owner[support], minlength=int(owner.max()) + 1)
    kept = [layer for layer, count in enumerate(counts) if MIN_PART_SHARE * total <= count]
    if any(counts[layer] >= WHOLE_OBJECT_SHARE * total for layer in kept if layer > 0):
        return []  # one peeled layer is (nearly) the whole object: no split
    return kept


def _object_on_fill(rgba: np.ndarray, decomposer: Any) -> np.ndarray:
    """The object's straight colour over a fill grown from its own colours (what the decomposer sees)."""
    color, alpha = rgba[:, :, :3], rgba[:, :, 3:4]
    solid = alpha[:, :, 0] >= 0.5
    if not solid.any():
        solid = alpha[:, :, 0] > 0
    if solid.all():
        return color.copy()
    inpainter = getattr(decomposer, "inpainter", None)
    if inpainter is None:
        from .inpainting import OpenCVInpainter

        inpainter = OpenCVInpainter()
    base = np.where(solid[:, :, None], color, color[solid].mean(axis=0)).astype(np.float32)
    try:
        fill = np.clip(np.asarray(inpainter(base, ~solid), np.float32), 0.0, 1.0)
    except ValueError:  # a faint, thin object: the inpainter's grown hole covers the crop; its mean colour then
        fill = base
    return np.clip(alpha * color + (1 - alpha) * fill, 0.0, 1.0).astype(np.float32)
