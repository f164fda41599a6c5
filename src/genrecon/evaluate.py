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
    model, pairs: Pairs, num_samples: int, batch: int, seed: int, out_dir: Path, examples: int = 4
) -> dict:
    """Conditional mean and std from `num_samples` samples per image; PSNR/SSIM of the mean."""
    out_dir = Path(out_dir)
    rows, saved = [], {"truth": [], "inversion": [], "mean": [], "std": [], "samples": []}
    for i in tqdm(range(len(pairs)), desc="conditional mean"):
        samples = draw_samples(
            model, pairs.inversion[i], num_samples, batch, image_generator(seed, i)
        )
        mean, std = mean_and_std(samples)
        rows.append(
            {
                "index": i,
                **metrics.per_image(mean[None], pairs.truth[i][None])[0],
                "mean_std": float(std.mean()),
            }
        )
        if i < examples:
            values = (pairs.truth[i], pairs.inversion[i], mean, std, samples[:3].numpy())
            for key, value in zip(saved, values, strict=True):
                saved[key].append(value)
    write_rows(out_dir / "per_image.csv", rows)
    np.savez_compressed(out_dir / "examples.npz", **{k: np.stack(v) for k, v in saved.items()})
    return summarise(rows)


def evaluate_baselines(pairs: Pairs, methods: dict[str, np.ndarray], out_dir: Path) -> dict:
    """PSNR/SSIM of classical reconstructions (FBP; pseudo-inverse; Tikhonov) on the same images."""
    rows, summary = [], {}
    for method, recos in methods.items():
        method_rows = [
            {"method": method, "index": i, **m}
            for i, m in enumerate(metrics.per_image(recos[: len(pairs)], pairs.truth))
        ]
        rows += method_rows
        summary[method] = summarise(method_rows)
    write_rows(Path(out_dir) / "per_image.csv", rows)
    return summary


def sweep_num_samples(model, pairs: Pairs, counts: list[int], batch: int, seed: int) -> list[dict]:
    """PSNR/SSIM of the conditional mean against the number of samples (seed 001 Fig. 4).

    One set of max(counts) draws per image; the mean over the first k gives each point, so the
    curve shows the effect of k alone.
    """
    per_k: dict[int, list[dict]] = {k: [] for k in counts}
    for i in tqdm(range(len(pairs)), desc="samples sweep"):
        samples = draw_samples(
            model, pairs.inversion[i], max(counts), batch, image_generator(seed, i)
        )
        for k, mean in running_means(samples, counts).items():
            per_k[k].append(metrics.per_image(mean[None], pairs.truth[i][None])[0])
    return [{"num_samples": k, **summarise(rows)} for k, rows in per_k.items()]


def sweep_refinement(
    model, pairs: Pairs, observations: np.ndarray, geometry: CTGeometry, cfg: dict, seed: int
) -> list[dict]:
    """Sample refinement (Eq. 22) over lambda, from one posterior sample per image (Table 4)."""
    n = min(cfg["num_images"], len(pairs))
    start = torch.stack(
        [
            draw_samples(model, pairs.inversion[i], 1, 1, image_generator(seed, i))[0]
            for i in range(n)
        ]
    )
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
