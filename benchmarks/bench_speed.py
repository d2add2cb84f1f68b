"""Where the time of a decomposition goes, by stage, and what the segmenter settings cost: seconds per photo.

    python benchmarks/bench_speed.py                         # 1, 4, 12 MP; before / after configurations
    python benchmarks/bench_speed.py --megapixels 1 --photos 3
    python benchmarks/bench_speed.py --megapixels 1 --photos 5 --group single --configs default fast

Photos: real photos of the real-photo benchmark (``benchmarks/data/real/``, the first ``--photos`` of ``--group``:
multi-object ones by default, or single-subject ones or pairs), upscaled (Lanczos) to each size. Configurations,
all measured in the same process and run (ratios between them are what to compare on a shared machine):

- ``default``: today's default (``ToolChainDecomposer()`` with the downloaded models);
- ``later-640``: peeling rounds after the first at 640 (``later_round_side=640``, a second ONNX Runtime session);
- ``crops-768``: also the crops at 768 (``tile_side=768``);
- ``no-crops``: the default without the first round's crops (``tiles=0``; the default itself when the object
  detector is downloaded);
- ``with-crops``: the first round's 2 x 2 crops whether or not a detector is in use (``tiles=2``);
- ``large-512``: the default of the previous release: only detected boxes whose crop is at least 512 px run at
  ``large_box_side`` (``large_box_min_crop=512``; now 256);
- ``fast``: the fast preset (``load_decomposer("fast")``, `liwi_diffusers.tools.decomposer.FAST`);
- ``fast-before``: the fast preset of the previous release: a box that nothing fits tries GrabCut from the
  segmenter's matte and from all three shape priors (``grabcut_from_matte=True``, ``box_priors`` "box", "middle",
  "ellipse").

Stages, timed by wrapping the decomposer's tools: segmenter passes (first / crops / detected boxes / later
rounds), instance splitting, matting, shadows, fill (inpainting), and the rest (full-resolution layers,
reconcile). "one pass" is a segmenter pass on the working-size photo at the nominal side; "ratio" is the
decomposition over that pass (the issue's target: at most 3). Loading the image and writing files are not
included (`bench_memory.py` times the whole command). Results: ``benchmarks/results/speed.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import load_real_benchmark
from results_io import write_results

RESULTS = Path(__file__).resolve().parent / "results" / "speed.json"
CONFIGS = ("default", "large-512", "with-crops", "later-640", "crops-768", "no-crops", "fast", "fast-before")


class Timed:
    """A tool that adds the seconds of its calls to ``clock[stage]`` (the stage can be chosen per call)."""

    def __init__(self, tool: Any, clock: dict[str, float], stage: str) -> None:
        self.tool, self.clock, self.stage = tool, clock, stage
        self.name = getattr(tool, "name", type(tool).__name__)

    def at_side(self, side: int) -> Timed:
        return Timed(self.tool.at_side(side), self.clock, self.stage)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tool, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.tool(*args, **kwargs)
        finally:
            self.clock[self.stage] += time.perf_counter() - start


class RoleSegmenter:
    """The segmenter, timed as 'first pass', 'crops', 'boxes' or 'later rounds' by how the decomposer calls it."""

    def __init__(self, segmenter: Any, clock: dict[str, float]) -> None:
        self.segmenter, self.clock, self.name = segmenter, clock, segmenter.name
        self.whole_calls = 0
        self.in_crops = False  # set while the decomposer segments the first round's crops
        self.in_boxes = False  # set while it segments the detected boxes
        self.passes: dict[str, int] = defaultdict(int)

    def _stage(self) -> str:
        if self.in_crops:
            return "segmenter: crops"
        if self.in_boxes:
            return "segmenter: boxes"
        self.whole_calls += 1
        return "segmenter: first pass" if self.whole_calls == 1 else "segmenter: later rounds"

    def _run(self, segmenter: Any, image: np.ndarray) -> np.ndarray:
        stage = self._stage()
        start = time.perf_counter()
        try:
            return segmenter(image)
        finally:
            self.clock[stage] += time.perf_counter() - start
            self.passes[stage] += 1

    def at_side(self, side: int) -> Any:
        sized = self.segmenter.at_side(side)
        role = self

        class Sized:
            name = sized.name

            def __call__(self, image: np.ndarray) -> np.ndarray:
                return role._run(sized, image)

        return Sized()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self._run(self.segmenter, image)


def _flagged(method: Any, role: RoleSegmenter, flag: str) -> Any:
    """``method`` with ``role.<flag>`` set while it runs."""

    def run(*args: Any, **kwargs: Any) -> Any:
        setattr(role, flag, True)
        try:
            return method(*args, **kwargs)
        finally:
            setattr(role, flag, False)

    return run


def decomposer_for(config: str, segmenter: Any, clock: dict[str, float]) -> tuple[Any, RoleSegmenter]:
    from liwi_diffusers.tools import ToolChainDecomposer
    from liwi_diffusers.tools.decomposer import FAST
    from liwi_diffusers.tools.prompts import PromptSegmenter

    role = RoleSegmenter(segmenter, clock)
    sides = {
        "default": {},
        "large-512": {"large_box_min_crop": 512},
        "later-640": {"later_round_side": 640},
        "crops-768": {"tile_side": 768, "later_round_side": 640},
        "no-crops": {"tiles": 0},
        "with-crops": {"tiles": 2},
        "fast": dict(FAST),
        "fast-before": {**FAST, "prompt_segmenter": PromptSegmenter(grabcut_size=200, grabcut_iterations=3)},
    }[config]
    decomposer = ToolChainDecomposer(segmenter=role, **sides)
    decomposer._matter = Timed(decomposer.matter, clock, "matting")
    decomposer._inpainter = Timed(decomposer.inpainter, clock, "fill")
    decomposer._shadow_extractor = Timed(decomposer.shadow_extractor, clock, "shadows")
    decomposer.splitter = Timed(decomposer.splitter, clock, "splitting")
    prompts = decomposer.prompt_segmenter
    prompts._grabcut = Timed(prompts._grabcut, clock, "box GrabCut")
    decomposer._tile_objects = _flagged(decomposer._tile_objects, role, "in_crops")
    decomposer._with_detections = _flagged(decomposer._with_detections, role, "in_boxes")
    return decomposer, role


def upscaled(image: np.ndarray, megapixels: float) -> np.ndarray:
    height, width = image.shape[:2]
    scale = (megapixels * 1e6 / (height * width)) ** 0.5
    size = (round(width * scale), round(height * scale))
    return np.asarray(Image.fromarray((image * 255).round().astype(np.uint8)).resize(size, Image.LANCZOS)) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", nargs="+", type=float, default=[1, 4, 12])
    parser.add_argument("--photos", type=int, default=2, help="photos of the real-photo benchmark's --group")
    parser.add_argument("--group", choices=("single", "pair", "multi"), default="multi", help="which photos")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from liwi_diffusers.tools._utils import resize, scale_for
    from liwi_diffusers.tools.segmenter import OnnxSegmenter

    photos = load_real_benchmark(groups=[args.group])[: args.photos]
    segmenter = OnnxSegmenter.from_cache()
    rows = []
    for sample in photos:
        for megapixels in args.megapixels:
            image = upscaled(sample.image, megapixels).astype(np.float32)
            scale = scale_for(image.shape, 1024)
            work = resize(image, (round(image.shape[0] * scale), round(image.shape[1] * scale)))
            segmenter(work)  # warm
            start = time.perf_counter()
            segmenter(work)
            one_pass = time.perf_counter() - start
            for config in args.configs:
                clock: dict[str, float] = defaultdict(float)
                decomposer, role = decomposer_for(config, segmenter, clock)
                load = os.getloadavg()[0]
                start, cpu_start = time.perf_counter(), time.process_time()
                layered = decomposer(image)
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
                clock["rest (full-size layers, reconcile)"] = seconds - sum(clock.values())
                reference = one_pass  # the ratio's unit for all rows
                row = {
                    "photo": sample.id,
                    "megapixels": megapixels,
                    "size": list(image.shape[:2]),
                    "config": config,
                    "seconds": seconds,
                    "seconds_per_mp": seconds / megapixels,
                    "cpu_seconds": cpu_seconds,  # all threads: steadier than wall time on a shared machine
                    "one_pass_s": one_pass,
                    "ratio_to_one_pass": seconds / reference,
                    "objects": layered.num_objects,
                    "detected_boxes_reused": layered.metadata.get("detected_boxes_reused", 0),
                    "passes": dict(role.passes),
                    "stages_s": dict(clock),
                    "load_average": load,
                }
                rows.append(row)
                stages = ", ".join(f"{k} {v:.1f}" for k, v in clock.items())
                print(
                    f"{sample.id} {megapixels:g} MP {config:12s} {seconds:6.1f} s ({cpu_seconds:.1f} CPU s) = "
                    f"{row['ratio_to_one_pass']:.1f} "
                    f"passes, {layered.num_objects} objects ({stages}; load {load:.1f})",
                    flush=True,
                )
    print("\n| config | MP | seconds (mean) | CPU seconds (mean) | s/MP | ratio to one pass | segmenter share |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = {}
    for config in args.configs:
        for megapixels in args.megapixels:
            chosen = [r for r in rows if r["config"] == config and r["megapixels"] == megapixels]
            seconds = float(np.mean([r["seconds"] for r in chosen]))
            cpu_seconds = float(np.mean([r["cpu_seconds"] for r in chosen]))
            ratio = float(np.mean([r["ratio_to_one_pass"] for r in chosen]))
            share = float(
                np.mean(
                    [
                        sum(v for k, v in r["stages_s"].items() if k.startswith("segmenter")) / r["seconds"]
                        for r in chosen
                    ]
                )
            )
            summary[f"{config}@{megapixels:g}"] = {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "ratio_to_one_pass": ratio,
                "segmenter_share": share,
            }
            print(
                f"| {config} | {megapixels:g} | {seconds:.1f} | {cpu_seconds:.1f} | {seconds / megapixels:.2f} "
                f"| {ratio:.2f} | {share:.0%} |"
            )
    write_results(
        args.output,
        {
            "command": "python " + " ".join(sys.argv),
            "cpu_count": os.cpu_count(),
            "group": args.group,
            "summary": summary,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
