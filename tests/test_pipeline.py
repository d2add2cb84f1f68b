"""LiWiDecompositionPipeline on tiny random models (CPU, seeded): outputs, save/load, LoRA, dtype, offload,
Qwen-Image-Layered folders, recomposition, callbacks, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from liwi_diffusers import AlphaDecoder, LayeredImage, LiWiDecompositionPipeline, ShadowHead, check_decomposition
from liwi_diffusers.pipelines import LiWiDecompositionPipelineOutput, build_tiny_pipeline

CALL = {"num_layers": 2, "resolution": 64, "num_inference_steps": 2}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quiet(pipe: LiWiDecompositionPipeline) -> LiWiDecompositionPipeline:
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe() -> LiWiDecompositionPipeline:
    return quiet(build_tiny_pipeline(seed=0))


@pytest.fixture(scope="module")
def photo() -> PIL.Image.Image:
    """A real photo, small and not square (96x80)."""
    import skimage.data as skimage_data

    return PIL.Image.fromarray(skimage_data.astronaut()).resize((96, 80), PIL.Image.BICUBIC)


@pytest.fixture(scope="module")
def reference(pipe, photo) -> LiWiDecompositionPipelineOutput:
    """The tiny pipeline's output for the photo, seed 0, as float arrays (computed once)."""
    return pipe(photo, generator=seeded(0), output_type="np", **CALL)


