"""PSNR / SSIM against scikit-image's reference implementations, with per-image data range."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from genrecon import metrics


def test_psnr_matches_skimage_with_slice_range(rng):
    truth = rng.random((32, 32)) * 0.6 + 0.1
    reco = truth + rng.normal(0, 0.05, truth.shape)
    expected = peak_signal_noise_ratio(truth, reco, data_range=truth.max() - truth.min())
    assert metrics.psnr(reco, truth) == pytest.approx(expected, rel=1e-12)


def test_ssim_matches_skimage_with_slice_range(rng):
    truth = rng.random((32, 32))
    reco = truth + rng.normal(0, 0.1, truth.shape)
    expected = structural_similarity(truth, reco, data_range=truth.max() - truth.min())
    assert metrics.ssim(reco, truth) == pytest.approx(expected, rel=1e-12)


def test_data_range_is_per_image_not_fixed(rng):
    truth = rng.random((16, 16)) * 0.5
    reco = truth + 0.01
    # L = max - min (< 0.5), not 1: a fixed range of 1 would give a higher PSNR.
    assert metrics.psnr(reco, truth) < peak_signal_noise_ratio(truth, reco, data_range=1.0)


def test_perfect_reconstruction():
    truth = np.linspace(0, 1, 64).reshape(8, 8)
    assert metrics.psnr(truth, truth) == float("inf")
    assert metrics.ssim(truth, truth) == pytest.approx(1.0)
