"""LiWiDecompositionPipeline side by side with diffusers' QwenImageLayeredPipeline, on the CPU.

Both pipelines get the same tiny transformer, VAE and scheduler (`build_tiny_pipeline`, seed 0, with Qwen-Image-
Layered's frame convention: a leading composite frame), the same photo (skimage's astronaut at ``size x size``,
so that neither pipeline resizes it), the same text conditioning, steps, layer count and seed. For each size and
decode path: time, in one process holding both pipelines on the shared models, one warm-up call each, then
``--repeats`` calls each, alternating (a change in the machine's load hits both alike), the fastest (and the median)
(wall and process CPU time); memory, in ``--memory-runs`` fresh processes per pipeline (the least is reported),
after a warm-up call: the peak resident memory of one call, and that peak above the memory held before the call
(Linux: freed memory is returned to the system with glibc's ``malloc_trim`` and the high-water mark is reset through
/proc/self/clear_refs before the call).

Decode paths. QwenImageLayeredPipeline has two ways out of its denoising loop: ``output_type="latent"``
returns the packed latents without touching the VAE, and any other output type unpacks them, decodes every
layer with the VAE and post-processes to images. Both are measured, plus the decoded path with the VAE's tiled
decoding (``vae.enable_tiling()``), which both pipelines inherit from the VAE:

- ``latent``: denoising only (LiWi: ``output_type="latent"``);
- ``decoded``: VAE decode of the layers (Qwen: ``output_type="np"``; LiWi: ``output_type="np"``, which also
  runs LiWi's own steps: layers at the input's size, alpha decoder, shadow head, reconcile with the photo);
- ``tiled``: ``decoded`` with ``vae.enable_tiling()`` (tiles of 256 px: only 512 px and up tile).

QwenImageLayeredPipeline 0.42.1 needs three work-arounds, applied here only:
- it accepts ``resolution`` 640 or 1024 only (an ``assert``), and computes its size with
  ``calculate_dimensions``: it is called with ``resolution=640`` and the module's ``calculate_dimensions`` is
  replaced by one returning ``size x size``, the size LiWi's ``processing_size`` gives for ``resolution=size``;
- it reads ``self.text_encoder.dtype`` to cast the image even when given ``prompt_embeds``: its
  ``text_encoder`` is a stand-in object with only ``dtype`` (float32);
- it captions the image when ``prompt`` is empty, even with ``prompt_embeds``: it gets a non-empty dummy
  ``prompt`` and precomputed ``prompt_embeds`` (LiWi's fixed empty-prompt embedding, one zero token) with an
  all-ones mask; LiWi gets the same embeddings and mask.
- with ``output_type="latent"`` it ends in an UnboundLocalError (it returns ``images``, never set on that
  path): the final latents are taken from ``callback_on_step_end`` at the last step and the error is caught.

    python benchmarks/bench_pipeline_vs_qwen.py                 # table + benchmarks/results/pipeline_vs_qwen.json
    python benchmarks/bench_pipeline_vs_qwen.py --sizes 256 --paths latent --repeats 1
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import Timers
from results_io import write_results

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline_vs_qwen.json"
PATHS = ("latent", "decoded", "tiled")
PIPELINES = ("liwi", "qwen")


def _memory_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_memory() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")  # resets VmHWM to the current VmRSS


def build_calls(size: int, num_layers: int, steps: int, path: str) -> dict[str, Any]:
    """``{"liwi": call, "qwen": call}``: each runs its pipeline once on the shared models, returning the final
    packed latents for the ``latent`` path (else None)."""
    import types

    import PIL.Image
    import torch
    from diffusers import QwenImageLayeredPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_layered
    from skimage import data

    from liwi_diffusers.pipelines import build_tiny_pipeline

    liwi = build_tiny_pipeline(seed=0, leading_composite_frame=True)
    liwi.set_progress_bar_config(disable=True)
    if path == "tiled":
        liwi.vae.enable_tiling()
    assert liwi.processing_size(size, size, size) == (size, size)
    qwen = QwenImageLayeredPipeline(
        scheduler=liwi.scheduler,
        vae=liwi.vae,
        text_encoder=None,
        tokenizer=None,
        processor=None,
        transformer=liwi.transformer,
    )
    qwen.set_progress_bar_config(disable=True)
    pipeline_qwenimage_layered.calculate_dimensions = lambda area, ratio: (size, size)
    object.__setattr__(qwen, "text_encoder", types.SimpleNamespace(dtype=torch.float32))

    photo = PIL.Image.fromarray(data.astronaut()).resize((size, size), PIL.Image.BICUBIC)
    rgba = photo.convert("RGBA")
    embeds = liwi.empty_prompt_embeds(1)
    mask = torch.ones(1, 1, dtype=torch.long)
    output_type = "latent" if path == "latent" else "np"

    def call_liwi() -> Any:
        return liwi(
            photo,
            num_layers=num_layers,
            resolution=size,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            prompt_embeds=embeds,
            prompt_embeds_mask=mask,
            output_type=output_type,
        ).latents

    def call_qwen() -> Any:
        final: dict[str, Any] = {}

        def keep_latents(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            final["latents"] = callback_kwargs["latents"]
            return {}

        try:
            qwen(
                rgba,
                prompt="unused: prompt_embeds are given",
                prompt_embeds=embeds,
                prompt_embeds_mask=mask,
                true_cfg_scale=1.0,
                layers=num_layers + 1,  # Qwen's layers count the background
                num_inference_steps=steps,
                resolution=640,  # the only accepted values are 640 and 1024; calculate_dimensions is replaced
                generator=torch.Generator().manual_seed(0),
                output_type=output_type,
                callback_on_step_end=keep_latents,
            )
        except UnboundLocalError:
            if output_type != "latent":
                raise
        return final["latents"] if output_type == "latent" else None

    call_liwi.pipeline = liwi  # type: ignore[attr-defined]  # for time_both's timing of LiWi's own steps
    return {"liwi": call_liwi, "qwen": call_qwen}


def time_both(size: int, path: str, num_layers: int, steps: int, repeats: int) -> dict[str, Any]:
    """Both pipelines in one process, called alternately (so that a change in machine load hits both alike);
    the fastest of ``repeats`` calls each, after a warm-up call each. LiWi's own steps (`layers_from_frames`: alpha
    decoder, shadow head, reconcile and check, which Qwen has no counterpart of) are timed inside its calls."""
    calls = build_calls(size, num_layers, steps, path)
    pipeline = calls["liwi"].pipeline
    timers = Timers()
    pipeline.layers_from_frames = timers.wrap("own_steps", pipeline.layers_from_frames)
    sums = {}
    for which, call in calls.items():  # warm-up: first calls allocate memory and pick kernels for each shape
        latents = call()
        sums[which] = None if latents is None else round(float(latents.double().abs().sum()), 4)
    walls: dict[str, list[float]] = {which: [] for which in calls}
    cpus: dict[str, list[float]] = {which: [] for which in calls}
    own: list[float] = []
    for repeat in range(repeats):
        order = list(calls) if repeat % 2 == 0 else list(reversed(calls))
        for which in order:
            timers.seconds.clear()
            start, start_cpu = time.perf_counter(), time.process_time()
            calls[which]()
            walls[which].append(time.perf_counter() - start)
            cpus[which].append(time.process_time() - start_cpu)
            if which == "liwi":
                own.append(timers.seconds["own_steps"])
    result = {
        which: {
            "wall_s": round(min(walls[which]), 4),
            "wall_median_s": round(statistics.median(walls[which]), 4),
            "cpu_s": round(min(cpus[which]), 4),
            "latents_abs_sum": sums[which],
        }
        for which in calls
    }
    result["liwi"]["own_steps_s"] = round(min(own), 4)
    result["liwi"]["own_steps_median_s"] = round(statistics.median(own), 4)
    return result


def memory_one(which: str, size: int, path: str, num_layers: int, steps: int) -> dict[str, Any]:
    """Peak resident memory of one call of pipeline ``which`` in this (fresh) process, after a warm-up call."""
    call = build_calls(size, num_layers, steps, path)[which]
    call()
    # Hand the memory the warm-up freed back to the system, so that the peak counts what the call itself needs
    # rather than what the allocator kept from the warm-up.
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss_before = _memory_mb("VmRSS")
    _reset_peak_memory()
    call()
    peak = _memory_mb("VmHWM")
    return {"peak_rss_mb": round(peak, 1), "call_peak_mb": round(peak - rss_before, 1)}


def _run(args: argparse.Namespace, *task: str) -> dict[str, Any]:
    command = [sys.executable, __file__, *task, "--layers", str(args.layers), "--steps", str(args.steps)]
    command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory(args: argparse.Namespace, which: str, size: int, path: str) -> dict[str, Any]:
    """The least of ``--memory-runs`` fresh-process measurements (one varies by 10-20 % at 256 px: the allocator),
    with every run kept."""
    runs = [_run(args, "--memory", which, str(size), path) for _ in range(args.memory_runs)]
    return {
        "peak_rss_mb": min(run["peak_rss_mb"] for run in runs),
        "call_peak_mb": min(run["call_peak_mb"] for run in runs),
        "memory_runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--layers", type=int, default=3, help="object layers K (Qwen: K + 1 layers)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per run: the fastest and the median")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each run")
    parser.add_argument("--memory-runs", type=int, default=3, help="fresh processes per memory figure; the least")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--time", nargs=2, metavar=("SIZE", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=3, metavar=("PIPELINE", "SIZE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.time or args.memory:  # internal: one measurement in this process, printed as JSON
        import torch

        torch.set_num_threads(args.threads)
        if args.time:
            result = time_both(int(args.time[0]), args.time[1], args.layers, args.steps, args.repeats)
        else:
            which, size, path = args.memory
            result = memory_one(which, int(size), path, args.layers, args.steps)
        print(json.dumps(result))
        return

    rows = []
    for size in args.sizes:
        for path in args.paths:
            timing = _run(args, "--time", str(size), path)
            liwi = {**timing["liwi"], **memory(args, "liwi", size, path)}
            qwen = {**timing["qwen"], **memory(args, "qwen", size, path)}
            same = None
            if liwi["latents_abs_sum"] is not None:
                same = abs(liwi["latents_abs_sum"] - qwen["latents_abs_sum"]) <= 1e-4 * qwen["latents_abs_sum"]
            rows.append(
                {
                    "size": size,
                    "path": path,
                    "liwi": liwi,
                    "qwen": qwen,
                    "wall_ratio": round(liwi["wall_s"] / qwen["wall_s"], 3),
                    "wall_median_ratio": round(liwi["wall_median_s"] / qwen["wall_median_s"], 3),
                    "own_steps_share": round(liwi["own_steps_median_s"] / liwi["wall_median_s"], 3),
                    "cpu_ratio": round(liwi["cpu_s"] / qwen["cpu_s"], 3),
                    "peak_rss_ratio": round(liwi["peak_rss_mb"] / qwen["peak_rss_mb"], 3),
                    "call_peak_ratio": round(liwi["call_peak_mb"] / max(qwen["call_peak_mb"], 1e-6), 3),
                    "same_latents": same,
                }
            )
            print(f"done: {size} px, {path}", file=sys.stderr)

    import diffusers
    import torch

    print(
        f"tiny pipelines, K={args.layers} objects (+ background, + Qwen's composite frame), {args.steps} steps, "
        f"CPU, {args.threads} torch thread(s), fastest (med: median) of {args.repeats}; ratio = LiWi / Qwen"
    )
    header = (
        f"{'size':>4} {'path':>8} | {'LiWi s':>7} {'Qwen s':>7} {'wall x':>6} {'med x':>6} {'cpu x':>6} {'own %':>5} | "
        f"{'LiWi MB':>7} {'Qwen MB':>7} {'peak x':>6} | {'call MB':>7} {'Qwen':>6} {'call x':>6} | same latents"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        liwi, qwen = row["liwi"], row["qwen"]
        same = "-" if row["same_latents"] is None else ("yes" if row["same_latents"] else "NO")
        print(
            f"{row['size']:>4} {row['path']:>8} | {liwi['wall_s']:>7.3f} {qwen['wall_s']:>7.3f} "
            f"{row['wall_ratio']:>6.3f} {row['wall_median_ratio']:>6.3f} {row['cpu_ratio']:>6.3f} "
            f"{100 * row['own_steps_share']:>5.1f} | "
            f"{liwi['peak_rss_mb']:>7.0f} {qwen['peak_rss_mb']:>7.0f} {row['peak_rss_ratio']:>6.3f} | "
            f"{liwi['call_peak_mb']:>7.1f} {qwen['call_peak_mb']:>6.1f} {row['call_peak_ratio']:>6.3f} | {same}"
        )
    payload = {
        "benchmark": "LiWiDecompositionPipeline vs QwenImageLayeredPipeline (benchmarks/bench_pipeline_vs_qwen.py)",
        "definitions": {
            "wall_ratio": "fastest wall time of one call, LiWi / Qwen",
            "wall_median_ratio": "median wall time of one call, LiWi / Qwen (a check on the fastest)",
            "own_steps_share": "median time of LiWi's own steps (layers_from_frames: alpha decoder, shadow head, "
            "reconcile, check) over LiWi's median wall time: what LiWi adds to the shared work",
            "cpu_ratio": "the same in process CPU time (less disturbed by other processes)",
            "peak_rss_ratio": "peak resident memory of the process during one call, LiWi / Qwen (least of the runs)",
            "call_peak_ratio": "peak resident memory during one call above the memory held before it, LiWi / Qwen "
            "(least of the runs)",
        },
        "num_layers": args.layers,
        "steps": args.steps,
        "repeats": args.repeats,
        "load_average_1min_at_end": os.getloadavg()[0],
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
        "rows": rows,
    }
    write_results(args.output, payload, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
