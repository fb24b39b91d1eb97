"""`explain`'s inputs: batches, padding, `position`, text with a tokenizer, `contrast`, half
precision, every bad input (ValueError, model untouched) and unsupported models (TypeError)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_untouched, hand_gradient_x_input, rich_model, snapshot, tiny_config, tiny_model

import mambalrp_tools as mlt


def ids_for(seed, batch, length, low=0, high=97):
    return torch.randint(low, high, (batch, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- batches, padding, position

def test_batch_equals_single_samples(arch):
    model = rich_model(arch, 0, zero_biases=True)
    ids = ids_for(0, 3, 24)
    target = torch.tensor([4, 50, 96])
    batch = mlt.explain(model, ids, target=target)
    assert batch.relevance.shape == (3, 24) and batch.target.tolist() == [4, 50, 96]
    for i in range(3):
        single = mlt.explain(model, ids[i], target=int(target[i]))  # 1-D ids: one sample
        assert single.relevance.shape == (1, 24)
        torch.testing.assert_close(batch.relevance[i], single.relevance[0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(batch.logit[i], single.logit[0], rtol=1e-6, atol=1e-6)
    as_list = mlt.explain(model, ids[1].tolist(), target=50)  # a list of ints
    torch.testing.assert_close(as_list.relevance[0], batch.relevance[1], rtol=1e-5, atol=1e-7)


def test_target_none_is_the_argmax_and_one_int_is_broadcast(arch):
    model = rich_model(arch, 1)
    ids = ids_for(1, 2, 10)
    with torch.no_grad():
        argmax = model(ids).logits[:, -1].argmax(-1)
    assert torch.equal(mlt.explain(model, ids).target, argmax)
    assert mlt.explain(model, ids, target=7).target.tolist() == [7, 7]
    assert mlt.explain(model, ids, target=[7, 9]).target.tolist() == [7, 9]


@pytest.mark.parametrize("method", ["mambalrp", "gradient_x_input", "lrp_ln"])
def test_left_padding(arch, method):
    # realistic biases: conv1d's is random, in_proj has none (see test_left_padding_with_in_proj_bias)
    model = rich_model(arch, 2, use_bias=False)
    a, b = ids_for(2, 1, 7, low=1)[0], ids_for(3, 1, 10, low=1)[0]
    pad_id = 5  # a real token: padding must be masked, not merely a neutral id
    ids = torch.stack([torch.cat([torch.full((3,), pad_id), a]), b])
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    target = torch.tensor([11, 12])
    padded = mlt.explain(model, ids, target=target, attention_mask=mask, method=method)
    assert torch.equal(padded.relevance[0, :3], torch.zeros(3))  # exactly 0
    assert torch.equal(padded.attention_mask, mask)
    for row, (seq, start) in enumerate([(a, 3), (b, 0)]):
        alone = mlt.explain(model, seq, target=int(target[row]), method=method)
        torch.testing.assert_close(padded.relevance[row, start:], alone.relevance[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(padded.logit[row], alone.logit[0], rtol=1e-5, atol=1e-6)


def test_left_padding_conserves(arch):
    model = rich_model(arch, 3, zero_biases=True)
    ids = ids_for(3, 2, 15)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    expl = mlt.explain(model, ids, attention_mask=mask)
    assert expl.conservation_error.max() <= 1e-5


def test_left_padding_with_in_proj_bias_matches_transformers(arch):
    """With an in_proj bias, transformers itself lets padding leak (it masks before in_proj, so the
    conv sees the bias at padded positions); explain must still explain the model's own logit."""
    model = rich_model(arch, 4, use_bias=True)
    ids = ids_for(4, 2, 9)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    expl = mlt.explain(model, ids, attention_mask=mask)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(expl.logit, logits[torch.arange(2), expl.target], rtol=1e-5, atol=1e-5)
    assert torch.equal(expl.relevance[0, :4], torch.zeros(4))


