"""`Explanation`: persistence (safetensors + JSON, no pickle), HTML, words, Captum records, plot, metadata,
the output axis of generations."""

from __future__ import annotations

import html
import json
import struct

import pytest
import torch
from conftest import rich_model

import mambalrp_tools as mlt
from mambalrp_tools.explanation import Explanation


TEXTS = ["she is a <b> & nurse", "the cat sat on the mat", "he ran"]


@pytest.fixture(scope="module")
def setup():
    from conftest import word_tokenizer

    tokenizer = word_tokenizer()
    model = rich_model("mamba", 0, zero_biases=True)
    return model, tokenizer


@pytest.fixture(scope="module")
def text_expl(setup):
    """Three left-padded texts explained with a contrast, so every optional field is set."""
    model, tokenizer = setup
    return mlt.explain(model, TEXTS, tokenizer=tokenizer, target="doctor", contrast="nurse", rules={"ssm": False})


def assert_same(a: Explanation, b: Explanation):
    for name in Explanation._TENSORS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert (a.method, a.position, a.tokens, a.params, a.completeness, a.info) == (
        b.method, b.position, b.tokens, b.params, b.completeness, b.info)


# --------------------------------------------------------------------------- save / load

def test_save_load_round_trip(tmp_path, text_expl):
    path = text_expl.save(tmp_path / "sub" / "expl")
    assert path.suffix == ".safetensors" and path.is_file()
    loaded = Explanation.load(path)
    assert_same(loaded, text_expl)
    assert loaded.params == {"rules": {"ssm": False}}
    torch.testing.assert_close(loaded.conservation_error, text_expl.conservation_error)
    assert Explanation.load(tmp_path / "sub" / "expl").tokens == text_expl.tokens  # suffix optional


def test_saved_file_is_safetensors_with_a_json_header_and_no_pickle(tmp_path, text_expl):
    raw = text_expl.save(tmp_path / "expl").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert set(header) - {"__metadata__"} == {"relevance", "logit", "target", "input_ids",
                                             "attention_mask", "contrast"}
    meta = json.loads(header["__metadata__"]["explanation"])
    assert meta["method"] == "mambalrp" and meta["tokens"] == text_expl.tokens
    assert b"\x80\x04" not in raw[:8 + header_len] and b"torch._utils" not in raw  # no pickle stream


def test_save_load_minimal_explanation(tmp_path):
    model = rich_model("falcon_mamba", 1)
    expl = mlt.explain(model, torch.tensor([[3, 1, 4, 1, 5]]), method="gi")
    assert expl.tokens is None and expl.attention_mask is None and expl.contrast is None
    assert_same(Explanation.load(expl.save(tmp_path / "e.safetensors")), expl)


# --------------------------------------------------------------------------- views

def test_to_html_contains_every_token_escaped(text_expl):
    page = text_expl.to_html()
    assert page == text_expl._repr_html_()
    for i, row in enumerate(text_expl.tokens):
        real = [t for t, m in zip(row, text_expl.attention_mask[i].tolist()) if m]
        for tok in real:
            assert f">{html.escape(tok)}</span>" in page, tok
    assert "<b>" not in page.replace("<b>mambalrp</b>", "")  # the "<b>" token is escaped
    assert "&amp;" in page and "&lt;b&gt;" in page
    single = text_expl.to_html(sample=2)
    assert single.count("<span") == 2  # "he ran": padding is not shown


def test_to_html_colours_follow_the_sign():
    expl = Explanation(relevance=torch.tensor([[2.0, -1.0, 0.0]]), logit=torch.tensor([1.0]),
                       target=torch.tensor([0]), method="m", input_ids=torch.tensor([[1, 2, 3]]),
                       tokens=[["pos", "neg", "zero"]])
    page = expl.to_html()
    assert "rgba(220,40,40,1.000)" in page and ">pos<" in page  # strongest positive: full red
    assert "rgba(40,90,220,0.500)" in page  # negative half as strong: half-opaque blue
    assert "rgba(220,40,40,0.000)" in page  # zero: transparent


