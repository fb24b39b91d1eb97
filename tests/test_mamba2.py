"""Mamba-2 (SSD): the chunked scan against the step-by-step recurrence, and MambaLRP on transformers'
`Mamba2ForCausalLM`: conservation, forward values, the model left untouched, the rules, recomputation,
hidden attention and the baselines."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_untouched, hand_gradient_x_input, snapshot
from transformers import Mamba2Config, Mamba2ForCausalLM

import mambalrp_tools as mlt
from mambalrp_tools.architectures import _checkpoint_mode, architecture_of, mamba, mamba2
from mambalrp_tools import backends
from mambalrp_tools.backends import cuda_kernels
from mambalrp_tools.methods.base import Query
from mambalrp_tools.methods.hidden_attention import capture_layers, hidden_attention
from mambalrp_tools.ssd import cuda_chunk_scan, kernel_ssd_scan, reference_ssd, ssd_scan

pytestmark = pytest.mark.timeout(120)
RULES = ("silu", "ssm", "gate", "norm")
ALL_OFF = {r: False for r in RULES}
VOCAB = 97


def scan_inputs(seed, b=2, T=37, h=4, p=3, g=2, n=5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    x, B, C, D, s0 = rnd(b, T, h, p), rnd(b, T, g, n), rnd(b, T, g, n), rnd(h), rnd(b, h, p, n)
    dt = 0.05 + 0.5 * torch.rand(b, T, h, generator=gen, dtype=dtype)
    A = -2 * torch.rand(h, generator=gen, dtype=dtype)
    return x, dt, A, B, C, D, s0


# --------------------------------------------------------------------------- the SSD scan

@pytest.mark.parametrize("chunk", [1, 5, 8, 16, 37, 64])
@pytest.mark.parametrize("groups", [1, 2])
def test_ssd_scan_equals_step_loop(chunk, groups):
    x, dt, A, B, C, D, s0 = scan_inputs(chunk, g=groups)
    y_ref, last_ref = reference_ssd(x, dt, A, B, C, D, s0)
    y, last = ssd_scan(x, dt, A, B, C, D, chunk, s0, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    # no initial state = zeros
    torch.testing.assert_close(ssd_scan(x, dt, A, B, C, D, chunk), reference_ssd(x, dt, A, B, C, D)[0],
                               rtol=1e-10, atol=1e-10)


def test_ssd_scan_carries_state_across_pieces():
    x, dt, A, B, C, D, s0 = scan_inputs(3, T=40)
    whole, last = ssd_scan(x, dt, A, B, C, D, 8, s0, return_last_state=True)
    y1, mid = ssd_scan(x[:, :13], dt[:, :13], A, B[:, :13], C[:, :13], D, 8, s0, return_last_state=True)
    y2, end = ssd_scan(x[:, 13:], dt[:, 13:], A, B[:, 13:], C[:, 13:], D, 8, mid, return_last_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(end, last, rtol=1e-12, atol=1e-12)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("chunk", [3, 4])
def test_ssd_linear_backward_gradcheck(chunk):
    """Under the ssm rule (dt, A, B, C constant) the custom reversed-scan backward is exact."""
    x, dt, A, B, C, D, s0 = scan_inputs(5, b=1, T=10, h=4, p=2, g=2, n=3)
    x.requires_grad_(), s0.requires_grad_()
    fn = lambda x, s: ssd_scan(x, dt, A, B, C, D, chunk, s, return_last_state=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, s0))
    # and it is the reversed-scan path, not autograd through the forward
    y, _ = fn(x, s0)
    assert type(y.grad_fn).__name__ == "AddBackward0" and "LinearSSD" in type(y.grad_fn.next_functions[0][0]).__name__


def kernel_standin(x, dt, A, B, C, chunk_size, D=None, initial_states=None, dt_softplus=False,
                   return_final_states=False):
    """mamba-ssm's `mamba_chunk_scan_combined` signature over the PyTorch scan, so that the kernel
    path's own adjoint (`_KernelLinearSSD`) is tested on a CPU, where the Triton kernel cannot run."""
    assert not dt_softplus and return_final_states
    return ssd_scan(x, dt, A, B, C, D, chunk_size, initial_states, return_last_state=True)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("chunk", [3, 4])
