"""The Gradio Space (spaces_demo/): edit functions, handlers, the app over HTTP with gradio_client, and a real browser.

The browser tests drive Debian's Chromium through Selenium and fail (not skip) when either is missing,
since CI installs them; set LIWI_SKIP_BROWSER_TESTS=1 to skip them on a machine without a browser.
Set LIWI_SAVE_SCREENSHOT=1 to refresh docs/images/space_screenshot.png, space_click.png and space_depth.png
(with the tests' weight-free tool chain); ``python tests/test_space.py`` renders the click and depth ones with
this machine's model cache, as the Space runs (`_render_screenshots`).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from liwi_diffusers.export import load_layered
from liwi_diffusers.layers import LayeredImage
from liwi_diffusers.sample_images import load_sample_image

# Gradio's server and client threads make asyncio event loops that they never close: each loop and its
# self-pipe (an AF_UNIX socket pair) are reported as unclosed when collected. Files left open still fail.
pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <function BaseEventLoop.__del__:pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <socket.socket fd=\d+, family=1, type=1:pytest.PytestUnraisableExceptionWarning"
    ),
    # A socket object that gradio_client's HTTP stack collects after closing it (nothing is left open).
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <socket.socket .closed.:pytest.PytestUnraisableExceptionWarning"
    ),
]

ROOT = Path(__file__).resolve().parents[1]
SPACE_DIR = ROOT / "spaces_demo"
SCREENSHOT = ROOT / "docs" / "images" / "space_screenshot.png"
LAYER_NAME = re.compile(r"^(background|(shadow|object) \d+(: .+)?)$")


def _load_space() -> ModuleType:
    """spaces_demo/app.py as a module (it is a Space folder, not a package)."""
    spec = importlib.util.spec_from_file_location("liwi_space_app", SPACE_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


space = _load_space()
editing = importlib.import_module("editing")  # spaces_demo/ is on sys.path once app.py is loaded
worker_pool = importlib.import_module("worker_pool")


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real photos: ``coffee``, ``chelsea`` (160 px wide), ``astronaut`` (320), ``large`` (400); bad files."""
    folder = tmp_path_factory.mktemp("space_photos")
    paths = {}
    for name, width in (("coffee", 160), ("chelsea", 160), ("astronaut", 320), ("large", 400)):
        image = load_sample_image("chelsea" if name == "large" else name)
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        paths[name] = folder / f"{name}.jpg"
        image.save(paths[name], quality=92)
    paths["corrupt"] = folder / "corrupt.jpg"
    paths["corrupt"].write_bytes(b"this is not a photo, just text with a .jpg name\n" * 4)
    paths["truncated"] = folder / "truncated.jpg"
    paths["truncated"].write_bytes(paths["coffee"].read_bytes()[:1500])
    paths["oversize"] = folder / "oversize.png"  # noise does not compress: a PNG above the upload limit
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(paths["oversize"])
    return paths


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory):
    """Small limits so that the limits are cheap to hit; the tiny pipeline offered beside the tool chain."""
    return space.SpaceConfig(
        default_model=space.TOOLS,
        models=(space.TOOLS, space.TINY, space.SHIPPED_CHECKPOINT),
        max_side=320,
        max_file_size="300kb",
        max_steps=30,
        queue_size=16,
        concurrency=2,
        output_dir=tmp_path_factory.mktemp("space_out"),
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(config) -> Iterator[str]:
    """The app, launched in this process on 127.0.0.1 (a random free port); its URL. Closed at the end."""
    demo = space.build_demo(config)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **space.launch_options(config)
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server: str, tmp_path_factory: pytest.TempPathFactory):
    from gradio_client import Client

    return Client(server, verbose=False, download_files=str(tmp_path_factory.mktemp("client_downloads")))


def _layered(num_objects: int = 2, size: tuple[int, int] = (64, 48)) -> LayeredImage:
    """A small synthetic decomposition: noisy background, square objects with soft shadows."""
    width, height = size
    rng = np.random.default_rng(1)
    background = rng.random((height, width, 3)).astype(np.float32)
    foregrounds, shadows = [], []
    for k in range(num_objects):
        rgba = np.zeros((height, width, 4), np.float32)
        left, top = 8 + 20 * k, 12
        rgba[top : top + 16, left : left + 12, :3] = (0.9, 0.2 + 0.3 * k, 0.1)
        rgba[top : top + 16, left : left + 12, 3] = 1.0
        rgba[top + 15, left : left + 12, 3] = 0.5  # a soft edge
        foregrounds.append(rgba)
        shadow = np.zeros((height, width), np.float32)
        shadow[top + 16 : top + 22, left - 2 : left + 14] = 0.4
        shadows.append(shadow)
    return LayeredImage(background, foregrounds, shadows, ["box"] * num_objects)


def _size(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def _rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.float32) / 255


