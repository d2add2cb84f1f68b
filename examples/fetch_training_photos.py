"""Openly licensed real photos for the ADD builder, disjoint from the real-photo benchmark.

The photos come from the same repository snapshots as the benchmark (`benchmarks/data/real/build_real_data.py`):
every COCO photo there whose Flickr licence allows redistribution (CC-BY-2.0, CC-BY-SA-2.0, no known copyright
restrictions, US Government work) and that the benchmark does not use. They are written to OUT as JPEG (long side
at most 1024 px) with OUT/SOURCES.md giving the repository, commit, path, licence and attribution of each one.

    git clone --bare https://github.com/Obmutescence/COCO-MINI MIRROR/Obmutescence+COCO-MINI/repo  # zzowenzz/COCO_Tiny,
    # enginbozaba/tiny_coco alike
    python examples/fetch_training_photos.py --mirror MIRROR -o training-photos
    liwi-build training-photos/ -o liwi-sample-real --num-samples 3000 --workers 2   # plus the bundled photos

Photos the benchmark uses are never written, so that a dataset built from OUT cannot leak benchmark photos into
training.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "data" / "real"))

from build_real_data import COCO_OPEN_LICENCES, COCO_SOURCES, CocoSource, git_show, save_photo  # noqa: E402

# Another small COCO subset (photos and the official annotations of those photos, licence ids included).
TINY_COCO = "enginbozaba/tiny_coco"
TINY_COCO_COMMIT = "44ee1df5a4f5c3fa6ab7c68d85a0d45590758584"
TRAINING_SOURCES = [
    *COCO_SOURCES,
    CocoSource("tiny-train", TINY_COCO, TINY_COCO_COMMIT, "annotations/instances_train2017.json", "images/train2017"),
    CocoSource("tiny-val", TINY_COCO, TINY_COCO_COMMIT, "annotations/instances_val2017.json", "images/val2017"),
]
BENCHMARK_MANIFEST = ROOT / "benchmarks" / "data" / "real" / "manifest.json"


def benchmark_coco_ids() -> set[int]:
    """COCO image ids the real-photo benchmark holds (never to be used for training)."""
    samples = json.loads(BENCHMARK_MANIFEST.read_text())
    return {int(s["id"][len("coco") :]) for s in samples if s["id"].startswith("coco")}


def fetch(mirror: Path, out: Path) -> list[dict]:
    """Write the photos and return one record per photo (what SOURCES.md lists)."""
    reserved = benchmark_coco_ids()
    records: list[dict] = []
    seen: set[int] = set()
    for source in TRAINING_SOURCES:
        data = json.loads(git_show(mirror, source.repo, source.commit, source.annotations))
        for info in sorted(data["images"], key=lambda i: i["id"]):
            licence = COCO_OPEN_LICENCES.get(info.get("license"))
            if licence is None or info["id"] in reserved or info["id"] in seen:
                continue
            seen.add(info["id"])
            path = f"{source.image_dir}/{info['file_name']}"
            photo = Image.open(io.BytesIO(git_show(mirror, source.repo, source.commit, path)))
            name = f"coco{info['id']:012d}.jpg"
            save_photo(photo, out / name)
            records.append(
                {
                    "file": name,
                    "origin": f"{source.repo}@{source.commit[:12]}:{path}",
                    "licence": licence,
                    "attribution": info.get("flickr_url") or info.get("coco_url") or "",
                }
            )
    return records


def sources_markdown(records: list[dict]) -> str:
    lines = [
        "# Sources of these training photos",
        "",
        "Written by `examples/fetch_training_photos.py`; none of them is in the real-photo benchmark.",
        "Photos keep their Flickr licence (recorded per image in the COCO subset's `instances_*.json`).",
        "",
        "| file | origin (repository@commit:path) | licence | attribution |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r['file']} | `{r['origin']}` | {r['licence']} | {r['attribution']} |" for r in records]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", type=Path, required=True, help="folder of bare snapshots (owner+name/repo)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write the photos to")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    records = fetch(args.mirror, args.output)
    (args.output / "SOURCES.md").write_text(sources_markdown(records))
    print(f"{len(records)} photos in {args.output} (licences in {args.output / 'SOURCES.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
