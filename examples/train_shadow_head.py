"""Recipe of the shipped shadow head (``liwi_diffusers/checkpoints/shadow-head``): rebuilds it from nothing.

    liwi models download isnet                                           # the segmenter that cuts the objects out
    OMP_NUM_THREADS=1 python examples/train_shadow_head.py -o shadow-out   # ~35 min on 1 CPU thread

1. Cut-outs: the matte refiner's (``examples/train_matte_refiner.py``'s ``build_cutouts``: the tool chain with the
   learned segmenter on every bundled photo), cached in ``OUT/cutouts.npz`` (``--cutouts`` reuses a cache, e.g. the
   refiner recipe's). Only the TRAIN photos below are used; chelsea, china, flower and gravel are held out for
   ``benchmarks/bench_shadow_head.py``; nothing from ``benchmarks/data/real`` (the evaluation set) is used.
2. Samples: ``--samples`` composites (`liwi_diffusers.training.shadow_head.make_shadow_sample`: a cut-out standing
   on a photo crop, sometimes a second one behind, one light per scene: hard or soft cast shadows in any direction
   and length, contact and drop shadows, or none), each with the classical estimate of `DarkeningShadowExtractor`.
3. Training: a `ShadowHead` with 4 image channels (RGB + the classical estimate, zeroed for half of the samples, so
   that the head works alone and as a refiner) fitted with shadow-guided learning (`shadow_guided_loss`: BCE on the
   logits + ``--recomposition-weight`` x the recomposition L1), horizontal flips. One torch thread, seeded.
4. Output: ``OUT/shadow-guided/`` (``ShadowHead.save_pretrained`` + ``training_summary.json``). Copy the folder to
   ``src/liwi_diffusers/checkpoints/shadow-head/shadow-guided`` to ship it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from liwi_diffusers.models.shadow_head import ShadowHead
from liwi_diffusers.tools.shadows import DarkeningShadowExtractor
from liwi_diffusers.training.shadow_head import (
    NoShadowsError,
    ShadowTrainingSet,
    head_inputs,
    make_shadow_sample,
    shadow_guided_loss,
)

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "motorcycle", "grace_hopper", "grass", "brick")
HELD_OUT_PHOTOS = ("chelsea", "china", "flower", "gravel")  # the synthetic benchmark's (bench_shadow_head.py)
BACKGROUND_ORDER = (  # the order of liwi_dataset_builder.sample_data.sample_photo_loaders, as cutouts.npz keeps it
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "motorcycle",
    "china",
    "flower",
    "grace_hopper",
    "grass",
    "gravel",
    "brick",
)
MAX_CUTOUTS_PER_PHOTO = 2  # the rocket photo gives four thin towers: keep two so that one photo does not dominate
HEAD_CONFIG = {"image_channels": 4, "hidden_channels": 16, "num_downsamples": 2, "num_blocks": 4}


def load_cutouts(path: Path, photos: tuple[str, ...]) -> tuple[list[tuple[np.ndarray, np.ndarray]], list, list]:
    """``(cutouts, backgrounds, names)`` of ``photos`` from the refiner recipe's cut-out cache (built if missing)."""
    if not path.is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from train_matte_refiner import build_cutouts

        build_cutouts(path)
    data = np.load(path, allow_pickle=False)
    names = [str(n) for n in data["names"]]
    cutouts, chosen, per_photo = [], [], {}
    for index, name in enumerate(names):
        photo = name.rsplit("-", 1)[0]
        if photo in photos and per_photo.get(photo, 0) < MAX_CUTOUTS_PER_PHOTO:
            per_photo[photo] = per_photo.get(photo, 0) + 1
            cutouts.append((data[f"rgb{index}"], data[f"alpha{index}"]))
            chosen.append(name)
    count = int(data["num_backgrounds"])
    if count != len(BACKGROUND_ORDER):
        raise SystemExit(f"{path}: expected {len(BACKGROUND_ORDER)} backgrounds, found {count}; rebuild it")
    backgrounds = [data[f"background{i}"] for i, name in enumerate(BACKGROUND_ORDER) if name in photos]
    return cutouts, backgrounds, chosen


def build_training_set(cutouts, backgrounds, count: int, size: int, seed: int) -> ShadowTrainingSet:
    """``count`` composites with their classical estimates (seeded)."""
    rng = np.random.default_rng(seed)
    classical = DarkeningShadowExtractor()
    rows, kinds = [], []  # packed one by one: 8-bit rows, not float samples, stay in memory
    for _ in range(count):
        sample = make_shadow_sample(cutouts, backgrounds, rng, size)
        rows.append(ShadowTrainingSet.pack(sample, classical(sample.photo, sample.matte, sample.occupied)))
        kinds.append(sample.kind)
    return ShadowTrainingSet(torch.from_numpy(np.stack(rows)), kinds)


