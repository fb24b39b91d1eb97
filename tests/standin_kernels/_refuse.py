"""The one behaviour of every stand-in kernel: refuse CPU tensors, as the CUDA kernels do."""

import torch


def kernel(name):
    def fn(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors):
            raise RuntimeError(f"stand-in {name} kernel called with a CPU tensor")
        raise RuntimeError(f"stand-in {name} kernel has no implementation")

    fn.__name__ = name
    return fn
