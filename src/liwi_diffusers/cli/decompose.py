"""`liwi decompose`: photos in, layered files (PSD, OpenRaster, zip of PNGs) out."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..checkpoints import SHIPPED_CHECKPOINTS
from ..export import FORMATS
from ..image_io import DEFAULT_MAX_PIXELS, ImageInputWarning, ImageLoadError, load_image
from ..layers import LayeredImage
from ..sample_images import SAMPLE_IMAGES, load_sample_image
from . import CLIError

METHODS = ("auto", "tools", "fast", "weight-free", "pipeline")
MAX_LAYERS = 8
MAX_DEPTH = 3  # = liwi_diffusers.tools.recursive.MAX_DEPTH (not imported here: the CLI starts fast)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif"}
DEFAULT_METHOD_NOTE = (
    "Default method: 'tools', the tool-chain decomposer: the learned ISNet segmenter (download it once with "
    "`liwi models download isnet`; without it the weight-free saliency + GrabCut tools are used, with a note), "
    "objects peeled one by one, alpha matting in the uncertain band, cast shadows measured against the "
    "shadow-free surroundings, inpainted background. 'fast' is the same chain with fewer, smaller segmenter "
    "passes (no crops, one round, the photo at 640 px; faster, and it finds fewer objects: see the README). "
    "'weight-free' never uses learned weights. "
    "Give --model (a pipeline folder, Hub id or shipped name such as liwi-small) to use "
    "LiWiDecompositionPipeline instead; the shipped checkpoint does not beat the tool chain (see the README)."
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "decompose",
        help="take photos apart into background, shadow and object layers",
        description=(
            "Decompose each IMAGE into an opaque background and, per object (back to front), a shadow "
            "layer and an RGBA object layer, written as OUT_DIR/<stem>.<format>. " + DEFAULT_METHOD_NOTE
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="photo files (JPEG, PNG, WebP, TIFF, ...) or folders of them (not recursive)",
    )
    parser.add_argument(
        "--example",
        action="append",
        choices=sorted(SAMPLE_IMAGES),
        default=[],
        metavar="NAME",
        help=f"also decompose a photo bundled with installed packages ({', '.join(SAMPLE_IMAGES)}); repeatable",
    )
    parser.add_argument(
        "-o",
        "--output-dir",
        required=True,
        type=Path,
        metavar="OUT_DIR",
        help="folder for the layered files (created if missing)",
    )
    parser.add_argument(
        "-f",
        "--format",
        choices=FORMATS,
        default="psd",
        help="psd: Photoshop/GIMP/Krita (a group per object); ora: OpenRaster (GIMP, Krita, MyPaint); "
        "zip: PNG per layer + manifest.json; pptx: PowerPoint/Impress (a picture per layer)",
    )
    parser.add_argument(
        "-n",
        "--layers",
        default="auto",
        metavar="N",
        help=f"object layers at most, 1..{MAX_LAYERS}, or 'auto' (= 0, the default): as many as are found "
        f"(tools: until nothing object-like is left, up to {MAX_LAYERS}; pipeline: non-empty layers)",
    )
    parser.add_argument(
        "--depth",
        default="1",
        metavar="K",
        help=f"levels of layers, 1..{MAX_DEPTH}: 1 = objects (the default); 2 = every object layer is decomposed "
        "again into its parts (a group per object holding its parts); 3 = the parts too",
    )
    parser.add_argument(
        "--tiles",
        type=int,
        choices=range(5),
        default=None,
        metavar="N",
        help="tools with the learned segmenter: also segment the crops of an N x N grid in the first round, to "
        "find objects that do not stand out in the whole photo (default: 0 when the object detector is in use, "
        "whose boxes find the same objects; 2 without it: four more passes; 0 = the whole photo only, faster)",
    )
    parser.add_argument(
        "--method", choices=METHODS, default="auto", help="auto: 'pipeline' when --model is given, else 'tools'"
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_ID",
        help="LiWiDecompositionPipeline folder, Hub id, or a checkpoint shipped with the package "
        f"({', '.join(SHIPPED_CHECKPOINTS)}) (method 'pipeline')",
    )
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (method 'pipeline')")
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="working resolution of the pipeline's transformer (method 'pipeline'; default: the checkpoint's own)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (results are deterministic for a seed)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ... (method 'pipeline')")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="model precision (method 'pipeline')",
    )
    parser.add_argument(
        "--refiner",
        default=None,
        metavar="NAME_OR_PATH",
        help="clean each object's matte after the segmenter with a matte refiner: 'restoration' (shipped, trained "
        "with degradation-restoration), 'clean-only' (its ablation control) or an AlphaDecoder folder (tools only)",
    )
    parser.add_argument(
        "--object-detector",
        default=None,
        metavar="NAME",
        help="closed-set object detector whose boxes become objects before peeling (tools only): 'auto' (default: "
        "nanodet when it is downloaded with `liwi models download nanodet` and the learned segmenter is in use), "
        "'none', or a model name",
    )
    parser.add_argument(
        "--shadow-head",
        default=None,
        metavar="NAME_OR_PATH",
        help="estimate each object's cast shadow with a trained shadow head instead of the classical darkening "
        "estimate: 'shadow-guided' (shipped, trained with shadow-guided learning) or a ShadowHead folder (tools only)",
    )
    parser.add_argument(
        "--shadow-head-mode",
        choices=("alone", "refine"),
        default="alone",
        help="with --shadow-head: the head alone, or refining the classical estimate (default: alone)",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="an object to take out, in words (e.g. 'red car'); repeatable. A zero-shot detector (--detector) finds "
        "its best box, which becomes a box prompt; the layer is named after the text (method tools or weight-free)",
    )
    parser.add_argument(
        "--detector",
        default=None,
        metavar="NAME_OR_PATH",
        help="zero-shot object detector for --prompt (OWLv2, OWL-ViT or Grounding DINO): a folder saved with "
        "save_pretrained, or a Hub id already in the Hugging Face cache (e.g. google/owlv2-base-patch16-ensemble)",
    )
    parser.add_argument(
        "--prompt-threshold",
        type=float,
        default=0.1,
        metavar="SCORE",
        help="detection score (0..1) a --prompt's box needs; a prompt with nothing above it gives no layer (a note)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse inputs with more pixels than this (decompression-bomb guard)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-image lines")
    _add_prompt_arguments(parser)
    parser.set_defaults(run=run)


@dataclass
class _Input:
    name: str  # what messages call it
    stem: str  # output file stem
    open: Callable[[], Image.Image]


def run(args: argparse.Namespace) -> int:
    inputs = _collect_inputs(args)
    method = args.method if args.method != "auto" else ("pipeline" if args.model else "tools")
    if method == "pipeline" and not args.model:
        raise CLIError("--method pipeline needs --model PATH_OR_ID (a LiWiDecompositionPipeline folder or Hub id)")
    if args.refiner is not None and method == "pipeline":
        raise CLIError("--refiner works with the tool chain (--method tools or weight-free), not with --model")
    if args.object_detector is not None and method == "pipeline":
        raise CLIError("--object-detector works with the tool chain (--method tools), not with --model")
    if args.shadow_head is not None and method == "pipeline":
        raise CLIError("--shadow-head works with the tool chain (--method tools or weight-free), not with --model")
    layers = _layer_count(args.layers)
    _check_box_point_prompts(args, inputs, method, layers)
    _check_text_prompts(args, method)
    args.depth = _depth(args.depth)
    if args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}")
    if args.max_pixels < 1:
        raise CLIError(f"--max-pixels must be positive, got {args.max_pixels}")

    from ..export import LayeredFileError, check_writable

    targets = [args.output_dir / f"{item.stem}.{args.format}" for item in inputs]
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise CLIError(f"{args.output_dir} is a file, not a folder: give -o a folder for the layered files")
    created = not args.output_dir.exists()
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for target in targets:
            check_writable(target)
    except (OSError, LayeredFileError) as error:
        raise CLIError(f"cannot write to {args.output_dir}: {error}") from None
    try:
        return _decompose_all(args, inputs, targets, method, layers)
    finally:  # a run that wrote nothing leaves no empty folder behind
        if created and args.output_dir.is_dir() and not any(args.output_dir.iterdir()):
            args.output_dir.rmdir()


def _decompose_all(
    args: argparse.Namespace, inputs: list[_Input], targets: list[Path], method: str, layers: int | None
) -> int:
    from ..export import save_layered

    if not args.overwrite:
        existing = [str(t) for t in targets if t.exists()]
        if existing:
            raise CLIError(
                f"{existing[0]} exists; pass --overwrite to replace it"
                + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
            )

    decompose = _load_method(method, args, layers)
    failures = 0
    progress = _progress(len(inputs), disable=args.quiet)
    for item, target in zip(inputs, targets):
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = item.open()
                layered = decompose(image)
                save_layered(layered, target, format=args.format)  # inside: its notes (e.g. PPTX scaling) too
            for warning in caught:
                if issubclass(warning.category, ImageInputWarning):  # already names the file
                    _say(f"liwi: note: {warning.message}", args.quiet, progress)
                elif "liwi_diffusers" in warning.filename:  # e.g. fewer objects found than asked for
                    _say(f"liwi: note: {item.name}: {warning.message}", args.quiet, progress)
                else:
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        except ImageLoadError as error:
            failures += 1
            _say(f"liwi: error: {error}", False, progress)
        else:
            report = layered.check(image)
            count = layered.num_objects
            why = layered.metadata.get("stop_reason")
            _say(
                f"{item.name} -> {target} ({count} object{'' if count == 1 else 's'}"
                + (f", {why}" if why else "")
                + _parts_summary(layered)
                + f"; recomposition error mean {report.mean_abs_error:.4f} max {report.max_abs_error:.4f}, "
                f"{time.perf_counter() - start:.1f} s)",
                args.quiet,
                progress,
                stream=sys.stdout,
            )
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    if failures:
        if len(inputs) > 1:
            print(f"liwi: {failures} of {len(inputs)} images failed", file=sys.stderr)
        return 1
    return 0


def _collect_inputs(args: argparse.Namespace) -> list[_Input]:
    inputs: list[_Input] = []
    for raw in args.images:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise CLIError(f"{path}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            inputs += [_file_input(p, args.max_pixels) for p in files]
        else:
            inputs.append(_file_input(path, args.max_pixels))
    for name in args.example:
        inputs.append(_Input(f"example:{name}", name, lambda name=name: load_sample_image(name)))
    if not inputs:
        raise CLIError("no input: give IMAGE paths or --example NAME (e.g. liwi decompose --example astronaut -o out)")
    stems: dict[str, str] = {}
    for item in inputs:
        if item.stem in stems:
            raise CLIError(
                f"{stems[item.stem]} and {item.name} would both be written as {item.stem}.{args.format}; "
                "decompose them into different --output-dir folders"
            )
        stems[item.stem] = item.name
    return inputs


def _file_input(path: Path, max_pixels: int) -> _Input:
    return _Input(str(path), path.stem, lambda: load_image(path, max_pixels=max_pixels))


def _layer_count(text: str) -> int | None:
    """``--layers`` value: 'auto' or 0 (automatic: None) or 1..MAX_LAYERS."""
    if str(text).strip().lower() in ("auto", "0"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise CLIError(f"--layers must be 'auto' or a number between 1 and {MAX_LAYERS}, got {text!r}") from None
    if not 1 <= value <= MAX_LAYERS:
        raise CLIError(f"--layers must be 'auto' (or 0) or between 1 and {MAX_LAYERS}, got {value}")
    return value


def _load_method(method: str, args: argparse.Namespace, layers: int | None) -> Callable[[Image.Image], LayeredImage]:
    from ..loading import DecomposerLoadError, load_decomposer

    if method == "pipeline":
        name, options = args.model, {"resolution": args.resolution, "steps": args.steps, "seed": args.seed}
    else:
        name, options = method, {"max_objects": MAX_LAYERS}
        if args.refiner is not None:
            options["refiner"] = args.refiner
        if args.tiles is not None:
            options["tiles"] = args.tiles
        if args.object_detector is not None:
            options["detector"] = args.object_detector
    from ..model_zoo import ModelError
    from ..tools.learned_shadows import LearnedShadowExtractor, ShadowHeadError
    from ..tools.refiner import RefinerError

    try:
        if args.shadow_head is not None and method != "pipeline":
            options["shadow_extractor"] = LearnedShadowExtractor.from_pretrained(
                args.shadow_head, mode=args.shadow_head_mode
            )
        decomposer = load_decomposer(name, device=args.device, dtype=args.dtype, **options)
        if args.object_detector not in (None, "auto", "none"):
            _ = decomposer.detector  # a named detector that is not downloaded: say so before any photo
    except ModelError as error:
        raise CLIError(f"--object-detector: {error}") from None
    except ShadowHeadError as error:
        raise CLIError(f"--shadow-head: {error}") from None
    except RefinerError as error:
        raise CLIError(f"--refiner: {error}") from None
    except DecomposerLoadError as error:
        message = str(error)
        if message.startswith(("resolution ", "steps ")):  # the loader's option is this command's --option
            message = f"--{message}"
        raise CLIError(message) from None
    prompted = _with_text_prompts(decomposer, args)
    chosen = _box_point_prompts(args)
    return _with_depth(lambda image: prompted(image, num_layers=layers, **chosen), decomposer, args.depth)


def _check_text_prompts(args: argparse.Namespace, method: str) -> None:
    """``--prompt`` / ``--detector`` / ``--prompt-threshold``, checked before anything is loaded or written."""
    if not args.prompt:
        if args.detector is not None:
            raise CLIError("--detector is used by --prompt TEXT only; add --prompt 'what to take out'")
        return
    from ..tools.detector import DETECTOR_HELP, DetectorError, check_prompts

    try:
        args.prompt = check_prompts(args.prompt)
    except DetectorError as error:
        raise CLIError(f"--prompt: {error}") from None
    if method == "pipeline":
        raise CLIError("--prompt works with the tool chain (--method tools or weight-free), not with --model")
    if args.detector is None:
        raise CLIError(f"--prompt needs a detector: {DETECTOR_HELP}")
    if not 0.0 <= args.prompt_threshold <= 1.0:
        raise CLIError(f"--prompt-threshold must lie in [0, 1], got {args.prompt_threshold}")


def _with_text_prompts(decomposer: Any, args: argparse.Namespace) -> Any:
    """``decomposer``, or with ``--prompt``: one that detects each prompt first (`TextPrompted`)."""
    if not args.prompt:
        return decomposer
    from ..tools.detector import DetectorError, TextPromptDetector, TextPrompted

    try:
        detector = TextPromptDetector.from_pretrained(args.detector, device=args.device)
        detector.validate_prompts(args.prompt)
    except DetectorError as error:
        raise CLIError(f"--detector: {error}") from None
    prompted = TextPrompted(decomposer, detector, threshold=args.prompt_threshold)

    def decompose(image: Any, **options: Any) -> LayeredImage:
        try:
            return prompted(image, prompts=args.prompt, **options)
        except DetectorError as error:
            raise CLIError(str(error)) from None

    return decompose


def _depth(text: str) -> int:
    """``--depth`` value: 1 (objects only) to MAX_DEPTH."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise CLIError(f"--depth must be a number between 1 and {MAX_DEPTH}, got {text!r}") from None
    if not 1 <= value <= MAX_DEPTH:
        raise CLIError(
            f"--depth must be between 1 (objects, the default) and {MAX_DEPTH} (parts of parts), got {value}"
        )
    return value


