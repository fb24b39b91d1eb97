"""Which attribution methods an evaluation runs, and the label of each in the records.

A *method* in an evaluation is one of:
- a registry name, `"mambalrp"`, `"ig"`, ...;
- a name with options, `"mambalrp:-ssm"` (rule ablation), `"mambalrp:-ssm-gate"`,
  `"integrated_gradients:n_steps=20"` (the CLI form);
- a tuple `("mambalrp", {"ssm": False})` (a dict of rule switches) or `("ig", {"n_steps": 20})`;
- a callable `fn(model, input_ids, target, attention_mask) -> relevance [B, T]` (or a
  `(label, fn)` tuple): hand-built explanations, e.g. for testing a metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .runs import canonical

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
        return {"label": self.label, "name": self.name, "kwargs": canonical(self.kwargs)}


def _label(name: str, kwargs: dict) -> str:
    parts = []
    rules = dict(kwargs.get("rules") or {})
    if rules:
        parts.append("".join(("+" if on else "-") + r for r, on in sorted(rules.items())))
    parts += [f"{k}={v}" for k, v in sorted(kwargs.items()) if k != "rules"]
    return name + "".join(":" + p for p in parts)


def parse_value(text: str):
    """A command-line value: JSON when it parses (numbers, true, lists), else the string itself."""
    import json

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
            kwargs[key.strip()] = parse_value(value.strip())
        elif re.fullmatch(r"([+-][a-z]+)+", opt):
            rules = kwargs.setdefault("rules", {})
            for sign, rule in _RULE_TOKEN.findall(opt):
                rules[rule] = sign == "+"
        else:
            raise ValueError(f"cannot read option {opt!r} of method {spec!r}: write -rule / +rule "
                             f"(rules {list(RULE_NAMES)}) or key=value")
    return _checked(name, kwargs)


def takes_rules(canonical_name: str) -> bool:
    """Whether a registered method takes rule switches (`methods.method_info` once it exists)."""
    from .. import methods

    info = getattr(methods, "method_info", None)
    if info is not None:
        meta = info(canonical_name)
        return bool(meta["takes_rules"] if isinstance(meta, dict) else meta.takes_rules)
    return canonical_name == "mambalrp"


def _checked(name: str, kwargs: dict) -> MethodSpec:
    from ..methods import resolve_method

    canonical_name = resolve_method(name)  # ValueError listing the methods for a typo
    rules = kwargs.get("rules")
    if rules is not None:
        kwargs = dict(kwargs)
        rules = kwargs["rules"] = {k: v for k, v in rules.items() if not v}  # missing = on: one label per ablation
        if not rules:
            del kwargs["rules"]
        unknown = set(rules) - set(RULE_NAMES)
        if unknown:
            raise ValueError(f"unknown MambaLRP rule(s) {sorted(unknown)}; the rules are {list(RULE_NAMES)}")
        if not takes_rules(canonical_name):
            raise ValueError(f"rule switches apply to methods that take rules (mambalrp), not {canonical_name!r}")
    check_options(canonical_name, kwargs)
    return MethodSpec(label=_label(canonical_name, kwargs), name=canonical_name, kwargs=kwargs)


def method_options(canonical_name: str) -> list[str] | None:
    """The keyword options a registered method takes (None: any, it has **kwargs)."""
    import inspect

    from ..methods import METHODS

    fn = METHODS[canonical_name]
    fn = getattr(fn, "fn", fn)  # a registry entry that carries metadata around the function
    params = list(inspect.signature(fn).parameters.values())[1:]  # after the query
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_options(canonical_name: str, kwargs: dict):
    """ValueError naming the nearest option for a misspelled one (`nsteps` -> `n_steps`)."""
    import difflib

    known = method_options(canonical_name)
    if known is None:
        return
    for key in kwargs:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ValueError(f"method {canonical_name!r} has no option {key!r}; {hint}"
                             f"its options are {known or 'none'}")


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
