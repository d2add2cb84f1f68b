"""The training-free decomposer: a photo into background, shadow and object layers with the tools.

With a learned segmenter (the default whenever one is in the model cache, see `liwi models download`):

    segment (salient matte) -> split into objects -> fill their hole -> segment the filled photo again
    (peeling, until nothing object-like is left or the layer limit is reached) -> matte the uncertain band
    + straight colour -> cast shadows against the shadow-free surroundings -> background (shadows lifted,
    holes filled) -> colours reconciled so that the layers recompose to the photo

Without one, the weight-free proposer (saliency + GrabCut) takes the segmenter's place, with one peeling round.
The order of removal is the occlusion order: what comes off first is in front.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import warnings
from typing import Any

import cv2
import numpy as np

from ..layers import LayerCrop, LayeredImage, _image_rows, reconcile_with_image, row_bands
from ._utils import as_rgb, box_iou, dilate, mask_box, resize, scale_for
from .inpainting import Inpainter, OpenCVInpainter
from .instances import InstanceSplitter
from .matting import AlphaMatter, BandMatter, ClosedFormMatter, Matte
from .prompts import BoxPrompt, Prompts, PromptSegmenter, RememberingSegmenter, parse_prompts
from .proposals import ObjectProposal, ObjectProposer, SaliencyProposer
from .segmenter import Segmenter, coverage_proposals
from .shadows import DarkeningShadowExtractor, ShadowExtractor, remove_attached_shadow

__all__ = ["FAST", "DecomposerNote", "PeelingProposer", "ToolChainDecomposer"]

DEFAULT_MAX_OBJECTS = 8
# Input sides of the segmenter passes after the first one (the whole photo, at the model's nominal 1024); None: the
# nominal side. On the real-photo benchmark (45 photos; share of the objects found, and the cost of one pass in
# passes at 1024), crops at 1024 found single / pair / multi 1.000 / 0.433 / 0.292 (1.0 each), at 768 0.933 / 0.433
# / 0.271 (0.56), at 512 pair / multi 0.433 / 0.240 (0.25): the zoom is what lets a salient-object model see small
# things. Later peeling rounds (sizeable objects only) at 640 found 1.000 / 0.433 / 0.281 for 0.3-0.4 of a pass, a
# tenth of a decomposition's time, but other sides run in a second ONNX Runtime session that holds 0.3-0.5 GB more,
# which a 12 MP photo's peak cannot afford (1.3 GB against the 1.5 GB target). So both default to the nominal side.
TILE_SIDE: int | None = None
LATER_ROUND_SIDE: int | None = None
# The fast preset (`load_decomposer("fast")`, `liwi decompose --method fast`): the whole photo at 640, no crops, one
# round, the detected boxes at 384; a box that peeled objects already fill takes them with no pass of its own (the
# 640 pass sees a large box in more detail than a 384 pass on its crop); box GrabCut at 200 px, 3 iterations, and a
# box that nothing fits tries GrabCut only from the "box" and "ellipse" priors (not from the segmenter's matte nor
# the "middle" prior: on the real-photo benchmark the same objects found, mean IoU 0.537 -> 0.536, for 0.75 of
# the box GrabCut time; `benchmarks/results/real_photos_fast_trim.json`, `speed_fast_trim.json`). On the 45
# photos it finds single / pair / multi 0.933 / 0.633 / 0.531 against the default's 1.000 / 0.667 / 0.625, for
# about 0.2 of the default's time on multi photos at 1 MP (2.5 s against 11.4 s on 2 cores;
# `benchmarks/results/speed_per_mp_epyc.json`). Measured beside it: boxes at 512 or 384 with everything else at the
# default lose multi objects; the photo at 640 with boxes at 1024 keeps them but pays a full pass a box. Reusing
# peeled objects at the default's sides loses instead: there a box's own pass sees it in finer detail than the
# whole photo's.
FAST: dict[str, Any] = {
    "first_round_side": 640,
    "tiles": 0,
    "max_rounds": 1,
    "detection_side": 384,
    "reuse_peeled_in_boxes": True,
    "prompt_segmenter": PromptSegmenter(
        grabcut_size=200, grabcut_iterations=3, grabcut_from_matte=False, box_priors=("box", "ellipse")
    ),
}
_Found = tuple[np.ndarray, str, int]  # (coverage at working resolution, label, peeling round)


class DecomposerNote(UserWarning):
    """Something the user should know about a decomposition (shown by the CLI as one ``liwi: note:`` line)."""


class ToolChainDecomposer:
    """Decompose a photo into layers with tools: a learned segmenter when available, weight-free ones otherwise.

    Args:
        segmenter: finds salient objects. "auto" (default): the default learned segmenter when it is in the
            model cache, else the weight-free proposer with a `DecomposerNote` naming the download command;
            a model name from `liwi_diffusers.model_zoo` (it must be downloaded); any `Segmenter`; None: the
            weight-free proposer.
        proposer: the weight-free object finder used without a segmenter (default `SaliencyProposer`).
        matter: soft alpha and straight colour per object (default: `BandMatter` on a learned matte,
            `ClosedFormMatter` on a weight-free mask).
        inpainter: fills the background behind objects (default `OpenCVInpainter`).
        shadow_extractor: each object's cast shadow (default `DarkeningShadowExtractor`).
        splitter: turns a salient matte into object instances (default `InstanceSplitter()`).
        max_objects: object layers at most (the automatic count never exceeds it).
        max_rounds: peeling rounds at most (segmenter passes).
        tiles: in the first round, also segment the overlapping crops of a ``tiles x tiles`` grid (each crop
            ``1.2 / tiles`` of the frame a side), so that objects that do not stand out in the whole photo stand
            out in a crop; objects the crops add must not overlap those already found. 0 or 1: the whole
            photo only (one segmenter pass a round). None (default): 0 when the object detector is in use (its
            boxes find what the crops found: on the real-photo benchmark the same share of the objects, for
            0.6 of the time), else 2 (four more passes in the first round; see the README's real-photo table).
        tile_side: the crops are segmented at this input side (None: the segmenter's nominal size),
        later_round_side: the whole photo after the first round is,
        first_round_side: the whole photo in the first round is, and
        detection_side: each detected box's crop is, where the segmenter takes other sizes
            (`OnnxSegmenter.at_side`; others ignore all four). Defaults: see `TILE_SIDE` and `LATER_ROUND_SIDE`;
            the first round and the boxes at the nominal side (large boxes at ``large_box_side``). `FAST` holds the
            settings of the fast preset (``load_decomposer("fast")``, ``liwi decompose --method fast``).
        reuse_peeled_in_boxes: a detected box that objects already peeled fill (each at least 90 % inside the box
            grown by the prompt margin, together fitting it as a box prompt's mask must, `PromptSegmenter.fills_box`)
            takes those objects instead of a segmenter pass on its crop. False (default): every box gets its
            pass, which at the nominal side sees the box in finer detail than the whole photo's pass did. The fast
            preset turns it on: its box passes at 384 see less than its whole photo at 640 (see `FAST`).
        max_resolution: the tools run with the long side at most this many pixels; layers are brought back to
            the input's full resolution.
        extract_shadows: whether to look for cast shadows at all.
        trim_shadows: cut a swallowed cast shadow out of each object's mask before matting (see
            `remove_attached_shadow`), so that it becomes the object's shadow layer instead. None (default):
            only on the weight-free proposer's masks, which swallow shadows; a learned segmenter's mattes leave
            cast shadows out already, and trimming them cuts dark parts off objects (dark fur, clothes: on
            the real-photo benchmark's single-subject photos, mean IoU 0.816 untrimmed against 0.765 trimmed).
        device: where the learned segmenter runs ("cpu", "cuda", "auto").
        refiner: cleans each object's coverage at working resolution before matting: a `MatteRefiner`, the name
            of shipped refiner weights ("restoration", see `liwi_diffusers.tools.refiner`), or None (default).
        detector: an object detector whose boxes become objects before the peeled ones (each box segmented as a
            box prompt is): "auto" (default: the cached ``nanodet`` when the learned segmenter is in use; `liwi
            models download nanodet`), None / "none", a model name, or an `OnnxObjectDetector`-like callable
            ``detector(image, max_detections=) -> list[Detection]``.
        prompt_head: how box and point prompts become masks with the learned segmenter: None (default: the
            selection rules of `PromptSegmenter`), or a trained prompt head, as the folder that
            ``examples/train_prompt_head.py`` writes or a `LearnedPromptSegmenter` (opt-in: the head that recipe
            trains offline scores below the rules on the real-photo benchmark; see the README).
        prompt_segmenter: the selection rules (a `PromptSegmenter`) that box and point prompts and detected boxes
            go through (None: its defaults). The fast preset runs GrabCut smaller (200 px, 3 iterations).
        min_detected_share: detected boxes smaller than this share of the photo's area make no layer (they still
            guide point prompts and name prompted layers). The detector's tiny boxes (people far off on a beach)
            give near-empty layers that take slots under the layer limit: on the real-photo benchmark, dropping
            those under 0.25 % found more of the annotated objects (0.610 -> 0.617) with 140 -> 128 layers.
        large_box_side: a box whose crop (the box and the prompt margin around it, inside the photo) is at least
            ``large_box_min_crop`` pixels on its long side (at working resolution) is segmented at this side instead
            of ``detection_side`` (detected boxes) or the nominal side (box prompts, and the detected boxes a point
            prompt tries), only where it is smaller; None: off. Such a crop has the detail already, and the
            nominal side would only upsample it more: on the real-photo benchmark, default, crops of 512 px and
            more at 640 found the same objects with mean IoU 0.569 -> 0.575, multi photos at 1 MP 0.83x the time.
        large_box_min_crop: see ``large_box_side``. Per detected box (146 boxes of the 45 photos, the prompt mask's
            IoU with its object), 640 did as well as 1024 from crops of 256 px up (0.776 against 0.773) and worse
            below 128 px (0.656 against 0.697); through the whole default, 256 (was 512) found the same objects,
            mean IoU 0.575 -> 0.576, single-subject IoU 0.916 -> 0.935; 128 lost one multi-photo object.

    Default tools are built on first use, so constructing the decomposer is cheap; pymatting (and its
    one-off numba compile) loads on the first call.

    Example:
        >>> from liwi_diffusers.tools import ToolChainDecomposer
        >>> layered = ToolChainDecomposer()(photo)           # PIL RGB, (H, W, 3) floats in [0, 1], or a path
        >>> layered.check(photo).mean_abs_error < 1 / 255
        True
        >>> layered.metadata["stop_reason"]
        'nothing object-like left after 2 rounds'
    """

    def __init__(
        self,
        segmenter: Segmenter | str | None = "auto",
        proposer: ObjectProposer | None = None,
        matter: AlphaMatter | None = None,
        inpainter: Inpainter | None = None,
        shadow_extractor: ShadowExtractor | None = None,
        splitter: InstanceSplitter | None = None,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        max_rounds: int = 2,
        tiles: int | None = None,
        tile_side: int | None = TILE_SIDE,
        later_round_side: int | None = LATER_ROUND_SIDE,
        first_round_side: int | None = None,
        detection_side: int | None = None,
        reuse_peeled_in_boxes: bool = False,
        max_resolution: int = 1024,
        extract_shadows: bool = True,
        trim_shadows: bool | None = None,
        device: str = "cpu",
        refiner: Any = None,
        prompt_head: Any = None,
        detector: Any = "auto",
        prompt_segmenter: PromptSegmenter | None = None,
        min_detected_share: float = 0.0025,
        large_box_side: int | None = 640,
        large_box_min_crop: int = 256,
    ) -> None:
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        if tiles is not None and (
            isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or not 0 <= tiles <= 4
        ):
            raise ValueError(f"tiles must be None or an int from 0 to 4 (0 or 1: no crops), got {tiles!r}")
        sides = {
            "tile_side": tile_side,
            "later_round_side": later_round_side,
            "first_round_side": first_round_side,
            "detection_side": detection_side,
            "large_box_side": large_box_side,
        }
        for name, side in sides.items():
            if side is not None and (isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 64):
                raise ValueError(f"{name} must be None or an int of at least 64 pixels, got {side!r}")
        if isinstance(large_box_min_crop, bool) or not isinstance(large_box_min_crop, (int, np.integer)):
            raise ValueError(f"large_box_min_crop must be an int number of pixels, got {large_box_min_crop!r}")
        if large_box_min_crop < 1:
            raise ValueError(f"large_box_min_crop must be at least 1 pixel, got {large_box_min_crop}")
        if not 0.0 <= min_detected_share < 1.0:
            raise ValueError(f"min_detected_share must be in [0, 1), got {min_detected_share}")
        if max_resolution < 16:
            raise ValueError(f"max_resolution must be at least 16 pixels, got {max_resolution}")
        self._segmenter_choice = segmenter
        self._segmenter: Segmenter | None = None if isinstance(segmenter, str) else segmenter
        self._segmenter_resolved = not isinstance(segmenter, str)
        self._proposer = proposer
        self._matter = matter
        self._inpainter = inpainter
        self._shadow_extractor = shadow_extractor
        self.splitter = splitter or InstanceSplitter()
        self.max_objects = max_objects
        self.max_rounds = max_rounds
        self._tiles = None if tiles is None else int(tiles)
        self.tile_side = None if tile_side is None else int(tile_side)
        self.later_round_side = None if later_round_side is None else int(later_round_side)
        self.first_round_side = None if first_round_side is None else int(first_round_side)
        self.detection_side = None if detection_side is None else int(detection_side)
        self.reuse_peeled_in_boxes = bool(reuse_peeled_in_boxes)
        self.min_detected_share = float(min_detected_share)
        self.large_box_side = None if large_box_side is None else int(large_box_side)
        self.large_box_min_crop = int(large_box_min_crop)
        self.max_resolution = max_resolution
        self.extract_shadows = extract_shadows
        self.trim_shadows = trim_shadows
        self.device = device
        if isinstance(refiner, str):
            from .refiner import MatteRefiner

            refiner = MatteRefiner.from_pretrained(refiner)
        self.refiner = refiner
        self.prompt_head = prompt_head
        self._prompt_rules = prompt_segmenter
        self._detector_choice = detector
        self._detector: Any = None if isinstance(detector, str) else detector
        self._detector_resolved = not isinstance(detector, str)
        self._fallback_note: str | None = None

    @property
    def tiles(self) -> int:
        """The first round's grid of crops (see ``tiles``): None resolves to 0 with an object detector, else 2."""
        if self._tiles is not None:
            return self._tiles
        return 0 if self.detector is not None else 2

    @tiles.setter
    def tiles(self, value: int | None) -> None:
        self._tiles = None if value is None else int(value)

    # ------------------------------------------------------------------ tools (built lazily)
    @property
    def segmenter(self) -> Segmenter | None:
        """The learned segmenter in use, or None (weight-free)."""
        if not self._segmenter_resolved:
            self._segmenter = self._resolve_segmenter(str(self._segmenter_choice))
            self._segmenter_resolved = True
        return self._segmenter

    def _resolve_segmenter(self, choice: str) -> Segmenter | None:
        from ..model_zoo import DEFAULT_SEGMENTER, ModelError, find_model
        from .segmenter import OnnxSegmenter

        name = DEFAULT_SEGMENTER if choice == "auto" else choice
        if choice != "auto":
            return OnnxSegmenter.from_cache(name, device=self.device)  # raises ModelError when missing
        try:
            present = find_model(name) is not None
        except ModelError as error:  # a damaged file: say so, and go on without it
            self._fallback_note = f"{error}; using the weight-free tools"
            return None
        if not present:
            self._fallback_note = (
                f"the learned segmenter is not downloaded, so the weight-free tools are used (they miss most "
                f"objects in real photos): run `liwi models download {name}`"
            )
            return None
        return OnnxSegmenter.from_cache(name, device=self.device)

    @property
    def detector(self) -> Any:
        """The object detector whose boxes become objects (`OnnxObjectDetector`), or None.

        ``detector="auto"`` (default) takes the cached ``nanodet`` when the learned segmenter is in use (a
        detector's boxes need a segmenter to become mattes), None or ``"none"`` uses none, a model name loads
        that model (`ModelError` when it is not downloaded), any other value is used as it is.
        """
        if not self._detector_resolved:
            self._detector = self._resolve_detector(str(self._detector_choice))
            self._detector_resolved = True
        return self._detector

    def _resolve_detector(self, choice: str) -> Any:
        from ..model_zoo import DEFAULT_DETECTOR, ModelError, find_model
        from .object_detector import OnnxObjectDetector

        if choice == "none":
            return None
        if choice != "auto":
            return OnnxObjectDetector.from_cache(choice)
        if self.segmenter is None:
            return None
        try:
            present = find_model(DEFAULT_DETECTOR) is not None
        except ModelError as error:  # a damaged file: say so, and go on without it
            warnings.warn(f"{error}; decomposing without the object detector", DecomposerNote, stacklevel=3)
            return None
        return OnnxObjectDetector.from_cache(DEFAULT_DETECTOR) if present else None

    @property
    def proposer(self) -> ObjectProposer:
        if self._proposer is None:
            self._proposer = SaliencyProposer(max_objects=self.max_objects)
        return self._proposer

    @property
    def matter(self) -> AlphaMatter:
        if self._matter is None:
            self._matter = BandMatter() if self.segmenter is not None else ClosedFormMatter()
        return self._matter

    @property
    def inpainter(self) -> Inpainter:
        if self._inpainter is None:
            self._inpainter = OpenCVInpainter()
        return self._inpainter

    @property
    def shadow_extractor(self) -> ShadowExtractor:
        if self._shadow_extractor is None:
            self._shadow_extractor = DarkeningShadowExtractor()
        return self._shadow_extractor

    def tool_names(self) -> dict[str, str]:
        """Class names of the tools in use (for provenance records)."""
        segmenter = self.segmenter
        return {
            "segmenter": getattr(segmenter, "name", type(segmenter).__name__) if segmenter is not None else "none",
            "proposer": type(self.proposer).__name__ if segmenter is None else "none",
            "matter": type(self.matter).__name__,
            "inpainter": type(self.inpainter).__name__,
            "shadow_extractor": type(self.shadow_extractor).__name__ if self.extract_shadows else "none",
            "detector": getattr(self.detector, "name", type(self.detector).__name__) if self.detector else "none",
        }

    # ------------------------------------------------------------------ the decomposition
    def __call__(
        self,
        image: Any,
        num_layers: int | None = None,
        *,
        boxes: Any = None,
        points: Any = None,
        negative_points: Any = None,
        only_prompts: bool = False,
    ) -> LayeredImage:
        """Layers of ``image`` (PIL RGB, ``(H, W, 3)`` array in [0, 1], or a file path), objects back to front.

        ``num_layers`` is an upper bound on the object layers (``None`` or ``0``: automatic, at most
        ``max_objects``). Peeling stops earlier when nothing object-like is left; ``metadata`` says how many
        objects were found and why it stopped. The result recomposes to ``image`` (see `LayeredImage.check`).

        Prompts choose objects (see `liwi_diffusers.tools.prompts` for the coordinate rule): each box
        ``(x0, y0, x1, y1)`` and each point ``(x, y)`` gives one object layer; ``negative_points`` are cut out of
        every prompted object, and automatic objects covering one are left out. Objects found automatically are
        added unless ``only_prompts``; one that mostly overlaps a prompted object is dropped. Prompts count
        against the layer limit; ``metadata["prompt_layers"]`` gives each prompt's object index (boxes first).
        """
        if isinstance(image, (str, os.PathLike)):
            from ..image_io import load_image

            image = load_image(image)
        photo = _photo_array(image)  # 8/16-bit pixels stay integers: no full-size float copy is kept
        if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer))):
            raise TypeError(f"num_layers must be an int or None, got {type(num_layers).__name__}")
        if num_layers is not None and num_layers < 0:
            raise ValueError(f"num_layers must be >= 0 (0 or None: automatic), got {num_layers}")
        limit = min(int(num_layers), self.max_objects) if num_layers else self.max_objects
        height, width = photo.shape[:2]
        prompts = parse_prompts(boxes, points, negative_points, (width, height))
        if len(prompts) > limit:
            raise ValueError(
                f"{len(prompts)} prompted objects but the layer limit is {limit}: give at most {limit} boxes and "
                f"points, or raise num_layers (at most {self.max_objects})"
            )
        if only_prompts and not len(prompts):
            raise ValueError("only_prompts=True needs at least one box or point prompt")
        segmenter = self.segmenter
        if self._fallback_note is not None:
            warnings.warn(self._fallback_note, DecomposerNote, stacklevel=2)
            self._fallback_note = None
        scale = scale_for(photo.shape, self.max_resolution)
        work = as_rgb(photo)  # float32; for a large photo only until it is resized
        if scale < 1:
            work = resize(work, (max(1, round(height * scale)), max(1, round(width * scale))))
        if prompts and segmenter is not None:
            segmenter = RememberingSegmenter(segmenter)  # the whole-photo pass serves peeling and point prompts

        if only_prompts:
            found, rounds, reason = [], 0, "only the prompted objects"
        elif min(height, width) < 16:  # too small to hold an object worth a layer: no segmenter pass at all
            found, rounds, reason = [], 0, "image too small to look for objects (under 16 px)"
        elif segmenter is not None:
            found, rounds, reason = self._peel(work, segmenter, limit)
        else:
            found, rounds, reason = self._propose(work, limit)
        detected = reused = 0
        detections: list[Any] = []  # automatic objects; what point prompts try first; prompted layers' names
        if segmenter is not None and self.detector is not None:
            detections = list(self.detector(work, max_detections=limit))
        if not only_prompts and detections:
            found, reason, detected, reused = self._with_detections(work, segmenter, detections, found, limit, reason)
        tags: list[int | None] = [None] * len(found)
        if prompts:
            found, tags, reason = self._with_prompts(
                work, prompts.scaled(scale), segmenter, found, limit, reason, detections
            )
        mattes: list[tuple[Matte, str, int, int | None]] = []
        for (coverage, label, round_index), tag in zip(found, tags):
            if self.refiner is not None:  # the segmenter's outline, moved to the photo's edges
                coverage = self.refiner(work, coverage)
            mask = coverage
            if self.extract_shadows and self._trims_shadows(segmenter):
                trimmed = remove_attached_shadow(work, coverage >= 0.5)
                mask = coverage * (trimmed | (coverage < 0.5))
            matte = self.matter(work, mask)
            if float(matte.alpha.max()) >= 0.5:
                mattes.append((matte, label, round_index, tag))
        # Back to front: later peeling rounds are further back; within a round, lower in the frame is nearer.
        mattes.sort(key=lambda item: (-item[2], *_depth_key(item[0].alpha)))
        layered = self._assemble(photo, work, [(m, label) for m, label, _, _ in mattes])
        layered.metadata.update(
            {
                "method": "tools",
                "tools": self.tool_names(),
                "objects_found": layered.num_objects,
                "objects_detected": detected,
                "detected_boxes_reused": reused,  # boxes that took peeled objects (``reuse_peeled_in_boxes``)
                "peeling_rounds": rounds,
                "stop_reason": reason,
                "layer_limit": limit,
                "tiles": self.tiles if segmenter is not None and self.tiles > 1 else 0,
            }
        )
        if segmenter is not None:  # the input sides of the crop and later-round passes (None: the nominal one)
            layered.metadata.update(
                {
                    "tile_side": self.tile_side,
                    "later_round_side": self.later_round_side,
                    "first_round_side": self.first_round_side,
                    "detection_side": self.detection_side,
                    "large_box_side": self.large_box_side,
                    "large_box_min_crop": self.large_box_min_crop,
                    "reuse_peeled_in_boxes": self.reuse_peeled_in_boxes,
                }
            )
        if prompts:
            where = {tag: index for index, (_, _, _, tag) in enumerate(mattes) if tag is not None}
            layered.metadata["prompts"] = prompts.describe()
            layered.metadata["prompt_layers"] = [where.get(index) for index in range(len(prompts))]
        return layered

    def _with_prompts(
        self,
        work: np.ndarray,
        prompts: Prompts,
        segmenter: Segmenter | None,
        found: list[_Found],
        limit: int,
        reason: str,
        detected: list[Any],
    ) -> tuple[list[_Found], list[int | None], str]:
        """The prompted objects (tagged with their prompt's index) and the automatic ones that are not them.

        An automatic object is dropped when a prompted object covers most of it (IoU >= 0.5, or 60 % of its
        area), or when it holds a negative point; the others lose the pixels that prompted objects took and
        fill the slots left under ``limit``. ``detected``: the detector's objects: points try their boxes first,
        and a prompted object whose bounding box matches a detected one (IoU >= 0.7) is named by its class.
        """
        boxes = [detection.box for detection in detected]
        prompted = self.prompt_segmenter(work, prompts, segmenter, boxes, self._box_segmenter(segmenter, None))
        negatives = [p.pixel(work.shape) for p in prompts.negative_points]
        named = [(coverage, _detected_label(coverage, detected)) for coverage in prompted]
        objects, reason = self._put_first(work.shape[:2], named, found, limit, reason, negatives, "prompted")
        count = len(prompted)
        tags = list(range(count)) + [None] * (len(objects) - count)
        reason = f"{count} prompted object{'s' if count != 1 else ''}; {reason}" if count else reason
        return objects, tags, reason

    def _with_detections(
        self,
        work: np.ndarray,
        segmenter: Segmenter,
        detections: list[Any],
        found: list[_Found],
        limit: int,
        reason: str,
    ) -> tuple[list[_Found], str, int, int]:
        """The detected objects (each box segmented as a box prompt is) and the automatic ones that are not them.

        Detections come best first; a box smaller than ``min_detected_share`` of the photo, or whose mask is empty
        or repeats an earlier one (IoU >= 0.5), is dropped.
        Automatic objects are then kept or dropped as beside prompted ones (`_put_first`). Also returns how many
        objects were detected and how many of the kept boxes took peeled objects instead of a pass.
        """
        detected: list[tuple[np.ndarray, str]] = []
        reused = 0
        boxes = self._box_segmenter(segmenter, self.detection_side)
        height, width = work.shape[:2]
        for detection in detections:
            x0, y0, x1, y1 = detection.box
            if (x1 - x0) * (y1 - y0) < self.min_detected_share * height * width:
                continue
            box = BoxPrompt(*detection.box)
            coverage = self._peeled_in_box(found, box) if self.reuse_peeled_in_boxes else None
            from_peeled = coverage is not None
            if coverage is None:
                coverage = self.prompt_segmenter.segment_box(work, box, boxes)
            solid = coverage >= 0.5
            if not solid.any() or any(_iou(solid, other >= 0.5) >= 0.5 for other, _ in detected):
                continue
            detected.append((coverage, detection.label))
            reused += from_peeled
        if not detected:
            return found, reason, 0, 0
        objects, reason = self._put_first(work.shape[:2], detected, found, limit, reason, [], "detected")
        return objects, f"{len(detected)} detected; {reason}", len(detected), reused

    def _box_segmenter(self, segmenter: Segmenter | None, side: int | None) -> Segmenter | None:
        """What segments a box's crop: ``segmenter`` at ``side`` (None: its own), and at ``large_box_side`` for
        crops of at least ``large_box_min_crop`` pixels where that side is the smaller."""
        if segmenter is None:
            return None
        boxes = _at_side(segmenter, side)
        if self.large_box_side is None or (side is not None and self.large_box_side >= side):
            return boxes
        return _ByCropSize(boxes, segmenter, self.large_box_side, self.large_box_min_crop)

    def _peeled_in_box(self, found: list[_Found], box: BoxPrompt) -> np.ndarray | None:
        """The peeled objects that lie in ``box`` (see ``reuse_peeled_in_boxes``) as one coverage, or None."""
        if not found:
            return None
        shape = found[0][0].shape
        left, top, right, bottom = box.pixels(shape)
        margin = round(self.prompt_segmenter.box_margin * max(right - left, bottom - top)) + 2
        grown = np.zeros(shape, bool)
        grown[max(0, top - margin) : bottom + margin, max(0, left - margin) : right + margin] = True
        inside = [
            coverage
            for coverage, _, _ in found
            if (area := int((coverage >= 0.5).sum())) and int(((coverage >= 0.5) & grown).sum()) >= 0.9 * area
        ]
        if not inside:
            return None
        coverage = np.zeros(shape, np.float32)
        coverage[top:bottom, left:right] = np.max(inside, axis=0)[top:bottom, left:right]
        return coverage if self.prompt_segmenter.fills_box(coverage >= 0.5, box) else None

    def _put_first(
        self,
        shape: tuple[int, int],
        chosen: list[tuple[np.ndarray, str]],
        found: list[_Found],
        limit: int,
        reason: str,
        negatives: list[tuple[int, int]],
        what: str,
    ) -> tuple[list[_Found], str]:
        """``chosen`` objects (front-most, round 0) then the automatic ``found`` ones that are not them.

        An automatic object is dropped when a chosen object covers most of it (IoU >= 0.5, or 60 % of its
        area), or when it holds a negative point; the others lose the pixels that chosen objects took and
        fill the slots left under ``limit``.
        """
        coverages = [coverage for coverage, _ in chosen]
        if coverages and dilate(np.max(coverages, axis=0) > 0.01, 5).all():  # no background left to fill from
            frame = 6 + round(0.01 * max(shape))
            border = np.ones(shape, bool)
            border[frame:-frame, frame:-frame] = False
            coverages = [np.where(border, 0.0, coverage).astype(np.float32) for coverage in coverages]
            warnings.warn(
                f"the {what} objects covered the whole photo; a {frame}-pixel frame was kept as background so "
                "that the hole behind them can be filled",
                DecomposerNote,
                stacklevel=4,
            )
        taken = np.max(coverages, axis=0) >= 0.5 if coverages else np.zeros(shape, bool)
        kept: list[_Found] = []
        for coverage, label, round_index in found:
            solid = coverage >= 0.5
            area = int(solid.sum())
            overlap = int((solid & taken).sum())
            union = area + int(taken.sum()) - overlap
            duplicate = any(_iou(solid, other >= 0.5) >= 0.5 for other in coverages)
            if duplicate or overlap >= 0.6 * max(1, area) or union == 0:
                continue
            if any(solid[y, x] for x, y in negatives):
                continue
            kept.append((np.where(dilate(taken, 1), 0.0, coverage).astype(np.float32), label, round_index))
        room = limit - len(coverages)
        if len(kept) > room:
            kept, reason = kept[:room], f"layer limit {limit} reached"
        objects = [(coverage, label, 0) for coverage, (_, label) in zip(coverages, chosen)] + kept
        return objects, reason

    @property
    def prompt_segmenter(self) -> PromptSegmenter:
        """How box and point prompts become masks (a `liwi_diffusers.tools.prompts.PromptSegmenter`; assignable)."""
        if getattr(self, "_prompt_segmenter", None) is None:
            rules = self._prompt_rules if self._prompt_rules is not None else PromptSegmenter()
            learned = self._learned_prompts()  # a copy either way: a preset's rules are never changed through it
            self._prompt_segmenter = dataclasses.replace(rules, learned=rules.learned if learned is None else learned)
        return self._prompt_segmenter

    def _learned_prompts(self) -> Any:
        """The `LearnedPromptSegmenter` that ``prompt_head`` asks for, or None (the rules)."""
        choice = self.prompt_head
        if choice is None or self.segmenter is None:
            return None
        if not isinstance(choice, (str, os.PathLike)):
            return choice
        from .learned_prompts import LearnedPromptSegmenter, PromptHeadError

        raw = self.segmenter
        while not hasattr(raw, "features") and hasattr(raw, "segmenter"):  # wrappers that remember answers
            raw = raw.segmenter
        if not hasattr(raw, "features"):
            raise PromptHeadError(f"prompt_head reads a segmenter's features; {type(raw).__name__} gives none")
        return LearnedPromptSegmenter.from_pretrained(choice, segmenter=raw, device=self.device)

    @prompt_segmenter.setter
    def prompt_segmenter(self, value: PromptSegmenter) -> None:
        self._prompt_segmenter = value

    def _trims_shadows(self, segmenter: Segmenter | None) -> bool:
        return segmenter is None if self.trim_shadows is None else self.trim_shadows

    def _peel(
        self, work: np.ndarray, segmenter: Segmenter, limit: int
    ) -> tuple[list[tuple[np.ndarray, str, int]], int, str]:
        """Objects, front-most first, found by segmenting and filling the photo round after round."""
        current = work
        removed = np.zeros(work.shape[:2], bool)
        found: list[_Found] = []
        first, later = _at_side(segmenter, self.first_round_side), _at_side(segmenter, self.later_round_side)
        for round_index in range(self.max_rounds):
            coverage = np.asarray((later if round_index else first)(current), np.float32)
            if coverage.shape != work.shape[:2]:
                raise ValueError(f"segmenter returned a {coverage.shape} matte for a {work.shape[:2]} image")
            if removed.any():  # what stands out inside (or at the seam of) a filled hole is the fill, not an object
                seam = max(2, round(0.01 * max(work.shape[:2])))
                coverage = np.where(dilate(removed, seam), 0.0, coverage)
            # Later rounds look at a filled photo: only sizeable objects count there, not fill artefacts.
            min_share = 0.0 if round_index == 0 else 0.01
            objects = [alpha for alpha in self.splitter(coverage) if _object_like(alpha, min_share)]
            if round_index == 0 and self.tiles > 1:
                crops = _at_side(segmenter, self.tile_side)
                objects += self._tile_objects(current, crops, objects, limit - len(objects))
            if not objects:
                if round_index == 0:
                    return found, 1, "no salient object found"
                rounds = f"{round_index} round{'s' if round_index > 1 else ''}"
                return found, round_index + 1, f"nothing object-like left after {rounds}"
            taken = objects[: limit - len(found)]
            found += [(alpha, "", round_index) for alpha in taken]  # no classifier: no label
            if len(found) >= limit:
                return found, round_index + 1, f"layer limit {limit} reached"
            if round_index + 1 == self.max_rounds:
                break
            cover = np.max(taken, axis=0)
            hole = cover > 0.02
            if hole.mean() > 0.9:  # a weak glow of coverage everywhere: the hole is what lies near the solid part
                hole &= dilate(cover >= 0.5, max(2, round(0.02 * max(work.shape[:2]))))
            if hole.mean() > 0.98:
                return found, round_index + 1, "nothing left to peel: the objects cover the whole photo"
            removed |= hole
            current = self.inpainter(current, dilate(hole, 2))
        return found, self.max_rounds, f"peeling round limit {self.max_rounds} reached"

    def _tile_objects(
        self, image: np.ndarray, segmenter: Segmenter, known: list[np.ndarray], room: int
    ) -> list[np.ndarray]:
        """Objects that stand out in the crops of a ``tiles x tiles`` grid and are not among ``known``.

        A crop's object counts only when it is whole: not cut by an edge of the crop that lies inside the photo.
        Larger ones come first; one that overlaps an object already kept (IoU above 0.3, or half of it inside
        that object) is a part or a copy of it and is dropped.
        """
        if room <= 0:
            return []
        height, width = image.shape[:2]
        crop_h, crop_w = round(min(1.0, 1.2 / self.tiles) * height), round(min(1.0, 1.2 / self.tiles) * width)
        if min(crop_h, crop_w) < 16:
            return []
        candidates = []
        for top in np.linspace(0, height - crop_h, self.tiles).round().astype(int):
            for left in np.linspace(0, width - crop_w, self.tiles).round().astype(int):
                coverage = np.asarray(segmenter(image[top : top + crop_h, left : left + crop_w]), np.float32)
                if coverage.shape != (crop_h, crop_w):
                    raise ValueError(f"segmenter returned a {coverage.shape} matte for a {(crop_h, crop_w)} crop")
                inner = (top > 0, top + crop_h < height, left > 0, left + crop_w < width)  # edges inside the photo
                for alpha in self.splitter(coverage):
                    solid = alpha >= 0.5
                    edges = (solid[0].any(), solid[-1].any(), solid[:, 0].any(), solid[:, -1].any())
                    if any(cut and inside for cut, inside in zip(edges, inner)) or not _object_like(alpha):
                        continue
                    placed = np.zeros((height, width), np.float32)
                    placed[top : top + crop_h, left : left + crop_w] = alpha
                    candidates.append(placed)
        kept_solid = [alpha >= 0.5 for alpha in known]
        added: list[np.ndarray] = []
        for alpha in sorted(candidates, key=lambda a: -int((a >= 0.5).sum())):
            solid = alpha >= 0.5
            area = int(solid.sum())
            overlaps = False
            for other in kept_solid:
                inter = int((solid & other).sum())
                if inter > 0.5 * area or inter > 0.3 * int((solid | other).sum()):
                    overlaps = True
                    break
            if not overlaps:
                added.append(alpha)
                kept_solid.append(solid)
                if len(added) >= room:
                    break
        return added

    def _propose(self, work: np.ndarray, limit: int) -> tuple[list[_Found], int, str]:
        """Objects from the weight-free proposer (one round)."""
        proposals = self.proposer(work, max_objects=limit)[:limit]
        found = [(p.mask.astype(np.float32), "" if p.label == "object" else p.label, 0) for p in proposals]
        if not found:
            return found, 1, "no salient object found (weight-free proposer)"
        if len(found) >= limit:
            return found, 1, f"layer limit {limit} reached"
        return found, 1, "weight-free proposer found no more objects"

    def _assemble(self, photo: np.ndarray, work: np.ndarray, mattes: list[tuple[Matte, str]]) -> LayeredImage:
        """Shadows, background and full-resolution layers from the working-resolution mattes.

        Everything is computed at the working resolution; only the results are brought to full size. There each
        object and shadow is a `LayerCrop` of the box where it can be non-zero, and every layer is stored in 16 bits
        (within 7.6e-6 of float32), made a band of rows at a time from the 8-bit photo (``photo`` is never converted
        whole): the result costs 6 bytes a pixel for the background plus 8 (an object) or 2 (a shadow) a pixel of
        each box, and the temporaries stay the same size whatever the photo's size. The background's fill is made at
        working size too and pasted into the full-size hole.
        """
        height, width = photo.shape[:2]
        full = (height, width)
        labels = [label for _, label in mattes]
        if work.shape[:2] != full:
            _release_free_memory()  # what the working-resolution steps freed, before the full-size layers are made
        alphas = [matte.alpha for matte, _ in mattes]
        occupied = np.max(alphas, axis=0) if alphas else np.zeros(work.shape[:2], np.float32)
        small_shadows = self._shadows(work, alphas, occupied)
        small_lift = 1.0 - np.sum(small_shadows, axis=0) if small_shadows else np.ones(work.shape[:2], np.float32)
        small_free = np.clip(work / np.maximum(small_lift, 1e-3)[:, :, None], 0.0, 1.0)
        small_fill = self.inpainter(small_free, occupied > 0.01) if alphas else small_free
        if work.shape[:2] == full:
            foregrounds = [np.dstack([m.foreground, m.alpha]).astype(np.float32) for m, _ in mattes]
            return _reconcile(LayeredImage(small_fill, foregrounds, small_shadows, labels), photo)

        def ceiling(rows: slice, cols: slice) -> np.ndarray:  # lifting a shadow must not go above white
            return 1.0 - _photo_rows(photo, rows, cols).max(axis=2)

        shadows = [_upsampled_crop(small, small, full, cap=ceiling) for small in small_shadows]
        hole = np.zeros(full, bool)  # where the fill replaces the photo: under every object, 2 px wider
        for alpha in alphas:
            window = _full_window(alpha, full)
            if window is not None:
                source = np.ascontiguousarray(alpha, dtype=np.float32)
                for rows in row_bands(window[0].stop - window[0].start, window[1].stop - window[1].start):
                    rows = slice(window[0].start + rows.start, window[0].start + rows.stop)
                    hole[rows, window[1]] |= _upsampled_window(source, full, rows, window[1]) > 0.01
        hole = dilate(hole, 2) if alphas else hole
        background = np.empty((height, width, 3), np.uint16)
        fill_source = np.ascontiguousarray(small_fill, dtype=np.float32)
        every_column = slice(0, width)
        for rows in row_bands(height, width):
            lift = np.ones((rows.stop - rows.start, width), np.float32)
            for shadow in shadows:
                lift -= shadow.read(rows, every_column)
            np.maximum(lift, 1e-3, out=lift)
            band = np.divide(_photo_rows(photo, rows), lift[:, :, None])
            np.clip(band, 0.0, 1.0, out=band)
            if hole[rows].any():
                fill = _upsampled_window(fill_source, full, rows, every_column)
                np.copyto(band, fill, where=hole[rows][:, :, None])
            background[rows] = np.round(band * np.float32(65535.0))
        del hole
        foregrounds = [  # colour kept where its alpha can be non-zero
            _upsampled_crop(np.dstack([matte.foreground, matte.alpha]), matte.alpha, full) for matte, _ in mattes
        ]
        return _reconcile(LayeredImage(LayerCrop(background), foregrounds, shadows, labels), photo)

    def _shadows(self, image: np.ndarray, alphas: list[np.ndarray], occupied: np.ndarray) -> list[np.ndarray]:
        """Per object shadow alpha; where shadows overlap, the strongest one owns the pixel."""
        if not alphas:
            return []
        if not self.extract_shadows:
            return [np.zeros(image.shape[:2], np.float32) for _ in alphas]
        shadows = np.stack([self.shadow_extractor(image, alpha, occupied) for alpha in alphas])
        owner = np.argmax(shadows, axis=0)
        shadows = np.where(np.arange(len(alphas))[:, None, None] == owner[None], shadows, 0.0)
        return [s.astype(np.float32) for s in shadows]


