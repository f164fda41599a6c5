"""params.yaml -> the settings of the chosen scale, validated, with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SCALES = ("smoke", "paper")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: parameter file not found (run from the project root)")
    return yaml.safe_load(path.read_text())


def scale_settings(params: dict[str, Any], scale: str | None = None) -> dict[str, Any]:
    """The block of `params` for `scale` (default: params['scale'])."""
    scale = scale or params.get("scale", "smoke")
    if scale not in SCALES or scale not in params:
        raise ValueError(f"scale={scale!r}: expected one of {SCALES} with a block in params.yaml")
    return params[scale]


def model_settings(settings: dict[str, Any], model: str) -> dict[str, Any]:
    """Everything one model needs: its entry, its architecture, its dataset's train/eval blocks."""
    models = settings["models"]
    if model not in models:
        raise KeyError(f"model {model!r} is not in params.yaml; known: {sorted(models)}")
    entry = dict(models[model])
    dataset = entry["dataset"]
    return {
        **entry,
        "name": model,
        "architecture": settings["architectures"][entry["arch"]],
        "train": settings["train"][dataset],
        "evaluate": settings["evaluate"][dataset],
        "data": settings["datasets"][dataset],
    }