# ---------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_every_output_type(pipe, photo, output_type):
    out = pipe(photo, generator=seeded(), output_type=output_type, **CALL)
    assert isinstance(out, LiWiDecompositionPipelineOutput)
    layer_count = 2 * CALL["num_layers"] + 1  # background, then shadow + object per object
    if output_type == "latent":
        assert out.images is None and out.layers is None and out.recomposition is None
        height, width = pipe.processing_size(photo.height, photo.width, CALL["resolution"])
        assert (height, width) == (64, 64)  # about 64**2 pixels in multiples of 16 (VAE factor 8, 2x2 patches)
        tokens = (height // 16) * (width // 16)
        assert out.latents.shape == (1, (CALL["num_layers"] + 1) * tokens, pipe.latent_channels * 4)
        assert torch.isfinite(out.latents).all()
        return
    assert out.latents is None
    assert len(out.layers) == 1 and isinstance(out.layers[0], LayeredImage)
    assert out.layers[0].size == photo.size and out.layers[0].num_objects == CALL["num_layers"]
    images = out.images[0]
    if output_type == "pil":
        assert len(images) == layer_count
        assert all(isinstance(im, PIL.Image.Image) and im.mode == "RGBA" and im.size == photo.size for im in images)
        assert np.asarray(images[0])[:, :, 3].min() == 255  # the background is opaque
    elif output_type == "np":
        assert isinstance(images, np.ndarray) and images.dtype == np.float32
        assert images.shape == (layer_count, photo.height, photo.width, 4)
        assert images.min() >= 0 and images.max() <= 1
    else:
        assert isinstance(images, torch.Tensor) and images.dtype == torch.float32
        assert images.shape == (layer_count, 4, photo.height, photo.width)
        assert images.min() >= 0 and images.max() <= 1


def test_output_types_agree_and_tuple_return(pipe, photo, reference):
    as_np = reference
    as_pt = pipe(photo, generator=seeded(), output_type="pt", **CALL)
    as_pil = pipe(photo, generator=seeded(), output_type="pil", **CALL)
    np.testing.assert_array_equal(as_pt.images[0].permute(0, 2, 3, 1).numpy(), as_np.images[0])
    pil_stack = np.stack([np.asarray(im) for im in as_pil.images[0]]).astype(np.float32) / 255
    np.testing.assert_allclose(pil_stack, as_np.images[0], atol=0.5 / 255 + 1e-6)
    images, layers, latents, reports = pipe(photo, generator=seeded(), output_type="pt", return_dict=False, **CALL)
    torch.testing.assert_close(images[0], as_pt.images[0], atol=0, rtol=0)
    assert latents is None and len(layers) == len(reports) == 1


def test_same_seed_same_output_different_seed_differs(pipe, photo, reference):
    first = reference.images[0]
    again = pipe(photo, generator=seeded(0), output_type="np", **CALL).images[0]
    other = pipe(photo, generator=seeded(1), output_type="np", **CALL).images[0]
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_tiny_pipeline_factory_is_deterministic():
    a, b, c = build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=1)
    for name in ("vae", "transformer", "shadow_head", "alpha_decoder"):
        sa, sb, sc = (getattr(p, name).state_dict() for p in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    custom = build_tiny_pipeline(transformer={"num_layers": 1}, leading_composite_frame=True)
    assert custom.transformer.config.num_layers == 1 and custom.config.leading_composite_frame


def test_image_kinds_give_the_same_result(pipe, photo, reference):
    array = np.array(photo)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    from_pil = reference.images[0]
    from_np = pipe(array, generator=seeded(), output_type="np", **CALL).images[0]
    from_pt = pipe(tensor, generator=seeded(), output_type="np", **CALL).images[0]
    np.testing.assert_allclose(from_np, from_pil, atol=1e-6)
    np.testing.assert_allclose(from_pt, from_pil, atol=1e-5)


# ---------------------------------------------------------------------------------------------- recomposition
def test_layers_recompose_to_the_input(photo, reference):
    out = reference
    layered, report = out.layers[0], out.recomposition[0]
    again = check_decomposition(layered, photo)
    assert report.mean_abs_error == pytest.approx(again.mean_abs_error, abs=1e-9)
    assert report.max_abs_error == pytest.approx(again.max_abs_error, abs=1e-9)
    composite = out.images[0][0, :, :, :3]  # the np stack composes with plain "over" too
    for layer in out.images[0][1:]:
        composite = layer[:, :, 3:] * layer[:, :, :3] + (1 - layer[:, :, 3:]) * composite
    target = np.asarray(photo, dtype=np.float32) / 255
    assert np.abs(composite - target).max() == pytest.approx(report.max_abs_error, abs=1e-5)
    # What reconcile achieves for a tiny random model on a real photo: within one 8-bit step everywhere.
    assert report.ok() and report.mean_abs_error < 1e-4
    # The untrained shadow head predicts sigmoid(-8) ~ 3e-4: under half an 8-bit step, so exactly no shadow.
    assert all(np.count_nonzero(shadow) == 0 for shadow in layered.shadows)


def test_object_colour_under_low_vae_alpha_comes_from_the_input():
    """Black colour under a transparent VAE output is no evidence: the photo's colour is used there."""
    from liwi_diffusers.pipelines.pipeline_liwi import CONFIDENT_COLOUR_ALPHA

    pipe = build_tiny_pipeline(seed=0)  # untrained heads keep the VAE's alpha and cast no shadow
    rng = np.random.default_rng(0)
    image = rng.random((16, 20, 3), dtype=np.float32)
    frames = torch.zeros(2, 4, 16, 20)
    frames[0] = 1.0  # an opaque white background
    frames[1, 3, :, 10:] = 1.0  # the object: opaque black on the right half, black under alpha 0 on the left
    frames[1, 3, :, 5] = CONFIDENT_COLOUR_ALPHA / 2  # a half-confident column, reconciled below
    with torch.no_grad():
        layered, _ = pipe.layers_from_frames(frames, image)
    colour, alpha = layered.foregrounds[0][..., :3], layered.foregrounds[0][..., 3]
    assert np.count_nonzero(alpha[:, :5]) == 0
    np.testing.assert_allclose(colour[:, :5], image[:, :5], atol=1e-6)
    np.testing.assert_allclose(alpha[:, 5], CONFIDENT_COLOUR_ALPHA / 2, atol=1e-6)
    # the reconciled colour still recomposes to the photo, starting from the half-blended guess
    composite = layered.compose()
    np.testing.assert_allclose(composite, image, atol=1e-5)


def test_pipeline_reconciles_as_reconcile_with_image_does():
    """The pipeline's channel-first reconcile gives the layers `reconcile_with_image` gives for the same guess."""
    from liwi_diffusers.layers import reconcile_with_image

    rng = np.random.default_rng(3)
    count, height, width = 2, 9, 13
    colors = torch.from_numpy(rng.random((count + 1, 3, height, width), dtype=np.float32))
    alphas = torch.from_numpy(rng.random((count, 1, height, width), dtype=np.float32))
    alphas[0, :, :, :4] = 0  # pixels only one object covers, and (with the shadow) pixels none does
    alphas[1, :, :2] = 0
    shadows = torch.from_numpy(0.3 * rng.random((count, 1, height, width), dtype=np.float32))
    shadows[:, :, :2, :4] = 0
    target = torch.from_numpy(rng.random((3, height, width), dtype=np.float32))
    guess = LayeredImage(
        colors[0].permute(1, 2, 0).numpy(),
        [torch.cat([colors[k + 1], alphas[k]]).permute(1, 2, 0).numpy() for k in range(count)],
        [shadow[0].numpy() for shadow in shadows],
    )
    image = target.permute(1, 2, 0).numpy()
    expected = reconcile_with_image(guess, image)
    layered = LiWiDecompositionPipeline._reconciled_layers(colors.clone(), alphas, shadows, target)
    np.testing.assert_allclose(layered.background, expected.background, atol=1e-6)
    for got, want in zip(layered.foregrounds + layered.shadows, expected.foregrounds + expected.shadows):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert layered.check(image).mean_abs_error < 0.1 * guess.check(image).mean_abs_error


def test_layers_from_frames_takes_a_float64_photo_as_float32():
    pipe = build_tiny_pipeline(seed=0)
    rng = np.random.default_rng(1)
    image = rng.random((12, 10, 3))  # float64
    frames = torch.from_numpy(rng.random((3, 4, 12, 10), dtype=np.float32))
    with torch.no_grad():
        wide, wide_report = pipe.layers_from_frames(frames, image)
        narrow, _ = pipe.layers_from_frames(frames, image.astype(np.float32))
    np.testing.assert_allclose(wide.background, narrow.background, atol=1e-6)
    for got, want in zip(wide.foregrounds, narrow.foregrounds):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert wide_report.ok()


def test_untrained_heads_keep_alpha_and_cast_no_shadow():
    decoder, head = AlphaDecoder(), ShadowHead()
    image, coarse = torch.rand(3, 3, 40, 24), torch.rand(3, 1, 40, 24)
    with torch.no_grad():
        torch.testing.assert_close(decoder(image, coarse), coarse)
        sigma = head(image, coarse, coarse.max(dim=0, keepdim=True).values.expand(3, -1, -1, -1))
    assert sigma.shape == (3, 1, 40, 24) and float(sigma.max()) < 1e-3
    with pytest.raises(ValueError, match="coarse_alpha"):
        decoder(image, coarse[:, :, :20])
    with pytest.raises(ValueError, match="channels"):
        head(image[:, :2], coarse)


# ---------------------------------------------------------------------------------------------- save / load
def test_save_pretrained_from_pretrained_round_trip(pipe, photo, reference, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["shadow_head"] == ["liwi_diffusers.models.shadow_head", "ShadowHead"]
    assert index["alpha_decoder"] == ["liwi_diffusers.models.alpha_decoder", "AlphaDecoder"]
    assert index["text_encoder"] == [None, None] and index["leading_composite_frame"] is False
    loaded = quiet(LiWiDecompositionPipeline.from_pretrained(tmp_path))
    for name in ("vae", "transformer", "shadow_head", "alpha_decoder"):
        saved, restored = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    before = reference.images[0]
    after = loaded(photo, generator=seeded(), output_type="np", **CALL).images[0]
    # Same weights, same seed; float32 BLAS results depend on the weights' memory alignment (safetensors maps
    # them at other offsets), so agreement is to round-off, not bit for bit.
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_lora_save_and_load_keeps_outputs_and_lora_alpha(photo, tmp_path):
    import peft
    from peft.utils import get_peft_model_state_dict

    pipe = quiet(build_tiny_pipeline(seed=0))
    base = pipe(photo, generator=seeded(), output_type="latent", **CALL).latents
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    pipe.transformer.add_adapter(config)
    noise = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, parameter in pipe.transformer.named_parameters():
            if "lora_" in name:  # lora_B starts at zero: perturb so the adapter changes the output
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=noise))
    with_lora = pipe(photo, generator=seeded(), output_type="latent", **CALL).latents
    assert (with_lora - base).abs().max() > 1e-2

    LiWiDecompositionPipeline.save_lora_weights(
        tmp_path,
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    fresh = quiet(build_tiny_pipeline(seed=0))
    fresh.load_lora_weights(tmp_path, adapter_name="liwi")
    assert fresh.transformer.peft_config["liwi"].lora_alpha == config.lora_alpha == 8
    assert fresh.transformer.peft_config["liwi"].r == 4
    reloaded = fresh(photo, generator=seeded(), output_type="latent", **CALL).latents
    torch.testing.assert_close(reloaded, with_lora, atol=1e-5, rtol=0)
    # `attention_kwargs={"scale": 0}` switches the adapter off again.
    off = fresh(photo, generator=seeded(), output_type="latent", attention_kwargs={"scale": 0.0}, **CALL).latents
    torch.testing.assert_close(off, base, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- dtype, offload
def test_bfloat16(pipe, photo, reference, tmp_path):
    pipe.save_pretrained(tmp_path)
    half = quiet(LiWiDecompositionPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16))
    assert all(
        module.dtype == torch.bfloat16 for module in (half.vae, half.transformer, half.shadow_head, half.alpha_decoder)
    )
    out = half(photo, generator=seeded(), output_type="np", **CALL)
    assert out.images[0].dtype == np.float32 and np.isfinite(out.images[0]).all()
    assert np.abs(out.images[0] - reference.images[0]).mean() < 0.02  # bf16 round-off, same decomposition
    assert out.recomposition[0].ok()


def test_model_cpu_offload(photo, reference):
    pipe = quiet(build_tiny_pipeline(seed=0))
    if not (torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())):
        with pytest.raises(RuntimeError, match="accelerator"):
            pipe.enable_model_cpu_offload()
    # With an explicit device the hooks work anywhere; on CPU the result is unchanged.
    pipe.enable_model_cpu_offload(device="cpu")
    offloaded = pipe(photo, generator=seeded(), output_type="np", **CALL).images[0]
    np.testing.assert_allclose(offloaded, reference.images[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------- Qwen-Image-Layered
def test_from_qwen_image_layered_folder(photo, tmp_path):
    from diffusers import QwenImageLayeredPipeline

    donor = build_tiny_pipeline(seed=3)
    qwen = QwenImageLayeredPipeline(
        scheduler=donor.scheduler,
        vae=donor.vae,
        text_encoder=None,
        tokenizer=None,
        processor=None,
        transformer=donor.transformer,
    )
    qwen.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageLayeredPipeline" and index["text_encoder"] == [None, None]

    pipe = quiet(LiWiDecompositionPipeline.from_qwen_image_layered(tmp_path))
    assert pipe.config.leading_composite_frame  # Qwen-Image-Layered generates the composite first
    assert isinstance(pipe.shadow_head, ShadowHead) and isinstance(pipe.alpha_decoder, AlphaDecoder)
    assert pipe.text_encoder is None
    donor_state = donor.transformer.state_dict()
    assert all(torch.equal(v, donor_state[k]) for k, v in pipe.transformer.state_dict().items())

    latents = pipe(photo, generator=seeded(), output_type="latent", **CALL).latents
    assert latents.shape[1] == (CALL["num_layers"] + 2) * 4 * 4  # composite + background + objects, 4x4 tokens
    out = pipe(photo, generator=seeded(), output_type="pil", **CALL)
    assert len(out.images[0]) == 2 * CALL["num_layers"] + 1 and out.recomposition[0].ok()

    # It then saves as a LiWi pipeline and loads back with the same convention.
    pipe.save_pretrained(tmp_path / "liwi")
    assert LiWiDecompositionPipeline.from_pretrained(tmp_path / "liwi").config.leading_composite_frame


def test_denoising_matches_qwen_image_layered_pipeline(photo, monkeypatch):
    """Same weights, noise and condition: our decoded frames equal QwenImageLayeredPipeline's layers.

    This pins what real Qwen-Image-Layered weights depend on: token packing, the frame layout along the RoPE
    layer axis, the appended condition frame, img_shapes, timesteps and shift, and the decoding.
    """
    import types

    from diffusers import QwenImageLayeredPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_layered

    pipe = quiet(build_tiny_pipeline(seed=0, leading_composite_frame=True))
    qwen = quiet(
        QwenImageLayeredPipeline(
            scheduler=pipe.scheduler,
            vae=pipe.vae,
            text_encoder=None,
            tokenizer=None,
            processor=None,
            transformer=pipe.transformer,
        )
    )
    # It only accepts resolution 640 or 1024 and reads the text encoder's dtype even when given embeddings:
    # process at 64x64 (the input is already 64x64, so neither pipeline resizes it) and give it a dtype.
    monkeypatch.setattr(pipeline_qwenimage_layered, "calculate_dimensions", lambda area, ratio: (64, 64))
    object.__setattr__(qwen, "text_encoder", types.SimpleNamespace(dtype=torch.float32))
    square = photo.resize((64, 64))
    theirs = qwen(
        square.convert("RGBA"),
        prompt="unused: prompt_embeds are given",
        prompt_embeds=pipe.empty_prompt_embeds(1),
        prompt_embeds_mask=torch.ones(1, 1, dtype=torch.long),
        true_cfg_scale=1.0,
        layers=CALL["num_layers"] + 1,  # their layers count the background
        num_inference_steps=CALL["num_inference_steps"],
        resolution=640,
        generator=seeded(),
        output_type="np",
    ).images[0]
    latents = pipe(square, generator=seeded(), output_type="latent", **CALL).latents
    frames = CALL["num_layers"] + 2  # composite, background, objects
    with torch.no_grad():
        ours = pipe.decode_latents(latents, frames, 64, 64)[0].permute(0, 2, 3, 1).numpy()
    assert ours.shape == theirs.shape == (CALL["num_layers"] + 1, 64, 64, 4)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_pack_and_unpack_latents_match_qwen_image_layered():
    from diffusers import QwenImageLayeredPipeline

    latents = torch.randn(2, 4, 8, 6, 10)  # (B, frames, C, h, w)
    packed = LiWiDecompositionPipeline.pack_latents(latents)
    assert torch.equal(packed, QwenImageLayeredPipeline._pack_latents(latents, 2, 8, 6, 10, 4))
    assert torch.equal(LiWiDecompositionPipeline.unpack_latents(packed, 4, 6, 10), latents)


def test_from_qwen_image_layered_rejects_an_rgb_vae(tmp_path):
    from diffusers import AutoencoderKLQwenImage

    donor = build_tiny_pipeline(seed=0)
    donor.transformer.save_pretrained(tmp_path / "transformer")
    donor.scheduler.save_pretrained(tmp_path / "scheduler")
    config = {**dict(donor.vae.config), "input_channels": 3}
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    AutoencoderKLQwenImage(**config).save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="RGBA VAE"):
        LiWiDecompositionPipeline.from_qwen_image_layered(tmp_path)


# ---------------------------------------------------------------------------------------------- callbacks
def test_callback_on_step_end_runs_every_step_and_can_modify_latents(pipe, photo):
    seen = []

    def record(pipeline, step, timestep, callback_kwargs):
        seen.append((step, float(timestep), tuple(callback_kwargs)))
        return {}

    pipe(
        photo,
        generator=seeded(),
        output_type="latent",
        callback_on_step_end=record,
        **{**CALL, "num_inference_steps": 3},
    )
    assert [s[0] for s in seen] == [0, 1, 2]
    assert seen[0][1] > seen[1][1] > seen[2][1] and seen[0][2] == ("latents",)

    def zero_last(pipeline, step, timestep, callback_kwargs):
        latents = callback_kwargs["latents"]
        return {"latents": torch.zeros_like(latents) if step == pipeline.num_timesteps - 1 else latents}

    out = pipe(photo, generator=seeded(), output_type="latent", callback_on_step_end=zero_last, **CALL)
    assert torch.count_nonzero(out.latents) == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(photo, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["noise"], **CALL)


# ---------------------------------------------------------------------------------------------- arguments, batches
@pytest.mark.parametrize("num_layers", [0, -1, 17, 2.5, True, "3"])
def test_num_layers_out_of_range(pipe, photo, num_layers):
    with pytest.raises(ValueError, match="num_layers"):
        pipe(photo, num_layers=num_layers, resolution=64, num_inference_steps=1)


def test_other_bad_arguments(pipe, photo):
    with pytest.raises(ValueError, match="output_type"):
        pipe(photo, output_type="jpeg", **CALL)
    with pytest.raises(ValueError, match="resolution"):
        pipe(photo, num_layers=2, resolution=8, num_inference_steps=1)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(photo, num_layers=2, resolution=64, num_inference_steps=0)
    with pytest.raises(ValueError, match="text_encoder"):
        pipe(photo, prompt="an astronaut", **CALL)
    with pytest.raises(ValueError, match="generators"):
        pipe([photo, photo], generator=[seeded()], **CALL)
    with pytest.raises(ValueError, match="latents"):
        pipe(photo, latents=torch.zeros(1, 3, 16), **CALL)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, "required"),
        ([], "empty"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.full((16, 16, 3), np.nan, np.float32), "NaN"),
        (np.zeros((16, 16, 5), np.float32), "channels"),
        (np.zeros((2, 2, 16, 16, 3), np.float32), "shape"),
        (np.full((16, 16, 3), 2.0, np.float32), r"\[0, 1\]"),
        (torch.zeros(5, 16, 16), "tensor"),
        ("photo.jpg", "PIL image"),
    ],
)
def test_bad_images_get_clear_errors(pipe, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        pipe(bad, **CALL)


def test_batch_of_two(pipe, photo, reference):
    wide = photo.resize((96, 40))  # another aspect ratio (processing size 48x96): denoised in its own group
    assert pipe.processing_size(40, 96, CALL["resolution"]) != pipe.processing_size(80, 96, CALL["resolution"])
    wide_alone = pipe(wide, generator=seeded(1), output_type="np", **CALL).images[0]
    batch = pipe([photo, wide], generator=[seeded(0), seeded(1)], output_type="np", **CALL)
    assert len(batch.images) == len(batch.layers) == len(batch.recomposition) == 2
    assert batch.layers[1].size == wide.size and batch.recomposition[1].ok()
    np.testing.assert_allclose(batch.images[0], reference.images[0], atol=1e-5)
    np.testing.assert_allclose(batch.images[1], wide_alone, atol=1e-5)

    array_batch = np.stack([np.asarray(photo), np.asarray(photo)])  # (B, H, W, C): one group, batched
    same = pipe(array_batch, generator=[seeded(0), seeded(0)], output_type="np", **CALL)
    np.testing.assert_allclose(same.images[0], reference.images[0], atol=1e-5)
    np.testing.assert_allclose(same.images[1], reference.images[0], atol=1e-5)
    with pytest.raises(ValueError, match="latent"):
        pipe([photo, wide], output_type="latent", **CALL)


def test_transparent_and_grayscale_inputs(pipe, photo, caplog):
    rgba = photo.convert("RGBA")
    alpha = np.full((photo.height, photo.width), 255, np.uint8)
    alpha[:10] = 0
    rgba.putalpha(PIL.Image.fromarray(alpha))
    out = pipe(rgba, generator=seeded(), output_type="np", **CALL)
    flattened = np.asarray(photo, np.float32) / 255
    flattened[:10] = 1.0  # shown over white
    assert check_decomposition(out.layers[0], flattened).ok()
    gray = pipe(photo.convert("L"), generator=seeded(), output_type="np", **CALL)
    assert gray.layers[0].size == photo.size


# ---------------------------------------------------------------------------------------------- text encoder
def _tiny_text_encoder():
    import transformers

    vocab = {chr(i): i for i in range(33, 127)}
    vocab.update({"Ġ": 127, "Ċ": 128, "<|endoftext|>": 129})
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    config = transformers.Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 256,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 32,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},
            "bos_token_id": 129,
            "eos_token_id": 129,
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 16},
        bos_token_id=129,
        eos_token_id=129,
    )
    torch.manual_seed(0)
    return transformers.Qwen2_5_VLForConditionalGeneration(config).eval(), tokenizer


