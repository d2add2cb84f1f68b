"""Check liwi's exports with readers other than the libraries that wrote them.

- PSD (written with psd-tools): ImageMagick composites the layers, with the stored merged image
  left out (and, in a second copy, blanked to black, to show the composite comes from the layers),
  and the result is compared with the photo. The group structure is listed by the minimal PSD
  layer-record parser of tests/test_export.py (ImageMagick 6 skips group records).
- PPTX (written with python-pptx): LibreOffice Impress renders the slide headless to PNG, which is
  compared with the photo; also for a photo above PowerPoint's 56-inch slide limit (scaled).

Scenes: a layered image built from bundled sample photos (3 objects with soft edges and shadows;
its photo is its composite, as a decomposition recomposes to its photo), the same with every object
decomposed again into parts (depth 2: `decompose_to_depth`, weight-free tools; the PSD nests a parts
group in each object's group) and the tool chain's decomposition of a real photo (compared with the
photo itself). Errors are in 8-bit steps (1 = 1/255).

Needs Debian's ImageMagick and LibreOffice (``apt-get install -y imagemagick libreoffice-impress``).

    python benchmarks/check_readers.py                 # writes benchmarks/results/check_readers.json
    python benchmarks/check_readers.py --screenshots   # and docs/images/psd_groups.png, pptx_render.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from liwi_diffusers import LayeredImage
from liwi_diffusers.export import save_layered
from liwi_diffusers.export.pptx import PptxScaleWarning
from liwi_diffusers.sample_images import load_sample_image

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "check_readers.json"
IMAGES = ROOT / "docs" / "images"
sys.path.insert(0, str(ROOT / "tests"))
from test_export import psd_tree, read_psd_records  # noqa: E402  (the independent PSD parser)


# ---------------------------------------------------------------------- scenes
def sample_scene(scale: float = 1.0) -> tuple[np.ndarray, LayeredImage]:
    """Background: the chelsea photo; objects: soft-edged cut-outs of other sample photos, each with a shadow."""
    background = load_sample_image("chelsea").convert("RGB")
    width, height = round(background.width * scale), round(background.height * scale)
    background = background.resize((width, height), Image.Resampling.LANCZOS)
    pieces = [("coffee", "cup", (0.05, 0.45, 0.38, 0.95)), ("flower", "flower", (0.55, 0.08, 0.80, 0.50))]
    pieces.append(("flower", "flower", (0.70, 0.50, 0.97, 0.92)))
    foregrounds, shadows, labels = [], [], []
    for source, label, (x0, y0, x1, y1) in pieces:
        left, top, right, bottom = round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)
        cut = load_sample_image(source).convert("RGB").resize((right - left, bottom - top), Image.Resampling.LANCZOS)
        mask = Image.new("L", cut.size, 0)
        inset = max(2, round(4 * scale))
        ImageDraw.Draw(mask).ellipse((inset, inset, cut.width - inset, cut.height - inset), fill=255)
        mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, 2.0 * scale)))
        foreground = np.zeros((height, width, 4), np.float32)
        foreground[top:bottom, left:right, :3] = np.asarray(cut, np.float32) / 255
        foreground[top:bottom, left:right, 3] = np.asarray(mask, np.float32) / 255
        shadow = Image.new("L", (width, height), 0)
        dx, dy = round(0.04 * (right - left)), round(0.06 * (bottom - top))
        shadow.paste(mask, (left + dx, top + dy))
        shadow = shadow.filter(ImageFilter.GaussianBlur(6.0 * scale))
        foregrounds.append(foreground)
        shadows.append(np.asarray(shadow, np.float32) / 255 * 0.6)
        labels.append(label)
    layered = LayeredImage(background, foregrounds, shadows, labels).quantized()
    photo = np.round(layered.compose() * 255).astype(np.uint8)
    return photo, layered


def depth_two_scene(photo: np.ndarray, layered: LayeredImage) -> LayeredImage:
    """``layered`` with every object split into parts once (weight-free tool chain, so it runs anywhere)."""
    from liwi_diffusers import ToolChainDecomposer, decompose_to_depth

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decompose_to_depth(layered, 2, ToolChainDecomposer(segmenter=None))


def tool_chain_scene() -> tuple[np.ndarray, LayeredImage]:
    """The tool chain's decomposition of a real photo (coffee, 300x200)."""
    from liwi_diffusers import ToolChainDecomposer

    image = load_sample_image("coffee").convert("RGB")
    image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layered = ToolChainDecomposer()(image, num_layers=3)
    return np.asarray(image), layered


# ---------------------------------------------------------------------- helpers
def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)


def errors(shown: np.ndarray, photo: np.ndarray) -> dict[str, Any]:
    """Differences in 8-bit steps between an RGB rendering and the photo."""
    difference = np.abs(shown[:, :, :3].astype(np.int16) - photo[:, :, :3].astype(np.int16))
    return {
        "max": int(difference.max()),
        "mean": round(float(difference.mean()), 4),
        "p99": float(np.percentile(difference, 99)),
        "fraction_above_1": round(float((difference.max(axis=2) > 1).mean()), 6),
        "within_1_255": bool(difference.max() <= 1),
    }


