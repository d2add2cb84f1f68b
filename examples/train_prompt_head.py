"""Recipe of a prompt head (`liwi_diffusers.models.PromptHead`) for box and point prompts, trained from nothing.

No head ships: this one scores below `PromptSegmenter`'s rules on the real-photo benchmark (box 0.695 against
0.740, point 0.417 against 0.558, masks only; the README's prompt section), so the rules stay the default.

    liwi models download isnet                 # the frozen backbone whose decoder features the head reads
    git clone --bare https://github.com/Obmutescence/COCO-MINI MIRROR/Obmutescence+COCO-MINI/repo  # and
    # zzowenzz/COCO_Tiny, enginbozaba/tiny_coco alike (the snapshots examples/fetch_training_photos.py reads)
    python examples/train_prompt_head.py --mirror MIRROR -o prompt-out   # 20 min features, 20 min training

1. Views (``OUT/views/*.npz``, made once, reused when present): every COCO photo of the three snapshots that the
   real-photo benchmark does not hold (checked by image id), whole (and mirrored), plus one crop around each
   non-crowd instance that covers at least 0.4 % of the photo (the box plus a random margin of 5-40 % per side, so
   that the head sees loose and tight boxes). Each view goes through ISNet at 512 px; its decoder features at 1/4,
   1/8, 1/16 and 1/32 of the view, its matte, and every instance's mask at 1/4 are kept (float16).
2. Training: a `PromptHead` on those features, one prompt per sample: the instance's box (jittered), one point
   inside it (the deepest point half of the time, as users click; else anywhere well inside), or both, sometimes
   with a negative point on another instance. Loss: BCE + soft Dice on the instance's mask at 1/4 of the view.
   Photos whose id ends in 0 (a tenth) are held out and scored each epoch; the last epoch is saved. One seed.
3. Output: ``OUT/prompt-head/`` (``PromptHead.save_pretrained`` + ``training_summary.json``), used with
   ``ToolChainDecomposer(prompt_head="OUT/prompt-head")`` or ``bench_prompts.py --prompt-head OUT/prompt-head``.

Licences: the COCO photos are Flickr photos under their own licences (CC BY, BY-SA, BY-ND and the NonCommercial
variants; ``--open-licences-only`` keeps those without NonCommercial terms); the annotations are CC BY 4.0 (COCO
Consortium). The photos are only read here; none is redistributed.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "data" / "real"))
sys.path.insert(0, str(ROOT / "examples"))

from build_real_data import COCO_OPEN_LICENCES, coco_polygons_to_mask, git_show  # noqa: E402
from fetch_training_photos import TRAINING_SOURCES, benchmark_coco_ids  # noqa: E402

VIEW_SIDE = 512  # ISNet's pass per view; the head's output is at 1/4 of it
LEVELS = (1, 2, 3, 4)  # of the feature maps (finest first): 1/4, 1/8, 1/16, 1/32 of the view
MIN_OBJECT_SHARE = 0.004
COMMERCIAL_LICENCES = {**COCO_OPEN_LICENCES, 6: "CC-BY-ND-2.0"}
HEAD_CONFIG = {"feature_channels": (64, 128, 256, 512), "hidden_channels": 64, "num_blocks": 4}


def coco_photos(mirror: Path, open_only: bool) -> list[dict]:
    """One record per usable COCO photo: id, licence, the image bytes' location and its instances."""
    reserved = benchmark_coco_ids()
    photos: dict[int, dict] = {}
    for source in TRAINING_SOURCES:
        data = json.loads(git_show(mirror, source.repo, source.commit, source.annotations))
        annotations: dict[int, list] = {}
        for annotation in data["annotations"]:
            annotations.setdefault(annotation["image_id"], []).append(annotation)
        for info in data["images"]:
            if info["id"] in reserved or info["id"] in photos:
                continue
            if open_only and info.get("license") not in COMMERCIAL_LICENCES:
                continue
            photos[info["id"]] = {
                "id": info["id"],
                "licence": info.get("license"),
                "source": source,
                "file": f"{source.image_dir}/{info['file_name']}",
                "width": info["width"],
                "height": info["height"],
                "annotations": annotations.get(info["id"], []),
            }
    return [photos[key] for key in sorted(photos)]


