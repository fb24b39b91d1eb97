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

from .. import backends
from ..rules import Rules
from . import mamba

# backbone class -> module that patches it
ARCHITECTURES = {MambaModel: mamba, FalconMambaModel: mamba}
SUPPORTED = (
    "transformers' MambaForCausalLM and FalconMambaForCausalLM, and mambalrp_tools' "
    "MambaClassifier / FalconMambaClassifier (Mamba2ForCausalLM is planned)"
)
#: above this many tokens each layer is recomputed in backward instead of stored
CHECKPOINT_ABOVE = 4096


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
    None (default): off up to CHECKPOINT_ABOVE tokens, above it "device", or "cpu" on a GPU whose
    free memory is under four times what the layer inputs need.

        with lrp_mode(model):
            emb = model.get_input_embeddings()(ids).detach().requires_grad_()
            model(inputs_embeds=emb).logits[0, -1, target].backward()
            relevance = (emb * emb.grad).sum(-1)
    """
    arch = architecture_of(model)
    rules = Rules.of(rules)
    device = next(model.parameters()).device
    chosen = backends.resolve(backend, device, chunk_size)
    checkpoint = _checkpoint_mode(checkpoint, seq_len, model, device)
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


def _checkpoint_mode(checkpoint, seq_len, model, device) -> str | None:
    if checkpoint is None:
        checkpoint = seq_len is not None and seq_len > CHECKPOINT_ABOVE
        if checkpoint and device.type == "cuda":
            config = model.config
            kept = seq_len * config.hidden_size * config.num_hidden_layers * 4  # float32 layer inputs, batch 1
            checkpoint = "cpu" if 4 * kept > torch.cuda.mem_get_info(device)[0] else "device"
    mode = {False: None, True: "device", "device": "device", "cpu": "cpu"}.get(checkpoint, "invalid")
    if mode == "invalid":
        raise ValueError(f"checkpoint must be None, True, False, 'device' or 'cpu', got {checkpoint!r}")
    return mode
