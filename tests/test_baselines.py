"""Baseline attributions (Captum), Mamba hidden attention, attention rollout and Mamba-Attr."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
from conftest import tiny_model

import mambalrp_tools as mlt
from mambalrp_tools.methods import Query, captum_methods
from mambalrp_tools.methods import hidden_attention
from mambalrp_tools.methods.hidden_attention import LayerSSM, attention_matrix, capture_layers, rollout_row
from reference import reference_scan

T = 12
# few steps / samples: these tests check plumbing, not approximation quality
FAST = {"integrated_gradients": {"n_steps": 8}, "smoothgrad": {"nt_samples": 3}}
MINE = ("gradient", "integrated_gradients", "smoothgrad", "attention_rollout", "mamba_attr")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these ops are tiny, and on a shared, loaded CPU two OpenMP threads wait on
    each other for milliseconds per op (measured 60x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return tiny_model("mamba", seed=0)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(1))


def run(model, ids, method, **kw):
    return mlt.explain(model, ids, method=method, **{**FAST.get(method, {}), **kw})


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("method", mlt.list_methods())
def test_finite_shape_and_deterministic(model, ids, method):
    a, b = run(model, ids, method), run(model, ids, method)
    assert a.relevance.shape == (2, T) and a.relevance.dtype == torch.float32
    assert torch.isfinite(a.relevance).all()
    assert a.relevance.abs().sum() > 0
    assert torch.equal(a.relevance, b.relevance)


@pytest.mark.parametrize("method", mlt.list_methods())
def test_batch_equals_single(model, ids, method):
    batch = run(model, ids, method, target=[3, 7])
    for i, tgt in enumerate((3, 7)):
        single = run(model, ids[i : i + 1], method, target=tgt)
        torch.testing.assert_close(batch.relevance[i], single.relevance[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", mlt.list_methods())
def test_left_padded_sample_equals_single(model, ids, method):
    """A shorter sample left-padded into a batch gets the relevance it gets alone (padding: 0)."""
    short = ids[1, 4:]
    padded = torch.stack([ids[0], torch.cat([torch.zeros(4, dtype=torch.long), short])])
    mask = torch.ones_like(padded)
    mask[1, :4] = 0
    batch = run(model, padded, method, attention_mask=mask, target=5)
    single = run(model, short[None], method, target=5)
    assert torch.equal(batch.relevance[1, :4], torch.zeros(4))
    torch.testing.assert_close(batch.relevance[1, 4:], single.relevance[0], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- Captum methods


def test_gradient_is_non_negative(model, ids):
    r = run(model, ids, "gradient").relevance
    assert (r >= 0).all() and (r > 0).any()


def _f_at(model, embeds, target, position=-1):
    with torch.no_grad():
        return model(inputs_embeds=embeds).logits[:, position].gather(1, target[:, None])[:, 0]


def test_ig_completeness_zero_baseline(arch, ids):
    """sum_t R_t = f(x) - f(0) within 2% at n_steps=256, on the target that moves most along the path."""
    model = tiny_model(arch, seed=0)
    embeds = model.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        gap = model(inputs_embeds=embeds).logits[:, -1] - model(inputs_embeds=torch.zeros_like(embeds)).logits[:, -1]
    target = gap.abs().argmax(-1)
    expected = gap.gather(1, target[:, None])[:, 0]
    assert (expected.abs() > 0.5).all()  # not a tiny difference
    r = mlt.explain(model, ids, target=target, method="ig", n_steps=256, baseline="zero").relevance
    rel_err = (r.double().sum(-1) - expected.double()).abs() / expected.double().abs()
    assert (rel_err < 0.02).all(), rel_err


def test_ig_token_baselines(model, ids):
    model.config.pad_token_id = 5
    try:
        emb5 = model.get_input_embeddings().weight[5].detach()
        pad = mlt.explain(model, ids, target=3, method="ig", n_steps=64, baseline="pad").relevance
        as_tensor = mlt.explain(model, ids, target=3, method="ig", n_steps=64, baseline=emb5).relevance
        as_id = mlt.explain(model, ids, target=3, method="ig", n_steps=64, baseline=5).relevance
        explicit = mlt.explain(model, ids, target=3, method="ig", n_steps=64, baseline="unk",
                               baseline_token_id=5).relevance
    finally:
        model.config.pad_token_id = 0
    torch.testing.assert_close(pad, as_tensor)
    torch.testing.assert_close(pad, as_id)
    torch.testing.assert_close(pad, explicit)
    # completeness against the pad baseline
    f_x = _f_at(model, model.get_input_embeddings()(ids), torch.tensor([3, 3]))
    f_b = _f_at(model, emb5.expand(2, T, -1), torch.tensor([3, 3]))
    torch.testing.assert_close(pad.sum(-1), f_x - f_b, rtol=0.02, atol=1e-3)
    assert not torch.allclose(pad, mlt.explain(model, ids, target=3, method="ig", n_steps=64).relevance)


@pytest.mark.timeout(60)
def test_ig_logits_at_input_and_baseline_from_one_forward(model, ids):
    """IG takes f(x) and f(baseline) from one forward of both (`Query.resolve(baseline=...)`): with
    left padding, a contrast and a target chosen by argmax, each equals transformers' own forward."""
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    ig = mlt.explain(model, ids, attention_mask=mask, contrast=2, method="ig", n_steps=4, baseline=7)
    target = ig.target
    with torch.no_grad():
        at_x = model(ids, attention_mask=mask).logits[:, -1]
        at_b = model(torch.full_like(ids, 7), attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(target, at_x.argmax(-1))
    rows = torch.arange(2)
    torch.testing.assert_close(ig.logit, at_x[rows, target] - at_x[:, 2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ig.baseline_logit, at_b[rows, target] - at_b[:, 2], rtol=1e-4, atol=1e-5)


def test_ig_internal_batch_size(model, ids):
    """Chunking the path (as Captum does with internal_batch_size) changes nothing but memory, down to
    one path point per sample at a time (size 2 for these 2 samples)."""
    full = mlt.explain(model, ids, method="ig", n_steps=10, internal_batch_size=None).relevance
    for size in (2, 4, "auto"):
        chunked = mlt.explain(model, ids, method="ig", n_steps=10, internal_batch_size=size).relevance
        torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-5 * float(full.abs().max()))


def test_auto_batch_sizes_to_memory_and_cpu_cache(monkeypatch):
    """'auto' runs every point at once for small models, few at once when each point's scan states
    ([d_inner, d_state]) are large on CPU, and keeps long inputs within the activation budget."""
    def auto(seq_len, points, **config):
        model = tiny_model("mamba", layers=1, **config)
        query = Query(model, torch.zeros(1, seq_len, dtype=torch.long), None, None, None, -1)
        return captum_methods.auto_batch(query, points)

    assert auto(12, 50) == 50  # 64 x 8 state floats per point
    assert auto(12, 50, hidden_size=768, state_size=16) == 1  # a 130m-sized layer
    per_point = 65536 * 64  # tokens x d_inner (x 1 layer)
    assert auto(65536, 50) == captum_methods.AUTO_BATCH_ELEMENTS // per_point == 32
    seen = {}
    monkeypatch.setattr(IntegratedGradients, "attribute",
                        lambda self, inputs, **kw: seen.update(kw) or torch.zeros_like(inputs))
    big = tiny_model("mamba", layers=1, hidden_size=768, state_size=16)
    mlt.explain(big, torch.zeros(3, 12, dtype=torch.long), target=0, method="ig", n_steps=50)
    assert seen["internal_batch_size"] == 3  # Captum's minimum: one path point of each of the 3 samples
    monkeypatch.setattr(NoiseTunnel, "attribute", lambda self, inputs, **kw: seen.update(kw) or torch.zeros_like(inputs))
    mlt.explain(big, torch.zeros(1, 12, dtype=torch.long), target=0, method="smoothgrad")
    assert seen["nt_samples_batch_size"] == 1
    mlt.explain(tiny_model("mamba"), torch.zeros(1, 12, dtype=torch.long), target=0, method="smoothgrad")
    assert seen["nt_samples_batch_size"] == 25  # all noisy copies at once


def test_auto_batch_fills_half_the_free_gpu_memory():
    """On a GPU the batch follows the free memory, not the CPU caps: a 130m-sized model at 1,024 tokens
    (24 x 1,536 inner channels) fits 77 path points in 130 GiB free, 3 under the CPU budget."""
    elements, states = 1024 * 24 * 1536, 1536 * 16
    per_point = captum_methods.AUTO_BATCH_BYTES_PER_ELEMENT * elements
    free = 130 * 2**30
    assert captum_methods.batch_fit(elements, states, "cuda", free) == free // 2 // per_point == 77
    assert captum_methods.batch_fit(elements, states, "cuda", per_point) == 0
    assert captum_methods.batch_fit(elements, states, "mps") == captum_methods.AUTO_BATCH_ELEMENTS // elements == 3
    assert captum_methods.batch_fit(elements, states, "cpu") == 1  # the L2 cap


def test_ig_baseline_errors(model, ids):
    assert getattr(model.config, "unk_token_id", None) is None
    with pytest.raises(ValueError, match="baseline_token_id"):
        mlt.explain(model, ids, method="ig", baseline="unk")
    with pytest.raises(ValueError, match="unknown baseline"):
        mlt.explain(model, ids, method="ig", baseline="mean")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mlt.explain(model, ids, method="ig", baseline=10_000)
    with pytest.raises(ValueError, match="broadcast"):
        mlt.explain(model, ids, method="ig", baseline=torch.zeros(3))


def test_smoothgrad_without_noise_is_gradient_x_input(model, ids):
    """stdevs=0: every noisy copy is the input, so SmoothGrad(Input x Gradient) = Gradient x Input."""
    sg = mlt.explain(model, ids, method="sg", stdevs=0.0, nt_samples=2).relevance
    gi = mlt.explain(model, ids, method="gradient_x_input").relevance
    torch.testing.assert_close(sg, gi, rtol=1e-4, atol=1e-7)


def test_smoothgrad_seed_and_global_rng(model, ids):
    state = torch.get_rng_state()
    a = run(model, ids, "smoothgrad", seed=1).relevance
    assert torch.equal(torch.get_rng_state(), state)  # the user's RNG stream is not consumed
    b = run(model, ids, "smoothgrad", seed=2).relevance
    assert not torch.allclose(a, b)


def test_smoothgrad_noise_scale_is_relative_to_embeddings(monkeypatch, model, ids):
    seen = {}
    original = NoiseTunnel.attribute

    def spy(self, inputs, **kw):
        seen["stdevs"] = kw["stdevs"]
        return original(self, inputs, **kw)

    monkeypatch.setattr(NoiseTunnel, "attribute", spy)
    mlt.explain(model, ids[:1], method="sg", stdevs=0.3, nt_samples=2)
    expected = 0.3 * float(model.get_input_embeddings().weight.detach().std())
    assert seen["stdevs"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "method, cls, expected",
    [("gradient", Saliency, 32**0.5), ("ig", IntegratedGradients, 32.0), ("sg", NoiseTunnel, 32.0)],
)
def test_attributions_come_from_captum(monkeypatch, model, ids, method, cls, expected):
    """Replace the Captum class's `attribute` by a stub: the method must return what Captum returned
    (aggregated over the hidden size 32), so no hand-written gradient loop stands in for Captum."""
    calls = []

    def stub(self, inputs, **kw):
        calls.append((type(self), kw))
        return torch.ones_like(inputs)

    monkeypatch.setattr(cls, "attribute", stub)
    r = mlt.explain(model, ids, method=method, n_steps=7) if method == "ig" else mlt.explain(model, ids, method=method)
    assert calls and all(c[0] is cls for c in calls)
    torch.testing.assert_close(r.relevance, torch.full((2, T), expected))
    if method == "ig":
        assert calls[0][1]["n_steps"] == 7
    if method == "sg":
        assert calls[0][1]["nt_type"] == "smoothgrad"


def test_smoothgrad_wraps_input_x_gradient(monkeypatch, model, ids):
    made = []
    original = NoiseTunnel.__init__

    def spy(self, method):
        made.append(method)
        original(self, method)

    monkeypatch.setattr(NoiseTunnel, "__init__", spy)
    mlt.explain(model, ids, method="sg", nt_samples=2)
    assert len(made) == 1 and isinstance(made[0], InputXGradient)
    assert captum_methods.NoiseTunnel is NoiseTunnel and captum_methods.InputXGradient is InputXGradient


# ---------------------------------------------------------------- hidden attention


def _layers(arch, n=2, length=20, dtype=torch.float64, seed=0):
    model = tiny_model(arch, seed=seed)
    ids = torch.randint(0, 97, (n, length), generator=torch.Generator().manual_seed(seed + 3))
    return model, [layer.to(dtype) for layer in capture_layers(Query(model, ids, None, None, None, -1))]


@pytest.mark.parametrize("budget, leaf", [(40, 2), (300, 3), (1 << 22, 16)])
def test_attention_reproduces_scan_per_channel(arch, budget, leaf):
    """sum_s alpha_d[t, s] u_d[s] = y_d[t] - D_d u_d[t] for every channel d of both layers."""
    _, layers = _layers(arch)
    for layer in layers:
        y = reference_scan(layer.u, layer.delta, layer.A, layer.B, layer.C, None)  # y - D u
        for d in range(layer.u.shape[1]):
            alpha = attention_matrix(layer.channels(slice(d, d + 1)), budget=budget, leaf=leaf)
            assert torch.equal(alpha, alpha.tril())
            recon = torch.einsum("bts,bs->bt", alpha, layer.u[:, d])
            torch.testing.assert_close(recon, y[:, d], rtol=0, atol=1e-5 * max(1.0, float(y[:, d].abs().max())))


def test_attention_float32_matches_layer_scan(arch):
    """In float32 the channel-averaged matrix applied to u reproduces the model's own scan output."""
    from mambalrp_tools import backends

    _, layers = _layers(arch, dtype=torch.float32)
    for layer in layers:
        y, _ = backends.resolve("torch", "cpu").scan(layer.u, layer.delta, layer.A, layer.B, layer.C, layer.D)
        y = y - layer.D[:, None] * layer.u
        per_channel = torch.stack(
            [attention_matrix(layer.channels(slice(d, d + 1))) for d in range(layer.u.shape[1])], 1
        )
        recon = torch.einsum("bdts,bds->bdt", per_channel, layer.u)
        torch.testing.assert_close(recon, y, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(attention_matrix(layer), per_channel.mean(1), rtol=1e-4, atol=1e-7)


def _dense_alpha(layer: LayerSSM) -> torch.Tensor:
    """Hidden attention straight from the definition: [b, T, T], averaged over channels (slow, float64)."""
    u, delta, A, B, C = (t.double() for t in (layer.u, layer.delta, layer.A, layer.B, layer.C))
    b, d, T = u.shape
    Abar = torch.exp(delta[..., None] * A[None, :, None])  # [b, d, T, n]
    Bbar = delta[..., None] * B.transpose(1, 2)[:, None]  # [b, d, T, n]
    out = torch.zeros(b, T, T, dtype=torch.float64)
    for t in range(T):
        for s in range(t + 1):
            prod = Abar[:, :, s + 1 : t + 1].prod(dim=2)  # empty product = 1
            out[:, t, s] = (C[:, None, :, t] * prod * Bbar[:, :, s]).sum(-1).mean(1)
    return out


def _dense_rollout(alphas, position, weights=None):
    T = alphas[0].shape[-1]
    eye = torch.eye(T, dtype=torch.float64)
    total = eye.expand_as(alphas[0]).clone()
    for i, alpha in enumerate(alphas):  # first layer first: total = Ahat_L ... Ahat_1
        a = alpha.abs() if weights is None else alpha.abs() * weights[i][:, None, :]
        a = a + eye
        total = (a / a.sum(-1, keepdim=True)) @ total
    return total[:, position]


def test_blockwise_equals_dense(arch):
    _, layers = _layers(arch, length=17)
    dense = [_dense_alpha(layer) for layer in layers]
    for layer, ref in zip(layers, dense):
        for budget, leaf in [(40, 1), (96, 3), (1 << 22, 16)]:
            torch.testing.assert_close(attention_matrix(layer, budget=budget, leaf=leaf), ref, rtol=1e-9, atol=1e-12)
    for position in (16, 9):
        for block in (None, 1, 4):
            row = rollout_row(layers, position, block=block, budget=60, leaf=2)
            torch.testing.assert_close(row[:, : position + 1], _dense_rollout(dense, position)[:, : position + 1])
            assert torch.equal(row[:, position + 1 :], torch.zeros_like(row[:, position + 1 :]))
    weights = [torch.rand(2, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    torch.testing.assert_close(rollout_row(layers, 16, weights, block=5), _dense_rollout(dense, 16, weights))


def test_tiles_on_a_gpu_follow_its_free_memory():
    """A GPU gets tiles up to GPU_BUDGET elements (fewer, larger kernels), a CPU the fixed BUDGET."""
    ha = hidden_attention
    assert ha.budget_for("cpu") == ha.BUDGET
    assert ha.budget_for("cuda", free_bytes=130 * 2**30) == ha.GPU_BUDGET
    assert ha.budget_for("cuda", free_bytes=ha.GPU_BUDGET * 4 * ha.GPU_BUDGET_SHARE // 2) == ha.GPU_BUDGET // 2
    assert ha.budget_for("cuda", free_bytes=2**20) == ha.BUDGET  # never below the CPU's


def test_rollout_at_the_gpu_budget_equals_the_cpu_budget(arch):
    """The GPU's larger tiles (all rows of a layer in one block here) give the same rows."""
    _, layers = _layers(arch, length=17)
    for attention in ("abs", "signed", "clamped"):
        small = rollout_row(layers, 16, budget=60, leaf=2, attention=attention)
        large = rollout_row(layers, 16, budget=hidden_attention.GPU_BUDGET, attention=attention)
        torch.testing.assert_close(large, small, rtol=1e-9, atol=1e-12)


def test_rollout_is_distribution(model, ids):
    for method in ("attention_rollout", "mamba_attr"):
        r = run(model, ids, method, variant="abs").relevance
        assert (r >= 0).all()
        torch.testing.assert_close(r.sum(-1), torch.ones(2))
        official = run(model, ids, method).relevance
        assert (official >= 0).all() and not torch.allclose(official, r)


def test_mamba_attr_matches_definition(arch):
    """mamba_attr(variant="abs") = rollout of |alpha| with columns scaled by
    min-max(max_c ReLU(df/d block output)), with the gradients taken from transformers' own (unpatched) forward."""
    model = tiny_model(arch, seed=2)
    ids = torch.randint(0, 97, (2, 14), generator=torch.Generator().manual_seed(4))
    target = torch.tensor([1, 2])
    grads = _block_output_grads(model, ids, target)
    weights = []
    for g in grads:
        w = g.clamp(min=0).amax(-1).double()
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        weights.append((w - lo) / (hi - lo))
    layers = [layer.to(torch.float64) for layer in capture_layers(Query(model, ids, None, target, None, -1))]
    expected = _dense_rollout([_dense_alpha(layer) for layer in layers], -1, weights)
    got = mlt.explain(model, ids, target=target, method="mamba_attr", variant="abs").relevance
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
    abs_rollout = run(model, ids, "attention_rollout", variant="abs").relevance
    assert (got >= 0).all() and not torch.allclose(got, abs_rollout)


def test_hidden_attention_at_earlier_position():
    """Explaining position 9 uses only tokens 0..9: the same scores as the input cut after it."""
    model = tiny_model("mamba", seed=0)
    ids = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(7))
    for method in ("attention_rollout", "mamba_attr"):
        r = mlt.explain(model, ids, method=method, position=9).relevance
        cut = mlt.explain(model, ids[:, :10], method=method).relevance
        assert torch.equal(r[0, 10:], torch.zeros(6))
        torch.testing.assert_close(r[:, :10], cut)


def test_hidden_attention_matrices(arch):
    from conftest import assert_untouched, snapshot

    from mambalrp_tools.methods.hidden_attention import hidden_attention

    model = tiny_model(arch, seed=1).train()
    snap = snapshot(model)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    att = hidden_attention(model, ids, attention_mask=mask)
    assert_untouched(model, snap)  # training flags restored too
    assert att.shape == (2, 2, 9, 9) and torch.equal(att, att.tril())
    assert torch.equal(att[:, 1, :, :3], torch.zeros(2, 9, 3))  # padded columns
    alone = hidden_attention(model, ids[1, 3:])
    torch.testing.assert_close(att[:, 1, 3:, 3:], alone[:, 0])
    layers = capture_layers(Query(model.eval(), ids, None, None, None, -1))
    torch.testing.assert_close(hidden_attention(model, ids)[0], attention_matrix(layers[0]))


# ---------------------------------------------------------------- the authors' variants, transcribed densely
# An independent transcription of github AmeenAli/HiddenMambaAttn (vim/xai_utils.py on the per-channel
# matrices of their mamba-ssm fork's compute_attn_matrix_fn): the scan quantities are recomputed here from
# transformers' modules, the [d, T, T] matrices from the definition; nothing is shared with the package.


def _official_scan_inputs(model, ids):
    """Per layer (delta [b, T, d], A [d, n], B [b, T, n], C [b, T, n]) from each mixer's own modules, float64."""
    seen = []

    def grab(mixer, args, kwargs):
        seen.append((mixer, args[0] if args else kwargs["hidden_states"]))

    hooks = [blk.mixer.register_forward_pre_hook(grab, with_kwargs=True) for blk in model.base_model.layers]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for mixer, hidden in seen:
        mixer = mixer.double()
        with torch.no_grad():
            T = hidden.shape[1]
            xz = mixer.in_proj(hidden.double()).transpose(1, 2)
            x, _ = xz.chunk(2, dim=1)
            x = torch.nn.functional.silu(mixer.conv1d(x)[..., :T]).transpose(1, 2)  # [b, T, d]
            r, n = mixer.time_step_rank, mixer.ssm_state_size
            dt, B, C = torch.split(mixer.x_proj(x), [r, n, n], dim=-1)
            if "FalconMamba" in type(mixer).__name__:  # FalconMamba normalises B, C and dt (no weight)
                B, C, dt = (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + mixer.rms_eps) for t in (B, C, dt))
            delta = torch.nn.functional.softplus(mixer.dt_proj(dt))
            A = -torch.exp(mixer.A_log)
        mixer.float()
        out.append((delta, A, B, C))
    return out


def _official_matrix(delta, A, B, C):
    """compute_attn_matrix_fn: alpha[b, d, r, c] = sum_n C_r * prod_{i=c+1..r} dA_i * dB_c, zero above the diagonal."""
    b, T, d = delta.shape
    dA = torch.exp(torch.einsum("btd,dn->btdn", delta, A))
    dB = torch.einsum("btd,btn->btdn", delta, B)
    out = torch.zeros(b, d, T, T, dtype=torch.float64)
    for r in range(T):
        for c in range(r + 1):
            prod = torch.ones(b, d, A.shape[1], dtype=torch.float64)
            for i in range(c + 1, r + 1):
                prod = prod * dA[:, i]
            out[:, :, r, c] = (C[:, r, None, :] * prod * dB[:, c]).sum(-1)
    return out


def _official_rollout(matrices, start_layer):
    """compute_rollout_attention: + I, rows divided by their sums, joint = A_L ... A_start."""
    eye = torch.eye(matrices[0].shape[-1], dtype=torch.float64)
    aug = [(m + eye) / (m + eye).sum(-1, keepdim=True) for m in matrices]
    joint = aug[start_layer]
    for m in aug[start_layer + 1 :]:
        joint = m @ joint
    return joint


def _block_output_grads(model, ids, target):
    """df/d(each block's output) from transformers' own (unpatched) forward, f = logit[target] at -1."""
    outs = []
    hooks = [blk.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for blk in model.base_model.layers]
    try:
        logits = model(ids).logits[:, -1]
    finally:
        for h in hooks:
            h.remove()
    return torch.autograd.grad(logits.gather(1, target[:, None]).sum(), outs)


def _official(model, ids, target, method, start_layer):
    """generate_rollout / generate_mamba_attr at the last position (each sample alone, as their batch of 1)."""
    # fused add+norm blocks: their hooked residual's gradient is that of the stream after the block
    grads = _block_output_grads(model, ids, target)
    rows = []
    for i in range(ids.shape[0]):
        layers = []
        for (delta, A, B, C), g in zip(_official_scan_inputs(model, ids[i : i + 1]), grads):
            attn = _official_matrix(delta, A, B, C)[0]  # [d, T, T]
            if method == "attention_rollout":
                layers.append(attn.sum(0) / attn.shape[0])
                continue
            attn = attn.clamp(min=0)
            attn = (attn - attn.min()) / (attn.max() - attn.min())
            s = g[i].double().clamp(min=0).max(dim=1)[0]
            s = (s - s.min()) / (s.max() - s.min())
            layers.append(attn.sum(0) / attn.shape[0] * s[None, :])
        rows.append(_official_rollout(layers, start_layer)[-1].clamp(min=0))
    return torch.stack(rows)


@pytest.mark.parametrize("method", ["attention_rollout", "mamba_attr"])
@pytest.mark.parametrize("start_layer", [0, 1])
def test_official_variant_equals_the_authors_formulas(arch, method, start_layer):
    # (start_layer 2, the last layer alone, is trivial for mamba_attr: df/d(last block output) is 0 at every
    # position but the explained one, so its gradient weight is one-hot)
    model = tiny_model(arch, seed=3, layers=3)
    with torch.no_grad():  # step sizes ~1 and larger B, C: off-diagonal attention of order 0.1, not 1e-3 as at init
        for block in model.base_model.layers:
            block.mixer.dt_proj.bias.fill_(0.5)
            block.mixer.x_proj.weight.mul_(3)
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(5))
    target = torch.tensor([4, 9])
    expected = _official(model, ids, target, method, start_layer)
    got = mlt.explain(model, ids, target=target, method=method, variant="official", start_layer=start_layer)
    assert torch.equal(got.relevance, mlt.explain(model, ids, target=target, method=method,
                                                  start_layer=start_layer).relevance)  # the default
    # float32 against the float64 formulas; another CPU's BLAS sums in another order (1.1e-6 seen)
    torch.testing.assert_close(got.relevance.double(), expected, rtol=1e-5, atol=1e-6)
    assert got.relevance[:, :-1].sum() > 1e-3  # not all on the explained token
    other = mlt.explain(model, ids, target=target, method=method, variant="abs", start_layer=start_layer)
    assert (other.relevance - got.relevance).abs().max() > 1e-3  # the variants differ on this model


def test_official_blockwise_and_in_small_budgets_equals_dense(arch):
    """The per-channel clamp and the min-max peak survive tiling, channel chunks and recomputation."""
    _, layers = _layers(arch, length=17)
    per_channel = []
    for layer in layers:
        d = layer.u.shape[1]
        per_channel.append(torch.stack([_dense_alpha(layer.channels(slice(c, c + 1))) for c in range(d)], 1))
    for position in (16, 6):
        p = position + 1
        clamped = [m[..., :p, :p].clamp(min=0) for m in per_channel]
        expected = torch.stack([
            _official_rollout([(m[i].mean(0) / m[i].amax()) for m in clamped], 0)[-1] for i in range(2)])
        signed = torch.stack([_official_rollout([m[i, :, :p, :p].mean(0) for m in per_channel], 0)[-1]
                              for i in range(2)])
        for budget, leaf, block in [(40, 1, 1), (96, 3, 4), (300, 2, 5), (1 << 22, 16, None)]:
            got = rollout_row(layers, position, block=block, budget=budget, leaf=leaf, attention="clamped")
            torch.testing.assert_close(got[:, :p], expected, rtol=1e-9, atol=1e-12)
            got = rollout_row(layers, position, block=block, budget=budget, leaf=leaf, attention="signed")
            torch.testing.assert_close(got[:, :p], signed, rtol=1e-9, atol=1e-12)


def test_variant_and_start_layer_are_checked(model, ids):
    for method in ("attention_rollout", "mamba_attr"):
        with pytest.raises(ValueError, match="variant must be one of"):
            mlt.explain(model, ids, method=method, variant="signed")
        for bad in (2, -1, 1.0, True):
            with pytest.raises(ValueError, match=r"start_layer must be an int in \[0, 2\)"):
                mlt.explain(model, ids, method=method, start_layer=bad)
        last_only = mlt.explain(model, ids, method=method, start_layer=1).relevance
        assert not torch.allclose(last_only, mlt.explain(model, ids, method=method).relevance)