def _bbox(alpha: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero((alpha > 0.01).any(1)), np.flatnonzero((alpha > 0.01).any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ---------------------------------------------------------------------------------------------- editing
def test_unedited_session_gives_back_the_8_bit_decomposition():
    layered = _layered()
    session = editing.EditSession.from_layered(layered)
    assert not session.is_edited()
    edited = editing.apply_edits(session)
    np.testing.assert_allclose(edited.compose(), layered.quantized().compose(), atol=1e-6)
    assert edited.labels == ["box", "box"]


def test_hiding_an_object_shows_the_background_and_keeps_it_for_later():
    layered = _layered()
    session = editing.update_edit(editing.EditSession.from_layered(layered), 1, visible=False)
    edited = editing.apply_edits(session)
    assert edited.num_objects == 1
    np.testing.assert_allclose(edited.compose(), layered.quantized().select([0]).compose(), atol=1e-6)
    assert editing.shown_objects(session) == [0]
    assert [index for _, index in editing.object_choices(session)] == [0, 1]  # still pickable
    shown_again = editing.update_edit(session, 1, visible=True)
    assert editing.apply_edits(shown_again).num_objects == 2


def test_deleting_removes_an_object_until_reset():
    session = editing.delete_object(editing.EditSession.from_layered(_layered()), 0)
    assert editing.apply_edits(session).num_objects == 1
    assert [index for _, index in editing.object_choices(session)] == [1]
    with pytest.raises(ValueError, match="deleted"):
        editing.update_edit(session, 0, dx=3)
    restored = editing.reset_edits(session)
    assert not restored.is_edited() and editing.apply_edits(restored).num_objects == 2


def test_moving_shifts_the_object_and_its_shadow_exactly():
    layered = _layered(1)
    session = editing.update_edit(editing.EditSession.from_layered(layered), 0, dx=5, dy=-3)
    edited = editing.apply_edits(session)
    original = layered.quantized()
    np.testing.assert_allclose(
        edited.foregrounds[0][:, :, 3], np.roll(original.foregrounds[0][:, :, 3], (-3, 5), axis=(0, 1)), atol=1e-5
    )
    np.testing.assert_allclose(edited.shadows[0], np.roll(original.shadows[0], (-3, 5), axis=(0, 1)), atol=1e-5)
    inside = edited.foregrounds[0][:, :, 3] > 0.99
    np.testing.assert_allclose(edited.foregrounds[0][inside, :3], [[0.9, 0.2, 0.1]] * int(inside.sum()), atol=2 / 255)
    # The uncovered place shows the background (nothing there any more).
    assert edited.foregrounds[0][12:15, 8:13, 3].max() == 0.0


def test_scaling_grows_the_object_about_its_centre():
    layered = _layered(1)
    left, top, right, bottom = _bbox(layered.foregrounds[0][:, :, 3])
    session = editing.update_edit(editing.EditSession.from_layered(layered), 0, scale=2.0)
    new_left, new_top, new_right, new_bottom = _bbox(editing.apply_edits(session).foregrounds[0][:, :, 3])
    assert abs((new_right - new_left) - 2 * (right - left)) <= 2
    assert abs((new_bottom - new_top) - 2 * (bottom - top)) <= 2
    assert abs((new_left + new_right) - (left + right)) <= 2 and abs((new_top + new_bottom) - (top + bottom)) <= 2


def test_shadow_strength_scales_the_shadow_alpha():
    layered = _layered(1)
    session = editing.EditSession.from_layered(layered)
    none = editing.apply_edits(editing.update_edit(session, 0, shadow_strength=0.0))
    double = editing.apply_edits(editing.update_edit(session, 0, shadow_strength=2.0))
    assert none.shadows[0].max() == 0.0
    np.testing.assert_allclose(double.shadows[0], np.clip(2 * layered.quantized().shadows[0], 0, 1), atol=1e-6)
    np.testing.assert_allclose(editing.scale_shadow(np.full((2, 2), 0.7), 3.0), np.ones((2, 2)))


def test_edit_values_are_checked():
    session = editing.EditSession.from_layered(_layered())
    with pytest.raises(ValueError, match="scale"):
        editing.update_edit(session, 0, scale=0.0)
    with pytest.raises(ValueError, match="shadow strength"):
        editing.update_edit(session, 0, shadow_strength=-1.0)
    with pytest.raises(IndexError, match="no object 5"):
        editing.update_edit(session, 5, dx=1)


# ---------------------------------------------------------------------------------------------- handlers
def test_decompose_handler_gives_named_rgba_layers_a_psd_and_an_edit_session(config, photos):
    gallery, recomposition, report, psd, session = space.decompose(str(photos["coffee"]), space.TOOLS, 0, 20, 0, config)
    count = session.num_objects
    assert count >= 1 and len(gallery) == 2 * count + 1
    names = [name for _, name in gallery]
    assert names[0] == "background" and names[1:3] == ["shadow 1", "object 1"]
    assert all(LAYER_NAME.match(name) for name in names)
    size = _size(photos["coffee"])
    for path, _ in gallery:
        assert Path(path).is_relative_to(config.output_dir)
        with Image.open(path) as layer:
            assert layer.mode == "RGBA" and layer.size == size
    assert _size(recomposition) == size
    assert f"{count} object" in report and "Recomposition error" in report
    layered = load_layered(psd)
    assert layered.num_objects == count
    photo = _rgb(photos["coffee"])
    assert np.abs(layered.compose() - photo).mean() < 2 / 255


def test_decompose_handler_downscales_large_photos_with_a_notice(config, photos):
    with pytest.warns(UserWarning, match="downscaled"):  # gr.Warning, outside a request
        gallery, _, report, _, session = space.decompose(str(photos["large"]), space.TOOLS, 1, 20, 0, config)
    assert session.size == (320, 213)
    assert "Your photo (400x266) was downscaled to 320x213" in report
    assert _size(gallery[0][0]) == (320, 213)


def test_decompose_handler_runs_a_pipeline_with_steps_and_seed(config, photos):
    calls = []
    gallery, _, report, _, session = space.decompose(
        str(photos["chelsea"]), space.TINY, 2, 2, 7, config, progress=lambda *args, **kwargs: calls.append(args)
    )
    assert session.num_objects == 2 and len(gallery) == 5
    assert ((2, 2),) in calls  # the last denoising step was reported
    assert "Tiny random pipeline" in report


def test_decompose_handler_runs_the_shipped_checkpoint(config, photos):
    gallery, _, report, _, session = space.decompose(str(photos["coffee"]), space.SHIPPED_CHECKPOINT, 2, 3, 0, config)
    assert session.num_objects == 2 and len(gallery) == 5
    assert "LiWi checkpoint liwi-small" in report


@pytest.mark.parametrize(
    ("photo", "message"),
    [
        ("corrupt", "corrupt.jpg: not an image file"),
        ("truncated", "truncated.jpg: corrupt or truncated"),
        (None, "Upload a photo or pick an example"),
    ],
)
def test_bad_uploads_give_readable_errors(config, photos, photo, message):
    path = None if photo is None else str(photos[photo])
    with pytest.raises(gr.Error, match=re.escape(message)) as caught:
        space.decompose(path, space.TOOLS, 0, 20, 0, config)
    assert str(config.output_dir) not in caught.value.message and "/tmp" not in caught.value.message


def test_bad_settings_give_readable_errors(config, photos):
    with pytest.raises(gr.Error, match="Unknown model"):
        space.decompose(str(photos["coffee"]), "some/other-model", 0, 20, 0, config)
    with pytest.raises(gr.Error, match=re.escape("between 0 (automatic) and 8")):
        space.decompose(str(photos["coffee"]), space.TOOLS, 9, 20, 0, config)
    with pytest.raises(gr.Error, match="Steps must be between 1 and 30"):
        space.decompose(str(photos["coffee"]), space.TOOLS, 0, 31, 0, config)
    huge = space.SpaceConfig(max_pixels=10_000, output_dir=config.output_dir)
    with pytest.raises(gr.Error, match="above the 0 MP limit"):
        space.decompose(str(photos["coffee"]), space.TOOLS, 0, 20, 0, huge)


def test_worker_pool_stops_a_call_at_its_time_limit_and_replaces_the_worker():
    pool = worker_pool.WorkerPool(1)
    try:
        assert pool.run(math.hypot, (3, 4), time_limit_s=60) == 5.0
        (first,) = pool.pids()
        start = time.monotonic()
        with pytest.raises(worker_pool.TimeLimitExceeded, match=r"limit 0.5 s"):
            pool.run(time.sleep, (60,), time_limit_s=0.5)
        assert time.monotonic() - start < 10  # not the 60 s the call wanted
        assert not Path(f"/proc/{first}").exists() or "zombie" in Path(f"/proc/{first}/status").read_text()
        (second,) = pool.pids()
        assert second != first
        assert pool.run(math.hypot, (6, 8), time_limit_s=60) == 10.0  # the replacement serves the next call
        with pytest.raises(ValueError, match="math domain error"):  # errors come back as themselves
            pool.run(math.sqrt, (-1,), time_limit_s=60)
        with pytest.raises(worker_pool.WorkerCrashed, match="exit code 3"):
            pool.run(os._exit, (3,), time_limit_s=60)
        assert pool.run(math.hypot, (3, 4), time_limit_s=60) == 5.0
    finally:
        pool.close()
    assert pool.pids() == []


def test_decompose_handler_stops_the_tool_chain_at_the_time_limit(config, photos, caplog):
    limited = space.SpaceConfig(
        models=config.models, concurrency=config.concurrency, time_limit_s=0.05, output_dir=config.output_dir
    )
    pool = space.tool_chain_pool(limited.concurrency)
    with (
        caplog.at_level(logging.INFO, logger="liwi_space"),
        pytest.raises(gr.Error, match=re.escape("took longer than 0.05 s")) as caught,
    ):
        space.decompose(str(photos["coffee"]), space.TOOLS, 0, 20, 0, limited)
    assert caught.value.title == "Time limit" and "\n" not in caught.value.message
    assert caught.value.print_exception is False  # Gradio prints no traceback for it
    assert len(pool.pids()) == limited.concurrency  # the stopped worker was replaced
    assert [r.getMessage() for r in caplog.records] == ["/decompose: stopped at the time limit (0.05 s), model tools"]


def test_decompose_handler_stops_a_pipeline_at_the_time_limit(config, photos):
    limited = space.SpaceConfig(models=config.models, time_limit_s=1e-3, output_dir=config.output_dir)
    calls = []
    with pytest.raises(gr.Error, match=re.escape("took longer than 0.001 s")):
        space.decompose(str(photos["chelsea"]), space.TINY, 2, 30, 0, limited, progress=lambda *a, **k: calls.append(a))
    assert ((1, 30),) in calls and ((2, 30),) not in calls  # stopped after its first step
    _, lock = space.MODELS.get(space.TINY)
    assert not lock.locked()


def test_object_count_auto_and_zero_mean_the_same(monkeypatch, config, photos):
    assert space.object_count_choices(3) == [
        ("auto (the model decides)", "auto"),
        ("1 object", 1),
        ("2 objects", 2),
        ("3 objects", 3),
    ]
    for value in ("auto", "AUTO", 0, "0", 0.0, None, ""):
        assert space.parse_object_count(value, 8) is None, value
    for value, expected in ((3, 3), ("3", 3), (3.0, 3), (8, 8)):
        assert space.parse_object_count(value, 8) == expected
    for value in (9, -1, 2.5, "many", True, [1]):
        with pytest.raises(gr.Error, match=re.escape('must be "auto" or a whole number between 0 (automatic) and 8')):
            space.parse_object_count(value, 8)
    asked = []

    def fake_run_model(name, image, num_layers, steps, seed, config, progress=None, prompts=None, depth=1):
        asked.append(num_layers)
        objects = _layered(1, image.size)
        objects.labels = ["object"]  # the tool chain's placeholder label
        return objects

    monkeypatch.setattr(space, "run_model", fake_run_model)
    for value in ("auto", 0):
        gallery, _, report, psd, _ = space.decompose(str(photos["coffee"]), space.TOOLS, value, 20, 0, config)
        assert "**1 object** (auto) (3 layers," in report
    assert asked == [None, None]
    names = [name for _, name in gallery]
    assert names == ["background", "shadow 1", "object 1"]  # LayeredImage.layer_names, placeholder dropped
    assert [name for name, _ in load_layered(psd).to_rgba_stack()] == names  # the PSD says the same
    with pytest.warns(UserWarning, match=re.escape("You asked for 2 objects; the model found 1 it could")):
        space.decompose(str(photos["coffee"]), space.TOOLS, 2, 20, 0, config)


def test_reports_and_summaries_use_singular_for_one(monkeypatch, config, photos):
    monkeypatch.setattr(space, "run_model", lambda name, image, *args, **kwargs: _layered(0, image.size))
    with pytest.warns(UserWarning, match=re.escape("You asked for 1 object; the model found 0")):
        report = space.decompose(str(photos["coffee"]), space.TOOLS, 1, 20, 0, config)[2]
    assert "**0 objects** (1 layer," in report
    assert (space.plural(1, "layer"), space.plural(2, "layer"), space.plural(0, "object")) == (
        "1 layer",
        "2 layers",
        "0 objects",
    )
    one = editing.EditSession.from_layered(_layered(1))
    assert space.render_edits(one, config.output_dir)[2] == "1 of 1 object shown."


def test_sliders_show_rounded_values(config):
    session = editing.EditSession.from_layered(_layered(2))  # 64x48
    session = editing.update_edit(session, 0, dx=64 / 3, dy=-48 / 7, scale=1.2345, shadow_strength=0.333)
    _, dx, dy, scale, strength = space.edit_controls(session, 0)
    assert (dx, dy, scale, strength) == (33.5, -14.5, 1.25, 0.35)  # on the sliders' 0.5 and 0.05 steps
    demo = space.build_demo(config)
    sliders = {block.elem_id: block for block in demo.blocks.values() if isinstance(block, gr.Slider)}
    assert {name: sliders[name].precision for name in ("liwi-steps", "liwi-dx", "liwi-scale", "liwi-strength")} == {
        "liwi-steps": 0,
        "liwi-dx": 1,
        "liwi-scale": 2,
        "liwi-strength": 2,
    }
    count = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "liwi-num-layers")
    assert count.value == "auto" and count.choices[1] == ("1 object", 1)


def test_models_load_through_load_decomposer(monkeypatch):
    loaded = []

    def fake_load_decomposer(name, device="auto", dtype=None, **options):
        loaded.append((name, device))
        raise space.DecomposerLoadError(f"unknown model {name!r}: give tools, ...")

    monkeypatch.setattr(space, "load_decomposer", fake_load_decomposer)
    with pytest.raises(gr.Error, match=re.escape("Cannot load 'no/such-model': unknown model")) as caught:
        space._load_model("no/such-model")
    assert loaded == [("no/such-model", "cpu")] and caught.value.print_exception is False


def test_edit_handlers_and_exports_follow_the_edits(config):
    session = editing.EditSession.from_layered(_layered(2))
    assert space.edit_controls(session, 0) == (True, 0.0, 0.0, 1.0, 1.0)
    session = space.edit_object(session, 0, True, 25.0, -10.0, 1.5, 0.0)
    assert session.edits[0].dx == pytest.approx(16.0) and session.edits[0].dy == pytest.approx(-4.8)
    assert space.edit_controls(session, 0) == pytest.approx((True, 25.0, -10.0, 1.5, 0.0))
    session = space.edit_object(session, 1, False, 0, 0, 1.0, 1.0)
    picture, gallery, summary = space.render_edits(session, config.output_dir)
    assert _size(picture) == (64, 48)
    assert [name for _, name in gallery] == ["background", "shadow 1: box", "object 1: box"]
    assert summary == "1 of 2 objects shown, 1 hidden, 1 moved or scaled, 1 with a new shadow."
    only_second = space.edit_object(space.edit_object(session, 1, True, 0, 0, 1, 1), 0, False, 0, 0, 1, 1)
    names = [name for _, name in space.render_edits(only_second, config.output_dir)[1]]
    assert names == ["background", "shadow 2: box", "object 2: box"]  # objects keep their numbers
    expected = editing.apply_edits(session).quantized().compose()
    for label, suffix in (("PSD", ".psd"), ("ORA", ".ora"), ("ZIP of PNGs", ".zip")):
        path = Path(space.export_layers(session, label, config))
        assert path.suffix == suffix and path.name.startswith("liwi_layers_edited")
        assert path.is_relative_to(config.output_dir)
        loaded = load_layered(path)
        assert loaded.num_objects == 1
        np.testing.assert_allclose(loaded.compose(), expected, atol=1e-6)
    with pytest.raises(gr.Error, match="Decompose a photo first"):
        space.export_layers(None, "PSD", config)
    with pytest.raises(gr.Error, match="Decompose a photo first"):
        space.edit_object(None, 0, True, 0, 0, 1, 1)
    assert space.render_edits(None, config.output_dir)[0] is None


def test_config_from_environment():
    config = space.SpaceConfig.from_env(
        {"LIWI_MODEL": "/models/liwi", "LIWI_MODELS": "tiny, tools", "LIWI_MAX_SIDE": "512", "LIWI_QUEUE_SIZE": "8"}
    )
    assert config.default_model == "/models/liwi" and config.models == ("/models/liwi", "tools", "liwi-small", "tiny")
    assert config.max_side == 512 and config.queue_size == 8 and config.concurrency == 2
    assert space.SpaceConfig.from_env({}).models == ("tools", "liwi-small")
    with pytest.raises(ValueError, match="LIWI_MAX_SIDE must be a whole number"):
        space.SpaceConfig.from_env({"LIWI_MAX_SIDE": "big"})
    with pytest.raises(ValueError, match="LIWI_CONCURRENCY must be positive"):
        space.SpaceConfig.from_env({"LIWI_CONCURRENCY": "0"})
    assert space.SpaceConfig.from_env({}).time_limit_s == 120.0
    assert space.SpaceConfig.from_env({"LIWI_TIME_LIMIT": "2.5"}).time_limit_s == 2.5
    for bad in ("0", "soon", "inf"):
        with pytest.raises(ValueError, match="LIWI_TIME_LIMIT must be a"):
            space.SpaceConfig.from_env({"LIWI_TIME_LIMIT": bad})


def test_gpu_decorator_is_a_no_op_without_the_spaces_package():
    def function() -> int:
        return 1

    if importlib.util.find_spec("spaces") is None:
        assert space._gpu(function) is function


def test_space_readme_header_and_requirements():
    import yaml  # a gradio dependency

    text = (SPACE_DIR / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    fields = yaml.safe_load(text.split("---\n")[1])
    # The Space runs the pinned version; the app needs Gradio 6 (api_visibility, theme/css at launch).
    assert fields["sdk"] == "gradio" and re.fullmatch(r"6\.\d+\.\d+", str(fields["sdk_version"]))
    assert gr.__version__.split(".")[0] == "6"
    assert fields["app_file"] == "app.py" and (SPACE_DIR / fields["app_file"]).exists()
    assert fields["license"] == "apache-2.0" and fields["title"] and fields["emoji"]
    assert fields["suggested_hardware"] and fields["tags"] and fields["models"]
    assert len(fields["short_description"]) <= 60
    assert 'api_name="/decompose"' in text
    requirements = (SPACE_DIR / "requirements.txt").read_text(encoding="utf-8")
    assert "liwi-diffusers" in requirements and "spaces" in requirements


# ---------------------------------------------------------------------------------------------- over HTTP
def test_client_decomposes_a_photo_into_rgba_layers_and_a_psd(client, photos):
    from gradio_client import handle_file

    assert "/decompose" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    layers, recomposition, report, psd = client.predict(
        handle_file(str(photos["chelsea"])), "tools", 2, 20, 0, api_name="/decompose"
    )
    count = (len(layers) - 1) // 2
    assert 1 <= count <= 2 and len(layers) == 2 * count + 1
    assert [layer["caption"] for layer in layers][:3] == ["background", "shadow 1", "object 1"]
    with Image.open(photos["chelsea"]) as photo:
        size = photo.size
    for layer in layers:
        with Image.open(layer["image"]) as image:
            assert image.mode == "RGBA" and image.size == size
    assert f"{count} object" in report
    layered = load_layered(psd)
    assert layered.num_objects == count
    with Image.open(recomposition) as image:
        shown = np.asarray(image.convert("RGB"), np.float32) / 255
    assert np.abs(layered.compose() - shown).max() < 4 / 255  # the PSD recomposes to what the page shows
    photo = _rgb(photos["chelsea"])
    assert np.abs(layered.compose() - photo).mean() < 2 / 255


def test_client_gets_readable_errors_for_bad_uploads(client, photos):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=re.escape("corrupt.jpg: not an image file Pillow can read")):
        client.predict(handle_file(str(photos["corrupt"])), "tools", 0, 20, 0, api_name="/decompose")
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(photos["oversize"])), "tools", 0, 20, 0, api_name="/decompose")


