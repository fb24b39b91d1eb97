"""The toys' quality bars: accuracy on freshly generated examples (the numbers in each training.json).

Fresh: the evaluation stream has its own seed (EVAL_SEED), far from every training batch's seed.
Forwards run through the package's own path (`evaluation.forward.own_forward`).
"""

from __future__ import annotations

import random

import torch

from .. import tasks
from ..evaluation.forward import own_forward
from ..tasks import copying, needle
from ..tasks.padding import left_pad
from ..tasks.text import Encoder

EVAL_SEED = 987_654_321_000
BARS = {"copying": 0.99, "needle": 0.95, "bios": 0.90, "sentiment": 0.95}
PAD_ID = 0


def _batches(seqs, max_tokens):
    """Index batches of sequences sorted by length, about max_tokens tokens each."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batch = []
    for i in order:
        if batch and (len(batch) + 1) * len(seqs[i]) > max_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.no_grad()
def last_logits(model, seqs, device=None, pad_id=PAD_ID, max_tokens=1 << 16) -> torch.Tensor:
    """Logits at the last position of each sequence (left-padded with an attention mask), [N, n_out]."""
    device = device or next(model.parameters()).device
    out = [None] * len(seqs)
    for idx in _batches(seqs, max_tokens):
        ids, mask = left_pad([seqs[i] for i in idx], pad_id)
        with own_forward(model):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -1].float().cpu()
        for r, i in enumerate(idx):
            out[i] = logits[r]
    return torch.stack(out) if out else torch.empty(0)


@torch.no_grad()
def teacher_forced(model, seqs_labels, device=None, max_tokens=1 << 16):
    """Per sequence, a bool tensor: was each labelled next token predicted (argmax)?"""
    device = device or next(model.parameters()).device
    seqs = [s for s, _ in seqs_labels]
    out = [None] * len(seqs)
    for idx in _batches(seqs, max_tokens):
        ids, mask = left_pad([seqs[i] for i in idx], PAD_ID)
        lab = left_pad([seqs_labels[i][1] for i in idx], -100)[0]
        with own_forward(model):
            pred = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1).cpu()
        for r, i in enumerate(idx):
            keep = lab[r] != -100
            out[i] = pred[r][keep] == lab[r][keep]
    return out


def classifier_accuracy(model, examples, device=None, pad_id=PAD_ID) -> float:
    if not examples:
        return float("nan")
    pred = last_logits(model, [e.input_ids for e in examples], device, pad_id).argmax(-1)
    return float((pred == torch.tensor([e.target for e in examples])).float().mean())


def eval_copying(model, tokenizer, n=1000, lengths=tuple(range(8, 129, 8)), device=None, seed=EVAL_SEED):
    """Teacher-forced token accuracy of the copy, per source length (n sequences each)."""
    enc, rng = Encoder(tokenizer), random.Random(seed)
    curve = {}
    for L in lengths:
        hits = teacher_forced(model, [copying.training_sequence(rng, enc, length=L) for _ in range(n)], device)
        curve[L] = round(float(torch.cat(hits).float().mean()), 5)
    upto = [L for L in lengths if L <= 64]
    summary = {"token_accuracy_8_to_64_min": min(curve[L] for L in upto) if upto else None,
               "token_accuracy_at_64": curve.get(64), "token_accuracy_at_96": curve.get(96),
               "token_accuracy_at_128": curve.get(128), "sequences_per_length": n}
    return {"summary": summary, "curve": curve,
            "meets_bar": summary["token_accuracy_8_to_64_min"] is not None and summary["token_accuracy_8_to_64_min"] >= BARS["copying"]}


def eval_needle(model, tokenizer, n=1000, lengths=(128, 256, 512, 1024, 2048, 4096),
                depths=tuple(i / 10 for i in range(11)), device=None, seed=EVAL_SEED):
    """Per (length, depth): accuracy of each code digit (teacher-forced) and of the whole code."""
    enc, rng = Encoder(tokenizer), random.Random(seed)
    per_cell = max(1, -(-n // len(depths)))
    digit, exact, first = {}, {}, {}
    for L in lengths:
        for d in depths:
            seqs = [needle.training_sequence(rng, enc, context_length=L, depth=d) for _ in range(per_cell)]
            hits = teacher_forced(model, seqs, device)
            key = f"{L}@{d:.1f}"
            digit[key] = round(float(torch.cat(hits).float().mean()), 4)
            exact[key] = round(float(torch.stack([h.all() for h in hits]).float().mean()), 4)
            first[key] = round(float(torch.stack([h[0] for h in hits]).float().mean()), 4)
    by_len = {L: {"digit_min_over_depths": min(digit[f"{L}@{d:.1f}"] for d in depths),
                  "digit_mean": round(sum(digit[f"{L}@{d:.1f}"] for d in depths) / len(depths), 4),
                  "code_exact_mean": round(sum(exact[f"{L}@{d:.1f}"] for d in depths) / len(depths), 4)}
              for L in lengths}
    bar_lengths = [L for L in lengths if L <= 1024]
    worst = min(by_len[L]["digit_min_over_depths"] for L in bar_lengths) if bar_lengths else None
    return {"summary": {"worst_cell_digit_accuracy_up_to_1024": worst, "by_length": by_len,
                        "examples_per_cell": per_cell, "examples_per_length": per_cell * len(depths)},
            "digit_accuracy": digit, "code_exact": exact, "first_digit_accuracy": first,
            "meets_bar": worst is not None and worst >= BARS["needle"]}


def eval_bios(model, tokenizer, n=1000, device=None, seed=EVAL_SEED):
    """Accuracy (skewed 0.9 and balanced 0.5 sets) and how often swapping gendered words flips the prediction."""
    skewed = tasks.load("bios", n, seed, tokenizer=tokenizer, gender_correlation=0.9)
    balanced = tasks.load("bios", n, seed + 1, tokenizer=tokenizer, gender_correlation=0.5)
    swapped = [tasks.swap_gender(e, tokenizer) for e in skewed]
    logits = last_logits(model, [e.input_ids for e in skewed], device)
    logits_sw = last_logits(model, [e.input_ids for e in swapped], device)
    pred, pred_sw = logits.argmax(-1), logits_sw.argmax(-1)
    y = torch.tensor([e.target for e in skewed])
    amb = torch.tensor([e.meta["ambiguous"] for e in skewed])
    minority = torch.tensor([e.meta["gender"] != tasks.bios.MAJORITY[e.meta["occupation"]] for e in skewed])
    p_true = logits.softmax(-1).gather(1, y[:, None])[:, 0]
    p_true_sw = logits_sw.softmax(-1).gather(1, y[:, None])[:, 0]

    def mean(x):
        return round(float(x.float().mean()), 4) if x.numel() else None

    flips = pred != pred_sw
    summary = {
        "accuracy": mean(pred == y), "accuracy_balanced": round(classifier_accuracy(model, balanced, device), 4),
        "accuracy_ambiguous": mean((pred == y)[amb]), "accuracy_clear": mean((pred == y)[~amb]),
        "accuracy_majority_gender": mean((pred == y)[~minority]), "accuracy_minority_gender": mean((pred == y)[minority]),
        "swap_flip_rate": mean(flips), "swap_flip_rate_ambiguous": mean(flips[amb]), "swap_flip_rate_clear": mean(flips[~amb]),
        "swap_mean_abs_change_p_true": mean((p_true - p_true_sw).abs()), "examples": n,
    }
    return {"summary": summary, "meets_bar": summary["accuracy"] >= BARS["bios"] and summary["swap_flip_rate"] > 0}


def eval_sentiment(model, tokenizer, n=1000, device=None, seed=EVAL_SEED):
    ex = tasks.load("sentiment", n, seed, tokenizer=tokenizer)
    pred = last_logits(model, [e.input_ids for e in ex], device).argmax(-1)
    ok = pred == torch.tensor([e.target for e in ex])
    neg = torch.tensor([e.meta["negated"] for e in ex])
    two = torch.tensor([e.meta["clauses"] == 2 for e in ex])

    def mean(x):
        return round(float(x.float().mean()), 4) if x.numel() else None

    summary = {"accuracy": mean(ok), "accuracy_negated": mean(ok[neg]), "accuracy_two_clauses": mean(ok[two]),
               "examples": n}
    return {"summary": summary, "meets_bar": summary["accuracy"] >= BARS["sentiment"]}


EVALUATORS = {"copying": eval_copying, "needle": eval_needle, "bios": eval_bios, "sentiment": eval_sentiment}


def evaluate_toy(name, model, tokenizer, n=1000, device=None, **kw):
    was_training = model.training
    model.eval()
    try:
        return EVALUATORS[name](model, tokenizer, n=n, device=device, **kw)
    finally:
        model.train(was_training)
