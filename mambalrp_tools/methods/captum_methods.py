"""Gradient-based baselines computed by Captum on the input embeddings (rules off: true gradients).

Every method here runs the model through `query.patched(Rules.none())` (the chunked-scan forward
with ordinary autograd) and hands `query.forward_func` to a Captum attribution class; nothing in
this module integrates or averages gradients by hand.

Token aggregation and sign:
- `gradient` (Captum `Saliency`): L2 norm of df/de over the embedding dimension, >= 0.
- `integrated_gradients` (Captum `IntegratedGradients` on `inputs_embeds`): signed, summed over
  the embedding dimension; sum_t R_t ~= f(x) - f(baseline) (completeness).
- `smoothgrad` (Captum `NoiseTunnel(InputXGradient)`, nt_type="smoothgrad"): signed, summed over
  the embedding dimension.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

from ..architectures import architecture_of
from ..backends import free_gpu_memory
from ..rules import Rules
from .base import register

BASELINES = ("zero", "pad", "unk")
#: "auto" batches (IG path points, SmoothGrad noisy copies) keep (points x tokens x layers x d_inner)
#: per forward below this off the GPU: a few GB of activations (benchmarks/results/constants.md)
AUTO_BATCH_ELEMENTS = 2**27
#: bytes autograd keeps per such element, rounded up from a measurement (benchmarks/results/constants.md);
#: on a GPU "auto" batches fill half of the free memory at this rate
AUTO_BATCH_BYTES_PER_ELEMENT = 24
#: on CPU also (points x d_inner x d_state) below this, so that the scan's per-step states stay in a
#: core's L2 cache: larger batches run slower per point (benchmarks/results/constants.md)
AUTO_BATCH_CPU_STATE_FLOATS = 2**15


@register("gradient", aliases=("saliency",), signed=False)
def gradient(query):
    """Saliency: the L2 norm of df/de per token (non-negative, as Captum's `Saliency`)."""
    query.resolve()
    embeds = query.embeddings().requires_grad_()
    with query.patched(Rules.none()):
        grads = Saliency(query.forward_func).attribute(
            embeds, additional_forward_args=query.forward_args, abs=False
        )
    return grads.norm(dim=-1)


@register("integrated_gradients", aliases=("ig",), completeness="f - f(baseline)", conserves=True)
def integrated_gradients(query, n_steps: int = 50, baseline="zero", baseline_token_id: int | None = None,
                         internal_batch_size: int | str | None = "auto", method: str = "gausslegendre"):
    """Integrated Gradients (Captum `IntegratedGradients`) on the input embeddings.

    R_t = sum_d (e_{t,d} - b_{t,d}) * mean over the path of df/de_{t,d}: signed, summed over the
    embedding dimension d; sum_t R_t approximates f(x) - f(baseline) (completeness; more `n_steps`,
    smaller error).

    baseline: "zero" (the all-zero embedding, default), "pad" / "unk" (every position replaced by the
        embedding of that token; its id is `baseline_token_id` if given, else the model config's
        `pad_token_id` / `unk_token_id`), an int token id, or a tensor broadcastable to the input
        embeddings [B, T, H] (e.g. [H] or [T, H]).
    internal_batch_size: how many of the n_steps * B path points run through the model at once:
        "auto" (default) sizes it to the model, the input length and the device (see `auto_batch`),
        None runs all at once; Captum runs at least one step of every sample together (B points).

    The zero baseline starts the path where every RMSNorm's input is below its eps: f(alpha x)
    rises to about f(x) over a short first stretch of the path, so a 50-step quadrature integrates
    a near-step and completeness can be far off. Check the result's `conservation_error`, or use a
    token baseline, whose path stays away from zero (README, "Integrated Gradients' integration error").
    On a GPU, `explain(..., precision="tf32")` runs its float32 matmuls on TF32 tensor cores in about
    half the time; on trained models that moves the relevance far less than the integration error
    does (README, "Integrated Gradients on a GPU").
    """
    embeds = query.embeddings()
    base = baseline_embeddings(query.model, query.input_ids, embeds, baseline, baseline_token_id)
    query.resolve(baseline=base)  # the completeness target is f(x) - f(baseline)
    if internal_batch_size == "auto":
        batch = query.input_ids.shape[0]
        internal_batch_size = max(batch, auto_batch(query, int(n_steps) * batch))
    with query.patched(Rules.none()):
        attr = IntegratedGradients(query.forward_func).attribute(
            embeds.requires_grad_(), baselines=base, additional_forward_args=query.forward_args,
            n_steps=int(n_steps), method=method, internal_batch_size=internal_batch_size,
        )
    return attr.sum(-1)


@register("smoothgrad", aliases=("sg",))
def smoothgrad(query, nt_samples: int = 25, stdevs: float = 0.15, nt_samples_batch_size: int | str | None = "auto",
               seed: int = 0):
    """SmoothGrad over Input x Gradient (Captum `NoiseTunnel(InputXGradient)`, nt_type="smoothgrad").

    R_t = sum_d mean over noise eps of (e + eps)_{t,d} * df/de_{t,d}(e + eps): signed, summed over
    the embedding dimension. eps ~ N(0, sigma^2) per entry with sigma = `stdevs` x the standard
    deviation of all entries of the model's input embedding matrix, so the same `stdevs` means the same
    relative noise for every model (0.15 = 15%, within the 10-20% SmoothGrad recommends).

    nt_samples: noisy copies averaged per sample; nt_samples_batch_size: how many run at once
        ("auto": sized like Integrated Gradients' batches, see `auto_batch`; None: all).
    seed: the noise depends only on `seed` and the sample, not on the rest of the batch, its left
        padding or the global RNG (which is left untouched).
    """
    query.resolve()
    if stdevs < 0:
        raise ValueError(f"stdevs must be >= 0 (a fraction of the embedding std), got {stdevs}")
    weight = query.model.get_input_embeddings().weight
    sigma = float(stdevs) * float(weight.detach().float().std())
    tunnel = NoiseTunnel(InputXGradient(query.forward_func))
    if nt_samples_batch_size == "auto":
        nt_samples_batch_size = max(1, auto_batch(query, int(nt_samples)))
    out = torch.zeros(query.input_ids.shape, device=query.input_ids.device)
    # one Captum call per sample: Captum draws noise for the whole batch at once, which would make a
    # sample's attribution depend on its neighbours
    for i, sub, start in per_sample(query):
        with _seeded(seed, weight.device), sub.patched(Rules.none()):
            attr = tunnel.attribute(
                sub.embeddings().requires_grad_(), nt_type="smoothgrad", nt_samples=int(nt_samples),
                nt_samples_batch_size=nt_samples_batch_size, stdevs=sigma,
                additional_forward_args=sub.forward_args,
            )
        out[i, start:] = attr[0].sum(-1)
    return out


def auto_batch(query, points: int) -> int:
    """How many of `points` inputs of the query's length to run through the model at once (may
    return 0: the caller applies its minimum); see `batch_fit`."""
    sizes = architecture_of(query.model).sizes(query.model)
    device = query.input_ids.device
    free = free_gpu_memory(device) if device.type == "cuda" else None
    return min(points, batch_fit(query.seq_len * sizes.layers * sizes.inner, sizes.inner * sizes.state,
                                 device.type, free))


def batch_fit(elements: int, state_floats: int, device_type: str, free_bytes: int | None = None) -> int:
    """Inputs that fit at once, each keeping `elements` (tokens x layers x d_inner) activations and
    `state_floats` (d_inner x d_state) per scan step: on a GPU half of its free memory at
    AUTO_BATCH_BYTES_PER_ELEMENT, elsewhere AUTO_BATCH_ELEMENTS, and on CPU also
    AUTO_BATCH_CPU_STATE_FLOATS of scan states."""
    if device_type == "cuda":
        return free_bytes // 2 // (AUTO_BATCH_BYTES_PER_ELEMENT * elements)
    fit = AUTO_BATCH_ELEMENTS // elements
    if device_type == "cpu":
        fit = min(fit, AUTO_BATCH_CPU_STATE_FLOATS // state_floats)
    return fit


def per_sample(query):
    """(index, one-sample Query without its left padding, first kept position) for each sample."""
    T = query.seq_len
    pos = query.position % T
    for i in range(query.input_ids.shape[0]):
        start = 0
        mask = None
        if query.attention_mask is not None:
            mask = query.attention_mask[i : i + 1]
            nonzero = torch.nonzero(mask[0]).flatten()
            start = min(int(nonzero[0]), pos)  # never cut away the explained position
            mask = mask[:, start:]
            if bool(mask.all()):
                mask = None
        sub = dataclasses.replace(
            query, input_ids=query.input_ids[i : i + 1, start:], attention_mask=mask,
            target=query.target[i : i + 1],
            contrast=None if query.contrast is None else query.contrast[i : i + 1],
            position=pos - start,
        )
        yield i, sub, start


@contextlib.contextmanager
def _seeded(seed: int, device):
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def baseline_embeddings(model, input_ids, embeds, baseline, token_id=None) -> torch.Tensor:
    """The IG baseline as a tensor shaped like `embeds` [B, T, H] (see `integrated_gradients`)."""
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(embeds.device, embeds.dtype).expand_as(embeds).clone()
        except RuntimeError:
            raise ValueError(
                f"baseline tensor of shape {tuple(baseline.shape)} does not broadcast to the input embeddings "
                f"{tuple(embeds.shape)}; give [H], [T, H] or [B, T, H]"
            ) from None
    if isinstance(baseline, bool) or not isinstance(baseline, (str, int)):
        raise ValueError(f"baseline must be one of {BASELINES}, a token id or a tensor; got {baseline!r}")
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES}, a token id or a tensor")
        if baseline == "zero":
            return torch.zeros_like(embeds)
        if token_id is None:
            token_id = getattr(model.config, f"{baseline}_token_id", None)
        if token_id is None:
            raise ValueError(
                f"baseline={baseline!r} needs a token id, but the model config has no {baseline}_token_id; "
                f"pass baseline_token_id=<id> (e.g. tokenizer.{baseline}_token_id) or use baseline='zero'"
            )
    else:
        token_id = baseline
    vocab = model.get_input_embeddings().weight.shape[0]
    if not 0 <= int(token_id) < vocab:
        raise ValueError(f"baseline token id {int(token_id)} is outside the vocabulary [0, {vocab})")
    with torch.no_grad():
        ids = torch.full_like(input_ids, int(token_id))
        return model.get_input_embeddings()(ids).to(embeds.dtype)
