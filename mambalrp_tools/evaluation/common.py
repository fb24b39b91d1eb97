"""Shared pieces of the evaluation library: method specs, model calls, fingerprints, examples I/O.

A *method* in an evaluation is one of:
- a registry name, `"mambalrp"`, `"ig"`, ...;
- a name with options, `"mambalrp:-ssm"` (rule ablation), `"mambalrp:-ssm-gate"`,
  `"integrated_gradients:n_steps=20"` (the CLI form);
- a tuple `("mambalrp", {"ssm": False})` (a dict of rule switches) or `("ig", {"n_steps": 20})`;
- a callable `fn(model, input_ids, target, attention_mask) -> relevance [B, T]` (or a
  `(label, fn)` tuple): hand-built explanations, e.g. for testing a metric.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from ..architectures import eval_mode  # noqa: F401  (re-exported for the analyses)

RULE_NAMES = ("silu", "ssm", "gate", "norm")
_RULE_TOKEN = re.compile(r"([+-])([a-z]+)")


@dataclass(frozen=True)
class MethodSpec:
    """One attribution method as an evaluation runs it; `label` is the `method` field of its records."""

    label: str
    name: str | None = None  # registry name (None for a callable)
    kwargs: dict = field(default_factory=dict)
    fn: Callable | None = None

    def describe(self) -> dict:
        """JSON-able identity (for the run manifest)."""
        if self.fn is not None:
            return {"label": self.label, "callable": getattr(self.fn, "__qualname__", repr(self.fn))}
        return {"label": self.label, "name": self.name, "kwargs": _jsonable(self.kwargs)}


def _jsonable(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _label(name: str, kwargs: dict) -> str:
    parts = []
    rules = dict(kwargs.get("rules") or {})
    if rules:
        parts.append("".join(("+" if on else "-") + r for r, on in sorted(rules.items())))
    parts += [f"{k}={v}" for k, v in sorted(kwargs.items()) if k != "rules"]
    return name + "".join(":" + p for p in parts)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_method(spec) -> MethodSpec:
    """`"mambalrp:-ssm"`, `("mambalrp", {"ssm": False})`, `"ig:n_steps=20"`, a callable -> MethodSpec."""
    if isinstance(spec, MethodSpec):
        return spec
    if callable(spec):
        return MethodSpec(label=getattr(spec, "__name__", "custom"), fn=spec)
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise ValueError(f"a method tuple is (name, options) or (label, callable), got {spec!r}")
        head, opts = spec
        if callable(opts):
            return MethodSpec(label=str(head), fn=opts)
        base = parse_method(str(head))
        kwargs = dict(base.kwargs)
        opts = dict(opts or {})
        if opts and set(opts) <= set(RULE_NAMES):
            opts = {"rules": opts}  # ("mambalrp", {"ssm": False}) is shorthand for rules=
        if "rules" in opts:
            kwargs["rules"] = {**kwargs.get("rules", {}), **{k: bool(v) for k, v in opts.pop("rules").items()}}
        kwargs.update(opts)
        return _checked(base.name, kwargs)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"cannot read method {spec!r}")
    name, *options = spec.strip().split(":")
    kwargs: dict[str, Any] = {}
    for opt in options:
        if "=" in opt:
            key, value = opt.split("=", 1)
            kwargs[key.strip()] = _parse_value(value.strip())
        elif re.fullmatch(r"([+-][a-z]+)+", opt):
            rules = kwargs.setdefault("rules", {})
            for sign, rule in _RULE_TOKEN.findall(opt):
                rules[rule] = sign == "+"
        else:
            raise ValueError(f"cannot read option {opt!r} of method {spec!r}: write -rule / +rule "
                             f"(rules {list(RULE_NAMES)}) or key=value")
    return _checked(name, kwargs)


def _checked(name: str, kwargs: dict) -> MethodSpec:
    from ..methods import resolve_method

    canonical = resolve_method(name)  # ValueError listing the methods for a typo
    rules = kwargs.get("rules")
    if rules is not None:
        kwargs = dict(kwargs)
        rules = kwargs["rules"] = {k: v for k, v in rules.items() if not v}  # missing = on: one label per ablation
        if not rules:
            del kwargs["rules"]
        unknown = set(rules) - set(RULE_NAMES)
        if unknown:
            raise ValueError(f"unknown MambaLRP rule(s) {sorted(unknown)}; the rules are {list(RULE_NAMES)}")
        if canonical != "mambalrp":
            raise ValueError(f"rule switches apply to 'mambalrp' only, not {canonical!r}")
    return MethodSpec(label=_label(canonical, kwargs), name=canonical, kwargs=kwargs)


def parse_methods(methods) -> list[MethodSpec]:
    """A comma-separated string or a sequence of method specs -> unique MethodSpecs (order kept)."""
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    elif callable(methods) or isinstance(methods, MethodSpec):
        methods = [methods]
    specs = [parse_method(m) for m in methods]
    labels = [s.label for s in specs]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ValueError(f"method(s) {dupes} given twice")
    if not specs:
        raise ValueError("no methods given")
    return specs


# ---------------------------------------------------------------- model calls


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def output_logits(model, input_ids=None, attention_mask=None, inputs_embeds=None, position: int = -1):
    """Output logits [B, n_out] at `position` (vocabulary of an LM, classes of a classifier), float32 CPU."""
    dev = device_of(model)
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask.to(dev)
    with eval_mode(model):
        if inputs_embeds is not None:
            out = model(inputs_embeds=inputs_embeds.to(dev), use_cache=False, **kw)
        else:
            out = model(input_ids=input_ids.to(dev), use_cache=False, **kw)
    return out.logits[:, position].float().cpu()


def select(logits: torch.Tensor, target: torch.Tensor, contrast: torch.Tensor | None = None) -> torch.Tensor:
    rows = torch.arange(logits.shape[0])
    f = logits[rows, target]
    return f if contrast is None else f - logits[rows, contrast]


def sample_seed(sample) -> int:
    """A stable seed per sample id, so the `random` baseline draws independently for each sample
    (its default fixed seed would give every sample of one length the same scores)."""
    return int(hashlib.sha256(json.dumps(sample).encode()).hexdigest()[:8], 16)


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
        f = select(output_logits(model, ids, attention_mask, position=position), tgt,
                   None if contrast is None else torch.as_tensor(contrast).long().flatten())
        return rel.cpu(), f, tgt
    from ..api import explain

    kwargs = dict(spec.kwargs)
    if spec.name == "random" and "seed" not in kwargs and sample is not None:
        kwargs["seed"] = sample_seed(sample)
    expl = explain(model, ids, target=target, method=spec.name, attention_mask=attention_mask,
                   position=position, contrast=contrast, **kwargs)
    return expl.relevance, expl.logit, expl.target


def n_outputs(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


# ---------------------------------------------------------------- identities (for the run manifest)


def model_fingerprint(model, name: str | None = None) -> dict:
    """Name, class, size and a cheap content hash (a slice of every tensor) of a model."""
    h = hashlib.sha256()
    n = 0
    for key, tensor in sorted(model.state_dict().items()):
        n += tensor.numel()
        h.update(key.encode())
        h.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    config = getattr(model, "config", None)
    return {
        "name": name or getattr(config, "_name_or_path", None) or type(model).__name__,
        "class": type(model).__name__,
        "n_parameters": n,
        "sha256_sample": h.hexdigest()[:16],
    }


def examples_fingerprint(examples) -> str:
    """sha256 over every example's token ids, target and evidence: identifies a task draw."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.input_ids.tolist(), int(ex.target), ex.evidence.tolist(),
                             None if ex.candidates is None else ex.candidates.tolist()]).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- small statistics


