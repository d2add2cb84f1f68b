"""The prompt head: the mask of the object that a box and/or points designate, from a frozen segmenter's features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

PROMPT_CHANNELS = 5  # box interior, box outline distance, positive points, negative points, prompt kinds given


# Copied from liwi_diffusers.models.alpha_decoder._ResidualBlock (one model per file, as in diffusers)
class _ResidualBlock(nn.Module):
    """Two dilated 3x3 convolutions with a skip connection."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.conv2(F.silu(self.conv1(F.silu(hidden))))


class PromptHead(ModelMixin, ConfigMixin):
    r"""Mask logits of the prompted object in one view, at 1/4 of the view's side.

    The view is a square pass of a salient-object segmenter (ISNet); the head reads four of its decoder feature
    maps (at 1/4, 1/8, 1/16 and 1/32 of the view, finest first), its matte and the view's RGB at 1/4, and the
    prompt rasterised at 1/4 (`prompt_maps`). A query vector, the 1/16 features pooled under the prompt (inside the
    box, at the positive points), modulates the coarse features (FiLM) and is compared with every position (a
    cosine-similarity map), so that the head can follow the designated object beyond what is salient. A feature
    pyramid then goes back up from 1/32 to 1/4, taking the prompt maps again at each scale.

    Args:
        feature_channels: channels of the four feature maps, finest first (ISNet: 64, 128, 256, 512).
        hidden_channels: width at 1/16 and 1/8 (half of it at 1/4).
        num_blocks: dilated residual blocks at 1/16 (those at 1/8 are half as many, at least one).
    """

    @register_to_config
    def __init__(
        self,
        feature_channels: tuple[int, int, int, int] = (64, 128, 256, 512),
        hidden_channels: int = 64,
        num_blocks: int = 4,
    ) -> None:
        super().__init__()
        if len(feature_channels) != 4:
            raise ValueError(f"feature_channels must list 4 feature maps (finest first), got {feature_channels}")
        fine, mid, coarse, deepest = (int(c) for c in feature_channels)
        wide, narrow = hidden_channels, max(8, hidden_channels // 2)
        self.query = nn.Linear(coarse, wide)
        self.key = nn.Conv2d(coarse, wide, 1)
        self.film = nn.Linear(wide, 2 * wide)
        self.lateral_deepest = nn.Conv2d(deepest, wide, 1)
        self.lateral_coarse = nn.Conv2d(coarse, wide, 1)
        self.coarse_in = nn.Conv2d(wide + PROMPT_CHANNELS + 2, wide, 3, padding=1)
        self.coarse_blocks = nn.Sequential(*[_ResidualBlock(wide, dilation=2 ** (i % 3)) for i in range(num_blocks)])
        self.lateral_mid = nn.Conv2d(mid, wide, 1)
        self.mid_in = nn.Conv2d(wide + PROMPT_CHANNELS + 1, wide, 3, padding=1)
        self.mid_blocks = nn.Sequential(*[_ResidualBlock(wide) for _ in range(max(1, num_blocks // 2))])
        self.lateral_fine = nn.Conv2d(fine, narrow, 1)
        self.mid_out = nn.Conv2d(wide, narrow, 1)
        self.fine_in = nn.Conv2d(narrow + PROMPT_CHANNELS + 4, narrow, 3, padding=1)
        self.fine_block = _ResidualBlock(narrow)
        self.conv_out = nn.Conv2d(narrow, 1, 3, padding=1)

    def forward(
        self,
        features: list[torch.Tensor],
        matte: torch.Tensor,
        rgb: torch.Tensor,
        prompts: torch.Tensor,
    ) -> torch.Tensor:
        """Mask logits ``(N, 1, H, W)`` at the size of ``matte`` (1/4 of the view).

        Args:
            features: four maps ``(N, C_k, H / 2**k, W / 2**k)`` for k = 0..3 (the finest is at 1/4 of the view).
            matte: ``(N, 1, H, W)`` the segmenter's matte in [0, 1] at 1/4 of the view.
            rgb: ``(N, 3, H, W)`` the view in [0, 1] at 1/4.
            prompts: ``(N, PROMPT_CHANNELS, H, W)`` from `prompt_maps`.
        """
        if len(features) != 4:
            raise ValueError(f"expected 4 feature maps, got {len(features)}")
        fine, mid, coarse, deepest = features
        size = matte.shape[-2:]
        for k, (level, want) in enumerate(zip(features, self.config.feature_channels)):
            expected = (size[0] // 2**k, size[1] // 2**k)
            if level.ndim != 4 or level.shape[1] != want or tuple(level.shape[-2:]) != expected:
                raise ValueError(
                    f"feature map {k}: expected (N, {want}, {expected[0]}, {expected[1]}), got {tuple(level.shape)}"
                )
        if rgb.shape[-2:] != size or prompts.shape[-2:] != size or prompts.shape[1] != PROMPT_CHANNELS:
            raise ValueError(
                f"matte {tuple(matte.shape)}, rgb {tuple(rgb.shape)} and prompts {tuple(prompts.shape)} must share "
                f"their size, with {PROMPT_CHANNELS} prompt channels"
            )
        coarse_prompts = F.adaptive_avg_pool2d(prompts, coarse.shape[-2:])
        # The query: coarse features averaged under the prompt (box interior and positive points).
        weight = coarse_prompts[:, 0:1] + 4.0 * coarse_prompts[:, 2:3]
        weight = weight / weight.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        query = self.query((coarse * weight).sum(dim=(2, 3)))
        keys = self.key(coarse)
        similarity = F.cosine_similarity(keys, query[:, :, None, None], dim=1).unsqueeze(1)
        scale, shift = self.film(F.silu(query)).chunk(2, dim=1)
        hidden = self.lateral_coarse(coarse) + F.interpolate(
            self.lateral_deepest(deepest), size=coarse.shape[-2:], mode="bilinear", align_corners=False
        )
        hidden = hidden * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        coarse_matte = F.adaptive_avg_pool2d(matte, coarse.shape[-2:])
        hidden = self.coarse_in(torch.cat([F.silu(hidden), coarse_prompts, similarity, coarse_matte], dim=1))
        hidden = self.coarse_blocks(hidden)
        hidden = F.interpolate(hidden, size=mid.shape[-2:], mode="bilinear", align_corners=False)
        mid_prompts = F.adaptive_avg_pool2d(prompts, mid.shape[-2:])
        mid_matte = F.adaptive_avg_pool2d(matte, mid.shape[-2:])
        hidden = self.mid_in(torch.cat([F.silu(hidden + self.lateral_mid(mid)), mid_prompts, mid_matte], dim=1))
        hidden = self.mid_blocks(hidden)
        hidden = F.interpolate(self.mid_out(F.silu(hidden)), size=size, mode="bilinear", align_corners=False)
        hidden = F.silu(hidden + self.lateral_fine(fine))
        hidden = self.fine_in(torch.cat([hidden, prompts, matte, rgb], dim=1))
        return self.conv_out(F.silu(self.fine_block(hidden)))


def prompt_maps(
    size: tuple[int, int],
    box: tuple[float, float, float, float] | None = None,
    points: list[tuple[float, float]] | None = None,
    negative_points: list[tuple[float, float]] | None = None,
    point_sigma: float = 1.5,
) -> torch.Tensor:
    """The prompt rasterised on a ``size`` grid, ``(PROMPT_CHANNELS, H, W)`` float32.

    Coordinates are in cells of that grid (x, y; a box is x0, y0, x1, y1 with x1, y1 exclusive). Channels: the box's
    interior (0 without a box); the distance to the box's outline in cells, over 4, clipped to 1 (inside and out);
    a Gaussian of ``point_sigma`` cells at each positive point; the same at each negative point; and a constant
    plane, 1 when a box is given, 0.5 with points only.
    """
    height, width = size
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    maps = torch.zeros(PROMPT_CHANNELS, height, width)
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        maps[0] = inside.float()
        outside_x = torch.clamp(torch.maximum(x0 - xs, xs - x1), min=0)
        outside_y = torch.clamp(torch.maximum(y0 - ys, ys - y1), min=0)
        to_edge = torch.minimum(torch.minimum(xs - x0, x1 - xs), torch.minimum(ys - y0, y1 - ys))
        distance = torch.where(inside, to_edge.clamp_min(0), -torch.hypot(outside_x, outside_y))
        maps[1] = (distance / 4.0).clamp(-1.0, 1.0)
        maps[4] = 1.0
    elif points:
        maps[4] = 0.5
    for channel, group in ((2, points or []), (3, negative_points or [])):
        for x, y in group:
            bump = torch.exp(-((xs - float(x)) ** 2 + (ys - float(y)) ** 2) / (2 * point_sigma**2))
            maps[channel] = torch.maximum(maps[channel], bump)
    return maps
