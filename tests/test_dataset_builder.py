"""ADD dataset builder: build, load with `datasets`, exact layers, splits, resume after SIGKILL,
bad sources, the agent's fallback, and the real-model adapters on tiny random models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_tokenizers import tiny_clip_tokenizer

from liwi_dataset_builder.agent import (
    AgentAnswerError,
    ObjectChoice,
    RulePlanner,
    RuleVerifier,
    TransformersVLM,
    VLMPlanner,
    VLMVerifier,
    extract_json,
)
from liwi_dataset_builder.assets import BackgroundAsset, ForegroundAsset, PhotoAssets
from liwi_dataset_builder.build import BuildConfig, BuildError, build_dataset, plan_chunks, shard_chunks
from liwi_dataset_builder.composition import CompositionConfig, compose_sample
from liwi_dataset_builder.sample_data import SAMPLE_LICENSE_NOTES, export_sample_photos
from liwi_dataset_builder.sources import Photo, SourceRef, assign_splits, expand_sources, scan_photo
from liwi_diffusers.layered_dataset import read_shard, row_composite, row_to_layered
from liwi_diffusers.layers import LayeredImage
from liwi_diffusers.tools.proposals import ObjectProposal

# One layout for the reference build, the killed-and-resumed build and the sharded build.
LAYOUT = {"num_samples": 18, "resolution": 128, "chunk_size": 5, "test_fraction": 0.2, "seed": 3}
CLI_LAYOUT = [
    "--num-samples",
    "18",
    "--resolution",
    "128",
    "--chunk-size",
    "5",
    "--test-fraction",
    "0.2",
    "--seed",
    "3",
]
TOLERANCE = 1.0 / 255.0 + 1e-6


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    export_sample_photos(folder)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> Path:
    """The reference build: 2 workers."""
    out = tmp_path_factory.mktemp("built") / "liwi-sample"
    config = BuildConfig(
        sources=[str(photos)], output=str(out), workers=2, progress=False, license_notes=SAMPLE_LICENSE_NOTES, **LAYOUT
    )
    assert build_dataset(config).complete
    return out


def load(path: str | Path, tmp_path: Path, **kwargs):
    """`load_dataset` with a fresh cache (a datasets cache would not notice rewritten shards)."""
    from datasets import load_dataset

    return load_dataset(str(path), cache_dir=str(tmp_path / f"cache-{time.monotonic_ns()}"), **kwargs)


def decoded(row: dict) -> dict:
    """A row with every image decoded to an array (for comparisons that do not trust PNG bytes)."""
    from liwi_diffusers.layered_dataset import decode_image

    out = dict(row)
    out["composite"] = decode_image(row["composite"], "RGB")
    out["background"] = decode_image(row["background"], "RGB")
    out["foregrounds"] = [decode_image(fg, "RGBA") for fg in row["foregrounds"]]
    out["shadows"] = [decode_image(s, "L") for s in row["shadows"]]
    return out


def assert_same_rows(first: Path, second: Path) -> None:
    names = sorted(p.name for p in (first / "data").glob("*.parquet"))
    assert names == sorted(p.name for p in (second / "data").glob("*.parquet"))
    assert names
    for name in names:
        rows_a, rows_b = read_shard(first / "data" / name), read_shard(second / "data" / name)
        assert len(rows_a) == len(rows_b)
        for a, b in zip(rows_a, rows_b):
            a, b = decoded(a), decoded(b)
            for key in a:
                if key in ("composite", "background"):
                    np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {a['id']} {key}")
                elif key in ("foregrounds", "shadows"):
                    assert len(a[key]) == len(b[key])
                    for x, y in zip(a[key], b[key]):
                        np.testing.assert_array_equal(x, y, err_msg=f"{name} {a['id']} {key}")
                else:
                    assert a[key] == b[key], f"{name} {a['id']} {key}"


# ------------------------------------------------------------------------------------ the dataset
def test_build_loads_with_datasets_and_every_row_recomposes(built: Path, tmp_path: Path) -> None:
    from datasets import Image as ImageFeature
    from datasets import List

    dataset = load(built, tmp_path)
    assert set(dataset) == {"train", "test"}
    assert dataset["train"].num_rows + dataset["test"].num_rows == LAYOUT["num_samples"]
    features = dataset["train"].features
    assert isinstance(features["composite"], ImageFeature) and isinstance(features["background"], ImageFeature)
    assert features["foregrounds"] == List(ImageFeature()) and features["shadows"] == List(ImageFeature())
    for name in (
        "labels",
        "boxes",
        "verification",
        "verification_reason",
        "tools",
        "builder_version",
        "background_source_id",
        "foreground_source_ids",
        "split",
    ):
        assert name in features
    ids = []
    for split in dataset:
        for row in dataset[split]:
            ids.append(row["id"])
            assert row["split"] == split
            assert row["composite"].mode == "RGB" and row["background"].mode == "RGB"
            assert row["composite"].size == row["background"].size == (128, 128)
            assert row["num_objects"] == len(row["foregrounds"]) == len(row["shadows"]) == len(row["labels"]) >= 1
            assert all(fg.mode == "RGBA" for fg in row["foregrounds"])
            assert all(shadow.mode == "L" for shadow in row["shadows"])
            layered = row_to_layered(row)
            error = np.abs(layered.compose() - row_composite(row)).max()
            assert error <= TOLERANCE, (row["id"], error)
            assert row["verification"]["recomposition_error"] <= TOLERANCE
            assert row["verification_reason"] == "ok" and row["verified_by"] == "rules"
            assert [list(b) for b in row["boxes"]] == [list(b) for b in layered.object_boxes()]
            assert row["tools"]["proposer"] == "SaliencyProposer" and row["tools"]["matting"] == "ClosedFormMatter"
    assert len(ids) == len(set(ids))


def test_splits_are_by_source_photo(built: Path, tmp_path: Path) -> None:
    dataset = load(built, tmp_path)
    used = {}
    for split in dataset:
        used[split] = set()
        for row in dataset[split]:
            used[split].add(row["background_source_id"])
            used[split].update(row["foreground_source_ids"])
    assert used["train"] and used["test"]
    assert not used["train"] & used["test"]
    sources = json.loads((built / ".build" / "sources.json").read_text())
    split_of = {p["photo_id"]: p["split"] for p in sources["photos"]}
    for split, ids in used.items():
        assert {split_of[i] for i in ids} == {split}


def test_card_report_and_loading_by_name_and_streaming(
    built: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = (built / "README.md").read_text()
    assert card.startswith("---\n") and "configs:" in card and "path: data/train-*" in card
    assert "dataset_info:" in card and "num_examples" in card and "scikit-image" in card
    report = json.loads((built / "build_report.json").read_text())
    assert report["statistics"]["splits"] == {"train": 14, "test": 4}
    assert report["statistics"]["split_overlap"] == []
    assert report["sources"]["usable"] == report["sources"]["found"] == len(list(photos.glob("*.png")))
    assert sorted(p.name for p in (built / "data").glob("*")) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
    ]
    monkeypatch.chdir(built.parent)
    by_name = load("liwi-sample", tmp_path, split="test")
    assert by_name.num_rows == 4
    streamed = load(built, tmp_path, split="train", streaming=True)
    count = 0
    for row in streamed:
        count += 1
        assert np.abs(row_to_layered(row).compose() - row_composite(row)).max() <= TOLERANCE
    assert count == 14
    from liwi_diffusers.layered_dataset import iter_layered

    layered, row = next(iter_layered(built / "data" / "test-00000-of-00001.parquet"))
    assert isinstance(layered, LayeredImage) and layered.num_objects == row["num_objects"]


def test_rerunning_a_complete_build_changes_nothing(built: Path, photos: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in (built / "data").glob("*")}
    result = build_dataset(BuildConfig(sources=[str(photos)], output=str(built), workers=1, progress=False, **LAYOUT))
    assert result.complete and result.chunks_written == 0
    assert before == {p.name: p.stat().st_mtime_ns for p in (built / "data").glob("*")}
    with pytest.raises(BuildError, match="different settings"):
        build_dataset(BuildConfig(sources=[str(photos)], output=str(built), progress=False, **{**LAYOUT, "seed": 4}))


@pytest.mark.parametrize("kill_when", ["first asset", "first shard"])
def test_sigkill_mid_build_then_resume_gives_the_same_rows(
    kill_when: str, built: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "liwi_dataset_builder",
        str(photos),
        "-o",
        str(out),
        *CLI_LAYOUT,
        "--workers",
        "1",
        "-q",
    ]
    watched, pattern = (
        (out / ".build" / "assets", "*.npz") if kill_when == "first asset" else (out / "data", "*.parquet")
    )
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(watched.glob(pattern)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"no {kill_when} appeared"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the whole build, as if the machine died
    process.communicate()  # waits, and closes the pipes
    assert not (out / "README.md").exists()
    shards = list((out / "data").glob("*.parquet"))
    assert len(shards) < 4
    for path in shards:  # no corrupt shard: every file that exists reads whole
        assert read_shard(path)
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "complete" in resumed.stdout
    assert not list(out.rglob(".*.tmp-*"))
    assert_same_rows(built, out)  # 1 worker, killed and resumed == 2 workers, uninterrupted


def test_build_split_across_machines_matches(built: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    # Assets are per photo and deterministic: reuse the reference build's to keep this test fast.
    shutil.copytree(built / ".build" / "assets", out / ".build" / "assets")
    results = []
    for index in range(2):
        config = BuildConfig(
            sources=[str(photos)], output=str(out), num_shards=2, shard_index=index, progress=False, **LAYOUT
        )
        results.append(build_dataset(config))
    assert not results[0].complete and results[1].complete
    assert_same_rows(built, out)


def test_bad_sources_are_skipped_with_reasons(photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("coffee", "flower", "brick"):
        shutil.copy(photos / f"{name}.png", folder / f"{name}.png")
    shutil.copy(photos / "coffee.png", folder / "coffee2.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not even looked at")
    Image.new("RGB", (20, 20), (200, 10, 10)).save(folder / "tiny.png")
    Image.new("RGB", (700, 700), (10, 200, 10)).save(folder / "huge.png")
    with open(photos / "flower.png", "rb") as handle:
        (folder / "truncated.png").write_bytes(handle.read()[:5000])
    out = tmp_path / "out"
    config = BuildConfig(
        sources=[str(folder)],
        output=str(out),
        num_samples=3,
        resolution=96,
        chunk_size=3,
        test_fraction=0.0,
        max_pixels=400_000,
        progress=False,
    )
    result = build_dataset(config)
    assert result.complete and result.rows == {"train": 3}
    report = json.loads((out / "build_report.json").read_text())
    reasons = {Path(item["source"]).name: item["reason"] for item in report["sources"]["skipped"]}
    assert set(reasons) == {"coffee2.png", "corrupt.jpg", "empty.png", "tiny.png", "huge.png", "truncated.png"}
    assert "duplicate of" in reasons["coffee2.png"]
    assert "empty" in reasons["empty.png"]
    assert "need at least" in reasons["tiny.png"]
    assert "limit" in reasons["huge.png"]
    assert "not an image" in reasons["corrupt.jpg"] or "corrupt" in reasons["corrupt.jpg"]
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    assert report["sources"]["found"] == 9 and report["sources"]["usable"] == 3


def test_missing_source_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from liwi_dataset_builder.cli import main

    assert main([str(tmp_path / "nope"), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])


def test_datasets_sources_and_content_hash_duplicates(
    photos: Path, tmp_path: Path, built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    saved = tmp_path / "saved"
    files = [str(photos / f"{name}.png") for name in ("coffee", "rocket")]
    datasets.Dataset.from_dict(
        {"picture": files, "caption": ["a", "b"]},
        features=datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")}),
    ).save_to_disk(saved)
    refs = expand_sources([str(saved)])
    assert [(r.split, r.row, r.column) for r in refs] == [("train", 0, "picture"), ("train", 1, "picture")]
    from_dataset, reason = scan_photo(refs[0], 10**8, 16)
    from_file, _ = scan_photo(SourceRef(files[0]), 10**8, 16)
    assert reason == "ok" and from_dataset.photo_id == from_file.photo_id  # same pixels, same id
    # A parquet dataset folder (here a LiWi dataset itself) is read through load_dataset.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    refs = expand_sources([f"dataset:{built}"], image_column="background")
    assert len(refs) == LAYOUT["num_samples"] and {r.column for r in refs} == {"background"}
    photo, reason = scan_photo(refs[0], 10**8, 16)
    assert reason == "ok" and (photo.width, photo.height) == (128, 128)
    with pytest.raises(ValueError, match="no image column"):
        expand_sources([f"dataset:{saved}"], image_column="caption_missing")


# ------------------------------------------------------------------------------ always loadable
def card_splits(out: Path) -> dict[str, int]:
    """The splits the card's YAML header lists (configs and dataset_info agree), with their rows."""
    import yaml

    header = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    listed = [entry["split"] for entry in header["configs"][0]["data_files"]]
    rows = {entry["name"]: entry["num_examples"] for entry in header["dataset_info"]["splits"]}
    assert sorted(listed) == sorted(rows)
    return rows


