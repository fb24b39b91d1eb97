"""`explain_generation` with evaluation method specs (`"mambalrp:-ssm"`, callables); the result is an
`Explanation` with an output axis (see `mambalrp_tools.explain_generation`).

`GenerationExplanation` is the old name of that result type, kept for one release.
"""

from __future__ import annotations

from ..api import explain_outputs
from ..explanation import Explanation
from .common import parse_method, relevance

#: the result of `explain_generation` is an `Explanation` with an output axis; this name stays for one release
GenerationExplanation = Explanation


def explain_generation(model, input_ids, target_ids=None, max_new_tokens: int | None = None,
                       method="mambalrp", *, batch_size: int = 16, tokenizer=None, **method_kwargs) -> Explanation:
    """Relevance of each output token (given as `target_ids`, or generated greedily for
    `max_new_tokens`) over all tokens before it -> an `Explanation` with an output axis.

    method: any method spec (`"mambalrp"`, `"mambalrp:-ssm"`, `("mambalrp", {"ssm": False})`, a
    callable, ...); the result's `method` is the spec's label. Extra keyword arguments go to the method.
    """
    spec = parse_method(method if not method_kwargs else (method, method_kwargs))
    if spec.fn is None:
        from ..api import explain

        def run(ids, targets, mask):
            return explain(model, ids, target=targets, method=spec.name, attention_mask=mask, **spec.kwargs)
    else:
        def run(ids, targets, mask):
            rel, f, tgt = relevance(model, spec, ids, targets, attention_mask=mask)
            return Explanation(relevance=rel, logit=f, target=tgt, method=spec.label, input_ids=ids,
                               attention_mask=mask, completeness=None)

    return explain_outputs(model, input_ids, target_ids, max_new_tokens, run, batch_size=batch_size,
                           tokenizer=tokenizer, method=spec.label)
