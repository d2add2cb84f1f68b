"""LiWiDecompositionPipeline and QwenImageLayeredPipeline at Qwen-Image-Layered's real size, random weights.

Builds Qwen-Image-Layered's transformer and RGBA VAE from their published configs (written below; nothing is
downloaded) with random weights in bf16, plus LiWi's heads in their default configs, and runs both pipelines
on the same photo (skimage's astronaut at 640 x 640), 4 layers (LiWi: background + 3 objects; Qwen: 4 layers,
counting the background; both generate Qwen's leading composite frame), 20 steps, seed 0, without classifier-free
guidance. For each pipeline and memory mode it reports seconds per denoising step, seconds end to end and the
peak GPU memory; for LiWi also the share of its heads (alpha decoder, shadow head) and of reconcile (colour
reconciliation and the recomposition check, on the CPU). Memory modes:

- ``gpu``: every model on the GPU;
- ``model_offload``: ``pipe.enable_model_cpu_offload()`` (each model moves to the GPU when it runs);
- ``group_offload``: the transformer's blocks stream from the CPU, one block at a time
  (``transformer.enable_group_offload(..., offload_type="block_level", num_blocks_per_group=1, use_stream=True)``),
  the other models stay on the GPU.

Random weights: the transformer's last projection (``proj_out``) is zeroed so that 60 random blocks cannot drive
the latents to inf/NaN (a dense matmul costs the same with zeros); everything else keeps diffusers' default
initialisation. The time of a call does not depend on the weights' values.

Sources of the configs (read with the ``search`` tool; values written here by hand):
- transformer: Qwen-Image-Layered's ``transformer/config.json``, as mirrored at
  https://huggingface.co/Runware/Qwen-Image-Layered/blob/main/transformer/config.json and
  https://huggingface.co/diffusers/Qwen-Image-Layered-modular/blob/main/transformer/config.json (the latter
  bnb-4bit quantised, same architecture values);
- VAE: Qwen-Image's ``vae/config.json`` (e.g. https://huggingface.co/wavespeed/Qwen-Image-e4m3/blob/refs%2Fpr%2F2/vae/config.json;
  the same values are the defaults of diffusers' ``AutoencoderKLQwenImage.__init__`` in 0.42.1) with
  ``input_channels=4``, Qwen-Image-Layered's RGBA VAE (``QwenImageLayeredPipeline`` encodes RGBA images);
- scheduler: https://huggingface.co/diffusers/Qwen-Image-Layered-modular/blob/refs%2Fpr%2F3/scheduler/scheduler_config.json.

``QwenImageLayeredPipeline`` (diffusers 0.42.1) work-arounds, as in benchmarks/bench_pipeline_vs_qwen.py: a
stand-in ``text_encoder`` with only ``dtype``, a dummy ``prompt`` next to precomputed ``prompt_embeds`` (one zero
token, LiWi's empty-prompt embedding, for both pipelines) and, off 640/1024 (``--tiny``), a replaced
``calculate_dimensions``.

    bash benchmarks/gpu/run.sh                 # on a GPU machine: JSON in benchmarks/results/gpu_pipeline.json
    python benchmarks/gpu/bench_gpu.py --tiny  # the same end to end on the CPU with the tiny configs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"

QWEN_IMAGE_LAYERED_CONFIGS: dict[str, dict[str, Any]] = {
    "transformer": {
        "patch_size": 2,
        "in_channels": 64,
        "out_channels": 16,
        "num_layers": 60,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 3584,
        "guidance_embeds": False,
        "axes_dims_rope": (16, 56, 56),
        "zero_cond_t": False,
        "use_additional_t_cond": True,
        "use_layer3d_rope": True,
    },
    "vae": {
        "base_dim": 96,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "dropout": 0.0,
        "input_channels": 4,
        "latents_mean": [
            -0.7571,
            -0.7089,
            -0.9113,
            0.1075,
            -0.1745,
            0.9653,
            -0.1517,
            1.5508,
            0.4134,
            -0.0715,
            0.5517,
            -0.3632,
            -0.1922,
            -0.9497,
            0.2503,
            -0.2921,
        ],
        "latents_std": [
            2.8184,
            1.4541,
            2.3275,
            2.6558,
            1.2196,
            1.7708,
            2.6052,
            2.0743,
            3.2687,
            2.1526,
            2.8652,
            1.5579,
            1.6382,
            1.1253,
            2.8251,
            1.916,
        ],
    },
    "scheduler": {
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "invert_sigmas": False,
        "max_image_seq_len": 8192,
        "max_shift": 0.9,
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "shift_terminal": None,  # false in the file: no terminal shift
        "stochastic_sampling": False,
        "time_shift_type": "linear",
        "use_beta_sigmas": False,
        "use_dynamic_shifting": True,
        "use_exponential_sigmas": False,
        "use_karras_sigmas": False,
    },
    "shadow_head": {},  # LiWi's defaults
    "alpha_decoder": {},
}
MODES = ("gpu", "model_offload", "group_offload")


class PartTimers:
    """Wall time of wrapped callables and of modules' forward calls, synchronising the device around each."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._starts: dict[int, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, part: str, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[part] += time.perf_counter() - start

        return timed

    def hook(self, part: str, module: torch.nn.Module) -> list[Any]:
        """Time ``module``'s calls with forward hooks, which run whatever replaced its ``forward`` (offload
        hooks do); returns the handles to remove."""

        def before(mod: torch.nn.Module, args: Any) -> None:
            self.sync()
            self._starts[id(mod)] = time.perf_counter()

        def after(mod: torch.nn.Module, args: Any, output: Any) -> None:
            self.sync()
            self.seconds[part] += time.perf_counter() - self._starts.pop(id(mod))

        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def build_models(tiny: bool, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """The shared models with random weights (seed 0), in ``dtype``, created on ``device``."""
    from diffusers.models import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

    from liwi_diffusers.models.alpha_decoder import AlphaDecoder
    from liwi_diffusers.models.shadow_head import ShadowHead
    from liwi_diffusers.pipelines.tiny import TINY_CONFIGS

    configs = TINY_CONFIGS if tiny else QWEN_IMAGE_LAYERED_CONFIGS
    classes = {
        "transformer": QwenImageTransformer2DModel,
        "vae": AutoencoderKLQwenImage,
        "shadow_head": ShadowHead,
        "alpha_decoder": AlphaDecoder,
    }
    torch.manual_seed(0)
    models: dict[str, Any] = {"scheduler": FlowMatchEulerDiscreteScheduler(**configs["scheduler"])}
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random initialisation directly in bf16, on the device: no fp32 copy
    try:
        with torch.device(device):
            for name, cls in classes.items():
                models[name] = cls(**configs[name]).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    with torch.no_grad():
        models["transformer"].proj_out.weight.zero_()
        models["transformer"].proj_out.bias.zero_()
    return models


def build_pipelines(models: dict[str, Any], size: int) -> dict[str, Any]:
    from diffusers import QwenImageLayeredPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_layered

    from liwi_diffusers import LiWiDecompositionPipeline

    liwi = LiWiDecompositionPipeline(**models, leading_composite_frame=True, default_resolution=size)
    qwen = QwenImageLayeredPipeline(
        scheduler=models["scheduler"],
        vae=models["vae"],
        text_encoder=None,
        tokenizer=None,
        processor=None,
        transformer=models["transformer"],
    )
    # Work-arounds for QwenImageLayeredPipeline 0.42.1 (see the module docstring).
    object.__setattr__(qwen, "text_encoder", types.SimpleNamespace(dtype=models["transformer"].dtype))
    if size not in (640, 1024):
        pipeline_qwenimage_layered.calculate_dimensions = lambda area, ratio: (size, size)
    for pipe in (liwi, qwen):
        pipe.set_progress_bar_config(disable=True)
    return {"liwi": liwi, "qwen": qwen}


def make_call(which: str, pipe: Any, photo: PIL.Image.Image, layers: int, steps: int, step_times: list) -> Any:
    """``call(steps)`` running one decomposition; appends the time of each denoising step to ``step_times``."""
    device = pipe._execution_device  # QwenImageLayeredPipeline does not move given prompt_embeds to it
    embeds = torch.zeros(1, 1, pipe.transformer.config.joint_attention_dim, dtype=pipe.transformer.dtype, device=device)
    mask = torch.ones(1, 1, dtype=torch.long, device=device)
    state = {"last": 0.0}

    def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        step_times.append(now - state["last"])
        state["last"] = now
        return {}

    def on_start() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state["last"] = time.perf_counter()

    def call(num_steps: int = steps) -> Any:
        common = {
            "num_inference_steps": num_steps,
            "generator": torch.Generator().manual_seed(0),
            "prompt_embeds": embeds,
            "prompt_embeds_mask": mask,
            "output_type": "np",
            "callback_on_step_end": on_step_end,
        }
        on_start()
        if which == "liwi":
            return pipe(photo, num_layers=layers - 1, resolution=photo.width, **common)
        return pipe(
            photo.convert("RGBA"),
            prompt="unused: prompt_embeds are given",
            layers=layers,
            resolution=640,
            true_cfg_scale=1.0,  # its default is 4.0, inactive without a negative prompt
            **common,
        )

    # The first step's time also covers the VAE encoding and the set-up before the loop.
    return call, on_start


def run_mode(
    mode: str, which: str, pipes: dict[str, Any], photo: PIL.Image.Image, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    pipe = pipes[which]
    if mode == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    steps = args.steps
    step_times: list[float] = []
    call, _ = make_call(which, pipe, photo, args.layers, steps, step_times)

    timers = PartTimers(device)
    handles: list[Any] = []
    originals: dict[str, Any] = {}
    if which == "liwi":
        from liwi_diffusers.pipelines import pipeline_liwi

        handles = timers.hook("heads", pipe.alpha_decoder) + timers.hook("heads", pipe.shadow_head)
        originals = {"reconcile": pipeline_liwi.reconcile_colours, "check": pipeline_liwi.check_decomposition}
        pipeline_liwi.reconcile_colours = timers.wrap("reconcile", originals["reconcile"])
        pipeline_liwi.check_decomposition = timers.wrap("reconcile", originals["check"])
    try:
        call(args.warmup_steps)  # warm-up: kernels, allocator, offload hooks, pinned memory
        timers.seconds.clear()
        step_times.clear()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        out = call(steps)
        timers.sync()
        total = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
        if originals:
            from liwi_diffusers.pipelines import pipeline_liwi

            pipeline_liwi.reconcile_colours = originals["reconcile"]
            pipeline_liwi.check_decomposition = originals["check"]
        if mode == "model_offload":
            pipe.remove_all_hooks()
    result: dict[str, Any] = {
        "pipeline": which,
        "mode": mode,
        "steps": steps,
        "end_to_end_s": round(total, 3),
        # The first step also covers the VAE encoding before the loop: the median of the others is the step cost.
        "seconds_per_step": round(float(np.median(step_times[1:] if len(step_times) > 1 else step_times)), 4),
        "denoising_s": round(sum(step_times), 3),
        "peak_gpu_memory_gib": (
            round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
        ),
        "peak_gpu_memory_reserved_gib": (
            round(torch.cuda.max_memory_reserved(device) / 2**30, 2) if device.type == "cuda" else None
        ),
    }
    if which == "liwi":
        result["heads_s"] = round(timers.seconds["heads"], 4)
        result["reconcile_s"] = round(timers.seconds["reconcile"], 4)
        result["heads_share"] = round(timers.seconds["heads"] / total, 4)
        result["reconcile_share"] = round(timers.seconds["reconcile"] / total, 4)
        result["recomposition_max_abs_error"] = round(out.recomposition[0].max_abs_error, 6)
        result["output_layers"] = int(np.asarray(out.images[0]).shape[0])
    else:
        result["output_layers"] = len(out.images[0])
    return result


def place(models: dict[str, Any], mode: str, device: torch.device) -> None:
    """Put the models where ``mode`` wants them before a pipeline runs."""
    modules = [m for m in models.values() if isinstance(m, torch.nn.Module)]
    if mode == "gpu":
        for module in modules:
            module.to(device)
    elif mode == "model_offload":
        for module in modules:
            module.to("cpu")  # enable_model_cpu_offload moves each to the device when it runs
    else:
        transformer = models["transformer"]
        transformer.to("cpu")
        for module in modules:
            if module is not transformer:
                module.to(device)
        transformer.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=device.type == "cuda",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (an end-to-end check)")
    parser.add_argument("--size", type=int, default=None, help="photo and processing size (default 640; tiny 64)")
    parser.add_argument("--layers", type=int, default=4, help="layers, counting the background (Qwen's `layers`)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=1, help="steps of the warm-up call before each run")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--budget-s", type=float, default=None, help="skip runs that would end after this (default 540; tiny: none)"
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()

    if args.tiny:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        sys.exit("bench_gpu.py: no CUDA device; use --tiny for the CPU check with the tiny configs")
    size = args.size or (64 if args.tiny else 640)
    budget_s = args.budget_s if args.budget_s is not None else (float("inf") if args.tiny else 540.0)
    output = args.output or RESULTS / ("gpu_pipeline_tiny.json" if args.tiny else "gpu_pipeline.json")

    from skimage import data

    photo = PIL.Image.fromarray(data.astronaut()).resize((size, size), PIL.Image.BICUBIC)
    build_start = time.perf_counter()
    models = build_models(args.tiny, torch.bfloat16, device)
    build_s = time.perf_counter() - build_start
    pipes = build_pipelines(models, size)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items() if hasattr(m, "parameters")}
    print(f"built the models in {build_s:.1f} s: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in params.items()))

    runs, skipped = [], []
    durations: dict[str, float] = {}
    for mode in [m for m in MODES if m in args.modes]:  # group offload last: its hooks stay on the transformer
        placed = False
        for which in ("liwi", "qwen"):
            elapsed = time.perf_counter() - started
            # A run of this mode takes about as long as its first run, or as a gpu run when it is the first.
            estimate = durations.get(mode, durations.get("gpu", 0.0))
            if elapsed + estimate > budget_s:
                skipped.append({"mode": mode, "pipeline": which, "reason": f"time budget ({elapsed:.0f} s used)"})
                print(f"skip {which} {mode}: {elapsed:.0f} s used of {budget_s:.0f}")
                continue
            if not placed:  # once per mode: both pipelines share the models
                place(models, mode, device)
                placed = True
            run_start = time.perf_counter()
            try:
                result = run_mode(mode, which, pipes, photo, args, device)
            except Exception as error:  # one failed run (e.g. out of memory) must not lose the others' figures
                skipped.append({"mode": mode, "pipeline": which, "reason": f"{type(error).__name__}: {error}"})
                print(f"FAILED {which} {mode}: {type(error).__name__}: {error}", file=sys.stderr)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            durations.setdefault(mode, time.perf_counter() - run_start)
            runs.append(result)
            print(json.dumps(result))
    rows = _ratios(runs)

    import diffusers

    payload = {
        "benchmark": "LiWi vs QwenImageLayeredPipeline, Qwen-Image-Layered sizes, random bf16 weights "
        "(benchmarks/gpu/bench_gpu.py)",
        "tiny": args.tiny,
        "size": size,
        "layers": args.layers,
        "steps": args.steps,
        "true_cfg": False,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "parameters": params,
        "build_s": round(build_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "runs": runs,
        "ratios": rows,
        "skipped": skipped,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, output)
    _print_table(runs, rows)
    print(f"wrote {output} ({payload['total_s']} s in all)")


def _ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(r["mode"], r["pipeline"]): r for r in runs}
    rows = []
    for mode in MODES:
        liwi, qwen = by_key.get((mode, "liwi")), by_key.get((mode, "qwen"))
        if liwi is None or qwen is None:
            continue
        row = {
            "mode": mode,
            "end_to_end_ratio": round(liwi["end_to_end_s"] / qwen["end_to_end_s"], 3),
            "step_ratio": round(liwi["seconds_per_step"] / qwen["seconds_per_step"], 3),
        }
        if liwi["peak_gpu_memory_gib"] is not None:
            row["peak_gpu_memory_ratio"] = round(liwi["peak_gpu_memory_gib"] / qwen["peak_gpu_memory_gib"], 3)
        rows.append(row)
    return rows


def _print_table(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    header = f"{'mode':>14} {'pipeline':>8} {'s/step':>8} {'e2e s':>8} {'peak GiB':>9} {'heads':>7} {'reconcile':>9}"
    print(header)
    print("-" * len(header))
    for r in runs:
        peak = "-" if r["peak_gpu_memory_gib"] is None else f"{r['peak_gpu_memory_gib']:.2f}"
        heads = f"{100 * r['heads_share']:.1f}%" if "heads_share" in r else "-"
        reconcile = f"{100 * r['reconcile_share']:.1f}%" if "reconcile_share" in r else "-"
        print(
            f"{r['mode']:>14} {r['pipeline']:>8} {r['seconds_per_step']:>8.3f} {r['end_to_end_s']:>8.2f} "
            f"{peak:>9} {heads:>7} {reconcile:>9}"
        )
    for row in rows:
        print(f"LiWi / Qwen, {row['mode']}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "mode"))


if __name__ == "__main__":
    main()
