"""The shadow head for the tool chain: shadow-guided training data and loss, the shipped weights, the
`LearnedShadowExtractor`, its one-line errors and ``liwi decompose --shadow-head``."""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from liwi_diffusers.models.shadow_head import ShadowHead
from liwi_diffusers.tools import LearnedShadowExtractor, ShadowHeadError, ToolChainDecomposer
from liwi_diffusers.tools.learned_shadows import SHIPPED_SHADOW_HEADS, shipped_shadow_head_path
from liwi_diffusers.training.shadow_head import (
    NoShadowsError,
    ShadowScenes,
    ShadowTrainingSet,
    check_has_shadows,
    draw_light,
    head_inputs,
    make_shadow_sample,
    shadow_guided_loss,
    synthesize_shadow,
)


def disc(size: int, radius: float, soft: float = 1.5) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    distance = np.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2)
    return np.clip((radius - distance) / soft + 0.5, 0.0, 1.0).astype(np.float32)


def tiny_data(seed: int = 0, scenes: ShadowScenes | None = None, count: int = 8, size: int = 48):
    cutouts = [(np.full((24, 24, 3), [0.2, 0.3, 0.8], np.float32), disc(24, 10))]
    backgrounds = [np.random.default_rng(0).uniform(0.6, 0.9, (64, 64, 3)).astype(np.float32)]
    rng = np.random.default_rng(seed)
    return [make_shadow_sample(cutouts, backgrounds, rng, size, scenes) for _ in range(count)]


