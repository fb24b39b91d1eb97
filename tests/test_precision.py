"""explain(precision=...): "float32" is exact on every dtype; "tf32" lets CUDA's float32 matmuls use TF32;
"model" runs the matmuls in the model's dtype."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import torch

import mambalrp_tools as mlt
from mambalrp_tools import tasks
from conftest import MODEL_PRECISION_BOUND, assert_untouched, child_env, snapshot, tiny_model

pytestmark = pytest.mark.timeout(120)


def _ids(T=40, batch=2, vocab=97, seed=0):
    return torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_precision_conserves_on_half_models(arch, dtype):
    model = tiny_model(arch, zero_biases=True, dtype=dtype)
    expl = mlt.explain(model, _ids(), target=3, precision="float32")
    assert float(expl.conservation_error.max()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_model_precision_on_half_models(arch, dtype):
    model = tiny_model(arch, zero_biases=True, dtype=dtype)
    snap = snapshot(model)
    ids = _ids()
    exact = mlt.explain(model, ids, target=3, precision="float32")
    fast = mlt.explain(model, ids, target=3, precision="model")
    assert_untouched(model, snap)
    # the explained logit is the model's own, to half-precision rounding
    with torch.no_grad():
        own = model(ids).logits[:, -1, 3].float()
    assert torch.allclose(fast.logit, own, rtol=5e-2, atol=5e-2), (fast.logit, own)
    assert torch.allclose(fast.logit, exact.logit, rtol=5e-2, atol=5e-2)
    gap = (fast.relevance.sum(-1) - fast.logit).abs() / fast.relevance.abs().sum(-1)
    assert float(gap.max()) < MODEL_PRECISION_BOUND, gap
    # half-precision matmuls change the relevance a little, not its picture
    for a, b in zip(fast.relevance, exact.relevance):
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.98


def test_model_precision_differs_from_float32_on_bf16(arch):
    """A test that could not fail if "model" silently upcast everything."""
    model = tiny_model(arch, zero_biases=True, dtype=torch.bfloat16)
    ids = _ids()
    exact = mlt.explain(model, ids, target=3, precision="float32")
    fast = mlt.explain(model, ids, target=3, precision="model")
    assert not torch.equal(fast.relevance, exact.relevance)


def test_model_precision_is_float32_on_float32_models(arch):
    model = tiny_model(arch, zero_biases=True)
    ids = _ids()
    a = mlt.explain(model, ids, target=3, precision="float32")
    b = mlt.explain(model, ids, target=3, precision="model")
    assert torch.equal(a.relevance, b.relevance) and torch.equal(a.logit, b.logit)
    assert float(b.conservation_error.max()) < 1e-5


def test_default_precision_is_exact_float32(arch):
    model = tiny_model(arch, zero_biases=True, dtype=torch.bfloat16)
    ids = _ids()
    assert torch.equal(mlt.explain(model, ids, target=3).relevance,
                       mlt.explain(model, ids, target=3, precision="float32").relevance)


def test_bad_precision_is_a_value_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="precision must be one of"):
        mlt.explain(model, _ids(), precision="fp8")


def test_tf32_is_set_for_the_explanation_and_restored(arch):
    """The mechanism, on any device: TF32 matmuls ("high") inside, the caller's setting after, also
    after an exception; on a CPU ("high" changes nothing there) the relevance equals float32's."""
    model = tiny_model(arch, zero_biases=True)
    ids = _ids()
    before = torch.get_float32_matmul_precision()
    seen = []
    with mlt.lrp_mode(model, precision="tf32"):
        seen.append(torch.get_float32_matmul_precision())
    assert seen == ["high"] and torch.get_float32_matmul_precision() == before
    with pytest.raises(KeyboardInterrupt), mlt.lrp_mode(model, precision="tf32"):
        raise KeyboardInterrupt
    assert torch.get_float32_matmul_precision() == before
    with mlt.lrp_mode(model, precision="float32"):
        assert torch.get_float32_matmul_precision() == before
    a = mlt.explain(model, ids, target=3, precision="float32")
    b = mlt.explain(model, ids, target=3, precision="tf32")
    assert torch.get_float32_matmul_precision() == before
    assert b.info["precision"] == "tf32"
    assert torch.equal(a.relevance, b.relevance) and torch.equal(a.logit, b.logit)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 matmuls exist on CUDA GPUs only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tf32_on_the_gpu(arch, dtype):
    model = tiny_model(arch, zero_biases=True, dtype=dtype, hidden_size=256).cuda()
    snap = snapshot(model)
    ids = _ids(T=256).cuda()
    exact = mlt.explain(model, ids, target=3, precision="float32")
    fast = mlt.explain(model, ids, target=3, precision="tf32")
    assert_untouched(model, snap)
    assert torch.allclose(fast.logit, exact.logit, rtol=1e-2, atol=1e-2)
    gap = (fast.relevance.sum(-1) - fast.logit).abs() / fast.relevance.abs().sum(-1)
    assert float(gap.max()) < MODEL_PRECISION_BOUND, gap
    for a, b in zip(fast.relevance, exact.relevance):
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.99


