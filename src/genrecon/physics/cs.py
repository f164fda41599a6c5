"""Gaussian compressed sensing (seed 000, Sec. 3.1): y = A x + noise, A_ij ~ N(0, 1/m).

Two model-based inversion layers condition the cINN:
- `pinv`: the Moore-Penrose pseudo-inverse A^+ y;
- `tikhonov`: (A^T A + lam * D^T D)^{-1} A^T y with D the forward-difference gradient.
  The paper calls this second one "TV-regularised" and prints it without the inverse; what it
  is, and what is computed here, is the quadratic-gradient (H^1 / Tikhonov) solution.

`GaussianCS` (numpy) generates the data; `GaussianCSPhysics` is the same operator in torch under
the physics contract (`genrecon.physics.base`), built from the same matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genrecon.physics.base import LinearPhysics, register_physics


def standard_normal(
    shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """N(0, 1) draws on the generator's device in float64, returned on `like`'s device and dtype.

    Drawing in a fixed dtype on the generator's device makes a seed give the same noise whatever
    the device or precision of the data (the noise models of every operator use this).
    """
    device = generator.device if generator is not None else like.device
    draw = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    return draw.to(device=like.device, dtype=like.dtype)


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


@register_physics("gaussian_cs")
class GaussianCSPhysics(LinearPhysics):
    """Gaussian compressed sensing y = M x.flatten() + e on (b, n, n) images; y is (b, m).

    `A_dagger` is the Moore-Penrose pseudo-inverse (computed once in float64 with numpy, the very
    matrix `GaussianCS.inversion("pinv")` gives the data preparation). `noise` is relative: per
    image ||e|| = noise_rel ||A x|| exactly, as in `GaussianCS.measure`. Matrices are kept in
    float64 and cast to the input's device and dtype on first use (cached).
    """

    dagger_is_pseudo_inverse = True

    def __init__(
        self, matrix: np.ndarray | torch.Tensor, image_size: int, noise_rel: float = 0.1
    ) -> None:
        if isinstance(matrix, torch.Tensor):
            matrix = matrix.detach().cpu().numpy()
        matrix = np.asarray(matrix, dtype=np.float64)
        n = image_size * image_size
        if matrix.ndim != 2 or matrix.shape[1] != n:
            raise ValueError(f"matrix must be (m, {n}) for {image_size}x{image_size} images")
        self.cs = GaussianCS(matrix, image_size)
        self.image_size = image_size
        self.noise_rel = float(noise_rel)
        self.in_shape = (image_size, image_size)
        self.out_shape = (matrix.shape[0],)
        self._host = {"matrix": matrix, "pinv": self.cs.inversion("pinv")}
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def create(
        cls, m: int, image_size: int, seed: int, noise_rel: float = 0.1
    ) -> GaussianCSPhysics:
        """The matrix `GaussianCS.create(m, image_size, seed)` draws (same numpy generator)."""
        return cls(GaussianCS.create(m, image_size, seed).matrix, image_size, noise_rel)

    def _get(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """A float64 host matrix on `like`'s device and dtype (cached: transfers happen once)."""
        slot = (key, like.device, like.dtype)
        if slot not in self._cache:
            self._cache[slot] = torch.from_numpy(self._host[key]).to(like.device, like.dtype)
        return self._cache[slot]

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self._get("matrix", x).T

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self._get("matrix", y)).reshape(len(y), *self.in_shape)

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self._get("pinv", y).T).reshape(len(y), *self.in_shape)

    def tikhonov(self, y: torch.Tensor, lam: float = 0.02) -> torch.Tensor:
        """The Tikhonov-gradient solution (A^T A + lam D^T D)^{-1} A^T y, D = `gradient_matrix`.

        This is seed 000's second conditioning input, which the paper calls "TV-regularised": it
        is the quadratic (H^1) gradient penalty, not total variation. Same numbers as
        `GaussianCS.inversion("tikhonov", lam)` (the matrix is cached per lam).
        """
        key = f"tikhonov:{lam!r}"
        if key not in self._host:
            self._host[key] = self.cs.inversion("tikhonov", lam)
        return (y @ self._get(key, y).T).reshape(len(y), *self.in_shape)

    def noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y + e with e Gaussian rescaled per measurement so that ||e|| = noise_rel ||y||."""
        if self.noise_rel == 0:
            return y
        e = standard_normal(tuple(y.shape), y, generator)
        scale = self.noise_rel * y.detach().norm(dim=1, keepdim=True)
        return y + e * (scale / e.norm(dim=1, keepdim=True))

    def _probe_dtype(self) -> torch.dtype:
        return torch.float64
