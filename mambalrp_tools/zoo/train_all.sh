#!/usr/bin/env bash
# Retrain the toy models on one GPU, each in its own process (tiny models leave the GPU mostly
# idle, so they share it well): about 6 minutes on an H200. Every hyperparameter comes from the
# recipes in zoo/train.py (SPECS), the ones each shipped model's training.json records. On a GPU runs
# are seeded, not bit-exact.
# Usage: bash mambalrp_tools/zoo/train_all.sh OUTDIR      (OUTDIR/<name>/ then holds each model)
set -u
out=${1:-runs/zoo}
mkdir -p "$out"
run() {
  local name=$1
  python3 -m mambalrp_tools.cli train-toy "$name" --device cuda --out "$out/$name" \
    > "$out/$name.log" 2>&1
  echo "$name rc=$?"
}
for name in copying needle needle-mamba2 bios sentiment; do
  run "$name" &
done
wait
