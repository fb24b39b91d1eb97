"""mambalrp_tools: MambaLRP relevance and baseline attributions for Hugging Face Mamba models.

    import mambalrp_tools as mlt
    model, tokenizer = mlt.load_model("toy/needle")
    expl = mlt.explain(model, "the secret code is 4 7 1 9 . what is the secret code ? the secret code is",
                       tokenizer=tokenizer)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Loaded on first use (PEP 562), so that `mambalrp-tools --help` and other light imports of the
# package do not pay for torch and transformers.
_EXPORTS = {
    "explain": "api", "explain_generation": "api", "lrp_mode": "architectures", "Explanation": "explanation",
    "list_methods": "methods", "method_info": "methods", "register": "methods", "load_model": "models",
    "list_toy_models": "models", "make_classifier": "models", "Rules": "rules",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):  # a submodule, as `mlt.tasks` / `mlt.evaluation` were before
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS})