def test_user_errors_are_logged_as_one_line_without_a_traceback(client, photos, caplog, capfd):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with caplog.at_level(logging.INFO, logger="liwi_space"):
        with pytest.raises(AppError, match="not an image file"):
            client.predict(handle_file(str(photos["corrupt"])), "tools", "auto", 20, 0, api_name="/decompose")
        with pytest.raises(AppError, match="Number of objects must be"):
            client.predict(handle_file(str(photos["coffee"])), "tools", "lots", 20, 0, api_name="/decompose")
    messages = [record.getMessage() for record in caplog.records if record.name == "liwi_space"]
    assert len(messages) == 2 and all("\n" not in message for message in messages), messages
    assert messages[0].startswith("/decompose: Cannot read this photo: corrupt.jpg: not an image file")
    assert messages[1].startswith('/decompose: Error: Number of objects must be "auto"')
    assert "Traceback" not in capfd.readouterr().err


def test_server_refuses_oversize_uploads(server, photos):
    body, boundary = _multipart("files", photos["oversize"])
    request = urllib.request.Request(
        f"{server}/gradio_api/upload",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    with caught.value as response:  # an HTTPError holds the connection until closed
        assert response.code == 413
        assert "maximum allowed size" in response.read().decode()


def test_server_serves_only_files_it_wrote(server, client, photos):
    for path in (SPACE_DIR / "app.py", Path("/etc/passwd"), ROOT / "pyproject.toml"):
        url = f"{server}/gradio_api/file={urllib.parse.quote(str(path))}"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url, timeout=30)
        with caught.value as response:
            assert response.code in (403, 404)


