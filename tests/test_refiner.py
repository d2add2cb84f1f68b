"""The matte refiner: the AlphaDecoder's refiner options, its degradations and training, the shipped weights,
the band-tiled `MatteRefiner` and the tool chain with ``refiner=``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from liwi_diffusers.models.alpha_decoder import AlphaDecoder
from liwi_diffusers.tools import MatteRefiner, RefinerError, ToolChainDecomposer
from liwi_diffusers.tools.refiner import SHIPPED_REFINERS, shipped_refiner_path
from liwi_diffusers.training.refiner import (
    Cutout,
    RefinerDegradation,
    composite_crop,
    degrade_matte,
    make_refiner_batch,
    refiner_loss,
    segmenter_like,
)


def disc(size: int, radius: float, soft: float = 1.5) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    distance = np.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2)
    return np.clip((radius - distance) / soft + 0.5, 0.0, 1.0).astype(np.float32)


def scene(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    alpha = disc(size, size / 4)
    fg, bg = np.array([0.1, 0.2, 0.9], np.float32), np.array([0.9, 0.85, 0.1], np.float32)
    return (alpha[:, :, None] * fg + (1 - alpha[:, :, None]) * bg).astype(np.float32), alpha


def test_decoder_shapes_identity_at_init_and_old_configs():
    image, coarse = torch.rand(2, 3, 40, 56), torch.rand(2, 1, 40, 56)
    refiner = AlphaDecoder(hidden_channels=8, num_blocks=2, refine_blocks=1)
    out = refiner(image, coarse)
    assert out.shape == (2, 1, 40, 56)
    assert torch.equal(out, coarse)  # zero-initialised output convolution: the coarse matte, exactly
    # refine_blocks=0 (the default) has exactly the parameters of checkpoints saved before the option existed.
    old = AlphaDecoder(hidden_channels=16, num_blocks=2)
    assert not any(key.startswith("refine.") for key in old.state_dict())
    assert any(key.startswith("refine.") for key in refiner.state_dict())
    with pytest.raises(ValueError, match="refine_blocks >= 0"):
        AlphaDecoder(refine_blocks=-1)


def test_old_config_without_refine_blocks_loads(tmp_path):
    AlphaDecoder(hidden_channels=8, num_blocks=1).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("refine_blocks")  # as written by the liwi-small checkpoint
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AlphaDecoder.from_pretrained(tmp_path)
    assert loaded.config.refine_blocks == 0


def test_degradations_are_deterministic_and_damage_the_matte():
    clean = torch.from_numpy(disc(48, 14))[None, None].repeat(3, 1, 1, 1)
    config = RefinerDegradation(p_warp=1.0, p_blobs=1.0, p_resample=1.0)
    first = degrade_matte(clean, config, torch.Generator().manual_seed(3))
    again = degrade_matte(clean, config, torch.Generator().manual_seed(3))
    other = degrade_matte(clean, config, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == clean.shape and float(first.min()) >= 0 and float(first.max()) <= 1
    assert float((first - clean).abs().mean()) > 0.005
    warped = segmenter_like(clean[:1], config, torch.Generator().manual_seed(0))
    assert torch.equal(warped, segmenter_like(clean[:1], config, torch.Generator().manual_seed(0)))


def test_composites_are_exact_and_deterministic():
    cutouts = [Cutout(np.full((20, 20, 3), 0.8, np.float32), disc(20, 8), "disc")]
    backgrounds = [np.random.default_rng(0).random((50, 60, 3)).astype(np.float32)]
    rgb, alpha = composite_crop(cutouts, backgrounds, np.random.default_rng(1), size=32, p_jpeg=0.0)
    again = composite_crop(cutouts, backgrounds, np.random.default_rng(1), size=32, p_jpeg=0.0)
    assert np.array_equal(rgb, again[0]) and np.array_equal(alpha, again[1])
    assert rgb.shape == (32, 32, 3) and alpha.shape == (32, 32)
    assert ((alpha > 0.05) & (alpha < 0.95)).any()  # an outline is in the crop
    inside = alpha >= 1.0
    assert np.allclose(rgb[inside], 0.8, atol=0.05) if inside.any() else True  # the cut-out's colour where solid


def test_twenty_training_steps_lower_the_loss():
    torch.manual_seed(0)
    cutouts = [Cutout(np.full((24, 24, 3), 0.9, np.float32), disc(24, 10), "disc")]
    backgrounds = [np.full((40, 40, 3), 0.1, np.float32)]
    image, coarse, clean = make_refiner_batch(
        cutouts,
        backgrounds,
        4,
        np.random.default_rng(0),
        torch.Generator().manual_seed(0),
        size=32,
        degradation=RefinerDegradation(),
    )
    decoder = AlphaDecoder(hidden_channels=8, num_blocks=1, refine_blocks=1)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = refiner_loss(decoder(image, coarse), clean, coarse)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_clean_only_inputs_give_nothing_to_learn():
    """The ablation's control: with the clean matte as input, loss and gradients are exactly zero at init."""
    cutouts = [Cutout(np.full((24, 24, 3), 0.9, np.float32), disc(24, 10), "disc")]
    image, coarse, clean = make_refiner_batch(
        cutouts, [np.zeros((40, 40, 3), np.float32)], 2, np.random.default_rng(0), torch.Generator(), size=32
    )
    assert torch.equal(coarse, clean)
    decoder = AlphaDecoder(hidden_channels=8, num_blocks=1)
    loss = refiner_loss(decoder(image, coarse), clean, coarse)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(float(p.grad.abs().max()) == 0.0 for p in decoder.parameters() if p.grad is not None)


