"""Integrated Gradients in float32 and tf32 on a GPU: how far apart they are, next to IG's own integration error.

    python benchmarks/ig_precision.py        # needs a CUDA GPU; results: benchmarks/results/h200_2026-12-01_seventh_ig_precision.txt

A 130m-sized random Mamba (the shapes of bench_explain.py's 130m), 1,024 tokens, 50 steps: time,
completeness error, and Pearson / top-10 overlap of tf32 against float32 and of 50 against 400
steps. Last, the float32 time with the in-layer recomputation switched off (the module's
`recomputed` and `saved_by_recipe` replaced for this process only), to measure what it costs.
"""
import contextlib, time, torch, transformers
import mambalrp_tools as mlt
import mambalrp_tools.architectures.mamba as mm
cfg = transformers.MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24, intermediate_size=1536, state_size=16)
torch.manual_seed(0)
with torch.device("cuda"):
    model = transformers.MambaForCausalLM(cfg).eval()
ids = torch.randint(0, 50280, (1, 1024), generator=torch.Generator().manual_seed(1)).cuda()

def run(**kw):
    mlt.explain(model, ids, target=0, method="ig", **kw)
    torch.cuda.synchronize(); t = time.perf_counter()
    e = mlt.explain(model, ids, target=0, method="ig", **kw)
    torch.cuda.synchronize()
    return e, time.perf_counter() - t

def agree(a, b):
    r, q = a.relevance[0].double(), b.relevance[0].double()
    pear = float(torch.corrcoef(torch.stack([r, q]))[0, 1])
    top = len(set(r.abs().topk(10).indices.tolist()) & set(q.abs().topk(10).indices.tolist()))
    return f"pearson {pear:.6f}, top-10 (|R|) overlap {top}/10, max|diff|/max|R| {float((r - q).abs().max() / q.abs().max()):.2e}"

fp32, t32 = run(n_steps=50)
tf32, ttf = run(n_steps=50, precision="tf32")
ref, _ = run(n_steps=400)
print(f"fp32 50: {t32:.3f} s, completeness error {float(fp32.conservation_error[0]):.3e}; f - f(b) = {float(fp32.logit[0] - fp32.baseline_logit[0]):.4f}, sum R {float(fp32.relevance.sum()):.4f}")
print(f"tf32 50: {ttf:.3f} s, completeness error {float(tf32.conservation_error[0]):.3e}, sum R {float(tf32.relevance.sum()):.4f}")
print(f"fp32 400: completeness error {float(ref.conservation_error[0]):.3e}, sum R {float(ref.relevance.sum()):.4f}")
print("tf32 50 vs fp32 50:", agree(tf32, fp32))
print("fp32 50 vs fp32 400 (integration):", agree(fp32, ref))
print("tf32 50 vs fp32 400:", agree(tf32, ref))
mm.recomputed = lambda fn, *a: fn(*a)
mm.saved_by_recipe = lambda v, r: contextlib.nullcontext()
_, t = run(n_steps=50)
print(f"fp32 50 without the in-layer recomputation: {t:.3f} s (with: {t32:.3f} s)")
