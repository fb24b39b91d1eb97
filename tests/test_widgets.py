"""Every explorer without a browser: build it, move each control, the figure area changes; export
writes <stem>__<figure>.{pdf,png}; the token heatmap wraps and escapes; the needle comparison shows one
model or all side by side."""

from __future__ import annotations

import re

import pytest
import torch

import mambalrp_tools as mlt
from mambalrp_tools import evaluation as ev, tasks, widgets
from mambalrp_tools.viz.html import token_heatmap, window
from mambalrp_tools.viz.paths import resolve_figures_dir

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def needle():
    return mlt.load_model("toy/needle")


def pngs(box):
    return [o["data"].get("image/png") for o in box.figure.outputs]


def moved(box, control, value):
    """Set `control` to `value`; returns True when the figure area changed and no error was shown."""
    before = (pngs(box), [o["data"].get("text/html") for o in box.figure.outputs])
    control.value = value
    after = (pngs(box), [o["data"].get("text/html") for o in box.figure.outputs])
    assert "error" not in box.status.value, box.status.value
    return after != before


def check_parts(box):
    assert "mlt-explorer" in box._dom_classes
    assert "mlt-primary" in box.primary._dom_classes
    assert "mlt-figure" in box.figure._dom_classes and "mlt-export" in box.export_button._dom_classes
    assert "mlt-status" in box.status._dom_classes
    assert box.figure.outputs and pngs(box)[0], "the first draw put a PNG into the figure area"
    sliders = [c for c in box.controls if hasattr(c, "continuous_update")]
    assert all(not c.continuous_update for c in sliders)


def check_export(box, tmp_path):
    box.figures_dir = tmp_path
    paths = box.export()
    assert {p.suffix for p in paths} == {".pdf", ".png"} and all(p.is_file() and p.is_absolute() for p in paths)
    assert all(p.name.startswith(f"{box.stem}__") for p in paths)
    assert str(paths[0]) in box.status.value


def test_needle_explorer(needle, tmp_path):
    model, tok = needle
    box = widgets.needle_explorer(model, tok, context_length=128, max_context_length=256, figures_dir=tmp_path)
    check_parts(box)
    assert {"mlt-context", "mlt-depth", "mlt-method"} <= {c for w in (box.length, box.depth, box.method)
                                                          for c in w._dom_classes}
    assert moved(box, box.depth, 0.9)
    assert moved(box, box.length, 192)
    assert moved(box, box.method, "gradient_x_input")
    assert box.compute.cache_info().currsize == 4
    box.method.value = "mambalrp"  # (192, 0.9, mambalrp) was drawn before
    assert box.compute.cache_info().hits >= 1, "returning to a setting is served from the cache"
    html = box.figure.outputs[-1]["data"]["text/html"]
    assert "tokens" in html and "of 192" in html, "a long input says which window of tokens is shown"
    check_export(box, tmp_path)


def test_needle_explorer_shows_errors_and_stays_usable(needle, tmp_path):
    model, tok = needle

    box = widgets.needle_explorer(model, tok, context_length=128, max_context_length=256, figures_dir=tmp_path)
    good = box.compute
    box.draw_fn_orig, box.draw_fn = box.draw_fn, lambda b: (_ for _ in ()).throw(RuntimeError("boom <b>"))
    box.depth.value = 0.2
    assert "error" in box.status.value and "boom &lt;b&gt;" in box.status.value
    assert not box.length.disabled, "controls are enabled again after a failed draw"
    box.draw_fn = box.draw_fn_orig
    assert moved(box, box.depth, 0.4) and good is box.compute


@pytest.fixture(scope="module")
def needle_pair(needle):
    return {"Mamba-1 <toy>": needle, "Mamba-2 & co": mlt.load_model("toy/needle-mamba2")}


def panels(box):
    markup = box.figure.outputs[-1]["data"]["text/html"]
    return markup, markup.count("class='mlt-panel'"), [ax.get_title() for ax in next(iter(box.figures.values())).axes]