def test_queue_turns_away_requests_beyond_its_size(config, photos, tmp_path):
    from gradio_client import Client, handle_file

    small = space.SpaceConfig(queue_size=1, concurrency=1, output_dir=tmp_path / "out")
    demo = space.build_demo(small)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **space.launch_options(small)
    )
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False, download_files=str(tmp_path / "downloads"))
        jobs = [
            client.submit(handle_file(str(photos["coffee"])), "tools", 1, 20, 0, api_name="/decompose")
            for _ in range(4)
        ]
        outcomes = []
        for job in jobs:
            try:
                job.result(timeout=120)
                outcomes.append("ok")
            except Exception as error:
                outcomes.append(str(error))
    finally:
        demo.close()
    assert "ok" in outcomes  # the running request and the one waiting are served
    assert any("queue is full" in outcome.lower() for outcome in outcomes), outcomes


def _multipart(field: str, path: Path) -> tuple[bytes, str]:
    boundary = "liwiboundary7d1f"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), boundary


# ---------------------------------------------------------------------------------------------- in a browser
@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Selenium and /usr/bin/chromedriver (nothing downloaded)."""
    if os.environ.get("LIWI_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("LIWI_SKIP_BROWSER_TESTS=1")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [path for path in (chromium, chromedriver) if not Path(path).exists()]
    if missing:
        pytest.fail(
            f"browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} missing): "
            "apt-get install chromium chromium-driver, or set LIWI_SKIP_BROWSER_TESTS=1"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("browser tests need selenium: pip install selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="liwi_chromium_")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1250",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open_page(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#liwi-photo input[type=file]"))


def _upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#liwi-photo input[type=file]").send_keys(str(path))


def _toasts(driver) -> str:
    from selenium.webdriver.common.by import By

    return " | ".join(element.text for element in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]"))


def test_browser_decomposes_a_photo_and_shows_its_layers(server, browser, photos, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open_page(browser, server)
    _upload(browser, photos["astronaut"])
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#liwi-photo img"))
    browser.find_element(By.ID, "liwi-decompose").click()
    thumbnails = "#liwi-layers .thumbnail-item img"
    WebDriverWait(browser, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, thumbnails)) >= 3)
    WebDriverWait(browser, 30).until(
        lambda d: all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
            for image in d.find_elements(By.CSS_SELECTOR, thumbnails)
        )
    )
    captions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#liwi-layers .caption-label")]
    assert len(captions) % 2 == 1 and captions[:3] == ["background", "shadow 1", "object 1"]
    assert len(browser.find_elements(By.CSS_SELECTOR, thumbnails)) == len(captions)
    report = browser.find_element(By.ID, "liwi-report").text
    assert f"{len(captions) // 2} object" in report and "Recomposition error" in report
    assert browser.find_elements(By.CSS_SELECTOR, "#liwi-recomposition img")
    assert "astronaut_layers.psd" in "".join(browser.find_element(By.ID, "liwi-psd").text.split())
    time.sleep(0.5)  # let thumbnails finish painting
    shot = tmp_path / "space_screenshot.png"
    browser.save_screenshot(str(shot))
    with Image.open(shot) as image:
        assert image.width >= 1000
    if os.environ.get("LIWI_SAVE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    # Edit: hiding object 1 updates the edited picture and its layers.
    next(tab for tab in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if tab.text == "Edit").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#liwi-edited img"))
    before = browser.find_element(By.CSS_SELECTOR, "#liwi-edited img").get_attribute("src")
    browser.find_element(By.CSS_SELECTOR, "#liwi-visible input[type=checkbox]").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#liwi-edited img").get_attribute("src") != before
    )
    assert "1 hidden" in browser.find_element(By.ID, "liwi-edit-status").text


def test_browser_shows_readable_messages_for_corrupt_and_oversize_uploads(server, browser, photos):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open_page(browser, server)
    _upload(browser, photos["corrupt"])
    time.sleep(1)
    browser.find_element(By.ID, "liwi-decompose").click()
    WebDriverWait(browser, 60).until(lambda d: "not an image file" in _toasts(d))
    assert "corrupt.jpg: not an image file Pillow can read" in _toasts(browser)

    _open_page(browser, server)
    _upload(browser, photos["oversize"])
    WebDriverWait(browser, 60).until(lambda d: "maximum allowed size" in _toasts(d))
    assert "oversize.png" in _toasts(browser)


def test_browser_shows_the_queue_position_and_the_time_limit_message(browser, photos, tmp_path, monkeypatch):
    """One decomposition at a time, each stopped after 1 s of computing: a browser request behind two others sees
    its place in the queue, then the time-limit message (and the worker is free again after each stop)."""
    from gradio_client import Client, handle_file
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    big = tmp_path / "astronaut_1024.jpg"  # the (weight-free) tool chain computes for ~5 CPU s on this
    load_sample_image("astronaut").resize((1024, 1024), Image.Resampling.LANCZOS).save(big, quality=90)
    limited = space.SpaceConfig(
        concurrency=1, time_limit_s=1.0, max_side=1024, max_file_size="5mb", output_dir=tmp_path / "out"
    )
    # A fresh pool with one thread per worker: the limit's CPU budget (limit x threads) is then the same on any
    # machine, not larger on one with more cores.
    monkeypatch.setattr(space, "_POOLS", {})
    monkeypatch.setattr(worker_pool, "_usable_cores", lambda: 1)
    demo = space.build_demo(limited)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **space.launch_options(limited)
    )
    try:
        url = f"http://127.0.0.1:{port}"
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        _open_page(browser, url)
        _upload(browser, big)
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#liwi-photo img"))
        ahead = [client.submit(handle_file(str(big)), "tools", "auto", 20, 0, api_name="/decompose") for _ in range(2)]
        deadline = time.monotonic() + 120
        waiting = ("STARTING", "JOINING_QUEUE", "IN_QUEUE", "SENDING_DATA")
        while ahead[0].status().code.name in waiting and time.monotonic() < deadline:  # the first one has started
            time.sleep(0.1)
        browser.find_element(By.ID, "liwi-decompose").click()  # behind the second request, which waits
        body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
        WebDriverWait(browser, 120, poll_frequency=0.1).until(lambda d: re.search(r"queue: [1-9]\d*/\d+", body(d)))
        WebDriverWait(browser, 300).until(lambda d: "took longer than 1 s" in _toasts(d))
        assert "this Space's limit per request" in _toasts(browser)
        assert "stopped after 1 s of computing" in browser.find_element(By.ID, "liwi-limits").text
        for job in ahead:
            with pytest.raises(Exception, match="took longer than 1 s"):
                job.result(timeout=300)
    finally:
        demo.close()
        for pool in space._POOLS.values():
            pool.close()


def test_zip_export_is_a_plain_zip_of_pngs(config):
    path = space.export_layers(editing.EditSession.from_layered(_layered(1)), "ZIP of PNGs", config)
    with zipfile.ZipFile(path) as archive:
        pngs = [name for name in archive.namelist() if name.endswith(".png")]
        assert pngs
        with Image.open(io.BytesIO(archive.read(pngs[0]))) as image:
            image.verify()


def test_worker_pool_divides_the_cores_among_its_workers():
    expected = max(1, len(os.sched_getaffinity(0)) // 2)
    pool = worker_pool.WorkerPool(2)
    try:
        assert pool.threads == expected
        assert pool.run(os.getenv, ("OMP_NUM_THREADS",), time_limit_s=60) == str(expected)
        assert pool.run(worker_pool.worker_threads, (), time_limit_s=60) == expected
    finally:
        pool.close()
    assert worker_pool.worker_threads() is None  # the server itself is not limited
    with pytest.raises(ValueError, match="at least 1 thread"):
        worker_pool.WorkerPool(1, threads=0)


# ---------------------------------------------------------------------------------------------- click prompts
prompt_clicks = importlib.import_module("prompt_clicks")


def test_clicks_become_point_prompts_in_fractions_and_are_checked(photos, tmp_path):
    width, height = _size(photos["coffee"])
    clicks = prompt_clicks.add_click(None, str(photos["coffee"]), (width // 2, height // 4))
    clicks = prompt_clicks.add_click(clicks, str(photos["coffee"]), [0, 0], negative=True)
    assert clicks["points"] == [((width // 2 + 0.5) / width, (height // 4 + 0.5) / height)]
    assert prompt_clicks.prompt_options(clicks) == {
        "points": [clicks["points"][0]],
        "negative_points": [(0.5 / width, 0.5 / height)],
    }
    assert prompt_clicks.prompt_options({**clicks, "only_prompts": True})["only_prompts"] is True
    assert prompt_clicks.prompt_options(prompt_clicks.empty_prompts(True)) == {}
    assert "1 object chosen, 1 background point" in prompt_clicks.prompt_summary(clicks)
    assert "click on the photo" in prompt_clicks.prompt_summary(None)
    preview = prompt_clicks.prompt_preview(str(photos["coffee"]), clicks, tmp_path / "clicks.png")
    assert _size(preview) == (width, height)  # already under the preview's size
    assert (
        prompt_clicks.prompt_preview(str(photos["coffee"]), prompt_clicks.empty_prompts(), tmp_path / "x.png") is None
    )
    with pytest.raises(ValueError, match=rf"outside the {width}x{height} photo"):
        prompt_clicks.add_click(clicks, str(photos["coffee"]), (width, 3))
    with pytest.raises(ValueError, match="Upload a photo first"):
        prompt_clicks.add_click(None, None, (1, 1))
    full = prompt_clicks.empty_prompts()
    for k in range(prompt_clicks.MAX_PROMPT_POINTS):
        full = prompt_clicks.add_click(full, str(photos["coffee"]), (k, k))
    with pytest.raises(ValueError, match="At most 16 clicks"):
        prompt_clicks.add_click(full, str(photos["coffee"]), (1, 1))


def test_decompose_handler_takes_out_the_clicked_object(config, photos):
    width, height = _size(photos["coffee"])
    clicks = prompt_clicks.add_click(None, str(photos["coffee"]), (width // 2, height // 2))
    clicks["only_prompts"] = True
    gallery, _, report, _, session = space.decompose(
        str(photos["coffee"]), space.TOOLS, 0, 20, 0, config, prompts=clicks
    )
    assert session.num_objects == 1 and len(gallery) == 3
    alpha = session.foregrounds[0][:, :, 3]
    assert alpha[height // 2, width // 2] > 0  # the clicked pixel is on the object taken out
    assert "Your clicks: 1 object chosen (only these are taken out)." in report
    with pytest.raises(gr.Error, match="taken out by the tool chain only"):
        space.decompose(str(photos["coffee"]), space.TINY, 0, 2, 0, config, prompts=clicks)
    too_many = prompt_clicks.add_click(clicks, str(photos["coffee"]), (3, 3))
    with pytest.raises(gr.Error, match="2 prompted objects but the layer limit is 1"):
        space.decompose(str(photos["coffee"]), space.TOOLS, 1, 20, 0, config, prompts=too_many)


def test_browser_click_on_the_photo_takes_out_that_object(server, browser, photos, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open_page(browser, server)
    _upload(browser, photos["astronaut"])
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#liwi-photo img"))
    photo = browser.find_element(By.CSS_SELECTOR, "#liwi-photo img")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].naturalWidth > 0", photo))
    shown = photo.size
    target = (0.37, 0.22)  # the astronaut's face, as fractions of the photo
    offset = (round((target[0] - 0.5) * shown["width"]), round((target[1] - 0.5) * shown["height"]))
    ActionChains(browser).move_to_element_with_offset(photo, *offset).click().perform()
    info = "#liwi-prompt-info"
    WebDriverWait(browser, 30).until(lambda d: "1 object chosen" in d.find_element(By.CSS_SELECTOR, info).text)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#liwi-prompt-view img"))
    browser.find_element(By.CSS_SELECTOR, "#liwi-only-clicked input[type=checkbox]").click()
    time.sleep(0.5)
    browser.find_element(By.ID, "liwi-decompose").click()
    thumbnails = "#liwi-layers .thumbnail-item img"
    WebDriverWait(browser, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, thumbnails)) >= 3)
    captions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#liwi-layers .caption-label")]
    assert captions == ["background", "shadow 1", "object 1"], (captions, _toasts(browser))
    report = browser.find_element(By.ID, "liwi-report").text
    assert "Your clicks: 1 object chosen (only these are taken out)." in report
    if os.environ.get("LIWI_SAVE_SCREENSHOT") == "1":
        browser.execute_script("window.scrollTo(0, 0)")  # the Decompose button lies below the fold
        time.sleep(0.5)
        browser.save_screenshot(str(SCREENSHOT.with_name("space_click.png")))
    browser.find_element(By.ID, "liwi-clear-prompts").click()
    WebDriverWait(browser, 30).until(lambda d: "click on the photo" in d.find_element(By.CSS_SELECTOR, info).text)


def test_worker_processes_exit_when_the_server_is_killed(tmp_path):
    """A server killed outright (SIGKILL: no clean-up runs) leaves no worker computing on without it."""
    import subprocess

    script = (
        "import sys, threading, time\n"
        f"sys.path.insert(0, {str(SPACE_DIR)!r})\n"
        "import worker_pool\n"
        "pool = worker_pool.WorkerPool(1)\n"
        "print(*pool.pids(), flush=True)\n"
        "threading.Thread(target=pool.run, args=(time.sleep, (120,), 300), daemon=True).start()\n"
        "time.sleep(300)\n"
    )
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        (worker,) = map(int, server.stdout.readline().split())
        time.sleep(1.0)  # the call is running
        assert Path(f"/proc/{worker}").exists()
    finally:
        server.kill()
        server.wait()  # not communicate(): the worker holds the server's stdout open while it lives
        server.stdout.close()

    def running() -> bool:
        try:
            return "zombie" not in Path(f"/proc/{worker}/status").read_text()
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running()  # not the 120 s its call wanted


def test_the_space_looks_at_the_whole_photo_only_unless_told_and_checks_liwi_tiles_at_start(monkeypatch):
    import worker_pool

    monkeypatch.delenv("LIWI_TILES", raising=False)
    assert worker_pool._tool_chain_options("tools", None) == {"tiles": 0}
    assert worker_pool._tool_chain_options("weight-free", None) == {}
    monkeypatch.setenv("LIWI_TILES", "2")
    assert worker_pool._tool_chain_options("tools", None) == {"tiles": 2}
    assert worker_pool._tool_chain_options("fast", None) == {}  # the fast preset keeps its own (no crops)
    assert space.SpaceConfig.from_env({"LIWI_TILES": "2"}).concurrency == 2
    for bad in ("5", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match=r"LIWI_TILES must be a whole number from 0 to 4 \(0: whole photo only\)"):
            space.SpaceConfig.from_env({"LIWI_TILES": bad})


def test_the_report_says_how_the_objects_were_chosen():
    assert space._how_chosen(None, None) == " (auto)"
    assert space._how_chosen(2, None) == ""
    assert space._how_chosen(None, {"points": [(3, 4)], "only_prompts": True}) == " (your clicks)"
    assert space._how_chosen(None, {"points": [(3, 4)], "only_prompts": False}) == " (your clicks + auto)"
    assert space._how_chosen(None, {"points": [], "negative_points": [(1, 1)], "only_prompts": True}) == " (auto)"


# ---------------------------------------------------------------------------------------------- parts (depth)
PART_NAME = re.compile(r"^part \d+(\.\d+)+(: .+)?$")


def _split_layered() -> LayeredImage:
    """`_layered(2)` with object 1 split into parts (depth 3): a top part, and a bottom part in two halves."""
    from liwi_diffusers.layers import LayerPart

    layered = _layered(2)
    whole = layered.foregrounds[0]
    top, bottom = whole.copy(), whole.copy()
    top[20:], bottom[:20] = 0, 0
    left, right = bottom.copy(), bottom.copy()
    left[:, 14:], right[:, :14] = 0, 0
    layered.parts = {0: [LayerPart(top, "top"), LayerPart(None, "", [LayerPart(left, "left"), LayerPart(right, "")])]}
    return LayeredImage(layered.background, layered.foregrounds, layered.shadows, layered.labels, parts=layered.parts)


def test_depth_is_checked_with_a_one_line_message(config, photos, tmp_path):
    for value, expected in ((None, 1), ("", 1), (1, 1), ("2", 2), (3.0, 3)):
        assert space.parse_depth(value) == expected, value
    for value in (0, 4, -1, 2.5, "deep", True, [2]):
        with pytest.raises(gr.Error, match=re.escape("the depth must be a whole number from 1 (objects only) to 3")):
            space.parse_depth(value)
    quiet = space.SpaceConfig(models=config.models, output_dir=tmp_path / "out")
    with pytest.raises(gr.Error, match=r"Split objects into parts: .* got 7\.") as caught:
        space.decompose(str(photos["coffee"]), space.TOOLS, 0, 20, 0, quiet, depth=7)
    assert "\n" not in caught.value.message and caught.value.print_exception is False
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # refused before any work
    with pytest.raises(gr.Error, match="split into parts by the tool chain only") as caught:
        space.decompose(str(photos["coffee"]), space.TINY, 1, 2, 0, config, depth=2)
    assert "\n" not in caught.value.message
    assert [value for _, value in space.depth_choices()] == [1, 2, 3]


def test_decompose_handler_splits_objects_into_parts_in_the_worker_pool(config, photos):
    """Depth 3 with the weight-free tool chain (fast) in the Space's worker processes: the gallery, the report,
    the PSD and the edit session show every object's parts as a tree, and recompose to the photo."""
    wf = space.SpaceConfig(models=("weight-free",), concurrency=config.concurrency, output_dir=config.output_dir)
    gallery, _, report, psd, session = space.decompose(str(photos["chelsea"]), "weight-free", 0, 20, 0, wf, depth=3)
    names = [name for _, name in gallery]
    loaded = load_layered(psd)
    assert loaded.parts, report  # at least one object was split
    assert [name for name, _ in loaded.to_rgba_stack()] == names == loaded.layer_names()
    split = sorted(loaded.parts)
    for k in range(loaded.num_objects):
        assert (f"object {k + 1}" in names) == (k not in split)  # a split object shows its parts instead
    assert any(PART_NAME.match(name) for name in names) and all(
        LAYER_NAME.match(name) or PART_NAME.match(name) for name in names
    )
    assert "object" not in " ".join(name.split(":", 1)[-1] for name in names if ":" in name)  # placeholder dropped
    leaves = sum(len(part.leaves()) for tree in loaded.parts.values() for part in tree)
    assert f"**Parts** (depth 3): {len(split)} of {space.plural(loaded.num_objects, 'object')} split into " in report
    assert f"{space.plural(leaves, 'part')}." in report and f"({space.plural(len(names), 'layer')}," in report
    for name in names:
        if PART_NAME.match(name):
            assert name in report  # the tree names every leaf
    assert np.abs(loaded.compose() - _rgb(photos["chelsea"])).mean() < 2 / 255
    assert sorted(session.parts) == split
    assert editing.shown_layer_names(session) == names
    choices = {index: label for label, index in editing.object_choices(session)}
    assert all(choices[k].endswith(" parts)") for k in split)


