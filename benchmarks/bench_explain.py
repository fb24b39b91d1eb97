"""Speed and memory of MambaLRP against the model's own forward pass, as ratios measured in one run.

    python benchmarks/bench_explain.py                       # CPU: T = 256, 1024, 8192
    python benchmarks/bench_explain.py --device cuda --lengths 2048 32768 1048576
    python benchmarks/bench_explain.py --arch mamba2 --lengths 1024  # Mamba-2 (SSD), mamba2-130m sized

Model: MambaConfig(vocab 50280, hidden 768, 24 layers, intermediate 1536, state 16), random fp32
weights (the size of state-spaces/mamba-130m); with --arch mamba2: Mamba2Config(vocab 50280, hidden
768, 24 layers, expand 2, 24 heads of head_dim 64, 1 group, state 128, chunk 256), the size of
state-spaces/mamba2-130m. Every measurement runs in a fresh worker process,
so each peak memory (process RSS on CPU, `max_memory_allocated` on GPU) is its own. Columns:

    explain/HF fwd    mlt.explain(method="mambalrp") / transformers' model(ids, logits_to_keep=1) under no_grad
    explain/own fwd   the same / this package's patched forward under no_grad
    explain/HF GxI    the same / transformers' Gradient x Input (forward + backward, weight grads included)
    IG/HF fwd         explain(method="integrated_gradients", n_steps=50) / HF no-grad forward

--paired adds a line per T: explain / HF fwd with both run alternately in one process (fastest of
PAIRED_REPEATS each), which a machine shared with other jobs disturbs far less than separate workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

MODEL = dict(vocab_size=50280, hidden_size=768, num_hidden_layers=24, intermediate_size=1536, state_size=16)
MODEL2 = dict(vocab_size=50280, hidden_size=768, num_hidden_layers=24, expand=2, num_heads=24, head_dim=64,
              n_groups=1, state_size=128, chunk_size=256, use_bias=False, use_conv_bias=True)
KINDS = ("hf_forward", "own_forward", "explain", "hf_gxi", "ig")
#: --paired: transformers' forward and explain alternately in one worker, the fastest of this many each
PAIRED_REPEATS = 3


def build(device, arch="mamba"):
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    if arch == "mamba2":
        return Mamba2ForCausalLM(Mamba2Config(**MODEL2)).to(device).eval()
    return MambaForCausalLM(MambaConfig(**MODEL)).to(device).eval()


def worker(kind: str, T: int, device: str, checkpoint: str | None, arch: str = "mamba") -> dict:
    """Run one measurement in this process; returns seconds and peak bytes."""
    import torch

    import mambalrp_tools as mlt

    model = build(device, arch)
    ids = torch.randint(0, MODEL["vocab_size"], (1, T), generator=torch.Generator().manual_seed(1)).to(device)
    ck = {"auto": None, "off": False}.get(checkpoint, checkpoint)

    def run(kind=kind):
        if kind == "hf_forward":
            with torch.no_grad():
                model(ids, logits_to_keep=1)
        elif kind == "own_forward":
            with torch.no_grad(), mlt.lrp_mode(model, seq_len=T):
                model(ids, logits_to_keep=1)
        elif kind == "explain":
            mlt.explain(model, ids, target=0, checkpoint=ck)
        elif kind == "hf_gxi":
            emb = model.get_input_embeddings()(ids).detach().requires_grad_()
            model(inputs_embeds=emb, logits_to_keep=1).logits[0, -1, 0].backward()
            (emb * emb.grad).sum(-1)
            model.zero_grad(set_to_none=True)
        elif kind == "ig":
            mlt.explain(model, ids, target=0, method="integrated_gradients", n_steps=50, checkpoint=ck)

    gpu = device.startswith("cuda")
    if kind == "paired":
        short = ids
        ids = ids[:, :64]
        run("hf_forward"), run("explain")  # warm up both paths
        ids = short
        best = {"hf_forward": float("inf"), "explain": float("inf")}
        for _ in range(PAIRED_REPEATS):
            for k in best:
                if gpu:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run(k)
                if gpu:
                    torch.cuda.synchronize()
                best[k] = min(best[k], time.perf_counter() - start)
        return {"seconds": best["explain"], "hf_seconds": best["hf_forward"], "ratio": best["explain"] / best["hf_forward"]}
    repeats = 1
    if gpu:  # warm up kernels and the allocator on a short input, then time the median of 3
        run() if T <= 8192 else None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        repeats = 3 if T <= 65536 else 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": sorted(times)[len(times) // 2], "peak_bytes": peak}


def measure(kind, T, device, checkpoint, timeout, arch="mamba"):
    cmd = [sys.executable, __file__, "--worker", kind, "--lengths", str(T), "--device", device,
           "--checkpoint", checkpoint, "--arch", arch]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        err = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": err[:160]}
    return json.loads(lines[-1])


def machine(device) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def versions() -> dict:
    """Versions of everything the timings depend on (absent kernels: None)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "mambalrp_tools", "mamba_ssm", "causal_conv1d"):
        try:
            out[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            out[name] = None
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", choices=("mamba", "mamba2"), default="mamba", help="Mamba-1 or Mamba-2 (SSD) model")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 8192])
    p.add_argument("--hf-grad-max", type=int,
                   help="longest T for transformers' GxI; default 256 on CPU (the backward of its per-step "
                        "loop grows quadratically there), 65536 on a GPU")
    p.add_argument("--hf-forward-max", type=int, default=1 << 30)
    p.add_argument("--ig-lengths", type=int, nargs="*", default=[1024])
    p.add_argument("--checkpoint", default="auto", help="auto | off | device | cpu (explain's layer recomputation)")
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--paired", action="store_true", help="also time explain and HF forward alternately in one process")
    p.add_argument("--worker", choices=KINDS + ("paired",), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.hf_grad_max is None:
        args.hf_grad_max = 65536 if args.device.startswith("cuda") else 256
    if args.worker:
        print(json.dumps(worker(args.worker, args.lengths[0], args.device, args.checkpoint, args.arch)))
        return

    import torch

    from mambalrp_tools.backends import resolve

    backend = resolve("auto", torch.device(args.device)).name
    installed = versions()
    print(f"# {args.arch}; {machine(args.device)}; " + ", ".join(f"{k} {v}" for k, v in installed.items() if v)
          + f"; backend {backend}")
    rows = []
    header = ("T", "explain s", "explain/HF fwd", "explain/own fwd", "explain/HF GxI", "IG/HF fwd",
              "peak explain", "peak HF fwd", "tokens/s")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    for T in args.lengths:
        r = {"T": T}
        for kind in KINDS:
            skip = (kind == "hf_gxi" and T > args.hf_grad_max) or (kind == "ig" and T not in args.ig_lengths) or (
                kind == "hf_forward" and T > args.hf_forward_max)
            r[kind] = None if skip else measure(kind, T, args.device, args.checkpoint, args.timeout, args.arch)
        if args.paired:
            r["paired"] = measure("paired", T, args.device, args.checkpoint, args.timeout, args.arch)
        rows.append(r)

        def sec(k):
            return (r.get(k) or {}).get("seconds")

        def ratio(a, b):
            return f"{sec(a) / sec(b):.2f}x" if sec(a) and sec(b) else "-"

        def gib(k):
            b = (r.get(k) or {}).get("peak_bytes")
            return f"{b / 2**30:.2f} GiB" if b else "-"

        e = sec("explain")
        cells = [T, f"{e:.2f}" if e else (r["explain"] or {}).get("error", "-"), ratio("explain", "hf_forward"),
                 ratio("explain", "own_forward"), ratio("explain", "hf_gxi"), ratio("ig", "hf_forward"),
                 gib("explain"), gib("hf_forward"), f"{T / e:,.0f}" if e else "-"]
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    timed = [(r["T"], r["explain"]["seconds"]) for r in rows if "seconds" in (r["explain"] or {})]
    for (t0, s0), (t1, s1) in zip(timed, timed[1:]):
        print(f"# explain time grows {s1 / s0:.2f}x from T={t0} to T={t1} ({t1 / t0:g}x the tokens)")
    for r in rows:
        if "seconds" in (r.get("ig") or {}):
            print(f"# IG (50 steps) at T={r['T']}: {r['ig']['seconds']:.0f} s, peak {r['ig']['peak_bytes'] / 2**30:.2f} GiB")
    for r in rows:
        if "ratio" in (r.get("paired") or {}):
            pr = r["paired"]
            print(f"# paired at T={r['T']} (one process, alternating, fastest of {PAIRED_REPEATS}): explain "
                  f"{pr['seconds']:.2f} s / HF fwd {pr['hf_seconds']:.2f} s = {pr['ratio']:.2f}x")
    errors = {f"{r['T']}/{k}": r[k]["error"] for r in rows for k in KINDS + ("paired",) if r.get(k) and "error" in r[k]}
    for where, err in errors.items():
        print(f"# {where}: {err}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "machine": machine(args.device), **installed, "backend": backend, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
