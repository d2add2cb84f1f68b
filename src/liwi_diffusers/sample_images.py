"""Real photos that installed packages ship, for examples, tests, the demo and sample datasets.

Nothing is downloaded: scikit-image bundles these files in its wheel, scikit-learn bundles two
JPEGs. `SAMPLE_IMAGE_LICENCES` records what each one's documentation says about its licence.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

__all__ = ["SAMPLE_IMAGES", "SAMPLE_IMAGE_LICENCES", "load_sample_image"]


def _skimage(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        import skimage.data

        array = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":
            array = array[0]
        return Image.fromarray(array).convert("RGB")

    return load


def _sklearn(filename: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        try:
            from sklearn.datasets import load_sample_image as sklearn_sample
        except ImportError as error:
            raise ImportError(f"sample photo {filename!r} needs scikit-learn: pip install scikit-learn") from error
        return Image.fromarray(sklearn_sample(filename)).convert("RGB")

    return load


SAMPLE_IMAGES: dict[str, Callable[[], Image.Image]] = {
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}

# From the docstrings of skimage.data and sklearn.datasets.load_sample_image.
SAMPLE_IMAGE_LICENCES: dict[str, str] = {
    "astronaut": "public domain (NASA)",
    "coffee": "CC0 (Rachel Michetti)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "rocket": "public domain (SpaceX)",
    "motorcycle": "Middlebury 2014 stereo benchmark; no explicit licence, research use with citation",
    "china": "CC-BY (scikit-learn sample image)",
    "flower": "CC-BY (scikit-learn sample image)",
}


def load_sample_image(name: str) -> Image.Image:
    """A bundled photo by name (see `SAMPLE_IMAGES`), as an RGB PIL image."""
    if name not in SAMPLE_IMAGES:
        raise KeyError(f"unknown sample image {name!r}; choose one of: {', '.join(SAMPLE_IMAGES)}")
    return SAMPLE_IMAGES[name]()