def manual(tokens, relevance, mask=None):
    n = len(tokens[0])
    return Explanation(relevance=torch.tensor(relevance), logit=torch.ones(len(tokens)),
                       target=torch.zeros(len(tokens), dtype=torch.long), method="manual",
                       input_ids=torch.zeros(len(tokens), n, dtype=torch.long),
                       attention_mask=None if mask is None else torch.tensor(mask), tokens=tokens)


def pairs(words: Explanation, i: int = 0) -> list[tuple[str, float]]:
    """(word, relevance) of the real positions of sample i of a word-level Explanation."""
    return [(words.tokens[i][k], float(words.relevance[i, k])) for k in words._real(i)]


def test_to_words_merges_bpe_pieces():
    tokens = [["The", "Ġun", "believ", "able", "Ġcat", "Ġsat", "."]]
    r = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]
    words = manual(tokens, r).to_words()
    assert isinstance(words, Explanation) and words.info["unit"] == "word"
    assert pairs(words) == [("The", 1.0), ("unbelievable", 9.0), ("cat", 5.0), ("sat.", 13.0)]
    assert words.position == -1  # the last token's word, counted from the end
    inside = manual(tokens, r)
    inside.position = 2  # "believ": inside the second word
    assert inside.to_words().position == 1


def test_to_words_drops_padding_and_handles_other_markers():
    bpe = manual([["<pad>", "<pad>", "Ġhel", "lo", "Ġworld"]], [[9.0, 9.0, 1.0, 2.0, 4.0]], mask=[[0, 0, 1, 1, 1]])
    assert pairs(bpe.to_words()) == [("hello", 3.0), ("world", 4.0)]
    sentencepiece = manual([["▁new", "▁york", "er", "s"]], [[1.0, 2.0, 3.0, 4.0]])
    assert pairs(sentencepiece.to_words()) == [("new", 1.0), ("yorkers", 9.0)]
    wordpiece = manual([["play", "##ing", "ball"]], [[1.0, 2.0, 4.0]])
    assert pairs(wordpiece.to_words()) == [("playing", 3.0), ("ball", 4.0)]
    word_level = manual([["the", "cat", "sat"]], [[1.0, 2.0, 4.0]])
    assert pairs(word_level.to_words()) == [("the", 1.0), ("cat", 2.0), ("sat", 4.0)]


