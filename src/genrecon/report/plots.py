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
