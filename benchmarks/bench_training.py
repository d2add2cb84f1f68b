"""Training ablation at small scale (paper section 5.4 style) and training throughput on CPU.

Builds the sample dataset with the ADD builder, trains the small from-scratch configuration three times
(full method, without shadow-guided learning, without degradation-restoration) with `examples/train_lora.py`,
scores each on the held-out split with `liwi evaluate --method pipeline`, scores the tool-chain decomposer the
same way, measures training throughput at 256 px, prints the table and writes
``benchmarks/results/training.json``. With several ``--seeds`` every run is trained once per seed (training
and evaluation seed) and the table gives the mean and the sample standard deviation over seeds, so that
differences can be told from noise:

    python benchmarks/bench_training.py --work-dir /tmp/liwi-bench-training --seeds 0 1 2 \
        --reuse-vae /tmp/liwi-small-recipe/full

Layout: ``WORK_DIR/liwi-sample`` (the dataset), ``WORK_DIR/seed<N>/<run>`` (runs, each with its ``eval.json``),
``WORK_DIR/toolchain.json``. Runs and evaluations already in ``--work-dir`` are reused (delete them to redo).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "train_lora.py"
ABLATIONS = {
    "full": [],
    "no_shadow_guidance": ["--no_shadow_guidance"],
    "no_degradation_restoration": ["--no_degradation_restoration"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/liwi-bench-training"))
    parser.add_argument("--num-samples", type=int, default=240, help="dataset size (train + test)")
    parser.add_argument("--resolution", type=int, default=128, help="dataset and training resolution")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per training run (layer stage)")
    parser.add_argument("--vae-pretrain-steps", type=int, default=150, help="VAE-only steps before (0: joint)")
    parser.add_argument(
        "--reuse-vae",
        type=Path,
        default=None,
        help="a run folder whose vae_pretrained/ every run starts from (skips the VAE stage; "
        "e.g. the recipe's run, so that all runs share one VAE)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training run per seed and run")
    parser.add_argument("--eval-steps", type=int, default=20, help="denoising steps at evaluation")
    parser.add_argument("--eval-limit", type=int, default=None, help="only the first N held-out samples")
    parser.add_argument("--only", choices=sorted(ABLATIONS), nargs="*", help="train and score only these runs")
    parser.add_argument("--throughput-resolution", type=int, default=256)
    parser.add_argument("--throughput-steps", type=int, default=20)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "training.json")
    return parser.parse_args()


def run(command: list[str], threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_DATASETS_OFFLINE="1")
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def train_command(args: argparse.Namespace, dataset: Path, output: Path, extra: list[str], seed: int) -> list[str]:
    """The recipe of `examples/train_shipped_checkpoint.sh` (same arguments give the same model)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--cpu",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        str(args.threads),
        str(SCRIPT),
        "--from_scratch",
        "small",
        "--train_mode",
        "full",
        "--dataset_name",
        str(dataset),
        "--resolution",
        str(args.resolution),
        "--train_batch_size",
        str(args.batch_size),
        "--vae_pretrain_steps",
        str(args.vae_pretrain_steps),
        "--max_train_steps",
        str(args.steps),
        "--learning_rate",
        str(args.learning_rate),
        "--lr_warmup_steps",
        "20",
        "--seed",
        str(seed),
        "--checkpointing_steps",
        "100000",
        "--validation_split",
        "",
        "--report_to",
        "none",
        "--output_dir",
        str(output),
        *extra,
    ]


def evaluate(
    args: argparse.Namespace, dataset: Path, method: str, output: Path, checkpoint: Path | None, seed: int = 0
) -> dict:
    if not output.is_file():
        command = [
            "liwi",
            "evaluate",
            "--method",
            method,
            "--dataset",
            str(dataset),
            "--split",
            "test",
            "-o",
            str(output),
        ]
        if checkpoint is not None:
            command += [
                "--checkpoint",
                str(checkpoint),
                "--pipeline-resolution",
                str(args.resolution),
                "--steps",
                str(args.eval_steps),
                "--seed",
                str(seed),
                "--device",
                "cpu",
            ]
        if args.eval_limit:
            command += ["--limit", str(args.eval_limit)]
        run(command, args.threads)
    return json.loads(output.read_text())


def row(report: dict[str, Any]) -> dict[str, Any]:
    """The table's numbers from a `liwi evaluate` report."""
    levels = {level["merges"]: level for level in report["levels"]}
    extras = report.get("extras", {})
    boundary, shadows = extras.get("alpha_boundary", {}), extras.get("shadows", {})
    return {
        "rgb_l1@0": levels[0]["rgb_l1"],
        "alpha_iou@0": levels[0]["alpha_iou"],
        "rgb_l1@5": levels[5]["rgb_l1"],
        "alpha_iou@5": levels[5]["alpha_iou"],
        "boundary_sad": boundary.get("sad"),
        "boundary_gradient": boundary.get("gradient"),
        "shadow_l1": shadows.get("shadow_l1"),
        "shadow_ber": shadows.get("ber"),
        "recomposition_mae": extras.get("recomposition", {}).get("mean_abs_error"),
        "num_evaluated": report["num_evaluated"],
    }