def test_parts_follow_their_object_through_edits_and_exports(config):
    """A split object is edited as one: moved and scaled, its parts still compose to it exactly, keep their names,
    and every export format writes its group of parts; hiding it hides its parts."""
    import psd_tools

    layered = _split_layered()
    session = editing.EditSession.from_layered(layered)
    assert editing.object_choices(session) == [("object 1: box (3 parts)", 0), ("object 2: box", 1)]
    names = layered.layer_names()
    assert names == [
        "background",
        "shadow 1: box",
        "part 1.1: top",
        "part 1.2.1: left",
        "part 1.2.2",
        "shadow 2: box",
        "object 2: box",
    ]
    assert editing.apply_edits(session).layer_names() == names == editing.shown_layer_names(session)
    np.testing.assert_array_equal(editing.apply_edits(session).compose(), layered.quantized().compose())

    moved = editing.apply_edits(editing.update_edit(session, 0, dx=5.3, dy=-2.7, scale=1.37))
    assert moved.layer_names() == names
    whole = editing.apply_edits(editing.update_edit(editing.EditSession.from_layered(_layered(2)), 0, dx=5.3, dy=-2.7))
    np.testing.assert_allclose(moved.object_layer(0), moved.foregrounds[0], atol=1e-6)  # no seams between parts
    leaves = [leaf.rgba[:, :, 3] for part in moved.parts[0] for _, leaf in part.leaves()]
    assert all(leaf.sum() > 0 for leaf in leaves) and max(np.count_nonzero(np.stack(leaves), axis=0).ravel()) == 1
    assert moved.foregrounds[0][:, :, 3].sum() > 1.3 * whole.foregrounds[0][:, :, 3].sum()  # scaled up with it

    edited = editing.update_edit(session, 0, dx=4.0, dy=2.0)
    expected = editing.apply_edits(edited).quantized().compose()
    for label, suffix in (("PSD", ".psd"), ("ORA", ".ora"), ("ZIP of PNGs", ".zip")):
        path = Path(space.export_layers(edited, label, config))
        assert path.suffix == suffix
        loaded = load_layered(path)
        assert loaded.layer_names() == names, label
        assert [len(part.leaves()) for part in loaded.parts[0]] == [1, 2] and 1 not in loaded.parts
        np.testing.assert_allclose(loaded.compose(), expected, atol=1.5 / 255)
        if suffix == ".psd":
            psd = psd_tools.PSDImage.open(path)
            groups = [layer.name for layer in psd.descendants() if layer.is_group()]
            assert len(groups) >= 4 and any(name.endswith(" parts") for name in groups), groups

    hidden = editing.apply_edits(editing.update_edit(session, 0, visible=False))
    assert hidden.layer_names() == ["background", "shadow 1: box", "object 1: box"] and not hidden.parts
    assert editing.shown_layer_names(editing.update_edit(session, 0, visible=False)) == names[:1] + names[5:]


