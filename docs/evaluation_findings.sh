#!/usr/bin/env bash
# The runs behind the "Findings on the embedded models" numbers (docs/evaluation.md). CPU, single thread.
# Usage: bash docs/evaluation_findings.sh OUT_DIR [a|b]   (two halves, to run side by side)
set -euo pipefail
OUT=${1:-runs/findings}
PART=${2:-ab}
export OMP_NUM_THREADS=1
ALL=mambalrp,mambalrp:-silu,mambalrp:-ssm,mambalrp:-gate,mambalrp:-norm,lrp_ln,gradient_x_input,gradient,integrated_gradients,smoothgrad,attention_rollout,mamba_attr,random
E="mambalrp-tools evaluate"
if [[ $PART == *a* ]]; then
  $E faithfulness --model toy/sentiment --methods $ALL --n 100 --out "$OUT/faith_sentiment" --quiet
  $E faithfulness --model toy/bios --methods $ALL --n 100 --out "$OUT/faith_bios" --quiet
  $E conservation --model toy/sentiment --methods mambalrp,gradient_x_input,lrp_ln --n 100 --out "$OUT/conservation_sentiment" --quiet
fi
if [[ $PART == *b* ]]; then
  $E alignment --model toy/copying --methods $ALL --n 100 --out "$OUT/alignment_copying" --quiet
  $E needle --model toy/needle --methods mambalrp,gradient_x_input,lrp_ln --context-lengths 128,256,512,1024 \
     --depths 0,0.25,0.5,0.75,1 --n 5 --out "$OUT/needle" --quiet
  $E bias --model toy/bios --methods mambalrp,gradient_x_input --n 100 --out "$OUT/bias_bios" --quiet
fi
