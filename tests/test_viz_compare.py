"""Side-by-side views: tokens x methods heatmap, HTML table, figure export."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from mambalrp_tools import Explanation
from mambalrp_tools.viz import methods_html, plot_methods, save_figure


def _expl(method, relevance, ids, mask=None, tokens=None):
    relevance = torch.as_tensor(relevance, dtype=torch.float32)
    return Explanation(relevance=relevance, logit=torch.ones(len(relevance)), target=torch.zeros(len(relevance), dtype=torch.long),
                       method=method, input_ids=ids, attention_mask=mask, tokens=tokens)


@pytest.fixture
def expls():
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    tokens = [["<pad>", "<pad>", "the", "cat", "<sat>"], ["a", "b", "c", "d", "e"]]
    return [
        _expl("mambalrp", [[0, 0, 2.0, -4.0, 1.0], [1, 2, 3, 4, 5]], ids, mask, tokens),
        _expl("gradient", [[0, 0, 0.5, 0.25, 0.0], [5, 4, 3, 2, 1]], ids, mask),
        _expl("random", [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], ids, mask),
    ]


def test_plot_methods_scales_each_method_by_its_max(expls):
    fig = plot_methods(expls, sample=0)
    ax = fig.axes[0]
    data = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(data, [[0.5, -1.0, 0.25], [1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])  # padding dropped
    assert ax.images[0].get_clim() == (-1.0, 1.0)  # diverging scale centred at 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["the", "cat", "<sat>"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["mambalrp", "gradient", "random"]
    fig_t = plot_methods({"A": expls[0], "B": expls[1]}, sample=1, tokens_on="y", colorbar=False)
    np.testing.assert_allclose(np.asarray(fig_t.axes[0].images[0].get_array()),
                               np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]]).T / 5)
    assert len(fig_t.axes) == 1


def test_plot_methods_rejects_different_inputs(expls):
    other = _expl("ig", [[1, 2, 3, 4, 5]], torch.tensor([[1, 2, 3, 4, 5]]))
    with pytest.raises(ValueError, match="different input"):
        plot_methods(expls + [other])
    with pytest.raises(ValueError, match="out of range"):
        plot_methods(expls, sample=4)


def test_methods_html_side_by_side(expls):
    out = methods_html(expls, sample=0)
    assert out._repr_html_() == str(out)
    for name in ("mambalrp", "gradient", "random"):
        assert f">{name}</th>" in out
    assert out.count("<td") == 9  # 3 methods x 3 real tokens, padding dropped
    assert "&lt;sat&gt;" in out  # escaped
    assert "title='-4'" in out and "rgba(40,90,220,1.000)" in out  # raw value on hover, scaled colour


def test_save_figure_writes_pdf_and_png(tmp_path, expls):
    fig = plot_methods(expls)
    paths = save_figure(fig, "compare", directory=tmp_path / "figs")
    assert [p.name for p in paths] == ["compare.pdf", "compare.png"]
    assert paths[0].read_bytes()[:4] == b"%PDF" and paths[1].read_bytes()[:4] == b"\x89PNG"
    assert save_figure(fig, "compare.png", tmp_path)[1] == tmp_path / "compare.png"
    # no creation date: a re-run notebook leaves a committed figure unchanged when nothing changed
    assert b"/CreationDate" not in paths[0].read_bytes()
