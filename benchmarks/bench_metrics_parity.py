"""Parity and speed of our layer protocol against LayerD's reference implementation.

Generates seeded random layered samples (2-8 RGBA layers back to front, an opaque background
first) with predictions made from them by realistic mistakes (noisy colours, shifted or blurred
alphas, split, merged, dropped or reordered layers, or unrelated stacks), scores every sample with
`liwi_diffusers.metrics.evaluate_layers` and with the reference's `LayersEditDist`, and reports the
largest difference per merge level and the samples per second of each.

The reference is not shipped with this project: fetch CyberAgentAILab/LayerD and point ``--layerd``
at the checkout (or its ``src`` folder). Its rendering and inpainting modules are not needed for
evaluation; when they cannot be imported (cr-renderer, simple-lama-inpainting, torch models) they
are replaced by empty stand-ins. It needs scikit-image and opencv-python-headless.

    python benchmarks/bench_metrics_parity.py --layerd /tmp/LayerD
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import platform
import sys
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from liwi_diffusers.metrics import DEFAULT_MAX_EDITS, aggregate_layer_results, evaluate_layers

RESULTS = Path(__file__).parent / "results" / "metrics_parity.json"


# ---------------------------------------------------------------------------------------------- reference
def load_reference(folder: Path) -> Any:
    """Import ``layerd.evaluation`` from a LayerD checkout without its model/rendering dependencies."""
    found = sorted(folder.resolve().glob("**/layerd/evaluation/edit_distance.py"))
    if not found:
        raise SystemExit(f"no layerd/evaluation/edit_distance.py under {folder}: pass the LayerD checkout")
    package_dir = found[0].parents[1]
    # A bare package object: layerd/__init__.py would import the LayerD model (torch, transformers).
    package = types.ModuleType("layerd")
    package.__path__ = [str(package_dir)]
    sys.modules["layerd"] = package
    for name in ("layerd.data.renderer", "layerd.models.inpaint"):
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.__getattr__ = lambda attribute: type(attribute, (), {})  # type: ignore[method-assign]
            sys.modules[name] = stub
    evaluation = importlib.import_module("layerd.evaluation")
    digest = hashlib.sha256()
    for path in [*sorted((package_dir / "evaluation").glob("*.py")), package_dir / "data" / "crello.py"]:
        digest.update(path.read_bytes())
    evaluation.source_sha256 = digest.hexdigest()
    evaluation.package_dir = str(package_dir)
    return evaluation


# ---------------------------------------------------------------------------------------------- samples
def _soft_shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float alpha in [0, 1]: an ellipse, a box or a blob with a soft edge, sometimes translucent."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.1, 0.9, 2) * size
    ry, rx = rng.uniform(0.05, 0.3, 2) * size
    kind = rng.integers(3)
    if kind == 0:
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    elif kind == 1:
        inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    else:
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), size / 24)
        inside = (noise > np.quantile(noise, rng.uniform(0.8, 0.97))) & (np.abs(yy - cy) <= 2 * ry)
    alpha = ndimage.gaussian_filter(inside.astype(np.float32), rng.uniform(0.0, 3.0))
    return np.clip(alpha * rng.choice([1.0, 1.0, rng.uniform(0.3, 1.0)]), 0.0, 1.0)


def _color(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float RGB texture: a flat colour, a gradient or smooth noise."""
    base = rng.uniform(0, 1, 3).astype(np.float32)
    ramp = np.linspace(-0.3, 0.3, size, dtype=np.float32)
    texture = rng.uniform(0, 1) * ramp[None, :, None] * rng.uniform(-1, 1, 3) + base
    texture = texture + rng.uniform(0, 0.1) * rng.standard_normal((size, size, 3)).astype(np.float32)
    return np.clip(np.broadcast_to(texture, (size, size, 3)), 0.0, 1.0)