def test_text_encoder_conditioning(photo):
    text_encoder, tokenizer = _tiny_text_encoder()
    pipe = quiet(build_tiny_pipeline(seed=0, text_encoder=text_encoder, tokenizer=tokenizer))
    embeds, mask = pipe.encode_prompt(["a cat", "an astronaut in a white suit"], batch_size=2)
    assert embeds.shape[0] == 2 and embeds.shape[2] == pipe.transformer.config.joint_attention_dim
    assert mask is not None and mask[0].sum() < mask[1].sum()  # the shorter prompt is padded
    cat = pipe(photo, prompt="a cat", generator=seeded(), output_type="latent", **CALL).latents
    dog = pipe(photo, prompt="a dog", generator=seeded(), output_type="latent", **CALL).latents
    assert (cat - dog).abs().max() > 0
    guided = pipe(
        photo, prompt="a cat", negative_prompt="", true_cfg_scale=3.0, generator=seeded(), output_type="latent", **CALL
    ).latents
    assert (guided - cat).abs().max() > 0


# ---------------------------------------------------------------------------------------------- default resolution
def test_resolution_none_means_the_config_default_resolution(photo, tmp_path):
    pipe = quiet(build_tiny_pipeline(seed=0, default_resolution=96))
    assert pipe.config.default_resolution == 96
    call = {k: v for k, v in CALL.items() if k != "resolution"}
    default = pipe(photo, generator=seeded(), output_type="latent", **call).latents
    explicit = pipe(photo, generator=seeded(), output_type="latent", **{**call, "resolution": 96}).latents
    height, width = pipe.processing_size(photo.height, photo.width, 96)
    assert default.shape[1] == (CALL["num_layers"] + 1) * (height // 16) * (width // 16)
    torch.testing.assert_close(default, explicit, atol=0, rtol=0)
    pipe.save_pretrained(tmp_path)  # the value travels with the checkpoint
    assert json.loads((tmp_path / "model_index.json").read_text())["default_resolution"] == 96
    assert LiWiDecompositionPipeline.from_pretrained(tmp_path).config.default_resolution == 96
    assert build_tiny_pipeline(seed=0).config.default_resolution == 640
    with pytest.raises(ValueError, match="default_resolution"):
        build_tiny_pipeline(seed=0, default_resolution=0)


def test_shipped_checkpoint_carries_its_training_resolution():
    from liwi_diffusers.checkpoints import shipped_checkpoint_path

    path = shipped_checkpoint_path("liwi-small")
    trained_at = json.loads((path / "training_summary.json").read_text())["args"]["resolution"]
    assert LiWiDecompositionPipeline.from_pretrained(path).config.default_resolution == trained_at == 128


# ---------------------------------------------------------------------------------------------- num_layers="auto"
def test_auto_layer_count_drops_empty_layers(photo, monkeypatch):
    """ "auto" generates `max_auto_layers` objects and drops those that cover (almost) nothing: the result equals
    building the layers from the non-empty frames alone."""
    pipe = quiet(build_tiny_pipeline(seed=0))
    monkeypatch.setattr(pipe, "max_auto_layers", 4)
    decode = pipe.decode_latents

    def decode_with_empty_objects(*args, **kwargs):
        frames = decode(*args, **kwargs).clone()
        frames[:, 2, 3] = 0.0  # object 2 (of 1..4): fully transparent
        frames[:, 4, 3] = 0.0
        frames[:, 4, 3, 10, 10] = 1.0  # object 4: a one-pixel speck, about 0.02% of the image after resizing
        return frames

    monkeypatch.setattr(pipe, "decode_latents", decode_with_empty_objects)
    auto = pipe(photo, num_layers="auto", generator=seeded(), output_type="np", resolution=64, num_inference_steps=2)
    assert auto.layers[0].num_objects == 2 and auto.images[0].shape[0] == 2 * 2 + 1
    assert auto.recomposition[0].ok()

    # The same noise with the count fixed at the maximum, then the layers from frames 0, 1 and 3 only.
    latents = pipe(photo, generator=seeded(), output_type="latent", num_layers=4, resolution=64, num_inference_steps=2)
    image = np.asarray(photo, np.float32) / 255
    with torch.no_grad():
        frames = decode_with_empty_objects(latents.latents, 5, 64, 64)[0]
        expected, _ = pipe.layers_from_frames(frames[[0, 1, 3]], image)
    for got, want in zip(auto.layers[0].foregrounds, expected.foregrounds):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(auto.layers[0].background, expected.background, atol=1e-6)


def test_auto_layer_count_threshold_and_limits(pipe, photo):
    from liwi_diffusers.pipelines.pipeline_liwi import EMPTY_LAYER_COVERAGE

    alphas = torch.zeros(4, 1, 100, 100)
    alphas[0, 0, :, :10] = 1.0  # 10% of the image
    alphas[1].view(-1)[: int(EMPTY_LAYER_COVERAGE * 10000) - 1] = 1.0  # just under the threshold: dropped
    alphas[2].view(-1)[: int(EMPTY_LAYER_COVERAGE * 10000)] = 1.0  # at the threshold: kept
    assert LiWiDecompositionPipeline.non_empty_layers(alphas) == [0, 2]
    empty = torch.zeros(3, 1, 10, 10)
    empty[1, 0, 0, 0] = 1e-4
    assert LiWiDecompositionPipeline.non_empty_layers(empty) == [1]  # nothing covers enough: the most covered
    with pytest.raises(ValueError, match="auto"):
        pipe(photo, num_layers="auto", output_type="latent", resolution=64, num_inference_steps=1)
    with pytest.raises(ValueError, match="num_layers"):
        pipe(photo, num_layers="automatic", resolution=64, num_inference_steps=1)


def test_an_all_ones_prompt_mask_is_dropped(pipe, photo):
    """An all-ones mask masks nothing: it is dropped (attention then takes its unmasked path, as in
    QwenImageLayeredPipeline), so the result equals passing no mask; a mask that masks something is kept."""
    embeds = torch.randn(1, 3, pipe.transformer.config.joint_attention_dim, generator=seeded())
    ones = torch.ones(1, 3, dtype=torch.long)
    assert pipe.encode_prompt(prompt_embeds=embeds, prompt_embeds_mask=ones)[1] is None
    partial = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pipe.encode_prompt(prompt_embeds=embeds, prompt_embeds_mask=partial)[1], partial)
    with_mask = pipe(
        photo, prompt_embeds=embeds, prompt_embeds_mask=ones, generator=seeded(), output_type="latent", **CALL
    )
    without = pipe(photo, prompt_embeds=embeds, generator=seeded(), output_type="latent", **CALL)
    torch.testing.assert_close(with_mask.latents, without.latents, atol=0, rtol=0)
    cut = pipe.encode_prompt(prompt_embeds=embeds, prompt_embeds_mask=partial, max_sequence_length=2)
    assert cut[0].shape[1] == 2 and cut[1] is None  # cut to max_sequence_length, leaving only unmasked tokens