def test_shipped_refiners_load_and_are_small():
    total = 0
    for name in SHIPPED_REFINERS:
        folder = shipped_refiner_path(name)
        total += sum(f.stat().st_size for f in folder.iterdir())
        refiner = MatteRefiner.from_pretrained(name)
        assert refiner.decoder.config.refine_blocks >= 1
    assert total < 2 * 2**20
    card = (shipped_refiner_path("restoration").parent / "README.md").read_text()
    assert "degradation-restoration" in card and "bench_refiner.py" in card
    image, _ = scene(48)
    refined = MatteRefiner.from_pretrained("restoration")(image, disc(48, 12, soft=4.0))
    assert refined.shape == (48, 48) and refined.dtype == np.float32
    with pytest.raises(RefinerError, match="no shipped refiner named 'nope'"):
        shipped_refiner_path("nope")


def test_refiner_errors_are_one_line(tmp_path):
    AlphaDecoder(hidden_channels=8, num_blocks=1, refine_blocks=1).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_channels"] = 12  # the weights no longer match the config
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RefinerError, match="do not load into the AlphaDecoder") as info:
        MatteRefiner.from_pretrained(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(RefinerError, match="not a refiner folder"):
        MatteRefiner.from_pretrained(tmp_path / "missing")
    refiner = MatteRefiner(AlphaDecoder(hidden_channels=8, num_blocks=1))
    image, alpha = scene(32)
    with pytest.raises(RefinerError, match="the matte is 16x16 but the image is 32x32"):
        refiner(image, alpha[:16, :16])
    with pytest.raises(RefinerError, match="got uint8"):
        refiner(image, (alpha * 255).astype(np.uint8))
    with pytest.raises(RefinerError, match=r"must lie in \[0, 1\]"):
        refiner(image, alpha * 2)


def test_refiner_changes_only_the_band_and_is_identity_untrained():
    image, _ = scene(80)
    coarse = disc(80, 20, soft=5.0)
    untrained = MatteRefiner(AlphaDecoder(hidden_channels=8, num_blocks=1), tile=32, margin=8)
    assert np.array_equal(untrained(image, coarse), coarse)
    decoder = AlphaDecoder(hidden_channels=8, num_blocks=1)
    torch.manual_seed(0)
    torch.nn.init.normal_(decoder.conv_out.weight, std=0.5)
    refiner = MatteRefiner(decoder, tile=32, margin=8)
    out = refiner(image, coarse)
    band = refiner.band(coarse)
    assert not np.array_equal(out[band], coarse[band])
    assert np.array_equal(out[~band], coarse[~band])
    assert np.array_equal(refiner(image, np.zeros_like(coarse)), np.zeros_like(coarse))  # no band, no work


def test_decomposer_with_refiner_recomposes():
    image, _ = scene(64)

    class SoftMatte:
        name = "soft"

        def __call__(self, photo: np.ndarray) -> np.ndarray:  # the blue thing, too soft, as segmenters give
            blue = (photo[:, :, 2] > 0.5).astype(np.float32)
            return np.clip(cv2.GaussianBlur(blue, (0, 0), 3.0) * 1.2, 0.0, 1.0)

    refiner = MatteRefiner.from_pretrained("restoration")
    layered = ToolChainDecomposer(segmenter=SoftMatte(), refiner=refiner, extract_shadows=False, max_rounds=1)(image)
    assert layered.num_objects == 1
    assert layered.check(image).mean_abs_error < 1 / 255
    named = ToolChainDecomposer(segmenter=SoftMatte(), refiner="restoration", max_rounds=1)
    assert isinstance(named.refiner, MatteRefiner)


def test_cli_refiner_errors_are_one_line(tmp_path, capsys):
    from liwi_diffusers.cli import main

    photo = tmp_path / "photo.png"
    Image.fromarray((scene(32)[0] * 255).astype(np.uint8)).save(photo)
    assert main(["decompose", str(photo), "-o", str(tmp_path / "out"), "--refiner", "nope"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("liwi: error: --refiner: nope: not a refiner folder")
    assert main(["decompose", str(photo), "-o", str(tmp_path / "out"), "--refiner", "restoration", "--model", "x"]) != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "liwi: error: --refiner works with the tool chain (--method tools or weight-free), not with --model"
    )
    assert not (tmp_path / "out").exists()


def test_edge_only_band_keeps_uncertain_insides():
    coverage = disc(64, 24, soft=2.0)
    coverage[28:36, 28:36] = 0.6  # an unsure patch deep inside the object
    decoder = AlphaDecoder(hidden_channels=8, num_blocks=1)
    full, edge = MatteRefiner(decoder), MatteRefiner(decoder, edge_only=True)
    assert full.band(coverage)[32, 32] and not edge.band(coverage)[32, 32]
    assert edge.band(coverage)[32, 32 - 24]  # the outline is still refined
