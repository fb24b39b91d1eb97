"""What every attribution method receives (`Query`) and the registry that `explain` dispatches on.

A method is a function `fn(query, **kwargs) -> Tensor[batch, seq_len]` registered with
`@register("name", aliases=..., completeness=..., conserves=..., signed=..., takes_rules=...)`, which
records what the method promises (`method_info`). It runs the model through `query.patched(rules)` (the fast
chunked-scan forward; rules off = the true gradient) and its objective `query.forward_func`, whose
extra arguments `query.forward_args` Captum expands along the batch like the inputs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..architectures import lrp_mode
from ..numerics import linear, upcast
from ..rules import Rules

METHODS: dict[str, Callable] = {}
ALIASES: dict[str, str] = {}
INFO: dict[str, "MethodInfo"] = {}
#: what sum_t R_t of a method is compared with (`MethodInfo.completeness`)
COMPLETENESS = ("f", "f - f(baseline)")


@dataclass(frozen=True)
class MethodInfo:
    """What a registered method promises about its relevance."""

    name: str
    aliases: tuple[str, ...] = ()
    #: what sum_t R_t is compared with: "f" (the explained logit), "f - f(baseline)" (Integrated
    #: Gradients' completeness), or None (the sum means nothing: norms, rollouts, random scores)
    completeness: str | None = None
    conserves: bool = False  # sum_t R_t equals the completeness target (up to float / integration error)
    signed: bool = True  # relevance can be negative
    takes_rules: bool = False  # accepts `rules=` (the MambaLRP rule switches, checked by `Rules.of`)


def register(name: str, aliases: tuple[str, ...] = (), *, completeness: str | None = None, conserves: bool = False,
             signed: bool = True, takes_rules: bool = False):
    """Register `fn(query, **kwargs) -> relevance [B, T]` as `explain(method=name)`, with its metadata.

    The defaults (no completeness target, signed, no rules) suit a method that promises nothing.
    """
    if completeness is not None and completeness not in COMPLETENESS:
        raise ValueError(f"completeness must be one of {COMPLETENESS} or None, got {completeness!r}")
    if conserves and completeness is None:
        raise ValueError("a method that conserves needs a completeness target")

    def wrap(fn):
        METHODS[name] = fn
        INFO[name] = MethodInfo(name, tuple(aliases), completeness, bool(conserves), bool(signed), bool(takes_rules))
        for alias in aliases:
            ALIASES[alias] = name
        return fn

    return wrap


def method_info(name: str) -> MethodInfo:
    """The metadata of a registered method (by name or alias; ValueError for an unknown one)."""
    return INFO[resolve_method(name)]


def resolve_method(name: str) -> str:
    canonical = ALIASES.get(name, name)
    if canonical not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {list_methods()} (aliases {sorted(ALIASES)})")
    return canonical


def list_methods() -> list[str]:
    """Names accepted by `explain(method=...)` (short aliases such as 'gi', 'ig' also work)."""
    return sorted(METHODS)


@dataclass
class Query:
    """A validated explanation request: which output f of which inputs to explain."""

    model: torch.nn.Module
    input_ids: torch.Tensor  # [B, T] on the model's device
    attention_mask: torch.Tensor | None
    target: torch.Tensor | None  # [B]; None = argmax at `position`, resolved by the first forward
    contrast: torch.Tensor | None
    position: int
    backend: str = "auto"
    chunk_size: int | None = None
    checkpoint: bool | str | None = None
    precision: str = "float32"  # "float32", "tf32" or "model" (see numerics)
    logit: torch.Tensor | None = field(default=None, init=False)  # f at the input, set by `resolve`
    #: f at the baseline, set by methods whose completeness target is f - f(baseline)
    baseline_logit: torch.Tensor | None = field(default=None, init=False)

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def patched(self, rules: Rules | dict | None):
        opts = {} if self.chunk_size is None else {"chunk_size": self.chunk_size}
        return lrp_mode(self.model, rules, backend=self.backend, checkpoint=self.checkpoint, precision=self.precision,
                        seq_len=self.seq_len, batch_size=self.input_ids.shape[0], **opts)

    def embeddings(self) -> torch.Tensor:
        """Input embeddings [B, T, H] (at least float32), detached."""
        with torch.no_grad():
            return upcast(self.model.get_input_embeddings()(self.input_ids))

    @property
    def forward_args(self) -> tuple:
        return (self.attention_mask, self.target, self.contrast)

    def head_logits(self, embeds, attention_mask) -> torch.Tensor:
        """All output logits [B, V] at `position` (run inside `patched`)."""
        out = self.model.base_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        hidden = upcast(out.last_hidden_state[:, self.position])
        head = self.model.get_output_embeddings()
        return linear(hidden, head.weight, head.bias, self.precision)

    def forward_func(self, embeds, attention_mask=None, target=None, contrast=None) -> torch.Tensor:
        """f [B] = logit[target] (- logit[contrast]) at `position`: the objective every method explains."""
        logits = self.head_logits(embeds, attention_mask)
        return _select(logits, target, contrast)

    def resolve(self, rules: Rules | dict | None = None, grad: bool = False, baseline: torch.Tensor | None = None):
        """One forward (under `rules`): fixes `target` if it was None, sets `logit`.

        With grad=True returns (embeds, f) with f differentiable w.r.t. embeds. With `baseline`
        embeddings (shaped like the input's, no grad) the same forward also sets `baseline_logit`, f at
        the baseline: one batch of two, where two forwards of a short input would each be bound by
        launch latency on a GPU.
        """
        embeds = self.embeddings().requires_grad_(grad)
        both, mask = embeds, self.attention_mask
        if baseline is not None:
            both = torch.cat([embeds, baseline])
            mask = None if mask is None else mask.repeat(2, 1)
        with self.patched(rules), (contextlib.nullcontext() if grad else torch.no_grad()):
            logits = self.head_logits(both, mask)
            n = embeds.shape[0]
            if self.target is None:
                self.target = logits[:n].detach().argmax(-1)
            f = _select(logits[:n], self.target, self.contrast)
            if baseline is not None:
                self.baseline_logit = _select(logits[n:], self.target, self.contrast).detach().float().cpu()
        self.logit = f.detach().float().cpu()
        return embeds, f

    def gradient_x_input(self, rules: Rules | dict | None) -> torch.Tensor:
        """sum_d e * df/de per token after one forward and one backward under `rules`."""
        embeds, f = self.resolve(rules, grad=True)
        with self.patched(rules):  # recomputation (checkpointing) in backward must see the same rules
            (grad,) = torch.autograd.grad(f.sum(), embeds)
        return (embeds * grad).sum(-1)


def _select(logits, target, contrast):
    rows = torch.arange(logits.shape[0], device=logits.device)
    f = logits[rows, target]
    return f if contrast is None else f - logits[rows, contrast]
