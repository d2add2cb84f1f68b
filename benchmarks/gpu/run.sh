#!/usr/bin/env bash
# The prepared GPU benchmark: LiWiDecompositionPipeline vs QwenImageLayeredPipeline at Qwen-Image-Layered's real
# size (random bf16 weights from the published configs; nothing is downloaded), 640 px, 4 layers, 20 steps, on the
# GPU, with model CPU offload and with group offload. Sized for 10 minutes on one H200: runs that would start
# after --budget-s (default 540 s) are skipped and listed in the JSON. Extra arguments go to bench_gpu.py, e.g.
#   bash benchmarks/gpu/run.sh                  # -> benchmarks/results/gpu_pipeline.json
#   bash benchmarks/gpu/run.sh --tiny           # tiny configs on the CPU -> benchmarks/results/gpu_pipeline_tiny.json
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ " $* " != *" --tiny "* ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
exec timeout 600 python benchmarks/gpu/bench_gpu.py "$@"
