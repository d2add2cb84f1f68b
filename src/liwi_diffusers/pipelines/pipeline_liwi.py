"""`LiWiDecompositionPipeline`: a photo in, its layers out (background, then per object a shadow and an RGBA layer).

The generator is Qwen-Image-Layered's architecture: an RGBA VAE (`AutoencoderKLQwenImage` with 4 input
channels) and a `QwenImageTransformer2DModel` with layer-3D RoPE. Output layers are frames along the RoPE
layer axis; the input image's latent is appended as one more frame, the condition (RoPE layer index -1).
The transformer works at a processing resolution; LiWi's heads then bring the layers to the input's full
size: the alpha decoder refines each object's matte, the shadow head predicts each object's shadow, and a
last step (`reconcile_with_image`) adjusts colours so that the layers recompose to the input.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.loaders import QwenImageLoraLoaderMixin
from diffusers.models import AutoencoderKLQwenImage, QwenImageTransformer2DModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from ..layers import (
    LayeredImage,
    RecompositionReport,
    check_decomposition,
    reconcile_colours,
    to_float_image,
    visible_weights,
)
from ..models.alpha_decoder import AlphaDecoder
from ..models.shadow_head import ShadowHead

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Object and shadow alphas below half an 8-bit step are set to 0: they are invisible and would round to 0 in
# any PNG/PSD/ORA file anyway, and exact zeros keep the layers' boxes tight (`LayeredImage.compact`) and settle the
# pixels no layer covers in the first round of `reconcile_colours`.
MIN_VISIBLE_ALPHA = 0.5 / 255
# An RGBA VAE's colour says nothing where its own alpha is near 0 (it learns any colour under full transparency,
# often black), yet the alpha decoder may give an object coverage there. Object colours are blended towards the
# input photo as the VAE alpha falls below this value: the photo is the best guess for an object seen there,
# and `reconcile_with_image` then corrects what shows.
CONFIDENT_COLOUR_ALPHA = 0.5

# Qwen-Image's prompt template and the number of its leading tokens (the system part) dropped from the
# text encoder's hidden states; kept identical so that Qwen-Image-Layered weights see what they were trained on.
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
PROMPT_TEMPLATE_DROP_TOKENS = 34

# Instruction for captioning the input with the vision-language text encoder when no prompt is given.
CAPTION_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>Write one paragraph describing this picture in plain language: "
    "each visible object with its colour, shape, material, size and position, how the objects are arranged, "
    "the background, the light, and any legible text in quotation marks.<|im_end|>\n<|im_start|>assistant\n"
)

# `num_layers="auto"`: an object layer whose alpha covers less than this fraction of the image (the mean of its
# full-resolution alpha) is empty and is dropped. 0.1% is a 20x20 patch of a 640x640 photo: smaller objects are
# better left in the background than given a layer of their own.
EMPTY_LAYER_COVERAGE = 1e-3

# Keys of `from_qwen_image_layered` that the scheduler's loader understands (it takes no dtype or variant).
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token")


@dataclass
class LiWiDecompositionPipelineOutput(BaseOutput):
    """Output of `LiWiDecompositionPipeline`.

    Attributes:
        images: per input, its layers back to front (background, then per object its shadow and its RGBA
            layer; 2K+1 layers): a list of RGBA PIL images (``"pil"``), a float32 array ``(2K+1, H, W, 4)``
            (``"np"``) or a float32 tensor ``(2K+1, 4, H, W)`` (``"pt"``). None for ``"latent"``.
        layers: per input, the `LayeredImage` (None for ``"latent"``).
        latents: for ``"latent"``, the denoised packed latents ``(B, frames * tokens, channels * 4)``, the
            layout the ``latents`` argument takes; None otherwise.
        recomposition: per input, how far the layers recompose from it (None for ``"latent"``).
    """

    images: list[list[PIL.Image.Image]] | list[np.ndarray] | list[torch.Tensor] | None
    layers: list[LayeredImage] | None = None
    latents: torch.Tensor | None = None
    recomposition: list[RecompositionReport] | None = None


def processing_size(height: int, width: int, resolution: int, multiple: int) -> tuple[int, int]:
    """``(height, width)`` of about ``resolution**2`` pixels with the aspect ratio of ``height x width``, each a
    multiple of ``multiple`` (at least one). The pipeline works at this size; training buckets by it."""
    ratio = width / height
    target_width = math.sqrt(resolution * resolution * ratio)
    target_height = target_width / ratio
    return (
        max(multiple, round(target_height / multiple) * multiple),
        max(multiple, round(target_width / multiple) * multiple),
    )


def layered_shift_mu(condition_seq_len: int) -> float:
    """Timestep shift ``mu`` as Qwen-Image-Layered sets it: ``sqrt(tokens / 256)`` of the condition image.

    256 tokens is a 256x256 image (VAE factor 8, 2x2 patches). The scheduler applies ``mu`` only when its
    ``use_dynamic_shifting`` is on.
    """
    return math.sqrt(condition_seq_len / 256.0)


class LiWiDecompositionPipeline(DiffusionPipeline, QwenImageLoraLoaderMixin):
    r"""Decompose photos into an opaque background and, per object, a shadow layer and an RGBA layer.

    Args:
        vae ([`AutoencoderKLQwenImage`]): RGBA VAE (``input_channels=4``).
        transformer ([`QwenImageTransformer2DModel`]): denoiser with ``use_layer3d_rope=True``.
        scheduler ([`FlowMatchEulerDiscreteScheduler`]): flow-matching scheduler.
        shadow_head ([`ShadowHead`]): predicts each object's shadow alpha.
        alpha_decoder ([`AlphaDecoder`]): refines each object's alpha at full resolution.
        text_encoder (optional): a Qwen2.5-VL model; without it the transformer gets a fixed empty-prompt
            embedding (one all-zero token) unless ``prompt_embeds`` are passed.
        tokenizer (optional): the text encoder's tokenizer.
        processor (optional): the text encoder's processor, used to caption the input when no prompt is given.
        leading_composite_frame: whether the transformer generates the recomposed image as an extra first frame
            before the background (Qwen-Image-Layered's convention; that frame is dropped). False for models
            trained with LiWi's convention (background first); `from_qwen_image_layered` sets True.
        default_resolution: the processing resolution the models were trained at, used when `__call__` gets
            ``resolution=None``; saved in ``model_index.json``, so that a checkpoint carries its own.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae->alpha_decoder->shadow_head"
    _optional_components: ClassVar[list[str]] = ["text_encoder", "tokenizer", "processor"]
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents", "prompt_embeds"]
    # Object layers a call may ask for.
    min_num_layers: ClassVar[int] = 1
    max_num_layers: ClassVar[int] = 16
    # Object layers generated for `num_layers="auto"`, before the empty ones are dropped. Not `max_num_layers`:
    # the transformer's tokens grow with the layer count and its attention with their square.
    max_auto_layers: ClassVar[int] = 8

    def __init__(
        self,
        vae: AutoencoderKLQwenImage,
        transformer: QwenImageTransformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        shadow_head: ShadowHead,
        alpha_decoder: AlphaDecoder,
        text_encoder: torch.nn.Module | None = None,
        tokenizer: Any = None,
        processor: Any = None,
        leading_composite_frame: bool = False,
        default_resolution: int = 640,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
            shadow_head=shadow_head,
            alpha_decoder=alpha_decoder,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            processor=processor,
        )
        self.register_to_config(
            leading_composite_frame=bool(leading_composite_frame), default_resolution=default_resolution
        )
        self._check_components()

    def _check_components(self) -> None:
        resolution = self.config.default_resolution
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"`default_resolution` must be a positive int (pixels), got {resolution!r}")
        vae, transformer = getattr(self, "vae", None), getattr(self, "transformer", None)
        if vae is not None and vae.config.input_channels != 4:
            raise ValueError(
                f"the VAE must be an RGBA VAE (AutoencoderKLQwenImage with input_channels=4), "
                f"got input_channels={vae.config.input_channels}"
            )
        if transformer is None:
            return
        if not transformer.config.use_layer3d_rope:
            raise ValueError(
                "the transformer must use layer-3D RoPE (QwenImageTransformer2DModel(use_layer3d_rope=True))"
            )
        if transformer.config.guidance_embeds:
            raise ValueError("guidance-distilled transformers (guidance_embeds=True) are not supported")
        if vae is not None:
            packed = vae.config.z_dim * transformer.config.patch_size**2
            if transformer.config.in_channels != packed or transformer.config.out_channels != vae.config.z_dim:
                raise ValueError(
                    f"transformer (in_channels={transformer.config.in_channels}, out_channels="
                    f"{transformer.config.out_channels}) does not match the VAE's z_dim={vae.config.z_dim} "
                    f"with patch_size={transformer.config.patch_size} (expected {packed} and {vae.config.z_dim})"
                )

    # ------------------------------------------------------------------ sizes
    @property
    def vae_scale_factor(self) -> int:
        """Spatial downsampling of the VAE (8 for Qwen-Image's)."""
        return 2 ** len(self.vae.config.temperal_downsample)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    @property
    def patch_size(self) -> int:
        return self.transformer.config.patch_size

    @property
    def size_multiple(self) -> int:
        """Processing height and width are multiples of this (VAE factor times patch size)."""
        return self.vae_scale_factor * self.patch_size

    def processing_size(self, height: int, width: int, resolution: int) -> tuple[int, int]:
        """``(height, width)`` of about ``resolution**2`` pixels with the input's aspect ratio.

        Both are multiples of `size_multiple` (at least one multiple).
        """
        return processing_size(height, width, resolution, self.size_multiple)

    # ------------------------------------------------------------------ properties used during a call
    @property
    def attention_kwargs(self) -> dict[str, Any] | None:
        return self._attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self) -> torch.Tensor | None:
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _as_rgb(item: Any, what: str) -> np.ndarray:
        """One image (PIL, ``(H, W[, C])`` array, ``(C, H, W)`` tensor) as float32 ``(H, W, 3)`` in [0, 1]."""
        if isinstance(item, PIL.Image.Image):
            if item.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (item.mode == "P" and "transparency" in item.info):
                array = to_float_image(item, 4, what)
            else:
                array = to_float_image(item, 3, what)
        elif isinstance(item, torch.Tensor):
            if item.ndim == 3:
                if item.shape[0] not in (1, 3, 4):
                    raise ValueError(
                        f"{what}: a tensor image must be (C, H, W) with C in 1, 3, 4; got {tuple(item.shape)}"
                    )
                item = item.permute(1, 2, 0)
            elif item.ndim != 2:
                raise ValueError(f"{what}: a tensor image must be (C, H, W) or (H, W); got {tuple(item.shape)}")
            array = to_float_image(item, None, what)
        elif isinstance(item, np.ndarray):
            array = to_float_image(item, None, what)
        else:
            raise TypeError(f"{what}: expected a PIL image, a numpy array or a torch tensor, got {type(item).__name__}")
        channels = array.shape[2]
        if channels == 1:
            return np.repeat(array, 3, axis=2)
        if channels == 4:
            alpha = array[:, :, 3:]
            if float(alpha.min()) < 1.0:
                logger.warning(f"{what} has transparent pixels; it is decomposed as shown over a white background")
            return np.ascontiguousarray(array[:, :, :3] * alpha + (1.0 - alpha))
        if channels != 3:
            raise ValueError(f"{what}: expected 1, 3 or 4 channels, got {channels} (shape {array.shape})")
        return array

    def prepare_images(self, image: Any) -> list[np.ndarray]:
        """Inputs as a list of float32 ``(H, W, 3)`` RGB arrays in [0, 1], with clear errors for bad ones.

        Accepts a PIL image, a ``(H, W)``/``(H, W, C)`` array (uint8, uint16 or float in [0, 1]), a ``(B, H, W, C)``
        array, a ``(C, H, W)``/``(B, C, H, W)`` tensor in [0, 1], or a list of those (a batch). Alpha is flattened
        over white (with a warning), grayscale is repeated to RGB.
        """
        if image is None:
            raise ValueError("`image` is required: a PIL image, numpy array, torch tensor, or a list of them")
        if isinstance(image, np.ndarray) and image.ndim == 4:
            items = list(image)
        elif isinstance(image, torch.Tensor) and image.ndim == 4:
            items = list(image.unbind(0))
        elif isinstance(image, (list, tuple)):
            items = list(image)
        else:
            items = [image]
        if not items:
            raise ValueError("`image` is an empty batch: pass at least one image")
        # Bad pixels raise `LayeredImageError`, a `ValueError` naming the image and the problem.
        return [self._as_rgb(item, f"image {index}") for index, item in enumerate(items)]

    def check_inputs(
        self,
        batch_size: int,
        num_layers: int | str,
        resolution: int,
        num_inference_steps: int,
        output_type: str,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sigmas: list[float] | None = None,
        prompt: str | list[str] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        true_cfg_scale: float = 1.0,
    ) -> None:
        """Clear errors for bad arguments of `__call__` (``resolution`` already resolved from the config)."""
        self._check_num_layers(num_layers, output_type)
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < self.size_multiple:
            raise ValueError(f"`resolution` must be an int >= {self.size_multiple}, got {resolution!r}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive int, got {num_inference_steps!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if callback_on_step_end_tensor_inputs is not None:
            unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if unknown:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` must be among {self._callback_tensor_inputs}, got {unknown}"
                )
        if not math.isfinite(true_cfg_scale) or true_cfg_scale < 0:
            raise ValueError(f"`true_cfg_scale` must be a finite number >= 0, got {true_cfg_scale!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one, or one per image")
        if sigmas is not None and len(sigmas) != num_inference_steps:
            raise ValueError(f"got {len(sigmas)} `sigmas` for {num_inference_steps} steps")
        if isinstance(prompt, list) and len(prompt) != batch_size:
            raise ValueError(f"got {len(prompt)} prompts for {batch_size} images")

    def _check_num_layers(self, num_layers: int | str, output_type: str) -> None:
        if num_layers == "auto":
            if output_type == "latent":
                raise ValueError(
                    '`num_layers="auto"` drops empty layers after decoding; it cannot return output_type="latent"'
                )
        elif isinstance(num_layers, bool) or not isinstance(num_layers, int):
            raise ValueError(f'`num_layers` must be an int (object layers) or "auto", got {num_layers!r}')
        elif not self.min_num_layers <= num_layers <= self.max_num_layers:
            raise ValueError(
                f"`num_layers` (object layers, not counting the background) must be between {self.min_num_layers} "
                f"and {self.max_num_layers}, got {num_layers}"
            )

    def group_by_processing_size(
        self, images: Sequence[np.ndarray], resolution: int
    ) -> dict[tuple[int, int], list[int]]:
        """Indices of the images per processing size ``(height, width)``: each group is denoised as one batch."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(self.processing_size(image.shape[0], image.shape[1], resolution), []).append(index)
        return groups

    @staticmethod
    def _select(values: Any, indices: list[int]) -> Any:
        """The entries of a per-image list or the rows of a per-image tensor for a group; anything else unchanged."""
        if isinstance(values, list):
            return [values[i] for i in indices]
        if isinstance(values, torch.Tensor):
            return values[indices]
        return values

    # ------------------------------------------------------------------ text conditioning
    def empty_prompt_embeds(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """The fixed conditioning used without a text encoder: one all-zero token per image."""
        return torch.zeros(
            batch_size, 1, self.transformer.config.joint_attention_dim, device=device, dtype=self.transformer.dtype
        )

    def encode_prompt(
        self,
        prompt: str | list[str] | None = None,
        batch_size: int = 1,
        device: torch.device | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
        max_sequence_length: int = 1024,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text conditioning ``(embeds (B, T, D), mask (B, T) or None)``, as Qwen-Image-Layered computes it.

        Without a text encoder, ``prompt`` must be None or empty and the result is `empty_prompt_embeds`.
        """
        device = device or self._execution_device
        if prompt_embeds is not None:
            if prompt_embeds.shape[0] == 1 and batch_size > 1:
                prompt_embeds = prompt_embeds.expand(batch_size, -1, -1)
                prompt_embeds_mask = None if prompt_embeds_mask is None else prompt_embeds_mask.expand(batch_size, -1)
            if prompt_embeds.shape[0] != batch_size:
                raise ValueError(f"`prompt_embeds` has batch size {prompt_embeds.shape[0]}, expected {batch_size}")
            prompt_embeds = prompt_embeds[:, :max_sequence_length]
            mask = None if prompt_embeds_mask is None else prompt_embeds_mask[:, :max_sequence_length]
            # An all-ones mask masks nothing: without it attention takes its unmasked, faster path (as in
            # QwenImageLayeredPipeline). With the mask, the tiny pipeline's latent path took 1.3x Qwen's CPU time.
            mask = None if mask is None or bool(mask.all()) else mask.to(device)
            return prompt_embeds.to(device=device, dtype=self.transformer.dtype), mask
        prompts = [prompt] * batch_size if prompt is None or isinstance(prompt, str) else list(prompt)
        if len(prompts) != batch_size:
            raise ValueError(f"got {len(prompts)} prompts for {batch_size} images")
        if self.text_encoder is None or self.tokenizer is None:
            if any(p for p in prompts):
                raise ValueError(
                    "a `prompt` needs a `text_encoder` and a `tokenizer`, and this pipeline has none; leave `prompt` "
                    "empty or pass `prompt_embeds`"
                )
            return self.empty_prompt_embeds(batch_size, device), None

        texts = [PROMPT_TEMPLATE.format(p or "") for p in prompts]
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt").to(device)
        hidden = self.text_encoder(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        ).hidden_states[-1]
        # Each prompt's own tokens, without the template's system part, then padded to a common length.
        sequences = [
            states[mask.bool()][PROMPT_TEMPLATE_DROP_TOKENS:][:max_sequence_length]
            for states, mask in zip(hidden, tokens.attention_mask)
        ]
        length = max(1, max(len(s) for s in sequences))
        embeds = hidden.new_zeros(batch_size, length, hidden.shape[-1])
        mask = torch.zeros(batch_size, length, dtype=torch.long, device=device)
        for index, sequence in enumerate(sequences):
            embeds[index, : len(sequence)] = sequence
            mask[index, : len(sequence)] = 1
        embeds = embeds.to(dtype=self.transformer.dtype)
        return embeds, (None if bool(mask.all()) else mask)

    def caption_images(self, images: Sequence[np.ndarray], max_new_tokens: int = 256) -> list[str]:
        """Captions from the vision-language text encoder (needs `text_encoder` and `processor`)."""
        if self.text_encoder is None or self.processor is None:
            raise ValueError("captioning needs a `text_encoder` and a `processor`")
        device = self._execution_device
        captions = []
        for image in images:
            pil = PIL.Image.fromarray(np.round(image * 255).astype(np.uint8), "RGB")
            inputs = self.processor(text=CAPTION_TEMPLATE, images=pil, padding=True, return_tensors="pt").to(device)
            generated = self.text_encoder.generate(**inputs, max_new_tokens=max_new_tokens)
            new_tokens = generated[:, inputs.input_ids.shape[1] :]
            captions.append(self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip())
        return captions

    # ------------------------------------------------------------------ latents
    @staticmethod
    def pack_latents(latents: torch.Tensor) -> torch.Tensor:
        """``(B, F, C, h, w)`` -> ``(B, F * h/2 * w/2, C * 4)``: 2x2 patches, frame-major.

        This is Qwen-Image-Layered's token layout; real weights depend on it.
        """
        batch, frames, channels, height, width = latents.shape
        latents = latents.view(batch, frames, channels, height // 2, 2, width // 2, 2)
        latents = latents.permute(0, 1, 3, 5, 2, 4, 6)
        return latents.reshape(batch, frames * (height // 2) * (width // 2), channels * 4)

    @staticmethod
    def unpack_latents(latents: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """Inverse of `pack_latents`; ``height``/``width`` are the latent's (before patching)."""
        batch, _, packed_channels = latents.shape
        channels = packed_channels // 4
        latents = latents.view(batch, frames, height // 2, width // 2, channels, 2, 2)
        latents = latents.permute(0, 1, 4, 2, 5, 3, 6)
        return latents.reshape(batch, frames, channels, height, width)

    def _latent_stats(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.latent_channels, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, device=device, dtype=dtype).view(shape)
        std = torch.tensor(self.vae.config.latents_std, device=device, dtype=dtype).view(shape)
        return mean, std

    def encode_images(
        self, images: Sequence[np.ndarray], height: int, width: int, device: torch.device | None = None
    ) -> torch.Tensor:
        """Condition latents: images resized to ``(height, width)``, made RGBA (opaque), encoded, normalised.

        Returns ``(B, C, 1, height / f, width / f)`` (the VAE posterior's mode, so encoding is deterministic).
        """
        device = device or self._execution_device
        pixels = []
        for image in images:
            tensor = torch.from_numpy(image).to(device).permute(2, 0, 1)[None]
            if image.shape[:2] != (height, width):
                shrinking = image.shape[0] > height or image.shape[1] > width
                tensor = F.interpolate(
                    tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking
                ).clamp(0, 1)
            pixels.append(torch.cat([tensor, torch.ones_like(tensor[:, :1])], dim=1))
        pixels = (torch.cat(pixels) * 2 - 1).unsqueeze(2).to(self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode()
        mean, std = self._latent_stats(latents.device, latents.dtype)
        return (latents - mean) / std

    def decode_latents(self, latents: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """Packed latents of ``frames`` output frames -> RGBA ``(B, frames, 4, height, width)`` float32 in [0, 1].

        A leading composite frame (see ``leading_composite_frame``) is dropped here.
        """
        factor = self.vae_scale_factor
        latents = self.unpack_latents(latents, frames, height // factor, width // factor).to(self.vae.dtype)
        if self.config.leading_composite_frame:
            latents = latents[:, 1:]
        batch, kept, channels = latents.shape[:3]
        latents = latents.permute(0, 2, 1, 3, 4)
        mean, std = self._latent_stats(latents.device, latents.dtype)
        latents = latents * std + mean
        latents = latents.permute(0, 2, 1, 3, 4).reshape(batch * kept, channels, 1, *latents.shape[-2:])
        pixels = self.vae.decode(latents, return_dict=False)[0][:, :, 0]
        pixels = ((pixels.float() + 1) / 2).clamp(0, 1)
        return pixels.view(batch, kept, *pixels.shape[1:])

    # ------------------------------------------------------------------ layers at full resolution
    def layers_from_frames(
        self, frames: torch.Tensor, image: np.ndarray, drop_empty_layers: bool = False
    ) -> tuple[LayeredImage, RecompositionReport]:
        """Decoded frames ``(K+1, 4, h, w)`` (background, objects back to front) -> the input's full-size layers.

        RGBA is resized to the input's size; the alpha decoder refines each object's alpha against the full
        image; with ``drop_empty_layers``, objects whose refined alpha covers less than `EMPTY_LAYER_COVERAGE` of
        the image are dropped (at least the most covered one is kept); the shadow head predicts each object's
        shadow; alphas and shadows under `MIN_VISIBLE_ALPHA` become 0; object colours where the VAE's alpha is
        low come from the input (`CONFIDENT_COLOUR_ALPHA`); the background is made opaque by compositing it over
        the input where it is transparent; finally colours are reconciled with the input
        (`reconcile_colours`, as `reconcile_with_image` does) and the remaining error is measured
        (`check_decomposition`).
        """
        height, width = image.shape[:2]
        full = frames.float()
        if full.shape[-2:] != (height, width):
            shrinking = height < full.shape[-2] or width < full.shape[-1]
            full = F.interpolate(full, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)
            full = full.clamp(0, 1)
        target = torch.from_numpy(image).to(frames.device, torch.float32).permute(2, 0, 1)[None]

        objects = full[1:]
        decoder_dtype = self.alpha_decoder.dtype
        image_batch = target.expand(objects.shape[0], -1, -1, -1)
        alphas = self.alpha_decoder(image_batch.to(decoder_dtype), objects[:, 3:].to(decoder_dtype)).float()
        alphas = alphas.masked_fill(alphas < MIN_VISIBLE_ALPHA, 0.0)
        if drop_empty_layers:
            keep = self.non_empty_layers(alphas)
            objects, alphas, image_batch = objects[keep], alphas[keep], image_batch[: len(keep)]
        union = 1 - torch.prod(1 - alphas, dim=0, keepdim=True).expand(alphas.shape[0], -1, -1, -1)
        head_dtype = self.shadow_head.dtype
        shadows = self.shadow_head(image_batch.to(head_dtype), alphas.to(head_dtype), union.to(head_dtype)).float()
        shadows = shadows.masked_fill(shadows < MIN_VISIBLE_ALPHA, 0.0)

        # Colours, background first: the background over the input where it is transparent, then the objects'
        # colours blended towards the input where the VAE's alpha is low. Written into one tensor for the solver.
        colors = torch.empty((objects.shape[0] + 1, 3, height, width), dtype=torch.float32, device=full.device)
        torch.lerp(target[0], full[0, :3], full[0, 3:], out=colors[0])
        confidence = (objects[:, 3:] / CONFIDENT_COLOUR_ALPHA).clamp_(0, 1)
        torch.lerp(image_batch, objects[:, :3], confidence, out=colors[1:])
        layered = self._reconciled_layers(colors, alphas, shadows, target[0])
        return layered, check_decomposition(layered, image)

    @staticmethod
    def _reconciled_layers(
        colors: torch.Tensor, alphas: torch.Tensor, shadows: torch.Tensor, target: torch.Tensor
    ) -> LayeredImage:
        """Full-size colours ``(K+1, 3, H, W)`` (background first), object alphas and shadows ``(K, 1, H, W)`` -> the
        `LayeredImage` whose colours are reconciled with ``target`` ``(3, H, W)``.

        What `reconcile_with_image` does, run on the pipeline's channel-first tensors directly (no full-canvas copies
        of finished layers, no second `LayeredImage`): the same solver, `reconcile_colours`.
        """
        count, height, width = alphas.shape[0], *alphas.shape[-2:]
        colors = colors.reshape(count + 1, 3, -1).cpu().numpy()
        alpha = alphas.reshape(count, 1, -1).cpu().numpy()
        shadow = shadows.reshape(count, 1, -1).cpu().numpy()
        weights = visible_weights(list(alpha), list((1 - alpha) * (1 - shadow)))
        reconcile_colours(colors, weights, target.reshape(3, -1).cpu().numpy())
        pixels = colors.reshape(count + 1, 3, height, width)
        foregrounds = np.empty((count, height, width, 4), np.float32)
        foregrounds[..., :3] = pixels[1:].transpose(0, 2, 3, 1)
        foregrounds[..., 3] = alpha.reshape(count, height, width)
        return LayeredImage(
            np.ascontiguousarray(pixels[0].transpose(1, 2, 0)),
            list(foregrounds),
            list(shadow.reshape(count, height, width)),
        )

    @staticmethod
    def non_empty_layers(alphas: torch.Tensor, min_coverage: float = EMPTY_LAYER_COVERAGE) -> list[int]:
        """Indices (in order) of the objects whose alpha ``(K, 1, H, W)`` covers at least ``min_coverage`` of the
        image (mean alpha); the most covered object when none does."""
        coverage = alphas.float().mean(dim=(1, 2, 3))
        keep = torch.nonzero(coverage >= min_coverage).flatten().tolist()
        return keep or [int(coverage.argmax())]

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_qwen_image_layered(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        shadow_head: ShadowHead | None = None,
        alpha_decoder: AlphaDecoder | None = None,
        load_text_encoder: bool = False,
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> LiWiDecompositionPipeline:
        """Build a LiWi pipeline from a `QwenImageLayeredPipeline` folder (or Hub id): its transformer, VAE and
        scheduler, plus LiWi heads (fresh default ones unless given).

        Args:
            pretrained_model_name_or_path: the folder (``transformer/``, ``vae/``, ``scheduler/`` inside).
            shadow_head, alpha_decoder: trained heads; untrained defaults predict no shadow and keep the
                transformer's alpha.
            load_text_encoder: also load ``text_encoder``, ``tokenizer`` and ``processor`` (Qwen2.5-VL, about
                16 GB in bf16) when the folder has them; by default the pipeline runs with the empty-prompt
                embedding.
            dtype: dtype of every model (e.g. ``torch.bfloat16`` on a GPU); ``torch_dtype`` is the older name.
            kwargs: loading options passed to each ``from_pretrained`` (``local_files_only``, ``revision``,
                ``cache_dir``, ``variant``...).

        The Qwen-Image-Layered transformer generates the recomposed image as its first frame, so the pipeline
        is built with ``leading_composite_frame=True``.
        """
        dtype = dtype if dtype is not None else torch_dtype
        model_kwargs = dict(kwargs)
        if dtype is not None:
            model_kwargs["dtype"] = dtype
        hub_kwargs = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS}
        model_index = cls._read_model_index(pretrained_model_name_or_path, hub_kwargs)
        if model_index is not None:
            for name in ("transformer", "vae"):
                if not model_index.get(name) or model_index[name][0] is None:
                    raise ValueError(f"{pretrained_model_name_or_path}: model_index.json lists no {name!r}")
            if model_index.get("_class_name") != "QwenImageLayeredPipeline":
                logger.warning(
                    f"{pretrained_model_name_or_path} holds a {model_index.get('_class_name')!r}, not a "
                    "QwenImageLayeredPipeline; loading its transformer and VAE anyway"
                )
        transformer = QwenImageTransformer2DModel.from_pretrained(
            pretrained_model_name_or_path, subfolder="transformer", **model_kwargs
        )
        vae = AutoencoderKLQwenImage.from_pretrained(pretrained_model_name_or_path, subfolder="vae", **model_kwargs)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
            pretrained_model_name_or_path, subfolder="scheduler", **hub_kwargs
        )
        shadow_head = shadow_head if shadow_head is not None else ShadowHead()
        alpha_decoder = alpha_decoder if alpha_decoder is not None else AlphaDecoder()
        if dtype is not None:
            shadow_head, alpha_decoder = shadow_head.to(dtype), alpha_decoder.to(dtype)

        text_parts: dict[str, Any] = {}
        if load_text_encoder:
            text_parts = cls._load_text_parts(
                pretrained_model_name_or_path, model_index or {}, model_kwargs, hub_kwargs
            )
        return cls(
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
            shadow_head=shadow_head,
            alpha_decoder=alpha_decoder,
            leading_composite_frame=True,
            default_resolution=640,  # Qwen-Image-Layered's smaller resolution bucket
            **text_parts,
        )

    @staticmethod
    def _read_model_index(path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> dict[str, Any] | None:
        if os.path.isdir(path):
            index_file = os.path.join(path, "model_index.json")
            if not os.path.isfile(index_file):
                return None
        else:
            from huggingface_hub import hf_hub_download

            index_file = hf_hub_download(str(path), "model_index.json", **hub_kwargs)
        with open(index_file, encoding="utf-8") as handle:
            return json.load(handle)

    @staticmethod
    def _load_text_parts(
        path: str | os.PathLike, model_index: dict[str, Any], model_kwargs: dict[str, Any], hub_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        import importlib

        parts = {}
        for name in ("text_encoder", "tokenizer", "processor"):
            entry = model_index.get(name)
            if not entry or entry[0] is None:
                continue
            library, class_name = entry
            loader = getattr(importlib.import_module(library), class_name)
            options = model_kwargs if name == "text_encoder" else hub_kwargs
            parts[name] = loader.from_pretrained(path, subfolder=name, **options)
        if "text_encoder" not in parts:
            raise ValueError(f"{path}: `load_text_encoder=True` but model_index.json lists no text_encoder")
        return parts

    # ------------------------------------------------------------------ denoising
    def prepare_latents(
        self,
        images: Sequence[np.ndarray],
        frames: int,
        height: int,
        width: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(initial noise, condition)`` for images of one processing size, both packed.

        The noise has ``frames`` frames ``(B, frames * tokens, C * 4)``: drawn from ``generator`` (one per image
        when a list) unless ``latents`` are given; the condition is the images' latents, one frame.
        """
        device, dtype = self._execution_device, self.transformer.dtype
        condition = self.encode_images(images, height, width, device)
        condition = self.pack_latents(condition.permute(0, 2, 1, 3, 4).to(dtype))
        count, latent_height, latent_width = (
            len(images),
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is not None:
            expected = (count, frames * (latent_height // 2) * (latent_width // 2), self.latent_channels * 4)
            if tuple(latents.shape) != expected:
                raise ValueError(
                    f"`latents` must have the packed shape {expected} for {frames} frames at {width}x{height}, "
                    f"got {tuple(latents.shape)}"
                )
            return latents.to(device=device, dtype=dtype), condition
        shape = (count, frames, self.latent_channels, latent_height, latent_width)
        if isinstance(generator, list):
            noise = torch.cat(
                [randn_tensor((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator]
            )
        else:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return self.pack_latents(noise), condition

    def prepare_timesteps(
        self,
        num_inference_steps: int,
        sigmas: list[float] | None,
        condition_seq_len: int,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Timesteps, shifted for the condition's token count as Qwen-Image-Layered does."""
        if sigmas is None:
            sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        self.scheduler.set_timesteps(
            sigmas=sigmas, device=device or self._execution_device, mu=layered_shift_mu(condition_seq_len)
        )
        self.scheduler.set_begin_index(0)
        self._num_timesteps = len(self.scheduler.timesteps)
        return self.scheduler.timesteps

    def denoise(
        self,
        images: Sequence[np.ndarray],
        frames: int,
        height: int,
        width: int,
        prompt_embeds: torch.Tensor,
        prompt_embeds_mask: torch.Tensor | None,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_mask: torch.Tensor | None = None,
        true_cfg_scale: float = 1.0,
        sigmas: list[float] | None = None,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> torch.Tensor:
        """Denoise the images of one processing size ``(height, width)``; returns the packed latents.

        The condition frame is appended after the ``frames`` output frames at every step (RoPE layer index -1);
        ``negative_prompt_embeds`` switch on true classifier-free guidance.
        """
        latents, condition = self.prepare_latents(images, frames, height, width, generator, latents)
        # Devices and dtypes are passed down: `_execution_device` walks every module of every component.
        timesteps = self.prepare_timesteps(num_inference_steps, sigmas, condition.shape[1], latents.device)
        count, tokens = len(images), latents.shape[1]
        patches = (1, height // self.vae_scale_factor // 2, width // self.vae_scale_factor // 2)
        transformer_kwargs = {
            "img_shapes": [[patches] * (frames + 1)] * count,
            "additional_t_cond": (
                torch.zeros(count, dtype=torch.long, device=latents.device)
                if self.transformer.config.use_additional_t_cond
                else None
            ),
            "attention_kwargs": self.attention_kwargs,
            "return_dict": False,
        }
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for step, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                model_input = torch.cat([latents, condition], dim=1)
                timestep = (t / 1000).expand(count).to(latents.dtype)
                with self.transformer.cache_context("cond"):
                    velocity = self.transformer(
                        hidden_states=model_input,
                        timestep=timestep,
                        encoder_hidden_states=prompt_embeds,
                        encoder_hidden_states_mask=prompt_embeds_mask,
                        **transformer_kwargs,
                    )[0][:, :tokens]
                if negative_prompt_embeds is not None:
                    with self.transformer.cache_context("uncond"):
                        negative_velocity = self.transformer(
                            hidden_states=model_input,
                            timestep=timestep,
                            encoder_hidden_states=negative_prompt_embeds,
                            encoder_hidden_states_mask=negative_prompt_embeds_mask,
                            **transformer_kwargs,
                        )[0][:, :tokens]
                    velocity = negative_velocity + true_cfg_scale * (velocity - negative_velocity)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    named = {"latents": latents, "prompt_embeds": prompt_embeds}
                    callback_kwargs = {name: named[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, step, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                progress_bar.update()
        self._current_timestep = None
        return latents

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(
        self,
        image: Any = None,
        num_layers: int | str = 3,
        resolution: int | None = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_mask: torch.Tensor | None = None,
        true_cfg_scale: float = 1.0,
        sigmas: list[float] | None = None,
        max_sequence_length: int = 512,
    ) -> LiWiDecompositionPipelineOutput | tuple:
        r"""Decompose images into layers.

        Args:
            image: a PIL image, a ``(H, W[, C])`` numpy array (uint8, uint16 or float in [0, 1]), a ``(C, H, W)``
                torch tensor in [0, 1], a batched ``(B, ...)`` array/tensor, or a list of these.
            num_layers: object layers K (1 to `max_num_layers`); the transformer generates K+1 frames:
                the background, then the objects back to front. ``"auto"`` decides K per image: the transformer
                generates `max_auto_layers` objects, and those whose full-resolution alpha covers less than
                `EMPTY_LAYER_COVERAGE` of the image (mean alpha below 0.001) are dropped before the shadows are
                predicted and the colours reconciled, so the rest still recompose to the input; the remaining
                objects keep their back-to-front order, and at least one (the most covered) is kept.
            resolution: the transformer works on about ``resolution**2`` pixels, keeping the aspect ratio
                (height and width multiples of `size_multiple`); layers come back at the input's size.
                None (default): the checkpoint's ``default_resolution`` (its training resolution).
            num_inference_steps: denoising steps.
            generator: a `torch.Generator`, or one per input image, for reproducible noise.
            latents: initial packed noise ``(B, frames * tokens, channels * 4)`` (all inputs must then share a
                processing size); drawn from ``generator`` when None.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (see `LiWiDecompositionPipelineOutput.images`) or
                ``"latent"`` (denoised packed latents; no decoding).
            return_dict: return a `LiWiDecompositionPipelineOutput`; otherwise the tuple
                ``(images, layers, latents, recomposition)``.
            callback_on_step_end: called as ``callback(pipeline, step, timestep, callback_kwargs)`` after every
                step; may return a dict with a replacement ``latents`` (or ``prompt_embeds``).
            callback_on_step_end_tensor_inputs: names put into ``callback_kwargs`` (default ``["latents"]``).
            attention_kwargs: passed to the transformer's attention processors (e.g. ``{"scale": 0.5}`` for LoRA).
            prompt: text describing the image; needs a text encoder. With a text encoder and a processor,
                None means: caption the image first (as Qwen-Image-Layered does).
            prompt_embeds, prompt_embeds_mask: precomputed text conditioning (``(B or 1, T, D)``, ``(B or 1, T)``).
            negative_prompt, negative_prompt_embeds, negative_prompt_embeds_mask: for true classifier-free
                guidance when ``true_cfg_scale > 1``.
            true_cfg_scale: guidance scale; 1 (default) runs the transformer once per step.
            sigmas: custom noise levels (one per step, from 1 down); default ``linspace(1, 1 / steps, steps)``.
            max_sequence_length: longest text conditioning kept, in tokens.

        Returns:
            `LiWiDecompositionPipelineOutput` (or a tuple, see ``return_dict``).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs.
        resolution = self.config.default_resolution if resolution is None else resolution
        images = self.prepare_images(image)
        self.check_inputs(
            len(images),
            num_layers,
            resolution,
            num_inference_steps,
            output_type,
            generator=generator,
            sigmas=sigmas,
            prompt=prompt,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            true_cfg_scale=true_cfg_scale,
        )
        groups = self.group_by_processing_size(images, resolution)
        if len(groups) > 1 and (latents is not None or output_type == "latent"):
            raise ValueError(
                '`latents` and output_type="latent" need all images to share a processing size (aspect ratio)'
            )

        # 2. Define call parameters.
        self._attention_kwargs = attention_kwargs or {}
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device
        auto = num_layers == "auto"
        frames = (self.max_auto_layers if auto else num_layers) + 1 + int(self.config.leading_composite_frame)

        # 3. Text conditioning for the whole batch (one all-zero token without a text encoder).
        if prompt is None and prompt_embeds is None and self.text_encoder is not None and self.processor is not None:
            prompt = self.caption_images(images)
        prompt_embeds, prompt_embeds_mask = self.encode_prompt(
            prompt, len(images), device, prompt_embeds, prompt_embeds_mask, max_sequence_length
        )
        do_true_cfg = true_cfg_scale > 1 and (negative_prompt is not None or negative_prompt_embeds is not None)
        if true_cfg_scale > 1 and not do_true_cfg:
            logger.warning("`true_cfg_scale` > 1 has no effect without `negative_prompt` or `negative_prompt_embeds`")
        if do_true_cfg:
            negative_prompt_embeds, negative_prompt_embeds_mask = self.encode_prompt(
                negative_prompt or "",
                len(images),
                device,
                negative_prompt_embeds,
                negative_prompt_embeds_mask,
                max_sequence_length,
            )

        # 4. Denoise each group of inputs that share a processing size, then 5. decode and build full-size layers.
        results: list[tuple[LayeredImage, RecompositionReport]] = [None] * len(images)  # type: ignore[list-item]
        for (height, width), indices in groups.items():
            denoised = self.denoise(
                [images[i] for i in indices],
                frames,
                height,
                width,
                self._select(prompt_embeds, indices),
                self._select(prompt_embeds_mask, indices),
                num_inference_steps,
                generator=self._select(generator, indices),
                latents=latents,
                negative_prompt_embeds=self._select(negative_prompt_embeds, indices) if do_true_cfg else None,
                negative_prompt_embeds_mask=self._select(negative_prompt_embeds_mask, indices),
                true_cfg_scale=true_cfg_scale,
                sigmas=sigmas,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs or ["latents"],
            )
            if output_type != "latent":
                decoded = self.decode_latents(denoised, frames, height, width)
                for row, index in enumerate(indices):
                    results[index] = self.layers_from_frames(decoded[row], images[index], drop_empty_layers=auto)
        self.maybe_free_model_hooks()

        # 6. Output.
        output = self._make_output(results, denoised, output_type)
        if not return_dict:
            return output.images, output.layers, output.latents, output.recomposition
        return output

    def _make_output(
        self,
        results: list[tuple[LayeredImage, RecompositionReport]],
        latents: torch.Tensor,
        output_type: str,
    ) -> LiWiDecompositionPipelineOutput:
        if output_type == "latent":
            return LiWiDecompositionPipelineOutput(images=None, layers=None, latents=latents, recomposition=None)
        layers = [layered for layered, _ in results]
        return LiWiDecompositionPipelineOutput(
            images=[self._layers_to_output(layered, output_type) for layered in layers],
            layers=layers,
            latents=None,
            recomposition=[report for _, report in results],
        )

    @staticmethod
    def _layers_to_output(layered: LayeredImage, output_type: str) -> Any:
        if output_type == "pil":
            return [layer for _, layer in layered.to_pil()]
        stack = np.stack([rgba for _, rgba in layered.to_rgba_stack()])
        if output_type == "np":
            return stack
        return torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()
