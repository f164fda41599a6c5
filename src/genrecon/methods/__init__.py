"""Reconstruction methods behind one interface (`Method`, `Prior`, `Estimate`; see base.py).

Importing this package registers every method: amortised samplers (`amortised/`), classical
baselines (`classical/`) and, in later issues, learned priors (`priors/`). An experiment row
names a method by its registered name; its `variant` is the method's constructor arguments.
"""

from genrecon.methods import amortised, classical  # noqa: F401  (registers the methods)
from genrecon.methods.base import (
    Estimate,
    Method,
    Prior,
    method_class,
    register_method,
    registered_methods,
)

__all__ = [
    "Estimate",
    "Method",
    "Prior",
    "method_class",
    "register_method",
    "registered_methods",
]
