"""The real-photo benchmark's metrics, on hand-made masks (benchmarks/bench_real_photos.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_real_photos import background_ratio, best_layer_ious, best_object_ious, best_shadow_ious, soft_iou, summarise


def test_soft_iou_is_min_over_max_and_ignores_the_unsure_band():
    truth = np.zeros((4, 4), np.float32)
    truth[:2] = 1.0
    prediction = np.zeros((4, 4), np.float32)
    prediction[:1] = 1.0
    prediction[1] = 0.5
    assert soft_iou(prediction, truth) == pytest.approx((4 + 2) / 8)
    assert soft_iou(truth, truth) == 1.0 and soft_iou(np.zeros_like(truth), np.zeros_like(truth)) == 0.0
    unsure = truth.copy()
    unsure[2] = 128 / 255  # a trimap's outline band: left out of both sums
    wrong_there = truth.copy()
    wrong_there[2] = 1.0
    assert soft_iou(wrong_there, unsure) == 1.0


def test_best_ious_pick_the_best_layer_per_truth_and_zero_without_layers():
    a = np.zeros((6, 6), np.float32)
    a[:3] = 1
    b = np.zeros((6, 6), np.float32)
    b[3:] = 1
    assert best_object_ious([b, a], [a, b]) == [1.0, 1.0]
    assert best_object_ious([], [a]) == [0.0]
    half = a * 0.0
    half[:3, :3] = 1
    assert best_object_ious([half], [a]) == [pytest.approx(0.5)]
    shadow = a * 0.3  # sigma 0.3 > 0.1 counts as shadow
    assert best_shadow_ious([shadow * 0, shadow], [a]) == [1.0]


def test_layers_are_matched_to_the_annotated_objects_they_overlap():
    a = np.zeros((6, 6), np.float32)
    a[:3] = 1
    stray = np.zeros((6, 6), np.float32)
    stray[5, 5] = 1
    assert best_layer_ious([a, stray], [a]) == [1.0, 0.0]
    assert best_layer_ious([a], []) == [0.0]
    records = [
        {
            "groups": ["pair"],
            "object_ious": [1.0, 0.2],
            "layer_ious": [1.0, 0.0, 0.6],
            "seconds": 1.0,
            "peak_rss_mb": 1.0,
        }
    ]
    summary = summarise(records, None)
    assert summary["layers"] == 3 and summary["layers_matched"] == pytest.approx(2 / 3)
    assert summary["found"] == 0.5


def test_background_ratio_is_below_one_when_closer_to_the_empty_scene():
    clean = np.full((4, 4, 3), 0.5, np.float32)
    photo = clean.copy()
    photo[:2] = 0.9  # an object over the top half
    region = np.zeros((4, 4), bool)
    region[:2] = True
    assert background_ratio(photo, photo, clean, region) == pytest.approx(1.0)
    assert background_ratio(clean, photo, clean, region) == 0.0
    halfway = (photo + clean) / 2
    assert background_ratio(halfway, photo, clean, region) == pytest.approx(0.5)
    assert np.isnan(background_ratio(photo, photo, clean, np.zeros((4, 4), bool)))