def test_needle_comparison_single_and_side_by_side(needle_pair, tmp_path):
    box = widgets.needle_comparison(needle_pair, methods=("mambalrp", "gradient_x_input"), context_length=64,
                                    max_context_length=256, figures_dir=tmp_path)
    check_parts(box)
    assert box.primary is box.model and "mlt-model" in box.model._dom_classes
    assert list(box.model.options) == ["Mamba-1 <toy>", "Mamba-2 & co", "side by side"]
    assert box.model.value == "side by side"
    markup, n, titles = panels(box)
    assert n == 2 and len(titles) == 2, "side by side: one panel per model"
    assert titles[0].startswith("Mamba-1 <toy>\nanswer") and titles[1].startswith("Mamba-2 & co\nanswer")
    assert all("needle share" in t and ("correct" in t or "wrong" in t) for t in titles)
    assert "Mamba-1 &lt;toy&gt;" in markup and "Mamba-2 &amp; co" in markup and "<toy>" not in markup
    assert moved(box, box.model, "Mamba-2 & co")
    markup, n, titles = panels(box)
    assert n == 1 and titles[0].startswith("Mamba-2 & co") and "Mamba-1" not in markup
    assert moved(box, box.depth, 0.9) and moved(box, box.length, 128)
    assert moved(box, box.model, "side by side")
    assert panels(box)[1] == 2
    a, b = (box.compute(label, 128, 0.9, "mambalrp")[0] for label in needle_pair)
    assert torch.equal(a.input_ids, b.input_ids), "the pair shares a tokenizer: both panels explain one example"
    hits = box.compute.cache_info().hits
    box.model.value = "Mamba-1 <toy>"  # drawn in the side-by-side view just before
    assert box.compute.cache_info().hits == hits + 1
    assert moved(box, box.method, "gradient_x_input")
    check_export(box, tmp_path)


def test_needle_panels_escape_every_token(needle_pair, tmp_path, monkeypatch):
    from mambalrp_tools.widgets import needle as needle_module

    monkeypatch.setattr(needle_module, "token_text", lambda tok, ids: [f"<t{int(i)}>&" for i in ids])
    box = widgets.needle_comparison(needle_pair, methods=("mambalrp",), context_length=64, max_context_length=128,
                                    figures_dir=tmp_path)
    markup = panels(box)[0]
    shown = re.findall(r"&lt;t\d+&gt;&amp;</span>", markup)
    assert len(shown) == markup.count("class='mlt-token'") >= 2 * 60 and "<t" not in markup


def test_needle_comparison_needs_two_models(needle):
    with pytest.raises(ValueError, match="at least two"):
        widgets.needle_comparison({"one": needle})
    with pytest.raises(ValueError, match="another label"):
        widgets.needle_comparison({"a": needle, "side by side": needle})


def test_explore(needle, tmp_path):
    model, tok = needle
    text = tasks.load("needle", n=1, seed=1, tokenizer=tok, context_length=48)[0].text
    box = widgets.explore(model, tok, text=text, figures_dir=tmp_path)
    check_parts(box)
    assert "mlt-text" in box.text._dom_classes and not box.text.continuous_update
    assert len(box.target.options) == 5
    html = box.figure.outputs[-1]["data"]["text/html"]
    assert "ΣR" in html and "conservation error" in html and html.count("class='mlt-token'") == len(tok(text)["input_ids"])
    assert moved(box, box.rules["ssm"], False)
    assert moved(box, box.target, box.target.options[1][1])
    assert moved(box, box.method, "gradient_x_input")
    assert moved(box, box.text, "the secret code is 1 2 3 4 . what is the code ? 1")
    assert box.target.options[0][1] == box.target.value, "a new text selects its top prediction"
    check_export(box, tmp_path)


def test_conservation_explorer(needle, tmp_path):
    model, tok = needle
    examples = tasks.load("needle", n=3, seed=0, tokenizer=tok, context_length=64)
    res = ev.conservation(model, examples, ["mambalrp", "gradient_x_input"], progress=False)
    box = widgets.conservation_explorer(res, figures_dir=tmp_path)
    check_parts(box)
    assert moved(box, box.method, "gradient_x_input")
    check_export(box, tmp_path)