#: stand-in mamba_ssm / causal_conv1d that refuse CPU tensors: a benchmark that ran transformers' own
#: forward on a CPU model would fail where mamba-ssm is installed, and fails here too
STANDINS = pathlib.Path(__file__).parent / "standin_kernels"


def _benchmark(script, *args) -> str:
    """Run benchmarks/`script` with `args` in a child process (stand-in kernels first); its stdout."""
    bench = pathlib.Path(__file__).parents[1] / "benchmarks"
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=bench, env=child_env(STANDINS),
                          check=True, capture_output=True, text=True, timeout=100).stdout


def test_precision_agreement_benchmark_on_a_trained_toy(tmp_path):
    """benchmarks/precision_agreement.py --toy: an embedded trained model cast to bfloat16, on its own
    task; float32 agrees with itself and conserves, "model" conserves within its bound."""
    out = tmp_path / "agreement.json"
    _benchmark("precision_agreement.py", "--toy", "toy/bios", "--samples", 2, "--json", out)
    summary = json.loads(out.read_text())["summary"]
    assert summary["float32"]["pearson"] == pytest.approx(1.0) and summary["float32"]["top10"] == 1.0
    assert summary["float32"]["max_conservation"] < 1e-5
    assert summary["model"]["conservation_abs"] < MODEL_PRECISION_BOUND
    assert summary["model"]["pearson"] > 0.9


def test_precision_agreement_benchmark_for_integrated_gradients(tmp_path):
    """precision_agreement.py --method integrated_gradients: completeness against f - f(baseline), and a
    finer-integration row that moves the relevance (on a CPU tf32 is float32 itself)."""
    out = tmp_path / "agreement.json"
    _benchmark("precision_agreement.py", "--toy", "toy/sentiment", "--dtype", "float32", "--method",
               "integrated_gradients", "--samples", 1, "--reference-steps", 16, "--json", out)
    summary = json.loads(out.read_text())["summary"]
    assert list(summary) == ["float32", "tf32", "model", "float32, 16 steps"]
    exact, finer = summary["float32"], summary["float32, 16 steps"]
    assert exact["pearson"] == pytest.approx(1.0)
    assert summary["tf32"] == pytest.approx(exact | {"seconds": summary["tf32"]["seconds"]})  # no TF32 off CUDA
    model = mlt.load_model("toy/sentiment")[0]
    ex = tasks.load("sentiment", 1, seed=0)[0]
    ig = mlt.explain(model, ex.input_ids[None], target=ex.target, method="integrated_gradients")
    assert exact["conservation"] == pytest.approx(float(ig.conservation_error[0]), rel=1e-4)  # against f - f(b)
    assert finer["pearson"] < 0.9999 and finer["conservation"] != pytest.approx(exact["conservation"])


def test_ig_completeness_benchmark_prints_one_row_per_model():
    """benchmarks/ig_completeness.py: the path from the zero embedding ends at f(e), and the errors are
    IG's own `conservation_error` for each baseline."""
    stdout = _benchmark("ig_completeness.py", "--toys", "toy/sentiment", "--samples", 1, "--steps", 8,
                        "--baselines", "zero", 5)
    rows = [line for line in stdout.splitlines() if line.startswith("| toy/")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    path = [float(v) for v in cells[1].split(",")]
    assert path[0] == 0.0 and path[-1] == 1.0
    model = mlt.load_model("toy/sentiment")[0]
    ex = tasks.load("sentiment", 1, seed=0)[0]
    for cell, baseline in zip(cells[2:], ("zero", 5)):
        ig = mlt.explain(model, ex.input_ids[None], target=ex.target, method="ig", baseline=baseline, n_steps=8)
        assert float(cell) == pytest.approx(float(ig.conservation_error[0]), abs=1e-3)
