"""Architectures MambaLRP knows, and the context manager that patches a model in place.

Each architecture is one file that yields (module, replacement forward) pairs; `patched` installs
them as instance attributes and removes them on exit, so the model is restored exactly, also when
an exception (a KeyboardInterrupt in a notebook) interrupts the block.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch

from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaModel
from transformers.models.mamba.modeling_mamba import MambaModel
from transformers.models.mamba2.modeling_mamba2 import Mamba2Model

from .. import backends
from ..rules import Rules
from . import mamba, mamba2

# backbone class -> module that patches it
ARCHITECTURES = {MambaModel: mamba, FalconMambaModel: mamba, Mamba2Model: mamba2}
SUPPORTED = (
    "transformers' MambaForCausalLM, FalconMambaForCausalLM and Mamba2ForCausalLM, and mambalrp_tools' "
    "MambaClassifier / FalconMambaClassifier / Mamba2Classifier"
)
#: host memory that stored activations may take before layers are recomputed (checkpoint=None)
CPU_ACTIVATION_BUDGET = 2 * 2**30


def architecture_of(model):
    """The architecture module for `model`, or TypeError naming what is supported."""
    backbone = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for cls, arch in ARCHITECTURES.items():
        if isinstance(backbone, cls) and backbone is not model and head is not None:
            return arch
    raise TypeError(f"{type(model).__name__} is not supported; supported are {SUPPORTED}")


@contextlib.contextmanager
def lrp_mode(
    model,
    rules: Rules | Mapping[str, bool] | None = None,
    *,
    backend: str = "auto",
    chunk_size: int = backends.DEFAULT_CHUNK,
    checkpoint: bool | str | None = None,
    seq_len: int | None = None,
) -> Iterator:
    """Patch `model` so that Gradient x Input on its input embeddings is MambaLRP.

    Forward values are unchanged (computed in float32). `rules` switches the four rules
    (`silu`, `ssm`, `gate`, `norm`; missing keys are True; all False = plain gradient).
    `checkpoint` recomputes each layer in backward, keeping only layer inputs: True/"device" keeps
    them on the model's device, "cpu" in host memory (for ~10^6 tokens on a GPU), False never;
    None (default): on only when the stored activations would not fit (over CPU_ACTIVATION_BUDGET on
    CPU, half the free memory on a GPU), and "cpu" when even the layer inputs would crowd the GPU.

        with lrp_mode(model):
            emb = model.get_input_embeddings()(ids).detach().requires_grad_()
            model(inputs_embeds=emb).logits[0, -1, target].backward()
            relevance = (emb * emb.grad).sum(-1)
    """
    arch = architecture_of(model)
    rules = Rules.of(rules)
    device = next(model.parameters()).device
    chosen = backends.resolve(backend, device, chunk_size)
    checkpoint = _checkpoint_mode(checkpoint, seq_len, model, device, arch)
    installed = []
    try:
        for module, forward in arch.patches(model, rules, chosen, checkpoint):
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


def _checkpoint_mode(checkpoint, seq_len, model, device, arch=mamba) -> str | None:
    if checkpoint is None:
        checkpoint = _auto_checkpoint(seq_len, model.config, device, arch)
    mode = {False: None, True: "device", "device": "device", "cpu": "cpu"}.get(checkpoint, "invalid")
    if mode == "invalid":
        raise ValueError(f"checkpoint must be None, True, False, 'device' or 'cpu', got {checkpoint!r}")
    return mode


def _auto_checkpoint(seq_len, config, device, arch=mamba):
    """Recompute layers only when storing every layer's activations would not fit comfortably.

    Autograd keeps about arch.ACTIVATION_FLOATS x intermediate_size floats per token and layer;
    recomputation keeps one hidden_size vector per token and layer (`kept`: what decides "cpu" on a
    GPU, where the mamba-ssm kernels keep nothing else). The PyTorch scan under the ssm rule also
    keeps its output (intermediate_size floats) so that the recomputation skips the scan; on CPU
    that is still well below the budget. Estimates are for batch 1.
    """
    if seq_len is None:
        return False
    layers = config.num_hidden_layers
    width = getattr(config, "intermediate_size", None) or int(config.expand * config.hidden_size)  # Mamba-2: expand
    stored = seq_len * layers * arch.ACTIVATION_FLOATS * width * 4
    kept = seq_len * layers * config.hidden_size * 4
    if device.type != "cuda":
        return stored > CPU_ACTIVATION_BUDGET and "device"
    free = torch.cuda.mem_get_info(device)[0]
    if stored < free / 2:
        return False
    return "device" if 4 * kept < free else "cpu"