def test_parts_report_says_what_split_and_why_the_rest_stayed_whole():
    layered = _split_layered()
    layered.metadata["parts"] = {
        "1": [{"parts_found": 2, "stop_reason": ""}],
        "2": [{"parts_found": 0, "stop_reason": "no part found inside the object"}],
    }
    assert space.parts_report(layered, 1) == ""
    assert space.parts_report(layered, 3).splitlines() == [
        "**Parts** (depth 3): 1 of 2 objects split into 3 parts.",
        "- object 1: box → part 1.1: top, part 1.2 (part 1.2.1: left, part 1.2.2)",
        "- object 2: box stays whole (no part found inside the object)",
    ]


def test_worker_pool_limits_computing_time_not_waiting_time():
    """A call is stopped when it has computed for its limit; one that waits (a loaded machine, a sleep) goes on
    until the wall-clock limit, WALL_LIMIT_FACTOR times longer by default."""
    assert worker_pool._cpu_seconds(os.getpid()) == pytest.approx(time.process_time(), abs=0.1)
    assert worker_pool._cpu_seconds(2**22 + 12345) is None  # no such process
    pool = worker_pool.WorkerPool(1)
    try:
        assert pool.run(time.sleep, (1.5,), time_limit_s=0.5) is None  # sleeping computes nothing
        start = time.monotonic()
        computed = r"stopped after \d+\.\d s of computing in .*limit 0.5 s"
        with pytest.raises(worker_pool.TimeLimitExceeded, match=computed):
            pool.run(sum, (range(10**12),), time_limit_s=0.5, wall_limit_s=120)  # busy: stopped by computing time
        assert time.monotonic() - start < 60
        with pytest.raises(worker_pool.TimeLimitExceeded, match=r"limit 0.5 s of computing, 2 s in all"):
            pool.run(time.sleep, (60,), time_limit_s=0.5, wall_limit_s=2)
        with pytest.raises(ValueError, match="wall_limit_s must be at least time_limit_s"):
            pool.run(time.sleep, (0,), time_limit_s=1, wall_limit_s=0.5)
        assert pool.run(math.hypot, (3, 4), time_limit_s=60) == 5.0
    finally:
        pool.close()
    assert worker_pool.WALL_LIMIT_FACTOR >= 5  # a slowed request is not stopped at the first doubling of its time


