#!/usr/bin/env bash
# How the shipped toy models were trained: all at once on one GPU, each in its own process
# (tiny models leave the GPU mostly idle, so they share it well). Two seeds / learning rates for the
# two hard tasks; the better run that meets its bar is the one shipped (its training.json says which).
# Usage: bash mambalrp_tools/zoo/train_all.sh OUTDIR [BUDGET_S]
set -u
out=${1:-runs/zoo}; budget=${2:-300}
mkdir -p "$out"
run() {
  local tag=$1; shift
  python3 -m mambalrp_tools.cli train-toy "$@" --device cuda --out "$out/$tag" > "$out/$tag.log" 2>&1
  echo "$tag rc=$?"
}
run copying      copying --seed 0 --time-budget "$budget" --workers 2 &
run copying_lr1  copying --seed 1 --lr 1e-3 --time-budget "$budget" --workers 2 &
run needle       needle --seed 0 --time-budget "$budget" --workers 5 &
run needle_lr1   needle --seed 1 --lr 1e-3 --time-budget "$budget" --workers 5 &
run bios         bios --seed 0 --time-budget 120 --workers 1 &
run sentiment    sentiment --seed 0 --time-budget 120 --workers 1 &
wait
