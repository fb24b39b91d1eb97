"""`make_classifier` and `load_model`: round trips through save_pretrained, explaining a classifier,
local directories with and without a tokenizer, and the offline error (no download attempt)."""

from __future__ import annotations

import socket

import pytest
import torch
from conftest import randomize_trivial_parameters, tiny_config, word_tokenizer, zero_relevance_biases

import mambalrp_tools as mlt
from mambalrp_tools.models import FalconMambaClassifier, MambaClassifier


def classifier(arch="mamba", seed=0, zero_biases=False):
    torch.manual_seed(seed)
    model = mlt.make_classifier(tiny_config(arch, num_labels=3, use_bias=True)).eval()
    randomize_trivial_parameters(model, seed)
    if zero_biases:
        zero_relevance_biases(model)
    return model


IDS = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch,cls", [("mamba", MambaClassifier), ("falcon_mamba", FalconMambaClassifier)])
def test_classifier_save_load_round_trip(tmp_path, arch, cls):
    model = classifier(arch, 1)
    with torch.no_grad():
        logits = model(IDS).logits
    assert logits.shape == (2, 12, 3)  # [batch, seq_len, n_classes], like the reference implementation
    model.save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded, tokenizer = mlt.load_model(tmp_path)
    assert type(loaded) is cls and not loaded.training
    assert tokenizer.convert_tokens_to_ids("cat") == word_tokenizer().convert_tokens_to_ids("cat")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, logits)
    loaded_state = loaded.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded_state[k], v), k


def test_classifier_loss_is_read_at_the_last_position():
    model = classifier("mamba", 2)
    labels = torch.tensor([0, 2])
    out = model(IDS, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits[:, -1], labels))


@pytest.mark.parametrize("arch", ["mamba", "falcon_mamba"])
def test_explain_a_classifier_conserves(arch):
    model = classifier(arch, 3, zero_biases=True)
    for label in range(3):
        expl = mlt.explain(model, IDS, target=label)
        assert expl.target.tolist() == [label, label]
        with torch.no_grad():
            torch.testing.assert_close(expl.logit, model(IDS).logits[:, -1, label], rtol=1e-5, atol=1e-5)
        assert expl.conservation_error.max() <= 1e-5, expl.conservation_error
    with torch.no_grad():
        predicted = model(IDS).logits[:, -1].argmax(-1)
    assert torch.equal(mlt.explain(model, IDS).target, predicted)
    with pytest.raises(ValueError, match="3 outputs"):
        mlt.explain(model, IDS, target=3)  # a vocabulary id is not a class
    gi = mlt.explain(model, IDS, target=1, method="gi")
    assert gi.conservation_error.min() > 1e-2


def test_explain_a_left_padded_classifier_batch(tokenizer):
    model = classifier("mamba", 4, zero_biases=True)
    texts = ["the cat sat on the mat", "a dog ran"]
    batch = mlt.explain(model, texts, tokenizer=tokenizer, target=2)
    for i, text in enumerate(texts):
        alone = mlt.explain(model, text, tokenizer=tokenizer, target=2)
        n = alone.relevance.shape[1]
        torch.testing.assert_close(batch.relevance[i, -n:], alone.relevance[0], rtol=1e-5, atol=1e-6)
    assert batch.conservation_error.max() <= 1e-5


def test_make_classifier_rejects_other_configs():
    from transformers import GPT2Config

    with pytest.raises(TypeError, match="mamba"):
        mlt.make_classifier(GPT2Config(num_labels=2))


# --------------------------------------------------------------------------- load_model

def test_load_model_local_dir_with_a_tokenizer(tmp_path, arch):
    from conftest import tiny_model

    model = tiny_model(arch, 5)
    model.save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    loaded, tokenizer = mlt.load_model(str(tmp_path))
    assert type(loaded) is type(model) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    assert tokenizer("the cat sat", add_special_tokens=False)["input_ids"] == [2, 3, 4]
    assert tokenizer.pad_token == "[PAD]"
    expl = mlt.explain(loaded, "the cat sat", tokenizer=tokenizer)
    assert expl.tokens == [["the", "cat", "sat"]]
    half, _ = mlt.load_model(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


def test_load_model_local_dir_without_a_tokenizer_gives_none(tmp_path):
    model = classifier("mamba", 6)
    model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no tokenizer"):
        loaded, tokenizer = mlt.load_model(tmp_path)
    assert tokenizer is None  # not transformers' empty default tokenizer for the model type
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_load_model_keeps_trust_remote_code_off(tmp_path, monkeypatch):
    from conftest import tiny_model

    tiny_model("mamba").save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    import transformers

    seen = []
    original = transformers.AutoConfig.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(spy))
    mlt.load_model(tmp_path)
    assert seen and all(flag is False for flag in seen), seen  # transformers calls it again inside
    seen.clear()
    mlt.load_model(tmp_path, trust_remote_code=True)  # only when asked for
    assert seen[0] is True


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly on any connection attempt, and put the hub client in offline mode."""
    import huggingface_hub.constants

    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"test forbids network access (tried {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return attempts


def test_load_model_offline_unknown_hub_id_is_one_clear_oserror(no_network):
    name = "nobody-here/mamba-does-not-exist-xyz"
    with pytest.raises(OSError) as info:
        mlt.load_model(name)
    message = str(info.value)
    assert name in message and "offline" in message and "toy/" in message, message
    assert "\n" not in message  # one sentence, not a stack of them
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback
    assert no_network == []  # no download attempt


def test_load_model_missing_local_dir_and_unknown_toy(tmp_path, no_network):
    with pytest.raises(OSError, match="toy/"):
        mlt.load_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="toy/definitely-not-a-model"):
        mlt.load_model("toy/definitely-not-a-model")
    assert no_network == []
