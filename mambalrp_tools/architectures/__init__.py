"""Architectures MambaLRP knows (a registry keyed by backbone class), and `lrp_mode`, which patches a model.

Each architecture is one file declaring a patch map (module class -> replacement-forward factory) and
the accessors the rest of the package uses (see `base.Architecture`, docs/architecture.md).
`lrp_mode` installs the replacement forwards as instance attributes and removes them on exit, so the
model is restored exactly, also when an exception (a KeyboardInterrupt in a notebook) interrupts the block.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch

from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaModel
from transformers.models.mamba.modeling_mamba import MambaModel
from transformers.models.mamba2.modeling_mamba2 import Mamba2Model

from .. import backends
from ..backends import free_gpu_memory
from ..numerics import matmul_precision, resolve_precision
from ..recompute import HostSlabs
from ..rules import Rules
from .base import Architecture, LayerSSM, PatchContext, Sizes
from .mamba import MAMBA
from .mamba2 import MAMBA2

#: backbone class (what `model.base_model` is) -> its Architecture
ARCHITECTURES: dict[type, Architecture] = {MambaModel: MAMBA, FalconMambaModel: MAMBA, Mamba2Model: MAMBA2}
#: host memory that stored activations may take before layers are recomputed (checkpoint=None)
CPU_ACTIVATION_BUDGET = 2 * 2**30

__all__ = ["ARCHITECTURES", "Architecture", "LayerSSM", "PatchContext", "Sizes", "architecture_of", "eval_mode",
           "input_gradients_only", "lrp_mode", "register_architecture"]


def register_architecture(backbone_cls: type, arch: Architecture) -> None:
    """Make models whose `base_model` is a `backbone_cls` explainable through `arch`."""
    if not isinstance(arch, Architecture):
        raise TypeError(f"expected an Architecture, got {type(arch).__name__}")
    ARCHITECTURES[backbone_cls] = arch


def supported() -> str:
    """The supported model classes, for error messages."""
    names = dict.fromkeys(arch.supported for arch in ARCHITECTURES.values())
    return "; ".join(names)


def architecture_of(model) -> Architecture:
    """The Architecture of `model` (a causal model with a head over a registered backbone), or
    TypeError naming what is supported."""
    backbone = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if backbone is not model and head is not None:
        for cls in type(backbone).__mro__:
            if cls in ARCHITECTURES:
                return ARCHITECTURES[cls]
    raise TypeError(f"{type(model).__name__} is not supported; supported are {supported()}")


@contextlib.contextmanager
def lrp_mode(
    model,
    rules: Rules | Mapping[str, bool] | None = None,
    *,
    backend: str = "auto",
    chunk_size: int = backends.DEFAULT_CHUNK,
    checkpoint: bool | str | None = None,
    seq_len: int | None = None,
    precision: str | None = None,
    batch_size: int = 1,
) -> Iterator:
    """Patch `model` so that Gradient x Input on its input embeddings is MambaLRP.

    Forward values are unchanged (computed in float32). `rules` switches the four rules
    (`silu`, `ssm`, `gate`, `norm`; missing keys are True; all False = plain gradient).
    `checkpoint` recomputes each layer in backward, keeping only layer inputs: True/"device" keeps
    them on the model's device, "cpu" in host memory (for ~10^6 tokens on a GPU), False never;
    None (default): on only when the stored activations would not fit (over CPU_ACTIVATION_BUDGET on
    CPU, half the free memory on a GPU, for `batch_size` sequences of `seq_len` tokens), and "cpu"
    when even the layer inputs would crowd the GPU.
    `precision`: "float32" (default; exact), "tf32" (float32 with TF32 matmuls on CUDA) or "model"
    (matmuls, and where the architecture allows activations, in the model's dtype); see `numerics`.
    Parameter gradients: with every rule off and no recomputed layers they are transformers' own (the
    zoo trains through this forward); a recomputed layer (`checkpoint`) gives its input gradient
    only. `explain` freezes the parameters anyway (`input_gradients_only`).

        with lrp_mode(model):
            emb = model.get_input_embeddings()(ids).detach().requires_grad_()
            model(inputs_embeds=emb).logits[0, -1, target].backward()
            relevance = (emb * emb.grad).sum(-1)
    """
    arch = architecture_of(model)
    rules = Rules.of(rules)
    device = next(model.parameters()).device
    chosen = backends.resolve(backend, device, chunk_size)
    pieces = chosen.carries_state(rules.ssm)
    precision = resolve_precision(precision)
    float_bytes = arch.activation_dtype(model, precision).itemsize
    ctx = PatchContext(rules, chosen, _checkpoint_mode(checkpoint, seq_len, arch.sizes(model), device, pieces,
                                                        batch_size, float_bytes), HostSlabs(), precision)
    installed = []
    with matmul_precision(ctx.precision):
        try:
            for module in model.base_model.modules():
                factory = arch.factory(module)
                if factory is None:
                    continue
                forward = factory(module, ctx)
                installed.append((module, module.__dict__.get("forward", _ABSENT)))
                module.forward = forward
            yield model
        finally:
            for module, previous in reversed(installed):
                if previous is _ABSENT:
                    del module.forward
                else:
                    module.forward = previous


_ABSENT = object()


@contextlib.contextmanager
def eval_mode(model):
    """Eval mode for the duration (transformers' training path is fused and bypasses the patched
    forward), then every module's own training flag back as it was."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def input_gradients_only(model):
    """Parameters stop requiring gradients for the duration, then get their own flags back.

    Explanations differentiate with respect to inputs only; with frozen weights autograd also stops
    keeping the inputs of every linear and convolution layer for weight gradients, which is about a
    third of the activation memory of a Mamba layer.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _checkpoint_mode(checkpoint, seq_len, sizes: Sizes, device, pieces: bool = False, batch_size: int = 1,
                     float_bytes: int = 4) -> str | None:
    if checkpoint is None:
        checkpoint = _auto_checkpoint(seq_len, sizes, device, pieces, batch_size, float_bytes)
    mode = {False: None, True: "device", "device": "device", "cpu": "cpu"}.get(checkpoint, "invalid")
    if mode == "invalid":
        raise ValueError(f"checkpoint must be None, True, False, 'device' or 'cpu', got {checkpoint!r}")
    return mode


def _auto_checkpoint(seq_len, sizes: Sizes, device, pieces: bool = False, batch_size: int = 1, float_bytes: int = 4):
    """Recompute layers only when storing every layer's activations would not fit comfortably.

    Autograd keeps about `activation_floats` x `inner` floats per token and layer; recomputation
    keeps one `hidden` vector per token and layer (`kept`: what decides "cpu" on a GPU, where the
    mamba-ssm kernels keep nothing else). The PyTorch scan under the ssm rule also keeps its output
    (`inner` floats) so that the recomputation skips the scan; on CPU that is still well below the
    budget. With `pieces` (the backend carries a layer's state, so a recomputed layer runs in pieces)
    a GPU needs little beyond the kept inputs; otherwise recomputing a whole layer needs room for its
    activations too. Estimates are for `batch_size` sequences (a batch of 16 stores 16 times as much),
    with activations of `float_bytes` each (2 for the bfloat16 activations of `precision="model"`).
    """
    if seq_len is None:
        return False
    tokens = seq_len * batch_size
    stored = tokens * sizes.layers * sizes.activation_floats * sizes.inner * float_bytes
    kept = tokens * sizes.layers * sizes.hidden * 4
    if device.type != "cuda":
        return stored > CPU_ACTIVATION_BUDGET and "device"
    free = free_gpu_memory(device)
    if stored < free / 2:
        return False
    return "device" if (1.25 if pieces else 4) * kept < free else "cpu"
