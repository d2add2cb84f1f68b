"""The ADD agent: a planner that decides what to take from each photo, a verifier that judges samples.

Both come as interfaces with a rule-based, weight-free default (`RulePlanner`, `RuleVerifier`) and
an adapter for a vision-language model (`VLMPlanner`, `VLMVerifier`) that asks for JSON, checks
the answer against a small schema, retries with the error spelled out, and falls back to the rules
when the model keeps answering nonsense (or crashes). Every decision records who made it and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from liwi_diffusers.layers import LayeredImage, to_uint8
from liwi_diffusers.tools import dilate
from liwi_diffusers.tools.proposals import ObjectProposal

__all__ = [
    "SCORE_NAMES",
    "AgentAnswerError",
    "ObjectChoice",
    "PhotoPlan",
    "Planner",
    "RulePlanner",
    "RuleVerifier",
    "TransformersVLM",
    "VLMPlanner",
    "VLMVerifier",
    "Verdict",
    "Verifier",
    "ask_json",
    "extract_json",
    "sample_scores",
]

# Verification scores every sample row carries (the dataset's `verification` struct).
SCORE_NAMES = (
    "recomposition_error",  # max |compose(layers) - composite|, in [0, 1]
    "alpha_coverage",  # fraction of the canvas covered by the union of the objects
    "min_object_area",  # smallest object's alpha mass / canvas area
    "max_object_area",
    "min_visible_fraction",  # least visible object: its alpha mass left after occlusion / its alpha mass
    "max_soft_alpha_fraction",  # worst matte: share of its support with 0.1 < alpha < 0.9
    "min_object_contrast",  # least visible object: mean |object colour - background| under it
    "min_color_std",  # flattest object: std of its luminance where alpha > 0.5
    "max_shadow",  # darkest shadow sigma
)


class AgentAnswerError(ValueError):
    """A model's answer that is not the JSON asked for (no JSON, wrong types, out-of-range values)."""


# ---------------------------------------------------------------------------------------------- plans
@dataclass
class ObjectChoice:
    """One object to extract: ``index`` into the photo's proposals, and its label."""

    index: int
    label: str = "object"


@dataclass
class PhotoPlan:
    """What to take from one photo.

    Attributes:
        objects: proposals to cut out as foreground assets.
        clean_background: the photo shows no foreground object; it is a background as it is.
        use_as_background: the photo can serve as a background (clean, or after inpainting).
        remove: proposal indices to erase when inpainting the background (all detected objects).
        reason: why, in words.
        decided_by: who decided (``rules``, ``vlm:<model>``, ``rules (vlm fallback: ...)``).
    """

    objects: list[ObjectChoice]
    clean_background: bool
    use_as_background: bool
    remove: list[int] = field(default_factory=list)
    reason: str = ""
    decided_by: str = "rules"

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [{"index": c.index, "label": c.label} for c in self.objects],
            "clean_background": self.clean_background,
            "use_as_background": self.use_as_background,
            "remove": list(self.remove),
            "reason": self.reason,
            "decided_by": self.decided_by,
        }


@runtime_checkable
class Planner(Protocol):
    """Decides per photo which objects to extract and whether it is a (clean) background."""

    name: str

    def plan(self, image: np.ndarray, proposals: Sequence[ObjectProposal]) -> PhotoPlan:
        """Plan for an RGB float ``(H, W, 3)`` photo and its object proposals (best first)."""
        ...


def _touched_sides(mask: np.ndarray, band: int) -> dict[str, bool]:
    """Which image borders a mask touches (within ``band`` pixels)."""
    return {
        "top": bool(mask[:band].any()),
        "bottom": bool(mask[-band:].any()),
        "left": bool(mask[:, :band].any()),
        "right": bool(mask[:, -band:].any()),
    }