@pytest.mark.parametrize("with_D", [True, False])
def test_kernel_path_linear_backward_gradcheck(chunk, with_D):
    """The kernel path's backward under the ssm rule (one more forward call of the kernel over reversed
    time, B and C swapped, the first decay switched off by a tiny dt) is the exact adjoint, with and
    without the last state and the initial state in use."""
    x, dt, A, B, C, D, s0 = scan_inputs(6, b=2, T=10, h=4, p=2, g=2, n=3)
    D = D if with_D else None
    x.requires_grad_(), s0.requires_grad_()

    def fn(x, s):
        return kernel_ssd_scan(x, dt, A, B, C, D, chunk, s, return_last_state=True, kernel=kernel_standin)

    assert torch.autograd.gradcheck(fn, (x, s0))
    assert torch.autograd.gradcheck(lambda x: fn(x, None)[0], (x,))  # no initial state, last state unused
    assert torch.autograd.gradcheck(lambda x, s: fn(x, s)[1], (x, s0))  # only the last state used
    assert "KernelLinearSSD" in type(fn(x, s0)[0].grad_fn).__name__


def test_kernel_path_gives_true_gradients_with_the_rules_off():
    """With dt (or A, B, C, D) requiring a gradient the kernel's own autograd runs: true gradients."""
    x, dt, A, B, C, D, s0 = scan_inputs(7, T=12)
    for t in (x, dt, B, D):
        t.requires_grad_()
    y = kernel_ssd_scan(x, dt, A, B, C, D, 4, s0, kernel=kernel_standin)
    y_ref, _ = reference_ssd(x, dt, A, B, C, D, s0)
    w = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad((y * w).sum(), (x, dt, B, D)),
                    torch.autograd.grad((y_ref * w).sum(), (x, dt, B, D))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.timeout(300)
