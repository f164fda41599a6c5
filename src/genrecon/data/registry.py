"""Every dataset, by name: importing this module registers them all."""

from __future__ import annotations

from genrecon.data import celeba_hq, knee, knee_pd, lodopab, mnist  # noqa: F401  (registers the datasets)
from genrecon.data.base import Dataset, lookup, registered_datasets


def dataset(name: str, settings: dict) -> Dataset:
    """The dataset `name` with its settings at the resolved scale."""
    return lookup(name)(settings["datasets"][name], settings["seed"])


__all__ = ["dataset", "lookup", "registered_datasets"]
