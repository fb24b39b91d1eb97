"""mambalrp_tools: MambaLRP relevance and baseline attributions for Hugging Face Mamba models.

    import mambalrp_tools as mlt
    model, tokenizer = mlt.load_model("toy/needle")
    expl = mlt.explain(model, "the secret code is 4 7 1 9 . the code is", tokenizer=tokenizer)
    gen = mlt.explain_generation(model, expl.input_ids, max_new_tokens=4)   # an output axis
"""

from .api import explain, explain_generation
from .architectures import lrp_mode
from .explanation import Explanation
from .methods import list_methods, method_info, register
from .models import load_model, list_toy_models, make_classifier
from .rules import Rules

__version__ = "0.1.0"
__all__ = ["Explanation", "Rules", "explain", "explain_generation", "list_methods", "list_toy_models", "load_model",
           "lrp_mode", "make_classifier", "method_info", "register"]
