"""Boundary degradations for the degradation-restoration objective (paper section 4).

The alpha decoder (and, through a degraded condition image, the transformer) learns to recover clean mattes
and colours from deliberately damaged ones. Every degradation here works on channel-first float tensors in
[0, 1], is differentiable-free (applied to targets, not predictions) and is deterministic for a
`torch.Generator`, so a training run and its tests can replay it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "DegradationConfig",
    "blur",
    "boundary_band",
    "degrade_alpha",
    "degrade_image_boundaries",
    "dilate",
    "erode",
    "jpeg_like",
]


@dataclass
class DegradationConfig:
    """Probabilities and strengths of the random degradations (per sample).

    Attributes:
        p_erode, p_dilate, p_blur, p_noise, p_jpeg: probability of each degradation.
        max_radius: largest erosion/dilation radius in pixels.
        max_blur_sigma: largest Gaussian blur sigma in pixels.
        max_noise: largest standard deviation of the additive noise.
        jpeg_quality: range of the JPEG-like quality factor (lower is coarser).
        coarse_factor: the matte is first brought down to ``1 / coarse_factor`` and back up (the resolution the
            transformer works at; the VAE factor), as the alpha decoder sees it at inference.
        band_width: half width in pixels of the boundary band where image degradations are applied.
    """

    p_erode: float = 0.3
    p_dilate: float = 0.3
    p_blur: float = 0.5
    p_noise: float = 0.5
    p_jpeg: float = 0.3
    max_radius: int = 3
    max_blur_sigma: float = 2.0
    max_noise: float = 0.08
    jpeg_quality: tuple[int, int] = (20, 70)
    coarse_factor: int = 8
    band_width: int = 4


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def erode(alpha: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-level erosion of ``(N, 1, H, W)`` with a ``(2r+1)`` square (min filter)."""
    if radius <= 0:
        return alpha
    return -F.max_pool2d(-alpha, 2 * radius + 1, stride=1, padding=radius)


def dilate(alpha: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-level dilation of ``(N, 1, H, W)`` with a ``(2r+1)`` square (max filter)."""
    if radius <= 0:
        return alpha
    return F.max_pool2d(alpha, 2 * radius + 1, stride=1, padding=radius)


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` (reflect padding)."""
    if sigma <= 0:
        return image
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    mode = "reflect" if min(image.shape[-2:]) > radius else "replicate"
    padded = F.pad(image, (radius, radius, radius, radius), mode=mode)
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    return F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)


def _dct_matrix(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    index = torch.arange(size, device=device, dtype=dtype)
    matrix = torch.cos(math.pi * (2 * index[None, :] + 1) * index[:, None] / (2 * size)) * math.sqrt(2 / size)
    matrix[0] = matrix[0] / math.sqrt(2)
    return matrix


def jpeg_like(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-like compression of ``(N, C, H, W)``: 8x8 block DCT, uniform quantisation, inverse DCT.

    Quantisation steps grow with frequency and shrink with ``quality`` (1..100), which gives JPEG's blocking
    and ringing around edges without an encoder. Sizes that are not multiples of 8 are padded by replication.
    """
    quality = int(min(max(quality, 1), 100))
    batch, channels, height, width = image.shape
    pad_h, pad_w = (-height) % 8, (-width) % 8
    padded = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else image
    blocks = padded.unfold(2, 8, 8).unfold(3, 8, 8)  # (N, C, H/8, W/8, 8, 8)
    dct = _dct_matrix(8, image.device, image.dtype)
    coefficients = dct @ (blocks - 0.5) @ dct.T
    frequency = torch.arange(8, device=image.device, dtype=image.dtype)
    scale = (50.0 / quality) if quality < 50 else (2.0 - quality / 50.0)
    step = (1.0 + frequency[:, None] + frequency[None, :]) * (4.0 / 255.0) * max(scale, 0.05)
    restored = dct.T @ (torch.round(coefficients / step) * step) @ dct + 0.5
    restored = restored.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, padded.shape[2], padded.shape[3])
    return restored[:, :, :height, :width].clamp(0, 1)


def boundary_band(alpha: torch.Tensor, width: int) -> torch.Tensor:
    """Where the matte changes: ``dilate(alpha, w) - erode(alpha, w)`` (``(N, 1, H, W)``, in [0, 1])."""
    return (dilate(alpha, width) - erode(alpha, width)).clamp(0, 1)


def _coarse(alpha: torch.Tensor, factor: int) -> torch.Tensor:
    if factor <= 1:
        return alpha
    height, width = alpha.shape[-2:]
    small = F.interpolate(alpha, size=(max(1, height // factor), max(1, width // factor)), mode="area")
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)


def degrade_alpha(
    alpha: torch.Tensor, config: DegradationConfig | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly damaged copies of clean mattes ``(N, 1, H, W)``: coarse resampling, then per sample
    erosion or dilation, blur, noise and JPEG-like compression, each with its probability.

    The same ``generator`` state gives the same result.
    """
    config = config or DegradationConfig()
    out = []
    for matte, clean in zip(_coarse(alpha, config.coarse_factor).split(1), alpha.split(1)):
        if _uniform(generator) < config.p_erode:
            matte = erode(matte, int(torch.randint(1, config.max_radius + 1, (), generator=generator)))
        elif _uniform(generator) < config.p_dilate:
            matte = dilate(matte, int(torch.randint(1, config.max_radius + 1, (), generator=generator)))
        if _uniform(generator) < config.p_blur:
            matte = blur(matte, _uniform(generator, 0.5, config.max_blur_sigma))
        if _uniform(generator) < config.p_noise:
            sigma = _uniform(generator, 0.0, config.max_noise)
            noise = torch.randn(matte.shape, generator=generator, dtype=matte.dtype).to(matte.device)
            matte = matte + sigma * noise * boundary_band(clean, config.band_width)
        if _uniform(generator) < config.p_jpeg:
            matte = jpeg_like(matte.clamp(0, 1), int(torch.randint(*config.jpeg_quality, (), generator=generator)))
        out.append(matte.clamp(0, 1))
    return torch.cat(out) if out else alpha.clone()


def degrade_image_boundaries(
    image: torch.Tensor,
    alpha_union: torch.Tensor,
    config: DegradationConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Damage ``image`` ``(N, C, H, W)`` around object boundaries (band of ``alpha_union`` ``(N, 1, H, W)``):
    blur, noise and JPEG-like compression, blended in only inside the band, so colours bleed across edges as in
    real photos and cut-outs. Deterministic for a ``generator``.
    """
    config = config or DegradationConfig()
    band = blur(boundary_band(alpha_union, config.band_width), 1.0).clamp(0, 1)
    out = []
    for picture, mask in zip(image.split(1), band.split(1)):
        damaged = picture
        if _uniform(generator) < config.p_blur:
            damaged = blur(damaged, _uniform(generator, 0.5, config.max_blur_sigma))
        if _uniform(generator) < config.p_noise:
            noise = torch.randn(damaged.shape, generator=generator, dtype=damaged.dtype).to(damaged.device)
            damaged = damaged + _uniform(generator, 0.0, config.max_noise) * noise
        if _uniform(generator) < config.p_jpeg:
            damaged = jpeg_like(damaged.clamp(0, 1), int(torch.randint(*config.jpeg_quality, (), generator=generator)))
        out.append((mask * damaged + (1 - mask) * picture).clamp(0, 1))
    return torch.cat(out)