def instance_masks(photo: dict) -> tuple[list[np.ndarray], np.ndarray]:
    """The photo's instance masks (non-crowd, above the size floor; float32 at the photo's size) and its crowd mask."""
    width, height = photo["width"], photo["height"]
    masks, crowd = [], np.zeros((height, width), np.float32)
    for annotation in photo["annotations"]:
        segmentation = annotation["segmentation"]
        if annotation.get("iscrowd") or not isinstance(segmentation, list):
            if isinstance(segmentation, list):
                crowd = np.maximum(crowd, coco_polygons_to_mask(segmentation, width, height))
            else:  # an RLE crowd region: its box, to be ignored
                x, y, w, h = (round(v) for v in annotation["bbox"])
                crowd[y : y + h, x : x + w] = 1.0
            continue
        mask = coco_polygons_to_mask(segmentation, width, height)
        if mask.mean() >= MIN_OBJECT_SHARE:
            masks.append(mask)
    return masks, crowd


def _crop(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return array[y0:y1, x0:x1]


def _view_record(segmenter, rgb: np.ndarray, masks: list[np.ndarray], crowd: np.ndarray, target: int) -> dict:
    matte, maps = segmenter.features(rgb, VIEW_SIDE)
    quarter = VIEW_SIDE // 4
    down = [cv2.resize(m, (quarter, quarter), interpolation=cv2.INTER_AREA) for m in masks]
    kept = [i for i, (m, full) in enumerate(zip(down, masks)) if m.sum() >= 4 and full.sum() > 0]
    record = {f"level{k}": maps[k].astype(np.float16) for k in LEVELS}
    record["matte"] = cv2.resize(matte, (quarter, quarter), interpolation=cv2.INTER_AREA).astype(np.float16)
    record["rgb"] = cv2.resize((rgb * 255).astype(np.uint8), (quarter, quarter), interpolation=cv2.INTER_AREA)
    record["masks"] = np.stack([down[i] for i in kept]).astype(np.float16) if kept else np.zeros((0, quarter, quarter))
    record["ignore"] = cv2.resize(crowd, (quarter, quarter), interpolation=cv2.INTER_AREA).astype(np.float16)
    record["target"] = np.int64(kept.index(target) if target in kept else -1)
    return record


def extract_views(mirror: Path, out: Path, open_only: bool, seed: int) -> int:
    """Write one ``.npz`` per view under ``out`` (skipping those already there); returns the number of views."""
    from liwi_diffusers.tools.segmenter import OnnxSegmenter

    segmenter = OnnxSegmenter.from_cache()
    out.mkdir(parents=True, exist_ok=True)
    photos = coco_photos(mirror, open_only)
    rng = np.random.default_rng(seed)
    count, started = 0, time.time()
    for number, photo in enumerate(photos):
        source = photo["source"]
        data = git_show(mirror, source.repo, source.commit, photo["file"])
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255.0
        masks, crowd = instance_masks(photo)
        if not masks:
            continue
        height, width = rgb.shape[:2]
        views = [("whole", (0, 0, width, height), False, -1), ("mirror", (0, 0, width, height), True, -1)]
        for index, mask in enumerate(masks):
            ys, xs = np.nonzero(mask > 0.5)
            if len(xs) == 0:
                continue
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            w, h = x1 - x0, y1 - y0
            margins = rng.uniform(0.05, 0.4, size=4)
            box = (
                max(0, int(x0 - margins[0] * w)),
                max(0, int(y0 - margins[1] * h)),
                min(width, int(np.ceil(x1 + margins[2] * w))),
                min(height, int(np.ceil(y1 + margins[3] * h))),
            )
            views.append((f"object{index}", box, bool(rng.random() < 0.5), index))
        for name, box, flip, target in views:
            path = out / f"{photo['id']:012d}_{name}.npz"
            count += 1
            if path.is_file():
                continue
            view = _crop(rgb, box)
            view_masks = [_crop(m, box) for m in masks]
            view_crowd = _crop(crowd, box)
            if flip:
                view, view_crowd = view[:, ::-1], view_crowd[:, ::-1]
                view_masks = [m[:, ::-1] for m in view_masks]
            record = _view_record(segmenter, np.ascontiguousarray(view), view_masks, view_crowd, target)
            record["photo"] = np.int64(photo["id"])
            record["licence"] = np.int64(photo["licence"] or 0)
            temporary = path.with_suffix(".tmp.npz")
            np.savez(temporary, **record)
            temporary.replace(path)
        print(f"photo {number + 1}/{len(photos)}: {count} views, {time.time() - started:.0f} s", flush=True)
    return count


def load_views(folder: Path) -> list[dict]:
    """Every view of ``folder`` in memory (float16 features as torch tensors)."""
    import torch

    views = []
    for path in sorted(folder.glob("*.npz")):
        if path.name.endswith(".tmp.npz"):
            continue
        with np.load(path) as data:
            if len(data["masks"]) == 0:
                continue
            views.append(
                {
                    "name": path.stem,
                    "photo": int(data["photo"]),
                    "features": [torch.from_numpy(data[f"level{k}"]) for k in LEVELS],
                    "matte": torch.from_numpy(data["matte"]),
                    "rgb": torch.from_numpy(data["rgb"]),
                    "masks": data["masks"].astype(np.float32),
                    "ignore": data["ignore"].astype(np.float32),
                    "target": int(data["target"]),
                }
            )
    return views


def sample_prompt(mask: np.ndarray, others: list[np.ndarray], rng: np.random.Generator) -> dict:
    """One training prompt for ``mask`` (grid cells of the 1/4 map): a box, a point, both, or a point and a
    negative point on another object."""
    from liwi_diffusers.tools.learned_prompts import deepest_point

    binary = mask > 0.5
    ys, xs = np.nonzero(binary)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0
    w, h = x1 - x0, y1 - y0
    jitter = rng.uniform(-0.06, 0.06, size=4) * np.array([w, h, w, h])
    box = (x0 + jitter[0], y0 + jitter[1], x1 + jitter[2], y1 + jitter[3])
    if rng.random() < 0.5:
        point = deepest_point(binary)
    else:
        distance = cv2.distanceTransform(binary.astype(np.uint8), cv2.DIST_L2, 3)
        ys, xs = np.nonzero(distance >= 0.3 * distance.max())
        pick = rng.integers(len(xs))
        point = (xs[pick] + 0.5, ys[pick] + 0.5)
    kind = rng.choice(["box", "point", "both", "negative"], p=[0.4, 0.35, 0.15, 0.1])
    prompt = {"box": box if kind in ("box", "both") else None, "points": [] if kind == "box" else [point]}
    prompt["negative_points"] = []
    if kind == "negative" and others:
        other = others[rng.integers(len(others))] > 0.5
        if other.any() and not (other & binary).all():
            prompt["negative_points"] = [deepest_point(other & ~binary) if (other & ~binary).any() else point]
    return prompt


def training_items(views: list[dict], rng: np.random.Generator) -> list[tuple[int, int]]:
    """(view, instance) pairs of one epoch: a crop view's own object, and two objects of each whole view."""
    items = []
    for number, view in enumerate(views):
        count = len(view["masks"])
        if view["target"] >= 0:
            items.append((number, view["target"]))
        else:
            items.extend((number, int(i)) for i in rng.choice(count, size=min(2, count), replace=False))
    rng.shuffle(items)
    return items


def batch_tensors(views: list[dict], items: list[tuple[int, int]], rng: np.random.Generator):
    """Stacked head inputs, targets and loss weights of ``items``."""
    import torch

    from liwi_diffusers.models.prompt_head import prompt_maps

    features = [[] for _ in LEVELS]
    mattes, rgbs, prompts, targets, weights = [], [], [], [], []
    for number, instance in items:
        view = views[number]
        for k, level in enumerate(view["features"]):
            features[k].append(level.float())
        mask = view["masks"][instance]
        others = [m for i, m in enumerate(view["masks"]) if i != instance]
        prompt = sample_prompt(mask, others, rng)
        prompts.append(prompt_maps(mask.shape, prompt["box"], prompt["points"], prompt["negative_points"]))
        mattes.append(view["matte"].float()[None])
        rgbs.append(view["rgb"].permute(2, 0, 1).float() / 255.0)
        targets.append(torch.from_numpy(mask)[None])
        weights.append(torch.from_numpy(np.maximum(1.0 - view["ignore"], mask))[None])
    stack = torch.stack
    return [stack(f) for f in features], stack(mattes), stack(rgbs), stack(prompts), stack(targets), stack(weights)


def prompt_loss(logits, target, weight):
    """Weighted BCE plus soft Dice, per sample then averaged."""
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none").mean(dim=(1, 2, 3))
    probability = torch.sigmoid(logits) * weight
    overlap = (probability * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * overlap + 1) / (probability.sum(dim=(1, 2, 3)) + (target * weight).sum(dim=(1, 2, 3)) + 1)
    return (bce + dice).mean()


def evaluate(head, views: list[dict], seed: int = 123) -> dict:
    """Mean IoU (threshold 0.5, at 1/4) per prompt kind on ``views``' objects, prompts drawn with ``seed``."""
    import torch

    from liwi_diffusers.models.prompt_head import prompt_maps
    from liwi_diffusers.tools.learned_prompts import deepest_point

    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {"box": [], "point": []}
    head.eval()
    with torch.no_grad():
        for view in views:
            for instance in [view["target"]] if view["target"] >= 0 else range(len(view["masks"])):
                mask = view["masks"][instance] > 0.5
                ys, xs = np.nonzero(mask)
                box = (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
                for kind, maps in (
                    ("box", prompt_maps(mask.shape, box=box)),
                    ("point", prompt_maps(mask.shape, points=[deepest_point(mask)])),
                ):
                    logits = head(
                        [f.float()[None] for f in view["features"]],
                        view["matte"].float()[None, None],
                        view["rgb"].permute(2, 0, 1).float()[None] / 255.0,
                        maps[None],
                    )
                    predicted = logits[0, 0].numpy() > 0
                    union = (predicted | mask).sum()
                    scores[kind].append(float((predicted & mask).sum() / union) if union else 1.0)
    head.train()
    del rng
    return {kind: float(np.mean(values)) for kind, values in scores.items()} | {"objects": len(scores["box"])}


def train(views_dir: Path, out: Path, epochs: int, batch_size: int, learning_rate: float, seed: int) -> dict:
    import torch

    from liwi_diffusers.models.prompt_head import PromptHead

    torch.manual_seed(seed)
    # Gradients of saturated logits underflow into subnormal floats, which x86 CPUs handle tens of times slower
    # (measured: an epoch went from 249 s to over 800 s once training had settled).
    torch.set_flush_denormal(True)
    rng = np.random.default_rng(seed)
    views = load_views(views_dir)
    held_out = [v for v in views if v["photo"] % 10 == 0]
    training = [v for v in views if v["photo"] % 10 != 0]
    print(f"{len(training)} training views, {len(held_out)} held-out views", flush=True)
    head = PromptHead(**HEAD_CONFIG)
    optimiser = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps_per_epoch = -(-sum(1 if v["target"] >= 0 else min(2, len(v["masks"])) for v in training) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=learning_rate, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    history, best, started = [], None, time.time()
    for epoch in range(epochs):
        items = training_items(training, rng)
        losses = []
        for start in range(0, len(items), batch_size):
            features, matte, rgb, prompts, target, weight = batch_tensors(
                training, items[start : start + batch_size], rng
            )
            loss = prompt_loss(head(features, matte, rgb, prompts), target, weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if schedule.last_epoch + 1 < schedule.total_steps:
                schedule.step()
            losses.append(float(loss.detach()))
            if len(losses) % 50 == 0:
                print(f"  epoch {epoch + 1} step {len(losses)}: loss {np.mean(losses[-50:]):.4f}", flush=True)
        scores = evaluate(head, held_out)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **scores, "seconds": time.time() - started})
        print(json.dumps(history[-1]), flush=True)
        quality = scores["box"] + scores["point"]
        if best is None or quality > best[0]:
            best = (quality, epoch + 1)
    head.save_pretrained(out / "prompt-head")  # the last epoch: the schedule has annealed by then
    summary = {
        "head_config": HEAD_CONFIG,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "training_views": len(training),
        "held_out_views": len(held_out),
        "best_held_out_epoch": best[1],
        "saved_epoch": epochs,
        "history": history,
        "seconds": time.time() - started,
        "threads": torch.get_num_threads(),
    }
    (out / "prompt-head" / "training_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", type=Path, required=True, help="folder of the bare repository snapshots")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--open-licences-only", action="store_true", help="no photos under NonCommercial licences")
    parser.add_argument("--extract-only", action="store_true")
    parser.add_argument("--skip-extract", action="store_true", help="train on the views already in OUT/views")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.skip_extract:
        views = extract_views(args.mirror, args.output / "views", args.open_licences_only, args.seed)
        print(f"{views} views in {args.output / 'views'}")
    if args.extract_only:
        return
    import torch

    torch.set_num_threads(args.threads)
    summary = train(args.output / "views", args.output, args.epochs, args.batch_size, args.learning_rate, args.seed)
    print(f"{summary['seconds']:.0f} s; the last epoch saved to {args.output / 'prompt-head'}")


if __name__ == "__main__":
    main()