def blank_merged_image(source: Path, target: Path) -> None:
    """Copy a PSD with its stored merged image replaced by black (raw), the layers untouched."""
    data = source.read_bytes()
    channels, height, width = struct.unpack_from(">HII", data, 12)
    at = 26
    for _ in range(3):  # colour mode data, image resources, layer and mask information
        (length,) = struct.unpack_from(">I", data, at)
        at += 4 + length
    target.write_bytes(data[:at] + struct.pack(">H", 0) + bytes(channels * width * height))


def imagemagick() -> list[str]:
    for name in ("magick", "convert"):
        if shutil.which(name):
            return [name] if name == "magick" else ["convert"]
    raise SystemExit("ImageMagick is not installed: apt-get install -y imagemagick")


def check_psd(photo: np.ndarray, layered: LayeredImage, folder: Path, name: str) -> dict[str, Any]:
    path = save_layered(layered, folder / f"{name}.psd")
    magick = imagemagick()
    result: dict[str, Any] = {"file_bytes": path.stat().st_size}
    blanked = folder / f"{name}-blank-preview.psd"
    blank_merged_image(path, blanked)
    for key, source in (("layers_merged", path), ("layers_merged_with_black_preview", blanked)):
        merged, preview = folder / f"{source.stem}-im.png", folder / f"{source.stem}-im-preview.png"
        command = [*magick, str(source), "-delete", "0", "-background", "none", "-layers", "merge", f"PNG32:{merged}"]
        run(command)
        run([*magick, f"{source}[0]", f"PNG32:{preview}"])
        shown = np.asarray(Image.open(merged))
        result[key] = {
            "command": f"{magick[0]} FILE.psd -delete 0 -background none -layers merge PNG32:out.png",
            "size": list(shown.shape[1::-1]),
            "alpha_min": int(shown[:, :, 3].min()),
            "vs_photo": errors(shown, photo),
            "stored_preview_mean": round(float(np.asarray(Image.open(preview))[:, :, :3].mean()), 3),
        }
    listing = run(["identify", "-format", r"%p %l %wx%h%O\n", str(path)]).stdout.splitlines()
    result["imagemagick_layers"] = listing
    _, records = read_psd_records(path)
    result["independent_parser_tree"] = psd_tree(records)
    result["independent_parser_boxes"] = {r["name"]: list(r["box"]) for r in records if r["section"] == 0}
    return result


def libreoffice_png(path: Path, folder: Path) -> tuple[np.ndarray, float]:
    profile = folder / "lo-profile"
    command = [
        "soffice",
        f"-env:UserInstallation=file://{profile}",
        "--headless",
        "--norestore",
        "--convert-to",
        "png",
        "--outdir",
        str(folder),
        str(path),
    ]
    start = time.perf_counter()
    run(command, timeout=600)
    seconds = time.perf_counter() - start
    with Image.open(folder / f"{path.stem}.png") as picture:
        return np.asarray(picture.convert("RGBA")), seconds


def check_pptx(photo: np.ndarray, layered: LayeredImage, folder: Path, name: str) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PptxScaleWarning)
        start = time.perf_counter()
        path = save_layered(layered, folder / f"{name}.pptx")
        export_seconds = time.perf_counter() - start
    shown, seconds = libreoffice_png(path, folder)
    result: dict[str, Any] = {
        "photo_size": [layered.width, layered.height],
        "file_bytes": path.stat().st_size,
        "export_seconds": round(export_seconds, 2),
        "warnings": [str(w.message) for w in caught],
        "command": "soffice --headless --convert-to png FILE.pptx",
        "render_seconds": round(seconds, 1),
        "render_size": list(shown.shape[1::-1]),
    }
    if shown.shape[:2] == photo.shape[:2]:
        result["vs_photo"] = errors(shown, photo)
    else:  # a scaled slide: compare with the photo brought to the render's size
        resized = np.asarray(Image.fromarray(photo).resize(shown.shape[1::-1], Image.Resampling.BOX))
        result["vs_photo_resized_to_render"] = errors(shown, resized)
        result["mean_error_by_shift_px"] = shift_errors(shown, resized)
    return result


def shift_errors(shown: np.ndarray, photo: np.ndarray) -> dict[str, float]:
    """Mean error with the photo shifted by up to 1 px: the smallest at (0, 0) means the layers are in place."""
    inner = shown[2:-2, 2:-2, :3].astype(np.int16)
    found = {}
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            moved = np.roll(photo, (dy, dx), axis=(0, 1))[2:-2, 2:-2, :3].astype(np.int16)
            found[f"{dx:+d},{dy:+d}"] = round(float(np.abs(inner - moved).mean()), 3)
    return found


# ---------------------------------------------------------------------- screenshots
def font(size: int) -> ImageFont.ImageFont:
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",):
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default()


