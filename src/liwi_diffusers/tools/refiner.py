"""The matte refiner: a segmenter's coarse matte made clean at the photo's resolution, on its uncertain band only.

`MatteRefiner` runs an `AlphaDecoder` (the module the LiWi pipeline uses as its ``alpha_decoder``) on the tiles of
the photo that hold the matte's uncertain band: where the coverage is strictly between ``low`` and ``high``, plus a
few pixels either side of its 0.5 level. Everywhere else the coverage is kept as it is, so a 12 MP photo costs
what its object outlines cost, not what its area costs.

    >>> from liwi_diffusers.tools import MatteRefiner, ToolChainDecomposer
    >>> refiner = MatteRefiner.from_pretrained("restoration")        # the shipped weights (a few hundred kB)
    >>> clean = refiner(photo, coverage)                              # (H, W) float32 in [0, 1]
    >>> layered = ToolChainDecomposer(refiner=refiner)(photo)         # refined after the segmenter

torch is imported when a refiner is built, not when `liwi_diffusers.tools` is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._utils import as_rgb, dilate, erode

__all__ = ["SHIPPED_REFINERS", "MatteRefiner", "RefinerError", "shipped_refiner_path"]

_SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "checkpoints" / "matte-refiner"
SHIPPED_REFINERS: dict[str, str] = {
    "restoration": "trained with degradation-restoration on composites of real cut-outs (the one to use)",
    "clean-only": "the same recipe without degradations (the ablation's control; it learns almost nothing)",
}


class RefinerError(ValueError):
    """A refiner that cannot be loaded, or a matte it cannot refine."""


def shipped_refiner_path(name: str) -> Path:
    """The folder of shipped refiner weights ``name`` (``"restoration"`` or ``"clean-only"``)."""
    if name not in SHIPPED_REFINERS:
        raise RefinerError(f"no shipped refiner named {name!r}; shipped: {', '.join(SHIPPED_REFINERS)}")
    path = _SHIPPED_ROOT / name
    if not (path / "config.json").is_file():
        raise RefinerError(f"shipped refiner {name!r} is missing from {path}: reinstall liwi-diffusers")
    return path


class MatteRefiner:
    """Refine a soft object matte with an `AlphaDecoder`, tile by tile over its uncertain band.

    Args:
        decoder: the trained `AlphaDecoder` (``image_channels=3``).
        low, high: coverage strictly between them is uncertain.
        band_radius: the band is the uncertain pixels and the 0.5 level, each grown by this many pixels; the
            refined matte replaces the coverage only there.
        tile: side of the square tiles the band is cut into; each is refined with ``margin`` pixels of context
            on every side (the decoder was trained on windows of about ``tile + 2 * margin``).
        batch_size: tiles per forward pass.
        edge_only: the band is the 0.5 level alone, grown by ``band_radius`` (uncertain pixels away from the
            outline, e.g. the inside of a dark object the segmenter is unsure of, are kept as they are).
        device: where the decoder runs.
    """

    def __init__(
        self,
        decoder: Any,
        low: float = 0.02,
        high: float = 0.98,
        band_radius: int = 8,
        tile: int = 128,
        margin: int = 32,
        batch_size: int = 8,
        edge_only: bool = False,
        device: str = "cpu",
    ) -> None:
        from ..models.alpha_decoder import AlphaDecoder

        if not isinstance(decoder, AlphaDecoder):
            raise RefinerError(f"decoder must be an AlphaDecoder, got {type(decoder).__name__}")
        if decoder.config.image_channels != 3:
            raise RefinerError(
                f"the refiner needs an RGB decoder (image_channels=3), got {decoder.config.image_channels}"
            )
        if not 0.0 <= low < high <= 1.0:
            raise RefinerError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
        if tile < 16 or margin < 0 or band_radius < 0 or batch_size < 1:
            raise RefinerError(
                f"need tile >= 16, margin >= 0, band_radius >= 0, batch_size >= 1; got {tile}, {margin}, "
                f"{band_radius}, {batch_size}"
            )
        self.decoder = decoder.eval().to(device)
        self.low, self.high, self.band_radius = low, high, band_radius
        self.tile, self.margin, self.batch_size = tile, margin, batch_size
        self.edge_only = edge_only
        self.device = device

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = "restoration", **kwargs: Any) -> MatteRefiner:
        """Load shipped weights by name (``"restoration"``, ``"clean-only"``) or an `AlphaDecoder` folder.

        Raises `RefinerError` (one line) for a missing folder or weights that do not match their config.
        """
        from ..models.alpha_decoder import AlphaDecoder

        text = os.fspath(name_or_path)
        path = shipped_refiner_path(text) if text in SHIPPED_REFINERS else Path(text)
        if not (path / "config.json").is_file():
            raise RefinerError(
                f"{text}: not a refiner folder (no config.json); use one of {', '.join(SHIPPED_REFINERS)} or a folder "
                f"written by AlphaDecoder.save_pretrained"
            )
        try:
            decoder = AlphaDecoder.from_pretrained(path, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            message = f"{path}: the weights do not load into the AlphaDecoder its config describes ({first})"
            raise RefinerError(message) from None
        return cls(decoder, **kwargs)

    # ------------------------------------------------------------------ the refinement
    def band(self, coverage: np.ndarray) -> np.ndarray:
        """Where the refiner may change ``coverage``: its uncertain pixels and its 0.5 level, grown."""
        solid = coverage >= 0.5
        edge = dilate(solid, 1) & ~erode(solid, 1)
        if not self.edge_only:
            edge |= (coverage > self.low) & (coverage < self.high)
        return dilate(edge, self.band_radius)

    def __call__(self, image: Any, coverage: Any) -> np.ndarray:
        """The refined matte of ``coverage`` (``(H, W)`` float or bool, in [0, 1]) in ``image`` (PIL or RGB array).

        Returns float32 ``(H, W)`` in [0, 1]; equal to ``coverage`` outside `band`.
        """
        import torch

        rgb = as_rgb(image)
        cover = _check_matte(coverage, rgb.shape[:2])
        band = self.band(cover)
        out = cover.copy()
        if not band.any():
            return out
        height, width = cover.shape
        tile, margin = self.tile, self.margin
        jobs = []
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                core = (slice(top, min(height, top + tile)), slice(left, min(width, left + tile)))
                if band[core].any():
                    jobs.append((top, left))
        window = tile + 2 * margin
        # Pad once by reflection, so that every tile has its full context window (mirrored at the borders).
        pad = ((margin, margin + tile), (margin, margin + tile))
        padded_rgb = np.pad(rgb, (*pad, (0, 0)), mode="reflect" if min(height, width) > margin + tile else "edge")
        padded_cover = np.pad(cover, pad, mode="reflect" if min(height, width) > margin + tile else "edge")
        dtype = self.decoder.dtype
        with torch.inference_mode():
            for start in range(0, len(jobs), self.batch_size):
                chunk = jobs[start : start + self.batch_size]
                images = np.stack([padded_rgb[t : t + window, s : s + window] for t, s in chunk])
                covers = np.stack([padded_cover[t : t + window, s : s + window] for t, s in chunk])
                image_tensor = torch.from_numpy(images).permute(0, 3, 1, 2).to(self.device, dtype)
                cover_tensor = torch.from_numpy(covers)[:, None].to(self.device, dtype)
                refined = self.decoder(image_tensor, cover_tensor).float().cpu().numpy()[:, 0]
                for (top, left), result in zip(chunk, refined):
                    rows, cols = min(tile, height - top), min(tile, width - left)
                    core = (slice(top, top + rows), slice(left, left + cols))
                    out[core] = np.where(band[core], result[margin : margin + rows, margin : margin + cols], out[core])
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def _check_matte(coverage: Any, shape: tuple[int, int]) -> np.ndarray:
    """``coverage`` as float32 ``(H, W)`` in [0, 1], or a one-line `RefinerError` naming what is wrong."""
    if not isinstance(coverage, np.ndarray):
        raise RefinerError(f"the matte must be a numpy array, got {type(coverage).__name__}")
    array = coverage[:, :, 0] if coverage.ndim == 3 and coverage.shape[2] == 1 else coverage
    if array.ndim != 2:
        raise RefinerError(f"the matte must be (H, W), got shape {coverage.shape}")
    if array.shape != tuple(shape):
        raise RefinerError(
            f"the matte is {array.shape[1]}x{array.shape[0]} but the image is {shape[1]}x{shape[0]}: pass the matte "
            f"at the image's size"
        )
    if array.dtype == bool:
        return array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise RefinerError(
            f"the matte must be float in [0, 1] or bool, got {array.dtype} (for 8-bit mattes divide by 255 first)"
        )
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise RefinerError("the matte contains NaN or infinite values")
    if array.size and (array.min() < -1e-5 or array.max() > 1 + 1e-5):
        raise RefinerError(f"the matte's values must lie in [0, 1], found [{array.min():.4g}, {array.max():.4g}]")
    return np.clip(array, 0.0, 1.0)
