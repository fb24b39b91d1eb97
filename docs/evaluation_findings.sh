#!/usr/bin/env bash
# The runs behind "Findings on the embedded models" (docs/evaluation.md). CPU, one thread each.
# Usage: bash docs/evaluation_findings.sh OUT_DIR [a|b|c]   (parts run side by side; default: all)
set -euo pipefail
OUT=${1:-runs/findings}
PART=${2:-abc}
export OMP_NUM_THREADS=1
ALL=mambalrp,mambalrp:-silu,mambalrp:-ssm,mambalrp:-gate,mambalrp:-norm,lrp_ln,gradient_x_input,gradient,integrated_gradients,smoothgrad,attention_rollout,mamba_attr,random
SUB=mambalrp,lrp_ln,gradient_x_input,integrated_gradients,attention_rollout,mamba_attr,random
ABL=mambalrp,mambalrp:-silu,mambalrp:-ssm,mambalrp:-gate,mambalrp:-norm,lrp_ln,gradient_x_input
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
if [[ $PART == *c* ]]; then
  $E conservation --model toy/bios --methods $ABL --n 50 --out "$OUT/conservation_bios_ablation" --quiet
  $E conservation --model toy/sentiment --methods $ABL --n 50 --out "$OUT/conservation_sentiment_ablation" --quiet
  $E faithfulness --model toy/bios --methods $SUB --n 100 --replacement pad --out "$OUT/faith_bios_pad" --quiet
  $E faithfulness --model toy/sentiment --methods $SUB --n 100 --replacement pad --out "$OUT/faith_sentiment_pad" --quiet
  $E randomization --model toy/sentiment --methods mambalrp,lrp_ln,gradient_x_input,integrated_gradients,mamba_attr,random \
     --n 30 --out "$OUT/randomization_sentiment" --quiet
  $E long-range --model toy/needle --methods mambalrp,gradient_x_input --n 30 --out "$OUT/long_range_needle" --quiet
  # how much each rule reorders the tokens, and where the needle's missing relevance goes
  python - <<'PY'
import numpy as np, torch
from scipy.stats import spearmanr
import mambalrp_tools as mlt
from mambalrp_tools import tasks
from mambalrp_tools.tasks.needle import QUESTION
torch.set_num_threads(1)
for name in ("sentiment", "bios"):
    m, _ = mlt.load_model(f"toy/{name}")
    exs = tasks.load(name, 30, 0)
    for rule in ("silu", "ssm", "gate", "norm"):
        rho, l1 = [], []
        for ex in exs:
            a = mlt.explain(m, ex.input_ids[None]).relevance[0]
            b = mlt.explain(m, ex.input_ids[None], rules={rule: False}).relevance[0]
            rho.append(spearmanr(a, b).statistic); l1.append(float((a - b).abs().sum() / a.abs().sum()))
        print(f"{name} -{rule}: spearman with full {np.mean(rho):.3f}, relative L1 change {np.mean(l1):.2f}")
m, _ = mlt.load_model("toy/needle")
for L in (128, 1024):
    for method in ("mambalrp", "gradient_x_input"):
        parts = []
        for ex in tasks.load("needle", 8, 1, context_length=L, depth=0.5):
            r = mlt.explain(m, ex.input_ids[None], target=ex.target, method=method).relevance[0].clamp(min=0)
            T, tot = len(ex.input_ids), float(r.sum())
            needle = float(r[ex.meta["needle_start"]:ex.meta["needle_end"]].sum()) / tot
            question = float(r[T - len(QUESTION) - ex.meta["given"]:].sum()) / tot
            parts.append((needle, question, 1 - needle - question))
        print(f"needle L={L} {method}: needle/question/filler share", np.round(np.mean(parts, 0), 3))
PY
fi
