"""Model calls of the analyses: output logits and relevance, always through this package's forward.

`logits_at` runs the model inside `lrp_mode(model, Rules.none())`: the patched forward with every
rule off is the true forward (same values), computed by the package's chunked scan. transformers'
own forward is never used here: it dispatches to mamba-ssm's CUDA kernels whenever they are
installed, also for a model on the CPU, and it is slower on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from ..architectures import architecture_of, eval_mode, lrp_mode
from ..rules import Rules
from .runs import sample_key
from .specs import MethodSpec


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def logits_at(model, ids, position: int = -1, attention_mask=None, *, inputs_embeds=None) -> torch.Tensor:
    """Output logits [B, n_out] at `position` (vocabulary of an LM, classes of a classifier), float32 CPU.

    ids: LongTensor [B, T] (or [T]); or None with `inputs_embeds` [B, T, d].
    """
    dev = device_of(model)
    kw = {"use_cache": False}
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask).long()
        kw["attention_mask"] = (mask[None] if mask.dim() == 1 else mask).to(dev)
    if inputs_embeds is not None:
        kw["inputs_embeds"] = inputs_embeds.to(dev)
    else:
        ids = torch.as_tensor(ids).long()
        kw["input_ids"] = (ids[None] if ids.dim() == 1 else ids).to(dev)
    with eval_mode(model), own_forward(model):
        out = model(**kw)
    return out.logits[:, position].float().cpu()


def own_forward(model):
    """The package's forward with every rule off for the models it supports; a model it does not know
    (a hand-built test model) is not a transformers Mamba and runs as it is."""
    try:
        architecture_of(model)
    except TypeError:
        return contextlib.nullcontext()
    return lrp_mode(model, Rules.none(), checkpoint=False)


def select(logits: torch.Tensor, target: torch.Tensor, contrast: torch.Tensor | None = None) -> torch.Tensor:
    """logits[i, target[i]] (minus logits[i, contrast[i]])."""
    rows = torch.arange(logits.shape[0])
    f = logits[rows, target]
    return f if contrast is None else f - logits[rows, contrast]


def stack_ids(batch) -> torch.Tensor:
    """[(sample, Example)] of one length -> ids [B, T]."""
    return torch.stack([ex.input_ids.long() for _, ex in batch])


def targets_for(model, batch, target: str, position: int = -1) -> torch.Tensor:
    """The explained class/token per sample: the example's `target` ("label") or the model's argmax ("pred")."""
    if target == "label":
        return torch.tensor([int(ex.target) for _, ex in batch])
    if target == "pred":
        return logits_at(model, stack_ids(batch), position).argmax(-1)
    raise ValueError(f"target must be 'label' or 'pred', got {target!r}")


def sample_seed(sample) -> int:
    """A stable seed per sample id, so the `random` baseline draws independently for each sample
    (its default fixed seed would give every sample of one length the same scores)."""
    return int(hashlib.sha256(sample_key(sample).encode()).hexdigest()[:8], 16)


def relevance(model, spec: MethodSpec, input_ids, target, attention_mask=None, position: int = -1,
              contrast=None, sample=None):
    """(relevance [B, T] float32 CPU, f [B], target [B]) for one method on a batch.

    sample: the id of the (first) sample, seeding the `random` baseline unless the spec fixes a seed.
    """
    ids = torch.as_tensor(input_ids).long()
    if ids.dim() == 1:
        ids = ids[None]
    if spec.fn is not None:
        tgt = torch.as_tensor(target).long().flatten().expand(ids.shape[0])
        rel = torch.as_tensor(spec.fn(model, ids, tgt, attention_mask)).float().reshape(ids.shape)
        f = select(logits_at(model, ids, position, attention_mask), tgt,
                   None if contrast is None else torch.as_tensor(contrast).long().flatten())
        return rel.cpu(), f, tgt
    from ..api import explain

    kwargs = dict(spec.kwargs)
    if spec.name == "random" and "seed" not in kwargs and sample is not None:
        kwargs["seed"] = sample_seed(sample)
    expl = explain(model, ids, target=target, method=spec.name, attention_mask=attention_mask,
                   position=position, contrast=contrast, **kwargs)
    return expl.relevance, expl.logit, expl.target