def mean_se(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, standard error, n) over the finite values; nan where undefined."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(vals) / n
    if n == 1:
        return mean, float("nan"), 1
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var / n), n


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """ROC-AUC = P(score of a random positive > that of a random negative), ties count 1/2."""
    from scipy.stats import rankdata

    pos = [bool(p) for p in positive]
    n_pos = sum(pos)
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata([float(s) for s in scores])  # average ranks handle ties
    rank_sum = sum(r for r, p in zip(ranks, pos) if p)
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------- examples from a file


def save_examples(examples, path) -> Path:
    """Examples as JSON lines (one per line): a task draw users can edit or bring their own of."""
    path = Path(path)
    with open(path, "w") as fh:
        for ex in examples:
            fh.write(json.dumps({
                "input_ids": ex.input_ids.tolist(), "target": int(ex.target), "evidence": ex.evidence.tolist(),
                "candidates": None if ex.candidates is None else ex.candidates.tolist(),
                "text": ex.text, "meta": ex.meta,
            }, default=str) + "\n")
    return path


def read_examples(path, n: int | None = None) -> list:
    from ..tasks.base import Example

    out = []
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            d = json.loads(line)
            out.append(Example(
                input_ids=torch.tensor(d["input_ids"], dtype=torch.long), target=int(d["target"]),
                evidence=torch.tensor(d.get("evidence", []), dtype=torch.long),
                candidates=None if d.get("candidates") is None else torch.tensor(d["candidates"], dtype=torch.long),
                text=d.get("text"), meta=d.get("meta") or {},
            ))
            if n is not None and len(out) >= n:
                break
    return out


def load_examples(task: str, n: int, seed: int = 0, tokenizer=None, **params) -> list:
    """A task name for `tasks.load`, or a `.jsonl` file of examples (see `save_examples`)."""
    if str(task).endswith(".jsonl") or Path(str(task)).is_file():
        return read_examples(task, n)
    from .. import tasks

    return tasks.load(task, n, seed, tokenizer=tokenizer, **params)
