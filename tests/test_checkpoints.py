"""The checkpoint shipped inside the package: found by name, loads offline, decomposes at its resolution."""

import json

import numpy as np
import pytest
import torch

from liwi_diffusers import LiWiDecompositionPipeline
from liwi_diffusers.checkpoints import shipped_checkpoint_path
from liwi_diffusers.loading import DecomposerLoadError, PipelineDecomposer, load_decomposer
from liwi_diffusers.pipelines.pipeline_liwi import LiWiDecompositionPipelineOutput
from liwi_diffusers.sample_images import load_sample_image


def test_shipped_checkpoint_is_small_and_documented():
    path = shipped_checkpoint_path("liwi-small")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size < 40 * 2**20  # tens of MB at most
    card = (path / "README.md").read_text()
    assert "library_name: diffusers" in card and "tool-chain decomposer" in card
    index = json.loads((path / "model_index.json").read_text())
    assert index["shadow_head"] == ["liwi_diffusers.models.shadow_head", "ShadowHead"]
    assert index["alpha_decoder"] == ["liwi_diffusers.models.alpha_decoder", "AlphaDecoder"]


def test_load_decomposer_maps_names_and_leaves_folders_and_hub_ids(tmp_path, monkeypatch):
    shipped = load_decomposer("liwi-small", device="cpu")
    assert isinstance(shipped, PipelineDecomposer) and shipped.name == "liwi-small"
    assert shipped.resolution is None  # the checkpoint's own resolution applies
    assert shipped.pipeline.config.default_resolution == 128  # carried by the checkpoint, not by a table
    with pytest.raises(DecomposerLoadError, match="cannot load a LiWi pipeline from 'someone/liwi-large'"):
        load_decomposer("someone/liwi-large", device="cpu")  # a Hub id (offline in tests)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "liwi-small").mkdir()  # a local folder of the same name wins
    with pytest.raises(DecomposerLoadError, match="liwi-small: not a pipeline folder"):
        load_decomposer("liwi-small", device="cpu")
    with pytest.raises(ValueError, match="no shipped checkpoint named 'nope'; shipped: liwi-small"):
        shipped_checkpoint_path("nope")


def test_shipped_checkpoint_loads_and_decomposes_deterministically():
    pipe = LiWiDecompositionPipeline.from_pretrained(shipped_checkpoint_path("liwi-small"))
    pipe.set_progress_bar_config(disable=True)
    image = load_sample_image("coffee").resize((160, 120))
    resolution = pipe.config.default_resolution

    def run() -> LiWiDecompositionPipelineOutput:
        return pipe(
            image,
            num_layers=2,
            resolution=resolution,
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )

    first, second = run(), run()
    layered = first.layers[0]
    assert layered.num_objects == 2 and layered.size == (160, 120)
    np.testing.assert_array_equal(first.images[0], second.images[0])
    # The final step reconciles colours with the input; a few pixels brighter than their shadow allows keep a
    # residual, which the output reports.
    error = np.abs(layered.compose() - np.asarray(image, dtype=np.float32) / 255)
    report = first.recomposition[0]
    assert report.max_abs_error == pytest.approx(float(error.max()), abs=1e-6)
    assert report.mean_abs_error == pytest.approx(float(error.mean()), abs=1e-6)
    assert report.mean_abs_error < 1e-3
