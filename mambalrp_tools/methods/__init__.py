"""Attribution methods. Importing this package registers every built-in method."""

from . import captum_methods, hidden_attention, lrp, random_baseline  # noqa: F401  (registration side effects)
from .base import METHODS, Query, list_methods, register, resolve_method

__all__ = ["METHODS", "Query", "list_methods", "register", "resolve_method"]
