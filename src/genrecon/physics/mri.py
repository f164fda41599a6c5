"""Single-coil Cartesian MRI (fastMRI knee): y = mask * F x with F the orthonormal centred FFT.

Images and k-space are complex, stored as real tensors with a trailing axis of 2 (fastmri's
channels-last convention): x and y are (b, H, W, 2). The mask selects k-space columns (phase
encoding lines, the W axis, as fastmri's mask functions sample along shape[-2]).

Because F is unitary and the mask a 0/1 diagonal, A A^H = mask is a projection, so the zero-filled
inverse F^H (mask * y) is exactly the Moore-Penrose pseudo-inverse.

The transforms and masks are fastmri 0.3.0's own (`fft2c`, `ifft2c`, `center_crop`,
`RandomMaskFunc`), installed with --no-deps (see FACTS).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from fastmri import fft2c, ifft2c
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import center_crop

from genrecon.physics.base import LinearPhysics, register_physics
from genrecon.physics.cs import standard_normal


def file_seed(fname: str) -> tuple[int, ...]:
    """The per-file mask seed of fastmri's data transforms: `tuple(map(ord, fname))`.

    fastmri's `RandomMaskFunc` is deterministic per file only when called with this seed.
    """
    return tuple(map(ord, fname))


def random_mask(
    num_cols: int,
    center_fraction: float = 0.08,
    acceleration: int = 4,
    seed: int | Sequence[int] = 0,
) -> torch.Tensor:
    """fastmri 0.3.0's `RandomMaskFunc([center_fraction], [acceleration])` column mask, (W,).

    The seed is passed explicitly: fastmri's mask is deterministic per file only then (FACTS).
    """
    seed = seed if isinstance(seed, int) else tuple(int(s) for s in seed)
    func = RandomMaskFunc(center_fractions=[center_fraction], accelerations=[acceleration])
    mask, _ = func((1, num_cols, 1), seed=seed)
    return mask.reshape(num_cols)


@register_physics("mri")
class MRIPhysics(LinearPhysics):
    """Single-coil Cartesian MRI with a fixed sampling mask, on (b, H, W, 2) complex images.

    - `A(x) = mask * fft2c(x)`, `A_adjoint(y) = ifft2c(mask * y)`, and `A_dagger` = the zero-filled
      IFFT, which equals A_adjoint and is the exact pseudo-inverse (A A^H is the mask).
    - `noise`: complex Gaussian noise on the sampled coefficients only, real and imaginary parts
      each with standard deviation `noise_std`; unsampled entries stay exactly zero.
    - `mask`: shape (W,) (a column mask, broadcast over rows) or (H, W); fastmri's (1, W, 1)
      masks are accepted too. Values must be 0 or 1.
    """

    dagger_is_pseudo_inverse = True

    def __init__(
        self,
        mask: torch.Tensor | np.ndarray | Sequence[float],
        shape: tuple[int, int],
        noise_std: float = 0.0,
    ) -> None:
        height, width = (int(s) for s in shape)
        mask = torch.as_tensor(np.asarray(mask, dtype=np.float64))
        if mask.ndim == 3 and mask.shape[0] == 1 and mask.shape[2] == 1:
            mask = mask[0, :, 0]
        if mask.ndim == 1 and mask.shape == (width,):
            mask = mask[None, :].expand(height, width)
        if tuple(mask.shape) != (height, width):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} fits neither ({width},) nor ({height}, {width})"
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask values must be 0 or 1")
        self.shape = (height, width)
        self.mask = mask.contiguous()  # (H, W) float64 on CPU
        self.noise_std = float(noise_std)
        self.in_shape = (height, width, 2)
        self.out_shape = (height, width, 2)
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def from_mask_func(
        cls,
        shape: tuple[int, int],
        center_fraction: float = 0.08,
        acceleration: int = 4,
        seed: int | Sequence[int] = 0,
        noise_std: float = 0.0,
    ) -> MRIPhysics:
        """A random column mask as fastmri draws it (`random_mask`); seed per file: `file_seed`."""
        mask = random_mask(shape[1], center_fraction, acceleration, seed)
        return cls(mask, shape, noise_std)

    @property
    def acceleration(self) -> float:
        """The realised acceleration: k-space size over sampled coefficients."""
        return float(self.mask.numel() / self.mask.sum())

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        """The mask as (H, W, 1) on `like`'s device and dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self.mask[..., None].to(like.device, like.dtype)
        return self._cache[key]

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self._mask(x) * fft2c(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return ifft2c(self._mask(y) * y)

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        return self.A_adjoint(y)

    def noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.noise_std == 0:
            return y
        return y + self.noise_std * self._mask(y) * standard_normal(tuple(y.shape), y, generator)

    def zero_filled_magnitude(
        self, y: torch.Tensor, crop: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """|ifft2c(mask * y)| as (b, H, W), centre-cropped to `crop` (fastmri's 320x320 input).

        The cINN's conditioning input; cropping the magnitude equals fastmri's
        complex_center_crop followed by complex_abs.
        """
        image = self.A_dagger(y)
        magnitude = (image**2).sum(dim=-1).sqrt()
        return magnitude if crop is None else center_crop(magnitude, crop)

    def _probe_dtype(self) -> torch.dtype:
        return torch.float64
