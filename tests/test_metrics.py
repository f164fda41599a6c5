"""PSNR / SSIM against independent references, with the per-image data range (dival's convention).

SSIM is checked against a direct transcription of Wang et al. (2004), Eq. 13, computed window by
window with numpy (not scikit-image, which our metric calls): 7x7 uniform windows, sample
(co)variances (N - 1), K1 = 0.01, K2 = 0.03, the mean over windows that fit inside the image.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from genrecon import metrics


def test_psnr_matches_skimage_with_slice_range(rng):
    truth = rng.random((32, 32)) * 0.6 + 0.1
    reco = truth + rng.normal(0, 0.05, truth.shape)
    expected = peak_signal_noise_ratio(truth, reco, data_range=truth.max() - truth.min())
    assert metrics.psnr(reco, truth) == pytest.approx(expected, rel=1e-12)


def ssim_by_windows(x: np.ndarray, y: np.ndarray, data_range: float, win: int = 7) -> float:
    """Wang et al. 2004, Eq. 13, one 7x7 window at a time (the reference, written out)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            a, b = x[i : i + win, j : j + win].ravel(), y[i : i + win, j : j + win].ravel()
            mu_a, mu_b = a.mean(), b.mean()
            var_a, var_b = a.var(ddof=1), b.var(ddof=1)
            cov = ((a - mu_a) * (b - mu_b)).sum() / (a.size - 1)
            values.append(
                (2 * mu_a * mu_b + c1)
                * (2 * cov + c2)
                / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            )
    return float(np.mean(values))


def test_ssim_matches_the_windowed_definition(rng):
    truth = rng.random((20, 24)) * 0.7
    reco = truth + rng.normal(0, 0.1, truth.shape)
    expected = ssim_by_windows(reco, truth, truth.max() - truth.min())
    assert metrics.ssim(reco, truth) == pytest.approx(expected, rel=1e-9)


def test_psnr_matches_its_definition(rng):
    truth = rng.random((16, 16)) * 0.5 + 0.2
    reco = truth + rng.normal(0, 0.03, truth.shape)
    mse = np.mean((reco - truth) ** 2)
    expected = 10 * np.log10((truth.max() - truth.min()) ** 2 / mse)
    assert metrics.psnr(reco, truth) == pytest.approx(expected, rel=1e-12)


def test_data_range_is_per_image_not_fixed(rng):
    truth = rng.random((16, 16)) * 0.5
    reco = truth + 0.01
    # L = max - min (< 0.5), not 1: a fixed range of 1 would give a higher PSNR.
    assert metrics.psnr(reco, truth) < peak_signal_noise_ratio(truth, reco, data_range=1.0)


def test_perfect_reconstruction():
    truth = np.linspace(0, 1, 64).reshape(8, 8)
    assert metrics.psnr(truth, truth) == float("inf")
    assert metrics.ssim(truth, truth) == pytest.approx(1.0)
