"""`liwi models`: list, download, verify and locate the model files liwi-diffusers can use."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import CLIError


def add_parser(subparsers: Any) -> None:
    from ..model_zoo import DEFAULT_SEGMENTER

    parser = subparsers.add_parser(
        "models",
        help="list, download, verify and locate model files (e.g. the ISNet segmenter)",
        description=(
            "Model files are not part of the package: `liwi models download NAME` fetches one into the cache "
            "($LIWI_MODELS_CACHE, or <HF_ASSETS_CACHE>/liwi-diffusers/models, i.e. ~/.cache/huggingface/assets/... "
            "by default), from the Hugging Face Hub when the model has a copy there and the Hub is reachable, "
            "otherwise from its npm package through the `npm` client, and checks its sha256. "
            f"The default segmenter is {DEFAULT_SEGMENTER!r}. Each model folder holds a model card (README.md)."
        ),
    )
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="name, size, licence, cached or not, and purpose of every model")
    listing.set_defaults(run=run)

    download = actions.add_parser("download", help="download a model into the cache and check its sha256")
    download.add_argument("name", metavar="NAME", help="model name (see `liwi models list`)")
    download.add_argument("--force", action="store_true", help="download again even if a valid copy is cached")
    download.add_argument("-q", "--quiet", action="store_true", help="print only the path of the file")
    download.set_defaults(run=run)

    verify = actions.add_parser("verify", help="re-hash cached models against their sha256 (all cached if no NAME)")
    verify.add_argument("names", nargs="*", metavar="NAME", help="models to verify (default: every cached model)")
    verify.set_defaults(run=run)

    path = actions.add_parser("path", help="print the path of a downloaded model (exit 1 if it is not downloaded)")
    path.add_argument("name", metavar="NAME", help="model name (see `liwi models list`)")
    path.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import model_zoo

    try:
        if args.models_command == "list":
            return _list(model_zoo)
        if args.models_command == "download":
            path = model_zoo.download_model(args.name, force=args.force, progress=not args.quiet)
            print(path)
            return 0
        if args.models_command == "verify":
            return _verify(model_zoo, args.names)
        if args.models_command == "path":
            found = model_zoo.find_model(args.name, verify=True)
            if found is None:
                print(
                    f"liwi: error: model {args.name!r} is not downloaded; run `liwi models download {args.name}`",
                    file=sys.stderr,
                )
                return 1
            print(found)
            return 0
    except model_zoo.ModelError as error:
        raise CLIError(str(error)) from None
    raise CLIError(f"unknown models action {args.models_command!r}")  # argparse makes this unreachable


def _list(model_zoo: Any) -> int:
    rows = [("NAME", "SIZE", "LICENCE", "CACHED", "PURPOSE")]
    for name, card in model_zoo.MODELS.items():
        try:
            cached = "yes" if model_zoo.find_model(name, verify=True) is not None else "no"
        except model_zoo.ModelError:
            cached = "corrupt"
        label = f"{name} (default)" if name == model_zoo.DEFAULT_SEGMENTER else name
        rows.append((label, f"{card.size / 1e6:.1f} MB", card.licence, cached, card.purpose))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4])
    print(f"cache: {model_zoo.models_cache_dir()}")
    return 0


def _verify(model_zoo: Any, names: list[str]) -> int:
    if not names:
        names = [name for name in model_zoo.MODELS if model_zoo.model_path(name).is_file()]
        if not names:
            print(
                f"no models downloaded in {model_zoo.models_cache_dir()}; "
                f"run `liwi models download {model_zoo.DEFAULT_SEGMENTER}`"
            )
            return 0
    failures = []
    for name in names:
        try:
            path = model_zoo.verify_model(name)
        except model_zoo.ModelError as error:
            failures.append(str(error))
            continue
        print(f"{name}: ok ({path})")
    if failures:
        for message in failures[:-1]:
            print(f"liwi: error: {message}", file=sys.stderr)
        raise CLIError(failures[-1])
    return 0
