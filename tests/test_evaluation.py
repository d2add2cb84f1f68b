"""`liwi_diffusers.metrics.evaluation` from Python, and `liwi evaluate`'s early, one-line failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from test_metrics import random_stack, write_dataset, write_stack

import liwi_diffusers.metrics as metrics
from liwi_diffusers import LayeredImage
from liwi_diffusers.cli import main
from liwi_diffusers.metrics import core, evaluation
from liwi_diffusers.metrics.evaluation import (
    EvaluationError,
    LayerFolders,
    aggregate_records,
    check_report_path,
    evaluate_method,
    evaluate_predictions,
    open_ground_truth,
    score_layered,
    write_report,
)


def error_line(capsys, *args: str) -> str:
    """Run `liwi evaluate ARGS`, expect status 2 and return the one line it printed on stderr."""
    assert main(["evaluate", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err
    assert lines[-1].startswith("liwi: error: ")
    return lines[-1]


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


# ---------------------------------------------------------------------------------------------- the library
def test_metrics_all_is_built_from_its_submodules():
    assert set(metrics.__all__) == {*core.__all__, *evaluation.__all__, "METRIC_MODULES", "load_metric", "metric_path"}
    assert len(metrics.__all__) == len(set(metrics.__all__))
    assert all(getattr(metrics, name) is not None for name in metrics.__all__)
    assert metrics.evaluate_method is evaluate_method


def test_evaluate_method_with_a_decomposer_matches_the_cli(tmp_path):
    root = tmp_path / "ds"
    layered_images = write_dataset(root, np.random.default_rng(20))
    asked = []

    def decomposer(image, num_layers=None):  # the ground truth, as a decomposer would return it
        asked.append((image.size, num_layers))
        return layered_images[len(asked) - 1]

    report = evaluate_method(decomposer, root, num_layers="gt", source={"method": "oracle"})
    assert asked == [((20, 20), 1), ((20, 20), 2), ((20, 20), 3)]
    assert report["num_evaluated"] == 3 and report["source"]["dataset"] == str(root)
    output = tmp_path / "cli.json"
    assert main(["evaluate", "--method", "oracle", "--dataset", str(root), "-o", str(output)]) == 0
    cli = json.loads(output.read_text())
    assert cli["levels"] == report["levels"]
    assert cli["extras"]["alpha_boundary"] == report["extras"]["alpha_boundary"]
    assert cli["source"] == report["source"] | {"method": "oracle"}
    # loaded rows work as well as a folder
    rows = datasets.load_dataset(str(root), split="test")
    assert evaluate_method("oracle", rows)["levels"] == report["levels"]


def test_evaluate_method_rejects_what_is_not_a_layered_image(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, np.random.default_rng(21), count=1)
    with pytest.raises(EvaluationError, match="returned a list; expected a LayeredImage"):
        evaluate_method(lambda image, num_layers=None: [], root)
    with pytest.raises(EvaluationError, match="num_layers must be"):
        evaluate_method("oracle", root, num_layers=0)
    with pytest.raises(EvaluationError, match="max_edits must be >= 0"):
        evaluate_method("oracle", root, max_edits=-1)
    with pytest.raises(EvaluationError, match="unknown baseline 'nope'"):
        evaluate_method("nope", root)


def test_score_layered_and_aggregate_records():
    rng = np.random.default_rng(22)
    pairs = [(random_stack(rng, 3), random_stack(rng, 4)) for _ in range(3)]
    records = [score_layered(pred, gt, max_edits=3) for pred, gt in pairs]
    assert all(record["status"] == "evaluated" for record in records)
    expected = core.aggregate_layer_results([core.evaluate_layers(p, g, max_edits=3) for p, g in pairs], 3)
    skipped = score_layered(pairs[0][0][:1], pairs[0][1])
    assert skipped == {
        "num_pred_layers": 1,
        "num_gt_layers": 4,
        "status": "skipped",
        "reason": "prediction has fewer than 2 layers",
    }
    aggregate = aggregate_records([*records, skipped], max_edits=3)
    assert aggregate["levels"] == expected
    assert (aggregate["num_samples"], aggregate["num_evaluated"], aggregate["skipped"]) == (
        4,
        3,
        {"prediction has fewer than 2 layers": 1},
    )
    # a LayeredImage prediction also gets the boundary, shadow and background errors
    truth = LayeredImage(np.zeros((8, 8, 3), np.float32), [np.ones((8, 8, 4), np.float32)])
    record = score_layered(truth, truth, composite=truth.compose())
    assert record["alpha_boundary"]["sad"] == 0.0 and record["background"]["background_l1"] == 0.0
    assert record["levels"][0]["alpha_iou"] == 1.0


def test_rows_without_shadows_and_a_parquet_shard(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, np.random.default_rng(23), count=2)
    shard = root / "data" / "test-00000-of-00001.parquet"
    report = evaluate_method("oracle", shard)
    assert report["num_evaluated"] == 2
    rows = [
        {key: value for key, value in row.items() if key != "shadows"}
        for row in datasets.Dataset.from_parquet(str(shard))
    ]
    no_shadows = evaluate_method("oracle", rows)
    assert no_shadows["num_evaluated"] == 2 and no_shadows["extras"]["shadows"]["ber"] == 0.0


def test_layer_folders_and_predictions(tmp_path):
    rng = np.random.default_rng(24)
    stacks = {f"s{i}": random_stack(rng, 3) for i in range(2)}
    for name, stack in stacks.items():
        write_stack(tmp_path / "gt" / name, stack)
        write_stack(tmp_path / "pred" / name, stack)
    write_stack(tmp_path / "pred" / "extra", stacks["s0"])
    report = evaluate_predictions(tmp_path / "pred", LayerFolders(tmp_path / "gt"))
    assert report["num_evaluated"] == 2 and report["levels"][0]["rgb_l1"] == 0.0
    assert report["predictions_without_ground_truth"] == ["extra"]
    assert report["source"]["ground_truth"] == str(tmp_path / "gt")


# ---------------------------------------------------------------------------------------------- -o checked first
@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    write_dataset(root, np.random.default_rng(25), count=2)
    return root


def test_output_problems_fail_before_any_work(tiny_dataset, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation started before the output path was checked")

    monkeypatch.setattr(evaluation, "open_ground_truth", no_work)
    args = ["--method", "oracle", "--dataset", str(tiny_dataset), "-o"]
    folder = tmp_path / "existing.json"
    folder.mkdir()
    assert "it is a folder" in error_line(capsys, *args, str(folder))
    (tmp_path / "a-file").write_text("x")
    assert "is a file, not a folder" in error_line(capsys, *args, str(tmp_path / "a-file" / "sub" / "r.json"))
    (tmp_path / "r.md").mkdir()
    assert "r.md': it is a folder" in error_line(capsys, *args, str(tmp_path / "r.json"))

    # a read-only folder (simulated: the tests may run as root, which permission bits do not stop)
    from liwi_diffusers.export import atomic

    read_only = tmp_path / "read-only"
    read_only.mkdir()

    def refuse(path: Path):
        if read_only in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        return original(path)

    original = atomic._create_temp
    monkeypatch.setattr(atomic, "_create_temp", refuse)
    assert "no permission to create files" in error_line(capsys, *args, str(read_only / "new" / "r.json"))
    assert files_under(read_only) == []
    with pytest.raises(EvaluationError, match=r"should be a \.json file"):
        check_report_path(tmp_path / "r.txt")


# ---------------------------------------------------------------------------------------------- fast dataset failures
def test_a_file_that_is_not_a_dataset_fails_fast(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(photo)
    start = time.perf_counter()
    line = error_line(capsys, "--method", "oracle", "--dataset", str(photo))
    assert time.perf_counter() - start < 1.0
    assert "is a file, not a dataset" in line


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_a_hub_id_while_offline_fails_fast(capsys, monkeypatch, variable):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv(variable, "1")
    start = time.perf_counter()
    line = error_line(capsys, "--method", "oracle", "--dataset", "someone/not-cached-liwi-data")
    assert time.perf_counter() - start < 1.0
    assert "the Hub is offline" in line and "someone/not-cached-liwi-data" in line


def test_an_empty_split_is_one_line(tmp_path, capsys):
    root = tmp_path / "ds"
    write_dataset(root, np.random.default_rng(26), count=1)
    import pyarrow.parquet as pq

    shard = root / "data" / "test-00000-of-00001.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 0), shard)  # 0 rows, as an over-split build writes
    output = tmp_path / "out" / "r.json"
    line = error_line(capsys, "--method", "oracle", "--dataset", str(root), "-o", str(output))
    assert f"dataset {root} (test) has no rows" in line
    assert not (tmp_path / "out").exists()
    with pytest.raises(EvaluationError, match="has no rows"):
        open_ground_truth([], name="rows")


# ---------------------------------------------------------------------------------------------- no leftovers
def test_a_failed_run_leaves_nothing_behind(tmp_path, capsys):
    rng = np.random.default_rng(27)
    for name in ("a", "b"):
        write_stack(tmp_path / "gt" / name, random_stack(rng, 3))
    write_stack(tmp_path / "pred" / "a", random_stack(rng, 3))
    write_stack(tmp_path / "pred" / "b", random_stack(rng, 3, size=12))  # another size: the run fails on b
    output = tmp_path / "out" / "deeper" / "r.json"
    saved = tmp_path / "saved"
    args = ["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "-o", str(output), "--save-layers"]
    assert "sample b: prediction is 12x12" in error_line(capsys, *args, str(saved))
    assert not (tmp_path / "out").exists() and not saved.exists()
    # a write that fails half-way leaves neither file nor the folders it made
    with pytest.raises(TypeError):
        write_report({"not json": object()}, tmp_path / "new" / "r.json")
    assert not (tmp_path / "new").exists()
    # and a successful one leaves exactly the two files
    report = evaluate_predictions(tmp_path / "pred", LayerFolders(tmp_path / "gt"), skip_errors=True)
    write_report(report, tmp_path / "ok" / "r.json")
    assert files_under(tmp_path / "ok") == ["r.json", "r.md"]
