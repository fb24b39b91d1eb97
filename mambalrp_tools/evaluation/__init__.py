"""Evaluation library (DESIGN section 4): conservation, faithfulness with rule ablation, copying
alignment, needle grid, gender bias, long range, model randomisation; resumable run folders.

    from mambalrp_tools import evaluation as ev
    res = ev.faithfulness(model, examples, ["mambalrp", "mambalrp:-ssm", "gi", "random"], out="runs/faith")
    res.table(), res.plot()

Every analysis takes `out=` (a run folder: manifest.json + records.jsonl, resumed when re-run) and
returns a `Result` with `records`, `summary`, `table()` and `plot()`.
"""

from .alignment import alignment_matrix, alignment_scores, copy_alignment
from ..tasks.io import load_examples, read_examples, save_examples
from .bias import gender_bias
from .conservation import conservation
from .engine import Result, run_analysis
from .faithfulness import faithfulness, perturbation_curves
from .forward import logits_at
from .generation import GenerationExplanation, explain_generation
from .long_range import long_range
from .needle import needle_digits, needle_grid, needle_share
from .randomization import randomization_check
from .runs import Run, RunIncomplete, RunLocked, RunMismatch, read_records
from .specs import MethodSpec, parse_method, parse_methods
from .stats import roc_auc

__all__ = [
    "GenerationExplanation", "MethodSpec", "Result", "Run", "RunIncomplete", "RunLocked", "RunMismatch", "alignment_matrix",
    "alignment_scores", "conservation", "copy_alignment", "explain_generation", "faithfulness", "gender_bias",
    "load_examples", "logits_at", "long_range", "needle_digits", "needle_grid", "needle_share", "parse_method", "parse_methods",
    "perturbation_curves", "randomization_check", "read_examples", "read_records", "roc_auc", "run_analysis", "save_examples",
]
