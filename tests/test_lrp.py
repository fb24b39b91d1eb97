"""MambaLRP itself: conservation, the four rules against a hand-written reference, `lrp_mode`
restoring the model exactly, and the chunked scan against the step-by-step recurrence."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_untouched, hand_gradient_x_input, rich_model, snapshot, tiny_model

import mambalrp_tools as mlt
from mambalrp_tools.scan import selective_scan
from reference import reference_scan

RULES = ("silu", "ssm", "gate", "norm")
ALL_OFF = {r: False for r in RULES}


def ids_for(seed, batch, length, vocab=97):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def rel_max_diff(a, b):
    """max |a - b| / max |b|"""
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- conservation

@pytest.mark.parametrize("seed,length", [(0, 500), (1, 1), (2, 37), (3, 129)])
def test_mambalrp_conserves_with_relevance_biases_zeroed(arch, seed, length):
    model = rich_model(arch, seed, zero_biases=True)  # dt_proj's bias stays non-zero
    assert model.base_model.layers[0].mixer.dt_proj.bias.abs().min() > 0
    expl = mlt.explain(model, ids_for(seed, 2, length))
    assert expl.relevance.dtype == torch.float32 and expl.relevance.shape == (2, length)
    assert expl.logit.abs().min() > 1e-3  # a relative error needs a non-vanishing f
    err = (expl.relevance.double().sum(-1) - expl.logit.double()).abs() / expl.logit.double().abs()
    assert torch.allclose(err, expl.conservation_error)
    assert err.max() <= 1e-5, err
    # f is the model's own logit
    with torch.no_grad():
        logits = model(ids_for(seed, 2, length)).logits[:, -1]
    assert torch.allclose(expl.logit, logits[torch.arange(2), expl.target], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_x_input_does_not_conserve(arch, seed):
    model = rich_model(arch, seed, zero_biases=True)
    ids = ids_for(seed, 3, 60)
    lrp = mlt.explain(model, ids, method="mambalrp")
    gi = mlt.explain(model, ids, method="gradient_x_input")
    assert torch.equal(lrp.target, gi.target)
    torch.testing.assert_close(lrp.logit, gi.logit)  # same f (up to float rounding of the patched ops)
    assert lrp.conservation_error.max() <= 1e-5
    assert gi.conservation_error.min() > 1e-2, gi.conservation_error
    assert rel_max_diff(gi.relevance, lrp.relevance) > 1e-2


def test_biases_absorb_relevance(arch):
    """The conservation test is sensitive: with the relevance-carrying biases non-zero it fails."""
    model = rich_model(arch, 0, zero_biases=False)
    expl = mlt.explain(model, ids_for(0, 2, 40))
    assert expl.conservation_error.min() > 1e-4, expl.conservation_error


# --------------------------------------------------------------------------- rules

def test_each_rule_flag_changes_relevance(arch):
    model = rich_model(arch, 0, zero_biases=True)
    ids = ids_for(1, 2, 30)
    all_on = mlt.explain(model, ids).relevance
    assert torch.equal(mlt.explain(model, ids, rules={r: True for r in RULES}).relevance, all_on)
    # compare the context tokens: the explained token's own embedding (tied to the head) dominates
    all_on = all_on[:, :-1]
    all_off = mlt.explain(model, ids, rules=ALL_OFF).relevance[:, :-1]
    for rule in RULES:
        one_off = mlt.explain(model, ids, rules={rule: False}).relevance[:, :-1]
        only_on = mlt.explain(model, ids, rules={**ALL_OFF, rule: True}).relevance[:, :-1]
        assert rel_max_diff(one_off, all_on) > 1e-3, f"turning {rule} off changed nothing"
        assert rel_max_diff(only_on, all_off) > 1e-3, f"turning {rule} on alone changed nothing"


def test_all_rules_off_is_gradient_x_input_by_hand_on_the_unpatched_model(arch):
    model = rich_model(arch, 2)  # biases non-zero: the identity holds regardless
    ids = ids_for(2, 2, 25)
    target = torch.tensor([5, 71])
    by_hand, f = hand_gradient_x_input(model, ids, target)
    for kwargs in ({"rules": ALL_OFF}, {"method": "gradient_x_input"}, {"method": "gi"}):
        expl = mlt.explain(model, ids, target=target, **kwargs)
        torch.testing.assert_close(expl.logit, f, rtol=1e-5, atol=1e-5)
        assert rel_max_diff(expl.relevance, by_hand) < 1e-5, kwargs


def test_lrp_ln_is_the_norm_rule_alone(arch):
    model = rich_model(arch, 3, zero_biases=True)
    ids = ids_for(3, 2, 20)
    lrp_ln = mlt.explain(model, ids, method="lrp_ln").relevance
    norm_only = mlt.explain(model, ids, rules={**ALL_OFF, "norm": True}).relevance
    torch.testing.assert_close(lrp_ln, norm_only)


def test_unknown_rule_is_a_value_error(arch):
    model = tiny_model(arch)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="rule"):
        mlt.explain(model, ids_for(0, 1, 5), rules={"softmax": False})
    with pytest.raises(ValueError, match="rule"):
        with mlt.lrp_mode(model, rules={"sillu": True}):
            pass
    assert_untouched(model, snap)


# --------------------------------------------------------------------------- hand-written reference

def reference_mambalrp(model, ids, target, rules):
    """MambaLRP of one sample written out step by step in float64, straight from DESIGN §2.

    `[v]` of the design is `keep(v, rule)`: v.detach() when the rule is on. The mixer runs a direct
    loop over time (causal depthwise convolution, then the recurrence), nothing shared with the engine.
    Returns (relevance [T], f).
    """

    def keep(v, on):
        return v.detach() if on else v

    def p(t):
        return t.detach().to(torch.float64)

    def silu(a):  # silu rule: a * [sigmoid(a)]
        return a * keep(torch.sigmoid(a), rules["silu"])

    def rms(x, weight, eps):  # norm rule: x * [rsqrt(mean(x^2) + eps)] * w
        out = x * keep(torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps), rules["norm"])
        return out if weight is None else out * weight

    backbone = model.base_model
    falcon = model.config.model_type == "falcon_mamba"
    T = ids.shape[0]
    emb = p(backbone.embeddings.weight)[ids].clone().requires_grad_()  # [T, H]
    x = emb
    for block in backbone.layers:
        mixer = block.mixer
        d, n, r = mixer.intermediate_size, mixer.ssm_state_size, mixer.time_step_rank
        h = rms(x, p(block.norm.weight), block.norm.variance_epsilon)
        xz = h @ p(mixer.in_proj.weight).T
        if mixer.in_proj.bias is not None:
            xz = xz + p(mixer.in_proj.bias)
        xs, z = xz[:, :d], xz[:, d:]
        w = p(mixer.conv1d.weight)[:, 0, :]  # [d, K]
        K = w.shape[1]
        A = -torch.exp(p(mixer.A_log))  # [d, n]
        state = torch.zeros(d, n, dtype=torch.float64)
        outs = []
        for t in range(T):
            a = p(mixer.conv1d.bias).clone() if mixer.conv1d.bias is not None else torch.zeros(d, dtype=torch.float64)
            for k in range(K):  # causal: tap k reads position t - (K - 1) + k, zeros before the start
                j = t - (K - 1) + k
                if j >= 0:
                    a = a + w[:, k] * xs[j]
            u = silu(a)  # [d]
            proj = p(mixer.x_proj.weight) @ u
            dt, B, C = proj[:r], proj[r:r + n], proj[r + n:]
            if falcon:  # weightless RMS norms on dt, B, C (the ssm rule detaches what follows anyway)
                dt, B, C = (rms(v, None, mixer.rms_eps) for v in (dt, B, C))
            delta = F.softplus(p(mixer.dt_proj.weight) @ dt + p(mixer.dt_proj.bias))  # [d]
            delta, B, C = keep(delta, rules["ssm"]), keep(B, rules["ssm"]), keep(C, rules["ssm"])
            A_bar = torch.exp(delta[:, None] * A)  # [d, n]
            B_bar = delta[:, None] * B[None, :]  # [d, n]
            state = A_bar * state + B_bar * u[:, None]
            y = state @ C + p(mixer.D) * u
            g = y * silu(z[t])
            if rules["gate"]:
                g = g / 2 + (g / 2).detach()
            out = p(mixer.out_proj.weight) @ g
            if mixer.out_proj.bias is not None:
                out = out + p(mixer.out_proj.bias)
            outs.append(out)
        x = x + torch.stack(outs)  # residual: relevance passes through
    final = rms(x, p(backbone.norm_f.weight), backbone.norm_f.variance_epsilon)
    f = (final[-1] @ p(model.get_output_embeddings().weight).T)[target]
    (grad,) = torch.autograd.grad(f, emb)
    return (emb * grad).sum(-1).detach(), f.detach()


# ------------------------------------------------------------ the rules as generic functions


def test_rule_functions_keep_values_and_rewrite_only_the_gradient():
    from mambalrp_tools import rules

    g = torch.Generator().manual_seed(0)
    a, y, w = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))

    def grads(fn, *xs):
        xs = [x.clone().requires_grad_() for x in xs]
        out = fn(*xs)
        return out.detach(), torch.autograd.grad(out.sum(), xs)

    # identity rule: a * [sigmoid(a)] has the values of SiLU and the gradient sigmoid(a)
    for rule in (True, False):
        value, (da,) = grads(lambda x: rules.silu(x, rule), a)
        torch.testing.assert_close(value, F.silu(a))
        expected = torch.sigmoid(a) if rule else torch.sigmoid(a) * (1 + a * (1 - torch.sigmoid(a)))
        torch.testing.assert_close(da, expected)
    value, (da,) = grads(lambda x: rules.identity(x, torch.tanh(x), True), a)  # any a * factor(a)
    torch.testing.assert_close(value, a * torch.tanh(a))
    torch.testing.assert_close(da, torch.tanh(a))
    # half rule: each factor of y * g gets half of the product's relevance (gradient x input)
    value, (dy, dg) = grads(lambda p, q: rules.gate(p, q, True), y, w)
    torch.testing.assert_close(value, y * w)
    torch.testing.assert_close(dy * y, 0.5 * y * w)
    torch.testing.assert_close(dg * w, 0.5 * y * w)
    # stop-gradient normaliser: linear in x, so x . grad equals the output (relevance conserved)
    value, (dx,) = grads(lambda x: rules.rms_norm(x, None, 1e-6, True), a)
    torch.testing.assert_close(value, a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close((dx * a).sum(), value.sum())
    # ssm rule: everything the scan reads besides u is a constant; off, nothing changes
    params = [t.clone().requires_grad_() for t in (a, y, w, a)]  # delta, A, B, C; D = None
    assert all(not t.requires_grad for t in rules.ssm(*params, None, True)[:4])
    assert rules.ssm(*params, None, True)[4] is None
    assert all(o is t for o, t in zip(rules.ssm(*params, None, False), params))


@pytest.mark.parametrize("silu_rule", [True, False])
@pytest.mark.parametrize("gate_rule", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gated_silu_is_the_gate_of_silu_in_one_node(silu_rule, gate_rule, dtype):
    """`gated_silu` (what the mixers use) has the values and gradients of the rule functions composed,
    for every setting of the two rules, and keeps only y and z for backward."""
    from mambalrp_tools import rules

    g = torch.Generator().manual_seed(1)
    y0, z0, seed = (torch.randn(4, 6, generator=g, dtype=dtype) * 3 for _ in range(3))
    r = rules.Rules(silu=silu_rule, gate=gate_rule)
    results = []
    for fn in (lambda y, z: rules.gated_silu(y, z, r), lambda y, z: rules.gate(y, rules.silu(z, silu_rule), gate_rule)):
        y, z = y0.clone().requires_grad_(), z0.clone().requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = fn(y, z)
        results.append((out.detach(), *torch.autograd.grad(out, (y, z), seed), len(saved)))
    ours, composed = results
    tol = dict(rtol=0, atol=0) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    for a, b in zip(ours[:3], composed[:3]):
        torch.testing.assert_close(a, b, **tol)
    assert ours[3] == 2 and composed[3] > 2  # y and z, against y, SiLU(z) and sigmoid(z) (or z)


def test_upcast_lives_in_numerics_and_keeps_its_old_import_path():
    from mambalrp_tools import numerics, rules

    assert rules.upcast is numerics.upcast
    assert numerics.upcast(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert numerics.upcast(torch.ones(2, dtype=torch.float64)).dtype == torch.float64


@pytest.fixture(scope="module", params=["mamba", "falcon_mamba"])
def reference_case(request):
    """A two-layer float64 model with every parameter non-trivial (biases included)."""
    model = rich_model(request.param, 7, hidden_size=16, state_size=4, layers=2, dtype=torch.float64)
    ids = ids_for(7, 1, 11)[0]
    return model, ids


@pytest.mark.parametrize("combo", list(itertools.product([True, False], repeat=4)),
                         ids=lambda c: "".join(r[:2] if on else "--" for r, on in zip(RULES, c)))
def test_engine_agrees_with_the_hand_written_reference(reference_case, combo):
    model, ids = reference_case
    rules = dict(zip(RULES, combo))
    target = 13
    ref, f_ref = reference_mambalrp(model, ids, target, rules)
    expl = mlt.explain(model, ids, target=target, rules=rules)
    # both compute in float64 (a float64 model stays float64); the Explanation rounds to float32
    assert abs(float(expl.logit[0]) - float(f_ref)) <= 1e-6 * abs(float(f_ref))
    assert rel_max_diff(expl.relevance[0].double(), ref) < 1e-6, (expl.relevance[0], ref)


def test_hand_written_reference_is_sound(reference_case):
    """The reference's forward is the model's, all-off is the true gradient, all-on conserves."""
    model, ids = reference_case
    ref_off, f = reference_mambalrp(model, ids, 3, ALL_OFF)
    by_hand, f_hf = hand_gradient_x_input(model, ids[None], torch.tensor([3]))
    assert abs(float(f) - float(f_hf[0])) < 1e-6 * abs(float(f))
    assert rel_max_diff(ref_off, by_hand[0]) < 1e-6
    zeroed = rich_model(model.config.model_type, 7, zero_biases=True, hidden_size=16, state_size=4,
                        layers=2, dtype=torch.float64)
    ref_on, f = reference_mambalrp(zeroed, ids, 3, dict.fromkeys(RULES, True))
    assert abs(float(ref_on.sum() - f)) < 1e-10 * abs(float(f))


# --------------------------------------------------------------------------- lrp_mode

@pytest.mark.parametrize("rules", [None, ALL_OFF, {"ssm": False}, {"gate": False, "norm": False}])
def test_forward_values_unchanged_under_lrp_mode(arch, rules):
    model = rich_model(arch, 4)
    ids = ids_for(4, 2, 50)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    with torch.no_grad():
        plain = model(ids, use_cache=False).logits
        plain_masked = model(ids, attention_mask=mask, use_cache=False).logits
        with mlt.lrp_mode(model, rules=rules):
            patched = model(ids, use_cache=False).logits  # use_cache=False: the patched path runs
            patched_masked = model(ids, attention_mask=mask, use_cache=False).logits
            default_call = model(ids).logits
    torch.testing.assert_close(patched, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patched_masked, plain_masked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(default_call, plain, rtol=1e-5, atol=1e-5)


def _documented_lrp_mode_relevance(model, ids, target, **forward_kwargs):
    """DESIGN §1 / the lrp_mode docstring: Gradient x Input inside lrp_mode is MambaLRP."""
    with mlt.lrp_mode(model):
        emb = model.get_input_embeddings()(ids).detach().requires_grad_()
        f = model(inputs_embeds=emb, **forward_kwargs).logits[0, -1, target]
        (grad,) = torch.autograd.grad(f, emb)
    return (emb * grad).sum(-1).detach(), f.detach()


def test_lrp_mode_by_hand_with_use_cache_false_is_mambalrp(arch):
    model = rich_model(arch, 5, zero_biases=True)
    ids = ids_for(5, 1, 40)
    expl = mlt.explain(model, ids, target=11)
    relevance, f = _documented_lrp_mode_relevance(model, ids, 11, use_cache=False)
    torch.testing.assert_close(relevance, expl.relevance, rtol=1e-5, atol=1e-6)
    assert abs(float(relevance.sum() - f)) <= 1e-5 * abs(float(f))


def test_lrp_mode_documented_usage_is_mambalrp(arch):
    model = rich_model(arch, 5, zero_biases=True)
    ids = ids_for(5, 1, 40)
    expl = mlt.explain(model, ids, target=11)
    relevance, f = _documented_lrp_mode_relevance(model, ids, 11)  # exactly as DESIGN §1 shows it
    torch.testing.assert_close(relevance, expl.relevance, rtol=1e-5, atol=1e-6)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits, model(ids, use_cache=False).logits


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_lrp_mode_restores_the_model_exactly_after_an_exception(arch, exc):
    model = rich_model(arch, 6)
    ids = ids_for(6, 2, 12)
    snap, before = snapshot(model), _logits(model, ids)
    with pytest.raises(exc):
        with mlt.lrp_mode(model):
            emb = model.get_input_embeddings()(ids).detach().requires_grad_()
            f = model(inputs_embeds=emb, use_cache=False).logits[:, -1, 0].sum()
            torch.autograd.grad(f, emb)
            assert model.base_model.layers[0].mixer.__dict__.get("forward") is not None  # patched
            raise exc("interrupted")
    assert_untouched(model, snap)
    assert all(p.grad is None for p in model.parameters())
    for a, b in zip(before, _logits(model, ids)):
        assert torch.equal(a, b)


def test_lrp_mode_restores_after_an_error_inside_a_patched_forward(arch):
    model = rich_model(arch, 6)
    ids = ids_for(6, 1, 8)
    snap, before = snapshot(model), _logits(model, ids)
    with pytest.raises(RuntimeError):
        with mlt.lrp_mode(model):
            model(ids, attention_mask=torch.ones(1, 3, dtype=torch.long), use_cache=False)  # shape error mid-forward
    assert_untouched(model, snap)
    for a, b in zip(before, _logits(model, ids)):
        assert torch.equal(a, b)


def test_nested_lrp_mode_restores_each_level(arch):
    model = rich_model(arch, 6, zero_biases=True)
    ids = ids_for(6, 1, 20)
    snap, before = snapshot(model), _logits(model, ids)
    mixer = model.base_model.layers[0].mixer
    with mlt.lrp_mode(model):
        outer = mixer.__dict__["forward"]
        with mlt.lrp_mode(model, rules=ALL_OFF):
            assert mixer.__dict__["forward"] is not outer
        assert mixer.__dict__["forward"] is outer
    assert_untouched(model, snap)
    for a, b in zip(before, _logits(model, ids)):
        assert torch.equal(a, b)


def test_explain_leaves_the_model_bit_identical(arch):
    model = rich_model(arch, 8)
    ids = ids_for(8, 2, 30)
    snap, before = snapshot(model), _logits(model, ids)
    requires = [p.requires_grad for p in model.parameters()]
    for method in ("mambalrp", "lrp_ln", "gradient_x_input", "gradient"):
        mlt.explain(model, ids, method=method)
    mlt.explain(model, ids, checkpoint=True, chunk_size=7)
    assert_untouched(model, snap)
    assert [p.requires_grad for p in model.parameters()] == requires
    assert all(p.grad is None for p in model.parameters())
    for a, b in zip(before, _logits(model, ids)):
        assert torch.equal(a, b)


def test_explain_in_train_mode_stays_in_train_mode(arch):
    model = rich_model(arch, 9, zero_biases=True)
    ids = ids_for(9, 2, 25)
    expected = mlt.explain(model, ids)  # eval mode
    model.train()
    snap = snapshot(model)
    expl = mlt.explain(model, ids)
    assert_untouched(model, snap)
    assert model.training and all(m.training for m in model.modules())
    torch.testing.assert_close(expl.relevance, expected.relevance)  # explained in eval mode all the same


def test_explain_interrupted_inside_a_method_restores_the_model(arch, monkeypatch):
    from mambalrp_tools.methods import METHODS

    def interrupted(query):
        query.gradient_x_input(None)  # a full patched forward and backward, then Ctrl-C
        with query.patched(None):
            raise KeyboardInterrupt

    monkeypatch.setitem(METHODS, "interrupted", interrupted)
    model = rich_model(arch, 10).train()
    ids = ids_for(10, 1, 9)
    snap = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        mlt.explain(model, ids, method="interrupted")
    assert_untouched(model, snap)
    assert all(p.grad is None for p in model.parameters())


def test_checkpointing_and_chunk_size_do_not_change_relevance(arch):
    model = rich_model(arch, 11, zero_biases=True)
    ids = ids_for(11, 2, 50)
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    base = mlt.explain(model, ids, attention_mask=mask).relevance
    for kwargs in ({"checkpoint": True}, {"chunk_size": 1}, {"chunk_size": 9}, {"chunk_size": 50},
                   {"checkpoint": True, "chunk_size": 16}, {"backend": "torch"}):
        expl = mlt.explain(model, ids, attention_mask=mask, **kwargs)
        torch.testing.assert_close(expl.relevance, base, rtol=1e-5, atol=1e-6)


def test_patched_forwards_accept_both_cache_keywords(arch):
    """transformers 5.17 passes `cache_params=`, 5.24 `cache=`: the replacements take either."""
    model = rich_model(arch, 12)
    block = model.base_model.layers[0]
    hidden = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = block(hidden)
        with mlt.lrp_mode(model):
            outs = [block(hidden), block(hidden, cache=None), block(hidden, cache_params=None),
                    block(hidden, cache_params=None, attention_mask=None)]
            mixed = [block.mixer(block.norm(hidden), cache=None), block.mixer(block.norm(hidden), cache_params=None)]
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[0], mixed[1])


# --------------------------------------------------------------------------- chunked scan

def scan_inputs(seed, b=2, d=3, n=4, T=13, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u, B, C = rnd(b, d, T), rnd(b, n, T), rnd(b, n, T)
    delta = F.softplus(rnd(b, d, T))
    A = -torch.exp(0.5 * rnd(d, n))
    D = rnd(d)
    return [u, delta, A, B, C, D]


@pytest.mark.parametrize("chunk", [1, 2, 4, 5, 12, 13, 14, 128])
def test_chunked_scan_matches_reference_with_all_gradients(chunk):
    inputs = [t.requires_grad_() for t in scan_inputs(chunk)]
    dy = torch.randn(2, 3, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(99))
    y = selective_scan(*inputs, chunk_size=chunk)
    y_ref = reference_scan(*inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(y, inputs, dy)
    grads_ref = torch.autograd.grad(y_ref, inputs, dy)
    for name, g, g_ref in zip("u delta A B C D".split(), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10, msg=f"d{name}, chunk {chunk}")


@pytest.mark.parametrize("chunk", [1, 3, 13])
def test_chunked_scan_linear_path_with_detached_parameters(chunk):
    """The ssm rule's path: only u (and D) need gradients, the backward is the reverse scan alone."""
    u, delta, A, B, C, D = scan_inputs(chunk + 50)
    u.requires_grad_()
    D.requires_grad_()
    dy = torch.randn_like(u)
    y = selective_scan(u, delta, A, B, C, D, chunk_size=chunk)
    y_ref = reference_scan(u, delta, A, B, C, D)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(torch.autograd.grad(y, (u, D), dy), torch.autograd.grad(y_ref, (u, D), dy)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)
    # linear in u: y(2u) = 2 y(u)
    torch.testing.assert_close(selective_scan(2 * u, delta, A, B, C, D, chunk_size=chunk), 2 * y,
                               rtol=1e-12, atol=1e-12)