def test_to_words_left_pads_samples_of_different_word_counts():
    expl = manual([["Ġa", "b", "Ġc"], ["Ġx", "Ġy", "Ġz"]], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    expl.input_ids = torch.tensor([[7, 8, 9], [4, 5, 6]])
    words = expl.to_words()
    assert words.tokens == [["", "ab", "c"], ["x", "y", "z"]]
    assert words.attention_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert words.relevance.tolist() == [[0.0, 3.0, 3.0], [4.0, 5.0, 6.0]]
    assert words.input_ids.tolist() == [[0, 7, 9], [4, 5, 6]]  # each word's first token


def test_to_words_conserves_the_relevance(text_expl):
    words = text_expl.to_words()
    torch.testing.assert_close(words.conservation_error, text_expl.conservation_error)
    for i in range(len(text_expl)):
        got = pairs(words, i)
        assert sum(r for _, r in got) == pytest.approx(float(text_expl.relevance[i].sum()), rel=1e-6, abs=1e-7)
        assert [w for w, _ in got] == [t for t, m in zip(text_expl.tokens[i], text_expl.attention_mask[i]) if m]


def test_words_explanation_saves_and_plots(tmp_path, text_expl):
    import matplotlib.pyplot as plt

    words = text_expl.to_words()
    assert_same(Explanation.load(words.save(tmp_path / "words")), words)
    ax = words.plot(sample=2)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["he", "ran"]
    plt.close("all")


def test_to_captum_gives_visualization_records(text_expl):
    from captum.attr import visualization

    VisualizationDataRecord, visualize_text = visualization.VisualizationDataRecord, visualization.visualize_text

    records = text_expl.to_captum()
    assert len(records) == 3 and all(isinstance(r, VisualizationDataRecord) for r in records)
    for i, rec in enumerate(records):
        mask = text_expl.attention_mask[i].bool()
        assert rec.raw_input_ids == [t for t, m in zip(text_expl.tokens[i], mask.tolist()) if m]
        assert len(rec.word_attributions) == int(mask.sum())
        assert float(rec.word_attributions.abs().max()) == pytest.approx(1.0)
        assert rec.attr_score == pytest.approx(float(text_expl.relevance[i].sum()), rel=1e-5)
        assert rec.pred_class == int(text_expl.target[i])
    assert "the" in visualize_text(records).data  # Captum can render them


def test_plot_draws_one_bar_per_real_token_with_its_relevance_and_sign(text_expl):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    ax = text_expl.plot(sample=1)
    real = text_expl._real(1)
    assert len(ax.patches) == len(real)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [t for t, m in zip(text_expl.tokens[1], text_expl.attention_mask[1]) if m]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx(text_expl.relevance[1, real].tolist(), rel=1e-6, abs=1e-9)
    for bar, h in zip(ax.patches, heights):  # red for positive, blue for negative relevance
        assert bar.get_facecolor() == to_rgba("#d62828" if h >= 0 else "#2a5bd7")
    assert any(h < 0 for h in heights) and any(h > 0 for h in heights)  # both colours were checked
    assert ax.get_title() == f"mambalrp: target {int(text_expl.target[1])}"
    plt.close("all")


def test_plot_keeps_the_last_max_tokens(text_expl):
    import matplotlib.pyplot as plt

    ax = text_expl.plot(sample=1, max_tokens=3)
    assert [t.get_text() for t in ax.get_xticklabels()] == text_expl.tokens[1][-3:]
    assert [b.get_height() for b in ax.patches] == pytest.approx(text_expl.relevance[1, -3:].tolist(), abs=1e-9)
    plt.close("all")


def test_contrast_equals_the_difference_of_the_single_targets(setup, text_expl):
    model, tokenizer = setup
    doctor = mlt.explain(model, TEXTS, tokenizer=tokenizer, target="doctor", rules={"ssm": False})
    nurse = mlt.explain(model, TEXTS, tokenizer=tokenizer, target="nurse", rules={"ssm": False})
    assert text_expl.target.tolist() == [tokenizer.convert_tokens_to_ids("doctor")] * 3
    assert text_expl.contrast.tolist() == [tokenizer.convert_tokens_to_ids("nurse")] * 3
    torch.testing.assert_close(text_expl.relevance, doctor.relevance - nurse.relevance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text_expl.logit, doctor.logit - nurse.logit, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- metadata, per-method meaning


@pytest.mark.timeout(120)
def test_metadata_records_resolved_rules_arguments_model_backend_and_version(setup, tmp_path):
    model, tokenizer = setup
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    as_rules = mlt.explain(model, ids, rules=mlt.Rules(ssm=False))
    as_dict = mlt.explain(model, ids, rules={"ssm": False})
    expected = {"silu": True, "ssm": False, "gate": True, "norm": True}
    assert as_rules.info["rules"] == as_dict.info["rules"] == expected
    assert as_rules.params == {"rules": expected} and as_dict.params == {"rules": {"ssm": False}}
    torch.testing.assert_close(as_rules.relevance, as_dict.relevance)
    assert as_rules.info["version"] == mlt.__version__ and as_rules.info["backend"] == "torch"
    assert as_rules.info["model_class"] == type(model).__name__ and as_rules.info["model"]
    assert Explanation.load(as_rules.save(tmp_path / "r")).info == as_rules.info
    ig = mlt.explain(model, ids, method="ig", n_steps=8)
    assert ig.params == {"n_steps": 8} and "rules" not in ig.info  # IG takes no rules


@pytest.mark.timeout(120)
def test_conservation_error_means_what_each_method_promises():
    model = rich_model("mamba", 0, zero_biases=True)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2]])
    info = {name: mlt.method_info(name) for name in mlt.list_methods()}
    assert info["mambalrp"].conserves and info["mambalrp"].takes_rules and info["mambalrp"].completeness == "f"
    assert not info["gradient_x_input"].conserves and info["gradient_x_input"].completeness == "f"
    assert info["integrated_gradients"].completeness == "f - f(baseline)"
    assert mlt.method_info("ig") == info["integrated_gradients"]  # aliases resolve
    for name in ("gradient", "attention_rollout", "mamba_attr"):
        assert not info[name].signed and info[name].completeness is None
    # IG: the error is measured against f(x) - f(baseline) (a token baseline, so f(baseline) != 0),
    # not against f, and it vanishes with enough steps
    for steps, bound in ((8, 1e-2), (256, 1e-5)):
        ig = mlt.explain(model, ids, method="ig", n_steps=steps, baseline=7)
        assert ig.completeness == "f - f(baseline)" and ig.baseline_logit.shape == (1,)
        target = ig.logit.double() - ig.baseline_logit.double()
        manual_error = (ig.relevance.double().sum(-1) - target).abs() / target.abs()
        torch.testing.assert_close(ig.conservation_error, manual_error)
        assert float(ig.conservation_error[0]) < bound
        assert float((ig.relevance.sum() - ig.logit[0]).abs() / ig.logit[0].abs()) > 0.05  # f alone is not it
    with torch.no_grad():  # f at the baseline: every token replaced by token 7
        ref = model(torch.full_like(ids, 7)).logits[0, -1, int(ig.target[0])]
    assert float(ig.baseline_logit[0]) == pytest.approx(float(ref), rel=1e-4, abs=1e-5)
    for name in ("gradient", "attention_rollout", "random"):
        assert mlt.explain(model, ids, method=name).conservation_error is None, name
    assert mlt.explain(model, ids).conservation_error.max() <= 1e-5


