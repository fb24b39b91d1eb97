"""What explain keeps per token, layer and inner channel, in floats: the growth of its peak memory
from a 2-layer to a 6-layer model of mamba-130m's width, divided by the 4 added layers. Run as a
script (`test_memory.py`); prints one JSON object.

On a CPU the peak is the process' peak resident set (Linux /proc), which counts live tensors only
when glibc gives every freed tensor back: the parent sets MALLOC_MMAP_THRESHOLD_ so that each tensor
above 64 KiB is its own mapping. On a GPU it is torch.cuda.max_memory_allocated.

usage: peak_memory.py DEVICE BACKEND [ARCH]   (BACKEND "emulated-cuda": the CUDA backend on a CPU
through `test_backends._emulated_kernels`; ARCH "mamba" (default) or "mamba2")
"""

import json
import sys

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

import mambalrp_tools as mlt
from mambalrp_tools import backends

BATCH, TOKENS, HIDDEN = 2, 512, 768


def _peak_rss_reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set


def _status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def build(arch, layers):
    if arch == "mamba2":  # mamba2-130m's shapes
        config = Mamba2Config(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=layers, expand=2, num_heads=24,
                              head_dim=64, n_groups=1, state_size=128, chunk_size=256)
        return Mamba2ForCausalLM(config)
    return MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=layers, state_size=16,
                                        expand=2))


def peak_bytes(arch, layers, device, backend):
    torch.manual_seed(0)
    model = build(arch, layers).eval().to(device)
    ids = torch.randint(0, 64, (BATCH, TOKENS), device=device)
    kw = dict(target=3, backend=backend, checkpoint=False)
    mlt.explain(model, ids, **kw)  # warm-up: lazy initialisation is not what is measured
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        mlt.explain(model, ids, **kw)
        return torch.cuda.max_memory_allocated() - base
    _peak_rss_reset()
    base = _status("VmRSS:")
    mlt.explain(model, ids, **kw)
    return _status("VmHWM:") - base


def main(device, backend, arch="mamba"):
    torch.set_num_threads(2)
    if backend == "emulated-cuda":
        from test_backends import _emulated_kernels

        scan, conv = _emulated_kernels()
        backends.cuda_kernels = lambda: (scan, conv)
        backends.resolve = lambda backend, device, chunk_size=128: backends.Backend("cuda", chunk_size)
        backend = "cuda"
    shallow, deep = peak_bytes(arch, 2, device, backend), peak_bytes(arch, 6, device, backend)
    unit = BATCH * TOKENS * 2 * HIDDEN * 4  # one float32 per token and inner channel of one layer
    print(json.dumps({"floats_per_layer": (deep - shallow) / 4 / unit, "peak_2_layers": shallow, "peak_6_layers": deep}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
