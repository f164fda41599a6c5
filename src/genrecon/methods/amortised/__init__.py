"""Amortised posterior samplers: trained on pairs (x, y), sample p(x | y) in one pass."""

from genrecon.methods.amortised import cinn  # noqa: F401  (registers "cinn")