# --------------------------------------------------------------------------- output axis


@pytest.fixture(scope="module")
def gen_expl(setup):
    model, tokenizer = setup
    prompt = tokenizer("the cat sat on the", add_special_tokens=False)["input_ids"]
    return mlt.explain_generation(model, prompt, max_new_tokens=3, tokenizer=tokenizer)


def test_generation_is_an_explanation_with_an_output_axis(gen_expl):
    assert isinstance(gen_expl, Explanation) and gen_expl.relevance.shape == (1, 3, 8)
    assert gen_expl.output_positions.tolist() == [4, 5, 6] and gen_expl.logit.shape == (1, 3)
    assert gen_expl.conservation_error.shape == (1, 3) and gen_expl.conservation_error.max() <= 1e-5
    assert gen_expl.info["rules"] == {"silu": True, "ssm": True, "gate": True, "norm": True}
    one = gen_expl.output(1)
    assert one.relevance.shape == (1, 6) and one.tokens[0] == gen_expl.tokens[0][:6]
    assert int(one.target[0]) == int(gen_expl.input_ids[0, 6])


def test_generation_saves_loads_and_renders(tmp_path, gen_expl):
    import matplotlib.pyplot as plt

    loaded = Explanation.load(gen_expl.save(tmp_path / "gen"))
    assert_same(loaded, gen_expl)
    page = gen_expl.to_html()
    assert page.count("<div>target") == 3  # one heatmap row per output
    assert page.count("<span") == 5 + 6 + 7  # output j is shown over its prefix
    ax = loaded.plot()
    image = ax.images[0].get_array()
    assert image.shape == (3, 5)  # output token x prompt token
    row = gen_expl.relevance[0, :, :5]
    expected = row / row.abs().amax(dim=1, keepdim=True)
    assert torch.allclose(torch.as_tensor(image.data, dtype=torch.float32), expected, atol=1e-6)
    assert loaded.plot(prompt_only=False).images[0].get_array().shape == (3, 8)
    assert len(gen_expl.to_captum()) == 3
    plt.close("all")


def test_generation_takes_text_and_refuses_a_batch(setup, gen_expl):
    model, tokenizer = setup
    again = mlt.explain_generation(model, "the cat sat on the", max_new_tokens=3, tokenizer=tokenizer)
    torch.testing.assert_close(again.relevance, gen_expl.relevance)
    with pytest.raises(ValueError, match="one sequence"):
        mlt.explain_generation(model, torch.ones(2, 4, dtype=torch.long), max_new_tokens=1)
    with pytest.raises(ValueError, match="tokenizer"):
        mlt.explain_generation(model, "the cat", max_new_tokens=1)


def test_generation_over_words_keeps_the_output_axis(gen_expl):
    words = gen_expl.to_words()
    assert words.relevance.shape == (1, 3, 8)  # word-level tokenizer: one word per token
    torch.testing.assert_close(words.relevance, gen_expl.relevance)
    assert words.output_positions.tolist() == [4, 5, 6]
