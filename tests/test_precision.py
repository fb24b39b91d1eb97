"""explain(precision=...): "float32" is exact on every dtype; "model" runs the matmuls in the model's dtype."""

from __future__ import annotations

import pytest
import torch

import mambalrp_tools as mlt
from conftest import assert_untouched, snapshot, tiny_model

pytestmark = pytest.mark.timeout(120)
#: |sum R - f| / sum |R| that precision="model" stays within on half-precision models (README "Precision");
#: relative to the total relevance, not to f, which can sit near zero
MODEL_PRECISION_BOUND = 1e-2


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
