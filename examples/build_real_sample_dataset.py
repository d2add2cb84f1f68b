"""Rebuild the sample dataset from real photos with the learned segmenter and peeling, and report on it.

Sources: every bundled photo (`liwi_dataset_builder.sample_data`) plus a folder of openly licensed real photos
(`examples/fetch_training_photos.py` writes one that shares no photo with the real-photo benchmark). Foreground
curation uses ``--proposer auto``: `PeelingProposer` on ISNet when it is downloaded (`liwi models download isnet`),
the same crops and peeling rounds as `liwi decompose`. Afterwards it writes:

- a JSON report: rows per split, the verifier's acceptance rate (accepted samples over composition attempts) and
  its rejection reasons, the cut-outs curation kept and dropped (with reasons), and the build's time;
- a contact sheet of accepted cut-outs (`liwi_dataset_builder.preview.cutout_sheet`).

    python examples/fetch_training_photos.py --mirror MIRROR -o training-photos
    python examples/build_real_sample_dataset.py --photos training-photos -o liwi-sample-real -n 3000 -w 2 \\
        --report benchmarks/results/sample_dataset_real.json --sheet docs/images/add_cutouts.jpg

Rerun the same command after an interruption: the build resumes (see `liwi-build --help`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

from liwi_dataset_builder.assets import PhotoAssets
from liwi_dataset_builder.build import BuildConfig, build_dataset
from liwi_dataset_builder.preview import cutout_sheet
from liwi_dataset_builder.sample_data import SAMPLE_LICENSE_NOTES, export_sample_photos
from liwi_dataset_builder.toolset import ToolSpec, resolve_proposer


def curation_summary(assets: list[PhotoAssets]) -> dict:
    """Cut-outs kept and dropped by curation, with the reasons its notes give."""
    dropped: Counter[str] = Counter()
    shadows_dropped = 0
    for photo in assets:
        for note in photo.notes:
            match = re.search(r"rejected: (.*)$", note)
            if match:
                dropped[re.sub(r"[\d.]+", "N", match.group(1))] += 1
            elif "extracted shadow dropped" in note:
                shadows_dropped += 1
    planned: Counter[str] = Counter()  # why the planner left proposals out, or a photo out of the backgrounds
    for photo in assets:
        for reason in str(photo.plan.get("reason", "")).split("; "):
            if reason and reason != "ok":
                reason = re.sub(r"^#\d+ ", "", reason)
                reason = re.sub(r"the [a-z/]+ border", "a border", reason)
                planned[re.sub(r"[\d.]+%", "N%", reason)] += 1
    kept = sum(len(photo.foregrounds) for photo in assets)
    return {
        "photos": len(assets),
        "planner_reasons": dict(planned.most_common()),
        "cutouts_kept": kept,
        "cutouts_dropped": sum(dropped.values()),
        "cutout_drop_reasons": dict(dropped.most_common()),
        "cutouts_with_an_extracted_shadow": sum(fg.has_shadow for photo in assets for fg in photo.foregrounds),
        "extracted_shadows_dropped": shadows_dropped,
        "backgrounds": dict(Counter(p.background.kind if p.background else "none" for p in assets)),
        "curation_seconds_per_photo": round(sum(p.seconds for p in assets) / max(1, len(assets)), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, action="append", default=[], help="folder of real photos (repeatable)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="dataset folder to create or resume")
    parser.add_argument("-n", "--num-samples", type=int, default=3000)
    parser.add_argument("-w", "--workers", type=int, default=2)
    parser.add_argument("-r", "--resolution", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proposer", default="auto", help="as liwi-build --proposer (default: auto)")
    parser.add_argument("--report", type=Path, default=None, help="JSON report (default: OUT/rebuild_report.json)")
    parser.add_argument("--sheet", type=Path, default=None, help="cut-out contact sheet (default: OUT/cutouts.jpg)")
    parser.add_argument("--sheet-cutouts", type=int, default=64, help="cut-outs on the sheet, at most")
    args = parser.parse_args()

    proposer = resolve_proposer(args.proposer)
    if args.proposer == "auto" and proposer == "saliency":
        print("note: ISNet is not downloaded, so curation uses the weight-free proposer", file=sys.stderr)
    bundled = args.output.parent / f"{args.output.name}-bundled-photos"
    export_sample_photos(bundled)
    config = BuildConfig(
        sources=[str(bundled), *map(str, args.photos)],
        output=str(args.output),
        num_samples=args.num_samples,
        resolution=args.resolution,
        workers=args.workers,
        seed=args.seed,
        test_fraction=0.1,
        tools=ToolSpec(proposer=proposer),
        license="other",
        license_notes=[
            *SAMPLE_LICENSE_NOTES,
            "Real photos: each one's Flickr licence (CC-BY-2.0, CC-BY-SA-2.0, no known restrictions or US "
            "Government work), listed in the photo folder's SOURCES.md.",
        ],
        name=args.output.name,
        progress=True,
    )
    start = time.perf_counter()
    build_dataset(config)
    seconds = time.perf_counter() - start

    report = json.loads((args.output / "build_report.json").read_text())
    stats = report["statistics"]
    rows = sum(stats["splits"].values())
    rejected = sum(stats["rejections"].values())
    assets = [PhotoAssets.load(path) for path in sorted((args.output / ".build" / "assets").glob("*.npz"))]
    summary = {
        "command": " ".join(sys.argv),
        "proposer": proposer,
        "sources": report["sources"]["usable"],
        "skipped_sources": report["sources"]["skipped"],
        "rows": stats["splits"],
        "verifier": {
            "attempts": rows + rejected,
            "accepted": rows,
            "acceptance_rate": round(rows / max(1, rows + rejected), 4),
            "rejection_reasons": dict(Counter(stats["rejections"]).most_common()),
        },
        "curation": curation_summary(assets),
        "objects_per_sample": stats.get("objects_per_sample"),
        "wall_seconds_this_run": round(seconds, 1),
    }
    report_path = args.report or args.output / "rebuild_report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(summary, indent=2) + "\n")
    cutouts = [fg for photo in assets for fg in photo.foregrounds]
    step = max(1, len(cutouts) // args.sheet_cutouts)
    sheet_path = args.sheet or args.output / "cutouts.jpg"
    sheet_path.parent.mkdir(parents=True, exist_ok=True)
    cutout_sheet(cutouts[::step][: args.sheet_cutouts]).save(sheet_path, quality=88)
    print(json.dumps(summary, indent=2))
    print(f"report: {report_path}  sheet: {sheet_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