class PeelingProposer:
    """The decomposer's object finding (crops, peeling rounds) behind the `ObjectProposer` interface.

    For tools that want proposals rather than a whole decomposition (the ADD builder's foreground curation):
    the same segmenter passes as `ToolChainDecomposer` makes (the whole photo, the crops of its first round,
    then the filled photo round after round), without its matting, shadows or fill of the final background.
    Proposals come front-most first, as peeled; each one's score is the mean coverage inside its mask, and
    ``last_stop_reason`` says why peeling stopped on the latest image.

    Args:
        segmenter: the learned segmenter (any `Segmenter`).
        max_objects: proposals at most (per call: ``max_objects=``).
        tiles, max_rounds, inpainter, splitter: as for `ToolChainDecomposer`.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        tiles: int = 2,
        max_rounds: int = 2,
        inpainter: Inpainter | None = None,
        splitter: InstanceSplitter | None = None,
    ) -> None:
        self.finder = ToolChainDecomposer(
            segmenter=segmenter,
            inpainter=inpainter,
            splitter=splitter,
            max_objects=max_objects,
            max_rounds=max_rounds,
            tiles=tiles,
        )
        self.segmenter = segmenter
        self.max_objects = max_objects
        self.name = f"peeling({getattr(segmenter, 'name', type(segmenter).__name__)})"
        self.last_stop_reason = ""

    def __call__(self, image: Any, max_objects: int | None = None) -> list[ObjectProposal]:
        rgb = as_rgb(image)
        limit = self.max_objects if max_objects is None else max_objects
        if limit < 1:
            return []
        found, _, self.last_stop_reason = self.finder._peel(rgb, self.segmenter, limit)
        return coverage_proposals([coverage for coverage, _, _ in found])


class _ByCropSize:
    """``small`` on crops under ``min_crop`` pixels on their long side, ``segmenter`` at ``large_side`` on the
    others (the crop already has the detail, and a larger input would only upsample it). The large-side segmenter
    (a second ONNX Runtime session) is made on first use only."""

    def __init__(self, small: Segmenter, segmenter: Segmenter, large_side: int, min_crop: int) -> None:
        self.small, self.min_crop = small, min_crop
        self._segmenter, self._large_side = segmenter, large_side
        self._large: Segmenter | None = None
        self.name = getattr(small, "name", type(small).__name__)

    def __call__(self, image: Any) -> np.ndarray:
        if max(np.shape(image)[:2]) < self.min_crop:
            return self.small(image)
        if self._large is None:
            self._large = _at_side(self._segmenter, self._large_side)
        return self._large(image)


def _at_side(segmenter: Segmenter, side: int | None) -> Segmenter:
    """``segmenter`` run at input ``side`` when it can be (`OnnxSegmenter.at_side`), else itself."""
    at_side = getattr(segmenter, "at_side", None)
    return segmenter if side is None or at_side is None else at_side(side)


def _release_free_memory() -> None:
    """Give the system back the memory the C allocator holds free (glibc's ``malloc_trim``; elsewhere nothing).

    glibc keeps the heap pages of freed arrays of up to 32 MB (its mmap threshold grows with the first large frees),
    so the working-resolution steps leave a few hundred MB held but unused; freed before the full-size stage, they do
    not add to its peak (the bench_memory child at 12 MP: 1.45 GB -> 1.31 GB).
    """
    trim = getattr(_release_free_memory, "trim", None)
    if trim is None:
        try:
            trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            trim = False
        _release_free_memory.trim = trim  # type: ignore[attr-defined]
    if trim:
        trim(0)


def _photo_array(image: Any) -> np.ndarray:
    """``image`` as an ``(H, W, 3)`` array: 8- and 16-bit pixels as they are, anything else as checked float32."""
    array = _image_rows(image, 3, "image")
    return array if array.dtype in (np.uint8, np.uint16) else as_rgb(array)


def _photo_rows(photo: np.ndarray, rows: slice, cols: slice = slice(None)) -> np.ndarray:
    """A window of `_photo_array`'s pixels as float32 in [0, 1] (the values `as_rgb` gives for them)."""
    window = photo[rows, cols]
    if window.dtype == np.float32:
        return window
    return np.divide(window, np.float32(255.0 if window.dtype == np.uint8 else 65535.0), dtype=np.float32)


def _full_window(support: np.ndarray, full: tuple[int, int]) -> tuple[slice, slice] | None:
    """The full-size window outside which a layer upsampled from working size is zero, where ``support > 0``.

    Full-size pixels whose bilinear footprint holds none of the support are zero; None when ``support`` is empty.
    """
    box = mask_box(support > 0)
    if box is None:
        return None
    height, width = full
    scale_x, scale_y = width / support.shape[1], height / support.shape[0]
    # A full-size pixel samples the two working pixels around (x + 0.5) / scale - 0.5: one pixel of margin suffices.
    left, right = max(0, int(np.floor((box[0] - 1) * scale_x))), min(width, int(np.ceil((box[2] + 1) * scale_x)))
    top, bottom = max(0, int(np.floor((box[1] - 1) * scale_y))), min(height, int(np.ceil((box[3] + 1) * scale_y)))
    return slice(top, bottom), slice(left, right)


def _upsampled_window(source: np.ndarray, full: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    """Rows ``rows`` x columns ``cols`` of working-size float32 ``source`` upsampled to ``full``, clipped to [0, 1].

    Bilinear, with the pixel-centre mapping of ``cv2.resize``: one ``cv2.warpAffine`` over the working-size layer.
    """
    height, width = full
    scale_x, scale_y = width / source.shape[1], height / source.shape[0]
    to_small = np.array(
        [[1 / scale_x, 0, (cols.start + 0.5) / scale_x - 0.5], [0, 1 / scale_y, (rows.start + 0.5) / scale_y - 0.5]],
        np.float64,
    )
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    band = cv2.warpAffine(
        source, to_small, shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    ).reshape(*shape, *source.shape[2:])
    return np.clip(band, 0.0, 1.0, out=band)


def _upsampled_crop(
    small: np.ndarray, support: np.ndarray, full: tuple[int, int], dtype: Any = np.uint16, cap: Any = None
) -> LayerCrop:
    """``small`` upsampled (bilinear, clipped to [0, 1]) to ``full``, as the crop of the window ``support`` can reach.

    ``support`` (working size) says where the layer is non-zero (an alpha or a shadow); outside `_full_window` the
    layer is zero and is not stored. Made a band of rows at a time, in ``dtype`` (uint16: 1/65535 steps). ``cap``
    (``(rows, cols) -> values``) is an upper bound applied to each band (a shadow's: what the photo allows).
    """
    window = _full_window(support, full)
    if window is None:
        return LayerCrop(np.zeros((0, 0, *small.shape[2:]), dtype))
    top, left = window[0].start, window[1].start
    pixels = np.empty((window[0].stop - top, window[1].stop - left, *small.shape[2:]), dtype)
    source = np.ascontiguousarray(small, dtype=np.float32)
    for rows in row_bands(*pixels.shape[:2]):  # a band of rows at a time: no box-size float temporary
        band = _upsampled_window(source, full, slice(top + rows.start, top + rows.stop), window[1])
        if cap is not None:
            np.minimum(band, cap(slice(top + rows.start, top + rows.stop), window[1]), out=band)
        pixels[rows] = np.round(band * np.float32(65535.0)) if pixels.dtype == np.uint16 else band
    return LayerCrop(pixels, left, top)


def _upsampled_in_box(
    small: np.ndarray, support: np.ndarray, full: tuple[int, int]
) -> tuple[np.ndarray, tuple[slice, slice] | None]:
    """`_upsampled_crop` in float32 on the full canvas: ``(layer, window)`` (window None when ``support`` is empty)."""
    crop = _upsampled_crop(small, support, full, np.float32)
    box = crop.box
    window = None if box is None else (slice(box[1], box[3]), slice(box[0], box[2]))
    return crop.full(*full), window


def _object_like(alpha: np.ndarray, min_share: float = 0.0) -> bool:
    """Not the whole frame, not a faint glow, and at least ``min_share`` of the frame."""
    solid = alpha >= 0.5
    share = float(solid.mean())
    return max(min_share, 0.0) < share < 0.92 and float(alpha[solid].mean()) >= 0.75


def _detected_label(coverage: np.ndarray, detected: list[Any], min_iou: float = 0.7) -> str:
    """The class of the detected object whose box best matches the bounding box of ``coverage``, or "" (none
    with a box IoU of at least ``min_iou``)."""
    box = mask_box(coverage >= 0.5)
    if box is None:
        return ""
    best, label = min_iou, ""
    for detection in detected:
        iou = box_iou(detection.box, box)
        if iou >= best:
            best, label = iou, detection.label
    return label


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (0 when both are empty)."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def _depth_key(alpha: np.ndarray) -> tuple[int, float]:
    """Sort key, back to front: lower in the frame is nearer (bottom edge), then smaller is nearer."""
    box = mask_box(alpha >= 0.5)
    bottom = box[3] if box is not None else 0
    return bottom, -float(alpha.sum())


def _reconcile(layered: LayeredImage, photo: np.ndarray, band_pixels: int = 1 << 18) -> LayeredImage:
    """`reconcile_with_image`, in place, on the box where the layers differ from the photo, a band of rows at a time.

    Outside that box the background is the photo itself and nothing covers or darkens it, so the layers already
    recompose exactly there. Reconciling is independent per pixel, so the box is done in bands of about
    ``band_pixels`` pixels: its working memory stays the same whatever the photo's size. ``photo`` is a
    `_photo_array`; the layers are read and written through `LayeredImage.layer_crop` (full-canvas or cropped, float32
    or 16-bit), and an object's layer changes inside its crop only.
    """
    height, width = photo.shape[:2]
    background = layered.layer_crop("background")
    objects = [layered.layer_crop("object", k) for k in range(layered.num_objects)]
    shadows = [layered.layer_crop("shadow", k) for k in range(layered.num_objects)]
    changed_rows, changed_cols = np.zeros(height, bool), np.zeros(width, bool)  # where the background is not the photo
    every_column = slice(0, width)
    for rows in row_bands(height, width):  # no full-size (H, W, 3) comparison
        # Not bit for bit: 16-bit storage moves a float photo's values by up to 7.6e-6 (8-bit values stay exact).
        differs = np.any(np.abs(background.read(rows, every_column) - _photo_rows(photo, rows)) > 1e-5, axis=2)
        changed_rows[rows] = differs.any(axis=1)
        changed_cols |= differs.any(axis=0)
    object_boxes, shadow_boxes = [o.nonzero_box(3) for o in objects], [s.nonzero_box() for s in shadows]
    boxes = object_boxes + shadow_boxes
    if changed_rows.any():
        hit_rows, hit_cols = np.flatnonzero(changed_rows), np.flatnonzero(changed_cols)
        boxes.append((int(hit_cols[0]), int(hit_rows[0]), int(hit_cols[-1]) + 1, int(hit_rows[-1]) + 1))
    boxes = [box for box in boxes if box is not None]
    if not boxes:
        return layered
    left, top = min(box[0] for box in boxes), min(box[1] for box in boxes)
    right, bottom = max(box[2] for box in boxes), max(box[3] for box in boxes)
    cols = slice(left, right)
    step = max(1, band_pixels // max(1, right - left))
    for start in range(top, bottom, step):
        rows = slice(start, min(bottom, start + step))
        # An object with neither alpha nor shadow in the band has no weight there: leaving it out changes nothing.
        present = [
            k
            for k in range(len(objects))
            if any(
                box is not None and box[1] < rows.stop and box[3] > rows.start and box[0] < right and box[2] > left
                for box in (object_boxes[k], shadow_boxes[k])
            )
        ]
        band = LayeredImage(
            background.read(rows, cols),
            [objects[k].read(rows, cols) for k in present],
            [shadows[k].read(rows, cols) for k in present],
            [layered.labels[k] for k in present],
        )
        fixed = reconcile_with_image(band, _photo_rows(photo, rows, cols))
        background.write(start, left, fixed.background)  # in place: these arrays are ours
        for k, reconciled in zip(present, fixed.foregrounds):
            objects[k].write(start, left, reconciled)
    return layered
