"""`explain_generation`: the relevance of every output token over all tokens before it.

Each output token o_j at position p_j is explained as the logit of o_j read at p_j - 1, over the
prefix tokens [0, p_j). The prefixes are left-padded into one batch (Mamba zeroes the SSM input at
padded positions), so one forward and one backward explain up to `batch_size` output tokens at once.
This equals one `explain` per output token to float precision for models without an in_proj bias
(`use_bias=False`, every released Mamba checkpoint); with an in_proj bias transformers' own forward
already differs between padded and unpadded input (~1e-3 in the logits), and `batch_size=1` avoids
padding altogether.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import device_of, eval_mode, parse_method, relevance


@dataclass
class GenerationExplanation:
    """`relevance` [n_out, T] over the full sequence (prompt + outputs); row j is zero from the
    position of output j on. `input_ids` [T] is that full sequence; the outputs start at `n_prompt`."""

    relevance: torch.Tensor
    input_ids: torch.Tensor
    n_prompt: int
    logits: torch.Tensor  # [n_out] the explained logit of each output token
    method: str
    tokens: list[str] | None = None

    @property
    def output_ids(self) -> torch.Tensor:
        return self.input_ids[self.n_prompt:]

    @property
    def token_attr(self) -> torch.Tensor:
        """[n_out, n_prompt]: relevance over the prompt only (the layout of Captum's `token_attr`)."""
        return self.relevance[:, : self.n_prompt]

    def plot(self, columns=None, ax=None, prompt_only: bool = True):
        """Heatmap output token x source token (diverging, centred at 0, scaled by max |R| per row)."""
        import matplotlib.pyplot as plt

        mat = self.token_attr if prompt_only else self.relevance
        if columns is not None:
            mat = mat[:, torch.as_tensor(columns)]
        mat = mat / mat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        if ax is None:
            _, ax = plt.subplots(figsize=(max(3.0, 0.18 * mat.shape[1] + 1.5), max(2.5, 0.18 * mat.shape[0] + 1.2)))
        im = ax.imshow(mat.numpy(), cmap="bwr", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_xlabel("source token position" + ("" if columns is None else " (selected)"))
        ax.set_ylabel("output token")
        ax.set_title(self.method)
        ax.figure.colorbar(im, ax=ax, fraction=0.04)
        return ax


@torch.no_grad()
def greedy(model, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation (full forward per step: simple, exact, fine for short outputs)."""
    ids = input_ids.long().cpu()
    dev = device_of(model)
    with eval_mode(model):
        for _ in range(max_new_tokens):
            nxt = model(input_ids=ids[None].to(dev), use_cache=False).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.cpu().view(1)])
    return ids[input_ids.shape[-1]:]


def explain_generation(model, input_ids, target_ids=None, max_new_tokens: int | None = None,
                       method="mambalrp", *, batch_size: int = 16, tokenizer=None, **method_kwargs
                       ) -> GenerationExplanation:
    """Relevance of each output token (given as `target_ids`, or generated greedily for
    `max_new_tokens`) over all tokens before it -> `GenerationExplanation` ([n_out, T] matrix).

    method: any method spec (`"mambalrp"`, `"mambalrp:-ssm"`, `("mambalrp", {"ssm": False})`, ...);
    extra keyword arguments go to the method.
    """
    prompt = torch.as_tensor(input_ids).long().flatten().cpu()
    if prompt.numel() == 0:
        raise ValueError("empty prompt: nothing to explain")
    if target_ids is None:
        if not max_new_tokens:
            raise ValueError("give target_ids (the output tokens to explain) or max_new_tokens to generate")
        outputs = greedy(model, prompt, int(max_new_tokens))
    else:
        outputs = torch.as_tensor(target_ids).long().flatten().cpu()
        if max_new_tokens is not None:
            outputs = outputs[:max_new_tokens]
    if outputs.numel() == 0:
        raise ValueError("no output tokens to explain")
    spec = parse_method(method if not method_kwargs else (method, method_kwargs))
    full = torch.cat([prompt, outputs])
    n_prompt, n_out, T = prompt.numel(), outputs.numel(), full.numel()
    pad = _pad_id(model, tokenizer)
    rel = torch.zeros(n_out, T)
    logits = torch.zeros(n_out)
    for start in range(0, n_out, batch_size):
        rows = range(start, min(n_out, start + batch_size))
        width = n_prompt + rows[-1]  # the longest prefix in this batch
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, j in enumerate(rows):
            p = n_prompt + j
            ids[i, width - p:] = full[:p]
            mask[i, width - p:] = 1
        r, f, _ = relevance(model, spec, ids, outputs[list(rows)], attention_mask=None if bool(mask.all()) else mask)
        for i, j in enumerate(rows):
            p = n_prompt + j
            rel[j, :p] = r[i, width - p:]
            logits[j] = f[i]
    tokens = tokenizer.convert_ids_to_tokens(full.tolist()) if tokenizer is not None else None
    return GenerationExplanation(rel, full, n_prompt, logits, spec.label, tokens)


def _pad_id(model, tokenizer) -> int:
    for source in (tokenizer, getattr(model, "config", None)):
        tid = getattr(source, "pad_token_id", None) if source is not None else None
        if tid is not None:
            return int(tid)
    return 0
