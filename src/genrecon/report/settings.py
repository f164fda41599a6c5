"""The settings a report quotes, read from params.yaml at run time, never typed into a page.

Pages and table captions quote m, the noise level, λ, sample counts and whether a number is over
the test set or its first N images. Reading them from the resolved params means a changed setting
changes the prose with the numbers, instead of leaving a page that contradicts its own table.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def resolve_settings(
    params: Mapping[str, Any], scale: str, root: str | Path = "."
) -> dict[str, Any]:
    """The settings of one scale, as every job sees them (genrecon.config.resolve)."""
    from genrecon.config import resolve

    return resolve(dict(params), scale, root=Path(root))


def scales_of(params: Mapping[str, Any]) -> list[str]:
    """Every scale params.yaml defines an overlay for."""
    return list(params.get("scales") or {})


def sheet_by_scale(params: Mapping[str, Any], root: str | Path = ".") -> dict[str, dict[str, dict]]:
    """{scale: {experiment: sheet row}}: what validate_tables resolves experiments against."""
    return {
        scale: resolve_settings(params, scale, root)["experiments"] for scale in scales_of(params)
    }


def _subset(num_images: int | None, test: int, unit: str = "images") -> str:
    if num_images is None or num_images >= test:
        return f"the test set ({test} {unit})"
    return f"the first {num_images} of {test} test {unit}"


def _describe_dataset(name: str, cfg: Mapping[str, Any]) -> str:
    """What the data of a dataset are, in words (so a synthetic stand-in never passes as real)."""
    if name == "lodopab":
        size = cfg["image_size"]
        real = cfg.get("source") == "zenodo"
        what = "LoDoPaB-CT" if real else "synthetic LoDoPaB-format CT"
        return f"{what} {size}×{size}, {cfg['num_angles']} angles, N0={cfg['photons']:g}"
    if name == "fastmri_knee":
        splits = cfg["splits"]
        counts = f"{splits['train']}/{splits['validation']}/{splits['test']} train/val/test volumes"
        what = "fastMRI single-coil knee"
        if cfg.get("source") == "synthetic":
            what = "synthetic knee-like phantoms in fastMRI's single-coil format"
        return f"{what}, {cfg['crop']}px, {counts}, {cfg['acceleration']}x random masks"
    if name == "knee_pd":
        splits, size = cfg["splits"], cfg["image_size"]
        what = "fastMRI knee PD slices"
        if cfg.get("source") == "synthetic":
            what = "synthetic knee-like PD phantoms in fastMRI's format"
        counts = f"{splits['train']}/{splits['validation']}/{splits['test']} train/val/test volumes"
        slices = f"{cfg['central_slices']} central slices per volume"
        return f"{what}, {slices}, {size}×{size} px, {counts}"
    if name == "mnist":
        splits = cfg["splits"]
        what = "real MNIST test images (t10k)" if cfg.get("source") == "embedded" else "MNIST"
        return f"{what}, {splits['train']}/{splits['validation']}/{splits['test']} train/val/test"
    if name == "celeba_hq":
        splits, size = cfg["splits"], cfg["image_size"]
        what = "CelebA-HQ faces"
        if cfg.get("source") == "lfw":
            what = "STAND-IN: scikit-image's LFW faces (grey), not CelebA-HQ"
        counts = f"{splits['train']}/{splits['validation']}/{splits['test']} train/val/test"
        return f"{what}, {size}×{size} px, {counts}"
    return f"{name} ({cfg.get('source', 'unknown source')})"


def scale_note(settings: Mapping[str, Any], scale: str, datasets: list[str]) -> str:
    """One line per page saying what our numbers were measured on and how far to trust them."""
    parts = []
    for name in datasets:
        text = _describe_dataset(name, settings["datasets"][name])
        steps = (settings.get("train") or {}).get(name, {}).get("steps")
        parts.append(f"{text}, {steps} training steps" if steps else text)
    note = f"{scale}: " + "; ".join(parts)
    if scale != "paper":
        note += " — compare gaps, not absolute values"
    return note


def facts(settings: Mapping[str, Any], scale: str) -> dict[str, str]:
    """Derived phrases the captions quote as {f[NAME]}; raw settings are quoted as {s[a][b]}.

    Per dataset D: D_note (scale note), D_images ("the test set (N images)" or "the first N of M
    test images"), D_steps (training steps, where D trains). Per sweep S with num_images:
    S_images ("the first N test images").
    """
    from genrecon.data.registry import lookup as dataset_lookup  # the classes, registered

    out = {"scale": scale}
    evaluate = settings.get("evaluate") or {}
    for name, cfg in settings["datasets"].items():
        out[f"{name}_note"] = scale_note(settings, scale, [name])
        test, unit = int(cfg["splits"]["test"]), dataset_lookup(name).unit
        out[f"{name}_{unit}"] = f"{test} test {unit}"
        if isinstance(evaluate.get(name), Mapping) and "num_images" in evaluate[name]:
            count = evaluate[name]["num_images"]
            out[f"{name}_images"] = (
                _subset(count, test, unit)
                if count is None or unit == "images"  # a limit counts images (knee: slices)
                else f"the first {count} slices (whole volumes) of the {test} test {unit}"
            )
        steps = (settings.get("train") or {}).get(name, {}).get("steps")
        if steps is not None:
            out[f"{name}_steps"] = str(steps)
    for name, cfg in (settings.get("sweeps") or {}).items():
        if isinstance(cfg, Mapping) and "num_images" in cfg:
            out[f"{name}_images"] = f"the first {cfg['num_images']} test images"
    return out


def fill(template: str, settings: Mapping[str, Any], scale: str, where: str) -> str:
    """A caption template with its settings filled in; an unknown name is an error naming it."""
    try:
        return template.format(s=settings, f=facts(settings, scale))
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise KeyError(f"{where}: caption quotes {err!s}, which the {scale} settings lack") from err
