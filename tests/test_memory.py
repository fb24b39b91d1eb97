"""What an explanation keeps in memory per layer: at most `ACTIVATION_FLOATS` floats per token and
inner channel (the auto-checkpoint estimate relies on it), measured on the PyTorch and the (emulated)
CUDA kernel paths, and on a GPU with the real kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mambalrp_tools.architectures import mamba, mamba2
from mambalrp_tools.backends import cuda_kernels

HERE = Path(__file__).parent


FLOATS = {"mamba": mamba.ACTIVATION_FLOATS, "mamba2": mamba2.ACTIVATION_FLOATS}


def _measure(device, backend, arch):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(HERE / "peak_memory.py"), device, backend, arch], env=env,
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(240)
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures the peak resident set through Linux's /proc")
@pytest.mark.parametrize("arch,backend", [("mamba", "torch"), ("mamba", "emulated-cuda"), ("mamba2", "torch")])
def test_explain_keeps_at_most_activation_floats_per_layer_on_cpu(arch, backend):
    """Mamba-1: 2.6 floats measured on the kernel path (the scan's y, the gate's z, in_proj's input x
    of half the width, B and C), 2.7 on the PyTorch path; 6.1 before the gate, in_proj's convolution
    half with the convolution and its SiLU were recomputed in backward and delta from dt. Mamba-2
    (PyTorch path): 4.4, 7.6 before. The lower bound catches a measurement that no longer sees the
    tensors (memory reused, not given back)."""
    result = _measure("cpu", backend, arch)
    assert 2.0 < result["floats_per_layer"] <= FLOATS[arch], result


@pytest.mark.gpu
@pytest.mark.timeout(240)
@pytest.mark.skipif(not torch.cuda.is_available() or cuda_kernels() is None,
                    reason="needs a CUDA GPU with mamba-ssm and causal-conv1d installed")
@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_explain_keeps_at_most_activation_floats_per_layer_on_the_gpu(arch):
    result = _measure("cuda", "cuda", arch)
    assert 2.0 < result["floats_per_layer"] <= FLOATS[arch], result


def test_saved_by_recipe_replaces_only_that_tensor():
    """Autograd takes the recipe's value where it saved the tensor (here a deliberately different one,
    to see it used) and keeps every other saved tensor as it is."""
    from mambalrp_tools.recompute import saved_by_recipe

    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    d = torch.rand(5, dtype=torch.float64) + 0.5
    calls = []
    with saved_by_recipe(d, lambda: calls.append(1) or 2 * d):
        y = x * d  # saves d for x's gradient
        w = x.exp()  # saves its output
    assert not calls
    (grad,) = torch.autograd.grad((y + w).sum(), x)
    assert calls == [1]
    torch.testing.assert_close(grad, 2 * d + x.exp(), rtol=0, atol=0)


def test_recomputed_runs_again_in_backward_with_the_same_gradient():
    from mambalrp_tools.recompute import recomputed

    calls = []

    def region(a, b):
        calls.append(1)
        return a * torch.sigmoid(b)

    a, b = (torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = recomputed(region, a, b)
    assert len(calls) == 1
    grads = torch.autograd.grad(out.sum(), (a, b))
    assert len(calls) == 2
    expected = torch.autograd.grad(region(a, b).sum(), (a, b))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    with torch.no_grad():
        recomputed(region, a, b)
    assert len(calls) == 4  # without gradients: the plain call, nothing kept


@pytest.mark.timeout(60)
def test_free_gpu_memory_follows_the_device_at_every_call(monkeypatch):
    """The driver's free bytes plus torch's reserved-but-unused ones, read anew at every call (the
    numbers change as explanations allocate); on a CPU the three CUDA queries are stand-ins."""
    from mambalrp_tools.backends import free_gpu_memory

    state = {"free": 100, "reserved": 40, "allocated": 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], 1000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    device = torch.device("cuda", 0)
    assert free_gpu_memory(device) == 110
    state.update(free=50, reserved=80)
    assert free_gpu_memory(device) == 100


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_free_gpu_memory_counts_the_allocators_unused_cache():
    """A freed tensor stays in torch's cache, which the driver counts as taken: batches and the
    checkpoint decision must see it as free."""
    from mambalrp_tools.backends import free_gpu_memory

    device = torch.device("cuda")
    x = torch.empty(2**28, device=device)  # 1 GiB
    del x
    driver_free = torch.cuda.mem_get_info(device)[0]
    assert free_gpu_memory(device) >= driver_free + 2**30


def test_only_layers_that_are_not_recomputed_keep_less(monkeypatch):
    """A layer recomputed in backward (checkpoint) runs its backward right after the recomputation:
    recomputing inside it too would cost time and save nothing, so it computes everything once."""
    from conftest import tiny_model

    import mambalrp_tools as mlt
    from mambalrp_tools.architectures import mamba as mamba_file

    calls = []
    original = mamba_file.recomputed
    monkeypatch.setattr(mamba_file, "recomputed", lambda fn, *a: calls.append(1) or original(fn, *a))
    model = tiny_model("mamba", zero_biases=True)
    ids = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(0))
    kept = mlt.explain(model, ids, target=3, checkpoint=False)
    assert len(calls) == model.config.num_hidden_layers
    calls.clear()
    again = mlt.explain(model, ids, target=3, checkpoint="device")
    assert not calls
    torch.testing.assert_close(again.relevance, kept.relevance, rtol=1e-5, atol=1e-6)