def throughput(args: argparse.Namespace, dataset: Path) -> dict[str, Any]:
    """Samples per second of the shipped configuration's layer stage (full training, frozen pretrained VAE when
    ``--reuse-vae`` is given, otherwise the VAE trained jointly) at 256 px."""
    output = args.work_dir / f"throughput-{args.throughput_resolution}"
    if output.exists():
        shutil.rmtree(output)
    extra = ["--resolution", str(args.throughput_resolution), "--max_train_steps", str(args.throughput_steps)]
    if args.reuse_vae is not None:
        shutil.copytree(args.reuse_vae / "vae_pretrained", output / "vae_pretrained")
    else:
        extra += ["--vae_pretrain_steps", "0"]
    command = train_command(args, dataset, output, [], args.seeds[0])
    run(command + extra, args.threads)
    summary = json.loads((output / "training_summary.json").read_text())
    return {
        "resolution": args.throughput_resolution,
        "batch_size": args.batch_size,
        "steps": summary["global_step"],
        "seconds": summary["train_seconds"],
        "samples_per_second": summary["samples_per_second"],
        "threads": args.threads,
        "vae": "frozen (pretrained)" if args.reuse_vae is not None else "trained jointly",
        "note": "includes the first (slower) step",
    }


def aggregate(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every number in `row`, plus ``<name>_std`` (sample standard deviation) for 2+ seeds."""
    numbers: dict[str, Any] = {"seeds": sorted(runs)}
    for key, value in next(iter(runs.values())).items():
        if not isinstance(value, (int, float)):
            continue
        values = [float(run[key]) for run in runs.values() if run.get(key) is not None]
        numbers[key] = statistics.fmean(values)
        if len(values) > 1:
            numbers[f"{key}_std"] = statistics.stdev(values)
    return numbers


def fmt(value: Any, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if std is None else f"{value:.4f} +- {std:.4f}"


def main() -> None:
    args = parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    dataset = args.work_dir / "liwi-sample"
    if not (dataset / "README.md").is_file():
        run(
            [
                sys.executable,
                "-m",
                "liwi_dataset_builder.sample_data",
                str(dataset),
                "-n",
                str(args.num_samples),
                "-r",
                str(args.resolution),
            ],
            args.threads,
        )

    per_seed: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in ABLATIONS}
    for seed in args.seeds:
        for name, extra in ABLATIONS.items():
            if args.only and name not in args.only:
                continue
            output = args.work_dir / f"seed{seed}" / name
            if not (output / "model_index.json").is_file():
                if args.reuse_vae is not None and not (output / "vae_pretrained").exists():
                    shutil.copytree(args.reuse_vae / "vae_pretrained", output / "vae_pretrained")
                run(train_command(args, dataset, output, extra, seed), args.threads)
            summary = json.loads((output / "training_summary.json").read_text())
            per_seed[name][seed] = row(evaluate(args, dataset, "pipeline", output / "eval.json", output, seed)) | {
                "train_steps": summary["global_step"],
                "train_seconds": summary["train_seconds"],
                "last_losses": summary["last_losses"],
            }
    results: dict[str, Any] = {name: aggregate(runs) for name, runs in per_seed.items() if runs}
    # The tool chain is deterministic and seed-free: scored once.
    results["toolchain"] = row(evaluate(args, dataset, "toolchain", args.work_dir / "toolchain.json", None))

    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpu_threads": args.threads, "device": "cpu"},
        "dataset": {
            "builder": "liwi_dataset_builder.sample_data",
            "num_samples": args.num_samples,
            "resolution": args.resolution,
            "eval_split": "test (held out by source photo)",
        },
        "training": {
            "config": "small (from scratch)",
            "mode": "full",
            "steps": args.steps,
            "vae_pretrain_steps": args.vae_pretrain_steps,
            "shared_vae": str(args.reuse_vae) if args.reuse_vae else None,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "seeds": args.seeds,
        },
        "evaluation": {
            "pipeline_resolution": args.resolution,
            "denoising_steps": args.eval_steps,
            "num_layers": "gt",
            "limit": args.eval_limit,
        },
        "ablation": results,
        "ablation_per_seed": {
            name: {str(seed): numbers for seed, numbers in runs.items()} for name, runs in per_seed.items() if runs
        },
    }
    if not args.skip_throughput:
        report["throughput"] = throughput(args, dataset)

    columns = ["rgb_l1@0", "alpha_iou@0", "rgb_l1@5", "alpha_iou@5", "boundary_sad", "boundary_gradient", "shadow_l1"]
    seeds = f"{len(args.seeds)} seed{'s' if len(args.seeds) > 1 else ''}, mean +- sample std"
    lines = [
        f"| method ({seeds}) | RGB L1 @0 | IoU @0 | RGB L1 @5 | IoU @5 | SAD | gradient | shadow L1 |",
        "| --- " * 8 + "|",
    ]
    for name, numbers in results.items():
        cells = [fmt(numbers.get(column), numbers.get(f"{column}_std")) for column in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if "throughput" in report:
        print(
            f"training throughput at {args.throughput_resolution} px: "
            f"{report['throughput']['samples_per_second']:.3f} samples/s on {args.threads} CPU threads"
        )
    report["table_markdown"] = "\n".join(lines)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
