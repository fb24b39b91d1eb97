"""Old import path of the evaluation helpers, kept for one release; they now live by job:
`specs` (methods), `forward` (model calls), `stats`, `runs` (fingerprints, JSON), `tasks.io` (examples)."""

from ..architectures import eval_mode
from ..tasks.io import load_examples, read_examples, save_examples
from .forward import device_of, logits_at, relevance, sample_seed, select
from .runs import examples_fingerprint, model_fingerprint
from .specs import RULE_NAMES, MethodSpec, parse_method, parse_methods
from .stats import mean_se, roc_auc


def output_logits(model, input_ids=None, attention_mask=None, inputs_embeds=None, position: int = -1):
    """Old name of `forward.logits_at`."""
    return logits_at(model, input_ids, position, attention_mask, inputs_embeds=inputs_embeds)


__all__ = ["RULE_NAMES", "MethodSpec", "device_of", "eval_mode", "examples_fingerprint", "load_examples",
           "logits_at", "mean_se", "model_fingerprint", "output_logits", "parse_method", "parse_methods",
           "read_examples", "relevance", "roc_auc", "sample_seed", "save_examples", "select"]
