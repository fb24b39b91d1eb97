#!/usr/bin/env bash
# Retrain the four toy models on one GPU, each in its own process (tiny models leave the GPU mostly
# idle, so they share it well): about 6 minutes on an H200. The commands are the ones recorded in each
# shipped model's training.json. On a GPU runs are seeded, not bit-exact.
# Usage: bash mambalrp_tools/zoo/train_all.sh OUTDIR      (OUTDIR/<name>/ then holds each model)
set -u
out=${1:-runs/zoo}
mkdir -p "$out"
run() {
  local name=$1; shift
  python3 -m mambalrp_tools.cli train-toy "$name" --device cuda --engine hf --out "$out/$name" "$@" \
    > "$out/$name.log" 2>&1
  echo "$name rc=$?"
}
run copying   --steps 4195 --seed 0 --batch-size 128 --lr 3e-3 --workers 2 &
run needle    --steps 4790 --seed 1 --batch-size 32 --lr 1e-3 --workers 5 &
run bios      --steps 6470 --seed 0 --batch-size 64 --lr 3e-3 --workers 1 &
run sentiment --steps 8994 --seed 0 --batch-size 64 --lr 3e-3 --workers 1 &
wait