def _parts_summary(layered: LayeredImage) -> str:
    """``", 2 of 3 objects split into 5 parts"`` for the result line (--depth above 1), else ""."""
    if "parts" not in layered.metadata:
        return ""
    if not layered.parts:
        reasons = sorted({note["stop_reason"] for notes in layered.metadata["parts"].values() for note in notes})
        return ", no object split into parts" + (f" ({'; '.join(reasons)})" if len(reasons) == 1 else "")
    count = sum(len(part.leaves()) for tree in layered.parts.values() for part in tree)
    objects = f"{layered.num_objects} object{'' if layered.num_objects == 1 else 's'}"
    return f", {len(layered.parts)} of {objects} split into {count} parts"


def _with_depth(
    decompose: Callable[[Image.Image], LayeredImage], decomposer: Any, depth: int
) -> Callable[[Image.Image], LayeredImage]:
    """``decompose``, then every object layer split into parts ``depth - 1`` times with ``decomposer`` (--depth)."""
    if depth == 1:
        return decompose
    from ..tools.recursive import decompose_to_depth

    return lambda image: decompose_to_depth(decompose(image), depth, decomposer)


def _progress(total: int, disable: bool) -> Any:
    if disable or total < 2:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="image", desc="decompose", file=sys.stderr)


def _say(message: str, quiet: bool, progress: Any, stream: Any = None) -> None:
    """Print a line without breaking the progress bar; results go to stdout, notes and errors to stderr."""
    if quiet:
        return
    stream = stream or sys.stderr
    if progress is not None:
        progress.write(message, file=stream)
    else:
        print(message, file=stream)


