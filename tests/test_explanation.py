"""`Explanation`: persistence (safetensors + JSON, no pickle), HTML, words, Captum records, plot."""

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
    for name in ("relevance", "logit", "target", "input_ids", "attention_mask", "contrast"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert (a.method, a.position, a.tokens, a.params) == (b.method, b.position, b.tokens, b.params)


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


def test_to_words_merges_bpe_pieces():
    tokens = [["The", "Ġun", "believ", "able", "Ġcat", "Ġsat", "."]]
    r = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]
    words = manual(tokens, r).to_words()
    assert words == [[("The", 1.0), ("unbelievable", 9.0), ("cat", 5.0), ("sat.", 13.0)]]


def test_to_words_drops_padding_and_handles_other_markers():
    bpe = manual([["<pad>", "<pad>", "Ġhel", "lo", "Ġworld"]], [[9.0, 9.0, 1.0, 2.0, 4.0]], mask=[[0, 0, 1, 1, 1]])
    assert bpe.to_words() == [[("hello", 3.0), ("world", 4.0)]]
    sentencepiece = manual([["▁new", "▁york", "er", "s"]], [[1.0, 2.0, 3.0, 4.0]])
    assert sentencepiece.to_words() == [[("new", 1.0), ("yorkers", 9.0)]]
    wordpiece = manual([["play", "##ing", "ball"]], [[1.0, 2.0, 4.0]])
    assert wordpiece.to_words() == [[("playing", 3.0), ("ball", 4.0)]]
    word_level = manual([["the", "cat", "sat"]], [[1.0, 2.0, 4.0]])
    assert word_level.to_words() == [[("the", 1.0), ("cat", 2.0), ("sat", 4.0)]]


def test_to_words_conserves_the_relevance(text_expl):
    for i, words in enumerate(text_expl.to_words()):
        assert sum(r for _, r in words) == pytest.approx(float(text_expl.relevance[i].sum()), rel=1e-6, abs=1e-7)
        assert [w for w, _ in words] == [t for t, m in zip(text_expl.tokens[i], text_expl.attention_mask[i]) if m]


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


def test_plot_draws_one_bar_per_real_token(text_expl):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = text_expl.plot(sample=1)
    assert len(ax.patches) == int(text_expl.attention_mask[1].sum())
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [t for t, m in zip(text_expl.tokens[1], text_expl.attention_mask[1]) if m]
    plt.close("all")


def test_contrast_equals_the_difference_of_the_single_targets(setup, text_expl):
    model, tokenizer = setup
    doctor = mlt.explain(model, TEXTS, tokenizer=tokenizer, target="doctor", rules={"ssm": False})
    nurse = mlt.explain(model, TEXTS, tokenizer=tokenizer, target="nurse", rules={"ssm": False})
    assert text_expl.target.tolist() == [tokenizer.convert_tokens_to_ids("doctor")] * 3
    assert text_expl.contrast.tolist() == [tokenizer.convert_tokens_to_ids("nurse")] * 3
    torch.testing.assert_close(text_expl.relevance, doctor.relevance - nurse.relevance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text_expl.logit, doctor.logit - nurse.logit, rtol=1e-5, atol=1e-6)
