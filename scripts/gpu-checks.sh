#!/usr/bin/env bash
# The prepared GPU check (shared/design/gpu-checks.md): one run on a machine with one H100/H200,
# PyTorch 2.11.0 (CUDA 13.0) for its python3, no Rust toolchain. Build here first
# (`make build`), carry target/release/imgcot-train, then run this script there.
# Prints: CUDA seen, full-size Show-o generation (bf16/fp32, best-of-8 and batched vs sequential),
# MAGVIT-v2 decode, a full-size DPO step with 10 pairs (frozen vs precomputed reference), a
# LLaVA-OneVision-7B-shaped judge (one forward for P(yes) vs a 100-token cached generate), PARM
# best-of-20 with that judge (batched + pruning vs the paper's sequential loop), one step of the
# guidance term at full size (8 samples, 3 of 18 states replayed, KL penalty), and for each
# command its exit status, wall time, peak GPU memory (nvidia-smi sampled every 200 ms) and the
# memory in use after it.
# Per-command timeouts add up to 10 minutes; each full-size command draws its random weights once.
# Two earlier runs of the script (without guide-step) took 128 s and 133 s in all.
set -uo pipefail
BIN=${BIN:-target/release/imgcot-train}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
mem() { nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader | tee -a "$OUT/log.txt"; }
# run LIMIT CMD...: CMD under `timeout LIMIT`, logged, with nvidia-smi sampling memory.used in the
# background; the largest sample is the command's peak (libtorch's caching allocator included).
run() {
  local limit=$1; shift
  echo "+ $* (timeout ${limit}s)" | tee -a "$OUT/log.txt"
  local samples="$OUT/mem-samples.txt"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$samples" 2>/dev/null &
  local smi=$!
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt"
  local rc=${PIPESTATUS[0]}
  kill "$smi" 2>/dev/null
  wait "$smi" 2>/dev/null
  local peak
  peak=$(sort -n "$samples" | tail -n 1)
  echo "exit $rc after $((SECONDS - start)) s; peak GPU memory used ${peak:-?} MiB" | tee -a "$OUT/log.txt"
  mem
}
readelf -d "$BIN" | grep -q torch_cuda && echo "binary links libtorch_cuda" | tee -a "$OUT/log.txt"
# Most wanted first (issues 4, 5, 6), so a cut-short run still answers them.
run 30 "$BIN" doctor
# DPO step: frozen vs precomputed reference as separate processes, so each peak is its own.
run 45 "$BIN" bench dpo-step --size full --device cuda --dtype bf16 --n 10 --reps 3 --reference frozen
run 45 "$BIN" bench dpo-step --size full --device cuda --dtype bf16 --n 10 --reps 3 --reference precomputed
run 60 "$BIN" bench judge --size full --device cuda --dtype bf16 --reps 3
run 120 "$BIN" bench parm --size full --device cuda --dtype bf16 --n 20
run 45 "$BIN" bench sampler --size full --device cuda --dtype bf16 --n 8 --reps 2
run 40 "$BIN" bench sampler --size full --device cuda --dtype bf16 --n 20 --reps 1
run 45 "$BIN" bench dpo-step --size full --device cuda --dtype fp32 --n 10 --reps 3 --reference frozen
run 45 "$BIN" bench dpo-step --size full --device cuda --dtype fp32 --n 10 --reps 3 --reference precomputed
run 50 "$BIN" bench sampler --size full --device cuda --dtype fp32 --n 8 --reps 2
run 25 "$BIN" bench vq --device cuda --n 8 --reps 3
run 60 "$BIN" bench guide-step --size full --device cuda --dtype bf16 --n 8 --replay-steps 3 --kl-coef 0.1 --reps 3
echo "total $SECONDS s" | tee -a "$OUT/log.txt"
