#!/usr/bin/env bash
# The paper's ablation (paper-facts.md §1, Tables 1–3) on real Show-o, one command per row, all from
# recipes/showo-paper.yaml. Needs a CUDA machine, the weights listed in that recipe, GenEval's
# evaluate_images.py with its detector, and the 13K training prompts. Usage:
#   bash recipes/ablation-showo.sh [row ...]      (default: every row, in order)
# Rows: baseline orm-zs orm-ft parm dpo itdpo itdpo-parm itdpo-parm-bo20
set -euo pipefail
BIN=${IMGCOT_BIN:-imgcot-train}
R=recipes/showo-paper.yaml
OUT=${OUT:-runs/ablation-showo}
OFFICIAL="python geneval/evaluation/evaluate_images.py {images} --outfile {outfile} --model-path {model_path}"
geneval() { # geneval <row> <checkpoint> [extra flags]
  local row=$1 ckpt=$2; shift 2
  "$BIN" eval geneval --recipe "$R" --ckpt "$ckpt" --images "$OUT/$row" --images-per-prompt 4 \
    --score official --official-cmd "$OFFICIAL" --model-path ckpts/geneval-detector "$@"
}
row() {
  case $1 in
    baseline)   geneval baseline ckpts/show-o ;;                                           # 0.53
    orm-zs)     geneval orm-zs ckpts/show-o --verify orm --n 20 --judge ckpts/llava-ov-7b ;;  # 0.61
    orm-ft)     geneval orm-ft ckpts/show-o --verify orm --n 20 --judge ckpts/orm_ft ;;       # 0.63
    parm)       geneval parm ckpts/show-o --verify parm --n 20 --judge ckpts/parm ;;          # 0.67
    # Initial DPO: base samples labelled yes/no by the fine-tuned ORM, one round.          # 0.62
    dpo)        "$BIN" dpo --recipe "$R" --iter 1 --guide none --run showo-dpo ;;
    # Iterative DPO: a second round sampled with the round-1 policy.                        # 0.65
    itdpo)      "$BIN" dpo --recipe "$R" --iter 2 --guide none --run showo-itdpo ;;
    # Iterative DPO + PARM guidance (pairs still labelled by the ORM, as the paper does).     # 0.69
    itdpo-parm) "$BIN" dpo --recipe "$R" --iter 2 --guide parm --labeller orm --run showo-itdpo-parm ;;
    # ... + PARM best-of-20 on the final policy (also the run's final+parm@20 row).            # 0.77
    itdpo-parm-bo20) geneval itdpo-parm-bo20 ckpts/showo-itdpo-parm/iter-2/final --verify parm --n 20 --judge ckpts/parm ;;
    *) echo "unknown row '$1'" >&2; exit 2 ;;
  esac
}
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(baseline orm-zs orm-ft parm dpo itdpo itdpo-parm itdpo-parm-bo20)
for r in "${rows[@]}"; do echo "== $r"; row "$r"; done
