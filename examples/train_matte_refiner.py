"""Recipe of the shipped matte refiner (``liwi_diffusers/checkpoints/matte-refiner``): rebuilds it from nothing.

    liwi models download isnet                                   # the segmenter that cuts the objects out
    python examples/train_matte_refiner.py -o refiner-out --variant restoration   # ~25 min on 1 CPU thread
    python examples/train_matte_refiner.py -o refiner-out --variant clean-only    # the ablation's control

1. Cut-outs (ADD's foreground curation): every bundled photo (`liwi_dataset_builder.sample_data`) is decomposed by
   the tool chain with the learned segmenter (peeling, band matting, straight colour; no shadows), and each object
   layer becomes a cut-out. Backgrounds: the bundled photos themselves and the texture photos. Cached in
   ``OUT/cutouts.npz`` (about 4 minutes on 2 busy cores; reused by later runs).
2. Training: every step composes fresh crops (`liwi_diffusers.training.refiner.composite_crop`: a cut-out over a
   background crop, sometimes another one behind or in front, JPEG-compressed), damages the exact matte with
   `degrade_matte` (``--variant restoration``) or keeps it (``clean-only``), and fits an `AlphaDecoder` with the
   boundary-weighted L1 `refiner_loss`. One torch thread; seeded, so a rerun gives the same weights on the same
   machine.
3. Output: ``OUT/<variant>/`` (``AlphaDecoder.save_pretrained``: config.json + safetensors) and
   ``OUT/<variant>/training_summary.json`` (steps, time, losses). Copy the folder to
   ``src/liwi_diffusers/checkpoints/matte-refiner/<variant>`` to ship it.

None of the real-photo benchmark's photos (``benchmarks/data/real``) is used: they are the evaluation set.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import numpy as np
import torch

from liwi_diffusers.models.alpha_decoder import AlphaDecoder
from liwi_diffusers.training.refiner import Cutout, RefinerDegradation, make_refiner_batch, refiner_loss

TEXTURES = ("grass", "gravel", "brick")
DECODER_CONFIG = {"image_channels": 3, "hidden_channels": 16, "num_blocks": 4, "refine_blocks": 1}


def build_cutouts(path: Path, max_side: int = 1024) -> tuple[list[Cutout], list[np.ndarray]]:
    """Cut-outs and backgrounds from the bundled photos (cached in ``path``)."""
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        names = [str(n) for n in data["names"]]
        cutouts = [Cutout(data[f"rgb{i}"], data[f"alpha{i}"], names[i]) for i in range(len(names))]
        backgrounds = [data[f"background{i}"] for i in range(int(data["num_backgrounds"]))]
        return cutouts, backgrounds
    from PIL import Image

    from liwi_dataset_builder.sample_data import sample_photo_loaders
    from liwi_diffusers.layers import alpha_bbox
    from liwi_diffusers.tools import ToolChainDecomposer

    options = {"segmenter": "isnet", "extract_shadows": False, "max_rounds": 2}
    if "tiles" in inspect.signature(ToolChainDecomposer).parameters:
        options["tiles"] = 0  # the shipped weights were trained on cut-outs from whole-photo passes only
    decomposer = ToolChainDecomposer(**options)
    cutouts, backgrounds = [], []
    for name, load in sample_photo_loaders().items():
        image = load()
        if max(image.size) > max_side:
            factor = max_side / max(image.size)
            image = image.resize((round(image.size[0] * factor), round(image.size[1] * factor)), Image.LANCZOS)
        rgb = np.asarray(image, np.float32) / 255.0
        backgrounds.append(rgb)
        if name in TEXTURES:
            continue
        layered = decomposer(rgb)
        for index, layer in enumerate(layered.foregrounds):
            box = alpha_bbox(layer[:, :, 3])
            if box is None:
                continue
            left, top, right, bottom = box
            crop = layer[top:bottom, left:right]
            cutouts.append(Cutout(crop[:, :, :3].copy(), crop[:, :, 3].copy(), f"{name}-{index}"))
        print(f"  {name}: {layered.num_objects} cut-outs", flush=True)
    arrays: dict[str, np.ndarray] = {"names": np.array([c.name for c in cutouts])}
    for i, cutout in enumerate(cutouts):
        arrays[f"rgb{i}"], arrays[f"alpha{i}"] = cutout.rgb.astype(np.float32), cutout.alpha.astype(np.float32)
    for i, background in enumerate(backgrounds):
        arrays[f"background{i}"] = background
    arrays["num_backgrounds"] = np.array(len(backgrounds))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return cutouts, backgrounds


def train(
    cutouts: list[Cutout],
    backgrounds: list[np.ndarray],
    variant: str,
    steps: int,
    batch_size: int,
    size: int,
    learning_rate: float,
    seed: int,
    log_every: int = 50,
) -> tuple[AlphaDecoder, dict]:
    """Fit a fresh `AlphaDecoder`; returns it and a summary (losses, time)."""
    torch.manual_seed(seed)
    decoder = AlphaDecoder(**DECODER_CONFIG)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=learning_rate)  # no weight decay
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.05)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    degradation = RefinerDegradation() if variant == "restoration" else None
    losses, identity_losses, start = [], [], time.perf_counter()
    for step in range(steps):
        image, coarse, clean = make_refiner_batch(
            cutouts, backgrounds, batch_size, rng, generator, size=size, degradation=degradation
        )
        loss = refiner_loss(decoder(image, coarse), clean, coarse)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        identity_losses.append(float(refiner_loss(coarse, clean, coarse)))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            window = slice(max(0, step + 1 - log_every), step + 1)
            print(
                f"  step {step + 1}/{steps}: loss {np.mean(losses[window]):.4f} (coarse as it is: "
                f"{np.mean(identity_losses[window]):.4f}), {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    tail = slice(max(0, steps - 200), steps)
    summary = {
        "variant": variant,
        "steps": steps,
        "batch_size": batch_size,
        "crop": size,
        "learning_rate": learning_rate,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - start, 1),
        "parameters": sum(p.numel() for p in decoder.parameters()),
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_200": float(np.mean(losses[tail])),
        "coarse_loss_last_200": float(np.mean(identity_losses[tail])),
        "cutouts": [c.name for c in cutouts],
        "backgrounds": len(backgrounds),
        "decoder_config": DECODER_CONFIG,
    }
    return decoder, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--variant", choices=("restoration", "clean-only"), default="restoration")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cutouts, backgrounds = build_cutouts(args.output / "cutouts.npz")
    print(f"{len(cutouts)} cut-outs, {len(backgrounds)} backgrounds ({time.perf_counter() - started:.0f} s)")
    decoder, summary = train(
        cutouts, backgrounds, args.variant, args.steps, args.batch_size, args.crop, args.learning_rate, args.seed
    )
    summary["command"] = "python examples/train_matte_refiner.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "output"
    )
    folder = args.output / args.variant
    decoder.save_pretrained(folder)
    (folder / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"saved {folder} ({summary['parameters']} parameters, {summary['seconds']:.0f} s of training)")


if __name__ == "__main__":
    main()