def assert_loads_in_every_split(out: Path, tmp_path: Path) -> dict[str, int]:
    """Every split the card lists loads with `datasets`, with the card's row count; no 0-row shard."""
    import pyarrow.parquet as pq

    splits = card_splits(out)
    assert splits and all(splits.values()), splits
    assert {p.name.split("-")[0] for p in (out / "data").glob("*.parquet")} == set(splits)
    assert all(pq.read_metadata(p).num_rows > 0 for p in (out / "data").glob("*.parquet"))
    for split, rows in splits.items():
        assert load(out, tmp_path, split=split).num_rows == rows
    assert {name: part.num_rows for name, part in load(out, tmp_path).items()} == splits
    return splits


def test_the_reference_build_loads_in_every_split(built: Path, tmp_path: Path) -> None:
    assert assert_loads_in_every_split(built, tmp_path) == {"train": 14, "test": 4}


def test_a_split_without_rows_is_left_out_and_the_build_says_so(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from liwi_dataset_builder.cli import main

    folder = tmp_path / "two"
    folder.mkdir()
    # By their content hashes, rocket (objects and a background) lands in train and brick (a
    # texture: no object to cut out) in test, so test cannot compose any sample.
    for name in ("rocket", "brick"):
        shutil.copy(photos / f"{name}.png", folder / f"{name}.png")
    out = tmp_path / "ds"
    command = [str(folder), "-o", str(out), "-n", "4", "--chunk-size", "2", "--test-fraction", "0.5", "-r", "96", "-q"]
    for _ in range(2):  # the build, then the rerun of a complete build: the same report
        assert main(command) == 0
        printed = capsys.readouterr().out
        assert "complete" in printed and "rows: train 2 |" in printed
        assert "rejected composition attempts by reason: split has no foregrounds 2; samples dropped: 2" in printed
        assert "split 'test' got no rows (split has no foregrounds 2), so it is left out of data/ and the card" in (
            printed
        )
    assert assert_loads_in_every_split(out, tmp_path) == {"train": 2}
    assert "Splits left out, as no sample of theirs passed verification: test (2 asked for)." in (
        (out / "README.md").read_text()
    )
    report = json.loads((out / "build_report.json").read_text())
    assert report["statistics"]["empty_splits"] == {"test": 2}
    assert report["statistics"]["rejections"] == {"split has no foregrounds": 2}


def test_a_build_without_any_row_is_an_error_not_a_dataset(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from liwi_dataset_builder.cli import main

    folder = tmp_path / "textures"
    folder.mkdir()
    for name in ("brick", "grass"):
        shutil.copy(photos / f"{name}.png", folder / f"{name}.png")
    out = tmp_path / "ds"
    assert main([str(folder), "-o", str(out), "-n", "3", "--test-fraction", "0", "-r", "96", "-q"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (notes may come first)
    assert len(errors) == 1 and errors[0].startswith("liwi-build: error: no sample passed verification in any split")
    assert "split has no foregrounds 3" in errors[0]
    assert not (out / "README.md").exists() and not list((out / "data").glob("*"))


def test_zero_samples_is_refused_before_any_work(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from liwi_dataset_builder.cli import main

    assert main([str(photos), "-o", str(tmp_path / "ds"), "-n", "0", "-q"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == ["liwi-build: error: num_samples must be >= 1 (a build of 0 samples makes no dataset)"]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ planning
def test_splits_and_chunks_are_deterministic_and_shard_cleanly() -> None:
    photos = [Photo(f"{k:016x}", SourceRef(f"p{k}.png"), 100, 100) for k in range(40)]
    assign_splits(photos, {"test": 0.25})
    again = [Photo(p.photo_id, p.ref, 100, 100) for p in reversed(photos)]
    assign_splits(again, {"test": 0.25})
    assert {p.photo_id: p.split for p in photos} == {p.photo_id: p.split for p in again}
    assert 4 <= sum(p.split == "test" for p in photos) <= 16
    config = BuildConfig(sources=[], output="", num_samples=1000, chunk_size=64, pool_size=8, test_fraction=0.25)
    chunks = plan_chunks(config, photos)
    assert sum(c.count for c in chunks) == 1000
    assert sum(c.count for c in chunks if c.split == "test") == 250
    pieces = [shard_chunks(chunks, 3, index) for index in range(3)]
    assert [c for piece in pieces for c in piece] == chunks
    pools = [c.pools[0] for c in chunks if c.split == "train"]
    assert pools == sorted(pools) and len(set(pools)) > 1
    two = [Photo("a" * 16, SourceRef("a"), 9, 9), Photo("b" * 16, SourceRef("b"), 9, 9)]
    assign_splits(two, {"test": 0.01})
    assert sorted(p.split for p in two) == ["test", "train"]  # tiny builds still get a test photo


# ------------------------------------------------------------------------------------ composition
def _assets(seed: int = 0) -> tuple[BackgroundAsset, list[ForegroundAsset]]:
    rng = np.random.default_rng(seed)
    background = BackgroundAsset((rng.random((90, 120, 3)) * 255).astype(np.uint8), "clean", "bg", "bg.png")
    foregrounds = []
    for k in range(3):
        rgba = np.zeros((60, 40, 4), np.uint8)
        rgba[5:55, 5:35, :3] = rng.integers(0, 255, (50, 30, 3))
        rgba[5:55, 5:35, 3] = 255
        rgba[5:55, 5, 3] = 100  # a soft edge
        shadow = np.zeros((60, 40), np.uint8)
        if k == 0:
            shadow[50:60, 0:40] = 120  # an extracted shadow below the object
        foregrounds.append(ForegroundAsset(rgba, shadow, f"thing {k}", f"fg{k}", f"fg{k}.png"))
    return background, foregrounds


def test_composite_is_made_from_the_8_bit_layers() -> None:
    background, foregrounds = _assets()
    for seed in range(6):
        sample = compose_sample(background, foregrounds, np.random.default_rng(seed), CompositionConfig(resolution=96))
        layered = sample.layered
        assert layered.num_objects >= 1
        quantized = layered.quantized()
        assert all(np.array_equal(a, b) for a, b in zip(quantized.foregrounds, layered.foregrounds))
        assert np.abs(layered.compose() - sample.composite).max() <= 0.5 / 255 + 1e-6
        for kind, shadow, asset in zip(sample.shadow_kinds, layered.shadows, sample.foregrounds):
            assert kind == ("extracted" if asset.label == "thing 0" else kind)
            if kind.startswith("synthesized"):
                assert 0.0 < shadow.max() <= 0.6 + 1e-6
        for box in layered.object_boxes():
            assert box is not None
    again = compose_sample(background, foregrounds, np.random.default_rng(5), CompositionConfig(resolution=96))
    assert np.array_equal(again.composite, sample.composite)


def test_asset_files_round_trip(tmp_path: Path) -> None:
    background, foregrounds = _assets()
    assets = PhotoAssets("abc", "photo.png", foregrounds, background, {"reason": "ok"}, ["note"], 1.5)
    assets.save(tmp_path / "abc.npz")
    loaded = PhotoAssets.load(tmp_path / "abc.npz")
    assert loaded.summary() == assets.summary()
    assert np.array_equal(loaded.foregrounds[0].rgba, foregrounds[0].rgba) and loaded.foregrounds[0].has_shadow
    assert np.array_equal(loaded.background.image, background.image)


# ------------------------------------------------------------------------------------ the agent
def _proposals() -> tuple[np.ndarray, list[ObjectProposal]]:
    image = np.full((100, 100, 3), 0.5, np.float32)
    first = np.zeros((100, 100), bool)
    first[20:50, 20:45] = True
    second = np.zeros((100, 100), bool)
    second[55:90, 55:85] = True
    edge = np.zeros((100, 100), bool)
    edge[0:30, 70:100] = True  # cut by the top and right borders
    return image, [ObjectProposal(first, 0.9), ObjectProposal(second, 0.8), ObjectProposal(edge, 0.7)]


def test_rule_planner() -> None:
    image, proposals = _proposals()
    plan = RulePlanner().plan(image, proposals)
    assert [c.index for c in plan.objects] == [0, 1]
    assert "cut by the top/right border" in plan.reason
    assert plan.remove == [0, 1, 2] and not plan.clean_background and plan.use_as_background
    clean = RulePlanner().plan(image, [])
    assert clean.clean_background and clean.use_as_background and not clean.objects


class FakeVLM:
    """Answers from a script, one per call, recording the prompts."""

    name = "vlm:fake"

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, image: Image.Image, prompt: str) -> str:
        self.prompts.append(prompt)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_extract_json() -> None:
    assert extract_json('Sure! ```json\n{"a": [1, {"b": 2}]}\n``` hope it helps') == {"a": [1, {"b": 2}]}
    assert extract_json('{broken {"ok": true}') == {"ok": True}
    with pytest.raises(AgentAnswerError):
        extract_json("no json here [1, 2]")


def test_vlm_planner_retries_garbage_then_uses_valid_json() -> None:
    image, proposals = _proposals()
    valid = '{"objects": [{"candidate": 2, "label": " red  cup "}], "clean_background": false}'
    model = FakeVLM(["~~ garbage ~~", valid])
    plan = VLMPlanner(model).plan(image, proposals)
    assert plan.objects == [ObjectChoice(1, "red cup")]
    assert plan.decided_by == "vlm:fake" and "1 retries" in plan.reason
    assert len(model.prompts) == 2 and "no JSON object" in model.prompts[1]
    assert "3: [0.70, 0.00, 1.00, 0.30]" in model.prompts[0]


@pytest.mark.parametrize(
    "answers",
    [
        ["nonsense"] * 3,
        ['{"objects": [{"candidate": 7, "label": "x"}], "clean_background": false}'] * 3,
        [
            '{"objects": [], "clean_background": "no"}',
            '{"objects": [{"candidate": 1}], "clean_background": false}',
            '{"objects": [{"candidate": true, "label": "x"}], "clean_background": false}',
        ],
        [RuntimeError("CUDA out of memory")] * 3,
    ],
)
def test_vlm_planner_falls_back_to_the_rules(answers: list) -> None:
    image, proposals = _proposals()
    plan = VLMPlanner(FakeVLM(answers), retries=2).plan(image, proposals)
    assert [c.index for c in plan.objects] == [0, 1]
    assert plan.decided_by.startswith("rules (vlm fallback after 3 invalid answers")


def test_vlm_verifier() -> None:
    background, foregrounds = _assets()
    sample = compose_sample(background, foregrounds[:1], np.random.default_rng(0), CompositionConfig(resolution=96))
    no = FakeVLM(['{"accept": false, "reason": "halo around the object"}'])
    verdict = VLMVerifier(no).verify(sample.layered, sample.composite)
    assert not verdict.accepted and verdict.reason == "vlm: halo around the object" and verdict.decided_by == "vlm:fake"
    garbage = FakeVLM(["?", "??", "???"])
    verdict = VLMVerifier(garbage).verify(sample.layered, sample.composite)
    assert verdict.accepted and verdict.decided_by.startswith("rules (vlm fallback")
    unused = FakeVLM([])
    wrong = sample.composite.copy()
    wrong[0, 0] = 1.0 - wrong[0, 0]
    verdict = VLMVerifier(unused).verify(sample.layered, wrong)  # rules reject first, the model is not asked
    assert not verdict.accepted and verdict.reason.startswith("recomposition_error") and not unused.prompts


def test_rule_verifier_rejects_hidden_objects() -> None:
    canvas = np.full((40, 40, 3), 0.5, np.float32)
    back = np.zeros((40, 40, 4), np.float32)
    back[10:30, 10:30] = [1, 0, 0, 1]
    front = np.zeros((40, 40, 4), np.float32)
    front[5:35, 5:35] = [0, 0, 1, 1]
    layered = LayeredImage(canvas, [back, front])
    verdict = RuleVerifier().verify(layered, layered.compose())
    assert not verdict.accepted and verdict.reason.startswith("min_visible_fraction 0 <")


# ------------------------------------------------------------------------------ tiny real models


def _noise(height: int = 60, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)


def test_image_segmentation_proposer_loads_a_saved_tiny_model(tmp_path: Path) -> None:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    from liwi_dataset_builder.adapters import TransformersProposer
    from liwi_dataset_builder.toolset import ToolSpec, build_tools

    torch.manual_seed(0)
    labels = {0: "wall", 1: "cup", 2: "cat"}
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "segformer")
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "segformer")
    proposer = TransformersProposer(str(tmp_path / "segformer"), task="image-segmentation", threshold=0.0, min_area=0.0)
    proposals = proposer(_noise(), max_objects=5)
    assert 1 <= len(proposals) <= 5
    assert all(p.mask.shape == (60, 80) and p.label in labels.values() for p in proposals)
    # The same model through the build's tool names (what `liwi-build --proposer ...` does).
    tools = build_tools(ToolSpec(proposer=f"image-segmentation:{tmp_path / 'segformer'}"))
    assert tools.names()["proposer"] == f"image-segmentation:{tmp_path / 'segformer'}"


def test_zero_shot_detection_proposer_with_tiny_owlvit(tmp_path: Path) -> None:
    import torch
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor, pipeline

    from liwi_dataset_builder.adapters import TransformersProposer

    tokenizer = tiny_clip_tokenizer(tmp_path)
    torch.manual_seed(0)
    config = OwlViTConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    size = {"height": 32, "width": 32}
    processor = OwlViTProcessor(image_processor=OwlViTImageProcessor(size=size, crop_size=size), tokenizer=tokenizer)
    pipe = pipeline(
        "zero-shot-object-detection",
        model=OwlViTForObjectDetection(config).eval(),
        processor=processor,
        tokenizer=tokenizer,
        image_processor=processor.image_processor,
    )
    proposer = TransformersProposer(pipe, labels=["cup", "cat"], threshold=0.0, min_area=0.0)
    proposals = proposer(_noise(), max_objects=3)
    assert proposals and all(p.label in ("cup", "cat") and p.mask.shape == (60, 80) for p in proposals)
    assert proposer.name.startswith("zero-shot-object-detection:")
    with pytest.raises(ValueError, match="candidate labels"):
        TransformersProposer(pipe)


def test_mask_generation_branch_with_a_stub_pipeline() -> None:
    # transformers' mask-generation post-processing needs torchvision (not installable here): stub it.
    from liwi_dataset_builder.adapters import TransformersProposer

    class StubSam:
        task = "mask-generation"

        def __call__(self, image: Image.Image, **kwargs) -> dict:
            big = np.zeros((image.height, image.width), bool)
            big[10:40, 10:40] = True
            same = big.copy()
            small = np.zeros_like(big)
            small[45:55, 60:75] = True
            return {"masks": [small, big, same], "scores": np.array([0.5, 0.9, 0.8])}

    proposals = TransformersProposer(StubSam(), min_area=0.0)(_noise())
    assert [round(p.score, 2) for p in proposals] == [0.9, 0.5]  # sorted, the duplicate mask dropped


def test_depth_orderer_with_tiny_dpt() -> None:
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor, pipeline

    from liwi_dataset_builder.adapters import BottomEdgeOrderer, TransformersDepthOrderer

    torch.manual_seed(0)
    config = DPTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8,
        reassemble_factors=[4, 2, 1, 0.5],
    )
    pipe = pipeline(
        "depth-estimation",
        model=DPTForDepthEstimation(config).eval(),
        image_processor=DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False),
    )
    orderer = TransformersDepthOrderer(pipe)
    image = _noise()
    near = orderer.nearness(image)
    assert near.shape == (60, 80) and near.min() >= 0 and near.max() <= 1
    top, bottom = np.zeros((60, 80), bool), np.zeros((60, 80), bool)
    top[:30], bottom[30:] = True, True
    masks = [top, bottom]
    expected = sorted(range(2), key=lambda k: (float(np.median(near[masks[k]])), k))  # far first
    assert orderer.order(image, masks) == expected
    assert BottomEdgeOrderer().order(image, [bottom, top]) == [1, 0]
    # Two touching objects: the planner keeps only the one the depth model puts in front.
    back, front = np.zeros((60, 80), bool), np.zeros((60, 80), bool)
    back[5:30, 10:40], front[30:50, 20:60] = True, True
    plan = RulePlanner(orderer=orderer).plan(image, [ObjectProposal(back, 0.9), ObjectProposal(front, 0.8)])
    assert [c.index for c in plan.objects] == [orderer.order(image, [back, front])[-1]]


def test_diffusers_inpainter_with_a_tiny_pipeline(tmp_path: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from liwi_dataset_builder.adapters import DiffusersInpainter

    tokenizer = tiny_clip_tokenizer(tmp_path)
    torch.manual_seed(0)
    pipe = StableDiffusionInpaintPipeline(
        unet=UNet2DConditionModel(
            block_out_channels=(8, 16),
            layers_per_block=1,
            sample_size=8,
            in_channels=9,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16,
            norm_num_groups=4,
            attention_head_dim=2,
        ),
        vae=AutoencoderKL(
            block_out_channels=[8, 16],
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4,
            norm_num_groups=4,
        ),
        text_encoder=CLIPTextModel(
            CLIPTextConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=16,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=2,
            )
        ),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp_path / "inpaint")
    inpainter = DiffusersInpainter(
        str(tmp_path / "inpaint"), num_inference_steps=2, guidance_scale=1.0, working_size=32
    )
    image = _noise(40, 50)
    hole = np.zeros((40, 50), bool)
    hole[10:20, 10:30] = True
    filled = inpainter(image, hole)
    assert filled.shape == image.shape and filled.dtype == np.float32
    assert np.abs(filled - image)[hole].mean() > 0.01  # the hole was repainted
    np.testing.assert_allclose(filled[36:], image[36:], atol=1e-4)  # far from the hole: untouched
    np.testing.assert_array_equal(filled, inpainter(image, hole))  # fixed seed: deterministic
    assert np.array_equal(inpainter(image, np.zeros_like(hole)), image)


def test_tiny_random_vlm_answers_garbage_and_the_planner_falls_back() -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
        pipeline,
    )

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<image>": 4}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
            projection_dim=16,
        ),
        text_config=LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        ),
        image_token_index=4,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    pipe = pipeline("image-text-to-text", model=LlavaForConditionalGeneration(config).eval(), processor=processor)
    vlm = TransformersVLM(pipe, max_new_tokens=8)
    image, proposals = _proposals()
    answer = vlm(Image.fromarray((image * 255).astype(np.uint8)), "Answer with JSON.")
    assert isinstance(answer, str)
    assert answer == vlm(Image.fromarray((image * 255).astype(np.uint8)), "Answer with JSON.")  # greedy
    plan = VLMPlanner(vlm, retries=1).plan(image, proposals)
    assert plan.decided_by.startswith("rules (vlm fallback after 2 invalid answers")
    assert [c.index for c in plan.objects] == [0, 1]
    # A chat model (the processor has a chat template) is asked with a chat message instead.
    template = (
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
    )
    chat_processor = LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )
    chat = TransformersVLM(pipeline("image-text-to-text", model=pipe.model, processor=chat_processor), max_new_tokens=8)
    assert chat(Image.fromarray((image * 255).astype(np.uint8)), "Answer with JSON.") == answer


