"""Speed-up of a data-parallel evaluation: 1 process against N CPU processes (gloo), same run.

    python benchmarks/bench_distributed_eval.py --procs 2 --n 200 --out benchmarks/results/dist.json

Runs `mambalrp-tools evaluate faithfulness --model toy/sentiment` with 4 methods, once in one process
and once under torchrun with --procs processes (1 torch thread each), into fresh run folders; checks
that both give the same records and reports the wall-clock ratio measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = "mambalrp,lrp_ln,gradient_x_input,random"


def timed(cmd, env):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    sys.path.insert(0, str(ROOT))
    from mambalrp_tools.evaluation.runs import read_records

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run = ["evaluate", "faithfulness", "--model", "toy/sentiment", "--methods", METHODS, "--n", str(args.n),
               "--threads", "1", "--quiet", "--no-figures"]
        one = timed([sys.executable, "-m", "mambalrp_tools.cli", *run, "--out", f"{tmp}/one"], env)
        many = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.procs}",
                      "-m", "mambalrp_tools.cli", "--", *run, "--out", f"{tmp}/many"], env)
        a = {(json.dumps(r["sample"]), r["method"]): r["delta_af"] for r in read_records(f"{tmp}/one")}
        b = {(json.dumps(r["sample"]), r["method"]): r["delta_af"] for r in read_records(f"{tmp}/many")}
        same = a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])) for k in a)
    result = {"analysis": "faithfulness", "model": "toy/sentiment", "n": args.n, "methods": METHODS.split(","),
              "processes": args.procs, "seconds_1_process": round(one, 1), f"seconds_{args.procs}_processes":
              round(many, 1), "speedup": round(one / many, 2), "same_records": same, "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(),
              "load_average_1_5_15_min_before": [round(v, 1) for v in load_before],
              "load_average_1_5_15_min_after": [round(v, 1) for v in os.getloadavg()],
              "note": "wall clock including process start-up and model loading; one run each, on a machine "
                      "shared with other jobs (see the load averages): more processes also win a larger "
                      "share of a contended CPU"}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
