#!/usr/bin/env bash
# The prepared GPU check (shared/design/gpu-checks.md): one run on a machine with one H100/H200,
# PyTorch 2.11.0 (CUDA 13.0) for its python3, no Rust toolchain. Build here first
# (`make build`), carry target/release/imgcot-train, then run this script there.
# Prints: CUDA seen, full-size Show-o generation (bf16/fp32, best-of-8 and batched vs sequential),
# MAGVIT-v2 decode, a full-size DPO step with 10 pairs (frozen vs precomputed reference), and the
# GPU memory in use after each (nvidia-smi).
set -uo pipefail
BIN=${BIN:-target/release/imgcot-train}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
mem() { nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader | tee -a "$OUT/log.txt"; }
run() { echo "+ $*" | tee -a "$OUT/log.txt"; timeout 240 "$@" 2>&1 | tee -a "$OUT/log.txt"; mem; }
readelf -d "$BIN" | grep -q torch_cuda && echo "binary links libtorch_cuda" | tee -a "$OUT/log.txt"
run "$BIN" doctor
run "$BIN" bench sampler --size full --device cuda --dtype bf16 --n 8 --reps 2
run "$BIN" bench sampler --size full --device cuda --dtype fp32 --n 8 --reps 2
run "$BIN" bench sampler --size full --device cuda --dtype bf16 --n 20 --reps 1
run "$BIN" bench vq --device cuda --n 8 --reps 3
run "$BIN" bench dpo-step --size full --device cuda --dtype fp32 --n 10 --reps 3
run "$BIN" bench dpo-step --size full --device cuda --dtype bf16 --n 10 --reps 3