@pytest.mark.parametrize("position", [0, 5, 13, -2, -9])
def test_position_equals_explaining_the_truncated_input(arch, position):
    model = rich_model(arch, 5, zero_biases=True)
    ids = ids_for(5, 2, 15)
    end = position + 1 if position >= 0 else ids.shape[1] + position + 1
    expl = mlt.explain(model, ids, target=[3, 30], position=position)
    truncated = mlt.explain(model, ids[:, :end], target=[3, 30])
    torch.testing.assert_close(expl.relevance[:, :end], truncated.relevance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(expl.logit, truncated.logit, rtol=1e-5, atol=1e-6)
    assert torch.equal(expl.relevance[:, end:], torch.zeros(2, ids.shape[1] - end))  # the future is irrelevant
    assert expl.position == position
    # conserves (fixed targets can give f near 0, so relative to the relevance mass, not to f)
    err = (expl.relevance.double().sum(-1) - expl.logit.double()).abs()
    assert (err <= 1e-5 * expl.relevance.double().abs().sum(-1)).all(), err
    with torch.no_grad():
        logits = model(ids).logits[:, position]
    torch.testing.assert_close(expl.logit, logits[torch.arange(2), torch.tensor([3, 30])], rtol=1e-5, atol=1e-5)


def test_contrast_is_the_difference_of_the_two_targets(arch):
    model = rich_model(arch, 6, zero_biases=True)
    ids = ids_for(6, 2, 20)
    target, contrast = torch.tensor([10, 20]), torch.tensor([30, 40])
    both = mlt.explain(model, ids, target=target, contrast=contrast)
    t = mlt.explain(model, ids, target=target)
    c = mlt.explain(model, ids, target=contrast)
    torch.testing.assert_close(both.relevance, t.relevance - c.relevance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both.logit, t.logit - c.logit, rtol=1e-5, atol=1e-6)
    assert both.contrast.tolist() == [30, 40] and both.target.tolist() == [10, 20]
    assert both.conservation_error.max() <= 1e-5
    gi = mlt.explain(model, ids, target=target, contrast=contrast, method="gi")
    by_hand = hand_gradient_x_input(model, ids, target)[0] - hand_gradient_x_input(model, ids, contrast)[0]
    torch.testing.assert_close(gi.relevance, by_hand, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- text with a tokenizer

def test_list_of_strings_is_left_padded(arch, tokenizer):
    model = rich_model(arch, 7, zero_biases=True)
    texts = ["the cat sat on the mat", "a dog ran", "the quick brown fox"]
    expl = mlt.explain(model, texts, tokenizer=tokenizer, target=tokenizer.convert_tokens_to_ids("cat"))
    lengths = [6, 3, 4]
    assert expl.relevance.shape == (3, 6)
    assert expl.tokens[1][-3:] == ["a", "dog", "ran"] and expl.tokens[0] == texts[0].split()
    for i, (text, n) in enumerate(zip(texts, lengths)):
        assert expl.attention_mask[i].tolist() == [0] * (6 - n) + [1] * n  # left padding
        assert torch.equal(expl.relevance[i, : 6 - n], torch.zeros(6 - n))
        alone = mlt.explain(model, text, tokenizer=tokenizer, target="cat")  # a token string as target
        assert alone.tokens == [text.split()]
        torch.testing.assert_close(expl.relevance[i, 6 - n:], alone.relevance[0], rtol=1e-5, atol=1e-6)
    assert expl.conservation_error.max() <= 1e-5


def test_text_needs_a_tokenizer(arch, tokenizer):
    model = tiny_model(arch)
    with pytest.raises(ValueError, match="tokenizer"):
        mlt.explain(model, "the cat sat")
    with pytest.raises(ValueError, match="tokenizer"):
        mlt.explain(model, [1, 2, 3], target="cat")
    with pytest.raises(ValueError, match="token"):
        mlt.explain(model, "the cat", tokenizer=tokenizer, target="cat sat")  # two tokens


# --------------------------------------------------------------------------- half precision

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_gives_float32_relevance_that_conserves(arch, dtype):
    model = rich_model(arch, 8, zero_biases=True, dtype=dtype)
    ids = ids_for(8, 2, 30)
    snap = snapshot(model)
    expl = mlt.explain(model, ids)
    assert expl.relevance.dtype == torch.float32 and expl.logit.dtype == torch.float32
    assert expl.conservation_error.max() <= 1e-5, expl.conservation_error
    assert_untouched(model, snap)
    assert all(p.dtype == dtype for p in model.parameters())
    # the engine computes in float32 from the half weights: same as a float32 copy of them
    upcast = rich_model(arch, 8, zero_biases=True, dtype=dtype).float()
    torch.testing.assert_close(expl.relevance, mlt.explain(upcast, ids).relevance, rtol=1e-5, atol=1e-6)
    # and f is the half model's logit up to half-precision rounding
    with torch.no_grad():
        own = model(ids).logits[:, -1].float()[torch.arange(2), expl.target]
    torch.testing.assert_close(expl.logit, own, rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------- bad input

def bad_inputs(tokenizer):
    ids = ids_for(9, 2, 6)
    ok_mask = torch.ones_like(ids)
    return {
        "empty tensor": dict(input_ids=torch.zeros(1, 0, dtype=torch.long)),
        "empty list": dict(input_ids=[]),
        "empty batch": dict(input_ids=torch.zeros(0, 5, dtype=torch.long)),
        "empty text": dict(input_ids="", tokenizer=tokenizer),
        "float ids": dict(input_ids=torch.rand(2, 6)),
        "3-d ids": dict(input_ids=torch.zeros(1, 2, 3, dtype=torch.long)),
        "ragged lists": dict(input_ids=[[1, 2, 3], [4, 5]]),
        "id = vocab size": dict(input_ids=torch.tensor([[1, 97, 3]])),
        "negative id": dict(input_ids=torch.tensor([[1, -1, 3]])),
        "target = n outputs": dict(input_ids=ids, target=97),
        "target far out": dict(input_ids=ids, target=10_000),
        "negative target": dict(input_ids=ids, target=-1),
        "one of the targets negative": dict(input_ids=ids, target=[3, -2]),
        "three targets for two samples": dict(input_ids=ids, target=[1, 2, 3]),
        "one target list for two samples": dict(input_ids=ids, target=torch.tensor([[1, 2, 3]])),
        "contrast out of range": dict(input_ids=ids, target=1, contrast=97),
        "contrast count": dict(input_ids=ids, target=1, contrast=[1, 2, 3]),
        "unknown method": dict(input_ids=ids, method="shap"),
        "unknown rule": dict(input_ids=ids, rules={"ssm": False, "conv": True}),
        "position past the end": dict(input_ids=ids, position=6),
        "position before the start": dict(input_ids=ids, position=-7),
        "float position": dict(input_ids=ids, position=2.0),
        "mask of another shape": dict(input_ids=ids, attention_mask=torch.ones(2, 5, dtype=torch.long)),
        "mask of another batch": dict(input_ids=ids, attention_mask=torch.ones(3, 6, dtype=torch.long)),
        "mask with a 2": dict(input_ids=ids, attention_mask=ok_mask * 2),
        "mask with 0.5": dict(input_ids=ids, attention_mask=ok_mask * 0.5),
        "all-padding sample": dict(input_ids=ids, attention_mask=torch.stack([ok_mask[0], 0 * ok_mask[1]])),
        "explained position is padding": dict(input_ids=ids, attention_mask=torch.tensor([[1] * 6, [1] * 5 + [0]])),
        "mask for texts": dict(input_ids=["the cat", "a dog ran"], tokenizer=tokenizer, attention_mask=ok_mask),
    }


BAD = list(bad_inputs(None))


@pytest.mark.parametrize("case", BAD)
def test_bad_input_raises_value_error_and_leaves_the_model_untouched(case, tokenizer):
    model = tiny_model("mamba", 0).train()  # train mode too must survive
    snap = snapshot(model)
    kwargs = bad_inputs(tokenizer)[case]
    with pytest.raises(ValueError) as info:
        mlt.explain(model, **kwargs)
    assert len(str(info.value)) > 20  # a sentence, not a bare value
    assert_untouched(model, snap)
    assert all(p.grad is None for p in model.parameters())


def test_bad_input_messages_say_what_to_do(tokenizer):
    model = tiny_model("mamba", 0)
    ids = ids_for(9, 2, 6)
    cases = {
        "empty": dict(input_ids=[]),
        "vocabulary": dict(input_ids=torch.tensor([[1, 97, 3]])),
        "out of range": dict(input_ids=ids, target=97),
        "batch": dict(input_ids=ids, target=[1, 2, 3]),
        "mambalrp": dict(input_ids=ids, method="shap"),  # lists the available methods
        "attention_mask": dict(input_ids=ids, attention_mask=torch.ones(2, 5, dtype=torch.long)),
    }
    for needle, kwargs in cases.items():
        with pytest.raises(ValueError, match=needle):
            mlt.explain(model, **kwargs)


# --------------------------------------------------------------------------- unsupported models

def unsupported_models():
    from transformers import GPT2Config, GPT2LMHeadModel, Mamba2Config, Mamba2Model, MambaModel

    torch.manual_seed(0)
    return {
        "bare MambaModel (no head)": MambaModel(tiny_config("mamba")).eval(),
        "GPT-2": GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval(),
        "bare Mamba2Model (no head)": Mamba2Model(Mamba2Config(vocab_size=97, hidden_size=32, num_hidden_layers=1,
                                                               num_heads=4, head_dim=16, state_size=8,
                                                               n_groups=1, expand=2)).eval(),
        "a plain nn.Linear": torch.nn.Linear(4, 4),
    }


@pytest.mark.parametrize("name", ["bare MambaModel (no head)", "GPT-2", "bare Mamba2Model (no head)", "a plain nn.Linear"])
def test_unsupported_model_raises_type_error_naming_the_supported(name):
    model = unsupported_models()[name]
    snap = snapshot(model)
    for call in (lambda: mlt.explain(model, torch.tensor([[1, 2, 3]])), lambda: mlt.lrp_mode(model).__enter__()):
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert all(cls in message for cls in ("MambaForCausalLM", "FalconMambaForCausalLM", "Mamba2ForCausalLM")), message
    assert_untouched(model, snap)


# --------------------------------------------------------------------------- methods registry

def test_list_methods_and_aliases(arch):
    names = mlt.list_methods()
    assert {"mambalrp", "lrp_ln", "gradient_x_input", "gradient"} <= set(names)
    model = rich_model(arch, 10, zero_biases=True)
    ids = ids_for(10, 1, 8)
    for alias, name in [("gi", "gradient_x_input"), ("lrp", "mambalrp")]:
        a, b = mlt.explain(model, ids, method=alias), mlt.explain(model, ids, method=name)
        assert a.method == name
        torch.testing.assert_close(a.relevance, b.relevance)


def test_gradient_is_the_norm_of_the_true_gradient(arch):
    model = rich_model(arch, 11)
    ids = ids_for(11, 2, 12)
    target = torch.tensor([1, 2])
    expl = mlt.explain(model, ids, target=target, method="gradient")
    emb = model.get_input_embeddings()(ids).detach().requires_grad_()
    f = model(inputs_embeds=emb).logits[torch.arange(2), -1, target]
    (grad,) = torch.autograd.grad(f.sum(), emb)
    torch.testing.assert_close(expl.relevance, grad.norm(dim=-1), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- calling contexts

@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_explain_works_under_no_grad_and_inference_mode(arch, context):
    """Notebooks often run under torch.no_grad(); explain differentiates regardless."""
    model = rich_model(arch, 12, zero_biases=True)
    ids = ids_for(12, 2, 15)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    expected = mlt.explain(model, ids, attention_mask=mask, target=[1, 2], contrast=[3, 4])
    snap = snapshot(model)
    with context():
        ids_ctx, mask_ctx = ids.clone(), mask.clone()  # inference tensors under inference_mode
        expl = mlt.explain(model, ids_ctx, attention_mask=mask_ctx, target=[1, 2], contrast=[3, 4])
    torch.testing.assert_close(expl.relevance, expected.relevance)
    assert_untouched(model, snap)
    assert torch.is_grad_enabled()


def test_explain_a_frozen_model(arch):
    model = rich_model(arch, 13, zero_biases=True)
    ids = ids_for(13, 1, 12)
    expected = mlt.explain(model, ids)
    model.requires_grad_(False)
    expl = mlt.explain(model, ids)
    torch.testing.assert_close(expl.relevance, expected.relevance)
    assert not any(p.requires_grad for p in model.parameters())
