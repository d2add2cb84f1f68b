#!/usr/bin/env python
"""Fine-tune (LoRA) or train a `LiWiDecompositionPipeline` on a LiWi-format layered dataset.

    accelerate launch examples/train_lora.py \
        --pretrained_model_name_or_path path/to/liwi-pipeline \
        --dataset_name path/to/liwi-100k --resolution 512 \
        --train_batch_size 1 --gradient_accumulation_steps 4 --max_train_steps 2000 \
        --checkpointing_steps 500 --validation_steps 500 --report_to tensorboard \
        --output_dir liwi-lora

Objectives (see `liwi_diffusers.training.losses`):

* flow matching on the layer latents (background, then objects back to front), conditioned on the composite's
  latent, exactly as the pipeline denoises (same frames, RoPE shapes, timestep shift);
* shadow-guided learning: the shadow head is supervised by the ground-truth shadow alpha, and a recomposition
  term asks background, predicted shadows and refined objects to re-create the composite (`compose_layers`);
  with ``--no_shadow_guidance`` shadows are baked into the layers beneath them instead (the paper's ablation);
* degradation-restoration: the alpha decoder recovers clean mattes from eroded, dilated, blurred, noisy and
  JPEG-like ones (boundary-weighted L1), and the transformer sees a composite degraded around object boundaries
  while its targets stay clean (boundary-weighted flow loss).

Layers per sample: by default batches are bucketed by processing size *and* object count, so every sample keeps
its own layers (as `liwi evaluate --num-layers gt` asks at inference); ``--num_layers N`` instead gives every
sample exactly N objects (extra back objects are composed into the background, missing ones are empty layers).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from liwi_diffusers.pipelines.pipeline_liwi import LiWiDecompositionPipeline, layered_shift_mu
from liwi_diffusers.training import (
    DegradationConfig,
    boundary_weights,
    build_from_scratch_pipeline,
    check_dataset_columns,
    degrade_alpha,
    degrade_image_boundaries,
    flow_matching_loss,
    flow_matching_target,
    noisy_latents,
    recomposition_loss,
    restoration_loss,
    sample_flow_sigmas,
    shadow_loss,
)
from liwi_diffusers.training.data import LayeredBatch, LiWiTrainDataset, augment_batch, bucket_batches, collate

logger = get_logger(__name__, log_level="INFO")

DEFAULT_LORA_TARGETS = "to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a LiWi layer-decomposition model (LoRA or full).")
    model = parser.add_argument_group("model")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrained_model_name_or_path", help="a LiWi pipeline folder or Hub id")
    source.add_argument("--qwen_image_layered_path", help="a Qwen-Image-Layered folder or Hub id")
    source.add_argument("--from_scratch", choices=["tiny", "small"], help="a randomly initialised configuration")
    source.add_argument("--tiny_config", action="store_true", help="same as --from_scratch tiny")
    model.add_argument("--revision", default=None)
    model.add_argument("--train_mode", choices=["lora", "full"], default="lora")
    model.add_argument("--rank", type=int, default=16, help="LoRA rank")
    model.add_argument("--lora_alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    model.add_argument("--lora_dropout", type=float, default=0.0)
    model.add_argument(
        "--lora_target_modules",
        default=DEFAULT_LORA_TARGETS,
        help="comma-separated transformer module names (default: %(default)s)",
    )
    model.add_argument(
        "--train_vae",
        choices=["auto", "yes", "no"],
        default="auto",
        help="also train the VAE with a reconstruction loss (auto: only from scratch)",
    )
    model.add_argument(
        "--vae_pretrain_steps",
        type=int,
        default=0,
        help="with a trained VAE: first train it alone for this many steps, set its latent "
        "mean/std from the data, then freeze it (recommended from scratch)",
    )
    model.add_argument("--vae_learning_rate", type=float, default=1e-3)
    model.add_argument("--vae_kl_weight", type=float, default=1e-6)

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", required=True, help="a LiWi-format dataset folder or Hub id")
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_split", default="train")
    data.add_argument("--validation_split", default="test", help="held-out split ('' to skip validation)")
    data.add_argument("--cache_dir", default=None)
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="processing resolution; a multiple of the VAE factor times the patch size",
    )
    data.add_argument(
        "--num_layers",
        type=int,
        default=0,
        help="objects per sample (0: each sample's own count, batches bucketed by count)",
    )
    data.add_argument("--max_num_layers", type=int, default=4, help="most objects kept with --num_layers 0")
    data.add_argument("--random_flip", type=float, default=0.5, help="probability of a horizontal flip")
    data.add_argument("--brightness_jitter", type=float, default=0.1, help="colour scale range 1 +- this")
    data.add_argument("--dataloader_num_workers", type=int, default=0)

    objectives = parser.add_argument_group("objectives")
    objectives.add_argument(
        "--no_shadow_guidance",
        action="store_true",
        help="ablation: no shadow supervision; shadows baked into the layers beneath them",
    )
    objectives.add_argument(
        "--no_degradation_restoration",
        action="store_true",
        help="ablation: alpha decoder sees only the coarse matte, clean condition, no boundary weighting",
    )
    objectives.add_argument("--no_recomposition_loss", action="store_true", help="ablation: no recomposition term")
    objectives.add_argument("--shadow_loss_weight", type=float, default=1.0)
    objectives.add_argument("--recomposition_loss_weight", type=float, default=1.0)
    objectives.add_argument("--alpha_loss_weight", type=float, default=1.0)
    objectives.add_argument("--vae_loss_weight", type=float, default=1.0)
    objectives.add_argument("--boundary_weight", type=float, default=4.0, help="extra loss weight on boundaries")
    objectives.add_argument("--weighting_scheme", choices=["uniform", "logit_normal"], default="uniform")

    training = parser.add_argument_group("training")
    training.add_argument("--output_dir", default="liwi-lora")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--train_batch_size", type=int, default=1)
    training.add_argument("--num_train_epochs", type=int, default=1)
    training.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    training.add_argument(
        "--max_train_minutes", type=float, default=None, help="stop (and save) after this much wall-clock training time"
    )
    training.add_argument("--gradient_accumulation_steps", type=int, default=1)
    training.add_argument("--gradient_checkpointing", action="store_true")
    training.add_argument("--learning_rate", type=float, default=1e-4)
    training.add_argument("--heads_learning_rate", type=float, default=None, help="default: --learning_rate")
    training.add_argument("--scale_lr", action="store_true")
    training.add_argument("--lr_scheduler", default="constant")
    training.add_argument("--lr_warmup_steps", type=int, default=0)
    training.add_argument("--adam_beta1", type=float, default=0.9)
    training.add_argument("--adam_beta2", type=float, default=0.999)
    training.add_argument("--adam_weight_decay", type=float, default=1e-4)
    training.add_argument("--adam_epsilon", type=float, default=1e-8)
    training.add_argument("--max_grad_norm", type=float, default=1.0)
    training.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    training.add_argument("--allow_tf32", action="store_true")
    training.add_argument("--checkpointing_steps", type=int, default=500)
    training.add_argument("--checkpoints_total_limit", type=int, default=None)
    training.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    training.add_argument("--logging_dir", default="logs")
    training.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none")

    validation = parser.add_argument_group("validation")
    validation.add_argument("--validation_steps", type=int, default=None, help="validate every N steps and at the end")
    validation.add_argument("--num_validation_samples", type=int, default=8)
    validation.add_argument("--validation_inference_steps", type=int, default=20)

    hub = parser.add_argument_group("hub (unused offline)")
    hub.add_argument("--push_to_hub", action="store_true")
    hub.add_argument("--hub_model_id", default=None)
    hub.add_argument("--hub_token", default=None)

    args = parser.parse_args(argv)
    if args.tiny_config:
        args.from_scratch = "tiny"
    if args.lora_alpha is None:
        args.lora_alpha = float(args.rank)
    if args.resolution < 1:
        parser.error(f"--resolution must be positive, got {args.resolution}")
    if args.num_layers < 0 or args.max_num_layers < 1:
        parser.error("--num_layers must be >= 0 and --max_num_layers >= 1")
    if args.train_batch_size < 1 or args.gradient_accumulation_steps < 1:
        parser.error("--train_batch_size and --gradient_accumulation_steps must be >= 1")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        parser.error("--checkpoints_total_limit must be >= 1")
    if args.report_to in ("tensorboard", "all"):
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            parser.error("--report_to tensorboard needs `pip install tensorboard` (or pass --report_to none)")
    return args


# ---------------------------------------------------------------------------------------------- model
def load_pipeline(args: argparse.Namespace) -> LiWiDecompositionPipeline:
    """The starting pipeline: a LiWi folder, a Qwen-Image-Layered folder, or a from-scratch configuration."""
    if args.from_scratch:
        return build_from_scratch_pipeline(args.from_scratch, seed=args.seed)
    if args.qwen_image_layered_path:
        return LiWiDecompositionPipeline.from_qwen_image_layered(args.qwen_image_layered_path, revision=args.revision)
    return LiWiDecompositionPipeline.from_pretrained(args.pretrained_model_name_or_path, revision=args.revision)


def setup_trainable(pipe: LiWiDecompositionPipeline, args: argparse.Namespace) -> bool:
    """Freeze or unfreeze each model for ``args.train_mode``; returns whether the VAE is trained."""
    transformer = pipe.transformer
    if args.train_mode == "lora":
        from peft import LoraConfig

        transformer.requires_grad_(False)  # add_adapter does not freeze the base
        targets = [name.strip() for name in args.lora_target_modules.split(",") if name.strip()]
        present = {name.split(".")[-1] for name, _ in transformer.named_modules()} | {
            ".".join(name.split(".")[-2:]) for name, _ in transformer.named_modules()
        }
        unknown = [target for target in targets if target not in present]
        if unknown:
            raise ValueError(f"--lora_target_modules {unknown} match no module of the transformer")
        transformer.add_adapter(
            LoraConfig(
                r=args.rank,
                lora_alpha=args.lora_alpha,
                lora_dropout=args.lora_dropout,
                init_lora_weights="gaussian",
                target_modules=targets,
            )
        )
    else:
        transformer.requires_grad_(True)
    train_vae = args.train_vae == "yes" or (args.train_vae == "auto" and bool(args.from_scratch))
    pipe.vae.requires_grad_(train_vae)
    pipe.shadow_head.requires_grad_(True)
    pipe.alpha_decoder.requires_grad_(True)
    for module in (transformer, pipe.vae, pipe.shadow_head, pipe.alpha_decoder):
        module.train()
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return train_vae


# ---------------------------------------------------------------------------------------------- data
def load_split(args: argparse.Namespace, split: str) -> Any:
    """One split of a LiWi dataset (folder or Hub id), with a clear error when it does not exist."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(args.dataset_name, args.dataset_config_name, split=split, cache_dir=args.cache_dir)
    except ValueError as error:
        if "split" in str(error).lower():
            raise ValueError(f"{args.dataset_name} has no split {split!r}: {error}") from error
        raise
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {args.dataset_name} is empty")
    check_dataset_columns(dataset.column_names, f"{args.dataset_name} ({split})")
    return dataset


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches within one aspect/object-count bucket, reshuffled every epoch from ``seed + epoch``."""

    def __init__(self, keys: list[Any], batch_size: int, seed: int) -> None:
        self.keys, self.batch_size, self.seed, self.epoch = keys, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        return bucket_batches(self.keys, self.batch_size, torch.Generator().manual_seed(self.seed + self.epoch))

    def __iter__(self) -> Any:
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())


# ---------------------------------------------------------------------------------------------- VAE stage
def pretrain_vae(
    pipe: LiWiDecompositionPipeline, dataset: LiWiTrainDataset, args: argparse.Namespace, device: torch.device
) -> None:
    """Stage 1 for from-scratch models: train the VAE alone on every frame (composite, background, objects;
    L1 reconstruction of sampled latents plus a small KL), then store the per-channel latent mean and std in
    its config, so that flow matching sees unit-scale latents, and freeze it. The result is kept in
    ``OUTPUT_DIR/vae_pretrained`` and reused when a run is resumed."""
    from diffusers.models import AutoencoderKLQwenImage

    folder = Path(args.output_dir, "vae_pretrained")
    if (folder / "config.json").is_file():
        logger.info(f"using the pretrained VAE in {folder}")
        pipe.vae = AutoencoderKLQwenImage.from_pretrained(str(folder)).to(device)
        pipe.vae.requires_grad_(False).eval()
        return
    vae = pipe.vae
    vae.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_learning_rate, weight_decay=args.adam_weight_decay)
    sampler = BucketBatchSampler(dataset.keys, args.train_batch_size, args.seed + 1)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)

    def frames_of(batch: LayeredBatch) -> torch.Tensor:
        opaque = torch.ones_like(batch.composite[:, :1])
        frames = [
            torch.cat([batch.composite, opaque], 1)[:, None],
            torch.cat([batch.background, opaque], 1)[:, None],
            torch.cat([batch.colors, batch.alphas], 2),
        ]
        return torch.cat(frames, dim=1).flatten(0, 1) * 2 - 1

    step, epoch = 0, 0
    progress = tqdm(total=args.vae_pretrain_steps, desc="vae steps")
    while step < args.vae_pretrain_steps:
        sampler.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            generator = torch.Generator().manual_seed(args.seed * 1_000_003 + 31 * step + 7)
            batch = augment_batch(batch.to(device), generator, args.random_flip, args.brightness_jitter)
            pixels = frames_of(batch)
            posterior = vae.encode(pixels.unsqueeze(2)).latent_dist
            decoded = vae.decode(posterior.sample(generator), return_dict=False)[0][:, :, 0]
            loss = (decoded - pixels).abs().mean() + args.vae_kl_weight * posterior.kl().mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=float(loss.detach()))
            if step >= args.vae_pretrain_steps:
                break
    progress.close()

    vae.eval().requires_grad_(False)
    latents = []
    with torch.no_grad():
        for index, batch in enumerate(loader):
            if index >= 16:
                break
            latents.append(vae.encode(frames_of(batch.to(device)).unsqueeze(2)).latent_dist.mode().transpose(0, 1))
    latents = torch.cat([z.flatten(1) for z in latents], dim=1)
    mean, std = latents.mean(dim=1), latents.std(dim=1).clamp(min=1e-4)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    logger.info(f"VAE pretrained for {step} steps; last loss {float(loss.detach()):.4f}; latent std {std.tolist()}")
    vae.save_pretrained(str(folder))


# ---------------------------------------------------------------------------------------------- losses
def encode_frames(pipe: LiWiDecompositionPipeline, pixels: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """RGBA frames ``(N, 4, H, W)`` in [0, 1] -> normalised latents ``(N, C, h, w)`` (posterior mode) and the
    posterior, as `LiWiDecompositionPipeline.encode_images` encodes."""
    posterior = pipe.vae.encode((pixels * 2 - 1).unsqueeze(2).to(pipe.vae.dtype)).latent_dist
    latents = posterior.mode()[:, :, 0]
    mean, std = pipe._latent_stats(latents.device, latents.dtype)
    return (latents - mean[:, :, 0]) / std[:, :, 0], posterior


def token_weights(frames_alpha: torch.Tensor, factor: int, width: int, boundary_weight: float) -> torch.Tensor:
    """Per-token flow-loss weights from each frame's alpha ``(B, F, 1, H, W)``, frame-major like the packing."""
    batch, frames = frames_alpha.shape[:2]
    weights = boundary_weights(frames_alpha.flatten(0, 1), width, boundary_weight)
    weights = F.avg_pool2d(weights, factor * 2)
    return weights.reshape(batch, frames * weights.shape[-2] * weights.shape[-1])


