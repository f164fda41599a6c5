"""The cINN as a method, and the evaluation protocols: per-image seeding, estimators, sweeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_lodopab
from genrecon.data.base import Dataset, Split, TrainingPairs
from genrecon.data.lodopab import LoDoPaB
from genrecon.evaluation import protocols
from genrecon.methods import method_class
from genrecon.methods.base import PosteriorSampler
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
    cfg = {**tiny_lodopab(), "splits": {"train": 8, "validation": 4, "test": 4}}
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
    across = protocols.posterior(  # 4 images per inverse pass, with their batch_samples
        _method(ct, batch_samples=24),
        dataset,
        split,
        physics,
        {**settings, "batch_samples": 24},
        tmp_path,
    )
    assert a == b == across  # per-image generators: the batching does not change the numbers
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


# --- exploding inverses, single-sample quality, pixel-wise spread (fake sampler, no training) ---

SIZE, NUM = 8, 6


class ScriptedSampler(PosteriorSampler):
    """Seeded Gaussian draws around the truth, with chosen draws of chosen images broken.

    `broken[image] = [(draw, kind, pixels)]`: kind 'nan', 'inf' or 'big' (a finite value far
    outside the plausible range) written into the first `pixels` pixels of that draw.
    """

    name = "scripted"

    def __init__(self, truths: np.ndarray, broken: dict[int, list[tuple[int, str, int]]]):
        self.truths, self.broken = truths, broken

    def sample(self, y, physics, cond, index, num):
        gen = torch.Generator().manual_seed(index)
        out = torch.from_numpy(self.truths[index]) + 0.05 * torch.randn(
            (num, SIZE, SIZE), generator=gen
        )
        values = {"nan": float("nan"), "inf": float("inf"), "big": 1e6}
        for draw, kind, pixels in self.broken.get(index, []):
            out[draw].view(-1)[:pixels] = values[kind]
        return out


def _fake_split(n: int = 4) -> Split:
    rng = np.random.default_rng(0)
    x = rng.random((n, SIZE, SIZE)).astype(np.float32)
    return Split(x=x, y=x.copy())


def _run(tmp_path, broken, num=NUM, counts=(1, 2, 6)):
    split = _fake_split()
    sampler = ScriptedSampler(np.asarray(split.x), broken)
    settings = {"num_samples": num, "clip": [0.0, 1.0], "sample_counts": list(counts)}
    summary = protocols.posterior(sampler, Dataset({}, 0), split, None, settings, tmp_path)
    return summary, sampler, split


def test_exploding_draws_are_counted_exactly_and_flag_the_run(tmp_path):
    broken = {
        0: [(2, "nan", 3), (4, "inf", 1)],  # two non-finite draws, 4 bad pixels
        1: [(0, "big", 5), (3, "big", 2), (3, "nan", 1)],  # draw 3 is both: counted non-finite
        3: [(d, "nan", 1) for d in range(NUM)],  # every draw: no estimate for image 3
    }
    summary, _, _ = _run(tmp_path, broken)
    boom = summary["exploding"]
    assert boom["samples"] == 4 * NUM
    assert boom["nonfinite_samples"] == 2 + 1 + NUM
    assert boom["nonfinite_pixels"] == 4 + 1 + NUM
    assert boom["out_of_range_samples"] == 1  # draw 0 of image 1; its draw 3 is non-finite
    assert boom["out_of_range_pixels"] == 5
    assert boom["finite_samples"] == 4 * NUM - boom["nonfinite_samples"]
    assert (boom["images_with_nonfinite"], boom["images_with_out_of_range"]) == (3, 1)
    assert boom["images_without_finite_sample"] == 1 and boom["flagged"] is True
    # image 3 has no estimate: it is not scored, and n says so; nothing became NaN
    for block in (*summary["estimators"].values(), summary["single_sample"]):
        assert block["n"] == 3 and np.isfinite(block["psnr_mean"])
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    mean_rows = per_image[per_image.estimator == "mean"].set_index("index")
    assert list(mean_rows["nonfinite_samples"]) == [2, 1, 0, NUM]
    assert list(mean_rows["out_of_range_pixels"]) == [0, 5, 0, 0]
    assert np.isnan(mean_rows.loc[3, "psnr"]) and np.isfinite(mean_rows.loc[:2, "psnr"]).all()
    # image 0's first draw is fine, image 1's first draw is the out-of-range one (kept)
    assert mean_rows.loc[1, "sample_psnr"] < mean_rows.loc[0, "sample_psnr"] - 20


def test_non_finite_draws_are_left_out_of_the_mean_not_poisoning_it(tmp_path):
    broken = {0: [(1, "nan", 2), (5, "inf", 1)]}
    summary, sampler, split = _run(tmp_path, broken)
    draws = sampler.sample(None, None, None, 0, NUM)
    finite = draws[[0, 2, 3, 4]].double().mean(0).float().numpy()
    expected = Dataset({}, 0).metrics(finite[None], np.asarray(split.x[:1]))[0]
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    row = per_image[(per_image["index"] == 0) & (per_image.estimator == "mean")].iloc[0]
    assert row["psnr"] == pytest.approx(expected["psnr"], rel=1e-6)
    # the curve's k = 2 uses the finite draws among the first two: draw 0 alone
    one = Dataset({}, 0).metrics(draws[:1].numpy(), np.asarray(split.x[:1]))[0]
    assert protocols.running_means(draws, [2], torch.isfinite(draws).flatten(1).all(1))[2] == (
        pytest.approx(draws[0].numpy())
    )
    assert row["sample_psnr"] == pytest.approx(one["psnr"])
    assert summary["estimators"]["mean"]["n"] == 4


def test_single_sample_and_pixel_std_come_from_the_same_draws(tmp_path):
    summary, sampler, split = _run(tmp_path, {})
    dataset, truths = Dataset({}, 0), np.asarray(split.x)
    draws = [sampler.sample(None, None, None, i, NUM).numpy() for i in range(len(split))]
    first = [dataset.metrics(d[:1], t[None])[0] for d, t in zip(draws, truths, strict=True)]
    assert summary["single_sample"]["psnr_mean"] == pytest.approx(
        np.mean([m["psnr"] for m in first])
    )
    assert summary["single_sample"]["ssim_std"] == pytest.approx(np.std([m["ssim"] for m in first]))
    one = [c for c in summary["curves"]["num_samples"] if c["num_samples"] == 1]
    assert one[0]["estimator"] == "mean" and one[0]["psnr_mean"] == pytest.approx(
        summary["single_sample"]["psnr_mean"]
    )
    per_image = np.array([np.std(d.astype(np.float64), axis=0).mean() for d in draws])
    assert summary["pixel_std"]["pixel_std_mean"] == pytest.approx(per_image.mean(), rel=1e-9)
    assert summary["pixel_std"]["pixel_std_std"] == pytest.approx(per_image.std(), rel=1e-6)
    assert summary["pixel_std"]["n"] == len(split)


def test_single_sample_is_measured_even_when_the_curve_skips_k_1(tmp_path):
    summary, _, _ = _run(tmp_path, {}, counts=(2, 6))
    assert [c["num_samples"] for c in summary["curves"]["num_samples"]] == [2, 6, 2, 6]
    assert summary["single_sample"]["n"] == 4


def test_well_behaved_draws_give_zero_counts_and_no_flag(tmp_path):
    summary, _, _ = _run(tmp_path, {})
    boom = summary["exploding"]
    assert boom["flagged"] is False
    for key in ("nonfinite_samples", "nonfinite_pixels", "out_of_range_samples"):
        assert boom[key] == 0
    assert boom["out_of_range_pixels"] == 0 and boom["finite_samples"] == 4 * NUM


def test_plausible_range_is_the_truths_range_widened_by_its_data_range():
    truth = np.array([[0.2, 0.5], [0.3, 0.6]])
    low, high = protocols.plausible_range(truth)
    assert (low, high) == pytest.approx((0.2 - 0.4, 0.6 + 0.4))
    check = protocols.draw_check(
        torch.tensor([[[-0.19, 0.99]], [[-0.21, 0.5]], [[0.5, 1.01]]]), (low, high)
    )
    assert check["out_of_range_samples"] == 2 and check["out_of_range_pixels"] == 2


def test_out_of_range_draws_alone_flag_the_run_and_stay_in_the_mean(tmp_path):
    clean, _, _ = _run(tmp_path / "clean", {})
    summary, _, _ = _run(tmp_path / "big", {2: [(1, "big", 1)]})
    boom = summary["exploding"]
    assert boom["flagged"] is True and boom["nonfinite_samples"] == 0
    assert (boom["out_of_range_samples"], boom["out_of_range_pixels"]) == (1, 1)
    assert summary["estimators"]["mean"]["n"] == 4  # kept: every image still scored ...
    assert summary["estimators"]["mean"]["psnr_mean"] < clean["estimators"]["mean"]["psnr_mean"]
    # ... where it costs the unclipped mean tens of dB, the clipped mean (clipped to 1) little
    clipped = summary["estimators"]["clipped_mean"]["psnr_mean"]
    assert clipped > summary["estimators"]["mean"]["psnr_mean"] + 20
    assert clipped > clean["estimators"]["clipped_mean"]["psnr_mean"] - 1


class RefiningScriptedSampler(ScriptedSampler):
    """The scripted draws with a refinement that returns its start: the sweep's own checks."""

    def refine(self, y, physics, cond, start, lam, steps, lr):
        return start.clone()


def test_the_refinement_sweep_checks_its_starting_draws_and_flags_every_row():
    split = _fake_split()
    broken = {0: [(0, "nan", 2)], 1: [(0, "big", 3)]}
    sampler = RefiningScriptedSampler(np.asarray(split.x), broken)
    cfg = {"lambdas": [0.0, 1.0], "steps": 1, "lr": 1e-3, "num_images": 4}
    rows = protocols.refine_sweep(sampler, Dataset({}, 0), split, None, cfg, [0.0, 1.0])
    for row in rows:  # one draw per image: image 0's is non-finite, image 1's out of range
        assert (row["start_samples"], row["start_nonfinite_samples"]) == (4, 1)
        assert row["start_out_of_range_samples"] == 1 and row["start_flagged"] is True
        assert row["start_images_without_finite_sample"] == 1
    fine = RefiningScriptedSampler(np.asarray(split.x), {})
    rows = protocols.refine_sweep(fine, Dataset({}, 0), split, None, cfg, None)
    assert all(r["start_flagged"] is False and r["start_nonfinite_samples"] == 0 for r in rows)
