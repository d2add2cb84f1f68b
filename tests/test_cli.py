"""The `liwi` command: help, the default decomposition end to end, and every bad input."""

import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liwi_diffusers.cli import main
from liwi_diffusers.export import load_layered
from liwi_diffusers.sample_images import load_sample_image


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A small real photo (the cat from scikit-image), fast to decompose."""
    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    image = load_sample_image("chelsea")
    image.resize((image.width // 3, image.height // 3), Image.LANCZOS).save(path, quality=95)
    return path


def _pixels(path: Path) -> np.ndarray:
    """The photo's RGB as floats in [0, 1] (the file closed again)."""
    with Image.open(path) as opened:
        return np.asarray(opened.convert("RGB"), dtype=np.float32) / 255


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def bomb_png(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")
    )
    return path


def test_help_explains_every_option_and_the_default_method():
    result = subprocess.run(
        [sys.executable, "-m", "liwi_diffusers.cli", "decompose", "--help"], capture_output=True, text=True, check=True
    )
    for option in (
        "--output-dir",
        "--format",
        "--layers",
        "--model",
        "--steps",
        "--seed",
        "--device",
        "--method",
        "--example",
        "--resolution",
        "--overwrite",
    ):
        assert option in result.stdout
    assert "Default method: 'tools'" in " ".join(result.stdout.split())


