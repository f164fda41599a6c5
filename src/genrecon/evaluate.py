"""Evaluation jobs: conditional mean of a trained cINN, classical baselines, and the two sweeps.

Each job writes per-image rows and a summary whose numbers carry the MLflow run id; nothing here
plots or formats, the report notebooks only read these files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from genrecon import metrics
from genrecon.data import lodopab
from genrecon.data.pairs import Pairs
from genrecon.inference.posterior import draw_samples, image_generator, mean_and_std, running_means
from genrecon.inference.refinement import refine
from genrecon.physics.ct import CTGeometry, torch_ray_transform


def summarise(rows: list[dict], keys=("psnr", "ssim")) -> dict[str, float]:
    frame = pd.DataFrame(rows)
    out: dict[str, float] = {"n": len(frame)}
    for key in keys:
        out[f"{key}_mean"] = float(frame[key].mean())
        out[f"{key}_std"] = float(frame[key].std(ddof=0))
    return out


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def evaluate_model(
    model,
    pairs: Pairs,
    num_samples: int,
    batch: int,
    seed: int,
    out_dir: Path,
    counts: list[int],
    clip: tuple[float, float] | None = None,
    examples: int = 4,
) -> tuple[dict, list[dict]]:
    """Conditional mean and std from `num_samples` samples per image, and the sample-count sweep.

    With `clip`, samples are clipped to the ground truth's known range before averaging (the
    reported estimator); the mean of the raw samples is always measured too (`raw_*`), so the
    effect of outlier samples stays visible. The sweep (PSNR/SSIM against the number of samples
    k, seed 001 Fig. 4) averages the first k of the same draws, so it shows the effect of k alone.
    """
    out_dir = Path(out_dir)
    rows, saved = [], {"truth": [], "inversion": [], "mean": [], "std": [], "samples": []}
    per_k: dict[int, list[dict]] = {k: [] for k in counts if k <= num_samples}
    for i in tqdm(range(len(pairs)), desc="conditional mean"):
        truth = pairs.truth[i][None]
        samples = draw_samples(
            model, pairs.inversion[i], num_samples, batch, image_generator(seed, i)
        )
        estimate = samples.clamp(*clip) if clip else samples
        mean, std = mean_and_std(estimate)
        raw = metrics.per_image(samples.mean(0).numpy()[None], truth)[0]
        rows.append(
            {
                "index": i,
                **metrics.per_image(mean[None], truth)[0],
                "raw_psnr": raw["psnr"],
                "raw_ssim": raw["ssim"],
                "mean_std": float(std.mean()),
            }
        )
        for k, mean_k in running_means(estimate, list(per_k)).items():
            per_k[k].append(metrics.per_image(mean_k[None], truth)[0])
        if i < examples:
            values = (pairs.truth[i], pairs.inversion[i], mean, std, estimate[:3].numpy())
            for key, value in zip(saved, values, strict=True):
                saved[key].append(value)
    write_rows(out_dir / "per_image.csv", rows)
    np.savez_compressed(out_dir / "examples.npz", **{k: np.stack(v) for k, v in saved.items()})
    sweep = [{"num_samples": k, **summarise(r)} for k, r in per_k.items()]
    return summarise(rows, ("psnr", "ssim", "raw_psnr", "raw_ssim")), sweep


def evaluate_baselines(truth: np.ndarray, methods: dict[str, np.ndarray], out_dir: Path) -> dict:
    """PSNR/SSIM of classical reconstructions (FBP; pseudo-inverse; Tikhonov) on the same images."""
    rows, summary = [], {}
    for method, recos in methods.items():
        method_rows = [
            {"method": method, "index": i, **m}
            for i, m in enumerate(metrics.per_image(recos[: len(truth)], truth))
        ]
        rows += method_rows
        summary[method] = summarise(method_rows)
    write_rows(Path(out_dir) / "per_image.csv", rows)
    return summary


def sweep_refinement(
    model,
    pairs: Pairs,
    observations: np.ndarray,
    geometry: CTGeometry,
    cfg: dict,
    seed: int,
    clip: tuple[float, float] | None = None,
) -> list[dict]:
    """Sample refinement (Eq. 22) over lambda, from one posterior sample per image (Table 4).

    The start is one posterior sample per image, seeded per image and clipped like the
    evaluation's samples when `clip` is set.
    """
    n = min(cfg["num_images"], len(pairs))
    start = torch.stack(
        [
            draw_samples(model, pairs.inversion[i], 1, 1, image_generator(seed, i))[0]
            for i in range(n)
        ]
    )
    if clip:
        start = start.clamp(*clip)
    model = model.cpu()  # the ODL/astra bridge works on CPU tensors
    op = torch_ray_transform(geometry)
    obs = torch.from_numpy(observations[:n])
    inversion = torch.from_numpy(pairs.inversion[:n])
    out = []
    for lam in tqdm(cfg["lambdas"], desc="refinement sweep"):
        refined = refine(model, op, start, obs, inversion, float(lam), cfg["steps"], cfg["lr"])
        rows = metrics.per_image(refined.numpy(), pairs.truth[:n])
        out.append({"lambda": float(lam), **summarise(rows)})
    return out


def load_observations(data_root: Path, split: str, limit: int) -> np.ndarray:
    return lodopab.read_split(data_root, "observation", split, limit)


def write_json(path: Path, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
