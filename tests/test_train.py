"""The training loop learns, resumes after an interruption, and names the step of a NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecon.data.pairs import Pairs
from genrecon.evaluate import evaluate_baselines, evaluate_model, sweep_refinement
from genrecon.physics.ct import CTGeometry, apply, ray_transform
from genrecon.train import NonFiniteError, load_checkpoint, train


def _cfg(arch, steps):
    return {
        "name": "tiny",
        "dataset": "lodopab",
        "base": "normal",
        "train_noise": 0.005,
        "architecture": arch,
        "train": {
            "steps": steps,
            "batch_size": 4,
            "lr": 1e-3,
            "weight_decay": 0.0,
            "clip": 1.0,
            "val_every": 5,
            "plateau_patience": 2,
        },
    }


def _pairs(rng, n=12, size=16):
    truth = rng.random((n, size, size)).astype(np.float32) * 0.5
    return Pairs(truth, truth + rng.normal(0, 0.05, truth.shape).astype(np.float32))


def test_training_lowers_nll_and_resumes(tmp_path, tiny_arch, rng):
    data = _pairs(rng)
    summary = train(_cfg(tiny_arch, 10), data, data, tmp_path, seed=0)
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert summary["steps"] == 10 and len(history) == 3
    first, last = (float(line.split(",")[2]) for line in (history[1], history[-1]))
    assert last < first
    # "interrupt" by asking for more steps: training continues from step 10, not from 0
    resumed = train(_cfg(tiny_arch, 15), data, data, tmp_path, seed=0)
    assert resumed["steps"] == 15
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 4
    model, state = load_checkpoint(tmp_path / "best.pt")
    assert state["image_size"] == 16 and not model.training


def test_nan_stops_training_naming_the_step(tmp_path, tiny_arch, rng):
    data = _pairs(rng)
    data.truth[:] = np.nan
    with pytest.raises(NonFiniteError, match="step 0: loss is not finite"):
        train(_cfg(tiny_arch, 5), data, data, tmp_path, seed=0)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="best.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "best.pt")


def test_evaluation_and_sample_sweep_on_a_tiny_model(tmp_path, tiny_arch, rng):
    data = _pairs(rng, n=4)
    train(_cfg(tiny_arch, 5), data, data, tmp_path, seed=0)
    model, _ = load_checkpoint(tmp_path / "best.pt")
    summary, sweep = evaluate_model(model, data, 6, 4, 1, tmp_path, [1, 3, 6, 10], (0.0, 1.0))
    assert summary["n"] == 4 and np.isfinite(summary["psnr_mean"])
    assert {"raw_psnr_mean", "raw_ssim_mean"} <= set(summary)
    again, _ = evaluate_model(model, data, 6, 6, 1, tmp_path, [1, 3, 6], (0.0, 1.0))
    assert again == summary  # per-image seeding: batch size does not change the numbers
    assert [r["num_samples"] for r in sweep] == [1, 3, 6]  # 10 > num_samples is dropped
    assert sweep[-1]["psnr_mean"] == pytest.approx(summary["psnr_mean"])  # same draws, k = N
    unclipped, _ = evaluate_model(model, data, 6, 4, 1, tmp_path, [6], None)
    assert unclipped["psnr_mean"] == pytest.approx(summary["raw_psnr_mean"])
    examples = np.load(tmp_path / "examples.npz")
    assert examples["samples"].shape == (4, 3, 16, 16) and examples["std"].shape == (4, 16, 16)


def test_refinement_without_prior_fits_the_data(tmp_path, tiny_arch, rng):
    geometry = CTGeometry(16, 12)
    data = _pairs(rng, n=2)
    observations = np.stack([apply(ray_transform(geometry), x) for x in data.truth])
    train(_cfg(tiny_arch, 5), data, data, tmp_path, seed=0)
    model, _ = load_checkpoint(tmp_path / "best.pt")
    cfg = {"lambdas": [0.0], "steps": 1, "lr": 1e-4, "num_images": 2}
    before = sweep_refinement(model, data, observations, geometry, cfg, seed=0)[0]
    after = sweep_refinement(
        model, data, observations, geometry, {**cfg, "steps": 200, "lr": 1e-2}, seed=0
    )[0]
    assert after["psnr_mean"] > before["psnr_mean"]
    assert torch.is_grad_enabled()


def test_baselines_are_scored_per_method(tmp_path, rng):
    truth = rng.random((3, 8, 8)).astype(np.float32)
    methods = {"close": truth + 0.01, "far": truth + 0.1}
    summary = evaluate_baselines(truth, methods, tmp_path)
    assert summary["close"]["n"] == 3
    assert summary["close"]["psnr_mean"] == pytest.approx(summary["far"]["psnr_mean"] + 20)
    assert len((tmp_path / "per_image.csv").read_text().splitlines()) == 7


def test_lazy_and_in_memory_training_agree(tmp_path, tiny_arch, tiny_lodopab_cfg):
    from genrecon.data.pairs import load_pairs, load_pairs_lazy
    from genrecon.data.prepare import prepare_lodopab

    prepare_lodopab(tmp_path / "data", tiny_lodopab_cfg, seed=0)
    val = load_pairs("lodopab", tmp_path / "data", "validation", {})
    eager = train(
        _cfg(tiny_arch, 6),
        load_pairs("lodopab", tmp_path / "data", "train", {}),
        val,
        tmp_path / "eager",
        seed=0,
    )
    lazy = train(
        _cfg(tiny_arch, 6),
        load_pairs_lazy(tmp_path / "data", "train"),
        val,
        tmp_path / "lazy",
        seed=0,
    )
    assert lazy == eager
