#!/usr/bin/env bash
# The paper's ablation rows on the glyph world (CPU), one command per row, from the embedded
# recipes/glyphs.yaml (8 images per prompt, best-of-8 with 2 picks per prompt, same seeds).
# The glyph world has no zero-shot judge: ORM and PARM are the small judges `reward-ft` trains.
# Missing base generator or judges are trained first by the `dpo --iter` rows. Usage:
#   bash recipes/ablation-glyphs.sh [row ...]     (default: every row, in order)
# Rows: baseline orm parm dpo itdpo itdpo-parm itdpo-parm-bo8
set -euo pipefail
BIN=${IMGCOT_BIN:-imgcot-train}
OUT=${OUT:-runs/ablation-glyphs}
verified() { # verified <row> <checkpoint> <orm|parm> <judge>
  "$BIN" eval geneval --ckpt "$2" --metadata data/glyphs/eval_metadata.jsonl --seed 1234 \
    --images "$OUT/$1" --images-per-prompt 2 --verify "$3" --n 8 --judge "$4" --score glyph
}
row() {
  case $1 in
    baseline)   "$BIN" eval --images-per-prompt 8 --out "$OUT/baseline" ;;
    orm)        verified orm ckpts/glyphs/base orm ckpts/glyphs/orm ;;
    parm)       verified parm ckpts/glyphs/base parm ckpts/glyphs/parm ;;
    dpo)        "$BIN" dpo --iter 1 --guide none --run glyphs-dpo ;;
    itdpo)      "$BIN" dpo --iter 2 --guide none --run glyphs-itdpo ;;
    itdpo-parm) "$BIN" dpo --iter 2 --guide parm --labeller orm --run glyphs-itdpo-parm ;;
    itdpo-parm-bo8) verified itdpo-parm-bo8 ckpts/glyphs-itdpo-parm/iter-2/final parm ckpts/glyphs/parm ;;
    *) echo "unknown row '$1'" >&2; exit 2 ;;
  esac
}
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(baseline orm parm dpo itdpo itdpo-parm itdpo-parm-bo8)
for r in "${rows[@]}"; do echo "== $r"; row "$r"; done
