"""Random "body-like" ellipse phantoms for the smoke-scale CT data.

One body ellipse of value U(0.2, 0.3) plus 5-15 interior ellipses of U(-0.1, 0.4), summed,
clipped to [0, 1] and anti-aliased by supersampling. Plain random ellipses with values up to 1
absorb nearly every photon at LoDoPaB's dose; these give LoDoPaB-like FBP quality.
"""

from __future__ import annotations

import numpy as np


def _ellipse_mask(xx, yy, cx, cy, a, b, theta):
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def body_phantom(size: int, rng: np.random.Generator, supersample: int = 4) -> np.ndarray:
    """One phantom on [-1, 1]^2 at `size` x `size`, values in [0, 1], float32."""
    n = size * supersample
    grid = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    xx, yy = np.meshgrid(grid, grid)
    img = np.zeros((n, n))
    body = (rng.uniform(0.0, 0.1), rng.uniform(-0.1, 0.1))
    ba, bb = rng.uniform(0.6, 0.9), rng.uniform(0.5, 0.8)
    btheta = rng.uniform(0, np.pi)
    img += rng.uniform(0.2, 0.3) * _ellipse_mask(xx, yy, *body, ba, bb, btheta)
    for _ in range(rng.integers(5, 16)):
        r = rng.uniform(0, 0.6)
        phi = rng.uniform(0, 2 * np.pi)
        cx, cy = body[0] + r * ba * np.cos(phi), body[1] + r * bb * np.sin(phi)
        a, b = rng.uniform(0.03, 0.3, size=2)
        img += rng.uniform(-0.1, 0.4) * _ellipse_mask(xx, yy, cx, cy, a, b, rng.uniform(0, np.pi))
    img = np.clip(img, 0.0, 1.0)
    img = img.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return img.astype(np.float32)
