"""Evaluation protocols: how a method's output on a test split becomes per-image rows and a summary.

- `posterior`: for amortised samplers. Per image, `num_samples` draws from a per-image generator;
  the conditional mean of the unclipped samples (`mean`, the papers' estimator, set beside the
  papers' numbers) and of the samples clipped to the ground truth's range (`clipped_mean`, an
  extra, labelled row: normal-base flows draw occasional exploding samples); the PSNR/SSIM curve
  against the number of samples k (seed 001 Fig. 4) from the first k of the same draws; from the
  same draws again, the quality of one sample and the pixel-wise std across samples (seed 000
  Sec. 4.2.2, Fig. 8: normal vs radial base), and the exploding inverses (seed 000 Sec. 5.1):
  samples with NaN/inf pixels (counted, left out of every mean, the run flagged) and samples
  with pixels far outside the ground truth's range (counted, kept, flagged). per_image.csv: one
  row per (image, estimator) with psnr/ssim, sample_psnr/sample_ssim (its first draw), and the
  image's pixel_std (unclipped draws) and draw counts, repeated on each estimator's row.
- `point`: any method's point estimate, in batches.
- sweeps (`SWEEPS`): `refine`, sample refinement over lambda (seed 000 Table 4).

Nothing here plots or formats; the report only reads these files.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from genrecon.atomic import atomic_write, write_text_atomic
from genrecon.data.base import Dataset, GroupScorer, Split
from genrecon.methods.base import Method, PosteriorSampler
from genrecon.metrics import RANGE_MARGIN
from genrecon.physics.base import LinearPhysics

EXAMPLES = 4  # test images whose reconstructions are saved for the report's figures


def summarise(rows: list[dict], keys=("psnr", "ssim")) -> dict[str, float]:
    """Mean and std over images of each key; `n` counts the images that have a score.

    An image whose every draw was non-finite has no estimate and NaN scores (see `posterior`);
    it is left out here *and* `n` says so, instead of pandas skipping the NaN silently while `n`
    still claims the whole split.
    """
    frame = pd.DataFrame(rows, columns=list(keys)).dropna(subset=list(keys))
    out: dict[str, float] = {"n": len(frame)}
    for key in keys:
        out[f"{key}_mean"] = float(frame[key].mean())
        out[f"{key}_std"] = float(frame[key].std(ddof=0))
    return out


# Every output is written atomically (genrecon.atomic): a job that fails or is killed leaves the
# old file or none, never a torn one that a rerun of the pipeline would take as finished.


def write_rows(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """`np.savez_compressed`, atomically (to a file object, so no `.npz` is appended)."""
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


# --- exploding inverses (seed 000 Sec. 5.1) ---------------------------------------------------

RANGE_RULE = (
    "outside [min(gt) - {m:g}·L, max(gt) + {m:g}·L] with L = max(gt) - min(gt), the ground "
    "truth's data range (the PSNR/SSIM convention)"
)
DROPPED_RULE = (
    "samples with a NaN/inf pixel are left out of the conditional means, the sample-count "
    "curve and the pixel-wise std; images with no finite sample are not scored (n counts the "
    "scored images); finite out-of-range samples are kept (they are the model's draws)"
)


def plausible_range(truth: np.ndarray, margin: float = RANGE_MARGIN) -> tuple[float, float]:
    """[min(gt) - margin·L, max(gt) + margin·L], L = max(gt) - min(gt): where a sample may lie.

    Why the ground truth's own range, widened by its data range L, rather than the dataset's
    nominal range (e.g. [0, 1] for CT): posterior samples legitimately scatter a little outside
    [min(gt), max(gt)] (a normal-base flow puts small negative values in the air around the body,
    and the smoke models are trained on unclipped noisy images), so a zero-margin rule would flag
    nearly every sample and say nothing. A pixel more than L outside the range is off by more than
    the image's whole dynamic range: no posterior spread explains that, only a numerically
    exploding inverse (seed 000 Sec. 5.1, Fig. 10). L is the same data range PSNR and SSIM use
    (genrecon.metrics), so the rule needs no per-dataset constant and works for fastMRI's
    unnormalised magnitudes as well as for [0, 1] images. (For a constant ground truth, L = 0 and
    the range is that value; PSNR is undefined there anyway.)
    """
    low, high = float(np.min(truth)), float(np.max(truth))
    width = margin * (high - low)
    return low - width, high + width


def draw_check(samples: torch.Tensor, bounds: tuple[float, float]) -> dict[str, Any]:
    """Which of one image's draws exploded: non-finite, or finite but out of `bounds`.

    Two disjoint kinds of sample, so the counts add up: a sample with any NaN/inf pixel is
    `nonfinite` (and is dropped from the means: one NaN would make every mean NaN, one inf every
    PSNR 0); a finite sample with any pixel outside `bounds` is `out_of_range` (and is kept: it
    is what the model drew, and the clipped-mean row shows what clipping it changes). Pixel
    counts follow the same split: NaN/inf pixels of all draws, out-of-range pixels of the finite
    draws. Returns the per-sample `finite` mask (a tensor) beside the integer counts.
    """
    flat = samples.reshape(len(samples), -1)
    bad = ~torch.isfinite(flat)
    finite = ~bad.any(1)
    outside = (flat < bounds[0]) | (flat > bounds[1])  # NaN compares False: finite pixels only
    outside &= finite[:, None]
    return {
        "finite": finite,
        "samples": len(samples),
        "finite_samples": int(finite.sum()),
        "nonfinite_samples": int((~finite).sum()),
        "nonfinite_pixels": int(bad.sum()),
        "out_of_range_samples": int(outside.any(1).sum()),
        "out_of_range_pixels": int(outside.sum()),
    }


COUNTS = (
    "samples",
    "finite_samples",
    "nonfinite_samples",
    "nonfinite_pixels",
    "out_of_range_samples",
    "out_of_range_pixels",
)


def exploding_summary(
    per_image: list[dict[str, Any]], margin: float = RANGE_MARGIN
) -> dict[str, Any]:
    """Totals over the split of `draw_check`'s counts, and whether the run is flagged.

    Flagged as soon as one sample is non-finite or out of range: a single exploding inverse means
    the network is numerically non-invertible on some input, which the reader of a PSNR must
    know even when the mean hardly moves.
    """
    totals = {key: int(sum(image[key] for image in per_image)) for key in COUNTS}
    return {
        "n": len(per_image),
        **totals,
        "images_with_nonfinite": sum(image["nonfinite_samples"] > 0 for image in per_image),
        "images_with_out_of_range": sum(image["out_of_range_samples"] > 0 for image in per_image),
        "images_without_finite_sample": sum(image["finite_samples"] == 0 for image in per_image),
        "flagged": bool(totals["nonfinite_samples"] or totals["out_of_range_samples"]),
        "range_margin": margin,
        "out_of_range": RANGE_RULE.format(m=margin),
        "nonfinite": DROPPED_RULE,
    }


# --- the estimators over the draws -----------------------------------------------------------


def running_means(
    samples: torch.Tensor, counts: list[int], keep: torch.Tensor | None = None
) -> dict[int, np.ndarray | None]:
    """Conditional means of the kept samples among the first k draws, for each k in `counts`.

    One set of draws serves every k (seed 001 Fig. 4), summed in float64 block by block, so a
    sweep to 1000 samples needs no cumulative copy of all draws. `keep` (default: all) masks out
    non-finite draws; a k whose first k draws hold no kept sample has no mean (None).
    """
    keep = torch.ones(len(samples), dtype=torch.bool) if keep is None else keep
    total = torch.zeros(samples.shape[1:], dtype=torch.float64)
    seen, start, out = 0, 0, {}
    for k in sorted(c for c in set(counts) if c <= len(samples)):
        block, mask = samples[start:k], keep[start:k]
        block = block if bool(mask.all()) else block[mask]
        total += block.double().sum(0)
        seen, start = seen + len(block), k
        out[k] = (total / seen).float().numpy() if seen else None
    return out


def pixel_std(samples: torch.Tensor, keep: torch.Tensor | None = None) -> np.ndarray | None:
    """Pixel-wise std across the kept draws (population std, ddof = 0, like numpy's default).

    The spread Sec. 4.2.2 of seed 000 compares between base distributions (Fig. 8); None when
    no draw is kept.
    """
    kept = samples if keep is None or bool(keep.all()) else samples[keep]
    if len(kept) == 0:
        return None
    return kept.double().std(0, correction=0).numpy()


def _scores(dataset: Dataset, estimate: np.ndarray | None, truth: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM of one estimate; NaN for an image without one (every draw exploded)."""
    if estimate is None:
        return {"psnr": float("nan"), "ssim": float("nan")}
    return dataset.metrics(estimate[None], truth[None])[0]


def _cond(split: Split, method: Method, index) -> torch.Tensor | None:
    stack = split.conditioning(method.conditioning)
    return None if stack is None else torch.from_numpy(np.asarray(stack[index], np.float32))


def _draws(method: PosteriorSampler, split: Split, physics: LinearPhysics, num: int, settings):
    """(index, ground truth, its `num` draws) per image, drawn for several images per call when
    `num` is below `batch_samples` (the sampler may then batch draws across images)."""
    per_call = max(1, int(settings.get("batch_samples", num)) // num)
    bar = tqdm(total=len(split), desc="posterior samples")
    for start in range(0, len(split), per_call):
        index = list(range(start, min(start + per_call, len(split))))
        items = [split[i] for i in index]
        ys = [torch.from_numpy(y) for _, y, _ in items]
        samples = method.sample_images(ys, physics, _cond(split, method, index), index, num)
        for i, (truth, _, _), draws in zip(index, items, samples, strict=True):
            yield i, truth, draws
            bar.update()
    bar.close()


def posterior(
    method: PosteriorSampler,
    dataset: Dataset,
    split: Split,
    physics: LinearPhysics,
    settings: dict,
    out_dir: Path,
) -> dict:
    """Conditional means, the sample-count curve, single-sample quality, spread, explosions.

    Per image, one set of `num_samples` draws feeds everything: the conditional mean of the
    unclipped samples (the papers' estimator) and of the clipped ones (extra row); the curve over
    k from the first k draws; the first draw alone (the curve's k = 1: seed 000 Sec. 4.2.2's
    single-sample quality); the mean over pixels of the pixel-wise std across the unclipped draws
    (Fig. 8's spread); and the exploding-inverse counts (`draw_check`). Non-finite draws are left
    out of all of these and counted; see `exploding_summary` for the flag.
    """
    out_dir = Path(out_dir)
    num, clip = settings["num_samples"], settings.get("clip")
    counts = [k for k in settings["sample_counts"] if k <= num]
    ks = sorted({1, num, *counts})  # k = 1 (one sample) and k = num (the estimate) always
    estimators = {"mean": f"mean of {num} unclipped samples"}
    if clip:
        estimators["clipped_mean"] = f"mean of {num} samples clipped to [{clip[0]:g}, {clip[1]:g}]"
    rows: list[dict] = []
    checks: list[dict[str, Any]] = []
    curves: dict[str, dict[int, list[dict]]] = {e: {k: [] for k in ks} for e in estimators}
    spread: list[dict[str, float]] = []
    saved: dict[str, list] = {k: [] for k in ("truth", "cond", "point", "std", "samples")}
    scorer = dataset.group_scorer(split)
    for i, truth, samples in _draws(method, split, physics, num, settings):
        check = draw_check(samples, plausible_range(truth))
        keep = check.pop("finite")
        checks.append(check)
        draws = {"mean": samples}
        if clip:
            draws["clipped_mean"] = samples.clamp(*clip)
        std = pixel_std(samples, keep)
        spread.append({"pixel_std": float("nan") if std is None else float(std.mean())})
        means: dict[str, dict[int, np.ndarray | None]] = {}
        for estimator, stack in draws.items():
            means[estimator] = running_means(stack, ks, keep)
            for k, mean_k in means[estimator].items():
                curves[estimator][k].append(_scores(dataset, mean_k, truth))
            if scorer is not None:
                scorer.add(estimator, i, means[estimator][num])
            rows.append(
                {
                    "index": i,
                    "estimator": estimator,
                    **curves[estimator][num][-1],
                    **{f"sample_{m}": v for m, v in curves[estimator][1][-1].items()},
                    "pixel_std": spread[-1]["pixel_std"],
                    **check,
                }
            )
        if i < EXAMPLES:
            shown = draws["clipped_mean" if clip else "mean"]
            cond = _cond(split, method, i)
            estimate = means["mean"][num]
            shown_std = pixel_std(shown, keep)
            values = (
                truth,
                cond.numpy() if cond is not None else split[i][1],
                np.full_like(truth, np.nan) if estimate is None else estimate,
                np.full_like(truth, np.nan) if shown_std is None else shown_std.astype(np.float32),
                shown[:3].numpy(),
            )
            for key, value in zip(saved, values, strict=True):
                saved[key].append(value)
    write_rows(out_dir / "per_image.csv", rows)
    write_npz(out_dir / "examples.npz", **{k: np.stack(v) for k, v in saved.items()})
    frame = pd.DataFrame(rows)
    return {
        **_grouped(scorer, out_dir, estimators),
        "n": len(split),
        "num_samples": num,
        "clip": list(clip) if clip else None,
        "estimators": {
            name: {**summarise(frame[frame.estimator == name].to_dict("records")), "label": label}
            for name, label in estimators.items()
        },
        "curves": {
            "num_samples": [
                {"num_samples": k, "estimator": name, **summarise(by_k[k])}
                for name, by_k in curves.items()
                for k in counts
            ]
        },
        "single_sample": {
            **summarise(curves["mean"][1]),
            "label": "the first of the draws, unclipped (the curve's k = 1)",
        },
        "pixel_std": {
            **summarise(spread, ("pixel_std",)),
            "label": f"mean over pixels of the pixel-wise std of {num} unclipped samples",
        },
        "exploding": exploding_summary(checks),
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
    scorer = dataset.group_scorer(split)
    for index in tqdm(split.batches(batch), desc=f"{method.name} reconstructions"):
        start = int(index[0])
        y = torch.from_numpy(np.asarray(split.y[index], np.float32))
        estimate = method.reconstruct(y, physics, _cond(split, method, index), index.tolist())
        reco = estimate.point.detach().cpu().numpy()
        points.append(reco[: max(0, EXAMPLES - start)])
        for i, scores in zip(index, dataset.metrics(reco, np.asarray(split.x[index])), strict=True):
            rows.append({"index": int(i), "estimator": "point", **scores})
        for i, estimate in zip(index, reco, strict=True):
            if scorer is not None:
                scorer.add("point", int(i), estimate)
    write_rows(out_dir / "per_image.csv", rows)
    shown = min(EXAMPLES, len(split))
    write_npz(
        out_dir / "examples.npz",
        truth=np.asarray(split.x[:shown]),
        point=np.concatenate(points)[:shown],
    )
    label = f"{method.name} reconstruction"
    return {
        **_grouped(scorer, out_dir, {"point": label}),
        "n": len(split),
        "estimators": {"point": {**summarise(rows), "label": label}},
    }


def _grouped(scorer: GroupScorer | None, out_dir: Path, estimators: dict[str, str]) -> dict:
    """The dataset's own scores (e.g. fastMRI's per volume, PD / PDFS), written beside
    per_image.csv; {} for datasets that score per image only."""
    if scorer is None:
        return {}
    rows, summary = scorer.finish()
    write_rows(Path(out_dir) / scorer.filename, rows)
    return {
        "groups": {
            "label": scorer.label,
            "file": scorer.filename,
            "estimators": {
                name: {**summary[name], "label": label} for name, label in estimators.items()
            },
        }
    }


PROTOCOLS: dict[str, Callable[..., dict]] = {"posterior": posterior, "point": point}


def refine_sweep(
    method: Method, dataset: Dataset, split: Split, physics: LinearPhysics, settings: dict, clip
) -> list[dict]:
    """Sample refinement (seed 000 Eq. 22) over lambda, from one posterior sample per image.

    The start is one posterior sample per image, seeded per image and clipped like the
    evaluation's samples when `clip` is set. Those draws are checked for exploding inverses as
    the posterior protocol checks its own (`draw_check`, before clipping); every row carries the
    counts (`start_*`), so the sweep's table rows are flagged like the others.
    """
    if not hasattr(method, "refine"):
        raise TypeError(f"sweep 'refine' needs a posterior sampler with `refine`; {method.name}")
    n = min(settings["num_images"], len(split))
    cond = _cond(split, method, np.arange(n))
    ys = [torch.from_numpy(split[i][1]) for i in range(n)]
    start = method.sample_images(ys, physics, cond, list(range(n)), 1)[:, 0]
    y = torch.from_numpy(np.asarray(split.y[:n], np.float32))
    truth = np.asarray(split.x[:n])
    checks = [draw_check(start[i : i + 1], plausible_range(truth[i])) for i in range(n)]
    boom = exploding_summary([{k: v for k, v in c.items() if k != "finite"} for c in checks])
    flags = {f"start_{key}": boom[key] for key in START_COUNTS}
    if clip:
        start = start.clamp(*clip)
    out = []
    for lam in tqdm(settings["lambdas"], desc="refinement sweep"):
        refined = method.refine(
            y, physics, cond, start, float(lam), settings["steps"], settings["lr"]
        )
        scores = summarise(dataset.metrics(refined.numpy(), truth))
        out.append({"value": float(lam), **scores, **flags})
    return out


#: the exploding-inverse counts of the refinement's starting draws, in every sweep row
START_COUNTS = (
    "flagged",
    "n",
    "samples",
    "nonfinite_samples",
    "out_of_range_samples",
    "images_without_finite_sample",
)


SWEEPS: dict[str, Callable[..., list[dict]]] = {"refine": refine_sweep}

# seed 002's grid of measurement settings registers itself in PROTOCOLS; imported last because
# it builds on the helpers above (and as a module, so either may be imported first)
import genrecon.evaluation.grid  # noqa: E402, F401
import genrecon.evaluation.inversion  # noqa: E402, F401  (seed 003's protocol)