def test_ssd_full_backward_gradcheck():
    """With dt, A, B, C requiring gradients (rules off) every argument gets its true gradient."""
    args = [t.requires_grad_() for t in scan_inputs(6, b=1, T=7, h=4, p=2, g=2, n=3)]
    fn = lambda x, dt, A, B, C, D, s: ssd_scan(x, dt, A, B, C, D, 3, s, return_last_state=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


def test_ssd_rejects_bad_groups_and_chunk():
    x, dt, A, B, C, D, _ = scan_inputs(0, h=3, g=2)
    with pytest.raises(ValueError, match="groups"):
        ssd_scan(x, dt, A, B, C, D)
    x, dt, A, B, C, D, _ = scan_inputs(0)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan(x, dt, A, B, C, D, chunk_size=0)


# --------------------------------------------------------------------------- models

def mamba2_model(seed=0, heads=4, groups=2, chunk=8, zero_biases=True, layers=2, **kw):
    """A random Mamba2ForCausalLM whose every parameter matters (norm weights, D, dt_bias random);
    zero_biases zeroes the relevance-carrying biases (conv1d, in_proj, out_proj)."""
    torch.manual_seed(seed)
    head_dim = 8
    config = Mamba2Config(vocab_size=VOCAB, hidden_size=heads * head_dim // 2, num_hidden_layers=layers,
                          num_heads=heads, head_dim=head_dim, expand=2, n_groups=groups, state_size=6,
                          chunk_size=chunk, use_bias=True, use_conv_bias=True, **kw)
    model = Mamba2ForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight") or name.endswith("norm_f.weight") or name.endswith("mixer.D"):
                p.copy_(1 + 0.3 * noise)
            elif name.endswith(".bias") or name.endswith("dt_bias"):
                p.copy_(0.2 * noise)
        if zero_biases:
            for block in model.base_model.layers:
                for layer in (block.mixer.conv1d, block.mixer.in_proj, block.mixer.out_proj):
                    layer.bias.zero_()
    return model


def ids_for(seed, batch, length):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def rel_max_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("groups,heads", [(1, 2), (1, 4), (2, 2), (2, 4)])
@pytest.mark.parametrize("chunk,length", [(8, 21), (16, 37)])
def test_mambalrp_conserves(groups, heads, chunk, length):
    model = mamba2_model(heads * 10 + groups, heads, groups, chunk)
    ids = ids_for(chunk, 2, length)
    expl = mlt.explain(model, ids, chunk_size=chunk)  # the PyTorch scan's chunks, as the model's
    assert expl.logit.abs().min() > 1e-3
    assert expl.conservation_error.max() <= 1e-5, expl.conservation_error
    # Gradient x Input does not conserve, and the biases matter: the check can fail
    assert mlt.explain(model, ids, method="gi", chunk_size=chunk).conservation_error.min() > 1e-2
    biased = mamba2_model(0, heads, groups, chunk, zero_biases=False)
    assert mlt.explain(biased, ids, chunk_size=chunk).conservation_error.min() > 1e-4
    # the chunking changes no relevance beyond rounding
    torch.testing.assert_close(mlt.explain(model, ids, chunk_size=5).relevance, expl.relevance, rtol=1e-4, atol=1e-6)


def test_conserves_with_left_padding():
    model = mamba2_model(1)
    ids = ids_for(2, 3, 30)
    mask = torch.ones_like(ids)
    mask[0, :7], mask[1, :19] = 0, 0
    expl = mlt.explain(model, ids, attention_mask=mask, chunk_size=8)
    assert expl.conservation_error.max() <= 1e-5, expl.conservation_error
    assert torch.equal(expl.relevance[0, :7], torch.zeros(7)) and bool((expl.relevance[0, 7:] != 0).all())
    # a left-padded sample explains like the same sample alone
    alone = mlt.explain(model, ids[1:2, 19:], target=expl.target[1:2])
    torch.testing.assert_close(expl.relevance[1, 19:], alone.relevance[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("padded", [False, True])
def test_forward_equals_transformers(padded):
    model = mamba2_model(2, zero_biases=False)
    ids = ids_for(3, 2, 29)
    mask = None
    if padded:
        mask = torch.ones_like(ids)
        mask[0, :9] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        with mlt.lrp_mode(model, chunk_size=8):
            out = model(ids, attention_mask=mask).logits
        with mlt.lrp_mode(model, ALL_OFF, chunk_size=8):
            off = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(off, ref, rtol=1e-5, atol=1e-5)


def test_model_untouched_after_explain_and_exception():
    model = mamba2_model(3, zero_biases=False)
    model.train()
    snap = snapshot(model)
    mlt.explain(model, ids_for(0, 2, 20))
    assert_untouched(model, snap)
    with pytest.raises(RuntimeError, match="boom"):
        with mlt.lrp_mode(model):
            model(ids_for(0, 1, 10))
            raise RuntimeError("boom")
    assert_untouched(model, snap)
    assert all(p.grad is None for p in model.parameters())


def test_each_rule_flag_changes_relevance():
    model = mamba2_model(4)
    ids = ids_for(1, 2, 25)
    all_on = mlt.explain(model, ids).relevance[:, :-1]
    for rule in RULES:
        one_off = mlt.explain(model, ids, rules={rule: False}).relevance[:, :-1]
        only_on = mlt.explain(model, ids, rules={**ALL_OFF, rule: True}).relevance[:, :-1]
        all_off = mlt.explain(model, ids, rules=ALL_OFF).relevance[:, :-1]
        assert rel_max_diff(one_off, all_on) > 1e-3, f"turning {rule} off changed nothing"
        assert rel_max_diff(only_on, all_off) > 1e-3, f"turning only {rule} on changed nothing"


def test_all_rules_off_equals_gradient_x_input_by_hand():
    model = mamba2_model(5, zero_biases=False)
    ids = ids_for(2, 2, 23)
    expl = mlt.explain(model, ids, rules=ALL_OFF)
    ref, f = hand_gradient_x_input(model, ids, expl.target)
    torch.testing.assert_close(expl.logit, f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(expl.relevance, ref, rtol=1e-4, atol=1e-6)
    gi = mlt.explain(model, ids, method="gradient_x_input")
    torch.testing.assert_close(gi.relevance, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rules", [None, ALL_OFF])
def test_recomputation_in_pieces_gives_the_same_relevance(monkeypatch, rules):
    model = mamba2_model(6)
    ids = ids_for(4, 2, 45)
    plain = mlt.explain(model, ids, rules=rules, checkpoint=False, chunk_size=8).relevance
    monkeypatch.setattr(backends, "RECOMPUTE_TILE", 16)  # 45 tokens: three pieces, conv and scan state carried
    pieces = mlt.explain(model, ids, rules=rules, checkpoint=True, chunk_size=8).relevance
    torch.testing.assert_close(pieces, plain, rtol=1e-4, atol=1e-6)


def test_auto_checkpoint_reads_mamba2_config():
    """Mamba2Config has no intermediate_size: the estimate uses expand x hidden_size."""
    model = mamba2_model(0)
    arch = architecture_of(model)
    assert arch is mamba2.MAMBA2 and arch.sizes(model).inner == 2 * model.config.hidden_size
    cpu = torch.device("cpu")
    assert _checkpoint_mode(None, 100, arch.sizes(model), cpu) is None
    assert _checkpoint_mode(None, 10**9, arch.sizes(model), cpu) == "device"


def test_classifier_conserves():
    from mambalrp_tools.models import make_classifier

    config = mamba2_model(0).config
    config.num_labels = 3
    torch.manual_seed(0)
    clf = make_classifier(config).eval()
    with torch.no_grad():
        for block in clf.base_model.layers:
            for layer in (block.mixer.conv1d, block.mixer.in_proj, block.mixer.out_proj):
                layer.bias.zero_()
    expl = mlt.explain(clf, ids_for(0, 2, 17))
    with torch.no_grad(), mlt.lrp_mode(clf):
        assert clf(ids_for(0, 2, 17)).logits.shape == (2, 17, 3)
    assert expl.conservation_error.max() <= 1e-5


# --------------------------------------------------------------------------- hidden attention, baselines

@pytest.mark.parametrize("groups", [1, 2])
def test_hidden_attention_reproduces_the_layer(groups):
    """sum_s alpha_h[t, s] x_s equals the scan output without the D term, per head."""
    model = mamba2_model(7, heads=4, groups=groups)
    ids = ids_for(5, 2, 27)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    query = Query(model, ids, mask, None, None, -1)
    for layer, mixer in zip(capture_layers(query), (b.mixer for b in model.base_model.layers)):
        T = layer.seq_len
        alpha = torch.cat([torch.nn.functional.pad(layer.head_rows(t0, t1), (0, T - t1))
                           for t0, t1 in [(0, 10), (10, T)]], dim=2)  # [b, h, T, T]
        y = ssd_scan(layer.x, layer.dt, layer.A, layer.B, layer.C, None, mixer.chunk_size)
        via_alpha = torch.einsum("bhts,bshp->bthp", alpha, layer.x)
        torch.testing.assert_close(via_alpha, y, rtol=1e-4, atol=1e-5)
        assert torch.equal(alpha[1, :, :, :6], torch.zeros_like(alpha[1, :, :, :6]))
    full = hidden_attention(model, ids, mask)
    assert full.shape == (2, 2, 27, 27) and torch.equal(full, full.tril())


@pytest.mark.parametrize("method", ["attention_rollout", "mamba_attr", "gradient", "integrated_gradients",
                                    "smoothgrad", "random"])
def test_baselines_run_on_mamba2(method):
    model = mamba2_model(8)
    ids = ids_for(6, 2, 19)
    kwargs = {"n_steps": 8} if method == "integrated_gradients" else {}
    kwargs = {"nt_samples": 4} if method == "smoothgrad" else kwargs
    expl = mlt.explain(model, ids, method=method, **kwargs)
    assert expl.relevance.shape == (2, 19) and bool(torch.isfinite(expl.relevance).all())
    assert bool((expl.relevance != 0).any())
    if method in ("attention_rollout", "mamba_attr"):
        assert bool((expl.relevance >= 0).all())  # both variants are non-negative
        rows = mlt.explain(model, ids, method=method, variant="abs").relevance
        torch.testing.assert_close(rows.sum(-1), torch.ones(2), rtol=1e-5, atol=1e-5)  # "abs" rows sum to 1


def test_integrated_gradients_equals_captum_on_the_unpatched_model():
    """IG through the patched chunked scan (rules off) equals Captum's IG on transformers' own forward."""
    from captum.attr import IntegratedGradients

    model = mamba2_model(9)
    ids = ids_for(7, 2, 15)
    expl = mlt.explain(model, ids, method="integrated_gradients", n_steps=16)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()

    def f(e):
        return model(inputs_embeds=e).logits[torch.arange(e.shape[0]), -1, expl.target.repeat(e.shape[0] // 2)]

    ref = IntegratedGradients(f).attribute(embeds, baselines=torch.zeros_like(embeds), n_steps=16).sum(-1)
    torch.testing.assert_close(expl.relevance, ref.detach(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- GPU

HAS_KERNEL = torch.cuda.is_available() and cuda_chunk_scan() is not None


@pytest.mark.gpu
@pytest.mark.timeout(300)  # compiles and autotunes the Triton SSD kernels
@pytest.mark.skipif(not HAS_KERNEL, reason="needs a CUDA GPU with mamba-ssm (mamba_chunk_scan_combined)")
def test_cuda_kernel_scan_equals_pytorch_scan():
    x, dt, A, B, C, D, s0 = (t.float().cuda() for t in scan_inputs(0, b=2, T=300, h=8, p=16, g=2, n=16))
    x.requires_grad_(), s0.requires_grad_()
    y_k, last_k = kernel_ssd_scan(x, dt, A, B, C, D, 64, s0, return_last_state=True)
    y_t, last_t = ssd_scan(x, dt, A, B, C, D, 64, s0, return_last_state=True)
    w = torch.randn_like(y_t)
    gk = torch.autograd.grad((y_k * w).sum() + last_k.sum(), (x, s0))
    gt = torch.autograd.grad((y_t * w).sum() + last_t.sum(), (x, s0))
    for a, b in zip((y_k, last_k, *gk), (y_t, last_t, *gt)):  # relative to the largest value (TF32 products)
        scale = b.abs().max()
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.timeout(300)  # the first call compiles and autotunes the Triton SSD kernels (forward and backward)
@pytest.mark.parametrize("backend", [
    pytest.param("torch", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_KERNEL or cuda_kernels() is None,
                                                  reason="needs a CUDA GPU with mamba-ssm and causal-conv1d")),
])
@pytest.mark.parametrize("rules", [None, ALL_OFF])
def test_gpu_relevance_equals_cpu(backend, rules):
    """The PyTorch SSD scan on the GPU and mamba-ssm's kernel give the CPU path's relevance."""
    ids = ids_for(8, 2, 70)
    mask = torch.ones_like(ids)
    mask[0, :11] = 0
    reference = mlt.explain(mamba2_model(10, heads=4, groups=2, chunk=16), ids, attention_mask=mask, rules=rules)
    model = mamba2_model(10, heads=4, groups=2, chunk=16).cuda()
    snap = snapshot(model)
    expl = mlt.explain(model, ids, attention_mask=mask, rules=rules, backend=backend, chunk_size=16)
    assert_untouched(model, snap)
    scale = reference.relevance.abs().max()
    tol = 1e-4 if backend == "torch" else 1e-3  # the Triton kernel may use TF32 products
    torch.testing.assert_close(expl.relevance / scale, reference.relevance / scale, rtol=tol, atol=tol)
    if rules is None:
        assert float(expl.conservation_error.max()) < 1e-4


# --------------------------------------------------------------------------- the toy's training code

@pytest.mark.timeout(300)  # on a GPU the recipe trains there: Triton compiles the SSD kernels (134 s on the H200 under load)
def test_needle_mamba2_recipe_trains_a_mamba2(tmp_path, monkeypatch):
    """The needle-mamba2 recipe, shrunk to seconds: a Mamba-2 trains, keeps pads inert, saves and loads
    through the embedded-model path, and conserves (no relevance-carrying biases)."""
    from dataclasses import replace

    from mambalrp_tools import tasks
    from mambalrp_tools.zoo import train as T

    small = replace(T.SPECS["needle-mamba2"], hidden_size=32, num_hidden_layers=1, state_size=8, batch_size=4,
                    warmup=2, lr=1e-2, params=dict(min_context_length=32, max_context_length=48))
    monkeypatch.setitem(T.SPECS, "needle-mamba2", small)
    model, tok, rec = T.train_toy("needle-mamba2", tmp_path / "needle-mamba2", steps=4, evaluate=False,
                                  log_every=2, argv=["t"])
    assert type(model).__name__ == "Mamba2ForCausalLM" and rec["engine"] == "package"
    assert rec["steps"] == 4 and rec["final"]["step"] == 4
    assert rec["command"].startswith("mambalrp-tools train-toy needle-mamba2 --steps 4")
    assert torch.count_nonzero(model.get_input_embeddings().weight[T.PAD_ID]) == 0
    ex = tasks.load("needle", 1, seed=0, tokenizer=tok, context_length=32)[0]
    device = model.device  # the recipe trains on a GPU where there is one
    ids = ex.input_ids[None].to(device)
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long, device=device), ids], 1)
    with torch.no_grad(), mlt.lrp_mode(model, ALL_OFF):  # no mask: the pads are inert by themselves
        torch.testing.assert_close(model(ids).logits[0, -1], model(padded).logits[0, -1], rtol=1e-5, atol=1e-5)
        before = model(padded).logits
    monkeypatch.setattr("mambalrp_tools.models.TOY_DIR", tmp_path)
    again, _ = mlt.load_model("toy/needle-mamba2")
    assert type(again).__name__ == "Mamba2ForCausalLM"
    again.to(device)
    with torch.no_grad(), mlt.lrp_mode(again, ALL_OFF):  # the saved weights are the trained ones
        torch.testing.assert_close(before, again(padded).logits, rtol=1e-6, atol=1e-6)
    assert float(mlt.explain(again, ids, target=ex.target).conservation_error[0]) < 1e-5