def _rgba8(color: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rgba = np.concatenate([color, alpha[:, :, None]], axis=2)
    rgba = np.round(rgba * 255).astype(np.uint8)
    if rng.random() < 0.5:  # colour under zero alpha: zeros (as many tools save it) or junk
        rgba[rgba[:, :, 3] == 0, :3] = 0
    return rgba


def make_ground_truth(rng: np.random.Generator, size: int, count: int) -> list[np.ndarray]:
    """An opaque background and ``count - 1`` foreground layers, uint8 RGBA, back to front."""
    layers = [_rgba8(_color(rng, size), np.ones((size, size), np.float32), rng)]
    for _ in range(count - 1):
        layers.append(_rgba8(_color(rng, size), _soft_shape(rng, size), rng))
    return layers


def _perturb(layer: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour noise, an alpha shift and blur (both scaled with the image: 3 px and 2 px at 64 px)."""
    size = layer.shape[0]
    out = layer.astype(np.float32)
    out[:, :, :3] += rng.normal(0, rng.uniform(2, 20), 3)
    reach = max(1, round(3 * size / 64))
    shift = rng.integers(-reach, reach + 1, 2)
    out[:, :, 3] = np.roll(out[:, :, 3], tuple(shift), axis=(0, 1))
    if rng.random() < 0.5:
        out[:, :, 3] = ndimage.gaussian_filter(out[:, :, 3], rng.uniform(0.5, 2.0) * size / 64)
    if layer[:, :, 3].min() == 255:  # keep an opaque background opaque
        out[:, :, 3] = 255
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def make_prediction(gt: list[np.ndarray], rng: np.random.Generator, size: int) -> tuple[list[np.ndarray], str]:
    """A plausible prediction of ``gt``: perturbed, then maybe split/merged/dropped/reordered (2-8 layers)."""
    kinds = ["noisy", "split", "oversplit", "merge", "flatten", "drop", "swap", "duplicate", "empty", "unrelated"]
    kind = str(rng.choice(kinds))
    if kind == "unrelated":
        return make_ground_truth(rng, size, int(rng.integers(2, 9))), kind
    pred = [_perturb(layer, rng) for layer in gt]
    if kind in ("split", "oversplit"):  # one (or up to three) layers cut in two: merges on the prediction
        for _ in range(1 if kind == "split" else 3):
            if len(pred) >= 8:
                break
            k = int(rng.integers(1, len(pred)))
            cut, band = int(rng.integers(size // 4, 3 * size // 4)), size // 16
            upper, lower = pred[k].copy(), pred[k].copy()
            upper[cut + band :, :, 3] = 0  # the halves share a band: they overlap, so grouping
            lower[: cut - band, :, 3] = 0  # cannot rejoin them and a merge is needed
            pred[k : k + 1] = [upper, lower]
    elif kind in ("merge", "flatten"):  # adjacent layers flattened together: merges on the ground truth
        for _ in range(1 if kind == "merge" else 3):
            if len(pred) <= 2:
                break
            k = int(rng.integers(0, len(pred) - 1))
            merged = Image.alpha_composite(Image.fromarray(pred[k], "RGBA"), Image.fromarray(pred[k + 1], "RGBA"))
            pred[k : k + 2] = [np.asarray(merged)]
    elif kind == "duplicate" and len(pred) < 8:  # an exact copy: ties in the alignment and the merges
        k = int(rng.integers(1, len(pred)))
        pred.insert(k, pred[k].copy())
    elif kind == "empty" and len(pred) < 8:  # a fully transparent layer (joins the top group)
        pred.insert(int(rng.integers(1, len(pred) + 1)), np.zeros_like(pred[0]))
    elif kind == "drop" and len(pred) > 2:
        del pred[int(rng.integers(1, len(pred)))]
    elif kind == "swap" and len(pred) > 2:
        k = int(rng.integers(1, len(pred) - 1))
        pred[k], pred[k + 1] = pred[k + 1], pred[k]
    return pred, kind


def make_samples(count: int, size: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        gt = make_ground_truth(rng, size, int(rng.integers(2, 9)))
        pred, kind = make_prediction(gt, rng, size)
        samples.append(
            {
                "id": f"{index:03d}",
                "kind": kind,
                "pred": [Image.fromarray(layer, "RGBA") for layer in pred],
                "gt": [Image.fromarray(layer, "RGBA") for layer in gt],
            }
        )
    return samples


# ---------------------------------------------------------------------------------------------- run
def run_ours(samples: list[dict[str, Any]], max_edits: int) -> tuple[list[Any], float]:
    evaluate_layers(samples[0]["pred"], samples[0]["gt"], max_edits=max_edits)  # warm-up, untimed
    start = time.perf_counter()
    results = [evaluate_layers(sample["pred"], sample["gt"], max_edits=max_edits) for sample in samples]
    return results, time.perf_counter() - start


def run_reference(evaluation: Any, samples: list[dict[str, Any]], max_edits: int) -> tuple[list[Any], float]:
    metric = evaluation.LayersEditDist(max_edits=max_edits)
    metric(list(samples[0]["pred"]), list(samples[0]["gt"]))  # warm-up, untimed
    start = time.perf_counter()
    # Copies: the reference edits its input lists in place while merging.
    results = [metric(list(sample["pred"]), list(sample["gt"])) for sample in samples]
    return results, time.perf_counter() - start


def compare(ours: list[Any], reference: list[list[dict]], evaluation: Any, max_edits: int) -> dict[str, Any]:
    """Largest absolute differences per level, per sample and aggregated, and any mismatch in merges made."""
    names = ("rgb_l1", "alpha_iou", "cost")
    per_level = []
    ours_aggregate = aggregate_layer_results(ours, max_edits)
    reference_aggregate = {row["max_edits"]: row for row in evaluation.LayersEditDist.aggregate(reference)}
    mismatched_edits = [
        index for index, (mine, theirs) in enumerate(zip(ours, reference)) if len(mine.levels) != len(theirs)
    ]
    for k in range(max_edits + 1):
        row: dict[str, Any] = {"merges": k, "samples_at_level": sum(len(r) > k for r in reference)}
        for name in names:
            differences = [
                abs(getattr(mine.level(k), name) - theirs[min(k, len(theirs) - 1)][name])
                for mine, theirs in zip(ours, reference)
            ]
            row[f"max_diff_{name}"] = max(differences)
            if k in reference_aggregate:
                row[f"aggregate_diff_{name}"] = abs(ours_aggregate[k][name] - reference_aggregate[k][f"avg_{name}"])
                row[f"reference_{name}"] = float(reference_aggregate[k][f"avg_{name}"])
            row[f"ours_{name}"] = ours_aggregate[k][name]
        per_level.append(row)
    return {"levels": per_level, "samples_with_different_merge_counts": mismatched_edits}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| merges | samples at level | max diff RGB L1 | max diff IoU | max diff cost | RGB L1 (ours) | IoU (ours) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["parity"]["levels"]:
        lines.append(
            f"| {row['merges']} | {row['samples_at_level']} | {row['max_diff_rgb_l1']:.3g} | "
            f"{row['max_diff_alpha_iou']:.3g} | {row['max_diff_cost']:.3g} | {row['ours_rgb_l1']:.4f} | "
            f"{row['ours_alpha_iou']:.4f} |"
        )
    speed = report["speed"]
    lines += [
        "",
        f"samples: {report['samples']} at {report['size']} px, layers 2-8, seed {report['seed']}",
        f"ours: {speed['ours_samples_per_s']:.2f} samples/s, reference: {speed['reference_samples_per_s']:.3f} "
        f"samples/s, speed-up {speed['speedup']:.1f}x",
        f"largest difference over all levels: {report['max_abs_difference']:.3g} "
        f"({'PASS' if report['parity_ok'] else 'FAIL'} at {report['tolerance']:g})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layerd", type=Path, required=True, help="LayerD checkout (or its src folder)")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-edits", type=int, default=DEFAULT_MAX_EDITS)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    evaluation = load_reference(args.layerd)
    samples = make_samples(args.samples, args.size, args.seed)
    print(f"{len(samples)} samples at {args.size} px; reference from {evaluation.package_dir}", flush=True)
    ours, ours_seconds = run_ours(samples, args.max_edits)
    print(f"ours: {ours_seconds:.2f} s", flush=True)
    reference, reference_seconds = run_reference(evaluation, samples, args.max_edits)
    print(f"reference: {reference_seconds:.2f} s", flush=True)

    parity = compare(ours, reference, evaluation, args.max_edits)
    largest = max(row[key] for row in parity["levels"] for key in row if key.startswith(("max_diff", "aggregate_diff")))
    report = {
        "samples": len(samples),
        "size": args.size,
        "seed": args.seed,
        "max_edits": args.max_edits,
        "tolerance": args.tolerance,
        "max_abs_difference": largest,
        "parity_ok": largest <= args.tolerance and not parity["samples_with_different_merge_counts"],
        "parity": parity,
        "speed": {
            "ours_seconds": ours_seconds,
            "reference_seconds": reference_seconds,
            "ours_samples_per_s": len(samples) / ours_seconds,
            "reference_samples_per_s": len(samples) / reference_seconds,
            "speedup": reference_seconds / ours_seconds,
        },
        "sample_kinds": dict(sorted(Counter(sample["kind"] for sample in samples).items())),
        "layer_counts": {
            "pred": [len(s["pred"]) for s in samples],
            "gt": [len(s["gt"]) for s in samples],
        },
        "reference": {"source_sha256": evaluation.source_sha256},
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pillow": Image.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
            "note": "timings taken one after the other on a shared machine; compare the ratio, not absolutes",
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"wrote {args.output}")
    return 0 if report["parity_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
