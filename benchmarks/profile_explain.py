"""Where an explanation's time goes: torch.profiler's operator table for one explain call.

    python benchmarks/profile_explain.py --device cuda --dtype bfloat16 --lengths 32768 --precision model
    python benchmarks/profile_explain.py --device cuda --methods ig --lengths 1024
    python benchmarks/profile_explain.py --device cuda --batch 16 --lengths 512 --checkpoint device --memory

Same models and arguments as bench_explain.py (one length, one method). Prints the operators sorted
by their own device time (CPU time on a CPU) and their total. With --memory (CUDA only) it prints
instead which allocations are alive at the explanation's peak, grouped by the package line that made them.
"""

from __future__ import annotations

import sys

import bench_explain


def main():
    p = bench_explain.parser()
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--memory", action="store_true", help="what is alive at the peak (CUDA allocator history)")
    args = p.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import mambalrp_tools as mlt

    model = bench_explain.build(args.arch, args.size, args.device, args.dtype)
    T = args.lengths[0]
    vocab = bench_explain.SIZES[(args.arch, args.size)]["vocab_size"]
    ids = torch.randint(0, vocab, (args.batch, T), generator=torch.Generator().manual_seed(1)).to(args.device)
    method, kwargs = bench_explain.METHODS[args.methods[0]]
    extra = {} if args.precision is None else {"precision": args.precision}
    ck = {"auto": None, "off": False}.get(args.checkpoint, args.checkpoint)
    gpu = args.device.startswith("cuda")

    def run():
        mlt.explain(model, ids, target=0, method=method, checkpoint=ck, **kwargs, **extra)
        if gpu:
            torch.cuda.synchronize()

    run()  # warm up kernels and the allocator
    if args.memory:
        if not gpu:
            return "--memory needs --device cuda (it reads the CUDA caching allocator's history)"
        return memory_at_peak(run, args.rows)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof, record_function("explain"):
        run()
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    print(f"# {args.arch} {args.size} {args.dtype} B={args.batch} T={T} {args.methods[0]} "
          f"precision={args.precision}")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    total = sum(getattr(e, key) for e in prof.key_averages())
    print(f"# total self {'device' if gpu else 'CPU'} time {total / 1e3:.1f} ms")


def memory_at_peak(run, rows):
    """Replay the allocator's history of one run and group what is alive at its peak by source line."""
    import torch

    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    run()
    trace = torch.cuda.memory._snapshot()["device_traces"][0]
    torch.cuda.memory._record_memory_history(enabled=None)
    live, current, peak, at_peak = {}, 0, 0, {}
    for action in trace:
        if action["action"] == "alloc":
            live[action["addr"]] = action
            current += action["size"]
            if current > peak:
                peak, at_peak = current, dict(live)
        elif action["action"].startswith("free") and action["addr"] in live:
            current -= live.pop(action["addr"])["size"]
    print(f"# peak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; "
          f"{peak / 2**30:.2f} GiB of it allocated during the run")
    ours = ("mambalrp_tools", "transformers", "mamba_ssm", "causal_conv1d")
    groups = {}
    for a in at_peak.values():
        frames = [f for f in a.get("frames", []) if any(k in f["filename"] for k in ours)][:3]
        where = " < ".join(f"{f['filename'].split('/')[-1]}:{f['line']} {f['name']}" for f in frames)
        size, count = groups.get(where, (0, 0))
        groups[where] = (size + a["size"], count + 1)
    for where, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:rows]:
        print(f"{size / 2**20:9.1f} MiB {count:4d}x  {where or '(no package frame)'}")


if __name__ == "__main__":
    sys.exit(main())
