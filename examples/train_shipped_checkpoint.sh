#!/usr/bin/env bash
# Reproduce the small LiWi checkpoint shipped in src/liwi_diffusers/checkpoints/liwi-small/ from nothing:
#   1. build the sample dataset with the ADD builder from photos bundled in installed packages,
#   2. train the small configuration from scratch (full training, VAE included) on CPU,
#   3. copy the pipeline folder into the package,
#   4. score it and the tool-chain decomposer on the held-out split with `liwi evaluate`.
# About 12 minutes of training on 2 CPU cores at 128 px: 150 steps of the VAE alone (from scratch, then its
# latent statistics are measured and it is frozen), then 400 steps of 4 samples with every objective.
#
#   bash examples/train_shipped_checkpoint.sh [WORK_DIR]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-/tmp/liwi-small-recipe}"
DATASET="$WORK/liwi-sample"
RUN="$WORK/full"
TARGET="$REPO/src/liwi_diffusers/checkpoints/liwi-small"
THREADS="${THREADS:-2}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" HF_DATASETS_OFFLINE=1

mkdir -p "$WORK"
if [ ! -f "$DATASET/README.md" ]; then
  python -m liwi_dataset_builder.sample_data "$DATASET" -n 240 -r 128
fi

python -m accelerate.commands.launch --num_processes 1 --num_machines 1 --cpu --mixed_precision no \
  --dynamo_backend no --num_cpu_threads_per_process "$THREADS" \
  "$REPO/examples/train_lora.py" \
  --from_scratch small --train_mode full \
  --dataset_name "$DATASET" --resolution 128 --train_batch_size 4 \
  --vae_pretrain_steps 150 --max_train_steps 400 --learning_rate 5e-4 --lr_warmup_steps 20 --seed 0 \
  --checkpointing_steps 100000 --validation_split "" --report_to none \
  --output_dir "$RUN"

# The pipeline folder only (no training state), into the package.
rm -rf "$TARGET"
mkdir -p "$TARGET"
cp -r "$RUN"/model_index.json "$RUN"/README.md "$RUN"/training_summary.json \
  "$RUN"/scheduler "$RUN"/transformer "$RUN"/vae "$RUN"/shadow_head "$RUN"/alpha_decoder "$TARGET"/
du -sh "$TARGET"

liwi evaluate --method pipeline --checkpoint "$TARGET" --dataset "$DATASET" --split test \
  --pipeline-resolution 128 --steps 20 --seed 0 --device cpu -o "$WORK/eval-liwi-small.json"
liwi evaluate --method toolchain --dataset "$DATASET" --split test -o "$WORK/eval-toolchain.json"
