"""A small LiWi dataset built from photos that installed packages ship (nothing is downloaded).

Photos: scikit-image's astronaut, coffee, chelsea, rocket and motorcycle, scikit-learn's china and
flower, matplotlib's grace_hopper, and scikit-image's grass, gravel and brick textures (clean
backgrounds). Used by the tests, examples, metrics and training recipes:

    from liwi_dataset_builder.sample_data import build_sample_dataset
    path = build_sample_dataset("liwi-sample", num_samples=24, resolution=192)
    ds = load_dataset(str(path), split="train")

or ``python -m liwi_dataset_builder.sample_data OUT``.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from liwi_diffusers.sample_images import SAMPLE_IMAGES

from .atomic import atomic_write_bytes

__all__ = ["SAMPLE_LICENSE_NOTES", "build_sample_dataset", "export_sample_photos", "sample_photo_loaders"]

SAMPLE_LICENSE_NOTES = [
    "scikit-image sample data (astronaut, coffee, chelsea, rocket, motorcycle, grass, gravel, brick): public "
    "domain, CC0 or CC-BY as listed in skimage/data/README.txt.",
    "scikit-learn sample images china.jpg and flower.jpg: CC-BY (see sklearn/datasets/images/README.txt).",
    "matplotlib sample data grace_hopper.jpg: public domain (US Navy photo).",
]


def _texture(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        import skimage.data

        return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")

    return load


def _grace_hopper() -> Image.Image:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(handle).convert("RGB")


def sample_photo_loaders() -> dict[str, Callable[[], Image.Image]]:
    """Name -> loader of every bundled photo available in this environment."""
    loaders: dict[str, Callable[[], Image.Image]] = dict(SAMPLE_IMAGES)
    loaders["grace_hopper"] = _grace_hopper
    for name in ("grass", "gravel", "brick"):
        loaders[name] = _texture(name)
    return loaders


def export_sample_photos(folder: str | os.PathLike[str], names: Sequence[str] | None = None) -> list[Path]:
    """Write the bundled photos to ``folder`` as PNG (lossless, so builds from them are reproducible).

    Photos whose package is missing (scikit-learn, matplotlib) are left out. Existing files are kept.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, load in sample_photo_loaders().items():
        if names is not None and name not in names:
            continue
        path = folder / f"{name}.png"
        if not path.exists():
            try:
                image = load()
            except (ImportError, OSError):
                continue
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def build_sample_dataset(
    output: str | os.PathLike[str],
    num_samples: int = 24,
    resolution: int = 192,
    workers: int = 1,
    seed: int = 0,
    chunk_size: int = 8,
    test_fraction: float = 0.2,
    photos: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Path:
    """Build (or finish) the sample dataset at ``output`` and return its path.

    The photos are exported to ``photos`` (default: ``OUT/.build/sample-photos``) first. A few
    dozen samples at 192 px take well under a minute on two cores.
    """
    from .build import BuildConfig, build_dataset

    output = Path(output)
    photo_dir = Path(photos) if photos is not None else output / ".build" / "sample-photos"
    export_sample_photos(photo_dir)
    config = BuildConfig(
        sources=[str(photo_dir)],
        output=str(output),
        num_samples=num_samples,
        resolution=resolution,
        workers=workers,
        seed=seed,
        chunk_size=chunk_size,
        test_fraction=test_fraction,
        license="other",
        license_notes=SAMPLE_LICENSE_NOTES,
        name="liwi-sample",
        progress=progress,
    )
    build_dataset(config)
    return output


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the small LiWi sample dataset from bundled photos.")
    parser.add_argument("output", help="dataset folder")
    parser.add_argument("-n", "--num-samples", type=int, default=24)
    parser.add_argument("-r", "--resolution", type=int, default=192)
    parser.add_argument("-w", "--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_sample_dataset(args.output, args.num_samples, args.resolution, args.workers, args.seed, progress=True)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
