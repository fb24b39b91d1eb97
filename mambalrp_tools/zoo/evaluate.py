"""Renamed to `mambalrp_tools.zoo.quality` (the toys' quality bars); this path stays for one release."""

from .quality import *  # noqa: F401,F403
from .quality import BARS, EVAL_SEED, EVALUATORS, evaluate_toy  # noqa: F401
