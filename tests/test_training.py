"""Training: `examples/train_lora.py` end to end (tiny model, tiny dataset), the objectives, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from liwi_diffusers.layers import compose_layers
from liwi_diffusers.training import (
    DegradationConfig,
    boundary_weights,
    build_from_scratch_pipeline,
    degrade_alpha,
    degrade_image_boundaries,
    flow_matching_loss,
    flow_matching_target,
    jpeg_like,
    layered_to_frames,
    load_training_output,
    noisy_latents,
    recomposition_loss,
    restoration_loss,
    sample_flow_sigmas,
    shadow_loss,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "train_lora.py"
RESOLUTION = 32  # a multiple of the tiny model's VAE factor (8) times its patch size (2)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LiWi-format dataset built by the ADD builder from bundled photos (a few seconds)."""
    from liwi_dataset_builder.sample_data import build_sample_dataset

    return build_sample_dataset(tmp_path_factory.mktemp("data") / "liwi-tiny", num_samples=6, resolution=32)


def launch(*arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    """``accelerate launch`` the training script on one CPU process."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--cpu",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(SCRIPT),
        *arguments,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        raise AssertionError(f"training failed ({result.returncode}):\n{output}")
    return result


def common_args(dataset: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--tiny_config",
        "--dataset_name",
        str(dataset),
        "--resolution",
        str(RESOLUTION),
        "--output_dir",
        str(output),
        "--report_to",
        "none",
        "--learning_rate",
        "1e-3",
        "--seed",
        "0",
        *extra,
    ]


def decompose(pipe: torch.nn.Module) -> np.ndarray:
    image = np.random.default_rng(0).random((RESOLUTION, RESOLUTION, 3), dtype=np.float32)
    generator = torch.Generator().manual_seed(0)
    output = pipe(
        image, num_layers=2, resolution=RESOLUTION, num_inference_steps=2, generator=generator, output_type="np"
    )
    return output.images[0]


@pytest.fixture(scope="session")
def lora_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("lora") / "run"
    launch(
        *common_args(
            tiny_dataset,
            output,
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "2",
            "--validation_steps",
            "2",
            "--num_validation_samples",
            "1",
            "--validation_inference_steps",
            "1",
            "--rank",
            "4",
            "--lora_alpha",
            "8",
            "--report_to",
            "tensorboard",
        )
    )
    return output


# ---------------------------------------------------------------------------------------------- end to end
def test_lora_training_writes_loadable_weights(lora_run: Path) -> None:
    for name in (
        "pytorch_lora_weights.safetensors",
        "shadow_head/config.json",
        "alpha_decoder/config.json",
        "README.md",
        "training_summary.json",
        "checkpoint-2",
    ):
        assert (lora_run / name).exists(), name
    from safetensors import safe_open

    with safe_open(str(lora_run / "pytorch_lora_weights.safetensors"), "pt") as handle:
        metadata = handle.metadata()
        assert any(key.startswith("transformer.") for key in handle.keys())  # noqa: SIM118 (not iterable)
    assert metadata and "lora_adapter_metadata" in metadata
    summary = json.loads((lora_run / "training_summary.json").read_text())
    assert summary["global_step"] == 2
    assert "rgb_l1@0" in summary["validation"]
    card = (lora_run / "README.md").read_text()
    assert "steps: 2" in card and "library_name: diffusers" in card

    untrained = decompose(build_from_scratch_pipeline("tiny", seed=0))
    pipe = load_training_output(build_from_scratch_pipeline("tiny", seed=0), lora_run)
    adapter = next(iter(pipe.transformer.peft_config.values()))
    assert adapter.r == 4 and adapter.lora_alpha == 8  # restored from the adapter metadata
    assert not np.allclose(decompose(pipe), untrained)
    # tensorboard comes with the `train` extra (and so with `dev`): its event files must be written
    assert list((lora_run / "logs").rglob("events.out.tfevents.*")), "no tensorboard event files"


def test_full_training_and_resume(tiny_dataset: Path, tmp_path: Path) -> None:
    from liwi_diffusers import LiWiDecompositionPipeline

    output = tmp_path / "full"
    args = common_args(
        tiny_dataset,
        output,
        "--train_mode",
        "full",
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "1",
        "--validation_split",
        "",
    )
    launch(*args, "--max_train_steps", "2")
    assert (output / "checkpoint-2").is_dir() and (output / "model_index.json").is_file()
    first = decompose(LiWiDecompositionPipeline.from_pretrained(output))
    assert not np.allclose(first, decompose(build_from_scratch_pipeline("tiny", seed=0)))

    result = launch(*args, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    assert "resuming from" in result.stdout + result.stderr
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["samples_seen"] == 2  # only steps 3 and 4 were run
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-4"]  # rotation kept one
    assert not np.allclose(decompose(LiWiDecompositionPipeline.from_pretrained(output)), first)

    # LoRA on top of a saved pipeline folder (as users fine-tune a released model).
    lora = tmp_path / "lora-on-pipeline"
    launch(
        "--pretrained_model_name_or_path",
        str(output),
        "--dataset_name",
        str(tiny_dataset),
        "--resolution",
        str(RESOLUTION),
        "--output_dir",
        str(lora),
        "--report_to",
        "none",
        "--max_train_steps",
        "1",
        "--validation_split",
        "",
        "--learning_rate",
        "1e-2",
    )
    assert not (lora / "vae").exists()  # a pretrained VAE stays frozen
    base = LiWiDecompositionPipeline.from_pretrained(output)
    tuned = load_training_output(LiWiDecompositionPipeline.from_pretrained(output), lora)
    assert not np.allclose(decompose(tuned), decompose(base))


# ---------------------------------------------------------------------------------------------- bad input
def _write_rows(folder: Path, split: str, table: pa.Table) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def test_missing_columns_fail_before_training(tmp_path: Path) -> None:
    dataset = _write_rows(tmp_path / "bad", "train", pa.table({"composite": [b"x"], "labels": [["a"]]}))
    result = launch(*common_args(dataset, tmp_path / "out", "--max_train_steps", "1"), check=False)
    assert result.returncode != 0
    assert "missing column(s) ['background', 'foregrounds', 'shadows']" in result.stderr
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()


def test_resolution_not_divisible_fails_before_training(tiny_dataset: Path, tmp_path: Path) -> None:
    result = launch(
        *common_args(tiny_dataset, tmp_path / "out", "--max_train_steps", "1", "--resolution", "40"), check=False
    )
    assert result.returncode != 0
    assert "not a multiple of the VAE factor times the patch size (16)" in result.stderr
    assert "steps:" not in result.stderr


def test_empty_split_fails_before_training(tiny_dataset: Path, tmp_path: Path) -> None:
    table = pq.read_table(next((tiny_dataset / "data").glob("train-*.parquet")))
    dataset = _write_rows(tmp_path / "empty", "train", table.slice(0, 0))
    _write_rows(dataset, "test", table.slice(0, 1))
    result = launch(*common_args(dataset, tmp_path / "out", "--max_train_steps", "1"), check=False)
    assert result.returncode != 0
    assert "empty" in result.stderr.splitlines()[-1]

    result = launch(*common_args(tiny_dataset, tmp_path / "out", "--validation_split", "nope"), check=False)
    assert result.returncode != 0 and "no split 'nope'" in result.stderr


# ---------------------------------------------------------------------------------------------- objectives
def _layers(seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    background = torch.rand(2, 3, 16, 16, generator=generator)
    colors = torch.rand(2, 3, 3, 16, 16, generator=generator)
    alphas = (torch.rand(2, 3, 1, 16, 16, generator=generator) > 0.6).float()
    shadows = 0.5 * torch.rand(2, 3, 1, 16, 16, generator=generator)
    composite = compose_layers(background, colors.transpose(0, 1), alphas.transpose(0, 1), shadows.transpose(0, 1))
    return background, colors, alphas, shadows, composite


def test_perfect_prediction_has_zero_recomposition_loss() -> None:
    background, colors, alphas, shadows, composite = _layers()
    assert recomposition_loss(background, colors, alphas, shadows, composite).item() == pytest.approx(0, abs=1e-7)
    wrong = recomposition_loss(background, colors, alphas, torch.zeros_like(shadows), composite)
    assert wrong.item() > 1e-3  # leaving out the shadows does not re-create the composite


def test_recomposition_loss_is_differentiable() -> None:
    background, colors, alphas, shadows, composite = _layers()
    shadows = torch.zeros_like(shadows).requires_grad_(True)
    recomposition_loss(background, colors, alphas, shadows, composite).backward()
    assert shadows.grad is not None and shadows.grad.abs().sum() > 0


def test_degraded_matte_gives_positive_restoration_loss() -> None:
    alpha = torch.zeros(2, 1, 32, 32)
    alpha[:, :, 8:24, 10:26] = 1
    degraded = degrade_alpha(alpha, DegradationConfig(), torch.Generator().manual_seed(0))
    assert degraded.shape == alpha.shape and degraded.min() >= 0 and degraded.max() <= 1
    weights = boundary_weights(alpha)
    assert restoration_loss(degraded, alpha, weights).item() > 0.01
    assert restoration_loss(alpha, alpha, weights).item() == 0
    assert weights.max() > 1 and weights.min() == 1  # boundaries weigh more


def test_degradations_are_deterministic_for_a_seed() -> None:
    alpha = torch.zeros(3, 1, 48, 48)
    alpha[:, :, 18:30, 18:30] = 1
    image = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return degrade_alpha(alpha, generator=generator), degrade_image_boundaries(image, alpha, generator=generator)

    first, second, other = run(3), run(3), run(4)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    far = alpha.new_ones(alpha.shape, dtype=torch.bool)
    far[:, :, 8:40, 8:40] = False  # pixels far from the boundary keep their colour
    assert torch.allclose(first[1][far.expand_as(image)], image[far.expand_as(image)])


def test_jpeg_like_keeps_flat_images_and_damages_edges() -> None:
    flat = torch.full((1, 1, 16, 16), 0.5)
    assert torch.allclose(jpeg_like(flat, 30), flat, atol=1e-3)
    edge = torch.zeros(1, 1, 16, 16)
    edge[..., 5:] = 1
    assert (jpeg_like(edge, 20) - edge).abs().max() > 0.02


def test_flow_matching_pieces() -> None:
    latents, noise = torch.randn(2, 8, 4), torch.randn(2, 8, 4)
    sigmas = torch.tensor([0.0, 1.0])
    mixed = noisy_latents(latents, noise, sigmas)
    assert torch.equal(mixed[0], latents[0]) and torch.equal(mixed[1], noise[1])
    target = flow_matching_target(latents, noise)
    assert flow_matching_loss(target, target).item() == 0
    # One Euler step of the scheduler with the exact velocity lands on the clean latents.
    assert torch.allclose(mixed[1] + (0 - 1) * target[1], latents[1], atol=1e-6)
    wrong = target.clone()
    wrong[1] += 1  # only the second sample is wrong, and its tokens weigh nothing
    weights = torch.zeros(2, 8)
    weights[0] = 1
    assert flow_matching_loss(wrong, target, weights).item() == 0
    assert flow_matching_loss(wrong, target).item() == pytest.approx(0.5)


def test_sigmas_follow_the_scheduler_shift() -> None:
    pipe = build_from_scratch_pipeline("tiny")
    generator = torch.Generator().manual_seed(0)
    sigmas = sample_flow_sigmas(pipe.scheduler, 1000, mu=2.0, generator=generator)
    assert sigmas.min() > 0 and sigmas.max() <= 1
    raw = torch.rand(1000, generator=torch.Generator().manual_seed(0)).clamp(1e-4, 1)
    assert torch.allclose(sigmas, pipe.scheduler.time_shift(2.0, 1.0, raw).float())
    assert sigmas.mean() > raw.mean()  # a larger mu shifts towards noise, as at inference
    with pytest.raises(ValueError, match="mu"):
        sample_flow_sigmas(pipe.scheduler, 4)


def test_shadow_loss_has_gradient_at_the_heads_start() -> None:
    logits = torch.full((1, 1, 8, 8), -8.0, requires_grad=True)
    shadow_loss(logits, torch.full((1, 1, 8, 8), 0.5)).backward()
    assert logits.grad.abs().min() > 0


def test_layered_to_frames_pads_merges_and_bakes() -> None:
    from liwi_diffusers.layers import LayeredImage

    rng = np.random.default_rng(0)
    foregrounds = [
        np.concatenate([rng.random((16, 16, 3)), (rng.random((16, 16, 1)) > 0.5)], 2).astype(np.float32)
        for _ in range(3)
    ]
    shadows = [(0.4 * rng.random((16, 16))).astype(np.float32) for _ in range(3)]
    layered = LayeredImage(rng.random((16, 16, 3)).astype(np.float32), foregrounds, shadows)
    composite = torch.from_numpy(layered.compose()).permute(2, 0, 1).float()
    for count, bake in ((2, False), (5, False), (3, True)):
        frames = layered_to_frames(layered, count, (16, 16), bake_shadows=bake)
        assert frames["colors"].shape == (count, 3, 16, 16) and frames["alphas"].shape == (count, 1, 16, 16)
        recomposed = compose_layers(frames["background"], frames["colors"], frames["alphas"], frames["shadows"])
        assert torch.allclose(recomposed, composite, atol=1e-5), (count, bake)
    assert frames["shadows"].abs().max() == 0  # baked
