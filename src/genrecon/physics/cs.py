"""Gaussian compressed sensing (seed 000, Sec. 3.1): y = A x + noise, A_ij ~ N(0, 1/m).

Two model-based inversion layers condition the cINN:
- `pinv`: the Moore-Penrose pseudo-inverse A^+ y;
- `tikhonov`: (A^T A + lam * D^T D)^{-1} A^T y with D the forward-difference gradient.
  The paper calls this second one "TV-regularised" and prints it without the inverse; what it
  is, and what is computed here, is the quadratic-gradient (H^1 / Tikhonov) solution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def gradient_matrix(size: int) -> np.ndarray:
    """Forward differences (Neumann boundary) in both directions, stacked: (2 n, n), n = size^2."""
    d1 = np.zeros((size, size), dtype=np.float64)
    idx = np.arange(size - 1)
    d1[idx, idx] = -1.0
    d1[idx, idx + 1] = 1.0
    eye = np.eye(size)
    return np.vstack([np.kron(d1, eye), np.kron(eye, d1)])


@dataclass
class GaussianCS:
    """The measurement operator and its two inversion layers for flattened square images."""

    matrix: np.ndarray  # (m, n)
    image_size: int

    @classmethod
    def create(cls, m: int, image_size: int, seed: int) -> GaussianCS:
        n = image_size * image_size
        rng = np.random.default_rng(seed)
        return cls(rng.normal(0.0, 1.0 / np.sqrt(m), size=(m, n)), image_size)

    def forward(self, images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1) @ self.matrix.T

    def measure(self, images: np.ndarray, noise_rel: float, rng: np.random.Generator) -> np.ndarray:
        """Noisy measurements, relative noise per image: ||e|| = noise_rel * ||A x||."""
        clean = self.forward(images)
        noise = rng.normal(size=clean.shape)
        noise *= (
            noise_rel
            * np.linalg.norm(clean, axis=1, keepdims=True)
            / np.linalg.norm(noise, axis=1, keepdims=True)
        )
        return clean + noise

    def inversion(self, kind: str, lam: float = 0.02) -> np.ndarray:
        """The (n, m) matrix of an inversion layer: `pinv` or `tikhonov`."""
        if kind == "pinv":
            return np.linalg.pinv(self.matrix)
        if kind == "tikhonov":
            grad = gradient_matrix(self.image_size)
            normal = self.matrix.T @ self.matrix + lam * grad.T @ grad
            return np.linalg.solve(normal, self.matrix.T)
        raise ValueError(f"unknown CS inversion {kind!r}: expected 'pinv' or 'tikhonov'")