def test_time_limit_default_counts_computing_and_can_be_overridden(config):
    default = space.SpaceConfig.from_env({})
    assert default.time_limit_s == 120.0
    assert "seconds of computing" in space.SpaceConfig.__doc__ and "LIWI_TIME_LIMIT" in space.SpaceConfig.__doc__
    assert space.SpaceConfig.from_env({"LIWI_TIME_LIMIT": "240"}).time_limit_s == 240.0
    demo = space.build_demo(space.SpaceConfig(time_limit_s=90, output_dir=config.output_dir))
    texts = [block.value for block in demo.blocks.values() if getattr(block, "elem_id", None) == "liwi-limits"]
    assert texts and "stopped after 90 s of computing" in texts[0]
    depth = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "liwi-depth")
    assert depth.value == 1 and depth.label == "Split objects into parts: depth 1-3"


def test_client_sends_the_depth_as_an_optional_last_argument(client, photos):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/decompose"]["parameters"]
    assert len(parameters) == 6 and parameters[-1]["parameter_has_default"] and parameters[-1]["parameter_default"] == 1
    with pytest.raises(AppError, match=re.escape("the depth must be a whole number from 1 (objects only) to 3")):
        client.predict(handle_file(str(photos["coffee"])), "tools", 1, 20, 0, 4, api_name="/decompose")


