"""Gaussian deblurring with periodic boundaries (seed 003 deblurs RGB faces).

The blur is a circular convolution with a sampled, wrapped Gaussian kernel normalised to sum 1,
so the FFT diagonalises it: A = F^-1 diag(K) F with K the kernel's transfer function (real here,
the kernel being symmetric). Its singular values are |K|, which lets the pseudo-inverse be
written exactly in Fourier: 1/K where |K| > cutoff * max|K|, 0 elsewhere, i.e. the
Moore-Penrose pseudo-inverse of the operator whose singular values at or below the relative
cutoff are treated as zero (numpy's `pinv(matrix, rcond=cutoff)`).
"""

from __future__ import annotations

import numpy as np
import torch

from genrecon.physics.base import LinearPhysics, register_physics
from genrecon.physics.cs import standard_normal


def periodic_gaussian_kernel(image_shape: tuple[int, int], sigma: float) -> np.ndarray:
    """A Gaussian sampled at the wrapped distances of an (H, W) torus, centred at (0, 0)."""
    height, width = image_shape
    rows = np.minimum(np.arange(height), height - np.arange(height))
    cols = np.minimum(np.arange(width), width - np.arange(width))
    kernel = np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


@register_physics("blur")
class GaussianBlur(LinearPhysics):
    """Periodic Gaussian blur of (b, C, H, W) images; measurements have the same shape.

    - `A`: multiply the 2-D FFT (over H, W; each channel alike) by the transfer function K;
      `A_adjoint`: by its conjugate.
    - `A_dagger`: the pseudo-inverse in Fourier with relative cutoff `cutoff` (module docstring).
      With a strong blur the smallest |K| get tiny; the pseudo-inverse then amplifies noise by
      up to 1/cutoff, which is what a pseudo-inverse does: regularise in the reconstruction.
    - `noise`: white Gaussian noise of standard deviation `noise_std`.
    """

    dagger_is_pseudo_inverse = True

    def __init__(
        self,
        image_shape: tuple[int, int],
        sigma: float,
        channels: int = 1,
        noise_std: float = 0.0,
        cutoff: float = 1e-6,
    ) -> None:
        height, width = (int(s) for s in image_shape)
        if sigma <= 0:
            raise ValueError("sigma must be positive")
        self.image_shape = (height, width)
        self.sigma = float(sigma)
        self.channels = int(channels)
        self.noise_std = float(noise_std)
        self.cutoff = float(cutoff)
        self.in_shape = (self.channels, height, width)
        self.out_shape = self.in_shape
        self.kernel = periodic_gaussian_kernel(self.image_shape, self.sigma)
        transfer = torch.fft.fft2(torch.from_numpy(self.kernel))  # complex128
        keep = transfer.abs() > self.cutoff * transfer.abs().max()
        self._host = {
            "transfer": transfer,
            "inverse": torch.where(keep, 1.0 / transfer, torch.zeros_like(transfer)),
        }
        #: how many Fourier coefficients the pseudo-inverse discards (|K| at or below the cutoff)
        self.discarded = int((~keep).sum())
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def _get(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """A transfer function on `like`'s device, complex64 for float32 data (cached)."""
        slot = (key, like.device, like.dtype)
        if slot not in self._cache:
            cdtype = torch.complex128 if like.dtype == torch.float64 else torch.complex64
            self._cache[slot] = self._host[key].to(like.device, cdtype)
        return self._cache[slot]

    def _filter(self, x: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(multiplier * torch.fft.fft2(x)).real

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self._filter(x, self._get("transfer", x))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._filter(y, self._get("transfer", y).conj())

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        return self._filter(y, self._get("inverse", y))

    def noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.noise_std == 0:
            return y
        return y + self.noise_std * standard_normal(tuple(y.shape), y, generator)

    def _probe_dtype(self) -> torch.dtype:
        return torch.float64
