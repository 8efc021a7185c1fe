#!/bin/bash
# Multi-GPU finetuning through accelerate against one GPU at the same global batch (128): examples/finetune.py,
# seq2seq, T5 v1.1-base shape from random init, 300 steps, bf16, on the first 1920 shipped QA examples (15 global
# batches an epoch, so that every run sees the same examples in each step). Needs 2 GPUs; run from the repository root:
#   bash benchmarks/bench_multi_gpu.sh OUT_DIR
# Each run's results.json (loss curve, samples/s) lands in OUT_DIR/<run>.json.
set -u
OUT_DIR=$(realpath -m "$1")
mkdir -p "$OUT_DIR"
export PYTHONPATH=$PWD/src:$PWD/examples TOKENIZERS_PARALLELISM=false
# NVLink multicast (NVLS) is off: not every machine that has NVLink allows it.
export NCCL_NVLS_ENABLE=0
WORK=$(mktemp -d)
python benchmarks/make_base_checkpoint.py "$WORK/base"
COMMON=(--head seq2seq --model "$WORK/base" --max-steps 300 --bf16 --skip-initial-eval --no-reload-check --quiet
  --max-eval-examples 64 --max-train-examples 1920)
run() {
  local name=$1
  shift
  "$@" "${COMMON[@]}" --output-dir "$WORK/$name" && cp "$WORK/$name/results.json" "$OUT_DIR/$name.json"
}
run single_gpu_batch128 env CUDA_VISIBLE_DEVICES=0 python examples/finetune.py --batch-size 128
run single_gpu_2x64_accumulated env CUDA_VISIBLE_DEVICES=0 python examples/finetune.py --batch-size 64 \
  --gradient-accumulation-steps 2
run single_gpu_batch128_seed43 env CUDA_VISIBLE_DEVICES=0 python examples/finetune.py --batch-size 128 --seed 43
run ddp_2x64 accelerate launch --config_file examples/accelerate/ddp.yaml --num_processes 2 examples/finetune.py \
  --batch-size 64
run fsdp_2x64 accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 2 examples/finetune.py \
  --batch-size 64
rm -rf "$WORK"
