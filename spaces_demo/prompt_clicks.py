"""Click prompts for the Space: a click on the photo adds a point on an object (or on the background), and the
decomposition takes those objects out (`ToolChainDecomposer`'s ``points=`` and ``negative_points=``).

The prompts of a page are a plain dict kept in a ``gr.State``::

    {"points": [(x, y), ...], "negative_points": [(x, y), ...], "only_prompts": bool}

with ``x, y`` as fractions of the photo's width and height, so they stay right when the Space downscales a large
photo before decomposing it. These are plain functions; ``app.py`` wires them to Gradio.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

__all__ = [
    "MAX_PROMPT_POINTS",
    "add_click",
    "decompose_prompted_in_worker",
    "empty_prompts",
    "prompt_options",
    "prompt_preview",
    "prompt_summary",
]

MAX_PROMPT_POINTS = 16  # clicks kept per page (object and background points together)
POSITIVE, NEGATIVE = (34, 197, 94), (239, 68, 68)


def empty_prompts(only_prompts: bool = False) -> dict[str, Any]:
    """No prompts (what a new page, a new photo and "Clear prompts" give)."""
    return {"points": [], "negative_points": [], "only_prompts": bool(only_prompts)}


def _photo_size(path: str) -> tuple[int, int]:
    """The photo's size as the page shows it (EXIF orientation applied, as `load_image` does)."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def add_click(
    prompts: Mapping[str, Any] | None, photo: str | None, index: Any, negative: bool = False
) -> dict[str, Any]:
    """``prompts`` with one more point at the clicked pixel ``index = (x, y)`` of ``photo`` (a file path).

    Raises ``ValueError`` (one line) without a photo, for a click outside it, or past `MAX_PROMPT_POINTS`.
    """
    state = dict(empty_prompts() if prompts is None else prompts)
    if not photo:
        raise ValueError("Upload a photo first, then click on the objects to take out.")
    try:
        x, y = (float(v) for v in index)
    except (TypeError, ValueError):
        raise ValueError(f"A click gives a pixel (x, y); got {index!r}.") from None
    width, height = _photo_size(photo)
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"The click ({x:g}, {y:g}) is outside the {width}x{height} photo.")
    if len(state["points"]) + len(state["negative_points"]) >= MAX_PROMPT_POINTS:
        raise ValueError(f"At most {MAX_PROMPT_POINTS} clicks per photo; press Clear prompts to start again.")
    point = ((x + 0.5) / width, (y + 0.5) / height)  # the pixel's centre, as a fraction
    key = "negative_points" if negative else "points"
    state[key] = [*state[key], point]
    return state


def prompt_options(prompts: Mapping[str, Any] | None) -> dict[str, Any]:
    """The decomposer's keyword arguments for ``prompts`` (empty when there are none)."""
    if not prompts:
        return {}
    options: dict[str, Any] = {}
    if prompts.get("points"):
        options["points"] = [tuple(p) for p in prompts["points"]]
    if prompts.get("negative_points"):
        options["negative_points"] = [tuple(p) for p in prompts["negative_points"]]
    if options.get("points") and prompts.get("only_prompts"):
        options["only_prompts"] = True
    return options


def prompt_summary(prompts: Mapping[str, Any] | None) -> str:
    """One line for the page: what the clicks will do."""
    points = len((prompts or {}).get("points", []))
    negatives = len((prompts or {}).get("negative_points", []))
    if not points and not negatives:
        return "Optional: click on the photo to choose objects (one object per click)."
    parts = []
    if points:
        parts.append(f"{points} object{'s' if points != 1 else ''} chosen")
    if negatives:
        parts.append(f"{negatives} background point{'s' if negatives != 1 else ''}")
    only = points and (prompts or {}).get("only_prompts")
    return ", ".join(parts) + (" (only these are taken out)." if only else " (plus what is found automatically).")


def prompt_preview(photo: str | None, prompts: Mapping[str, Any] | None, path: Path, max_side: int = 480) -> str | None:
    """The photo with its clicks marked (green: objects, numbered; red: background), written to ``path``."""
    if not photo or not prompts or not (prompts.get("points") or prompts.get("negative_points")):
        return None
    with Image.open(photo) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    radius = max(5, round(0.02 * max(image.size)))
    marks = [(p, POSITIVE, str(k)) for k, p in enumerate(prompts.get("points", []), start=1)]
    marks += [(p, NEGATIVE, "x") for p in prompts.get("negative_points", [])]
    for (fx, fy), colour, text in marks:
        x, y = fx * image.width, fy * image.height
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline="white", width=2)
        draw.text((x, y), text, fill="white", anchor="mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return str(path)


def decompose_prompted_in_worker(name: str, image: Any, num_layers: int | None, options: dict[str, Any]) -> Any:
    """``load_decomposer(name)(image, num_layers, **options)`` in a tool-chain worker process."""
    from worker_pool import decompose_in_worker

    return decompose_in_worker(name, image, num_layers, options)
