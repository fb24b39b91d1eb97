"""Views that compare attribution methods side by side, and figure export.

    expls = {m: mlt.explain(model, ids, method=m, tokenizer=tok) for m in ("mambalrp", "ig", "gradient")}
    fig = plot_methods(expls)            # tokens x methods heatmap (paper Fig. 4 layout)
    methods_html(expls)                  # the same as an HTML table in a notebook
    save_figure(fig, "sst2_example")     # figures/sst2_example.pdf and .png
"""

from .compare import methods_html, plot_methods, save_figure

__all__ = ["methods_html", "plot_methods", "save_figure"]
