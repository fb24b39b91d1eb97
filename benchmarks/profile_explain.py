"""Where an explanation's time goes: torch.profiler's operator table for one explain call.

    python benchmarks/profile_explain.py --device cuda --dtype bfloat16 --lengths 32768 --precision model
    python benchmarks/profile_explain.py --device cuda --methods ig --lengths 1024

Same models and arguments as bench_explain.py (one length, one method). Prints the operators sorted
by their own device time (CPU time on a CPU) and their total.
"""

from __future__ import annotations

import sys

import bench_explain


def main():
    p = bench_explain.parser()
    p.add_argument("--rows", type=int, default=25)
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
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof, record_function("explain"):
        run()
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    print(f"# {args.arch} {args.size} {args.dtype} B={args.batch} T={T} {args.methods[0]} "
          f"precision={args.precision}")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    total = sum(getattr(e, key) for e in prof.key_averages())
    print(f"# total self {'device' if gpu else 'CPU'} time {total / 1e3:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
