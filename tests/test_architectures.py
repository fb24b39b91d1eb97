"""Adding an architecture needs one file's worth of code and a registry entry, no edit in methods/ or evaluation/.

The file's worth of code is below: a tiny selective-SSM language model that is not a transformers
Mamba (no convolution, its own module classes), its replacement forwards built from `rules.py`, and
its `Architecture`. Every registered method then explains it, and the randomisation stages and the
memory estimates come from its accessors.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import mambalrp_tools as mlt
from mambalrp_tools import architectures, backends, evaluation
from mambalrp_tools.architectures import Architecture, LayerSSM, PatchContext, Sizes
from mambalrp_tools.methods import Query, captum_methods, method_info
from mambalrp_tools.methods.hidden_attention import capture_layers, hidden_attention
from conftest import tiny_model
from mambalrp_tools.rules import Rules, gate, rms_norm, silu, ssm
from reference import reference_scan

# ------------------------------------------------------------ the new "architecture file"


class ToyNorm(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.weight = torch.nn.Parameter(1 + 0.1 * torch.randn(width))
        self.eps = 1e-6

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, rule=False)


class ToyMixer(torch.nn.Module):
    """x -> (u, z); delta, B, C from u; y = scan(u); out = out_proj(y * silu(z))."""

    def __init__(self, hidden, inner, state):
        super().__init__()
        self.state = state
        self.in_proj = torch.nn.Linear(hidden, 2 * inner, bias=False)
        self.x_proj = torch.nn.Linear(inner, 1 + 2 * state, bias=False)
        self.dt_proj = torch.nn.Linear(1, inner)  # its bias only sets the step size (the ssm rule detaches it)
        self.A_log = torch.nn.Parameter(torch.log(torch.rand(inner, state) + 0.5))
        self.D = torch.nn.Parameter(torch.randn(inner))
        self.out_proj = torch.nn.Linear(inner, hidden, bias=False)

    def quantities(self, h, mask, rules: Rules):
        xs, z = self.in_proj(h).chunk(2, dim=-1)
        u = silu(xs, rules.silu)
        if mask is not None:
            u = u * mask[:, :, None].to(u.dtype)
        dt, B, C = torch.split(self.x_proj(u), [1, self.state, self.state], dim=-1)
        delta = F.softplus(self.dt_proj(dt)).transpose(1, 2)
        delta, A, B, C, D = ssm(delta, -torch.exp(self.A_log), B.transpose(1, 2), C.transpose(1, 2), self.D, rules.ssm)
        return u.transpose(1, 2), delta, A, B, C, D, z

    def run(self, h, mask, rules: Rules, backend):
        u, delta, A, B, C, D, z = self.quantities(h, mask, rules)
        y, _ = backend.scan(u.contiguous(), delta.contiguous(), A, B.contiguous(), C.contiguous(), D)
        return self.out_proj(gate(y.transpose(1, 2), silu(z, rules.silu), rules.gate))

    def forward(self, hidden_states, attention_mask=None):
        return self.run(hidden_states, attention_mask, Rules.none(), backends.resolve("torch", hidden_states.device))


class ToyBlock(torch.nn.Module):
    def __init__(self, hidden, inner, state):
        super().__init__()
        self.norm = ToyNorm(hidden)
        self.mixer = ToyMixer(hidden, inner, state)

    def forward(self, x, attention_mask=None):
        return x + self.mixer(self.norm(x), attention_mask=attention_mask)


class ToyBackbone(torch.nn.Module):
    def __init__(self, vocab, hidden, inner, state, n_layers):
        super().__init__()
        self.embeddings = torch.nn.Embedding(vocab, hidden)
        self.blocks = torch.nn.ModuleList(ToyBlock(hidden, inner, state) for _ in range(n_layers))
        self.final = ToyNorm(hidden)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, use_cache=None):
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        for block in self.blocks:
            x = block(x, attention_mask=attention_mask)
        return SimpleNamespace(last_hidden_state=self.final(x))


class ToyLM(torch.nn.Module):
    def __init__(self, vocab=23, hidden=12, inner=16, state=4, n_layers=2):
        super().__init__()
        self.config = SimpleNamespace(vocab=vocab, hidden=hidden, inner=inner, state=state, n_layers=n_layers)
        self.backbone = ToyBackbone(vocab, hidden, inner, state, n_layers)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)

    @property
    def base_model(self):
        return self.backbone

    def get_input_embeddings(self):
        return self.backbone.embeddings

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, use_cache=None):
        out = self.backbone(input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        return SimpleNamespace(logits=self.head(out.last_hidden_state))


def toy_norm_forward(norm, ctx: PatchContext):
    return lambda x: rms_norm(x, norm.weight, norm.eps, ctx.rules.norm)


def toy_mixer_forward(mixer, ctx: PatchContext):
    return lambda hidden_states, attention_mask=None: mixer.run(hidden_states, attention_mask, ctx.rules, ctx.backend)


class Toy(Architecture):
    name = "toy"
    supported = "the test's ToyLM"
    patch_map = {ToyNorm: toy_norm_forward, ToyMixer: toy_mixer_forward}

    def layers(self, model):
        return list(model.base_model.blocks)

    def mixer(self, layer):
        return layer.mixer

    def final_norm(self, model):
        return model.base_model.final

    def scan_quantities(self, mixer, hidden_states, attention_mask=None):
        with torch.no_grad():
            u, delta, A, B, C, D, _ = mixer.quantities(hidden_states, attention_mask, Rules.none())
        return LayerSSM(u, delta, A, B, C, D, attention_mask)

    def sizes(self, model):
        c = model.config
        return Sizes(layers=c.n_layers, hidden=c.hidden, inner=c.inner, state=c.state, activation_floats=8)


# ------------------------------------------------------------ the tests


@pytest.fixture
def toy():
    architectures.register_architecture(ToyBackbone, Toy())
    try:
        torch.manual_seed(0)
        yield ToyLM().eval()
    finally:
        del architectures.ARCHITECTURES[ToyBackbone]


def _ids(batch=2, T=9):
    return torch.randint(0, 23, (batch, T), generator=torch.Generator().manual_seed(1))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.timeout(60)
def test_unregistered_model_is_refused_naming_what_is_supported():
    with pytest.raises(TypeError, match="ToyLM is not supported; supported are .*MambaForCausalLM"):
        mlt.explain(ToyLM(), [1, 2, 3])


@pytest.mark.timeout(120)
def test_every_method_explains_a_registered_new_architecture(toy):
    ids = _ids()
    before = _state(toy)
    with torch.no_grad():
        logits = toy(ids).logits[:, -1]
    for name in mlt.list_methods():
        kwargs = {"n_steps": 4} if name == "integrated_gradients" else {"nt_samples": 3} if name == "smoothgrad" else {}
        expl = mlt.explain(toy, ids, method=name, **kwargs)
        assert expl.relevance.shape == ids.shape and torch.isfinite(expl.relevance).all(), name
        assert torch.equal(expl.target, logits.argmax(-1)), name
        torch.testing.assert_close(expl.logit, logits.gather(1, expl.target[:, None])[:, 0], rtol=1e-5, atol=1e-5)
        if method_info(name).completeness == "f":
            assert expl.conservation_error is not None
    after = _state(toy)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any("forward" in m.__dict__ for m in toy.modules())  # every patch removed


@pytest.mark.timeout(60)
def test_mambalrp_conserves_on_the_new_architecture_and_its_rules_matter(toy):
    ids = _ids()
    lrp = mlt.explain(toy, ids)
    gi = mlt.explain(toy, ids, method="gi")
    assert lrp.conservation_error.max() <= 1e-5, lrp.conservation_error
    assert gi.conservation_error.min() > 1e-3, gi.conservation_error
    no_ssm = mlt.explain(toy, ids, rules={"ssm": False})
    assert (no_ssm.relevance - lrp.relevance).abs().max() > 1e-3


@pytest.mark.timeout(60)
def test_patched_forward_values_are_unchanged(toy):
    ids = _ids()
    with torch.no_grad():
        plain = toy(ids).logits
        with mlt.lrp_mode(toy):
            assert toy.base_model.blocks[0].mixer.__dict__.get("forward") is not None
            patched = toy(ids).logits
    torch.testing.assert_close(patched, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.timeout(60)
def test_hidden_attention_reads_the_new_architectures_scan(toy):
    ids = _ids(batch=1, T=7)
    layers = capture_layers(Query(toy, ids, None, None, None, -1))
    assert len(layers) == 2
    # the captured quantities are the scan the mixer really runs: y - D u from them equals the mixer's
    # output before the gate, recomputed here from the block input
    block = toy.base_model.blocks[0]
    with torch.no_grad():
        h = block.norm(toy.base_model.embeddings(ids))
        u, delta, A, B, C, D, _ = block.mixer.quantities(h, None, Rules.none())
    torch.testing.assert_close(layers[0].u, u)
    torch.testing.assert_close(reference_scan(layers[0].u, layers[0].delta, layers[0].A, layers[0].B, layers[0].C),
                               reference_scan(u, delta, A, B, C))
    alpha = hidden_attention(toy, ids)
    assert alpha.shape == (2, 1, 7, 7) and torch.equal(alpha, alpha.tril())


@pytest.mark.timeout(60)
def test_randomisation_stages_and_memory_sizes_come_from_the_accessors(toy):
    stages = evaluation.randomization.stages(toy)
    assert [name for name, _ in stages] == ["head", "norm_f", "layer_1", "layer_0", "embeddings"]
    assert stages[2][1] == [toy.base_model.blocks[1]] and stages[1][1] == [toy.base_model.final]
    query = Query(toy, _ids(batch=1, T=10), None, None, None, -1)
    c = toy.config
    fit = min(captum_methods.AUTO_BATCH_ELEMENTS // (10 * c.n_layers * c.inner),
              captum_methods.AUTO_BATCH_CPU_STATE_FLOATS // (c.inner * c.state))
    assert captum_methods.auto_batch(query, 10**9) == fit


@pytest.mark.timeout(120)
def test_randomisation_check_runs_through_the_new_architecture(toy):
    from mambalrp_tools.tasks.base import Example

    examples = [Example(_ids(batch=1, T=8)[0], 0, torch.tensor([1]))]
    res = evaluation.randomization_check(toy, examples, ["mambalrp", "random"], out=None, progress=False)
    assert res.summary["stages"] == ["trained", "head", "norm_f", "layer_1", "layer_0", "embeddings"]
    assert res.summary["methods"]["random"]["spearman"] == pytest.approx([1.0] * 6)
    assert min(res.summary["methods"]["mambalrp"]["spearman"][1:]) < 0.9


def test_auto_checkpoint_counts_the_whole_batch(monkeypatch):
    """A 130m-sized model at 512 tokens stores ~0.75 GB of activations per sequence (under the CPU
    budget), a batch of 16 twelve times the budget: the batch is recomputed, one sequence is not.
    explain passes its batch size on, and the bytes per activation: bfloat16 ones (precision="model")
    take half."""
    sizes = Sizes(layers=24, hidden=768, inner=1536, state=16, activation_floats=10)
    cpu = torch.device("cpu")
    assert architectures._checkpoint_mode(None, 512, sizes, cpu) is None
    assert architectures._checkpoint_mode(None, 512, sizes, cpu, batch_size=16) == "device"
    original = architectures._checkpoint_mode
    monkeypatch.setattr(architectures, "_checkpoint_mode", lambda *a: seen.append(a[-2:]) or original(*a))
    seen = []  # (batch size, bytes per activation) of each lrp_mode call
    mlt.explain(tiny_model("mamba"), torch.zeros(3, 12, dtype=torch.long), target=0)
    assert seen and set(seen) == {(3, 4)}  # float32 activations
    # bfloat16 activations (precision="model") take half the bytes: 3 x 512 tokens then fit
    assert original(None, 512, sizes, cpu, False, 3, 4) == "device"
    assert original(None, 512, sizes, cpu, False, 3, 2) is None
    seen.clear()
    mlt.explain(tiny_model("mamba", dtype=torch.bfloat16), torch.zeros(3, 12, dtype=torch.long), target=0,
                precision="model")
    assert set(seen) == {(3, 2)}
