"""Parallel-beam CT with ODL 1.0 + astra, shaped after the LoDoPaB-CT geometry.

LoDoPaB images live on [-0.13, 0.13]^2 m; the detector covers the image diagonal
(`parallel_beam_geometry` does exactly that), so a reduced geometry (fewer pixels, angles)
keeps the same physics and the same attenuation scale mu_max.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# Physical constants of the LoDoPaB simulation (Leuschner et al. 2021; see README attribution).
LODOPAB_HALF_WIDTH_M = 0.13
LODOPAB_MU_MAX = 81.35858  # 3071 * (20 - 0.02) / 1000 + 20
LODOPAB_DET_PIXELS = 513
LODOPAB_MIN_PHOTON_FRACTION = 0.1  # counts / N0 floored at 0.1 / N0


def _odl():
    import odl
    from odl.applications import tomo

    return odl, tomo


def astra_impl() -> str:
    """Use the CUDA backend of astra when a GPU is usable, its CPU backend otherwise."""
    import torch

    return "astra_cuda" if torch.cuda.is_available() else "astra_cpu"


@dataclass(frozen=True)
class CTGeometry:
    """Image size and number of angles; the detector size follows LoDoPaB's rule."""

    image_size: int
    num_angles: int

    @property
    def detector_pixels(self) -> int:
        if self.image_size == 362:
            return LODOPAB_DET_PIXELS
        # LoDoPaB: 513 detector pixels for 362 image pixels (the image diagonal, odd count).
        n = int(np.ceil(self.image_size * LODOPAB_DET_PIXELS / 362))
        return n if n % 2 else n + 1


@functools.lru_cache(maxsize=8)
def ray_transform(geometry: CTGeometry, upsample: int = 1, impl: str | None = None):
    """ODL ray transform on the image space, optionally on an `upsample`-times finer grid."""
    odl, tomo = _odl()
    n = geometry.image_size * upsample
    space = odl.uniform_discr(
        [-LODOPAB_HALF_WIDTH_M] * 2, [LODOPAB_HALF_WIDTH_M] * 2, (n, n), dtype="float32"
    )
    coarse = odl.uniform_discr(
        [-LODOPAB_HALF_WIDTH_M] * 2,
        [LODOPAB_HALF_WIDTH_M] * 2,
        (geometry.image_size,) * 2,
        dtype="float32",
    )
    geom = tomo.parallel_beam_geometry(
        coarse, num_angles=geometry.num_angles, det_shape=geometry.detector_pixels
    )
    return tomo.RayTransform(space, geom, impl=impl or astra_impl())


@functools.lru_cache(maxsize=8)
def fbp_operator(
    geometry: CTGeometry, filter_type: str = "Hann", frequency_scaling: float = 0.641025641
):
    """Filtered back-projection (ODL `fbp_op`), LoDoPaB's reference FBP by default."""
    _, tomo = _odl()
    return tomo.fbp_op(
        ray_transform(geometry), filter_type=filter_type, frequency_scaling=frequency_scaling
    )


def apply(operator, array: np.ndarray) -> np.ndarray:
    """Apply an ODL operator to a numpy array (ODL 1.0 wants `.data`, not `np.asarray`)."""
    return np.asarray(operator(array).data, dtype=np.float32)


def fbp(observations: np.ndarray, op) -> np.ndarray:
    """FBP of a stack of sinograms (n, angles, det) -> (n, size, size)."""
    return np.stack([apply(op, obs) for obs in observations])


def upsample_order1(image: np.ndarray, factor: int) -> np.ndarray:
    """Order-1 resampling to a `factor`-times finer grid, as LoDoPaB did before projecting."""
    if factor == 1:
        return image
    from skimage.transform import resize

    n = image.shape[-1] * factor
    return resize(image, (n, n), order=1, mode="edge", anti_aliasing=False).astype(np.float32)


def simulate_lowdose(
    ground_truth: np.ndarray,
    geometry: CTGeometry,
    photons: float,
    rng: np.random.Generator,
    upsample: int = 1,
    mu_max: float = LODOPAB_MU_MAX,
) -> np.ndarray:
    """LoDoPaB's simulation: project the upsampled image, Poisson counts, post-log, / mu_max.

    The ground truth is in units of mu_max (values in [0, 1]), so the physical line integral is
    mu_max * A x; observation = -log(max(counts, 0.1) / N0) / mu_max.
    """
    op = ray_transform(geometry, upsample)
    line_integrals = apply(op, upsample_order1(ground_truth, upsample)).astype(np.float64)
    counts = rng.poisson(photons * np.exp(-mu_max * line_integrals))
    counts = np.maximum(counts, LODOPAB_MIN_PHOTON_FRACTION)
    return (-np.log(counts / photons) / mu_max).astype(np.float32)


def torch_ray_transform(geometry: CTGeometry):
    """The ray transform as a torch module (batched, gradient = adjoint) via ODL's torch bridge."""
    from odl.contrib.torch import OperatorModule

    return OperatorModule(ray_transform(geometry))