def test_cli_start_does_not_import_heavy_dependencies():
    code = (
        "import sys, liwi_diffusers.cli as c; c.build_parser(); "
        "print(sorted(m for m in ('torch', 'diffusers', 'pymatting', 'numba') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("fmt", ["psd", "ora", "zip"])
def test_decompose_writes_a_layered_file_that_recomposes(photo, tmp_path, capsys, fmt):
    assert run_cli("decompose", photo, "-o", tmp_path / "out", "--format", fmt) == 0
    target = tmp_path / "out" / f"chelsea.{fmt}"
    layered = load_layered(target)
    assert layered.num_objects >= 1
    original = _pixels(photo)
    assert np.abs(layered.compose() - original).mean() < 2 / 255
    assert "chelsea.jpg ->" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [target.name]  # no temp files left


def test_layers_option_is_respected(photo, tmp_path):
    assert run_cli("decompose", photo, "-o", tmp_path, "--layers", "1", "--format", "zip") == 0
    assert load_layered(tmp_path / "chelsea.zip").num_objects == 1


def test_notes_about_the_input_and_the_result_are_one_line_each(tmp_path, capsys):
    rgba = np.zeros((96, 128, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[20:70, 30:90] = (30, 60, 200, 255)
    rgba[:, :10, 3] = 0
    rgba[:, 10:, 3] = np.maximum(rgba[:, 10:, 3], 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "card.png")
    assert run_cli("decompose", tmp_path / "card.png", "-o", tmp_path / "out", "--layers", "8", "--format", "zip") == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("liwi: note:") and "flattened" in line for line in err)
    # No learned segmenter in the (hermetic) model cache: one note that names the download command.
    assert any(line.startswith("liwi: note:") and "liwi models download isnet" in line for line in err)
    assert not any("Warning" in line for line in err)


def test_existing_output_needs_overwrite(photo, tmp_path, capsys):
    (tmp_path / "chelsea.psd").write_bytes(b"keep me")
    assert run_cli("decompose", photo, "-o", tmp_path) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "chelsea.psd").read_bytes() == b"keep me"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.jpg", "no such file"),
        (lambda d: d / "zero.png", "empty file"),
        (lambda d: d / "text.jpg", "not an image"),
        (lambda d: d / "cut.png", "truncated|corrupt"),
        (lambda d: d / "dot.png", "1x1"),
        (lambda d: bomb_png(d / "bomb.png", 30000, 30000), "900 MP"),
    ],
)
def test_bad_images_give_one_line_error_nonzero_exit_and_no_output(tmp_path, capsys, make, message):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a photo")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:900])
    out = tmp_path / "out"
    assert run_cli("decompose", make(tmp_path), "-o", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("liwi: error:")
    assert re.search(message, err[0])
    assert not out.exists()  # nothing written: not even the folder it would have created


def test_one_bad_image_among_good_ones(photo, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    assert run_cli("decompose", photo, bad, "-o", tmp_path / "out", "--format", "zip") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["chelsea.zip"]
    assert "1 of 2 images failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "-1"], "--layers must be 'auto' (or 0) or between 1 and 8"),
        (["--layers", "99"], "--layers must be 'auto' (or 0) or between 1 and 8"),
        (["--layers", "many"], "--layers must be 'auto' or a number between 1 and 8"),
        (["--method", "pipeline"], "needs --model"),
        (["--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_bad_options(photo, tmp_path, capsys, args, message):
    assert run_cli("decompose", photo, "-o", tmp_path, *args) == 2
    assert message in capsys.readouterr().err


def test_no_input_and_duplicate_names(photo, tmp_path, capsys):
    assert run_cli("decompose", "-o", tmp_path) == 2
    assert "no input" in capsys.readouterr().err
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "chelsea.png").write_bytes(b"x")
    assert run_cli("decompose", photo, other / "chelsea.png", "-o", tmp_path / "out") == 2
    assert "would both be written" in capsys.readouterr().err


def test_unwritable_output_path_is_refused_before_any_work(photo, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert run_cli("decompose", photo, "-o", blocker / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("liwi: error: cannot write to") and len(err.strip().splitlines()) == 1


def test_missing_model_folder_is_a_clear_error(photo, tmp_path, capsys):
    assert run_cli("decompose", photo, "-o", tmp_path, "--model", tmp_path / "no-such-model") == 2
    err = capsys.readouterr().err
    assert "cannot load a LiWi pipeline" in err and len(err.strip().splitlines()) == 1


def test_folder_input_expands_to_its_images(photo, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    with Image.open(photo) as opened:
        opened.save(folder / "a.png")
    (folder / "notes.txt").write_text("ignored")
    assert run_cli("decompose", folder, "-o", tmp_path / "out", "--format", "zip", "-q") == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.zip"]


def test_decompose_with_a_saved_pipeline_folder(photo, tmp_path, capsys):
    from liwi_diffusers.pipelines.tiny import build_tiny_pipeline

    model = tmp_path / "tiny-liwi"
    build_tiny_pipeline(seed=0).save_pretrained(model)
    args = (
        "decompose",
        photo,
        "--model",
        model,
        "--layers",
        "2",
        "--steps",
        "2",
        "--resolution",
        "64",
        "--device",
        "cpu",
        "--format",
        "ora",
    )
    assert run_cli(*args, "-o", tmp_path / "a") == 0
    assert run_cli(*args, "-o", tmp_path / "b") == 0
    first, second = load_layered(tmp_path / "a" / "chelsea.ora"), load_layered(tmp_path / "b" / "chelsea.ora")
    with Image.open(photo) as opened:
        size, original = opened.size, np.asarray(opened.convert("RGB"), dtype=np.float32) / 255
    assert first.num_objects == 2 and first.size == size
    np.testing.assert_array_equal(first.compose(), second.compose())  # same seed, same layers
    assert np.abs(first.compose() - original).max() <= 1.5 / 255
    assert "chelsea.jpg ->" in capsys.readouterr().out


def test_cuda_device_without_a_gpu_is_a_clear_error(photo, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on GPU machines
    assert run_cli("decompose", photo, "-o", tmp_path, "--model", tmp_path, "--device", "cuda") == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_decompose_with_the_shipped_checkpoint_by_name(photo, tmp_path, capsys):
    args = (
        "decompose",
        photo,
        "--model",
        "liwi-small",
        "--layers",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--format",
        "zip",
        "-o",
        tmp_path,
    )
    assert run_cli(*args) == 0
    layered = load_layered(tmp_path / "chelsea.zip")
    assert layered.num_objects == 2 and layered.size == (_pixels(photo).shape[1], _pixels(photo).shape[0])
    original = _pixels(photo)
    assert np.abs(layered.compose() - original).mean() <= 1e-3  # the final step reconciles with the input
    assert "chelsea.jpg ->" in capsys.readouterr().out


def test_quiet_pipeline_run_prints_nothing(photo, tmp_path, capsys):
    args = ("decompose", photo, "--model", "liwi-small", "--layers", "1", "--steps", "1", "-q", "-o", tmp_path)
    assert run_cli(*args) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (tmp_path / "chelsea.psd").is_file()


def test_resolution_below_the_model_multiple_is_a_clear_error(photo, tmp_path, capsys):
    for resolution in ("8", "0"):
        assert run_cli("decompose", photo, "--model", "liwi-small", "--resolution", resolution, "-o", tmp_path) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"liwi: error: --resolution must be at least 16 for this model, got {resolution}"
    assert not any("Traceback" in line for line in err)
    assert not list(tmp_path.iterdir())


def test_a_run_that_writes_nothing_leaves_no_new_folder(tmp_path, capsys):
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    out = tmp_path / "new" / "out"
    assert run_cli("decompose", bad, "-o", out) == 1
    assert "liwi: error:" in capsys.readouterr().err
    assert not out.exists()  # created for this run, and nothing was written into it
    existing = tmp_path / "kept"
    existing.mkdir()
    assert run_cli("decompose", bad, "-o", existing) == 1
    assert existing.is_dir()  # a folder the user already had stays
