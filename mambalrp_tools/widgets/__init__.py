"""Interactive explorers for JupyterLab (ipywidgets): move a slider, see the relevance move."""

from __future__ import annotations

from ..api import explain
from ..methods import list_methods


def needle_explorer(model, tokenizer=None, methods=("mambalrp", "gradient_x_input", "integrated_gradients"),
                    context_length=256, depth=0.5, max_context_length=4096, seed=0, figure_dir="figures"):
    """Sliders for context length and needle depth, a method picker and an export button.

    Each change draws one needle example (`tasks.load("needle", ...)`), explains the model's answer
    and shows the token heatmap and the relevance profile over positions, with the needle shaded.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import HTML, display

    from .. import tasks
    from ..viz import save_figure

    length = W.IntSlider(value=context_length, min=64, max=max_context_length, step=64, description="context",
                         continuous_update=False)
    where = W.FloatSlider(value=depth, min=0.0, max=1.0, step=0.05, description="needle depth",
                          continuous_update=False)
    method = W.Dropdown(options=[m for m in methods if m in list_methods()], description="method")
    export = W.Button(description="export figure", icon="download")
    out, status = W.Output(), W.HTML()
    state = {}

    def draw(*_):
        ex = tasks.load("needle", n=1, seed=seed, tokenizer=tokenizer, context_length=length.value,
                        depth=where.value)[0]
        expl = explain(model, ex.input_ids, method=method.value, tokenizer=tokenizer)
        fig, ax = plt.subplots(figsize=(9, 2.4))
        ax.plot(expl.relevance[0].numpy(), lw=0.8, color="#333")
        ax.axvspan(int(ex.evidence.min()), int(ex.evidence.max()) + 1, color="#f4a261", alpha=0.4, label="needle")
        ax.set(xlabel="position", ylabel="relevance", title=f"{method.value}: answer {int(expl.target[0])} "
               f"(expected {ex.target}), context {length.value}, depth {where.value:.2f}")
        ax.legend(loc="upper left")
        state.update(fig=fig, name=f"needle_{method.value}_{length.value}_{int(100 * where.value)}")
        with out:
            out.clear_output(wait=True)
            display(fig)
            plt.close(fig)
            if length.value <= 512:
                display(HTML(expl.to_html()))

    def save(_):
        paths = save_figure(state["fig"], state["name"], figure_dir)
        status.value = "saved " + ", ".join(str(p) for p in paths)

    for control in (length, where, method):
        control.observe(draw, names="value")
    export.on_click(save)
    draw()
    return W.VBox([W.HBox([length, where]), W.HBox([method, export, status]), out])
