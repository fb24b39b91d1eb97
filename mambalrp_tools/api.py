"""`explain` and `explain_generation`: the calls that turn (model, input, target) into an `Explanation`."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from . import backends
from .architectures import architecture_of, eval_mode, input_gradients_only, lrp_mode
from .explanation import Explanation
from .methods import METHODS, Query, method_info, resolve_method
from .numerics import resolve_precision
from .rules import Rules


def explain(
    model,
    input_ids,
    target=None,
    method: str = "mambalrp",
    position: int = -1,
    attention_mask=None,
    tokenizer=None,
    contrast=None,
    *,
    backend: str = "auto",
    chunk_size: int | None = None,
    checkpoint: bool | str | None = None,
    precision: str | None = None,
    **method_kwargs,
) -> Explanation:
    """Relevance of every input token for the logit `target` at `position`.

    input_ids: LongTensor [B, T], a list of ints, a string or a list of strings (with `tokenizer`;
        several strings are left-padded). target: None (argmax), an int, a token string (with
        `tokenizer`), or one per sample. contrast: explain logit[target] - logit[contrast].
    method: see `list_methods()`; `method_kwargs` go to it (e.g. `rules={"ssm": False}`).
    backend: "auto" (mamba-ssm kernels on a GPU when installed, else PyTorch), "torch" or "cuda".
    checkpoint: recompute each layer in backward to save memory: True/"device", "cpu" (layer inputs
        kept in host memory, for ~10^6 tokens on a GPU) or False; default: only when the activations
        would not fit (see `architectures.lrp_mode`).
    precision: "float32" (default: every matmul upcast, relevance conserves f exactly), "tf32" (the
        same, with CUDA's TF32 tensor cores for the float32 matmuls; no effect on a CPU) or "model"
        (matmuls in the model's bf16/fp16, Mamba-1's activations in bf16 for bf16 models; the residual
        stream, the scan's state and the readout in float32; faster on half-precision models,
        conservation within about 3e-2 of sum |R|; see README "Precision").
    The model is run in eval mode and left exactly as it was.
    """
    architecture_of(model)  # TypeError for unsupported models, before any work
    name = resolve_method(method)
    ids, mask = _as_batch(input_ids, attention_mask, tokenizer)
    device = next(model.parameters()).device
    n_out = model.get_output_embeddings().weight.shape[0]
    vocab = model.get_input_embeddings().weight.shape[0]
    _check_ids(ids, vocab)
    _check_position(position, ids.shape[1])
    if mask is not None and bool((mask[:, position] == 0).any()):
        raise ValueError(
            f"position {position} is padding in sample {int(torch.nonzero(mask[:, position] == 0)[0])}: "
            "pad on the left (the explained token must be a real one) or pick another position"
        )
    tgt = _as_index(target, ids.shape[0], n_out, tokenizer, "target")
    con = _as_index(contrast, ids.shape[0], n_out, tokenizer, "contrast")

    # every method differentiates: work also when called under torch.no_grad() / inference_mode
    # (tensors made in inference mode cannot be saved for backward, hence the copies)
    with torch.inference_mode(False), torch.enable_grad():
        ids, mask, tgt, con = (None if t is None else t.clone() for t in (ids, mask, tgt, con))
        query = Query(
            model, ids.to(device), None if mask is None else mask.to(device), None if tgt is None else tgt.to(device),
            None if con is None else con.to(device), position, backend, chunk_size, checkpoint,
            resolve_precision(precision),
        )
        with eval_mode(model), input_gradients_only(model):
            relevance = METHODS[name](query, **method_kwargs)
            if query.logit is None:
                query.resolve()
    relevance = relevance.detach().float().cpu()
    if mask is not None:
        relevance = relevance * mask.to(relevance.dtype)  # exact zeros on padding for every method
    info = method_info(name)
    return Explanation(
        relevance=relevance,
        logit=query.logit,
        target=query.target.cpu(),
        method=name,
        input_ids=ids,
        attention_mask=mask,
        contrast=None if con is None else con.cpu(),
        position=position,
        tokens=[tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()] if tokenizer else None,
        params=_params(method_kwargs),
        completeness=info.completeness,
        baseline_logit=query.baseline_logit,
        info=_info(model, info, method_kwargs, backend, chunk_size, device, query.precision),
    )


def _params(method_kwargs) -> dict:
    """The method's arguments that JSON can hold (a `Rules` as its switches)."""
    out = {}
    for k, v in method_kwargs.items():
        if isinstance(v, Rules):
            v = dataclasses.asdict(v)
        if isinstance(v, (int, float, str, bool, dict, type(None))):
            out[k] = v
    return out


def _info(model, info, method_kwargs, backend, chunk_size, device, precision) -> dict:
    from . import __version__

    config = getattr(model, "config", None)
    out = {
        "model": getattr(config, "_name_or_path", None) or type(model).__name__,
        "model_class": type(model).__name__,
        "backend": backends.resolve(backend, device).name,
        "precision": precision,
        "version": __version__,
    }
    if chunk_size is not None:
        out["chunk_size"] = chunk_size
    if info.takes_rules:
        out["rules"] = dataclasses.asdict(Rules.of(method_kwargs.get("rules")))
    return out


def explain_generation(
    model,
    input_ids,
    target_ids=None,
    max_new_tokens: int | None = None,
    method: str = "mambalrp",
    *,
    batch_size: int = 16,
    tokenizer=None,
    **kwargs,
) -> Explanation:
    """Relevance of each output token over all tokens before it: an `Explanation` with an output axis.

    The outputs are `target_ids`, or `max_new_tokens` tokens generated greedily after the prompt
    `input_ids` (one sequence: ids, or a text with `tokenizer`). Output j, at position p_j of the full sequence (prompt + outputs), is
    explained as the logit of that token read at p_j - 1, over the tokens [0, p_j): `relevance`
    [1, n_out, T], `logit` and `target` [1, n_out], `output_positions` [n_out] = p_j - 1.

    The prefixes are left-padded into batches of `batch_size` (Mamba zeroes the SSM input at padded
    positions), so one forward and one backward explain up to `batch_size` outputs at once. This
    equals one `explain` per output to float precision for models without an in_proj bias
    (`use_bias=False`, every released Mamba checkpoint); with an in_proj bias transformers' own forward
    already differs between padded and unpadded input (~1e-3 in the logits), and `batch_size=1`
    avoids padding altogether. `method` and `kwargs` are as for `explain`.
    """
    def run(ids, targets, mask):
        return explain(model, ids, target=targets, method=method, attention_mask=mask, **kwargs)

    return explain_outputs(model, input_ids, target_ids, max_new_tokens, run, batch_size=batch_size,
                           tokenizer=tokenizer)


def explain_outputs(model, input_ids, target_ids, max_new_tokens, run: Callable, *, batch_size: int = 16,
                    tokenizer=None, method: str | None = None) -> Explanation:
    """`explain_generation` with the per-batch explainer `run(ids [B, T], targets [B], mask) -> Explanation`.

    method: the result's method label (default: the explainer's).
    """
    if isinstance(input_ids, str):
        if tokenizer is None:
            raise ValueError("input is text: pass tokenizer= (e.g. the one load_model returned)")
        input_ids = tokenizer(input_ids, add_special_tokens=False)["input_ids"]
    prompt = torch.as_tensor(input_ids).long()
    if prompt.dim() > 1 and prompt.shape[0] != 1:
        raise ValueError(f"explain_generation takes one sequence, got a batch of shape {tuple(prompt.shape)}")
    prompt = prompt.flatten().cpu()
    if prompt.numel() == 0:
        raise ValueError("empty prompt: nothing to explain")
    if target_ids is None:
        if not max_new_tokens:
            raise ValueError("give target_ids (the output tokens to explain) or max_new_tokens to generate")
        outputs = _greedy(model, prompt, int(max_new_tokens))
    else:
        outputs = torch.as_tensor(target_ids).long().flatten().cpu()
        if max_new_tokens is not None:
            outputs = outputs[:max_new_tokens]
    if outputs.numel() == 0:
        raise ValueError("no output tokens to explain")
    full = torch.cat([prompt, outputs])
    n_prompt, n_out, T = prompt.numel(), outputs.numel(), full.numel()
    pad = _pad_id(model, tokenizer)
    rel = torch.zeros(n_out, T)
    logits = torch.zeros(n_out)
    baseline = None
    first = None
    for start in range(0, n_out, batch_size):
        rows = range(start, min(n_out, start + batch_size))
        width = n_prompt + rows[-1]  # the longest prefix in this batch
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, j in enumerate(rows):
            p = n_prompt + j
            ids[i, width - p:] = full[:p]
            mask[i, width - p:] = 1
        expl = run(ids, outputs[list(rows)], None if bool(mask.all()) else mask)
        if first is None:
            first = expl
        if expl.baseline_logit is not None and baseline is None:
            baseline = torch.zeros(n_out)
        for i, j in enumerate(rows):
            p = n_prompt + j
            rel[j, :p] = expl.relevance[i, width - p:]
            logits[j] = expl.logit[i]
            if baseline is not None:
                baseline[j] = expl.baseline_logit[i]
    tokens = [tokenizer.convert_ids_to_tokens(full.tolist())] if tokenizer is not None else None
    return Explanation(
        relevance=rel[None], logit=logits[None], target=outputs[None], method=method or first.method,
        input_ids=full[None], tokens=tokens, params=first.params, completeness=first.completeness,
        baseline_logit=None if baseline is None else baseline[None],
        output_positions=torch.arange(n_prompt - 1, T - 1), info={**first.info, "batch_size": batch_size},
    )


@torch.no_grad()
def _greedy(model, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation (full forward per step: simple, exact, fine for short outputs)."""
    ids = input_ids.long().cpu()
    dev = next(model.parameters()).device
    # the package's forward (rules off: true values), never transformers' kernel dispatch
    with eval_mode(model), lrp_mode(model, Rules.none()):
        for _ in range(max_new_tokens):
            nxt = model(input_ids=ids[None].to(dev), use_cache=False).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.cpu().view(1)])
    return ids[input_ids.shape[-1]:]


def _pad_id(model, tokenizer) -> int:
    for source in (tokenizer, getattr(model, "config", None)):
        tid = getattr(source, "pad_token_id", None) if source is not None else None
        if tid is not None:
            return int(tid)
    return 0


def _as_batch(input_ids, attention_mask, tokenizer):
    """-> (ids LongTensor [B, T], mask LongTensor [B, T] or None); strings are left-padded."""
    if isinstance(input_ids, str) or (
        isinstance(input_ids, Sequence) and input_ids and all(isinstance(s, str) for s in input_ids)
    ):
        if tokenizer is None:
            raise ValueError("input is text: pass tokenizer= (e.g. the one load_model returned)")
        texts = [input_ids] if isinstance(input_ids, str) else list(input_ids)
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        _warn_unknown_words(tokenizer, texts, rows)
        if any(len(r) == 0 for r in rows):
            raise ValueError("a text tokenized to an empty sequence; nothing to explain")
        from .tasks.padding import left_pad, pad_id

        ids, mask = left_pad(rows, pad_id(tokenizer))
        if attention_mask is not None:
            raise ValueError("attention_mask is built from the texts; pass token ids to give your own")
        return ids, (None if bool(mask.all()) else mask)
    try:
        ids = torch.as_tensor(input_ids)
    except (TypeError, ValueError) as err:
        raise ValueError(f"input_ids must be a LongTensor [batch, seq_len], a list of ints or text: {err}") from None
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.numel() == 0:  # before the dtype check: torch.as_tensor([]) is float32
        raise ValueError(f"empty input (shape {tuple(ids.shape)}); nothing to explain")
    if ids.dim() != 2 or ids.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise ValueError(f"input_ids must be integer token ids of shape [batch, seq_len], got {tuple(ids.shape)} {ids.dtype}")
    ids = ids.long().cpu()
    mask = None
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask).long().cpu()
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        if bool((mask.sum(-1) == 0).any()):
            raise ValueError("a sample is all padding; nothing to explain")
    return ids, mask


def _nearest(tokenizer, word: str, n: int = 5) -> list[str]:
    import difflib

    return difflib.get_close_matches(word.lower(), list(tokenizer.get_vocab()), n=n, cutoff=0.0)


def _warn_unknown_words(tokenizer, texts, rows):
    """One warning naming the input words that the tokenizer maps to its unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not any(unk in r for r in rows):
        return
    words = []
    for text, row in zip(texts, rows):
        if unk not in row:
            continue
        try:  # fast tokenizers give each token's span in the text
            spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            words += [text[a:b] for tid, (a, b) in zip(row, spans) if tid == unk and text[a:b] != tokenizer.unk_token]
        except (NotImplementedError, KeyError, TypeError, ValueError):
            words.append(f"{row.count(unk)} word(s) of {text[:40]!r}")
    if words:
        import warnings

        warnings.warn(f"input word(s) not in the tokenizer's vocabulary, explained as {tokenizer.unk_token!r}: "
                      f"{', '.join(repr(w) for w in dict.fromkeys(words))}", stacklevel=4)


def _check_ids(ids, vocab):
    bad = (ids < 0) | (ids >= vocab)
    if bool(bad.any()):
        raise ValueError(f"token id {int(ids[bad][0])} is outside the model's vocabulary [0, {vocab})")


def _check_position(position, seq_len):
    if not isinstance(position, int) or not -seq_len <= position < seq_len:
        raise ValueError(f"position must be an int in [{-seq_len}, {seq_len}), got {position!r}")


def _as_index(value, batch, n_out, tokenizer, what):
    """target/contrast -> LongTensor [batch] (or None), checked against the number of outputs."""
    if value is None:
        return None
    if isinstance(value, str):
        if tokenizer is None:
            raise ValueError(f"{what} {value!r} is text: pass tokenizer=")
        ids = tokenizer(value, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{what} {value!r} is {len(ids)} tokens; give one token (or its id)")
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and ids[0] == unk and value.strip() != tokenizer.unk_token:
            raise ValueError(f"{what} {value!r} is not in the tokenizer's vocabulary (it would be "
                             f"{tokenizer.unk_token!r}); nearest entries: {_nearest(tokenizer, value.strip())}")
        value = ids[0]
    idx = torch.as_tensor(value).long().flatten().cpu()
    if idx.numel() == 1:
        idx = idx.expand(batch).clone()
    if idx.numel() != batch:
        raise ValueError(f"{idx.numel()} {what}s for a batch of {batch}; give one per sample or a single one")
    bad = (idx < 0) | (idx >= n_out)
    if bool(bad.any()):
        raise ValueError(f"{what} {int(idx[bad][0])} is out of range: the model has {n_out} outputs")
    return idx
