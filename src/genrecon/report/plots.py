"""Plotting helpers shared by every report page (one module instead of a cell copied per notebook).

Curves are drawn from numbers.csv rows, so a plotted point is a traced number; images are drawn
from the evaluation's examples.npz and training curves from history.csv. Each function returns its
Figure; in a notebook with the inline backend it is shown once when the cell ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from genrecon.report.tables import marked

DEFAULT_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM"}


def _floats(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def _sem(frame: pd.DataFrame) -> np.ndarray:
    """Standard error of the mean over images (std / sqrt(n)); 0 where std or n is unknown."""
    std, n = _floats(frame, "std"), _floats(frame, "n")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(std / np.sqrt(n))


def sample_count_curves(
    numbers: pd.DataFrame,
    table_id: str,
    metrics: Sequence[str] = ("psnr", "ssim"),
    labels: Mapping[str, str] = DEFAULT_LABELS,
    title: str = "",
) -> Figure:
    """PSNR/SSIM of the conditional mean against the number of samples, one line per model."""
    rows = numbers[(numbers["table"] == table_id) & (numbers["who"] == "ours")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        part = rows[rows["metric"] == metric]
        for method, group in part.groupby("method", sort=False):
            group = group.sort_values("x", key=lambda s: pd.to_numeric(s))
            ax.errorbar(
                _floats(group, "x"),
                _floats(group, "value"),
                yerr=_sem(group),
                marker="o",
                ms=4,
                capsize=3,
                label=marked(str(method), group),  # ⚠: its samples exploded (footnote)
            )
        ax.set_xscale("log")
        ax.set_xlabel("samples in the conditional mean")
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def sweep_curves(
    numbers: pd.DataFrame,
    table_id: str,
    parameter: str = "λ",
    metrics: Sequence[str] = ("psnr", "ssim"),
    labels: Mapping[str, str] = DEFAULT_LABELS,
) -> Figure:
    """A metric against the swept parameter (λ of the refinement), ours and the paper's.

    The x axis is symlog so that λ = 0 is drawn at 0 rather than dropped from a log axis.
    """
    rows = numbers[numbers["table"] == table_id]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        part = rows[rows["metric"] == metric].copy()
        part["series"] = part.apply(
            lambda r: r["experiment"] if r["who"] == "ours" else "paper: " + r["row"].split("@")[0],
            axis=1,
        )
        for _, group in part.groupby(["who", "series"], sort=False):
            group = group.sort_values("x", key=lambda s: pd.to_numeric(s))
            who = group["who"].iloc[0]
            name = group["method"].iloc[0].rsplit(f", {parameter} =", 1)[0]
            ax.errorbar(
                _floats(group, "x"),
                _floats(group, "value"),
                yerr=_sem(group) if who == "ours" else None,
                marker="o" if who == "ours" else "s",
                ls="-" if who == "ours" else "--",
                ms=4,
                capsize=3,
                label=f"{name} [{'ours' if who == 'ours' else 'paper'}]",
            )
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel(parameter)
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def example_grid(path: str | Path, title: str, cond_label: str, count: int = 3) -> Figure:
    """Ground truth, conditioning input, estimate; for posterior methods also std and 2 samples.

    Images share the ground truth's grey range so that contrast differences are real.
    """
    data = np.load(path)
    columns = [("ground truth", data["truth"])]
    if "cond" in data.files:  # point methods (FBP, TV) have no conditioning input
        columns.append((cond_label, data["cond"]))
    posterior = "samples" in data.files
    columns.append(("conditional mean" if posterior else "reconstruction", data["point"]))
    if posterior:
        columns.append(("pixel-wise std", data["std"]))
        samples = data["samples"]
        columns += [(f"sample {j + 1}", samples[:, j]) for j in range(min(2, samples.shape[1]))]
    count = min(count, len(data["truth"]))
    fig, axes = plt.subplots(
        count, len(columns), figsize=(2.0 * len(columns), 2.0 * count + 0.4), squeeze=False
    )
    for i in range(count):
        # from 0 (CT, MNIST) or from the minimum where images are normalised (fastMRI)
        low = min(0.0, float(np.min(data["truth"][i])))
        top = max(low + 1e-6, float(np.max(data["truth"][i])))
        for j, (name, stack) in enumerate(columns):
            ax = axes[i][j]
            image = np.squeeze(stack[i])
            if name == "pixel-wise std":
                ax.imshow(image, cmap="magma")
            else:
                ax.imshow(image, cmap="gray", vmin=low, vmax=top)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def training_curves(histories: Sequence[tuple[str, str | Path]]) -> Figure:
    """Validation (solid) and training (dotted) bits/dim against the step, one colour per model."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for k, (label, path) in enumerate(histories):
        history = pd.read_csv(path)
        colour = f"C{k % 10}"
        val = history.dropna(subset=["val_bpd"])
        ax.plot(val["step"], val["val_bpd"], marker=".", color=colour, label=f"{label} (val.)")
        if "train_bpd" in history:
            train = history.dropna(subset=["train_bpd"])
            ax.plot(train["step"], train["train_bpd"], ls=":", color=colour, alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("negative log-likelihood (bits/dim)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def setting_curves(
    numbers: pd.DataFrame,
    table_id: str,
    axis: str,
    metrics: Sequence[str] = ("psnr",),
    labels: Mapping[str, str] = DEFAULT_LABELS,
    marks: Mapping[str, Sequence[float]] | None = None,
) -> Figure:
    """A metric against a measurement setting (spokes, noise, Cartesian p), one line per method,
    with the std over images as a shaded band, as seed 002's figures draw them.

    `marks`: per method label, the x values it was TRAINED at (the variational networks of
    Fig. 9), drawn as dotted vertical lines in its colour.
    """
    rows = numbers[(numbers["table"] == table_id) & (numbers["who"] == "ours")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        part = rows[rows["metric"] == metric]
        for k, (method, group) in enumerate(part.groupby("method", sort=False)):
            group = group.sort_values("x", key=lambda s: pd.to_numeric(s))
            x, mean, std = (_floats(group, c) for c in ("x", "value", "std"))
            colour = f"C{k % 10}"
            ax.plot(x, mean, marker="o", ms=4, color=colour, label=str(method))
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
            for value in (marks or {}).get(str(method), []):
                ax.axvline(float(value), color=colour, ls=":", lw=1.2)
        if axis == "noise":  # log axis, ticked at the measured noise levels only
            ax.set_xscale("log")
            levels = np.unique(_floats(part, "x"))
            ax.set_xticks(levels, [f"{v:g}" for v in levels])
            ax.minorticks_off()
        ax.set_xlabel(
            {
                "spokes": "radial spokes",
                "noise": "noise std σ",
                "p": "row probability p",
                "value": "searched value",
            }.get(axis, axis)
        )
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def tuning_curves(numbers: pd.DataFrame, table_id: str, metric: str = "psnr") -> Figure:
    """Each method's grid search on validation images: the metric against the searched value,
    one panel per method (λ, μ and iteration counts do not share an axis); the chosen value is
    the highest point."""
    rows = numbers[(numbers["table"] == table_id) & (numbers["metric"] == metric)]
    methods = list(dict.fromkeys(rows["method"]))
    cols = min(4, max(1, len(methods)))
    nrows = -(-len(methods) // cols) if methods else 1
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[len(methods) :]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, methods, strict=False):
        group = rows[rows["method"] == method].sort_values("x", key=lambda s: pd.to_numeric(s))
        x, mean, std = (_floats(group, c) for c in ("x", "value", "std"))
        ax.plot(x, mean, marker="o", ms=4)
        ax.fill_between(x, mean - std, mean + std, alpha=0.15, lw=0)
        best = int(np.nanargmax(mean))
        ax.plot([x[best]], [mean[best]], marker="*", ms=12, color="C3")
        if np.all(x > 0) and x.max() / max(x.min(), 1e-300) > 20:
            ax.set_xscale("log")
        ax.set_title(str(method), fontsize=9)
        ax.set_ylabel("PSNR (dB)" if metric == "psnr" else metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def setting_examples(
    results: str | Path,
    experiments: Sequence[tuple[str, str]],
    settings: Sequence[str],
    image: int = 0,
    with_adjoint: bool = True,
) -> Figure:
    """Seed 002 Figs 5, 6 and 10: one test image, a row per measurement setting, a column per
    method (after the ground truth, the mask and the zero-filled adjoint), PSNR in each panel.

    `experiments`: (experiment, label) pairs whose examples.npz hold `point/<setting>`.
    """
    from genrecon.metrics import psnr

    data = {exp: np.load(Path(results) / "eval" / exp / "examples.npz") for exp, _ in experiments}
    first = data[experiments[0][0]]
    truth = first["truth"][image]
    head = ["ground truth", "mask"] + (["adjoint"] if with_adjoint else [])
    columns = head + [label for _, label in experiments]
    fig, axes = plt.subplots(
        len(settings),
        len(columns),
        figsize=(1.7 * len(columns), 1.8 * len(settings) + 0.4),
        squeeze=False,
    )
    for i, sid in enumerate(settings):
        panels: list[tuple[np.ndarray, str]] = [(truth, ""), (first[f"mask/{sid}"], "")]
        if with_adjoint:
            adjoint = first[f"adjoint/{sid}"][image]
            panels.append((adjoint, f"{psnr(adjoint, truth):.1f}"))
        for exp, _ in experiments:
            reco = data[exp][f"point/{sid}"][image]
            panels.append((reco, f"{psnr(reco, truth):.1f}"))
        for j, (img, text) in enumerate(panels):
            ax = axes[i][j]
            if j == 1:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img, cmap="gray", vmin=0.0, vmax=max(1e-6, float(truth.max())))
            if text:
                ax.text(1, 1, text, color="white", fontsize=7, va="top")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(sid, fontsize=7)
    fig.tight_layout()
    return fig


def covariance_figures(results: str | Path, experiments: Sequence[tuple[str, str]]) -> Figure:
    """Seed 002 Fig. 2 and Fig. 4 from the VAE evaluations' figure arrays: per model, the ground
    truth, its encoding's generated mean, the residual, one residual sample L^{-1}u, and (where
    the model has a structured covariance) the covariance of a chosen pixel (red +, blue -)."""
    rows = []
    for exp, label in experiments:
        data = np.load(Path(results) / "eval" / exp / "examples.npz")
        figures = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("figure/")}
        rows.append((label, data["truth"][0], figures))
    names = ["ground truth", "generated mean", "residual", "residual sample", "covariance"]
    fig, axes = plt.subplots(
        len(rows), len(names), figsize=(2.0 * len(names), 2.1 * len(rows)), squeeze=False
    )
    for i, (label, truth, figures) in enumerate(rows):
        mean = figures.get("generated", [None])[0]
        panels = [
            (truth, "gray"),
            (mean, "gray"),
            (None if mean is None else truth - mean, "seismic"),
            (figures.get("residual_sample", [None])[0], "seismic"),
            (figures.get("covariance", [None])[0], "seismic"),
        ]
        for j, (img, cmap) in enumerate(panels):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(names[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            if img is None:
                ax.set_axis_off()
                continue
            if cmap == "seismic":  # residuals rescaled per panel, symmetric, as the paper's
                bound = max(1e-12, float(np.abs(img).max()))
                ax.imshow(img, cmap=cmap, vmin=-bound, vmax=bound)
            else:
                ax.imshow(img, cmap=cmap, vmin=0, vmax=max(1e-6, float(truth.max())))
            if names[j] == "covariance" and "pixel" in figures:
                r, c = (int(v) for v in np.asarray(figures["pixel"]).ravel()[:2])
                ax.plot([c], [r], marker="*", color="yellow", ms=8)
    fig.tight_layout()
    return fig


def _show(ax, image: np.ndarray) -> None:
    """A (C, H, W) or (H, W) image in [0, 1]: RGB as colour, one channel as grey."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3:
        ax.imshow(np.clip(image.transpose(1, 2, 0), 0.0, 1.0))
    else:
        ax.imshow(np.clip(image.reshape(image.shape[-2:]), 0.0, 1.0), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def inversion_examples(
    results: str | Path, experiments: Sequence[tuple[str, str]], key: str = "best"
) -> Figure:
    """Seed 003 Fig. 5: per test image (rows) the truth, the data (blurred, noisy) and each
    method's inversion (`key`: `best` = the start of highest PSNR, the paper's pick; `point` =
    the lowest objective), PSNR (dB) in each panel: the dataset's own PSNR, saved beside the
    images by the protocol. `experiments`: (experiment, label) pairs."""
    data = {exp: np.load(Path(results) / "eval" / exp / "examples.npz") for exp, _ in experiments}
    first = data[experiments[0][0]]
    truths = first["truth"]
    head = ["ground truth"] + (["data"] if "data" in first.files else [])
    columns = head + [label for _, label in experiments]
    fig, axes = plt.subplots(
        len(truths),
        len(columns),
        figsize=(1.7 * len(columns), 1.8 * len(truths) + 0.4),
        squeeze=False,
    )
    for i, truth in enumerate(truths):
        panels = [(truth, "")]
        if "data" in first.files:
            panels.append((first["data"][i], f"{first['psnr_data'][i]:.1f}"))
        panels += [(data[e][key][i], f"{data[e]['psnr_' + key][i]:.1f}") for e, _ in experiments]
        for j, (image, text) in enumerate(panels):
            _show(axes[i][j], image)
            if text:
                axes[i][j].text(1, 1, text, color="white", fontsize=7, va="top")
            if i == 0:
                axes[i][j].set_title(columns[j], fontsize=8)
    fig.tight_layout()
    return fig