# ---------------------------------------------------------------------------------------------- box and point prompts
def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    coordinates = (
        "pixels of the photo, or fractions of its width and height when every value lies in [0, 1] and one is "
        "written with a decimal point"
    )
    parser.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="X0,Y0,X1,Y1",
        help=f"take out the object inside this box (left, top, right, bottom; {coordinates}); repeatable, one "
        "object layer each (method tools or weight-free)",
    )
    parser.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y",
        help=f"take out the object under this point ({coordinates}); repeatable, one object layer each",
    )
    parser.add_argument(
        "--negative-point",
        action="append",
        default=[],
        metavar="X,Y",
        help="a point that belongs to none of the prompted objects: cut out of them, and an automatically found "
        "object under it is left out; repeatable",
    )
    parser.add_argument(
        "--only-prompts",
        action="store_true",
        help="take out only the prompted objects (default: objects found automatically are added, up to --layers)",
    )


def _box_point_prompts(args: argparse.Namespace) -> dict[str, Any]:
    """The decomposer's keyword arguments for ``--box``, ``--point``, ``--negative-point``, ``--only-prompts``."""
    options: dict[str, Any] = {}
    if args.box:
        options["boxes"] = list(args.box)
    if args.point:
        options["points"] = list(args.point)
    if args.negative_point:
        options["negative_points"] = list(args.negative_point)
    if args.only_prompts:
        options["only_prompts"] = True
    return options