def text_panel(lines: list[str], width: int, size: int = 15, title: str = "") -> Image.Image:
    face, bold = font(size), font(size + 2)
    step = size + 5
    panel = Image.new("RGB", (width, 16 + (len(lines) + (2 if title else 0)) * step), "white")
    draw = ImageDraw.Draw(panel)
    y = 8
    if title:
        draw.text((10, y), title, fill=(20, 20, 120), font=bold)
        y += 2 * step
    for line in lines:
        draw.text((10, y), line, fill="black", font=face)
        y += step
    return panel


def tree_lines(tree: list, boxes: dict[str, list[int]]) -> list[str]:
    """Top of the stack first, as an editor's layer panel shows it."""
    lines = []
    for node in reversed(tree):
        if isinstance(node, tuple):
            group, children = node
            lines.append(f"[group] {group}")
            for child in reversed(children):
                left, top, right, bottom = boxes[child]
                lines.append(f"    {child:<22} {right - left}x{bottom - top}+{left}+{top}")
        else:
            left, top, right, bottom = boxes[node]
            lines.append(f"{node:<26} {right - left}x{bottom - top}+{left}+{top}")
    return lines


def psd_screenshot(report: dict[str, Any], target: Path) -> None:
    tree = tree_lines(report["independent_parser_tree"], report["independent_parser_boxes"])
    left = text_panel(tree, 560, title="PSD layer records (own parser, not psd-tools)")
    magick = list(report["imagemagick_layers"])
    magick[0] = magick[0].replace("0 ", "0 (merged image)", 1)  # frame 0 has no label
    right = text_panel(magick, 520, title="ImageMagick: identify (%p %l %wx%h%O)")
    merged = report["layers_merged_with_black_preview"]["vs_photo"]
    footer = text_panel(
        [
            "ImageMagick's composite of the layers (stored preview deleted, and blanked to black)",
            f"vs the photo: max {merged['max']}/255, mean {merged['mean']}/255",
        ],
        1080,
    )
    height = max(left.height, right.height)
    canvas = Image.new("RGB", (1080, height + footer.height), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (560, 0))
    canvas.paste(footer, (0, height))
    ImageDraw.Draw(canvas).line((560, 10, 560, height - 10), fill=(200, 200, 200))
    canvas.save(target)


def pptx_screenshot(render: np.ndarray, photo: np.ndarray, report: dict[str, Any], target: Path) -> None:
    width, height = photo.shape[1], photo.shape[0]
    caption = text_panel(
        [
            "left: the photo   right: sample.pptx rendered by LibreOffice Impress (headless, PNG)",
            f"a picture per layer, grouped per object; max {report['vs_photo']['max']}/255, "
            f"mean {report['vs_photo']['mean']}/255",
        ],
        2 * width + 30,
    )
    canvas = Image.new("RGB", (2 * width + 30, height + 20 + caption.height), "white")
    canvas.paste(Image.fromarray(photo), (10, 10))
    canvas.paste(Image.fromarray(render[:, :, :3]), (width + 20, 10))
    canvas.paste(caption, (0, height + 20))
    canvas.save(target)


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--screenshots", action="store_true", help="also write docs/images/psd_groups.png, pptx_render.png"
    )
    parser.add_argument("--large", type=int, default=6000, help="long side (px) of the photo above the slide limit")
    args = parser.parse_args()

    versions = {
        "imagemagick": run([*imagemagick(), "-version"]).stdout.splitlines()[0],
        "libreoffice": run(["soffice", "--version"]).stdout.strip(),
        "python": platform.python_version(),
    }
    report: dict[str, Any] = {"versions": versions, "units": "8-bit steps (1 = 1/255)"}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        photo, layered = sample_scene()
        tree = depth_two_scene(photo, layered)
        chain_photo, chain = tool_chain_scene()
        report["psd"] = {
            "sample": check_psd(photo, layered, folder, "sample"),
            "sample_depth2": check_psd(photo, tree, folder, "sample-depth2"),
            "tool_chain_coffee": check_psd(chain_photo, chain, folder, "coffee"),
        }
        report["psd"]["sample_depth2"]["parts"] = {str(k + 1): len(parts) for k, parts in tree.parts.items()}
        report["pptx"] = {
            "sample": check_pptx(photo, layered, folder, "sample"),
            "sample_depth2": check_pptx(photo, tree, folder, "sample-depth2"),
            "tool_chain_coffee": check_pptx(chain_photo, chain, folder, "coffee"),
        }
        big_photo, big = sample_scene(scale=args.large / max(photo.shape[:2]))
        report["pptx"]["above_slide_limit"] = check_pptx(big_photo, big, folder, "large")
        report["ora"] = "not checked by a second reader: ImageMagick 6 has no OpenRaster reader"
        if args.screenshots:
            IMAGES.mkdir(parents=True, exist_ok=True)
            psd_screenshot(report["psd"]["sample"], IMAGES / "psd_groups.png")
            render, _ = libreoffice_png(folder / "sample.pptx", folder)
            pptx_screenshot(render, photo, report["pptx"]["sample"], IMAGES / "pptx_render.png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
