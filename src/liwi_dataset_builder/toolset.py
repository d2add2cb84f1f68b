"""Which tools a build uses, named by short strings so worker processes can build their own copies.

    proposer:   auto | saliency | peeling:NAME | segmenter:NAME | mask-generation:MODEL
                | image-segmentation:MODEL | zero-shot-object-detection:MODEL (needs labels) | object-detection:MODEL
                (peeling: the learned segmenter as `liwi decompose` runs it, with crops and peeling rounds;
                segmenter: one pass of it. auto: peeling:isnet when that ONNX model is in the model cache, else
                saliency; it is resolved once, when the build starts, so a build's layout always names the tool it
                really used)
    matting:    closed-form
    inpainting: opencv | diffusers:MODEL
    shadows:    darkening | none
    depth:      bottom-edge | depth-estimation:MODEL
    planner:    rules | vlm:MODEL
    verifier:   rules | vlm:MODEL

MODEL is a Hub id or a local folder; adapters live in `liwi_dataset_builder.adapters`. NAME is a model of
`liwi_diffusers.model_zoo` (`liwi models list`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .agent import Planner, RulePlanner, RuleVerifier, TransformersVLM, Verifier, VLMPlanner, VLMVerifier

__all__ = ["PROPOSER_TASKS", "NoShadows", "ToolSpec", "Tools", "build_tools", "resolve_proposer"]

PROPOSER_TASKS = ("mask-generation", "image-segmentation", "zero-shot-object-detection", "object-detection")


@dataclass(frozen=True)
class ToolSpec:
    """The tools of a build, by name (see the module docstring); part of a build's layout."""

    proposer: str = "saliency"
    matting: str = "closed-form"
    inpainting: str = "opencv"
    shadows: str = "darkening"
    depth: str = "bottom-edge"
    planner: str = "rules"
    verifier: str = "rules"
    labels: tuple[str, ...] = ()
    device: str | None = None
    max_objects: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        _check_choice("proposer", self.proposer, ("saliency",), (*PROPOSER_TASKS, "segmenter", "peeling"))
        _check_choice("matting", self.matting, ("closed-form",), ())
        _check_choice("inpainting", self.inpainting, ("opencv",), ("diffusers",))
        _check_choice("shadows", self.shadows, ("darkening", "none"), ())
        _check_choice("depth", self.depth, ("bottom-edge",), ("depth-estimation",))
        _check_choice("planner", self.planner, ("rules",), ("vlm",))
        _check_choice("verifier", self.verifier, ("rules",), ("vlm",))
        if self.proposer.startswith("zero-shot-object-detection:") and not self.labels:
            raise ValueError("a zero-shot-object-detection proposer needs candidate labels (--labels cup,bottle)")


def resolve_proposer(choice: str) -> str:
    """``auto`` as the proposer it stands for now: ``peeling:<default>`` when downloaded, else ``saliency``."""
    if choice != "auto":
        return choice
    from liwi_diffusers.model_zoo import DEFAULT_SEGMENTER, ModelError, find_model

    try:
        present = find_model(DEFAULT_SEGMENTER) is not None
    except ModelError:
        present = False
    return f"peeling:{DEFAULT_SEGMENTER}" if present else "saliency"


def _check_choice(what: str, value: str, plain: tuple[str, ...], prefixed: tuple[str, ...]) -> None:
    prefix, _, model = value.partition(":")
    if value in plain or (prefix in prefixed and model):
        return
    options = list(plain) + [f"{p}:MODEL" for p in prefixed]
    raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(options)}")


class NoShadows:
    """A shadow extractor that finds none (every object gets a synthesized shadow)."""

    def __call__(self, image: Any, alpha: Any, occupied: Any = None) -> np.ndarray:
        return np.zeros(np.asarray(alpha).shape[:2], np.float32)


@dataclass
class Tools:
    """Built tools, ready to call."""

    proposer: Any
    matter: Any
    inpainter: Any
    shadow_extractor: Any
    orderer: Any
    planner: Planner
    verifier: Verifier
    rules: RuleVerifier = field(default_factory=RuleVerifier)
    spec: ToolSpec = field(default_factory=ToolSpec)

    def names(self) -> dict[str, str]:
        """What each row records in its ``tools`` struct."""

        def name(tool: Any, spec: str) -> str:
            return spec if ":" in spec else type(tool).__name__

        return {
            "planner": self.planner.name,
            "verifier": self.verifier.name,
            "proposer": name(self.proposer, self.spec.proposer),
            "matting": name(self.matter, self.spec.matting),
            "inpainting": name(self.inpainter, self.spec.inpainting),
            "shadows": name(self.shadow_extractor, self.spec.shadows),
            "depth": name(self.orderer, self.spec.depth),
        }


def build_tools(spec: ToolSpec) -> Tools:
    """Build every tool ``spec`` names (models are loaded here, once per process)."""
    from liwi_diffusers.tools import ClosedFormMatter, DarkeningShadowExtractor, OpenCVInpainter, SaliencyProposer

    from . import adapters

    if spec.proposer == "saliency":
        proposer: Any = SaliencyProposer(max_objects=spec.max_objects + 2)
    elif spec.proposer.startswith(("segmenter:", "peeling:")):
        from liwi_diffusers.tools.decomposer import PeelingProposer
        from liwi_diffusers.tools.segmenter import OnnxSegmenter, SegmenterProposer

        kind, _, name = spec.proposer.partition(":")
        # One ONNX Runtime thread, as every builder worker uses one core (its default takes them all).
        segmenter = OnnxSegmenter.from_cache(name, device=spec.device or "cpu", threads=1)
        finder = PeelingProposer if kind == "peeling" else SegmenterProposer
        proposer = finder(segmenter, max_objects=spec.max_objects + 2)
    else:
        task, _, model = spec.proposer.partition(":")
        proposer = adapters.TransformersProposer(
            model, task=task, labels=list(spec.labels) or None, device=spec.device, max_objects=spec.max_objects + 2
        )
    matter = ClosedFormMatter()
    if spec.inpainting == "opencv":
        inpainter: Any = OpenCVInpainter()
    else:
        inpainter = adapters.DiffusersInpainter(spec.inpainting.partition(":")[2], device=spec.device)
    shadows: Any = DarkeningShadowExtractor() if spec.shadows == "darkening" else NoShadows()
    if spec.depth == "bottom-edge":
        orderer: Any = adapters.BottomEdgeOrderer()
    else:
        orderer = adapters.TransformersDepthOrderer(spec.depth.partition(":")[2], device=spec.device)
    rules_planner = RulePlanner(max_objects=spec.max_objects, orderer=orderer)
    rules = RuleVerifier()
    vlms: dict[str, TransformersVLM] = {}

    def vlm(name: str) -> TransformersVLM:
        model_id = name.partition(":")[2]
        if model_id not in vlms:  # planner and verifier share one model when they name the same
            vlms[model_id] = TransformersVLM(model_id, device=spec.device)
        return vlms[model_id]

    planner: Any = VLMPlanner(vlm(spec.planner), fallback=rules_planner) if spec.planner != "rules" else rules_planner
    verifier: Any = VLMVerifier(vlm(spec.verifier), rules=rules) if spec.verifier != "rules" else rules
    return Tools(proposer, matter, inpainter, shadows, orderer, planner, verifier, rules, spec)
