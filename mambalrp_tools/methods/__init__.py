"""Attribution methods. Importing this package registers every built-in method."""

from . import captum_methods, hidden_attention, lrp, random_baseline  # noqa: F401  (registration side effects)
from .base import METHODS, MethodInfo, Query, list_methods, method_info, register, resolve_method

__all__ = ["METHODS", "MethodInfo", "Query", "list_methods", "method_info", "register", "resolve_method"]
