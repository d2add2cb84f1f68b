"""Rebuild the real-photo benchmark data in this folder from public repository snapshots.

This is the script that made ``manifest.json``, ``images/``, ``masks/`` and ``clean/``; it is kept so the data can
be audited and rebuilt. It needs the snapshots named in ``SOURCES.md`` as bare git directories (one per repository,
at the recorded commit) and reads every file with ``git show``, so nothing is downloaded here.

    python benchmarks/data/real/build_real_data.py --mirror /work/.mirror

Every mask is rasterised from a human-made annotation (COCO polygons); no mask is drawn or predicted here.
Photos are resized so the long side is at most 1024 px (area filter, JPEG quality 90); masks are rasterised at the
original size and resized with area averaging, then thresholded at 0.5 (binary sources stay binary).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
MAX_SIDE = 1024
JPEG_QUALITY = 90

# COCO licence ids that allow redistribution (the others are NonCommercial and/or NoDerivs).
COCO_OPEN_LICENCES = {
    4: "CC-BY-2.0",
    5: "CC-BY-SA-2.0",
    7: "Flickr: no known copyright restrictions",
    8: "United States Government Work",
}
# An instance is kept as a benchmark object when it covers at least this share of the photo.
MIN_OBJECT_SHARE = 0.004


@dataclass(frozen=True)
class CocoSource:
    """One COCO-format subset in a repository snapshot: its annotation file and its image folder."""

    key: str
    repo: str
    commit: str
    annotations: str
    image_dir: str


COCO_SOURCES = [
    CocoSource(
        "coco-mini-val",
        "Obmutescence/COCO-MINI",
        "644f29e7c1d2eefd9c4412d39bc5b0ee6fd0afd4",
        "annotations/instances_val2017.json",
        "val2017",
    ),
    CocoSource(
        "coco-mini-train",
        "Obmutescence/COCO-MINI",
        "644f29e7c1d2eefd9c4412d39bc5b0ee6fd0afd4",
        "annotations/instances_train2017.json",
        "train2017",
    ),
    CocoSource(
        "coco-tiny-val",
        "zzowenzz/COCO_Tiny",
        "e7a689f7d6d1a1908df287c3e79eccdadfdba1fe",
        "annotations/instances_val2017.json",
        "val2017",
    ),
    CocoSource(
        "coco-tiny-train",
        "zzowenzz/COCO_Tiny",
        "e7a689f7d6d1a1908df287c3e79eccdadfdba1fe",
        "annotations/instances_train2017.json",
        "train2017",
    ),
]


def git_show(mirror: Path, repo: str, commit: str, path: str) -> bytes:
    """Bytes of ``path`` at ``commit`` in the bare snapshot of ``repo``."""
    git_dir = mirror / repo.replace("/", "+") / "repo"
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "show", f"{commit}:{path}"], check=True, capture_output=True
    ).stdout


def target_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def save_photo(image: Image.Image, path: Path) -> tuple[int, int]:
    size = target_size(*image.size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BOX)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return size


def save_mask(mask: np.ndarray, size: tuple[int, int], path: Path, binary: bool = True) -> None:
    """Save a float mask in [0, 1] at ``size`` as 8-bit PNG (area resize; threshold 0.5 when ``binary``)."""
    image = Image.fromarray(np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BOX)
    if binary:
        image = image.point(lambda v: 255 if v >= 128 else 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG", optimize=True)


def coco_polygons_to_mask(segmentation: list[list[float]], width: int, height: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in segmentation:
        if len(polygon) >= 6:
            draw.polygon([(polygon[i], polygon[i + 1]) for i in range(0, len(polygon) - 1, 2)], fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def build_coco(mirror: Path, out: Path) -> tuple[list[dict], list[dict]]:
    """Samples from the COCO subsets: openly licensed photos only, all of their non-crowd instances above the size
    floor. Returns (samples, file rows for SOURCES.md)."""
    samples: list[dict] = []
    rows: list[dict] = []
    seen: set[int] = set()
    for source in COCO_SOURCES:
        data = json.loads(git_show(mirror, source.repo, source.commit, source.annotations))
        categories = {c["id"]: c["name"] for c in data["categories"]}
        by_image: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for info in sorted(data["images"], key=lambda i: i["id"]):
            licence = COCO_OPEN_LICENCES.get(info.get("license"))
            if licence is None or info["id"] in seen:
                continue
            anns = by_image.get(info["id"], [])
            if any(a.get("iscrowd") for a in anns):
                continue  # a crowd region would hide unannotated instances; keep only fully instanced photos
            width, height = info["width"], info["height"]
            kept = [a for a in anns if a["area"] >= MIN_OBJECT_SHARE * width * height and a["segmentation"]]
            if not kept:
                continue
            kept.sort(key=lambda a: -a["area"])
            seen.add(info["id"])
            sample_id = f"coco{info['id']:012d}"
            photo_path = f"{source.image_dir}/{info['file_name']}"
            photo = Image.open(io.BytesIO(git_show(mirror, source.repo, source.commit, photo_path)))
            photo.load()
            if photo.size != (width, height):
                raise ValueError(f"{photo_path}: size {photo.size} does not match its annotation")
            size = save_photo(photo, out / "images" / f"{sample_id}.jpg")
            objects = []
            for k, ann in enumerate(kept):
                mask_rel = f"masks/{sample_id}/object{k:02d}.png"
                save_mask(coco_polygons_to_mask(ann["segmentation"], width, height), size, out / mask_rel)
                objects.append({"mask": mask_rel, "label": categories[ann["category_id"]], "shadow": None})
            samples.append(
                {
                    "id": sample_id,
                    "image": f"images/{sample_id}.jpg",
                    "groups": groups_for(len(objects)),
                    "objects": objects,
                    "clean_plate": None,
                    "source": source.key,
                    "licence": licence,
                    "attribution": info.get("flickr_url", ""),
                    "origin": f"{source.repo}@{source.commit[:12]}:{photo_path}",
                    "mask_origin": f"{source.repo}@{source.commit[:12]}:{source.annotations} (image_id {info['id']})",
                }
            )
            rows.append({"sample": sample_id, "source": source.key, "path": photo_path, "licence": licence})
    return samples, rows


# Where each source's licence is stated, for SOURCES.md.
LICENCE_STATEMENTS = {
    "coco": (
        "COCO annotations: CC-BY-4.0 (COCO Consortium, cocodataset.org/#termsofuse). Photos: the Flickr licence"
        " recorded per image in the `license` field of the subset's own `instances_*.json` (ids 4 = CC-BY-2.0,"
        " 5 = CC-BY-SA-2.0); only those ids are used. Attribution: the photo's Flickr page, `attribution` in"
        " manifest.json."
    ),
    "oxford-pets": (
        "Oxford-IIIT Pet Dataset page (robots.ox.ac.uk/~vgg/data/pets): available for commercial/research purposes"
        " under CC-BY-SA-4.0, copyright of the photos with their owners (quoted in airctic/icedata"
        " `icedata/datasets/pets/README.md`). The snapshot is a course project's copy of the dataset (photos and"
        " trimaps unchanged in size); CC-BY-SA-4.0 admits no further restrictions on it."
    ),
}


def sources_markdown(samples: list[dict]) -> str:
    """SOURCES.md: one table row per source key (repository, commit, path pattern, licence) and one per file."""
    lines = [
        "# Sources of the real-photo benchmark data",
        "",
        "Generated by `build_real_data.py` from repository snapshots; do not edit by hand.",
        "Masks under `masks/<id>/` are rasterised from the source's human-made annotation of the same photo and"
        " carry the annotation's licence; photos keep the photo's licence.",
        "",
        "## Sources",
        "",
        "| source | repository | commit | paths in the repository | licence | where the licence is stated |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for source in COCO_SOURCES:
        if not any(s["source"] == source.key for s in samples):
            continue
        lines.append(
            f"| {source.key} | {source.repo} | {source.commit} | `{source.image_dir}/<file_name>` (photos),"
            f" `{source.annotations}` (polygons, licence ids) | per image, see below | {LICENCE_STATEMENTS['coco']} |"
        )
    if any(s["source"] == "oxford-pets" for s in samples):
        lines.append(
            f"| oxford-pets | {PETS_REPO} | {PETS_COMMIT} | `test/res/<name>.jpg` (photos, original size),"
            f" `test/res/label/<name>.png` (trimaps relabelled 0/1-or-2/255) | {PETS_LICENCE} |"
            f" {LICENCE_STATEMENTS['oxford-pets']} |"
        )
    lines += [
        "",
        "## Files",
        "",
        "| sample | files here | photo origin (repository@commit:path) | mask origin | licence | attribution |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in samples:
        here = f"`{s['image']}`, `masks/{s['id']}/*`" + (f", `{s['clean_plate']}`" if s.get("clean_plate") else "")
        lines.append(
            f"| {s['id']} | {here} | `{s['origin']}` | `{s['mask_origin']}` | {s['licence']} | {s['attribution']} |"
        )
    return "\n".join(lines) + "\n"


PETS_REPO = "StanCDev/oxford-pet-segmentation"
PETS_COMMIT = "498232a51cec25bd150e65268dace4d40bb81a6f"
PETS_LICENCE = "CC-BY-SA-4.0"
# Label values in that repository's copy of the Oxford-IIIT Pet trimaps: 1 = cat, 2 = dog (the trimap's foreground),
# 255 = the trimap's "not classified" band along the outline, 0 = background.
PETS_CLASSES = {1: "cat", 2: "dog"}


def build_pets(mirror: Path, out: Path) -> list[dict]:
    """Oxford-IIIT Pet photos at their original size with their trimap; the outline band becomes 0.5 (soft)."""
    git_dir = mirror / PETS_REPO.replace("/", "+") / "repo"
    listing = subprocess.run(
        ["git", f"--git-dir={git_dir}", "ls-tree", "--name-only", PETS_COMMIT, "test/res/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    samples = []
    for photo_path in sorted(p for p in listing if p.endswith(".jpg")):
        stem = photo_path.rsplit("/", 1)[1][: -len(".jpg")]
        label_path = f"test/res/label/{stem}.png"
        photo = Image.open(io.BytesIO(git_show(mirror, PETS_REPO, PETS_COMMIT, photo_path)))
        label = np.asarray(Image.open(io.BytesIO(git_show(mirror, PETS_REPO, PETS_COMMIT, label_path))))
        if label.shape != (photo.size[1], photo.size[0]):
            raise ValueError(f"{label_path}: size does not match {photo_path}")
        classes = sorted(set(np.unique(label).tolist()) & set(PETS_CLASSES))
        if len(classes) != 1:
            raise ValueError(f"{label_path}: expected one pet class, found {classes}")
        mask = (label == classes[0]).astype(np.float32) + 0.5 * (label == 255)
        sample_id = f"pet_{stem}"
        size = save_photo(photo, out / "images" / f"{sample_id}.jpg")
        mask_rel = f"masks/{sample_id}/object00.png"
        save_mask(mask, size, out / mask_rel, binary=False)
        samples.append(
            {
                "id": sample_id,
                "image": f"images/{sample_id}.jpg",
                "groups": groups_for(1),
                "objects": [{"mask": mask_rel, "label": PETS_CLASSES[classes[0]], "shadow": None}],
                "clean_plate": None,
                "source": "oxford-pets",
                "licence": PETS_LICENCE,
                "attribution": "Oxford-IIIT Pet Dataset, O. M. Parkhi, A. Vedaldi, A. Zisserman, C. V. Jawahar (2012)",
                "origin": f"{PETS_REPO}@{PETS_COMMIT[:12]}:{photo_path}",
                "mask_origin": f"{PETS_REPO}@{PETS_COMMIT[:12]}:{label_path}",
            }
        )
    return samples


def groups_for(num_objects: int) -> list[str]:
    if num_objects == 1:
        return ["single"]
    if num_objects == 2:
        return ["pair"]
    return ["multi"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, required=True, help="folder of bare snapshots (owner+name/repo)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    samples, _ = build_coco(args.mirror, args.out)
    samples += build_pets(args.mirror, args.out)
    (args.out / "manifest.json").write_text(json.dumps(samples, indent=1) + "\n", encoding="utf-8")
    (args.out / "SOURCES.md").write_text(sources_markdown(samples), encoding="utf-8")
    print(f"{len(samples)} samples")


if __name__ == "__main__":
    main()