def test_browser_splits_objects_into_parts_at_depth_2(server, browser, tmp_path):
    """The depth control in the page: at depth 2 the gallery shows the parts (``part 1.2``) and the report the tree.
    Set LIWI_SAVE_SCREENSHOT=1 to refresh docs/images/space_depth.png."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "coffee.jpg"  # at the test Space's 320 px limit: no downscaling notice over the page
    image = load_sample_image("coffee")
    image.resize((320, round(image.height * 320 / image.width)), Image.Resampling.LANCZOS).save(photo, quality=92)
    _open_page(browser, server)
    _upload(browser, photo)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#liwi-photo img"))
    choice = next(e for e in browser.find_elements(By.CSS_SELECTOR, "#liwi-depth label") if e.text.startswith("2:"))
    choice.click()
    time.sleep(0.5)
    browser.find_element(By.ID, "liwi-decompose").click()
    WebDriverWait(browser, 300).until(lambda d: "Parts (depth 2)" in d.find_element(By.ID, "liwi-report").text)
    thumbnails = "#liwi-layers .thumbnail-item img"
    WebDriverWait(browser, 30).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, thumbnails)
            and all(
                d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
                for image in d.find_elements(By.CSS_SELECTOR, thumbnails)
            )
        )
    )
    captions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#liwi-layers .caption-label")]
    report = browser.find_element(By.ID, "liwi-report").text
    parts = [caption for caption in captions if PART_NAME.match(caption)]
    assert parts, (captions, report, _toasts(browser))
    assert all(caption in report for caption in parts)  # the report's tree names every part in the gallery
    assert "_layers.psd" in "".join(browser.find_element(By.ID, "liwi-psd").text.split())
    if os.environ.get("LIWI_SAVE_SCREENSHOT") == "1":
        browser.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)
        browser.save_screenshot(str(SCREENSHOT.with_name("space_depth.png")))


def _render_screenshots() -> None:
    """The docs' screenshots of a click and of depth 2 (docs/images/space_click.png, space_depth.png), as the Space
    runs: with this machine's model cache (the learned segmenter when downloaded), not the tests' hermetic one
    (conftest.py gives pytest runs an empty cache, so the tool chain there is weight-free)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["LIWI_SAVE_SCREENSHOT"] = "1"
    folder = Path(tempfile.mkdtemp(prefix="liwi_screenshots_"))
    photo = load_sample_image("astronaut").resize((320, 320), Image.Resampling.LANCZOS)
    photo.save(folder / "astronaut.jpg", quality=92)
    config = space.SpaceConfig(
        models=(space.TOOLS,), max_side=320, max_file_size="300kb", max_steps=30, output_dir=folder / "out"
    )
    demo = space.build_demo(config)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **space.launch_options(config)
    )
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1250")
    options.add_argument("--force-device-scale-factor=1")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        url = f"http://127.0.0.1:{port}"
        photos = {"astronaut": folder / "astronaut.jpg"}
        test_browser_click_on_the_photo_takes_out_that_object(url, driver, photos, folder)
        test_browser_splits_objects_into_parts_at_depth_2(url, driver, folder)
    finally:
        driver.quit()
        demo.close()
        for pool in space._POOLS.values():
            pool.close()
    print("wrote", SCREENSHOT.with_name("space_click.png"), SCREENSHOT.with_name("space_depth.png"))


if __name__ == "__main__":  # python tests/test_space.py: refresh the click and depth screenshots (see above)
    _render_screenshots()
