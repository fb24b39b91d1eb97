"""Property tests: random tiny configs, lengths 1..300, batches with left padding (hypothesis).

Examples are derandomized (the same ones on every run, so CI cannot flake on a new draw) and each test
has a pytest timeout; `deadline` is off because one example's time depends on the shared CPU's load.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_untouched, randomize_trivial_parameters, snapshot, zero_relevance_biases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import FalconMambaConfig, FalconMambaForCausalLM, MambaConfig, MambaForCausalLM

import mambalrp_tools as mlt

VOCAB = 61
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops: one intra-op thread is faster on a shared CPU (see test_baselines)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


configs = st.fixed_dictionaries({
    "arch": st.sampled_from(["mamba", "falcon_mamba"]),
    "hidden_size": st.sampled_from([4, 8, 16, 24]),
    "expand": st.sampled_from([1, 2]),
    "num_hidden_layers": st.integers(1, 3),
    "state_size": st.integers(1, 16),
    "conv_kernel": st.integers(2, 4),
    "time_step_rank": st.one_of(st.just("auto"), st.integers(1, 8)),
    "residual_in_fp32": st.booleans(),
    "use_bias": st.booleans(),
    "use_conv_bias": st.booleans(),
    "seed": st.integers(0, 2**16),
})


def build(cfg, zero_biases=False):
    """A random model from `cfg` whose every parameter matters (norm weights, D, biases randomised)."""
    cfg = dict(cfg)
    arch, seed, expand = cfg.pop("arch"), cfg.pop("seed"), cfg.pop("expand")
    config_cls, model_cls = (MambaConfig, MambaForCausalLM) if arch == "mamba" else (FalconMambaConfig,
                                                                                     FalconMambaForCausalLM)
    torch.manual_seed(seed)
    model = model_cls(config_cls(vocab_size=VOCAB, intermediate_size=expand * cfg["hidden_size"], **cfg)).eval()
    randomize_trivial_parameters(model, seed)
    if zero_biases:
        zero_relevance_biases(model)
    return model


def lengths(max_len=300):
    return st.integers(1, max_len)


def ids_of(seed, batch, length):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.timeout(240)
@SETTINGS
@given(cfg=configs, length=lengths(), batch=st.integers(1, 2))
def test_mambalrp_conserves_with_biases_zero(cfg, length, batch):
    """sum_t R_t = f within float32 rounding of the terms summed (|f| can be near 0 on random models)."""
    model = build(cfg, zero_biases=True)
    expl = mlt.explain(model, ids_of(cfg["seed"], batch, length))
    total = expl.relevance.double().sum(-1)
    scale = torch.maximum(expl.logit.double().abs(), expl.relevance.double().abs().sum(-1))
    assert ((total - expl.logit.double()).abs() <= 1e-5 * scale + 1e-7).all(), (total, expl.logit)


@pytest.mark.timeout(240)
@SETTINGS
@given(cfg=configs, length=lengths())
def test_forward_unchanged_and_model_untouched(cfg, length):
    model = build(cfg)
    ids = ids_of(cfg["seed"] + 1, 2, length)
    snap = snapshot(model)
    with torch.no_grad():
        reference = model(ids).logits
    expl = mlt.explain(model, ids, method="mambalrp")
    assert_untouched(model, snap)
    with mlt.lrp_mode(model), torch.no_grad():
        patched = model(ids).logits
    assert_untouched(model, snap)
    torch.testing.assert_close(patched, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(expl.logit, reference[torch.arange(2), -1, expl.target], rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(240)
@SETTINGS
@given(cfg=configs, length=lengths(120), pads=st.lists(st.integers(0, 40), min_size=2, max_size=3),
       method=st.sampled_from(["mambalrp", "gradient_x_input"]))
def test_left_padded_batch_equals_single(cfg, length, pads, method):
    """Each sample of a left-padded batch gets the relevance (and f) it gets alone; padding gets 0.

    Without an in_proj bias: with one, transformers' own forward lets padding leak into the conv
    (test_api's test_left_padding_with_in_proj_bias_matches_transformers), so batch != single there.
    """
    model = build({**cfg, "use_bias": False})
    width = length + max(pads)
    rows = [ids_of(cfg["seed"] + i, 1, length - min(p, length - 1))[0] for i, p in enumerate(pads)]
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    batch = mlt.explain(model, ids, attention_mask=mask, method=method, target=3)
    for i, row in enumerate(rows):
        single = mlt.explain(model, row[None], method=method, target=3)
        n = len(row)
        assert torch.equal(batch.relevance[i, : width - n], torch.zeros(width - n))
        scale = float(single.relevance.abs().max()) + 1e-6
        torch.testing.assert_close(batch.relevance[i, width - n:], single.relevance[0], rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(batch.logit[i], single.logit[0], rtol=1e-4, atol=1e-5)