def test_adjoint_by_forward_scan_equals_the_gradient():
    """The backward that forward-only kernels use: the adjoint run as a forward scan in reversed time."""
    from mambalrp_tools.scan import adjoint_by_forward_scan

    u, delta, A, B, C, D = scan_inputs(1, T=23)
    u.requires_grad_()
    dy = torch.randn_like(u)
    (du_ref,) = torch.autograd.grad(reference_scan(u, delta, A, B, C, D), u, dy)

    def kernel(u, delta, A, B, C, D=None, return_last_state=False):  # always from a zero state
        return selective_scan(u, delta, A, B, C, D, return_last_state=return_last_state)

    du, _ = adjoint_by_forward_scan(kernel, dy, delta, A, B, C, D)
    torch.testing.assert_close(du, du_ref, rtol=1e-10, atol=1e-12)
    delta[0, 1, 5] = 1e-40  # would overflow dy / delta: the caller must fall back
    assert adjoint_by_forward_scan(kernel, dy, delta, A, B, C, D) is None


@pytest.mark.parametrize("split", [1, 5, 12])
@pytest.mark.parametrize("detached", [False, True])
def test_chunked_scan_continues_from_a_state(split, detached):
    """Two scans chained through the last state equal one scan, in values and in every gradient."""
    inputs = scan_inputs(split, T=13)
    for i, t in enumerate(inputs):
        t.requires_grad_(i in (0, 5) or not detached)  # detached: the ssm rule's linear path
    dy = torch.randn_like(inputs[0])
    first, state = selective_scan(*(t[..., :split] if t.dim() == 3 else t for t in inputs), chunk_size=3,
                                  return_last_state=True)
    second = selective_scan(*(t[..., split:] if t.dim() == 3 else t for t in inputs), chunk_size=4,
                            initial_state=state)
    y = torch.cat([first, second], dim=-1)
    y_ref = reference_scan(*inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    wanted = [t for t in inputs if t.requires_grad]
    for g, g_ref in zip(torch.autograd.grad(y, wanted, dy), torch.autograd.grad(y_ref, wanted, dy)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_chunked_scan_gradcheck_through_the_states():
    u, delta, A, B, C, D = [t.requires_grad_() for t in scan_inputs(6, b=1, d=2, n=3, T=7)]
    s0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)

    def run(u, delta, A, B, C, D, s0):
        y, last = selective_scan(u, delta, A, B, C, D, chunk_size=3, initial_state=s0, return_last_state=True)
        return y, last

    assert torch.autograd.gradcheck(run, (u, delta, A, B, C, D, s0))
    # and the ssm rule's path, where only u, D and the state need gradients
    assert torch.autograd.gradcheck(lambda u, D, s0: run(u, delta.detach(), A.detach(), B.detach(), C.detach(), D, s0),
                                    (u, D, s0))


def test_chunked_scan_gradcheck_and_no_D():
    inputs = [t.requires_grad_() for t in scan_inputs(5, b=1, d=2, n=3, T=7)]
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk_size=3), inputs)
    u, delta, A, B, C, _ = inputs
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, chunk_size=4), reference_scan(u, delta, A, B, C))


def test_chunked_scan_rejects_bad_chunk_size():
    with pytest.raises(ValueError):
        selective_scan(*scan_inputs(0), chunk_size=0)
