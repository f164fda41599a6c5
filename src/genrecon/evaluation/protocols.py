"""Evaluation protocols: how a method's output on a test split becomes per-image rows and a summary.

- `posterior`: for amortised samplers. Per image, `num_samples` draws from a per-image generator;
  the conditional mean of the unclipped samples (`mean`, the papers' estimator, set beside the
  papers' numbers) and of the samples clipped to the ground truth's range (`clipped_mean`, an
  extra, labelled row: normal-base flows draw occasional exploding samples); the PSNR/SSIM curve
  against the number of samples k (seed 001 Fig. 4) from the first k of the same draws.
- `point`: any method's point estimate, in batches.
- sweeps (`SWEEPS`): `refine`, sample refinement over lambda (seed 000 Table 4).

Nothing here plots or formats; the report only reads these files.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from genrecon.data.base import Dataset, Split
from genrecon.methods.base import Method, PosteriorSampler
from genrecon.physics.base import LinearPhysics

EXAMPLES = 4  # test images whose reconstructions are saved for the report's figures


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


def write_json(path: Path, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def running_means(samples: torch.Tensor, counts: list[int]) -> dict[int, np.ndarray]:
    """Conditional means from the first k samples for each k in `counts` (one set of draws)."""
    cumulative = samples.double().cumsum(0)
    return {k: (cumulative[k - 1] / k).float().numpy() for k in counts if k <= len(samples)}


def _cond(split: Split, method: Method, index) -> torch.Tensor | None:
    stack = split.conditioning(method.conditioning)
    return None if stack is None else torch.from_numpy(np.asarray(stack[index], np.float32))


def posterior(
    method: PosteriorSampler,
    dataset: Dataset,
    split: Split,
    physics: LinearPhysics,
    settings: dict,
    out_dir: Path,
) -> dict:
    """Conditional mean (unclipped and clipped), pixel-wise std and the sample-count curve."""
    out_dir = Path(out_dir)
    num, clip = settings["num_samples"], settings.get("clip")
    counts = [k for k in settings["sample_counts"] if k <= num]
    estimators = {"mean": f"mean of {num} unclipped samples"}
    if clip:
        estimators["clipped_mean"] = f"mean of {num} samples clipped to [{clip[0]:g}, {clip[1]:g}]"
    rows: list[dict] = []
    curves: dict[str, dict[int, list[dict]]] = {e: {k: [] for k in counts} for e in estimators}
    saved: dict[str, list] = {k: [] for k in ("truth", "cond", "point", "std", "samples")}
    for i in tqdm(range(len(split)), desc="posterior samples"):
        truth, y, _ = split[i]
        samples = method.sample(torch.from_numpy(y), physics, _cond(split, method, i), i, num)
        draws = {"mean": samples}
        if clip:
            draws["clipped_mean"] = samples.clamp(*clip)
        shown = draws["clipped_mean" if clip else "mean"]
        for estimator, stack in draws.items():
            estimate = stack.mean(0).numpy()
            rows.append(
                {
                    "index": i,
                    "estimator": estimator,
                    **dataset.metrics(estimate[None], truth[None])[0],
                }
            )
            for k, mean_k in running_means(stack, counts).items():
                curves[estimator][k].append(dataset.metrics(mean_k[None], truth[None])[0])
        if i < EXAMPLES:
            cond = _cond(split, method, i)
            values = (
                truth,
                cond.numpy() if cond is not None else y,
                samples.mean(0).numpy(),
                shown.std(0).numpy(),
                shown[:3].numpy(),
            )
            for key, value in zip(saved, values, strict=True):
                saved[key].append(value)
    write_rows(out_dir / "per_image.csv", rows)
    np.savez_compressed(out_dir / "examples.npz", **{k: np.stack(v) for k, v in saved.items()})
    frame = pd.DataFrame(rows)
    return {
        "n": len(split),
        "num_samples": num,
        "clip": list(clip) if clip else None,
        "estimators": {
            name: {**summarise(frame[frame.estimator == name].to_dict("records")), "label": label}
            for name, label in estimators.items()
        },
        "curves": {
            "num_samples": [
                {"num_samples": k, "estimator": name, **summarise(per_k)}
                for name, by_k in curves.items()
                for k, per_k in by_k.items()
            ]
        },
    }


def point(
    method: Method,
    dataset: Dataset,
    split: Split,
    physics: LinearPhysics,
    settings: dict,
    out_dir: Path,
    batch: int = 32,
) -> dict:
    """The method's point estimate of every test image, scored with the dataset's metrics."""
    out_dir = Path(out_dir)
    rows, points = [], []
    for start in tqdm(range(0, len(split), batch), desc=f"{method.name} reconstructions"):
        index = np.arange(start, min(start + batch, len(split)))
        y = torch.from_numpy(np.asarray(split.y[index], np.float32))
        estimate = method.reconstruct(y, physics, _cond(split, method, index), index.tolist())
        reco = estimate.point.detach().cpu().numpy()
        points.append(reco[: max(0, EXAMPLES - start)])
        for i, scores in zip(index, dataset.metrics(reco, np.asarray(split.x[index])), strict=True):
            rows.append({"index": int(i), "estimator": "point", **scores})
    write_rows(out_dir / "per_image.csv", rows)
    shown = min(EXAMPLES, len(split))
    np.savez_compressed(
        out_dir / "examples.npz",
        truth=np.asarray(split.x[:shown]),
        point=np.concatenate(points)[:shown],
    )
    return {
        "n": len(split),
        "estimators": {"point": {**summarise(rows), "label": f"{method.name} reconstruction"}},
    }


PROTOCOLS: dict[str, Callable[..., dict]] = {"posterior": posterior, "point": point}


def refine_sweep(
    method: Method, dataset: Dataset, split: Split, physics: LinearPhysics, settings: dict, clip
) -> list[dict]:
    """Sample refinement (seed 000 Eq. 22) over lambda, from one posterior sample per image.

    The start is one posterior sample per image, seeded per image and clipped like the
    evaluation's samples when `clip` is set.
    """
    if not hasattr(method, "refine"):
        raise TypeError(f"sweep 'refine' needs a posterior sampler with `refine`; {method.name}")
    n = min(settings["num_images"], len(split))
    cond = _cond(split, method, np.arange(n))
    start = torch.stack(
        [method.sample(torch.from_numpy(split[i][1]), physics, cond[i], i, 1)[0] for i in range(n)]
    )
    if clip:
        start = start.clamp(*clip)
    y = torch.from_numpy(np.asarray(split.y[:n], np.float32))
    truth = np.asarray(split.x[:n])
    out = []
    for lam in tqdm(settings["lambdas"], desc="refinement sweep"):
        refined = method.refine(
            y, physics, cond, start, float(lam), settings["steps"], settings["lr"]
        )
        out.append({"value": float(lam), **summarise(dataset.metrics(refined.numpy(), truth))})
    return out


SWEEPS: dict[str, Callable[..., list[dict]]] = {"refine": refine_sweep}
