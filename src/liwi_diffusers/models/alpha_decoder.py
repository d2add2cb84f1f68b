"""The alpha decoder: refines an object's coarse (upsampled) alpha matte at the image's full resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class _ResidualBlock(nn.Module):
    """Two dilated 3x3 convolutions with a skip connection."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.conv2(F.silu(self.conv1(F.silu(hidden))))


class AlphaDecoder(ModelMixin, ConfigMixin):
    r"""Full-resolution alpha matte from the image and a coarse alpha: ``alpha = clamp(coarse + residual, 0, 1)``.

    A light full-resolution branch (one convolution in, one out) keeps edges sharp; a context branch at a
    quarter of the resolution (two stride-2 convolutions, dilated residual blocks) sees the object's
    surroundings and is added back after bilinear upsampling. ``refine_blocks`` optional full-resolution
    residual blocks then work on the sum, so that an edge can be moved to the photo's own edge at pixel
    precision. The output convolution starts at zero, so an untrained decoder returns the coarse alpha
    unchanged. It is trained with the degradation-restoration objective: recover the clean matte from an
    eroded, dilated, blurred, resampled or noisy one, given the image.

    The same module serves the diffusion pipeline (its ``alpha_decoder`` component) and the tool chain, where
    `liwi_diffusers.tools.MatteRefiner` runs it on the tiles of a photo that hold a segmenter matte's uncertain
    band (the shipped weights are in ``liwi_diffusers/checkpoints/matte-refiner``).

    Args:
        image_channels: channels of the guiding image (3 for RGB).
        hidden_channels: width of the full-resolution branch (the context branch is twice as wide).
        num_blocks: residual blocks in the context branch (dilations 1, 2, 4, ...).
        refine_blocks: full-resolution residual blocks after the context is added back (0: none, as in
            checkpoints saved before this option existed).
    """

    @register_to_config
    def __init__(
        self, image_channels: int = 3, hidden_channels: int = 16, num_blocks: int = 2, refine_blocks: int = 0
    ) -> None:
        super().__init__()
        if min(image_channels, hidden_channels) < 1 or min(num_blocks, refine_blocks) < 0:
            raise ValueError(
                f"AlphaDecoder needs image_channels, hidden_channels >= 1 and num_blocks, refine_blocks >= 0, got "
                f"{image_channels}, {hidden_channels}, {num_blocks}, {refine_blocks}"
            )
        wide = 2 * hidden_channels
        self.conv_in = nn.Conv2d(image_channels + 1, hidden_channels, 3, padding=1)
        self.down1 = nn.Conv2d(hidden_channels, wide, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(wide, wide, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[_ResidualBlock(wide, dilation=2**i) for i in range(num_blocks)])
        self.context_out = nn.Conv2d(wide, hidden_channels, 1)
        if refine_blocks:  # absent (not an empty module) when 0, so older state dicts load unchanged
            self.refine = nn.Sequential(*[_ResidualBlock(hidden_channels) for _ in range(refine_blocks)])
        self.conv_out = nn.Conv2d(hidden_channels, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, image: torch.Tensor, coarse_alpha: torch.Tensor) -> torch.Tensor:
        """Refine ``coarse_alpha`` ``(N, 1, H, W)`` guided by ``image`` ``(N, C, H, W)``; both in [0, 1].

        Returns the refined alpha, ``(N, 1, H, W)`` in [0, 1].
        """
        if image.ndim != 4 or coarse_alpha.ndim != 4 or coarse_alpha.shape[1] != 1:
            raise ValueError(
                f"expected image (N, C, H, W) and coarse_alpha (N, 1, H, W), got {tuple(image.shape)} "
                f"and {tuple(coarse_alpha.shape)}"
            )
        if image.shape[1] != self.config.image_channels:
            raise ValueError(f"expected an image with {self.config.image_channels} channels, got {image.shape[1]}")
        if image.shape[0] != coarse_alpha.shape[0] or image.shape[-2:] != coarse_alpha.shape[-2:]:
            raise ValueError(
                f"image {tuple(image.shape)} and coarse_alpha {tuple(coarse_alpha.shape)} differ in batch or size"
            )
        # Channels-last memory: faster convolutions at full resolution on CPU and GPU.
        inputs = (torch.cat([image, coarse_alpha], dim=1) * 2 - 1).contiguous(memory_format=torch.channels_last)
        # Without autograd, activations and sums overwrite tensors nothing reads again: the same values with fewer
        # full-resolution allocations (a quarter of the time at 512 px on a CPU). Autograd needs the inputs kept.
        inplace = not torch.is_grad_enabled()
        full = self.conv_in(inputs)
        context = F.silu(self.down1(F.silu(full)), inplace=inplace)
        context = self.blocks(F.silu(self.down2(context), inplace=inplace))
        context = F.interpolate(self.context_out(context), size=full.shape[-2:], mode="bilinear", align_corners=False)
        fused = full.add_(context) if inplace else full + context
        if self.config.refine_blocks:
            fused = self.refine(fused)
        residual = self.conv_out(F.silu(fused, inplace=inplace))
        return residual.add_(coarse_alpha).clamp_(0.0, 1.0)