def shadow_logits(shadow_head: torch.nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """`ShadowHead.logits`; through a distributed wrapper, which only syncs gradients of ``forward``, the
    logits are recovered from ``forward``'s sigmoid."""
    if hasattr(shadow_head, "logits"):
        return shadow_head.logits(*inputs)
    return torch.logit(shadow_head(*inputs).float().clamp(1e-6, 1 - 1e-6))


def compute_losses(
    pipe: LiWiDecompositionPipeline,
    batch: LayeredBatch,
    args: argparse.Namespace,
    generator: torch.Generator,
    train_vae: bool,
    nets: dict[str, torch.nn.Module] | None = None,
) -> dict[str, torch.Tensor]:
    """Every training loss for one batch (same processing size and object count).

    ``nets``: the models as `Accelerator.prepare` returned them (possibly wrapped for distributed training);
    they are called, while ``pipe`` gives their configurations. Default: the pipeline's own models.
    """
    nets = nets or {}
    transformer = nets.get("transformer", pipe.transformer)
    alpha_decoder = nets.get("alpha_decoder", pipe.alpha_decoder)
    shadow_head = nets.get("shadow_head", pipe.shadow_head)
    device = batch.composite.device
    batch_size, num_objects, _, height, width = batch.colors.shape
    restore = not args.no_degradation_restoration
    factor = pipe.vae_scale_factor
    degradation = DegradationConfig(coarse_factor=factor)
    union = 1 - torch.prod(1 - batch.alphas, dim=1)

    # 1. Frames (background, objects back to front, optionally a leading composite) and the condition.
    condition_image = batch.composite
    if restore:
        condition_image = degrade_image_boundaries(batch.composite, union, degradation, generator)
    opaque = torch.ones_like(batch.composite[:, :1])
    frames = [torch.cat([batch.background, opaque], 1)[:, None], torch.cat([batch.colors, batch.alphas], 2)]
    if pipe.config.leading_composite_frame:
        frames.insert(0, torch.cat([batch.composite, opaque], 1)[:, None])
    frames = torch.cat(frames, dim=1)
    num_frames = frames.shape[1]
    pixels = torch.cat([frames, torch.cat([condition_image, opaque], 1)[:, None]], dim=1)
    with torch.set_grad_enabled(train_vae):
        latents, posterior = encode_frames(pipe, pixels.flatten(0, 1))
    latent_h, latent_w = latents.shape[-2:]
    latents = latents.view(batch_size, num_frames + 1, *latents.shape[1:])
    target_latents = pipe.pack_latents(latents[:, :num_frames].detach()).to(pipe.transformer.dtype)
    condition = pipe.pack_latents(latents[:, num_frames:].detach()).to(pipe.transformer.dtype)
    losses: dict[str, torch.Tensor] = {}

    # 2. Flow matching, with the inputs the pipeline's denoising loop gives the transformer.
    noise = torch.randn(target_latents.shape, generator=generator, dtype=target_latents.dtype).to(device)
    sigmas = sample_flow_sigmas(
        pipe.scheduler, batch_size, layered_shift_mu(condition.shape[1]), generator, args.weighting_scheme, device
    )
    noisy = noisy_latents(target_latents, noise, sigmas)
    timestep = (sigmas * pipe.scheduler.config.num_train_timesteps / 1000).to(noisy.dtype)
    img_shapes = [[(1, latent_h // 2, latent_w // 2)] * (num_frames + 1)] * batch_size
    additional_t_cond = None
    if pipe.transformer.config.use_additional_t_cond:
        additional_t_cond = torch.zeros(batch_size, dtype=torch.long, device=device)
    prediction = transformer(
        hidden_states=torch.cat([noisy, condition], dim=1),
        timestep=timestep,
        encoder_hidden_states=pipe.empty_prompt_embeds(batch_size, device),
        encoder_hidden_states_mask=None,
        img_shapes=img_shapes,
        additional_t_cond=additional_t_cond,
        return_dict=False,
    )[0][:, : noisy.shape[1]]
    weights = token_weights(frames[:, :, 3:], factor, degradation.band_width, args.boundary_weight) if restore else None
    losses["flow"] = flow_matching_loss(prediction, flow_matching_target(target_latents, noise), weights)

    # 3. VAE reconstruction (from-scratch models only).
    # Only one random frame per sample is decoded: decoding dominates the cost of a step on small models.
    if train_vae:
        picked = torch.randint(0, num_frames + 1, (batch_size,), generator=generator)
        rows = (torch.arange(batch_size) * (num_frames + 1) + picked).to(device)
        decoded = pipe.vae.decode(posterior.mode()[rows], return_dict=False)[0][:, :, 0]
        target_pixels = pixels.flatten(0, 1)[rows] * 2 - 1
        losses["vae"] = args.vae_loss_weight * (
            (decoded.float() - target_pixels).abs().mean() + 1e-6 * posterior.kl().mean()
        )

    # 4. Degradation-restoration of the mattes by the alpha decoder.
    clean_alpha = batch.alphas.flatten(0, 1)
    image = condition_image[:, None].expand(-1, num_objects, -1, -1, -1).flatten(0, 1)
    if restore:
        coarse = degrade_alpha(clean_alpha, degradation, generator)
        alpha_weights = boundary_weights(clean_alpha, degradation.band_width, args.boundary_weight)
    else:
        coarse = degrade_alpha(clean_alpha, DegradationConfig(0, 0, 0, 0, 0, coarse_factor=factor), generator)
        alpha_weights = None
    restored = alpha_decoder(image.to(pipe.alpha_decoder.dtype), coarse.to(pipe.alpha_decoder.dtype))
    losses["alpha"] = args.alpha_loss_weight * restoration_loss(restored, clean_alpha, alpha_weights)

    # 5. Shadow-guided learning: supervised shadow head, then the recomposition term.
    shadow_target = batch.shadows.flatten(0, 1)
    if args.no_shadow_guidance:
        shadows = torch.zeros_like(shadow_target)  # the data has its shadows baked in (see LiWiTrainDataset)
    else:
        objects_alpha = union[:, None].expand(-1, num_objects, -1, -1, -1).flatten(0, 1)
        head_dtype = pipe.shadow_head.dtype
        logits = shadow_logits(shadow_head, image.to(head_dtype), clean_alpha.to(head_dtype), objects_alpha)
        losses["shadow"] = args.shadow_loss_weight * shadow_loss(logits, shadow_target)
        shadows = torch.sigmoid(logits)
    if not args.no_recomposition_loss:
        shape = (batch_size, num_objects, 1, height, width)
        losses["recomposition"] = args.recomposition_loss_weight * recomposition_loss(
            batch.background, batch.colors, restored.view(shape), shadows.view(shape), batch.composite
        )
    return losses


# ---------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def run_validation(
    pipe: LiWiDecompositionPipeline, dataset: Any, args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """Decompose held-out composites and score them with `liwi_diffusers.metrics.evaluation` (as `liwi evaluate`)."""
    from liwi_diffusers.metrics.evaluation import evaluate_method

    def decompose(image: Any, num_layers: int | None = None) -> Any:
        output = pipe(
            image,
            num_layers=max(1, min(num_layers or 1, pipe.max_num_layers)),
            resolution=args.resolution,
            num_inference_steps=args.validation_inference_steps,
            generator=torch.Generator(device="cpu").manual_seed(args.seed),
            output_type="np",
        )
        return output.layers[0]

    modules = (pipe.transformer, pipe.vae, pipe.shadow_head, pipe.alpha_decoder)
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        limit = min(len(dataset), args.num_validation_samples)
        report = evaluate_method(decompose, dataset, num_layers="gt", limit=limit, source={"method": "validation"})
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
    metrics: dict[str, float] = {"num_samples": report["num_samples"], "num_scored": report["num_evaluated"]}
    if report["num_evaluated"]:
        for level in (report["levels"][0], report["levels"][-1]):
            metrics[f"rgb_l1@{level['merges']}"] = level["rgb_l1"]
            metrics[f"alpha_iou@{level['merges']}"] = level["alpha_iou"]
    alpha = report["extras"].get("alpha_boundary", {})
    metrics |= {f"boundary_{name}": alpha[name] for name in ("sad", "gradient") if alpha.get(name) is not None}
    metrics["shadow_l1"] = report["extras"].get("shadows", {}).get("shadow_l1")
    return {key: float(value) for key, value in metrics.items() if value is not None}


# ---------------------------------------------------------------------------------------------- saving
def save_outputs(
    pipe: LiWiDecompositionPipeline, args: argparse.Namespace, train_vae: bool, summary: dict[str, Any]
) -> None:
    """LoRA weights (with adapter metadata) and the heads, or the whole pipeline; plus a model card."""
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for module in (pipe.transformer, pipe.vae, pipe.shadow_head, pipe.alpha_decoder):
        module.eval()
    if args.train_mode == "lora":
        from peft.utils import get_peft_model_state_dict

        LiWiDecompositionPipeline.save_lora_weights(
            output_dir,
            transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
            transformer_lora_adapter_metadata=pipe.transformer.peft_config["default"].to_dict(),
        )
        pipe.shadow_head.save_pretrained(output_dir / "shadow_head")
        pipe.alpha_decoder.save_pretrained(output_dir / "alpha_decoder")
        if train_vae:
            pipe.vae.save_pretrained(output_dir / "vae")
    else:
        pipe.save_pretrained(output_dir)
    (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output_dir / "README.md").write_text(model_card(args, summary, train_vae))


def model_card(args: argparse.Namespace, summary: dict[str, Any], train_vae: bool) -> str:
    """A model card recording the base, the data, the objectives, the steps and the last validation metrics."""
    base = args.pretrained_model_name_or_path or args.qwen_image_layered_path or f"from scratch ({args.from_scratch})"
    objectives = [
        "flow matching on layer latents",
        "shadow-guided learning" if not args.no_shadow_guidance else "NO shadow guidance (shadows baked)",
        "degradation-restoration" if not args.no_degradation_restoration else "NO degradation-restoration",
        "recomposition loss" if not args.no_recomposition_loss else "NO recomposition loss",
    ]
    if train_vae and args.vae_pretrain_steps > 0:
        objectives.append(f"VAE pretrained alone for {args.vae_pretrain_steps} steps, then frozen")
    elif train_vae:
        objectives.append("VAE reconstruction")
    if args.train_mode == "lora":
        usage = (
            "```python\nfrom liwi_diffusers import LiWiDecompositionPipeline\n"
            "from liwi_diffusers.models import AlphaDecoder, ShadowHead\n\n"
            f'pipe = LiWiDecompositionPipeline.from_pretrained("{base}")\n'
            'pipe.load_lora_weights("<this folder>")\n'
            'pipe.shadow_head = ShadowHead.from_pretrained("<this folder>", subfolder="shadow_head")\n'
            'pipe.alpha_decoder = AlphaDecoder.from_pretrained("<this folder>", subfolder="alpha_decoder")\n```\n'
        )
    else:
        usage = (
            "```python\nfrom liwi_diffusers import LiWiDecompositionPipeline\n\n"
            'pipe = LiWiDecompositionPipeline.from_pretrained("<this folder>")\n'
            f"layers = pipe(image, num_layers=3, resolution={args.resolution}).layers[0]\n```\n"
        )
    metrics = summary.get("validation") or {}
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in metrics.items())
    return (
        "---\nlibrary_name: diffusers\nlicense: other\ntags:\n- liwi\n- layer-decomposition\n- diffusers\n"
        f"{'- lora' + chr(10) if args.train_mode == 'lora' else ''}---\n\n"
        f"# LiWi layer decomposition ({args.train_mode})\n\n"
        f"- base: {base}\n- data: `{args.dataset_name}` split `{args.train_split}` "
        f"({summary.get('num_train_samples')} samples), validation split `{args.validation_split or 'none'}`\n"
        f"- resolution: {args.resolution}, batch {args.train_batch_size} x {args.gradient_accumulation_steps} "
        f"accumulation, learning rate {args.learning_rate}, seed {args.seed}\n"
        f"- steps: {summary.get('global_step')} ({summary.get('train_seconds', 0):.0f} s)\n"
        f"- objectives: {', '.join(objectives)}\n"
        + (
            f"- LoRA: rank {args.rank}, alpha {args.lora_alpha}, targets `{args.lora_target_modules}`\n"
            if args.train_mode == "lora"
            else ""
        )
        + f"\n## Usage\n\n{usage}\n## Validation metrics ({args.validation_split or 'no'} split)\n\n"
        + ("| metric | value |\n| --- | --- |\n" + rows + "\n" if rows else "not run\n")
        + "\nTrained with `examples/train_lora.py` of liwi-diffusers.\n"
    )


def rotate_checkpoints(output_dir: str, limit: int | None) -> None:
    """Remove the oldest ``checkpoint-*`` folders so that one more leaves at most ``limit``."""
    if limit is None:
        return
    checkpoints = sorted(
        (name for name in os.listdir(output_dir) if name.startswith("checkpoint-")),
        key=lambda name: int(name.split("-")[1]),
    )
    for name in checkpoints[: max(0, len(checkpoints) - limit + 1)]:
        shutil.rmtree(os.path.join(output_dir, name))


def find_checkpoint(args: argparse.Namespace) -> str | None:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint != "latest":
        return args.resume_from_checkpoint
    if not os.path.isdir(args.output_dir):
        return None
    names = [name for name in os.listdir(args.output_dir) if name.startswith("checkpoint-")]
    return os.path.join(args.output_dir, max(names, key=lambda n: int(n.split("-")[1]))) if names else None


# ---------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> None:
    logging_dir = Path(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(logging_dir)),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    # Model and data are checked before anything is trained.
    pipe = load_pipeline(args)
    train_rows = load_split(args, args.train_split)
    if args.max_train_samples is not None:
        train_rows = train_rows.select(range(min(args.max_train_samples, len(train_rows))))
    validation_rows = load_split(args, args.validation_split) if args.validation_split else None
    dataset = LiWiTrainDataset(
        train_rows,
        args.resolution,
        pipe.size_multiple,
        args.num_layers,
        args.max_num_layers,
        bake_shadows=args.no_shadow_guidance,
    )
    train_vae = setup_trainable(pipe, args)
    vae_changed = train_vae
    if train_vae and args.vae_pretrain_steps > 0:
        pipe.vae.to(accelerator.device)
        pretrain_vae(pipe, dataset, args, accelerator.device)
        train_vae = False  # frozen for the layer stage

    weight_dtype = torch.float32
    if accelerator.mixed_precision == "fp16":
        weight_dtype = torch.float16
    elif accelerator.mixed_precision == "bf16":
        weight_dtype = torch.bfloat16
    if args.train_mode == "lora" and not train_vae:
        pipe.vae.to(accelerator.device, dtype=weight_dtype)  # frozen: stored in the mixed precision
    pipe.to(accelerator.device)

    transformer_params = [p for p in pipe.transformer.parameters() if p.requires_grad]
    if args.train_mode == "lora" and weight_dtype != torch.float32:
        for param in transformer_params:  # LoRA weights in fp32 for stable updates
            param.data = param.data.float()
    head_params = list(pipe.shadow_head.parameters()) + list(pipe.alpha_decoder.parameters())
    if train_vae:
        head_params += list(pipe.vae.parameters())
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer = torch.optim.AdamW(
        [
            {"params": transformer_params, "lr": learning_rate},
            {"params": head_params, "lr": args.heads_learning_rate or learning_rate},
        ],
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    sampler = BucketBatchSampler(dataset.keys, args.train_batch_size, args.seed)
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=args.dataloader_num_workers
    )
    updates_per_epoch = math.ceil(len(sampler) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    if train_vae and accelerator.num_processes > 1:
        raise ValueError("training the VAE (from-scratch models) is supported on one process only")
    names = ["transformer", "shadow_head", "alpha_decoder"]
    models = [getattr(pipe, name) for name in names] + ([pipe.vae] if train_vae else [])
    *prepared, optimizer, dataloader, lr_scheduler = accelerator.prepare(*models, optimizer, dataloader, lr_scheduler)
    nets = dict(zip(names, prepared))

    if accelerator.is_main_process and args.report_to != "none":
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("liwi-train", config=config)

    global_step, first_epoch, skip_batches = 0, 0, 0
    checkpoint = find_checkpoint(args)
    if args.resume_from_checkpoint and checkpoint is None:
        logger.info(f"no checkpoint found for {args.resume_from_checkpoint!r}; starting a new run")
    if checkpoint is not None:
        logger.info(f"resuming from {checkpoint}")
        accelerator.load_state(checkpoint)
        global_step = int(os.path.basename(os.path.normpath(checkpoint)).split("-")[1])
        first_epoch = global_step // updates_per_epoch
        skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"{len(dataset)} samples, {num_epochs} epochs, {args.max_train_steps} steps, batch {total_batch}")
    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    validation: dict[str, float] = {}
    validated_at = -1
    losses: dict[str, torch.Tensor] = {}
    samples_seen, start = 0, time.perf_counter()
    stop = global_step >= args.max_train_steps
    for epoch in range(first_epoch, num_epochs):
        if stop:
            break
        sampler.set_epoch(epoch)
        for step, batch in enumerate(dataloader):
            if epoch == first_epoch and step < skip_batches:
                continue
            generator = torch.Generator().manual_seed(args.seed * 1_000_003 + global_step * 97 + step)
            batch = augment_batch(batch.to(accelerator.device), generator, args.random_flip, args.brightness_jitter)
            with accelerator.accumulate(*prepared):
                with accelerator.autocast():
                    losses = compute_losses(pipe, batch, args, generator, train_vae, nets)
                loss = sum(losses.values())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    params = [p for group in optimizer.param_groups for p in group["params"]]
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            samples_seen += batch.composite.shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            logs = {f"loss/{name}": float(value.detach()) for name, value in losses.items()}
            logs |= {"loss": float(loss.detach()), "lr": lr_scheduler.get_last_lr()[0]}
            progress.set_postfix(loss=logs["loss"])
            accelerator.log(logs, step=global_step)
            if accelerator.is_main_process and global_step % args.checkpointing_steps == 0:
                rotate_checkpoints(args.output_dir, args.checkpoints_total_limit)
                accelerator.save_state(os.path.join(args.output_dir, f"checkpoint-{global_step}"))
            if (
                validation_rows is not None
                and args.validation_steps
                and accelerator.is_main_process
                and global_step % args.validation_steps == 0
            ):
                validation = run_validation(pipe, validation_rows, args, accelerator.device)
                validated_at = global_step
                logger.info(f"validation at step {global_step}: {validation}")
                accelerator.log({f"validation/{k}": v for k, v in validation.items()}, step=global_step)
            elapsed_minutes = (time.perf_counter() - start) / 60
            if global_step >= args.max_train_steps or (
                args.max_train_minutes is not None and elapsed_minutes >= args.max_train_minutes
            ):
                stop = True
                break

    accelerator.wait_for_everyone()
    train_seconds = time.perf_counter() - start
    if accelerator.is_main_process:
        pipe.transformer = accelerator.unwrap_model(pipe.transformer)
        if validation_rows is not None and args.validation_steps and validated_at != global_step:
            validation = run_validation(pipe, validation_rows, args, accelerator.device)
            logger.info(f"final validation: {validation}")
            accelerator.log({f"validation/{k}": v for k, v in validation.items()}, step=global_step)
        summary = {
            "global_step": global_step,
            "train_seconds": train_seconds,
            "samples_seen": samples_seen,
            "samples_per_second": samples_seen / train_seconds if train_seconds > 0 else None,
            "num_train_samples": len(dataset),
            "validation": validation,
            "last_losses": {name: float(value.detach()) for name, value in losses.items()} if losses else {},
            "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
        }
        save_outputs(pipe, args, vae_changed, summary)
        if args.push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = create_repo(
                args.hub_model_id or Path(args.output_dir).name, exist_ok=True, token=args.hub_token
            ).repo_id
            upload_folder(
                repo_id=repo_id,
                folder_path=args.output_dir,
                ignore_patterns=["checkpoint-*", "logs/*"],
                token=args.hub_token,
            )
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
