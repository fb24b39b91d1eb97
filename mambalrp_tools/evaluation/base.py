"""Old import path of `Result` and the per-batch helpers, kept for one release (see `engine`, `forward`)."""

from .engine import Result, run_analysis
from .forward import stack_ids, targets_for

__all__ = ["Result", "run_analysis", "stack_ids", "targets_for"]