class RulePlanner:
    """Weight-free planner: keep confident, mid-sized, whole, separate objects.

    A proposal is extracted when its score is at least ``min_score``, its area lies between
    ``min_area`` and ``max_area`` of the photo, it is not cut by the left, right or top border
    (the bottom border is allowed: objects standing on the ground often reach it) and it does not
    touch an object already kept (an occluded object's mask is incomplete): candidates are taken
    front to back when an ``orderer`` (``order(image, masks) -> back-to-front indices``, e.g. a
    depth model) is given, so of two touching objects the nearer, unoccluded one is kept; by score
    otherwise. Every proposal scoring
    at least ``detect_score`` is erased from the background; a photo with none is a clean
    background, and one whose objects cover more than ``max_inpaint_cover`` is not used as a
    background (too much would be invented).
    """

    name = "rules"

    def __init__(
        self,
        max_objects: int = 3,
        min_score: float = 0.3,
        detect_score: float = 0.3,
        min_area: float = 0.01,
        max_area: float = 0.7,
        max_inpaint_cover: float = 0.35,
        allow_bottom_cut: bool = True,
        orderer: Any = None,
    ) -> None:
        self.max_objects = max_objects
        self.min_score = min_score
        self.detect_score = detect_score
        self.min_area = min_area
        self.max_area = max_area
        self.max_inpaint_cover = max_inpaint_cover
        self.allow_bottom_cut = allow_bottom_cut
        self.orderer = orderer

    def plan(self, image: np.ndarray, proposals: Sequence[ObjectProposal]) -> PhotoPlan:
        height, width = image.shape[:2]
        total = float(height * width)
        band = max(1, round(0.01 * max(height, width)))
        notes: list[str] = []
        candidates: list[tuple[int, ObjectProposal]] = []
        for index, proposal in enumerate(proposals):
            area = proposal.area / total
            sides = _touched_sides(proposal.mask, band)
            cut = [side for side, hit in sides.items() if hit and not (side == "bottom" and self.allow_bottom_cut)]
            if proposal.score < self.min_score:
                notes.append(f"#{index} score {proposal.score:.2f} < {self.min_score}")
            elif area < self.min_area:
                notes.append(f"#{index} too small ({area:.1%})")
            elif area > self.max_area:
                notes.append(f"#{index} too large ({area:.1%})")
            elif cut:
                notes.append(f"#{index} cut by the {'/'.join(cut)} border")
            else:
                candidates.append((index, proposal))
        if self.orderer is not None and len(candidates) > 1:
            back_to_front = self.orderer.order(image, [proposal.mask for _, proposal in candidates])
            nearness = {candidates[k][0]: rank for rank, k in enumerate(back_to_front)}
            candidates.sort(key=lambda item: (-nearness[item[0]], -item[1].score, item[0]))
        else:
            candidates.sort(key=lambda item: (-item[1].score, item[0]))
        kept: list[ObjectChoice] = []
        kept_union = np.zeros((height, width), bool)
        gap = max(1, round(0.01 * max(height, width)))
        for index, proposal in candidates:
            if len(kept) >= self.max_objects:
                notes.append(f"#{index} over the limit of {self.max_objects}")
                continue
            grown = dilate(proposal.mask, gap)
            if (grown & kept_union).any():
                notes.append(f"#{index} touches another object")
                continue
            kept.append(ObjectChoice(index, proposal.label or "object"))
            kept_union |= proposal.mask
        detected = [i for i, p in enumerate(proposals) if p.score >= self.detect_score]
        clean = not detected
        cover = _union_area(proposals, detected) / total if detected else 0.0
        use_background = clean or cover <= self.max_inpaint_cover
        if clean:
            notes.append("no object detected: clean background")
        elif not use_background:
            notes.append(f"objects cover {cover:.0%} > {self.max_inpaint_cover:.0%}: not a background")
        kept.sort(key=lambda choice: choice.index)
        return PhotoPlan(kept, clean, use_background, detected, "; ".join(notes) or "ok", self.name)


def _union_area(proposals: Sequence[ObjectProposal], indices: Sequence[int]) -> float:
    union = np.zeros(proposals[indices[0]].mask.shape, bool)
    for index in indices:
        union |= proposals[index].mask
    return float(union.sum())


# ------------------------------------------------------------------------------------------ verdicts
@dataclass
class Verdict:
    """A verifier's decision on one sample: accepted or not, why, and the scores it looked at."""

    accepted: bool
    reason: str
    scores: dict[str, float]
    decided_by: str = "rules"


@runtime_checkable
class Verifier(Protocol):
    """Accepts or rejects a composed sample, with a reason and scores."""

    name: str

    def verify(self, sample: LayeredImage, composite: np.ndarray) -> Verdict:
        """Judge ``sample`` (8-bit-exact layers) and the ``(H, W, 3)`` float composite made from it."""
        ...


