"""The cINN as a method, and the evaluation protocols: per-image seeding, estimators, sweeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecon.data.base import Split, TrainingPairs
from genrecon.data.lodopab import LoDoPaB
from genrecon.evaluation import protocols
from genrecon.methods import method_class
from genrecon.training import fit, load_model

TRAIN = {
    "steps": 6,
    "batch_size": 4,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "clip": 1.0,
    "val_every": 3,
    "plateau_patience": 2,
}


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """A tiny LoDoPaB-format dataset and a cINN trained on it for a few steps."""
    cfg = {
        "source": "synthetic",
        "image_size": 16,
        "num_angles": 12,
        "upsample": 2,
        "photons": 4096,
        "slices_per_file": 4,
        "splits": {"train": 8, "validation": 4, "test": 4},
        "fbp": {"filter": "Hann", "frequency_scaling": 0.641025641},
        "conditioning_fbp": {"filter": "Hann", "frequency_scaling": 1.0},
    }
    arch = {
        "levels": 2,
        "cond_levels": 2,
        "blocks_per_level": 2,
        "uncond_blocks": 1,
        "cond_channels": [4, 8, 8],
        "cond_features": 4,
        "dense_dim": 16,
        "dense_cond": 4,
        "dense_blocks": 2,
    }
    root = tmp_path_factory.mktemp("ct")
    dataset = LoDoPaB(cfg, seed=0)
    dataset.prepare(root / "data")
    method = method_class("cinn")(arch="tiny", base="normal", train_noise=0.005)
    method.conditioning = "fbp"
    job = {"variant": {"architecture": arch}, "seed": 0}
    train, val = dataset.split(root / "data", "train"), dataset.split(root / "data", "validation")
    spec = method.spec(job, train.x.shape[1:])
    fit(
        lambda: method.build(spec),
        spec,
        TrainingPairs(train, "fbp"),
        TrainingPairs(val, "fbp"),
        TRAIN,
        root / "model",
        seed=0,
    )
    model, _ = load_model(root / "model" / "best.pt", method.build)
    return dataset, root, method, model


def _method(ct, **settings):
    dataset, root, method, model = ct
    return method.attach(model, seed=1, settings=settings)


def test_posterior_numbers_do_not_depend_on_the_batch_of_samples(ct, tmp_path):
    dataset, root = ct[0], ct[1]
    split, physics = dataset.split(root / "data", "test"), dataset.physics(root / "data")
    settings = {"num_samples": 6, "clip": [0.0, 1.0], "sample_counts": [1, 3, 6, 10]}
    a = protocols.posterior(
        _method(ct, batch_samples=4), dataset, split, physics, settings, tmp_path
    )
    b = protocols.posterior(
        _method(ct, batch_samples=6), dataset, split, physics, settings, tmp_path
    )
    assert a == b  # per-image generators: batch size does not change the numbers
    assert set(a["estimators"]) == {"mean", "clipped_mean"}
    assert "unclipped" in a["estimators"]["mean"]["label"]
    curve = [r for r in a["curves"]["num_samples"] if r["estimator"] == "mean"]
    assert [r["num_samples"] for r in curve] == [1, 3, 6]  # 10 > num_samples is dropped
    assert curve[-1]["psnr_mean"] == pytest.approx(a["estimators"]["mean"]["psnr_mean"])
    for stats in a["estimators"].values():
        assert np.isfinite([stats["psnr_mean"], stats["ssim_mean"]]).all()
    examples = np.load(tmp_path / "examples.npz")
    assert examples["samples"].shape == (4, 3, 16, 16) and examples["cond"].shape == (4, 16, 16)


def test_clipping_changes_only_the_clipped_estimator(ct, tmp_path):
    dataset, root = ct[0], ct[1]
    split, physics = dataset.split(root / "data", "test"), dataset.physics(root / "data")
    settings = {"num_samples": 4, "sample_counts": [4]}
    clipped = protocols.posterior(
        _method(ct), dataset, split, physics, {**settings, "clip": [0.0, 1.0]}, tmp_path
    )
    raw = protocols.posterior(_method(ct), dataset, split, physics, settings, tmp_path)
    assert set(raw["estimators"]) == {"mean"}
    assert raw["estimators"]["mean"] == clipped["estimators"]["mean"]


def test_refinement_fits_the_data_and_the_prior_pulls_towards_high_density(ct):
    dataset, root = ct[0], ct[1]
    method = _method(ct)
    split, physics = dataset.split(root / "data", "test", 2), dataset.physics(root / "data")
    cfg = {"lambdas": [0.0], "steps": 1, "lr": 1e-4, "num_images": 2}
    before = protocols.refine_sweep(method, dataset, split, physics, cfg, None)[0]
    after = protocols.refine_sweep(
        method, dataset, split, physics, {**cfg, "steps": 150, "lr": 1e-2}, None
    )[0]
    assert after["psnr_mean"] > before["psnr_mean"]  # lambda = 0: least squares fits y better
    y = torch.from_numpy(split.y[:2])
    cond = torch.from_numpy(split.cond["fbp"][:2])
    start = torch.from_numpy(split.cond["fbp"][:2]).clamp(min=0)
    free = method.refine(y, physics, cond, start, 0.0, 30, 1e-2)
    pulled = method.refine(y, physics, cond, start, 10.0, 30, 1e-2)
    nll = method.model.flow.nll_per_dim
    assert nll(pulled, cond).mean() < nll(free, cond).mean()  # the prior term acts
    assert torch.isfinite(pulled).all() and (pulled >= 0).all()
    assert torch.is_grad_enabled()


def test_point_protocol_scores_the_method_per_image(ct, tmp_path):
    dataset, root = ct[0], ct[1]
    split, physics = dataset.split(root / "data", "test"), dataset.physics(root / "data")
    fbp = method_class("fbp")()
    summary = protocols.point(fbp, dataset, split, physics, {}, tmp_path, batch=3)
    expected = dataset.metrics(physics.A_dagger(torch.from_numpy(split.y)).numpy(), split.x)
    assert summary["estimators"]["point"]["psnr_mean"] == pytest.approx(
        np.mean([m["psnr"] for m in expected])
    )
    assert summary["n"] == 4 and len((tmp_path / "per_image.csv").read_text().splitlines()) == 5


def test_lazy_and_in_memory_training_agree(ct, tmp_path):
    """Paper-scale training reads batches from HDF5 on demand: same weights as in memory."""
    dataset, root, method, _ = ct
    spec = load_model(root / "model" / "best.pt", method.build)[1]["spec"]
    val = TrainingPairs(dataset.split(root / "data", "validation"), "fbp")
    results = [
        fit(
            lambda: method.build(spec),
            spec,
            TrainingPairs(dataset.split(root / "data", "train", lazy=lazy), "fbp"),
            val,
            {**TRAIN, "steps": 4},
            tmp_path / str(lazy),
            seed=0,
        )
        for lazy in (False, True)
    ]
    assert results[0] == results[1]
    assert isinstance(dataset.split(root / "data", "train", lazy=True), Split)


def test_training_noise_is_added_after_padding_then_clipped(ct):
    """FACTS: pad first, then noise, then clip; noise before the reflect padding would make the
    border an exact copy of interior pixels (an unbounded likelihood on those dimensions)."""
    _, _, method, model = ct
    spec = {**model.spec, "image_size": 14, "noise_clip": [0.0, 1.0], "train_noise": 0.05}
    noisy = method.build(spec)
    x = torch.full((2, 14, 14), 0.02)  # 14 -> padded to the flow's size
    padded = noisy.perturbed(x, torch.Generator().manual_seed(0))
    assert padded.shape[-1] == noisy.flow.size > 14
    assert padded.min() >= 0.0 and (padded == 0).any()  # clipped after the noise
    border, mirror = padded[..., 14:, :14], padded[..., 11:13, :14].flip(-2)  # reflect: 14<-12
    assert not torch.equal(border, mirror[..., : border.shape[-2], :])  # noise is independent
    free = method.build({**spec, "noise_clip": None})
    assert free.perturbed(x, torch.Generator().manual_seed(0)).min() < 0.0  # no clip: Gaussian
    assert torch.equal(free.perturbed(x, None), free.flow.pad(x))  # validation: untouched
