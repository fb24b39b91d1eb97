"""Every backend against the reference path (PyTorch chunked scan on CPU), and the GPU kernels path.

GPU cases skip on machines without CUDA (or without mamba-ssm / causal-conv1d) and say why.
"""

from __future__ import annotations

import pytest
import torch

import mambalrp_tools as mlt
from mambalrp_tools.backends import cuda_kernels, resolve

from conftest import MODEL_PRECISION_BOUND, assert_untouched, snapshot, tiny_model

HAS_CUDA = torch.cuda.is_available()
BACKENDS = [
    pytest.param("cpu", "torch", id="torch-cpu"),
    pytest.param("cuda", "torch", id="torch-cuda",  # the gpu marker: `-m gpu` selects every GPU case
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
    pytest.param("cuda", "cuda", id="mamba-ssm-kernels",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA or cuda_kernels() is None,
                                                            reason="needs a CUDA GPU with mamba-ssm and causal-conv1d installed")]),
]


def _inputs(T=96, batch=2, seed=3):
    return torch.randint(0, 97, (batch, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("method", ["mambalrp", "gradient_x_input", "lrp_ln"])
def test_backend_matches_reference(arch, device, backend, method):
    ids = _inputs()
    reference = mlt.explain(tiny_model(arch, zero_biases=True), ids, method=method, backend="torch")
    model = tiny_model(arch, zero_biases=True).to(device)
    snap = snapshot(model)
    expl = mlt.explain(model, ids, method=method, backend=backend, chunk_size=32)
    assert_untouched(model, snap)
    assert torch.equal(expl.target, reference.target)
    torch.testing.assert_close(expl.logit, reference.logit, rtol=1e-4, atol=1e-5)
    scale = reference.relevance.abs().max()
    torch.testing.assert_close(expl.relevance / scale, reference.relevance / scale, rtol=1e-4, atol=1e-4)
    if method == "mambalrp":
        assert float(expl.conservation_error.max()) < 1e-4  # float32 GPU reductions are reordered


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_backend_forward_values_unchanged(arch, device, backend):
    model = tiny_model(arch).to(device)
    ids = _inputs().to(device)
    with torch.no_grad():
        plain = model(ids).logits
        with mlt.lrp_mode(model, backend=backend):
            patched = model(ids).logits
    torch.testing.assert_close(patched, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("checkpoint", [False, "device", "cpu"])
def test_recomputation_gives_identical_relevance(arch, checkpoint):
    model = tiny_model(arch, zero_biases=True)
    ids = _inputs(T=64)
    reference = mlt.explain(model, ids, checkpoint=False)
    for method in ("mambalrp", "integrated_gradients"):
        expl = mlt.explain(model, ids, method=method, checkpoint=checkpoint, **({"n_steps": 8} if method != "mambalrp" else {}))
        base = reference if method == "mambalrp" else mlt.explain(model, ids, method=method, checkpoint=False, n_steps=8)
        torch.testing.assert_close(expl.relevance, base.relevance, rtol=0, atol=1e-6)
    assert all(p.grad is None for p in model.parameters()), "recomputation must not accumulate weight gradients"


def test_auto_backend_choice():
    assert resolve("auto", torch.device("cpu")).name == "torch"
    with pytest.raises(ValueError, match="CUDA device"):
        resolve("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown backend"):
        resolve("triton", torch.device("cpu"))
    if HAS_CUDA and cuda_kernels() is not None:
        assert resolve("auto", torch.device("cuda")).name == "cuda"


def test_lrp_mode_public_recipe_is_mambalrp(arch):
    """The documented recipe (plain model call, default use_cache) must run the patched layers."""
    model = tiny_model(arch, zero_biases=True)
    ids = _inputs(T=40, batch=1)
    target = 5
    with mlt.lrp_mode(model):
        emb = model.get_input_embeddings()(ids).detach().requires_grad_()
        logit = model(inputs_embeds=emb).logits[0, -1, target]
        logit.backward()
    relevance = (emb * emb.grad).sum(-1)
    torch.testing.assert_close(relevance.sum(), logit.detach(), rtol=1e-5, atol=1e-6)
    expl = mlt.explain(model, ids, target=target)
    torch.testing.assert_close(relevance, expl.relevance, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="host offload only happens from a CUDA device")
def test_recompute_offloads_to_pinned_host_memory():
    from mambalrp_tools.recompute import _keep, recompute

    x = torch.randn(4, 8, device="cuda", requires_grad=True)
    kept = _keep(x, keep_free=1 << 62)  # more than any GPU has free: must move to the host
    assert kept.device.type == "cpu" and kept.is_pinned()
    fn = lambda t, span, state, memo: ((t.sin() * 3).cumsum(-1), None)  # noqa: E731
    (g_ref,) = torch.autograd.grad(fn(x, None, None, None)[0].sum(), x)
    (g,) = torch.autograd.grad(recompute(fn, x, keep_free=1 << 62).sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 50, 128])
@pytest.mark.parametrize("method", ["mambalrp", "gradient_x_input"])
def test_chunked_scan_relevance_equals_per_step_loop(arch, monkeypatch, chunk_size, method):
    """Relevance through the chunked scan == relevance through a naive per-step autograd loop (float64)."""
    from mambalrp_tools import backends
    from reference import reference_scan

    model = tiny_model(arch, zero_biases=True, dtype=torch.float64)
    ids = _inputs(T=50, batch=2)
    # a float64 model runs in float64 end to end, so the comparison is tight
    monkeypatch.setattr(backends.Backend, "scan", lambda self, *a, memo=None, initial_state=None: (reference_scan(*a), None))
    naive = mlt.explain(model, ids, method=method, target=4, backend="torch")
    monkeypatch.undo()
    chunked = mlt.explain(model, ids, method=method, target=4, backend="torch", chunk_size=chunk_size)
    torch.testing.assert_close(chunked.relevance, naive.relevance, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("tile,pieces", [(1024, 1), (16, 3)])
@pytest.mark.parametrize("method,scans_per_layer", [("mambalrp", 1), ("gradient_x_input", 2)])
def test_recomputation_reuses_the_scan_under_the_ssm_rule(arch, monkeypatch, method, scans_per_layer, tile, pieces):
    """Under the ssm rule a recomputed layer takes its scan output from the memo (one scan per layer
    and piece); with true gradients the backward needs the chunk states, so the layer scans again."""
    from mambalrp_tools import scan
    from mambalrp_tools import backends

    model = tiny_model(arch, zero_biases=True)
    ids = _inputs(T=40)
    calls = []
    real = scan._scan
    monkeypatch.setattr(scan, "_scan", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(backends, "RECOMPUTE_TILE", tile)
    recomputed = mlt.explain(model, ids, method=method, checkpoint="device", chunk_size=16)
    assert len(calls) == scans_per_layer * pieces * model.config.num_hidden_layers
    calls.clear()
    stored = mlt.explain(model, ids, method=method, checkpoint=False, chunk_size=16)
    assert len(calls) == model.config.num_hidden_layers
    # in pieces, float32 matmuls over other shapes round differently (exactness: the float64 test below)
    exact = dict(rtol=0, atol=0) if pieces == 1 else {}
    torch.testing.assert_close(recomputed.relevance, stored.relevance, **exact)


@pytest.mark.parametrize("tile", [1, 2, 7, 16, 49, 50, 64])
@pytest.mark.parametrize("method,kwargs", [("mambalrp", {}), ("gradient_x_input", {}),
                                           ("mambalrp", {"rules": {"ssm": False}})])
def test_recomputing_layers_in_pieces_changes_nothing(arch, monkeypatch, tile, method, kwargs):
    """A recomputed layer runs in pieces of `tile` tokens, carrying its conv inputs and scan state:
    the relevance equals the one-pass relevance to float64 precision, with left padding, biases
    everywhere, pieces shorter than the convolution and pieces that do not divide T."""
    from mambalrp_tools import backends
    from conftest import rich_model

    model = rich_model(arch, dtype=torch.float64)
    ids = _inputs(T=50, batch=2)
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    whole = mlt.explain(model, ids, method=method, target=4, attention_mask=mask, checkpoint=False, **kwargs)
    monkeypatch.setattr(backends, "RECOMPUTE_TILE", tile)
    snap = snapshot(model)
    pieces = mlt.explain(model, ids, method=method, target=4, attention_mask=mask, checkpoint="device", **kwargs)
    assert_untouched(model, snap)
    torch.testing.assert_close(pieces.logit, whole.logit, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pieces.relevance, whole.relevance, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_recomputation_matches_reference_on_every_backend(arch, monkeypatch, device, backend):
    """checkpoint="device" on each backend, in pieces of 16 tokens (on mamba-ssm's kernels too, which
    carry the state through `_LinearKernelScan`): the relevance is the reference's."""
    from mambalrp_tools import backends

    ids = _inputs(T=70)
    reference = mlt.explain(tiny_model(arch, zero_biases=True), ids, target=4, checkpoint=False)
    monkeypatch.setattr(backends, "RECOMPUTE_TILE", 16)
    monkeypatch.setattr(backends, "RECOMPUTE_TILE_CUDA", 16)
    model = tiny_model(arch, zero_biases=True).to(device)
    snap = snapshot(model)
    expl = mlt.explain(model, ids, target=4, backend=backend, checkpoint="device", chunk_size=32)
    assert_untouched(model, snap)
    scale = reference.relevance.abs().max()
    torch.testing.assert_close(expl.relevance / scale, reference.relevance / scale, rtol=1e-4, atol=1e-4)
    assert float(expl.conservation_error.max()) < 1e-4


def test_pieces_conserve_relevance(arch, monkeypatch):
    from mambalrp_tools import backends

    monkeypatch.setattr(backends, "RECOMPUTE_TILE", 8)
    expl = mlt.explain(tiny_model(arch, zero_biases=True, dtype=torch.float64), _inputs(T=30), checkpoint="device")
    assert expl.conservation_error.max() <= 1e-5  # the relevance is stored in float32


def test_recompute_carries_state_between_pieces():
    """recompute() with pieces and a carried state gives autograd's gradient of the plain function."""
    from mambalrp_tools.recompute import recompute

    def running(piece, span, state, memo):  # y_t = sin(x_t) * 3 + sum of x before t (a carried total)
        total = piece.cumsum(1) + (0 if state is None else state[0])
        return piece.sin() * 3 + total - piece, (total[:, -1:].clone(),)

    x = torch.randn(2, 11, 3, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 11, 3, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad(running(x, slice(None), None, None)[0], x, dy)
    for tile in (None, 1, 4, 11, 20):
        out = recompute(running, x, tile=tile)
        torch.testing.assert_close(out, running(x, slice(None), None, None)[0], rtol=0, atol=1e-12)
        (g,) = torch.autograd.grad(out, x, dy)
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12, msg=f"tile {tile}")


@pytest.mark.parametrize("a_scale", [1.0, 1e3])
def test_loading_a_state_is_exact_in_float32(a_scale):
    """The loading steps of `scan_from_state` in float32, the kernels' dtype: their decay rounds to
    exactly 1 also for large |A|, and the state they load matches a scan from that state to float32
    rounding (mamba-ssm's kernel itself runs on the GPU only; this is its contract on the PyTorch scan)."""
    from mambalrp_tools.scan import _loading_delta, scan_from_state, selective_scan

    g = torch.Generator().manual_seed(3)
    b, d, n, T = 2, 8, 16, 50
    u = torch.randn(b, d, T, generator=g)
    delta = torch.rand(b, d, T, generator=g) * 0.1 + 0.001
    A = -torch.rand(d, n, generator=g) * a_scale - 0.5
    B, C = torch.randn(b, n, T, generator=g), torch.randn(b, n, T, generator=g)
    D, s0 = torch.randn(d, generator=g), torch.randn(b, d, n, generator=g) * 10
    assert bool((torch.exp(_loading_delta(A, torch.float32) * A) == 1).all())
    # bfloat16 inputs (precision="model"): the kernel reads the width in bfloat16 and computes in
    # float32, where its decay must still be exactly 1
    w = _loading_delta(A, torch.bfloat16)
    assert w > 0 and torch.tensor(w, dtype=torch.bfloat16).item() == w
    assert bool((torch.exp(w * A) == 1).all())
    y, last = scan_from_state(_torch_kernel, u, delta, A, B, C, D, s0)
    y_ref, last_ref = selective_scan(u, delta, A, B, C, D, initial_state=s0, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5 * float(y_ref.abs().max()))
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-5 * float(last_ref.abs().max()))

def test_kernel_backend_carries_a_state_only_under_the_ssm_rule():
    """mamba-ssm's kernels cannot start from a state: with true gradients (rules off) asking for one is
    an error, not a silent restart; under the ssm rule the CUDA backend carries the state itself."""
    from mambalrp_tools.backends import Backend

    x = torch.randn(1, 4, 6, requires_grad=True)
    with pytest.raises(ValueError, match="only under the ssm rule"):
        Backend("cuda").scan(x, x, torch.randn(4, 2), x[:, :2], x[:, :2], None, initial_state=torch.zeros(1, 4, 2))
    assert Backend("cuda").carries_state(ssm_rule=True) and not Backend("cuda").carries_state(ssm_rule=False)
    assert Backend("torch").carries_state(ssm_rule=False)
    assert Backend("cuda").recompute_tile > Backend("torch").recompute_tile


def _torch_kernel(u, delta, A, B, C, D=None, return_last_state=False):
    """mamba-ssm's selective_scan_fn contract (always from a zero state), on the PyTorch scan."""
    from mambalrp_tools.scan import selective_scan

    return selective_scan(u, delta, A, B, C, D, chunk_size=5, return_last_state=return_last_state)


@pytest.mark.parametrize("T", [1, 7, 40])
@pytest.mark.parametrize("route", ["kernel", "overflow", "tiny delta"])
def test_stateful_kernel_scan_equals_a_scan_from_that_state(T, route):
    """The CUDA backend's start-from-a-state algebra (`_LinearKernelScan`), run here on a zero-state
    PyTorch 'kernel' in float64: values, last state, du and ds0 (from dy and from d(last)) equal a scan
    that starts from the state. route: through the kernel (the state loaded in leading steps), or the
    PyTorch fallback where a start state too large to load or a delta too small to divide by would
    overflow."""
    from mambalrp_tools import backends
    from mambalrp_tools.scan import selective_scan

    g = torch.Generator().manual_seed(T)
    b, d, n = 2, 3, 4
    f64 = dict(dtype=torch.float64)
    u = torch.randn(b, d, T, generator=g, **f64)
    delta = torch.rand(b, d, T, generator=g, **f64) * 0.5 + 0.05
    A = -torch.rand(d, n, generator=g, **f64) * 2
    B, C = torch.randn(b, n, T, generator=g, **f64), torch.randn(b, n, T, generator=g, **f64)
    D = torch.randn(d, generator=g, **f64)
    s0 = torch.randn(b, d, n, generator=g, **f64)
    dy, dlast = torch.randn(b, d, T, generator=g, **f64), torch.randn(b, d, n, generator=g, **f64)
    if route == "overflow":
        s0[0, 0, 0] = 1e300
    if route == "tiny delta":
        delta[0, 0, -1] = 1e-40
    lengths = []  # the steps each kernel call scans

    def kernel(u, *args, **kwargs):
        lengths.append(u.shape[-1])
        return _torch_kernel(u, *args, **kwargs)

    def grads(fn):
        uu, ss = u.clone().requires_grad_(), s0.clone().requires_grad_()
        y, last = fn(uu, ss)
        du, ds = torch.autograd.grad((y * dy).sum() + (last * dlast).sum(), (uu, ss), allow_unused=True)
        return y.detach(), last.detach(), du, ds

    ours = grads(lambda uu, ss: backends._LinearKernelScan.apply(uu, ss, delta, A, B, C, D, kernel))
    ref = grads(lambda uu, ss: selective_scan(uu, delta, A, B, C, D, initial_state=ss, return_last_state=True))
    for a, r, what in zip(ours, ref, ("y", "last state", "du", "ds0")):
        scale = r.abs().max()  # the overflow route's values are ~1e300
        torch.testing.assert_close(a / scale, r / scale, rtol=1e-10, atol=1e-10, msg=what)
    # (with T = 1 the tiny delta has no predecessor whose adjoint input it would divide)
    expected = {"kernel": [T + n] * 2, "overflow": [], "tiny delta": [T + n] * (1 if T > 1 else 2)}[route]
    assert lengths == expected  # forward and backward each one call, with n loading steps

    # a sequence in two pieces, the first from no state (as a recomputed layer's first piece): the
    # first piece must hand its last state on, and take the gradient of it back
    if T > 1 and route == "kernel":
        cut = T // 2

        def pieces(uu, ss):
            y1, s1 = backends._LinearKernelScan.apply(uu[..., :cut], None, *(t[..., :cut] for t in (delta,)), A,
                                                     B[..., :cut], C[..., :cut], D, kernel)
            y2, s2 = backends._LinearKernelScan.apply(uu[..., cut:], s1, delta[..., cut:], A, B[..., cut:],
                                                     C[..., cut:], D, kernel)
            return torch.cat([y1, y2], -1), s2

        whole = grads(lambda uu, ss: selective_scan(uu, delta, A, B, C, D, return_last_state=True))

        # a whole sequence whose last state nobody uses (every explanation without pieces) scans no
        # loading steps, forward or backward
        lengths.clear()
        uu = u.clone().requires_grad_()
        y, _ = backends._LinearKernelScan.apply(uu, None, delta, A, B, C, D, kernel)
        (du_alone,) = torch.autograd.grad((y * dy).sum(), uu)
        assert lengths == [T, T]
        u_ref = u.clone().requires_grad_()
        (du_ref,) = torch.autograd.grad((selective_scan(u_ref, delta, A, B, C, D) * dy).sum(), u_ref)
        torch.testing.assert_close(du_alone, du_ref, rtol=1e-10, atol=1e-10)
        split = grads(pieces)
        for a, r, what in zip(split[:3], whole[:3], ("y", "last state", "du")):
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10, msg=f"pieces: {what}")


def test_explain_freezes_weights_only_while_it_runs():
    """Explanations need input gradients only: weights stop requiring grad for the duration (autograd
    then keeps no layer inputs for weight gradients) and get their own flags back, also after an error."""
    from mambalrp_tools.architectures import input_gradients_only

    model = tiny_model(zero_biases=True)
    model.backbone.layers[0].mixer.A_log.requires_grad_(False)  # a user's own choice must survive
    flags = [p.requires_grad for p in model.parameters()]
    seen = []
    with input_gradients_only(model):
        seen = [p.requires_grad for p in model.parameters()]
    assert not any(seen)
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(RuntimeError), input_gradients_only(model):
        raise RuntimeError("interrupted")
    assert [p.requires_grad for p in model.parameters()] == flags
    mlt.explain(model, _inputs(T=12))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_host_slabs_pack_kept_tensors_into_shared_blocks():
    from mambalrp_tools.recompute import HostSlabs

    slabs = HostSlabs()
    slabs.SLAB_BYTES = 1 << 12  # small slabs, to exercise starting a new one
    xs = [torch.randn(3, 50), torch.randn(7).double(), torch.randn(20, 20)]  # 600, 56 and 1600 bytes
    kept = [slabs.copy(x) for x in xs]
    for x, k in zip(xs, kept):
        assert torch.equal(k, x) and k.dtype == x.dtype
    storages = {k.untyped_storage().data_ptr() for k in kept}
    assert len(storages) == 1  # all three fit in one 4 KiB slab
    big = torch.randn(2000)  # 8 KB: more than a slab, kept as it is
    assert slabs.copy(big).untyped_storage().data_ptr() == big.untyped_storage().data_ptr()
    more = slabs.copy(torch.randn(600))  # 2.4 KB no longer fits next to the others: a new slab
    assert more.untyped_storage().data_ptr() not in storages


@pytest.mark.parametrize("width", [40, 37])
def test_cuda_conv_gets_a_layout_its_kernel_accepts(monkeypatch, width):
    """causal-conv1d's channel-last kernel refuses strides that are not multiples of 8 (a small model's
    in_proj width): such an input goes to it channel-first (contiguous). A stand-in with the kernel's
    layout check runs the convolution on a CPU; the values are the PyTorch backend's."""
    from mambalrp_tools import backends
    from mambalrp_tools.backends import Backend

    def kernel(x, weight, bias, activation=None):
        if x.stride(1) == 1:
            assert x.stride(0) % 8 == 0 and x.stride(2) % 8 == 0, "channel-last strides must be multiples of 8"
        else:
            assert x.stride(2) == 1
        seen.append(x.stride(1) == 1)
        return Backend("torch").conv1d(x, weight[:, None], bias)

    seen = []
    monkeypatch.setattr(backends, "cuda_kernels", lambda: (None, kernel))
    projected = torch.randn(2, 50, width)  # [b, T, in_proj width], as a projection leaves it
    xs = projected[..., :24].transpose(1, 2)  # [b, 24, T], channel-last
    weight, bias = torch.randn(24, 1, 4), torch.randn(24)
    out = Backend("cuda").conv1d(xs, weight, bias)
    torch.testing.assert_close(out, Backend("torch").conv1d(xs, weight, bias), rtol=0, atol=0)
    assert seen == [width % 8 == 0]  # channel-last kept when the kernel takes it


def _emulated_kernels():
    """mamba-ssm's `selective_scan_fn` and causal-conv1d's `causal_conv1d_fn` on a CPU, with the dtype
    contracts of their CUDA kernels: u, delta, B and C in one dtype, A and D float32, arithmetic and
    state in float32 (half-precision inputs), outputs in the input's dtype."""
    import torch.nn.functional as F

    from mambalrp_tools.scan import selective_scan

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        assert u.dtype == delta.dtype == B.dtype == C.dtype, (u.dtype, delta.dtype, B.dtype, C.dtype)
        assert A.dtype == torch.float32 or A.dtype == u.dtype == torch.float64, A.dtype
        assert D is None or D.dtype == A.dtype
        work = torch.promote_types(u.dtype, torch.float32)
        y, last = selective_scan(*(t.to(work) for t in (u, delta)), A, B.to(work), C.to(work), D,
                                 return_last_state=True)
        return (y.to(u.dtype), last) if return_last_state else y.to(u.dtype)

    def conv(x, weight, bias=None, activation=None):
        assert activation is None and (x.stride(2) == 1 or x.stride(1) == 1)
        work = torch.promote_types(x.dtype, torch.float32)
        k = weight.shape[-1]
        out = F.conv1d(x.to(work), weight.to(work)[:, None], None if bias is None else bias.to(work),
                       padding=k - 1, groups=x.shape[1])
        return out[..., : x.shape[-1]].to(x.dtype)

    return scan, conv


@pytest.fixture
def emulated_cuda_backend(monkeypatch):
    """`backend="cuda"` on a CPU model, its kernels emulated (`_emulated_kernels`); counts the calls
    of the PyTorch scan (`fallbacks`) that the kernel route replaces."""
    from mambalrp_tools import backends
    from mambalrp_tools.backends import Backend

    scan, conv = _emulated_kernels()
    monkeypatch.setattr(backends, "cuda_kernels", lambda: (scan, conv))
    monkeypatch.setattr(backends, "resolve", lambda backend, device, chunk_size=128: Backend(
        "cuda" if backend in ("auto", "cuda") else backend, chunk_size))
    fallbacks = []
    original = backends.selective_scan
    monkeypatch.setattr(backends, "selective_scan", lambda *a, **k: fallbacks.append(1) or original(*a, **k))
    return fallbacks


@pytest.mark.parametrize("dtype,precision", [(torch.float32, "float32"), (torch.bfloat16, "model"),
                                             (torch.bfloat16, "float32")])
def test_kernel_backend_dtypes_and_layouts_on_the_emulated_kernels(arch, emulated_cuda_backend, monkeypatch,
                                                                   dtype, precision):
    """The CUDA backend's path (time-major activations, bfloat16 ones under precision="model", the
    scan's start state loaded in bfloat16 steps) against the PyTorch backend, on kernels emulated
    with their dtype contracts; also in recomputed pieces, which must not fall back to the PyTorch scan."""
    from mambalrp_tools import backends

    model = tiny_model(arch, zero_biases=True, dtype=dtype)
    snap = snapshot(model)
    ids = _inputs(T=64)
    kw = dict(target=3, precision=precision)
    with monkeypatch.context() as m:
        m.setattr(backends, "resolve", lambda backend, device, chunk_size=128: backends.Backend("torch", chunk_size))
        ref = mlt.explain(model, ids, **kw)
    emulated_cuda_backend.clear()  # the PyTorch backend's own scans
    ours = mlt.explain(model, ids, **kw)
    monkeypatch.setattr(backends, "RECOMPUTE_TILE_CUDA", 24)  # three pieces per layer: state carried twice
    pieces = mlt.explain(model, ids, checkpoint="device", **kw)
    assert_untouched(model, snap)
    assert ours.info["backend"] == "cuda" and not emulated_cuda_backend
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for expl in (ours, pieces):
        torch.testing.assert_close(expl.logit, ref.logit, rtol=tol, atol=tol)
        scale = float(ref.relevance.abs().max())
        torch.testing.assert_close(expl.relevance / scale, ref.relevance / scale, rtol=tol, atol=tol)
        gap = (expl.relevance.sum(-1) - expl.logit).abs() / expl.relevance.abs().sum(-1)
        assert float(gap.max()) < (1e-5 if precision == "float32" else MODEL_PRECISION_BOUND), gap
