"""Training objectives of LiWi: flow matching on layer latents, shadow-guided learning, degradation-restoration.

All functions take channel-first float tensors and return scalar losses, so they can be unit-tested on
hand-made tensors and reused outside `examples/train_lora.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

from ..layers import compose_layers
from .degradation import boundary_band

__all__ = [
    "boundary_weights",
    "flow_matching_loss",
    "flow_matching_target",
    "noisy_latents",
    "recomposition_loss",
    "restoration_loss",
    "sample_flow_sigmas",
    "shadow_loss",
]


def sample_flow_sigmas(
    scheduler: FlowMatchEulerDiscreteScheduler,
    batch_size: int,
    mu: float | None = None,
    generator: torch.Generator | None = None,
    weighting: str = "uniform",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise levels sigma ``(B,)`` distributed as the scheduler spaces them at inference.

    ``u`` is drawn uniformly (or logit-normally with ``weighting="logit_normal"``) and shifted exactly as
    `FlowMatchEulerDiscreteScheduler.set_timesteps` shifts its sigmas: ``time_shift(mu, 1, u)`` with dynamic
    shifting (``mu`` from the condition's token count, `layered_shift_mu`), otherwise the static ``shift``,
    then stretched to ``shift_terminal`` when the scheduler has one. The transformer's timestep is
    ``sigma * num_train_timesteps / 1000``, as in the pipeline's loop.
    """
    if weighting == "uniform":
        u = torch.rand(batch_size, generator=generator)
    elif weighting == "logit_normal":
        u = torch.sigmoid(torch.randn(batch_size, generator=generator))
    else:
        raise ValueError(f"weighting must be 'uniform' or 'logit_normal', got {weighting!r}")
    u = u.clamp(1e-4, 1.0)
    config = scheduler.config
    if config.use_dynamic_shifting:
        if mu is None:
            raise ValueError("the scheduler uses dynamic shifting: pass `mu` (layered_shift_mu of the condition)")
        sigmas = scheduler.time_shift(mu, 1.0, u)
    else:
        sigmas = config.shift * u / (1 + (config.shift - 1) * u)
    if config.shift_terminal:
        sigmas = scheduler.stretch_shift_to_terminal(sigmas)
    return sigmas.to(device=device, dtype=torch.float32)


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Rectified-flow interpolation ``(1 - sigma) * x0 + sigma * noise`` (sigmas ``(B,)``)."""
    sigmas = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    return (1 - sigmas) * latents + sigmas * noise


def flow_matching_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Velocity target ``noise - x0``: what `FlowMatchEulerDiscreteScheduler.step` integrates."""
    return noise - latents


def flow_matching_loss(
    prediction: torch.Tensor, target: torch.Tensor, token_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error of the velocity, optionally weighted per token (``(B, tokens)``, e.g. boundaries)."""
    error = (prediction.float() - target.float()) ** 2
    if token_weights is None:
        return error.mean()
    weights = token_weights.float().unsqueeze(-1)
    return (error * weights).sum() / (weights.sum() * error.shape[-1]).clamp(min=1e-8)


def boundary_weights(alpha: torch.Tensor, width: int = 4, boundary_weight: float = 4.0) -> torch.Tensor:
    """Per-pixel weights ``1 + boundary_weight * band`` where ``band`` marks where the matte changes."""
    return 1.0 + boundary_weight * boundary_band(alpha, width)


def restoration_loss(restored: torch.Tensor, clean: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted L1 between a restored matte (or colours) and the clean one; 0 when they are equal."""
    error = (restored.float() - clean.float()).abs()
    if weights is None:
        return error.mean()
    weights = weights.float().expand_as(error)
    return (error * weights).sum() / weights.sum().clamp(min=1e-8)


def shadow_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of the shadow head's logits against the ground-truth shadow alpha (soft targets).

    Cross-entropy keeps a gradient at the head's saturated "no shadow" start, where an L1 on sigmoid would not.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), weight=weights)


def recomposition_loss(
    background: torch.Tensor,
    colors: torch.Tensor,
    alphas: torch.Tensor,
    shadows: torch.Tensor,
    composite: torch.Tensor,
) -> torch.Tensor:
    """L1 between `compose_layers` of the layers and the composite they must re-create.

    Shapes (batched, channel first): background ``(B, 3, H, W)``, colours ``(B, K, 3, H, W)``, alphas and shadows
    ``(B, K, 1, H, W)`` (back to front), composite ``(B, 3, H, W)``. Differentiable in every layer.
    """
    if colors.shape[:2] != alphas.shape[:2] or alphas.shape != shadows.shape:
        raise ValueError(
            f"colors {tuple(colors.shape)}, alphas {tuple(alphas.shape)} and shadows {tuple(shadows.shape)} disagree"
        )
    recomposed = compose_layers(background, colors.transpose(0, 1), alphas.transpose(0, 1), shadows.transpose(0, 1))
    return (recomposed.float() - composite.float()).abs().mean()
