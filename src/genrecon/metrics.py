"""PSNR and SSIM with the papers' data-range conventions.

LoDoPaB and MNIST (seed 000 App. A.3, dival): per image, data range L = max(gt) - min(gt);
SSIM = scikit-image defaults (7x7 uniform window) with that data range.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


def data_range(truth: np.ndarray) -> float:
    return float(truth.max() - truth.min())


# The plausible range of a posterior sample, in units of the ground truth's data range L: a
# pixel more than RANGE_MARGIN·L outside [min(gt), max(gt)] counts as out of range (an exploding
# inverse; genrecon.evaluation.protocols.plausible_range says why this rule).
RANGE_MARGIN = 1.0


def psnr(reconstruction: np.ndarray, truth: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(reconstruction, np.float64) - truth) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * np.log10(data_range(truth) ** 2 / mse)


def ssim(reconstruction: np.ndarray, truth: np.ndarray) -> float:
    return float(
        structural_similarity(
            np.asarray(reconstruction, np.float64),
            np.asarray(truth, np.float64),
            data_range=data_range(truth),
        )
    )


def per_image(reconstructions: np.ndarray, truths: np.ndarray) -> list[dict[str, float]]:
    return [
        {"psnr": psnr(r, t), "ssim": ssim(r, t)}
        for r, t in zip(reconstructions, truths, strict=True)
    ]
