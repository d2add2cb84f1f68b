"""`liwi-build --engine ray` on a local Ray with 2 CPUs: the same shards as the local engine, byte for
byte; model stages on actor pools; a killed worker; bad photos; Ray missing; an unreachable cluster."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
from PIL import Image

from liwi_dataset_builder import ray_engine
from liwi_dataset_builder.build import BuildConfig, _scan, _single_threaded_children, build_dataset
from liwi_dataset_builder.cli import main
from liwi_dataset_builder.sample_data import export_sample_photos
from liwi_dataset_builder.toolset import ToolSpec

# Tiny builds: 11 bundled photos, 3 shards (2 train, 1 test) at 96 px.
LAYOUT = {"num_samples": 10, "resolution": 96, "chunk_size": 4, "test_fraction": 0.2, "seed": 5}


@pytest.fixture(scope="module")
def local_ray():
    with _single_threaded_children():  # as the engine's own local Ray: one BLAS/OpenMP thread per worker
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    export_sample_photos(folder)
    return folder


def config(photos: Path | str, out: Path, **kwargs) -> BuildConfig:
    return BuildConfig(sources=[str(photos)], output=str(out), name="tiny", progress=False, **{**LAYOUT, **kwargs})


@pytest.fixture(scope="module")
def local_build(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    assert build_dataset(config(photos, out, workers=1)).complete
    return out


def assert_same_bytes(first: Path, second: Path) -> None:
    """Same shard names, the same bytes in each, and the same card (but for the output path)."""
    names = sorted(p.name for p in (first / "data").glob("*.parquet"))
    assert names == sorted(p.name for p in (second / "data").glob("*.parquet"))
    assert len(names) == 3
    for name in names:
        assert (first / "data" / name).read_bytes() == (second / "data" / name).read_bytes(), name
    cards = [(out / "README.md").read_text().replace(str(out), "OUT") for out in (first, second)]
    assert cards[0] == cards[1]
    reports = [json.loads((out / "build_report.json").read_text()) for out in (first, second)]
    assert reports[0]["statistics"] == reports[1]["statistics"]
    assert reports[0]["sources"] == reports[1]["sources"]


def test_a_ray_started_here_lets_the_driver_curate_meanwhile_and_rows_stay_identical(
    local_build: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs before the tests that share one Ray (local_ray): here the engine starts its own, in the
    # background, and the driver curates photos until Ray's curate stage starts: two here, whatever
    # Ray's speed (it claims no third, and the stage waits for its second).
    assert not ray.is_initialized()
    helper = ray_engine._DriverCuration
    real_claim, real_close = helper._claim, helper.close
    curated: list[set[str]] = []

    def claim_two(self):
        return real_claim(self) if len(self.claimed) < 2 else None

    def close_after_two(self):
        while len(self.claimed) < 2 and self.is_alive():
            time.sleep(0.01)
        curated.append(real_close(self))
        return curated[-1]

    monkeypatch.setattr(helper, "_claim", claim_two)
    monkeypatch.setattr(helper, "close", close_after_two)
    out = tmp_path / "ray" / "out"  # same folder name as the local build: same card
    result = build_dataset(config(photos, out, engine="ray", workers=2))
    assert result.complete and result.chunks_written == 3
    assert len(curated[0]) == 2  # the last two photos (by id), by the driver; Ray curated the others
    assets = sorted(p.stem for p in (out / ".build" / "assets").glob("*.npz"))
    assert len(assets) == 11 and set(assets[-2:]) == curated[0]
    assert_same_bytes(local_build, out)
    assert not list(out.rglob(".*.tmp-*"))
    assert not ray.is_initialized()  # the engine's Ray is shut down


def test_rows_identical_to_the_local_engine_with_model_stages_on_actor_pools(
    local_ray: None, local_build: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Weight-free tools run as tasks; with model tools the curate stage runs on an actor pool.
    assert not ray_engine.curation_uses_models(ToolSpec())
    assert not ray_engine.curation_uses_models(ToolSpec(proposer="segmenter:isnet"))  # ONNX: tasks
    assert ray_engine.curation_uses_models(ToolSpec(proposer="image-segmentation:some/model"))
    assert ray_engine.curation_uses_models(ToolSpec(planner="vlm:some/model"))
    assert ray_engine.verifier_uses_models(ToolSpec(verifier="vlm:some/model"))
    assert not ray_engine.verifier_uses_models(ToolSpec())
    stages = []
    real_stage = ray_engine._stage

    def stage(rows, function, token, state, actors, gpus):
        stages.append((function.__name__, actors))
        return real_stage(rows, function, token, state, actors, gpus)

    monkeypatch.setattr(ray_engine, "_stage", stage)
    monkeypatch.setattr(ray_engine, "curation_uses_models", lambda spec: True)  # as a model proposer would
    out = tmp_path / "ray" / "out"  # same folder name as the local build: same card
    result = build_dataset(config(photos, out, engine="ray"))
    assert result.complete and result.chunks_written == 3
    assert stages == [("_curate_row", 2), ("_compose_row", 0)]  # 2 actors (2 CPUs), then tasks
    assert_same_bytes(local_build, out)
    assert not list(out.rglob(".*.tmp-*"))


def _kill_a_busy_worker(stage: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first worker of this test's Ray seen running ``stage`` (its process title names it)."""
    while not stop.is_set():
        for process in psutil.Process().children(recursive=True):  # the local Ray's raylet and its workers
            try:
                title = " ".join(process.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::") and f"Map({stage})" in title:
                process.send_signal(signal.SIGKILL)
                killed.append(process.pid)
                return
        time.sleep(0.02)


def test_a_killed_worker_is_retried_and_a_rerun_resumes(
    local_ray: None, local_build: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ray" / "out"  # same folder name as the local build: same card
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_busy_worker, args=("_curate_row", killed, stop), daemon=True)
    killer.start()
    try:
        result = build_dataset(config(photos, out, engine="ray"))
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1 and not psutil.pid_exists(killed[0])  # a worker died mid-curation ...
    assert result.complete  # ... Ray ran its task again
    assert_same_bytes(local_build, out)
    assert not list(out.rglob(".*.tmp-*"))  # the dead worker's temporaries are gone
    # A build stopped half-way (shards and an asset missing) is finished by rerunning it.
    for path in [*sorted((out / "data").glob("train-*.parquet"))[:1], (out / "README.md")]:
        path.unlink()
    next(iter(sorted((out / ".build" / "assets").glob("*.npz")))).unlink()
    result = build_dataset(config(photos, out, engine="ray"))
    assert result.complete and result.chunks_written == 1
    assert_same_bytes(local_build, out)


def test_bad_source_photos_are_skipped_not_a_crash(local_ray: None, photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("coffee", "flower", "brick", "chelsea"):
        shutil.copy(photos / f"{name}.png", folder / f"{name}.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    Image.new("RGB", (20, 20), (200, 10, 10)).save(folder / "tiny.png")
    out = tmp_path / "out"
    build = config(folder, out, engine="ray", num_samples=3, chunk_size=3, test_fraction=0.0)
    # A photo that scanned fine but is gone when a Ray worker curates it: a note, not a crash.
    (out / ".build").mkdir(parents=True)
    _scan(build, out / ".build", None)  # the scan, cached as a killed first run would leave it
    (folder / "chelsea.png").unlink()
    result = build_dataset(build)
    assert result.complete and result.rows == {"train": 3}
    report = json.loads((out / "build_report.json").read_text())
    reasons = {Path(item["source"]).name: item["reason"] for item in report["sources"]["skipped"]}
    assert set(reasons) == {"corrupt.jpg", "empty.png", "tiny.png"}
    assert "empty" in reasons["empty.png"] and "need at least" in reasons["tiny.png"]
    notes = {Path(entry["source"]).name: entry["notes"] for entry in report["curation"]}
    assert any(note.startswith("curation failed") for note in notes["chelsea.png"])


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and the error line (exactly one, no traceback; notes may come before it)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("liwi-build: error:")]
    assert len(errors) == 1, err
    return code, errors[0]


def test_engine_ray_without_ray_names_the_extra(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    out = tmp_path / "out"
    code, err = _run_cli([str(photos), "-o", str(out), "--engine", "ray", "-q"], capsys)
    assert code == 2
    assert err == 'liwi-build: error: --engine ray needs Ray: pip install "liwi-diffusers[ray]"'
    assert not out.exists()  # nothing written


def test_unreachable_ray_address_fails_fast(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    start = time.monotonic()
    code, err = _run_cli([str(photos), "-o", str(out), "--engine", "ray", "-q"], capsys)
    assert code == 2 and time.monotonic() - start < 10
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in err and "--ray-address / RAY_ADDRESS" in err
    assert not out.exists()
    monkeypatch.delenv("RAY_ADDRESS")
    code, err = _run_cli([str(photos), "-o", str(out), "--engine", "ray", "--ray-address", "host:notaport"], capsys)
    assert code == 2 and "bad Ray address 'host:notaport'" in err
    code, err = _run_cli([str(photos), "-o", str(out), "--ray-address", "auto"], capsys)
    assert code == 2 and err == "liwi-build: error: --ray-address needs --engine ray"
    assert not out.exists()
