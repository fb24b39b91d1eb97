"""Speed and memory of explanations against the model's own forward pass, as ratios measured in one run.

    python benchmarks/bench_explain.py                                   # CPU, 130m-sized, T = 256 1024 8192
    python benchmarks/bench_explain.py --device cuda --lengths 32768 1048576
    python benchmarks/bench_explain.py --device cuda --size 2.8b --dtype bfloat16 --lengths 8192
    python benchmarks/bench_explain.py --device cuda --batch 16 --lengths 512 --methods mambalrp ig

Models: random weights in the shapes of the public checkpoints (`SIZES`; Mamba-1 unless `--arch`).
Every measurement runs in a fresh worker process, so each peak memory (process RSS on CPU,
`max_memory_allocated` on GPU) is its own. One row per length and method:

    /HF fwd    the method's time / transformers' model(ids, logits_to_keep=1) under no_grad
    /own fwd   the same / this package's forward (rules off) under no_grad
    /HF GxI    the same / transformers' Gradient x Input (forward + backward, weight grads included)

--paired adds, per length and method, the method / HF fwd with both run alternately in one process
(the fastest of PAIRED_REPEATS each), which a machine shared with other jobs disturbs far less than
separate workers. On a GPU it matters most for short inputs: their forward is bound by launch
latency and host speed, which vary from call to call on one machine.
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

#: config fields per (architecture, size); the shapes of state-spaces/mamba-*-hf and mamba2-*
SIZES = {
    ("mamba", "130m"): dict(vocab_size=50280, hidden_size=768, num_hidden_layers=24, intermediate_size=1536, state_size=16),
    ("mamba", "1.4b"): dict(vocab_size=50280, hidden_size=2048, num_hidden_layers=48, intermediate_size=4096, state_size=16),
    ("mamba", "2.8b"): dict(vocab_size=50280, hidden_size=2560, num_hidden_layers=64, intermediate_size=5120, state_size=16),
    ("mamba2", "130m"): dict(vocab_size=50280, hidden_size=768, num_hidden_layers=24, expand=2, num_heads=24,
                             head_dim=64, n_groups=1, state_size=128, chunk_size=256, use_bias=False,
                             use_conv_bias=True),
}
#: method short names -> (explain method, its keyword arguments)
METHODS = {
    "mambalrp": ("mambalrp", {}),
    "gi": ("gradient_x_input", {}),
    "ig": ("integrated_gradients", {"n_steps": 50}),
    "smoothgrad": ("smoothgrad", {}),
    "rollout": ("attention_rollout", {}),
    "mamba_attr": ("mamba_attr", {}),
}
REFERENCES = ("hf_forward", "own_forward", "hf_gxi")
#: --paired: transformers' forward and explain alternately in one worker, the fastest of this many each
PAIRED_REPEATS = 3


def build(arch, size, device, dtype):
    import torch
    import transformers

    cls, config_cls = {"mamba": ("MambaForCausalLM", "MambaConfig"),
                       "mamba2": ("Mamba2ForCausalLM", "Mamba2Config")}[arch]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**SIZES[(arch, size)])
    with torch.device(device):  # initialise in place: a 2.8b model takes minutes to initialise on the CPU
        return getattr(transformers, cls)(config).to(dtype=getattr(torch, dtype)).eval()


def worker(kind: str, args) -> dict:
    """Run one measurement in this process; returns seconds and peak bytes."""
    import torch

    import mambalrp_tools as mlt

    model = build(args.arch, args.size, args.device, args.dtype)
    T, device = args.lengths[0], args.device
    vocab = SIZES[(args.arch, args.size)]["vocab_size"]
    ids = torch.randint(0, vocab, (args.batch, T), generator=torch.Generator().manual_seed(1)).to(device)
    ck = {"auto": None, "off": False}.get(args.checkpoint, args.checkpoint)
    extra = {} if args.precision is None else {"precision": args.precision}

    def run(kind=kind):
        if kind == "hf_forward":
            with torch.no_grad():
                model(ids, logits_to_keep=1)
        elif kind == "own_forward":
            with torch.no_grad(), mlt.lrp_mode(model, mlt.Rules.none(), seq_len=T, **extra):
                model(ids, logits_to_keep=1)
        elif kind == "hf_gxi":
            emb = model.get_input_embeddings()(ids).detach().requires_grad_()
            model(inputs_embeds=emb, logits_to_keep=1).logits[:, -1, 0].sum().backward()
            (emb * emb.grad).sum(-1)
            model.zero_grad(set_to_none=True)
        else:
            method, kwargs = METHODS[kind]
            mlt.explain(model, ids, target=0, method=method, checkpoint=ck, **kwargs, **extra)

    gpu = device.startswith("cuda")
    if kind.startswith("paired:"):
        method = kind.split(":", 1)[1]
        best = {"hf_forward": float("inf"), method: float("inf")}
        for k in best:  # warm up both paths
            run(k)
        for _ in range(PAIRED_REPEATS):
            for k in best:
                if gpu:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run(k)
                if gpu:
                    torch.cuda.synchronize()
                best[k] = min(best[k], time.perf_counter() - start)
        return {"seconds": best[method], "hf_seconds": best["hf_forward"], "ratio": best[method] / best["hf_forward"]}
    repeats = 1
    if gpu:  # warm up kernels and the allocator, then time the median of 3
        if T * args.batch <= 65536:
            run()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        repeats = 3 if T * args.batch <= 65536 else 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": sorted(times)[len(times) // 2], "peak_bytes": peak}


def measure(kind, T, args):
    cmd = [sys.executable, __file__, "--worker", kind, "--lengths", str(T), "--device", args.device,
           "--checkpoint", args.checkpoint, "--arch", args.arch, "--size", args.size, "--dtype", args.dtype,
           "--batch", str(args.batch)] + ([] if args.precision is None else ["--precision", args.precision])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.timeout}s"}
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


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="mamba", choices=sorted({a for a, _ in SIZES}))
    p.add_argument("--size", default="130m", choices=sorted({s for _, s in SIZES}))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--precision", help="explain's precision= (default: the package's default)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 8192])
    p.add_argument("--methods", nargs="+", default=["mambalrp"], choices=sorted(METHODS))
    p.add_argument("--method-max", type=int, default=1 << 30,
                   help="longest T for methods other than mambalrp (IG and SmoothGrad run many passes)")
    p.add_argument("--hf-grad-max", type=int,
                   help="longest T for transformers' GxI; default 256 on CPU (the backward of its per-step "
                        "loop grows quadratically there), 65536 on a GPU")
    p.add_argument("--hf-forward-max", type=int, default=1 << 30)
    p.add_argument("--checkpoint", default="auto", help="auto | off | device | cpu (explain's layer recomputation)")
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--paired", action="store_true",
                   help="also time each method and HF forward alternately in one process")
    p.add_argument("--worker", choices=REFERENCES + tuple(METHODS) + tuple(f"paired:{m}" for m in METHODS),
                   help=argparse.SUPPRESS)
    return p


def main():
    args = parser().parse_args()
    if args.hf_grad_max is None:
        args.hf_grad_max = 65536 if args.device.startswith("cuda") else 256
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    import torch

    from mambalrp_tools.backends import resolve

    backend = resolve("auto", torch.device(args.device)).name
    installed = versions()
    print(f"# {machine(args.device)}; " + ", ".join(f"{k} {v}" for k, v in installed.items() if v)
          + f"; backend {backend}; {args.arch} {args.size} {args.dtype}, batch {args.batch}"
          + ("" if args.precision is None else f", precision {args.precision}"))
    header = ("B x T", "method", "s", "/HF fwd", "/own fwd", "/HF GxI", "peak", "peak HF fwd", "tokens/s")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    rows = []
    for T in args.lengths:
        ref = {k: None if (k == "hf_gxi" and T > args.hf_grad_max) or (k == "hf_forward" and T > args.hf_forward_max)
               else measure(k, T, args) for k in REFERENCES}
        methods = [name for name in args.methods if name == "mambalrp" or T <= args.method_max]
        for name in methods:
            r = {"T": T, "batch": args.batch, "method": name, "result": measure(name, T, args), **ref}
            rows.append(r)
            print("| " + " | ".join(str(c) for c in _cells(r)) + " |", flush=True)
        for name in methods if args.paired else ():
            pr = measure(f"paired:{name}", T, args)
            rows.append({"T": T, "batch": args.batch, "method": f"paired:{name}", "result": pr})
            timing = f"{pr['ratio']:.2f}x ({pr['seconds']:.3g} s / {pr['hf_seconds']:.3g} s)" if "ratio" in pr else pr["error"]
            print(f"# paired in one process, T={T}: {name} / HF fwd = {timing}", flush=True)
    timed = [(r["T"], r["result"]["seconds"]) for r in rows if r["method"] == "mambalrp" and "seconds" in r["result"]]
    for (t0, s0), (t1, s1) in zip(timed, timed[1:]):
        print(f"# mambalrp time grows {s1 / s0:.2f}x from T={t0} to T={t1} ({t1 / t0:g}x the tokens)")
    for r in rows:
        for k in ("result",) + REFERENCES:
            if r.get(k) and "error" in r[k]:
                print(f"# T={r['T']} {r['method'] if k == 'result' else k}: {r[k]['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(args.device), **installed, "backend": backend, "arch": args.arch,
                       "size": args.size, "dtype": args.dtype, "precision": args.precision, "rows": rows}, f, indent=1)


def _cells(r):
    def sec(k):
        return (r.get(k) or {}).get("seconds")

    def ratio(b):
        return f"{sec('result') / sec(b):.2f}x" if sec("result") and sec(b) else "-"

    def gib(k):
        b = (r.get(k) or {}).get("peak_bytes")
        return f"{b / 2**30:.2f} GiB" if b else "-"

    s = sec("result")
    return [f"{r['batch']} x {r['T']:,}", r["method"], f"{s:.3g}" if s else r["result"].get("error", "-"),
            ratio("hf_forward"), ratio("own_forward"), ratio("hf_gxi"), gib("result"), gib("hf_forward"),
            f"{r['batch'] * r['T'] / s:,.0f}" if s else "-"]


if __name__ == "__main__":
    main()
