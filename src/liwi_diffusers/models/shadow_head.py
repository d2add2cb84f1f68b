"""The shadow head: predicts the shadow alpha sigma that each object casts, from the image and the object's matte."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


# Copied from liwi_diffusers.models.alpha_decoder._ResidualBlock (one model per file, as in diffusers)
class _ResidualBlock(nn.Module):
    """Two dilated 3x3 convolutions with a skip connection."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.conv2(F.silu(self.conv1(F.silu(hidden))))


class ShadowHead(ModelMixin, ConfigMixin):
    r"""Shadow alpha sigma in [0, 1] of one object: the fraction of light it takes from everything beneath it.

    Inputs, batched over objects: the image, the object's alpha and the union of all objects' alphas (so the
    head can tell the object's own shadow from other objects). Cast shadows are smooth and reach far from the
    object, so the inputs are first averaged down to ``1 / 2**(num_downsamples - 1)`` of their size; a 3x3
    convolution and a stride-2 convolution follow, dilated residual blocks work at ``1 / 2**num_downsamples``,
    and the logits are upsampled bilinearly to full size before the sigmoid. Only the averaging and the final
    upsampling touch full-resolution pixels.

    The last convolution starts with zero weights and bias ``initial_logit``: an untrained head predicts
    ``sigmoid(initial_logit)`` (about 3e-4 for -8), i.e. no shadow. Train on `logits` with a binary
    cross-entropy, whose gradient does not vanish at that saturated start (an L1 loss on ``forward`` would).

    Args:
        image_channels: channels of the image (3 for RGB).
        hidden_channels: width of the first convolution (the residual blocks are twice as wide).
        num_downsamples: the blocks work at ``1 / 2**num_downsamples`` of the input size (>= 1).
        num_blocks: dilated residual blocks at the lowest resolution.
        initial_logit: bias of the output layer at initialisation.
    """

    @register_to_config
    def __init__(
        self,
        image_channels: int = 3,
        hidden_channels: int = 16,
        num_downsamples: int = 3,
        num_blocks: int = 2,
        initial_logit: float = -8.0,
    ) -> None:
        super().__init__()
        if num_downsamples < 1:
            raise ValueError(f"num_downsamples must be >= 1, got {num_downsamples}")
        self.conv_in = nn.Conv2d(image_channels + 2, hidden_channels, 3, padding=1)
        wide = 2 * hidden_channels
        self.downsample = nn.Conv2d(hidden_channels, wide, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[_ResidualBlock(wide, dilation=2**i) for i in range(num_blocks)])
        self.conv_out = nn.Conv2d(wide, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.constant_(self.conv_out.bias, initial_logit)

    def logits(
        self, image: torch.Tensor, object_alpha: torch.Tensor, objects_alpha: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Shadow logits ``(N, 1, H, W)``; ``sigmoid`` of them is `forward`'s output."""
        if image.ndim != 4 or object_alpha.ndim != 4 or object_alpha.shape[1] != 1:
            raise ValueError(
                f"expected image (N, C, H, W) and object_alpha (N, 1, H, W), got {tuple(image.shape)} "
                f"and {tuple(object_alpha.shape)}"
            )
        if image.shape[1] != self.config.image_channels:
            raise ValueError(f"expected an image with {self.config.image_channels} channels, got {image.shape[1]}")
        if objects_alpha is None:
            objects_alpha = object_alpha
        if not (image.shape[0] == object_alpha.shape[0] == objects_alpha.shape[0]) or not (
            image.shape[-2:] == object_alpha.shape[-2:] == objects_alpha.shape[-2:]
        ):
            raise ValueError(
                f"image {tuple(image.shape)}, object_alpha {tuple(object_alpha.shape)} and objects_alpha "
                f"{tuple(objects_alpha.shape)} differ in batch or size"
            )
        inputs = (torch.cat([image, object_alpha, objects_alpha], dim=1) * 2 - 1).contiguous(
            memory_format=torch.channels_last  # faster convolutions on CPU and GPU
        )
        pool = 2 ** (self.config.num_downsamples - 1)
        if pool > 1:
            inputs = F.avg_pool2d(inputs, pool, ceil_mode=True, count_include_pad=False)
        hidden = F.silu(self.downsample(F.silu(self.conv_in(inputs))))
        low = self.conv_out(F.silu(self.blocks(hidden)))
        return F.interpolate(low, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def forward(
        self, image: torch.Tensor, object_alpha: torch.Tensor, objects_alpha: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Shadow alpha of each object.

        Args:
            image: ``(N, C, H, W)`` in [0, 1], the image repeated once per object.
            object_alpha: ``(N, 1, H, W)`` in [0, 1], the object's alpha.
            objects_alpha: ``(N, 1, H, W)`` in [0, 1], union of all objects' alphas (defaults to ``object_alpha``).

        Returns:
            sigma, ``(N, 1, H, W)`` in [0, 1].
        """
        return torch.sigmoid(self.logits(image, object_alpha, objects_alpha))
