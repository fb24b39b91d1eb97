"""mambalrp_tools: MambaLRP relevance and baseline attributions for Hugging Face Mamba models.

    import mambalrp_tools as mlt
    model, tokenizer = mlt.load_model("toy/needle")
    expl = mlt.explain(model, "the secret code is 4 7 1 9 . the code is", tokenizer=tokenizer)
"""

from .api import explain
from .architectures import lrp_mode
from .explanation import Explanation
from .methods import list_methods, register
from .models import load_model, list_toy_models, make_classifier
from .rules import Rules

__version__ = "0.1.0"
__all__ = ["Explanation", "Rules", "explain", "list_methods", "list_toy_models", "load_model", "lrp_mode",
           "make_classifier", "register"]