def sample_scores(sample: LayeredImage, composite: np.ndarray) -> dict[str, float]:
    """The `SCORE_NAMES` scores of a sample (see the comments on `SCORE_NAMES`)."""
    canvas = float(sample.height * sample.width)
    alphas = [fg[:, :, 3] for fg in sample.foregrounds]
    scores = {"recomposition_error": float(np.abs(sample.compose() - composite).max())}
    if not alphas:
        return {**scores, **dict.fromkeys(SCORE_NAMES[1:], 0.0)}
    clear = np.ones_like(alphas[0])
    for alpha in alphas:
        clear *= 1.0 - alpha
    scores["alpha_coverage"] = float(1.0 - clear.mean())
    areas = [float(alpha.sum()) / canvas for alpha in alphas]
    scores["min_object_area"] = min(areas)
    scores["max_object_area"] = max(areas)
    # Visible weight of object k: its alpha times the transparency of every object in front of it.
    visible, soft, contrast, spread = [], [], [], []
    above = np.ones_like(alphas[0])
    for k in range(len(alphas) - 1, -1, -1):
        alpha, color = alphas[k], sample.foregrounds[k][:, :, :3]
        weight = alpha * above
        above = above * (1.0 - alpha)
        mass = float(alpha.sum())
        visible.append(float(weight.sum()) / mass if mass > 0 else 0.0)
        support = alpha > 0.02
        soft.append(float(((alpha > 0.1) & (alpha < 0.9)).sum()) / max(int(support.sum()), 1))
        difference = np.abs(color - sample.background).mean(axis=2)
        contrast.append(float((difference * weight).sum()) / max(float(weight.sum()), 1e-6))
        solid = alpha > 0.5
        luma = color[..., 0] * 0.299 + color[..., 1] * 0.587 + color[..., 2] * 0.114
        spread.append(float(luma[solid].std()) if solid.any() else 0.0)
    scores["min_visible_fraction"] = min(visible)
    scores["max_soft_alpha_fraction"] = max(soft)
    scores["min_object_contrast"] = min(contrast)
    scores["min_color_std"] = min(spread)
    scores["max_shadow"] = max(float(s.max()) for s in sample.shadows)
    return {name: scores[name] for name in SCORE_NAMES}


class RuleVerifier:
    """Weight-free verifier: a sample passes when every score is within its limit.

    Checks, in order (the first failure is the recorded reason): exact recomposition (within
    ``max_recomposition_error``), at least one object, object sizes, total coverage, visibility
    after occlusion, matte sharpness, colour contrast against the background, colour spread
    (not a flat blob) and shadow strength.
    """

    name = "rules"

    def __init__(
        self,
        max_recomposition_error: float = 1.0 / 255.0,
        min_object_area: float = 0.004,
        max_object_area: float = 0.6,
        max_alpha_coverage: float = 0.75,
        min_visible_fraction: float = 0.4,
        max_soft_alpha_fraction: float = 0.6,
        min_object_contrast: float = 0.03,
        min_color_std: float = 0.01,
        max_shadow: float = 0.9,
    ) -> None:
        self.limits = {
            "recomposition_error": ("max", max_recomposition_error),
            "min_object_area": ("min", min_object_area),
            "max_object_area": ("max", max_object_area),
            "alpha_coverage": ("max", max_alpha_coverage),
            "min_visible_fraction": ("min", min_visible_fraction),
            "max_soft_alpha_fraction": ("max", max_soft_alpha_fraction),
            "min_object_contrast": ("min", min_object_contrast),
            "min_color_std": ("min", min_color_std),
            "max_shadow": ("max", max_shadow),
        }

    def verify(self, sample: LayeredImage, composite: np.ndarray) -> Verdict:
        scores = sample_scores(sample, composite)
        if sample.num_objects == 0:
            return Verdict(False, "no objects", scores, self.name)
        return Verdict(*self.judge(scores), scores, self.name)

    def judge(self, scores: dict[str, float]) -> tuple[bool, str]:
        """``(accepted, reason)`` for a dict of scores (the first limit broken is the reason)."""
        for name, (kind, limit) in self.limits.items():
            value = scores[name]
            if (kind == "max" and value > limit + 1e-9) or (kind == "min" and value < limit - 1e-9):
                relation = ">" if kind == "max" else "<"
                return False, f"{name} {value:.4g} {relation} {limit:.4g}"
        return True, "ok"

    def check_foreground(self, rgba: np.ndarray) -> tuple[bool, str]:
        """Whether a curated foreground crop is usable: a crisp enough matte and some colour detail."""
        alpha = rgba[:, :, 3]
        support = alpha > 0.02
        if not support.any() or float((alpha > 0.5).sum()) < 16:
            return False, "empty matte"
        soft = float(((alpha > 0.1) & (alpha < 0.9)).sum()) / int(support.sum())
        limit = self.limits["max_soft_alpha_fraction"][1]
        if soft > limit:
            return False, f"matte too soft ({soft:.0%} of its pixels are half transparent)"
        color = rgba[:, :, :3]
        luma = color[..., 0] * 0.299 + color[..., 1] * 0.587 + color[..., 2] * 0.114
        spread = float(luma[alpha > 0.5].std())
        if spread < self.limits["min_color_std"][1]:
            return False, f"flat colour (luminance std {spread:.3f})"
        return True, "ok"


