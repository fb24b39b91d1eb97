"""Shared fixtures: tiny random Mamba / FalconMamba models built from configs (never a download)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import FalconMambaConfig, FalconMambaForCausalLM, MambaConfig, MambaForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a hub
torch.set_num_threads(min(2, torch.get_num_threads()))

ARCHS = {"mamba": (MambaConfig, MambaForCausalLM), "falcon_mamba": (FalconMambaConfig, FalconMambaForCausalLM)}


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