def test_faithfulness_explorer(tmp_path):
    model, tok = mlt.load_model("toy/sentiment")
    examples = tasks.load("sentiment", n=2, seed=0, tokenizer=tok)
    box = widgets.faithfulness_explorer(model, examples, ["mambalrp", "random"], tokenizer=tok, steps=4,
                                        figures_dir=tmp_path)
    check_parts(box)
    assert "ΔA" in box.figure.outputs[-1]["data"]["text/html"]
    assert moved(box, box.primary, "zero")
    assert moved(box, box.primary, "pad")
    check_export(box, tmp_path)


def test_bias_explorer(tmp_path):
    model, tok = mlt.load_model("toy/bios")
    examples = tasks.load("bios", n=20, seed=0, tokenizer=tok)
    box = widgets.bias_explorer(model, tok, examples, figures_dir=tmp_path)
    check_parts(box)
    assert len(box.occupation.options) >= 2
    assert box.figure.outputs[-1]["data"]["text/html"].count("mlt-heatmap") == 2, "original and swapped twin"
    assert moved(box, box.occupation, box.occupation.options[1])
    check_export(box, tmp_path)


def test_long_range_explorer(needle, tmp_path):
    model, tok = needle
    box = widgets.long_range_explorer(model, tok, methods=("mambalrp", "gradient_x_input"), n=1, context_length=64,
                                      max_context_length=256, figures_dir=tmp_path)
    check_parts(box)
    assert moved(box, box.k, 3)
    assert box.compute.cache_info().hits >= 1, "moving k reuses the relevance of that length"
    assert moved(box, box.length, 128)
    check_export(box, tmp_path)


def test_copying_explorer(tmp_path):
    model, tok = mlt.load_model("toy/copying")
    box = widgets.copying_explorer(model, tok, methods=("mambalrp", "random"), length=8, max_length=16,
                                   figures_dir=tmp_path)
    check_parts(box)
    assert moved(box, box.length, 12)
    check_export(box, tmp_path)


def test_figure_export_saves_now_and_on_click(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure()
    exp = widgets.export_figures({"a": fig}, "99_test", tmp_path)
    assert sorted(p.name for p in exp.paths) == ["99_test__a.pdf", "99_test__a.png"]
    (tmp_path / "99_test__a.png").unlink()
    exp.button.click()
    assert (tmp_path / "99_test__a.png").is_file() and str(tmp_path) in exp.status.value
    plt.close(fig)


def test_token_heatmap_wraps_and_escapes():
    page = token_heatmap(["<b>", "a&b", "'q'", "x"], [1.0, -0.5, 0.0, 0.25], label="m <i>")
    assert "&lt;b&gt;" in page and "a&amp;b" in page and "<b>m &lt;i&gt;</b>" in page
    assert "</span> <span" in page, "spans are separated by whitespace, so the line can break"
    assert "white-space:normal" in page
    assert page.count("class='mlt-token'") == 4


def test_explanation_to_html_uses_the_wrapping_heatmap(needle):
    model, tok = needle
    e = mlt.explain(model, "the secret code is 4 7 1 9 . what is the code ? 4", tokenizer=tok)
    page = e.to_html()
    assert "</span> <span" in page and page.count("class='mlt-token'") == e.relevance.shape[1]


def test_window_keeps_the_focus():
    assert window(50, [10], 100) == (0, 50)
    a, b = window(1000, list(range(400, 410)), 60)
    assert b - a == 60 and a <= 400 and b >= 410
    assert window(1000, [999], 60) == (940, 1000)


def test_figures_dir_resolves_against_the_project_root(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "mambalrp_tools"\n')
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert resolve_figures_dir("figures") == (tmp_path / "figures").resolve()
    assert resolve_figures_dir(tmp_path / "x") == (tmp_path / "x").resolve()
    assert resolve_figures_dir("figures", start=torch.__path__[0]).is_absolute()