# ------------------------------------------------------------------------------------------- VLM
def extract_json(text: str) -> Any:
    """The first JSON object in a model's answer (code fences and chatter around it are ignored)."""
    if not isinstance(text, str):
        raise AgentAnswerError(f"expected text, got {type(text).__name__}")
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    preview = text.strip().replace("\n", " ")[:80]
    raise AgentAnswerError(f"no JSON object in the answer {preview!r}")


def _require(answer: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in answer:
        raise AgentAnswerError(f"missing key {key!r}")
    value = answer[key]
    # bool is an int in Python: never accept True for an int or 1 for a bool.
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise AgentAnswerError(f"{key!r} must be {name}, got {json.dumps(value)[:40]}")
    return value


def _clean_label(label: str) -> str:
    text = " ".join(str(label).split())[:40]
    if not text or not text.isprintable():
        raise AgentAnswerError(f"label {label!r} is empty or not printable")
    return text


def ask_json(
    model: Callable[[Image.Image, str], str],
    image: Image.Image,
    prompt: str,
    validate: Callable[[dict[str, Any]], Any],
    retries: int = 2,
) -> tuple[Any | None, list[str]]:
    """Ask ``model`` for JSON until ``validate`` accepts it: ``(value or None, errors seen)``.

    A failed answer is retried (at most ``retries`` times) with the problem appended to the
    prompt. Errors raised by the model itself are caught and recorded too, so a broken model never
    stops a build; the caller falls back to its rules when the value is None.
    """
    errors: list[str] = []
    for attempt in range(retries + 1):
        text = prompt
        if attempt:
            text += f"\nYour previous answer was invalid ({errors[-1]}). Reply with the JSON object only."
        try:
            answer = model(image, text)
        except Exception as error:  # a model failure must not stop a build
            errors.append(f"model error: {type(error).__name__}: {str(error)[:120]}")
            continue
        try:
            return validate(extract_json(answer)), errors
        except AgentAnswerError as error:
            errors.append(str(error))
    return None, errors


class TransformersVLM:
    """A vision-language model through ``transformers.pipeline("image-text-to-text")``.

    ``model`` is a Hub id or local folder (loaded with the pipeline) or a ready pipeline. Chat
    models get a chat message with the image; others get the prompt with the processor's image
    token in front. Decoding is greedy, so answers are deterministic.
    """

    def __init__(
        self,
        model: Any,
        max_new_tokens: int = 200,
        device: Any = None,
        dtype: Any = None,
        **pipeline_kwargs: Any,
    ) -> None:
        if isinstance(model, str):
            from transformers import pipeline

            kwargs = dict(pipeline_kwargs)
            if dtype is not None:
                kwargs["dtype"] = dtype
            self.pipe = pipeline("image-text-to-text", model=model, device=device, **kwargs)
            self.model_id = model
        else:
            self.pipe = model
            self.model_id = getattr(getattr(model, "model", None), "name_or_path", "") or type(model).__name__
        self.max_new_tokens = max_new_tokens

    @property
    def name(self) -> str:
        return f"vlm:{self.model_id}"

    def __call__(self, image: Image.Image, prompt: str) -> str:
        generate = {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        processor = getattr(self.pipe, "processor", None)
        if getattr(processor, "chat_template", None):
            chat = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
            output = self.pipe(text=chat, return_full_text=False, generate_kwargs=generate)
        else:
            token = getattr(processor, "image_token", None) or "<image>"
            text = prompt if token in prompt else f"{token}{prompt}"
            output = self.pipe(images=image, text=text, return_full_text=False, generate_kwargs=generate)
        if isinstance(output, list) and output and isinstance(output[0], list):
            output = output[0]
        answer = output[0]["generated_text"] if isinstance(output, list) else output
        if isinstance(answer, list):  # a chat: the last message is the model's
            answer = answer[-1].get("content", "")
        return str(answer)


def _model_name(model: Any) -> str:
    return getattr(model, "name", None) or f"vlm:{type(model).__name__}"


PLAN_PROMPT = (
    "You prepare training data for taking photos apart into layers. The photo has {count} candidate "
    "objects, given as boxes [left, top, right, bottom] in fractions of the image size:\n{boxes}\n"
    "Choose the candidates that are whole, separate foreground objects worth cutting out (not cut by "
    "the frame, not part of the background, not overlapping another), name each in one or two words, "
    "and say whether the photo is a clean background with no foreground object at all. Answer with JSON "
    'only, for example {{"objects": [{{"candidate": 1, "label": "cup"}}], "clean_background": false}}.'
)

VERIFY_PROMPT = (
    "This image was composed from cut-out objects, their shadows and a background. Is it usable as a "
    "training sample: objects complete, cleanly cut out, no obvious halos or holes? Answer with JSON "
    'only: {"accept": true or false, "reason": "a few words"}.'
)


class VLMPlanner:
    """Planner that asks a vision-language model, validating its JSON, with the rules as fallback.

    The model sees the photo and the candidate boxes and answers
    ``{"objects": [{"candidate": i, "label": str}], "clean_background": bool}`` (1-based candidates).
    Answers are validated (types, range, no repeats, printable labels); after ``retries`` failed
    answers the `RulePlanner` decides and the plan records why.
    """

    def __init__(
        self, model: Callable[[Image.Image, str], str], fallback: RulePlanner | None = None, retries: int = 2
    ) -> None:
        self.model = model
        self.fallback = fallback or RulePlanner()
        self.retries = retries

    @property
    def name(self) -> str:
        return _model_name(self.model)

    def plan(self, image: np.ndarray, proposals: Sequence[ObjectProposal]) -> PhotoPlan:
        rules = self.fallback.plan(image, proposals)
        if not proposals:
            return rules  # nothing to choose from: a clean background either way
        height, width = image.shape[:2]
        boxes = "\n".join(
            f"{i + 1}: [" + ", ".join(f"{v / s:.2f}" for v, s in zip(p.box, (width, height, width, height))) + "]"
            for i, p in enumerate(proposals)
        )
        prompt = PLAN_PROMPT.format(count=len(proposals), boxes=boxes)

        def validate(answer: dict[str, Any]) -> tuple[list[ObjectChoice], bool]:
            objects = _require(answer, "objects", list)
            clean = _require(answer, "clean_background", bool)
            choices, seen = [], set()
            for item in objects:
                if not isinstance(item, dict):
                    raise AgentAnswerError("each entry of 'objects' must be an object")
                candidate = _require(item, "candidate", int)
                if not 1 <= candidate <= len(proposals):
                    raise AgentAnswerError(f"candidate {candidate} is not in 1..{len(proposals)}")
                if candidate in seen:
                    raise AgentAnswerError(f"candidate {candidate} chosen twice")
                seen.add(candidate)
                choices.append(ObjectChoice(candidate - 1, _clean_label(_require(item, "label", str))))
            if clean and choices:
                raise AgentAnswerError("a clean background cannot have objects to extract")
            return choices, clean

        pil = Image.fromarray(to_uint8(image))
        value, errors = ask_json(self.model, pil, prompt, validate, self.retries)
        if value is None:
            rules.decided_by = f"rules (vlm fallback after {len(errors)} invalid answers: {errors[-1]})"
            return rules
        choices, clean = value
        choices = choices[: self.fallback.max_objects]
        choices.sort(key=lambda choice: choice.index)
        use_background = clean or rules.use_as_background
        retried = f" after {len(errors)} retries" if errors else ""
        return PhotoPlan(choices, clean, use_background, rules.remove, f"vlm{retried}", self.name)


class VLMVerifier:
    """Verifier: the rules first (hard limits), then a vision-language model's opinion.

    A sample the rules reject is rejected without asking. Otherwise the model answers
    ``{"accept": bool, "reason": str}``; if it keeps answering nonsense the rules' verdict stands
    and records the fallback.
    """

    def __init__(
        self, model: Callable[[Image.Image, str], str], rules: RuleVerifier | None = None, retries: int = 2
    ) -> None:
        self.model = model
        self.rules = rules or RuleVerifier()
        self.retries = retries

    @property
    def name(self) -> str:
        return _model_name(self.model)

    def verify(self, sample: LayeredImage, composite: np.ndarray) -> Verdict:
        verdict = self.rules.verify(sample, composite)
        if not verdict.accepted:
            return verdict

        def validate(answer: dict[str, Any]) -> tuple[bool, str]:
            return _require(answer, "accept", bool), " ".join(str(_require(answer, "reason", str)).split())[:200]

        pil = Image.fromarray(to_uint8(composite))
        value, errors = ask_json(self.model, pil, VERIFY_PROMPT, validate, self.retries)
        if value is None:
            verdict.decided_by = f"rules (vlm fallback after {len(errors)} invalid answers: {errors[-1]})"
            return verdict
        accepted, reason = value
        return Verdict(accepted, f"vlm: {reason or ('ok' if accepted else 'rejected')}", verdict.scores, self.name)