def train(
    data: ShadowTrainingSet,
    steps: int,
    batch_size: int,
    learning_rate: float,
    recomposition_weight: float,
    p_classical: float,
    seed: int,
    log_every: int = 50,
    save_every: int = 0,
    folder: Path | None = None,
) -> tuple[ShadowHead, dict]:
    """Fit a fresh `ShadowHead` with shadow-guided learning; returns it and a summary."""
    torch.manual_seed(seed)
    head = ShadowHead(**HEAD_CONFIG)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(seed + 1)
    history: dict[str, list[float]] = {"loss": [], "bce": [], "recomposition": []}
    start = time.perf_counter()
    for step in range(steps):
        indices = rng.integers(0, len(data), batch_size)
        batch = data.batch(indices, flips=rng.random(batch_size) < 0.5)
        use_classical = torch.from_numpy(rng.random(batch_size) < p_classical)
        logits = head.logits(*head_inputs(batch, HEAD_CONFIG["image_channels"], use_classical))
        loss, parts = shadow_guided_loss(logits, batch, recomposition_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history["loss"].append(float(loss.detach()))
        history["bce"].append(parts["bce"])
        history["recomposition"].append(parts["recomposition"])
        if (step + 1) % log_every == 0 or step + 1 == steps:
            window = slice(max(0, step + 1 - log_every), step + 1)
            print(
                f"  step {step + 1}/{steps}: loss {np.mean(history['loss'][window]):.4f} (bce "
                f"{np.mean(history['bce'][window]):.4f}, recomposition {np.mean(history['recomposition'][window]):.4f})"
                f", {time.perf_counter() - start:.0f} s",
                flush=True,
            )
        if save_every and folder is not None and (step + 1) % save_every == 0 and step + 1 < steps:
            head.save_pretrained(folder / f"step-{step + 1}")  # to look at while it trains
    tail = slice(max(0, steps - 200), steps)
    summary = {
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "recomposition_weight": recomposition_weight,
        "p_classical": p_classical,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "train_seconds": round(time.perf_counter() - start, 1),
        "parameters": sum(p.numel() for p in head.parameters()),
        "loss_first_50": float(np.mean(history["loss"][:50])),
        "loss_last_200": float(np.mean(history["loss"][tail])),
        "bce_last_200": float(np.mean(history["bce"][tail])),
        "recomposition_last_200": float(np.mean(history["recomposition"][tail])),
        "head_config": HEAD_CONFIG,
    }
    return head, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--cutouts", type=Path, default=None, help="cut-out cache (default OUT/cutouts.npz)")
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--recomposition-weight", type=float, default=1.0)
    parser.add_argument("--p-classical", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=0, help="also save the head every N steps (0: at the end)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cutouts, backgrounds, names = load_cutouts(args.cutouts or args.output / "cutouts.npz", TRAIN_PHOTOS)
    try:
        data = build_training_set(cutouts, backgrounds, args.samples, args.size, args.seed)
    except NoShadowsError as error:
        raise SystemExit(f"train_shadow_head.py: error: {error}") from None
    data_seconds = time.perf_counter() - started
    kinds = {kind: data.kinds.count(kind) for kind in sorted(set(data.kinds))}
    print(
        f"{len(data)} samples from {len(cutouts)} cut-outs, {len(backgrounds)} backgrounds: {kinds} "
        f"({data_seconds:.0f} s)"
    )
    head, summary = train(
        data,
        args.steps,
        args.batch_size,
        args.learning_rate,
        args.recomposition_weight,
        args.p_classical,
        args.seed,
        save_every=args.save_every,
        folder=args.output / "steps",
    )
    summary.update(
        {
            "samples": len(data),
            "sample_size": args.size,
            "shadow_kinds": kinds,
            "data_seconds": round(data_seconds, 1),
            "cutouts": names,
            "train_photos": list(TRAIN_PHOTOS),
            "held_out_photos": list(HELD_OUT_PHOTOS),
            "command": "python examples/train_shadow_head.py "
            + " ".join(
                f"--{k.replace('_', '-')} {v}"
                for k, v in vars(args).items()
                if k not in ("output", "cutouts", "save_every")
            ),
        }
    )
    folder = args.output / "shadow-guided"
    head.save_pretrained(folder)
    (folder / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"saved {folder} ({summary['parameters']} parameters, {summary['train_seconds']:.0f} s of training)")


if __name__ == "__main__":
    main()
