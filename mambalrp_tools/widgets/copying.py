"""Copying explorer (notebook 06): sequence length -> output × source alignment matrix per method."""

from __future__ import annotations

from functools import lru_cache

import ipywidgets as W

from ..evaluation import alignment_matrix
from .base import Explorer, new_figure, token_text


def copying_explorer(model, tokenizer=None, methods=("mambalrp", "gradient_x_input", "attention_rollout"),
                     length: int = 16, max_length: int = 64, seed: int = 0, figures_dir="figures",
                     stem="06_copying") -> Explorer:
    """A sequence-length slider: one copying example of that length, its whole copy explained token by
    token (teacher forcing); each panel is copied token × source token, rows scaled by their max |R|.
    A faithful method draws the diagonal."""
    from .. import tasks

    size = W.IntSlider(value=length, min=4, max=max_length, step=4, description="sequence length",
                       continuous_update=False, style={"description_width": "initial"})

    @lru_cache(maxsize=16)
    def compute(n: int):
        ex = tasks.load("copying", n=1, seed=seed, tokenizer=tokenizer, length=n)[0]
        return ex, {m: alignment_matrix(model, ex, method=m, tokenizer=tokenizer) for m in methods}

    def draw(box):
        box.step(0.1, f"{len(methods)} methods, {size.value} copied tokens")
        ex, mats = compute(size.value)
        fig = new_figure(2.7 * len(mats) + 0.6, 3.0)
        axes = fig.subplots(1, len(mats), squeeze=False)[0]
        src = ex.candidates.long()
        labels = token_text(tokenizer, ex.input_ids[src])
        for ax, (m, g) in zip(axes, mats.items()):
            mat = g.token_attr[:, src]
            mat = mat / mat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
            ax.imshow(mat.numpy(), cmap="bwr", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("source token")
            if len(labels) <= 24:
                ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
                ax.set_yticks(range(len(labels)), labels, fontsize=7)
        axes[0].set_ylabel("copied token")
        return {f"matrices_{size.value}": fig}, None

    box = Explorer([size], draw, primary=size, stem=stem, figures_dir=figures_dir, figure_names="matrices")
    box.length, box.compute = size, compute
    return box