def shadow_scene(size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dark box standing on a light floor with a hard cast shadow to its right: ``(photo, alpha, sigma)``."""
    alpha = np.zeros((size, size), np.float32)
    alpha[30:70, 30:50] = 1.0
    light = draw_light(np.random.default_rng(0), ShadowScenes())
    light.update(kind="cast", length=0.8, shear=1.0, behind=True, strength=0.6, fade=0.0, blur=0.005)
    sigma, _ = synthesize_shadow(alpha, np.random.default_rng(0), light)
    ground = np.full((size, size, 3), [0.75, 0.7, 0.6], np.float32)
    ground += np.random.default_rng(1).normal(0, 0.02, ground.shape).astype(np.float32)
    photo = alpha[:, :, None] * np.array([0.2, 0.3, 0.7]) + (1 - alpha[:, :, None]) * (1 - sigma[:, :, None]) * ground
    return np.clip(photo, 0, 1).astype(np.float32), alpha, sigma


def test_samples_are_deterministic_exact_and_varied():
    first, again = tiny_data(0), tiny_data(0)
    for a, b in zip(first, again):
        assert np.array_equal(a.photo, b.photo) and np.array_equal(a.sigma, b.sigma) and a.kind == b.kind
    assert not np.array_equal(first[0].photo, tiny_data(1)[0].photo)
    exact = tiny_data(0, ShadowScenes(p_jpeg=0.0, p_none=0.0), count=4)
    for sample in exact:  # the composite is made from its layers
        composed = (
            sample.premultiplied + (1 - sample.alpha[:, :, None]) * (1 - sample.sigma[:, :, None]) * sample.beneath
        )
        assert np.abs(composed - sample.photo).max() < 1e-5
        assert sample.photo.shape == (48, 48, 3) and sample.sigma.shape == (48, 48)
    many = tiny_data(3, count=40)
    kinds = {s.kind for s in many}
    assert {"cast", "none"} <= kinds and len(kinds) >= 4
    cast = [s for s in many if s.kind.startswith("cast")]
    assert all(float((s.sigma * (1 - s.alpha)).max()) > 0.05 for s in cast)
    assert all(float(s.sigma.max()) == 0.0 for s in many if s.kind == "none")
    with pytest.raises(ValueError, match="need at least one cut-out"):
        make_shadow_sample([], [np.zeros((8, 8, 3), np.float32)], np.random.default_rng(0))


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    samples = tiny_data(0, ShadowScenes(p_none=0.0), count=6)
    data = ShadowTrainingSet.from_samples(samples, [np.zeros((48, 48), np.float32)] * len(samples))
    batch = data.batch(range(len(data)), flips=[False, True] * 3)
    head = ShadowHead(image_channels=4, hidden_channels=8, num_downsamples=2, num_blocks=1)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, parts = shadow_guided_loss(head.logits(*head_inputs(batch, 4)), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert set(parts) == {"bce", "recomposition"}
    assert losses[-1] < 0.7 * losses[0]
    # the recomposition term is 0 for the true shadow (before JPEG)
    exact = tiny_data(0, ShadowScenes(p_jpeg=0.0), count=2)
    truth = ShadowTrainingSet.from_samples(exact, [s.sigma for s in exact]).batch([0, 1])
    logit = torch.logit(truth["sigma"].clamp(1e-4, 1 - 1e-4))
    _, parts = shadow_guided_loss(logit, truth)
    assert parts["recomposition"] < 3 / 255


def test_no_shadow_dataset_says_there_is_nothing_to_learn():
    shadowless = tiny_data(0, ShadowScenes(p_none=1.0), count=4)
    with pytest.raises(NoShadowsError) as info:
        ShadowTrainingSet.from_samples(shadowless, [np.zeros((48, 48), np.float32)] * 4)
    message = str(info.value)
    assert "\n" not in message and "shadow guidance has nothing to learn from" in message
    with pytest.raises(NoShadowsError):
        check_has_shadows(torch.zeros(3, 1, 8, 8))
    check_has_shadows(np.full((1, 8, 8), 0.5, np.float32))  # shadows: no error


def test_shipped_head_is_small_documented_and_packaged():
    root = Path(shipped_shadow_head_path("shadow-guided")).parent
    files = [f for f in root.rglob("*") if f.is_file()]
    head_bytes = sum(f.stat().st_size for f in files)
    refiner_bytes = sum(f.stat().st_size for f in (root.parent / "matte-refiner").rglob("*") if f.is_file())
    assert head_bytes < 3 * 2**20 and head_bytes + refiner_bytes < 20 * 2**20
    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    patterns = ["checkpoints/*/*/*.json", "checkpoints/*/*/*.safetensors", "checkpoints/*/*.md"]
    assert all(f'"{p}"' in setup for p in patterns)
    package = root.parent.parent
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        relative = (root / "shadow-guided" / name).relative_to(package).as_posix()
        assert any(fnmatch(relative, p) for p in patterns), relative
    card = (root / "README.md").read_text()
    assert "shadow-guided learning" in card and "bench_shadow_head.py" in card and "train_shadow_head.py" in card
    for name in SHIPPED_SHADOW_HEADS:
        assert LearnedShadowExtractor.from_pretrained(name).head.config.image_channels == 4


def test_extractor_finds_a_clear_cast_shadow_alone_and_refining():
    photo, alpha, truth = shadow_scene()
    visible = alpha < 0.5
    for mode in ("alone", "refine"):
        extractor = LearnedShadowExtractor.from_pretrained("shadow-guided", mode=mode)
        sigma = extractor(photo, alpha, alpha)
        assert sigma.shape == alpha.shape and sigma.dtype == np.float32
        assert float(sigma.min()) >= 0 and float(sigma.max()) <= 0.9
        assert float(sigma[alpha >= 0.99].max()) == 0.0  # nothing under the object
        found, wanted = (sigma > 0.1) & visible, (truth > 0.1) & visible
        iou = (found & wanted).sum() / max(1, (found | wanted).sum())
        assert iou > 0.3, (mode, iou)
        assert np.array_equal(sigma, extractor(photo, alpha, alpha))  # deterministic
    assert not extractor(photo, np.zeros_like(alpha)).any()  # no object, no shadow


def test_decomposer_with_the_shadow_head_recomposes():
    photo, _, _ = shadow_scene(64)

    class BoxMatte:
        name = "box"

        def __call__(self, image: np.ndarray) -> np.ndarray:  # the blue box, slightly soft
            box = (image[:, :, 2] > image[:, :, 0] + 0.2).astype(np.float32)
            return np.clip(cv2.GaussianBlur(box, (0, 0), 1.0) * 1.2, 0.0, 1.0)

    extractor = LearnedShadowExtractor.from_pretrained("shadow-guided")
    layered = ToolChainDecomposer(segmenter=BoxMatte(), shadow_extractor=extractor, max_rounds=1)(photo)
    assert layered.num_objects == 1
    assert layered.check(photo).mean_abs_error < 1 / 255
    assert ToolChainDecomposer(shadow_extractor=extractor).tool_names()["shadow_extractor"] == "LearnedShadowExtractor"
    assert float(layered.shadows[0].max()) > 0.1  # the cast shadow went to the shadow layer


def test_bad_shadow_heads_are_one_line_errors(tmp_path):
    ShadowHead(image_channels=4, hidden_channels=8, num_blocks=1).save_pretrained(tmp_path / "head")
    config_path = tmp_path / "head" / "config.json"
    config = json.loads(config_path.read_text())
    config["hidden_channels"] = 12  # the weights no longer match the config
    config_path.write_text(json.dumps(config))
    with pytest.raises(ShadowHeadError, match="do not load into the ShadowHead") as info:
        LearnedShadowExtractor.from_pretrained(tmp_path / "head")
    assert "\n" not in str(info.value)
    weights = tmp_path / "head" / "diffusion_pytorch_model.safetensors"
    config["hidden_channels"] = 8
    config_path.write_text(json.dumps(config))
    weights.write_bytes(weights.read_bytes()[:200])  # truncated
    with pytest.raises(ShadowHeadError, match="do not load into the ShadowHead") as info:
        LearnedShadowExtractor.from_pretrained(tmp_path / "head")
    assert "\n" not in str(info.value)
    with pytest.raises(ShadowHeadError, match="not a shadow-head folder"):
        LearnedShadowExtractor.from_pretrained(tmp_path / "missing")
    with pytest.raises(ShadowHeadError, match="no shipped shadow head named 'nope'"):
        shipped_shadow_head_path("nope")
    with pytest.raises(ShadowHeadError, match="cannot refine it; use mode 'alone'"):
        LearnedShadowExtractor(ShadowHead(hidden_channels=4, num_blocks=1), mode="refine")
    with pytest.raises(ShadowHeadError, match="3 \\(RGB\\) or 4"):
        LearnedShadowExtractor(ShadowHead(image_channels=5, hidden_channels=4, num_blocks=1))
    with pytest.raises(ShadowHeadError, match="mode must be one of alone, refine"):
        LearnedShadowExtractor(ShadowHead(hidden_channels=4, num_blocks=1), mode="both")
    three = LearnedShadowExtractor(ShadowHead(hidden_channels=4, num_blocks=1))  # a pipeline-style RGB head
    photo, alpha, _ = shadow_scene(32)
    assert not three(photo, alpha).any()  # untrained: sigmoid(-8) is below min_sigma


def test_cli_shadow_head_errors_are_one_line(tmp_path, capsys):
    from liwi_diffusers.cli import main

    photo = tmp_path / "photo.png"
    Image.fromarray((shadow_scene(32)[0] * 255).astype(np.uint8)).save(photo)
    assert main(["decompose", str(photo), "-o", str(tmp_path / "out"), "--shadow-head", "nope"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("liwi: error: --shadow-head: nope: not a shadow-head folder")
    command = ["decompose", str(photo), "-o", str(tmp_path / "out"), "--shadow-head", "shadow-guided", "--model", "x"]
    assert main(command) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "liwi: error: --shadow-head works with the tool chain (--method tools or weight-free), not with --model"
    )
    assert not (tmp_path / "out").exists()
