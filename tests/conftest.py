"""Shared fixtures: tiny random Mamba / FalconMamba models built from configs (never a download)."""

from __future__ import annotations

import os

# tests must never reach a hub; huggingface_hub reads this once, at import, so set it before
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import FalconMambaConfig, FalconMambaForCausalLM, MambaConfig, MambaForCausalLM  # noqa: E402
torch.set_num_threads(min(2, torch.get_num_threads()))

def child_env(*first, **variables) -> dict:
    """The environment of a child Python process: the project (then `first`) ahead on PYTHONPATH, the
    caller's PYTHONPATH kept behind them (a GPU machine's wheel folder lives there), offline."""
    from pathlib import Path

    path = [str(Path(__file__).resolve().parents[1]), *map(str, first)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "HF_HUB_OFFLINE": "1", **variables}


#: |sum R - f| / sum |R| that precision="model" stays within on half-precision models (README "Precision");
#: relative to the total relevance, not to f, which can sit near zero. bfloat16 activations: max 0.021,
#: median 0.002 over 128 inputs of tiny random models
MODEL_PRECISION_BOUND = 3e-2
ARCHS = {"mamba": (MambaConfig, MambaForCausalLM), "falcon_mamba": (FalconMambaConfig, FalconMambaForCausalLM)}


def _kernel_entry_points():
    """(module, name, kernel function, torch fallback) for transformers' Mamba kernel entry points.

    transformers decorates its Mamba functions (`causal_conv1d_fn`, `selective_scan_fn`, ...) so that,
    where mamba-ssm / causal-conv1d import, they call those CUDA kernels, also for CPU tensors; the
    decorator keeps the PyTorch fallback as `__wrapped__`.
    """
    import importlib

    out = []
    for name in ("mamba", "falcon_mamba", "mamba2"):
        module = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
        for attr, fn in vars(module).items():
            torch_fn = getattr(fn, "__wrapped__", None)
            if callable(fn) and getattr(torch_fn, "__module__", None) == module.__name__ and torch_fn is not fn:
                out.append((module, attr, fn, torch_fn))
    return out


@pytest.fixture(autouse=True)
def transformers_reference_on_its_torch_path():
    """The tests' reference, transformers' own forward, runs on its PyTorch path where mamba-ssm is
    installed (a GPU machine), so it also works for the CPU models the tests build. The package never
    uses these entry points (its own forward runs everywhere), so this changes only the reference."""
    from mambalrp_tools.backends import cuda_kernels

    if cuda_kernels() is None:
        yield
        return
    points = _kernel_entry_points()
    for module, attr, _, torch_fn in points:
        setattr(module, attr, torch_fn)
    try:
        yield
    finally:
        for module, attr, fn, _ in points:
            setattr(module, attr, fn)


def tiny_config(arch="mamba", vocab_size=97, hidden_size=32, layers=2, state_size=8, **kw):
    config_cls, _ = ARCHS[arch]
    return config_cls(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                      intermediate_size=2 * hidden_size, state_size=state_size, use_conv_bias=True, **kw)


def tiny_model(arch="mamba", seed=0, zero_biases=False, dtype=torch.float32, **kw):
    """A random causal LM in eval mode; zero_biases zeroes the relevance-carrying biases
    (conv1d, in_proj, out_proj) so that MambaLRP conserves exactly."""
    torch.manual_seed(seed)
    model = ARCHS[arch][1](tiny_config(arch, **kw)).eval().to(dtype)
    if zero_biases:
        zero_relevance_biases(model)
    return model


@torch.no_grad()
def zero_relevance_biases(model):
    for block in model.base_model.layers:
        for layer in (block.mixer.conv1d, block.mixer.in_proj, block.mixer.out_proj):
            if layer.bias is not None:
                layer.bias.zero_()


def snapshot(model):
    """Bit-exact copy of every parameter and buffer, plus each module's training flag and forward."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {name: (m.training, m.__dict__.get("forward")) for name, m in model.named_modules()}
    return state, flags


def assert_untouched(model, snap):
    state, flags = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    for name, m in model.named_modules():
        assert (m.training, m.__dict__.get("forward")) == flags[name], f"module {name!r} was left modified"


@pytest.fixture(params=["mamba", "falcon_mamba"])
def arch(request):
    return request.param


# ---- a tiny word-level tokenizer built in memory (never downloaded)

WORDS = ["[PAD]", "[UNK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "she", "he", "is", "doctor",
         "nurse", "<b>", "&", "quick", "brown", "fox"]


def word_tokenizer():
    """A `PreTrainedTokenizerFast` over WORDS (ids 0..19, fits the tiny models' vocabulary of 97)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture
def tokenizer():
    return word_tokenizer()


def hand_gradient_x_input(model, ids, target, position=-1, attention_mask=None):
    """Gradient x Input by plain autograd on the UNPATCHED model: (relevance [B, T], f [B])."""
    emb = model.get_input_embeddings()(ids).detach().requires_grad_()
    logits = model(inputs_embeds=emb, attention_mask=attention_mask).logits
    f = logits[torch.arange(ids.shape[0]), position, target]
    (grad,) = torch.autograd.grad(f.sum(), emb)
    return (emb * grad).sum(-1).detach(), f.detach()


# ---- models whose every parameter matters (init leaves norm weights at 1, conv bias at 0, D at 1)

@torch.no_grad()
def randomize_trivial_parameters(model, seed=0):
    """Give norm weights, D and every bias except dt_proj's random values, so tests exercise them."""
    gen = torch.Generator().manual_seed(10_000 + seed)

    def noise(p):
        return torch.randn(p.shape, generator=gen).to(p.dtype)

    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith("norm_f.weight") or name.endswith("mixer.D"):
            p.copy_(1 + 0.3 * noise(p))
        elif name.endswith(".bias") and "dt_proj" not in name:
            p.copy_(0.2 * noise(p))
    return model


def rich_model(arch="mamba", seed=0, zero_biases=False, dtype=torch.float32, use_bias=True, **kw):
    """tiny_model with in_proj/out_proj biases (use_bias) and no trivially initialised parameter;
    zero_biases then zeroes the relevance-carrying ones (conv1d, in_proj, out_proj) again."""
    model = tiny_model(arch, seed, use_bias=use_bias, **kw)
    randomize_trivial_parameters(model, seed)
    if zero_biases:
        zero_relevance_biases(model)
    return model.to(dtype)