def _check_box_point_prompts(args: argparse.Namespace, inputs: list[_Input], method: str, layers: int | None) -> None:
    """Box and point prompts checked against every input before anything is loaded or written."""
    given = [f"--{name}" for name in ("box", "point", "negative-point") if getattr(args, name.replace("-", "_"))]
    if not given and not args.only_prompts:
        return
    if method == "pipeline":
        raise CLIError(
            f"prompts ({'/'.join(given) or '--only-prompts'}) work with the tool chain (--method tools or "
            "weight-free); the LiWi pipeline (--model) takes no prompts"
        )
    from ..tools.prompts import parse_numbers

    try:
        for flag, values, count in (("--box", args.box, 4), ("--point", args.point, 2)):
            for text in values:
                parse_numbers(text, count, flag)
        for text in args.negative_point:
            parse_numbers(text, 2, "--negative-point")
    except ValueError as error:
        raise CLIError(str(error)) from None
    objects = len(args.box) + len(args.point) + len(getattr(args, "prompt", None) or [])
    if args.only_prompts and objects == 0:
        raise CLIError("--only-prompts needs at least one --box or --point (or --prompt) to take out")
    limit = layers or MAX_LAYERS
    if objects > limit:
        what = "--layers is" if layers else f"at most {MAX_LAYERS} objects are taken out, so the limit is"
        raise CLIError(
            f"{objects} prompted objects but {what} {limit}: give at most {limit} --box/--point prompts"
            + (", or raise --layers" if layers and layers < MAX_LAYERS else "")
        )
    for item in inputs:  # coordinates against each photo's size: no file is written if one prompt is off
        try:
            width, height = item.open().size
        except ImageLoadError:
            continue  # reported as usual when its turn comes
        _check_prompt_coordinates(args, item.name, (width, height))


def _check_prompt_coordinates(args: argparse.Namespace, name: str, size: tuple[int, int]) -> None:
    from ..tools.prompts import parse_box, parse_point

    try:
        for text in args.box:
            parse_box(text, size, "--box")
        for text in args.point:
            parse_point(text, size, "--point")
        for text in args.negative_point:
            parse_point(text, size, "--negative-point", positive=False)
    except ValueError as error:
        raise CLIError(f"{name}: {error}") from None
