"""The transformers modules, classes and attributes the patch maps are written for.

A transformers upgrade that renames one of them must fail here, naming it, rather than leave a layer on
transformers' own path (its values would still look plausible; its relevance would not be MambaLRP).
FalconMamba before transformers 5.15 is an example: its mixer had no `b_layernorm`, and the package's
forward skipped the dt/B/C norms (floor raised to 5.15).
"""

from __future__ import annotations

import importlib

import pytest
import torch
import transformers
from conftest import tiny_model

import mambalrp_tools as mlt

#: arch -> (module, {role: class name}) as transformers 5.15 ... 5.24 define them
EXPECTED = {
    "mamba": ("transformers.models.mamba.modeling_mamba",
              {"model": "MambaForCausalLM", "backbone": "MambaModel", "block": "MambaBlock",
               "mixer": "MambaMixer", "norm": "MambaRMSNorm"}),
    "falcon_mamba": ("transformers.models.falcon_mamba.modeling_falcon_mamba",
                     {"model": "FalconMambaForCausalLM", "backbone": "FalconMambaModel", "block": "FalconMambaBlock",
                      "mixer": "FalconMambaMixer", "norm": "FalconMambaRMSNorm"}),
}
#: attributes the replacement forwards in architectures/mamba.py read
READS = {
    "backbone": ("layers", "norm_f"),
    "block": ("norm", "mixer"),
    "mixer": ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj", "A_log", "D", "time_step_rank",
              "ssm_state_size", "intermediate_size"),
    "norm": ("weight", "variance_epsilon"),
}
FALCON_MIXER_READS = ("b_layernorm", "c_layernorm", "dt_layernorm", "rms_eps")  # the dt/B/C norms


def where():
    return f"(transformers {transformers.__version__}; the patch maps in mambalrp_tools/architectures expect it)"


def roles(model):
    backbone = model.base_model
    block = backbone.layers[0]
    return {"model": model, "backbone": backbone, "block": block, "mixer": block.mixer, "norm": block.norm}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_expected_modules_and_classes_exist(arch):
    module_name, classes = EXPECTED[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        pytest.fail(f"module {module_name} cannot be imported {where()}: {e}")
    missing = [name for name in classes.values() if not hasattr(module, name)]
    assert not missing, f"{module_name} has no {', '.join(missing)} {where()}"


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_models_are_built_of_the_expected_classes_and_attributes(arch):
    module_name, classes = EXPECTED[arch]
    found = roles(tiny_model(arch))
    for role, name in classes.items():
        cls = type(found[role])
        assert (cls.__module__, cls.__name__) == (module_name, name), (
            f"{arch}: the {role} is {cls.__module__}.{cls.__name__}, not {module_name}.{name} {where()}")
    reads = {**READS, "mixer": READS["mixer"] + (FALCON_MIXER_READS if arch == "falcon_mamba" else ())}
    for role, attrs in reads.items():
        missing = [a for a in attrs if not hasattr(found[role], a)]
        assert not missing, f"{arch}: {classes[role]} has no {', '.join(missing)} {where()}"
    assert found["backbone"].norm_f.__class__.__name__ == classes["norm"], f"{arch}: final norm class changed {where()}"


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_no_layer_falls_back_to_transformers_forward(arch, monkeypatch):
    """Every block, mixer and norm runs the replacement: their own class forwards must not run at all."""
    module_name, classes = EXPECTED[arch]
    module = importlib.import_module(module_name)
    ran = []
    for role in ("block", "mixer", "norm"):
        cls = getattr(module, classes[role])
        for name in ("forward", "slow_forward", "cuda_kernels_forward"):
            if name in vars(cls):
                monkeypatch.setattr(cls, name, lambda *a, _n=f"{cls.__name__}.{name}", **k: ran.append(_n) or 1 / 0)
    model = tiny_model(arch, seed=1)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    expl = mlt.explain(model, ids)
    with mlt.lrp_mode(model), torch.no_grad():
        model(ids)
    assert not ran, f"transformers' own {sorted(set(ran))} ran under lrp_mode {where()}"
    assert torch.isfinite(expl.relevance).all()
    with pytest.raises(ZeroDivisionError):  # the stubs are live: outside lrp_mode transformers' path runs them
        with torch.no_grad():
            model(ids)
