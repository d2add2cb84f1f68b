"""Bounded time on hostile inputs: flat, noisy and busy photos through the weight-free decomposer.

A flat colour region used to send OpenCV's GrabCut max-flow into quadratic time (77 s for a white 512 px
photo). The bounds here are generous (the test machine is shared and loaded); the relative check compares
against a real photo of the same size.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from liwi_diffusers.sample_images import load_sample_image
from liwi_diffusers.tools import SaliencyProposer, ToolChainDecomposer
from liwi_diffusers.tools import proposals as proposals_module

SIZE = 256
ABSOLUTE_LIMIT_S = 20.0


def _timed(decomposer: ToolChainDecomposer, image: np.ndarray):
    start = time.perf_counter()
    layered = decomposer(image)
    return layered, time.perf_counter() - start


@pytest.fixture(scope="module")
def decomposer() -> ToolChainDecomposer:
    tools = ToolChainDecomposer(segmenter=None)
    tools(np.full((32, 32, 3), 0.5, np.float32))  # imports and numba compile out of the timings
    return tools


@pytest.fixture(scope="module")
def photo_seconds(decomposer: ToolChainDecomposer) -> float:
    photo = np.asarray(load_sample_image("chelsea"), np.float32) / 255.0
    photo = cv2.resize(photo, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    _, seconds = _timed(decomposer, photo)
    return seconds


@pytest.mark.parametrize("value", [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.0, 0.0, 1.0)])
def test_uniform_image_is_fast_and_empty(decomposer, photo_seconds, value):
    image = np.broadcast_to(np.array(value, np.float32), (SIZE, SIZE, 3)).copy()
    layered, seconds = _timed(decomposer, image)
    assert seconds < ABSOLUTE_LIMIT_S
    assert seconds <= 10 * photo_seconds
    assert layered.num_objects == 0
    assert layered.metadata["objects_found"] == 0
    np.testing.assert_allclose(layered.background, image, atol=1e-6)


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_noise_image_is_bounded(decomposer, photo_seconds, kind):
    rng = np.random.default_rng(0)
    shape = (SIZE, SIZE, 3)
    image = rng.uniform(0, 1, shape) if kind == "uniform" else np.clip(rng.normal(0.5, 0.2, shape), 0, 1)
    layered, seconds = _timed(decomposer, image.astype(np.float32))
    assert seconds < ABSOLUTE_LIMIT_S
    assert seconds <= 10 * photo_seconds
    assert layered.check(image.astype(np.float32)).mean_abs_error < 1 / 255


def test_flat_object_on_flat_background_is_fast_and_found():
    """Flat colours with contrast (no shortcut applies): GrabCut must still be quick, and find the square."""
    image = np.ones((SIZE, SIZE, 3), np.float32)
    image[96:160, 80:176] = (0.0, 0.0, 0.0)
    start = time.perf_counter()
    proposals = SaliencyProposer()(image)
    seconds = time.perf_counter() - start
    assert seconds < ABSOLUTE_LIMIT_S
    assert len(proposals) == 1
    truth = np.zeros((SIZE, SIZE), bool)
    truth[96:160, 80:176] = True
    iou = (proposals[0].mask & truth).sum() / (proposals[0].mask | truth).sum()
    assert iou > 0.9


def test_grabcut_work_per_image_is_capped(monkeypatch):
    """Many objects: the GrabCut work (pixels x iterations) stays within the per-image budget."""
    rng = np.random.default_rng(1)
    image = np.full((SIZE, SIZE, 3), 0.6, np.float32) + rng.normal(0, 0.01, (SIZE, SIZE, 3)).astype(np.float32)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    for _ in range(20):
        cy, cx = rng.uniform(20, SIZE - 20, 2)
        image[(rows - cy) ** 2 + (cols - cx) ** 2 < 8**2] = rng.uniform(0, 1, 3)
    work = []
    original = cv2.grabCut

    def counting(img, mask, rect, bgd, fgd, iterations, mode):
        work.append(mask.size * iterations)
        return original(img, mask, rect, bgd, fgd, iterations, mode)

    monkeypatch.setattr(proposals_module.cv2, "grabCut", counting)
    proposer = SaliencyProposer(max_objects=8)
    proposals = proposer(np.clip(image, 0, 1))
    assert work, "GrabCut never ran"
    assert sum(work) <= proposals_module._GRABCUT_BUDGET * SIZE * SIZE
    assert len(proposals) >= 1


def test_dither_is_deterministic_and_within_one_level():
    flat = np.full((8, 8, 3), 255, np.uint8)
    first, second = proposals_module._dither(flat), proposals_module._dither(flat)
    np.testing.assert_array_equal(first, second)
    assert first.min() >= 254 and first.std() > 0
    dark = proposals_module._dither(np.zeros((8, 8, 3), np.uint8))
    assert dark.max() <= 1 and dark.min() == 0