def test_parallel_scan_matches_the_serial_one(tmp_path: Path) -> None:
    import multiprocessing

    from liwi_dataset_builder import build

    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(build._PARALLEL_SCAN + 2):
        Image.fromarray(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)).save(folder / f"{k:03d}.png")
    shutil.copy(folder / "005.png", folder / "zz-dup.png")
    (folder / "zz-bad.jpg").write_bytes(b"junk")
    results = []
    for workers in (1, 2):
        state = tmp_path / f"state-{workers}"
        state.mkdir()
        config = BuildConfig(sources=[str(folder)], output=str(tmp_path), workers=workers, progress=False)
        photos, skipped, found = build._scan(config, state, multiprocessing.get_context("spawn"))
        results.append(([p.to_dict() for p in photos], skipped, found))
    assert results[0] == results[1]
    photos, skipped, found = results[0]
    assert found == build._PARALLEL_SCAN + 4 and len(photos) == build._PARALLEL_SCAN + 2
    assert [Path(s["source"]).name for s in skipped] == ["zz-bad.jpg", "zz-dup.png"]


def _session_processes(session: int) -> list[str]:
    """Processes of session ``session`` still running (Linux /proc): a build's workers that outlived it."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == session and fields[0] != "Z":  # fields[3]: session id (field 6 of stat)
            found.append(stat.parent.name)
    return found


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_sigterm_mid_build_stops_workers_cleans_up_and_a_rerun_completes(
    engine: str, built: Path, photos: Path, tmp_path: Path
) -> None:
    """SIGTERM to liwi-build alone (as `kill PID` sends it): status 143, one line, no worker, no temporary.

    With Ray, every process of its local cluster goes too; the rerun (local engine) gives the same rows.
    """
    out = tmp_path / "terminated"
    command = [sys.executable, "-m", "liwi_dataset_builder", str(photos), "-o", str(out), *CLI_LAYOUT]
    command += ["--workers", "2", "--proposer", "saliency", "-q"]  # saliency: the reference's, and no note
    process = subprocess.Popen(
        [*command, "--engine", engine], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    while not list((out / ".build" / "assets").glob("*.npz")):  # the workers are curating
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no asset appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # the main process only: it must stop its workers itself
    stderr = process.communicate(timeout=90)[1]
    assert process.returncode == 143, stderr
    assert stderr.decode().splitlines() == ["liwi-build: terminated; rerun the same command to resume"]
    assert not (out / "README.md").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    deadline = time.monotonic() + 10  # multiprocessing's resource tracker leaves when its pipe closes
    while _session_processes(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _session_processes(process.pid)
    for path in (out / "data").glob("*.parquet"):  # what was written is whole
        assert read_shard(path)
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "complete" in resumed.stdout
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert_same_rows(built, out)  # terminated and resumed == uninterrupted
    assert assert_loads_in_every_split(out, tmp_path) == {"train": 14, "test": 4}


def test_cutout_sheet_shows_each_cutout_over_its_shadow():
    from liwi_dataset_builder.preview import cutout_sheet

    rgba = np.zeros((40, 20, 4), np.uint8)
    rgba[5:35, 5:15] = (255, 0, 0, 255)  # an opaque red bar
    shadow = np.zeros((40, 20), np.uint8)
    shadow[30:40, :] = 255  # a full shadow along the bottom, beside the bar
    cutouts = [ForegroundAsset(rgba, shadow, f"bar {k}", f"photo{k}", "p.png") for k in range(3)]
    sheet = np.asarray(cutout_sheet(cutouts, columns=2, cell=64, gap=4))
    assert sheet.shape == (2 * (64 + 14 + 4) + 4, 2 * (64 + 4) + 4, 3)  # 3 cut-outs: 2 columns, 2 lines
    # First cell: the 40x20 cut-out is scaled to 64 px high, centred; red where the bar is, black in the shadow.
    cell = sheet[4 + 14 : 4 + 14 + 64, 4 : 4 + 64].astype(int)
    middle = cell[32, 32]
    assert middle[0] > 200 and middle[1] < 60
    assert cell[62, 18].max() < 30  # under the full shadow, left of the bar
    assert cell[10, 18].min() > 150  # above the shadow: the light checkerboard
    assert sheet[4 + 14 + 96 :, 4 + 64 + 8 :].min() == 255  # the fourth cell stays empty
    with pytest.raises(ValueError, match="at least one"):
        cutout_sheet([])
