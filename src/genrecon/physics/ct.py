"""Parallel-beam CT with ODL 1.0 + astra, shaped after the LoDoPaB-CT geometry.

LoDoPaB images live on [-0.13, 0.13]^2 m; the detector covers the image diagonal
(`parallel_beam_geometry` does exactly that), so a reduced geometry (fewer pixels, angles)
keeps the same physics and the same attenuation scale mu_max.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from genrecon.physics.base import LinearPhysics, register_physics

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


@register_physics("ct")
class CTPhysics(LinearPhysics):
    """LoDoPaB-style low-dose parallel-beam CT as a batched, differentiable torch operator.

    Images are (b, n, n) in units of mu_max (ground truth in [0, 1]); measurements are post-log
    sinograms (b, num_angles, detector_pixels), so that the observation is ~ A x as in LoDoPaB.

    - `A`: the ray transform `ray_transform(geometry)` through ODL's torch bridge (its autograd
      backward is already the Euclidean transpose).
    - `A_adjoint`: ODL's adjoint rescaled by domain.cell_volume / range.cell_volume: ODL's adjoint
      is taken w.r.t. cell-volume-weighted inner products, the contract wants the plain sums.
      astra_cpu's projector/backprojector pair is adjoint to float32 rounding (~5e-8 relative);
      astra_cuda's backprojector only approximately (tests/test_physics.py::ct_adjoint_bound).
    - `A_dagger`: FBP with `fbp_filter` / `frequency_scaling`: an approximate inverse, not the
      pseudo-inverse (`dagger_is_pseudo_inverse = False`).
    - `noise`: LoDoPaB's Poisson model on post-log data (`photons` = N0, `mu_max`), see `noise`.
    - `measure`: with `upsample > 1` the clean data come from the order-1 upsampled image on an
      `upsample`-times finer grid (LoDoPaB avoids the inverse crime that way), as
      `simulate_lowdose` does; `A` stays the coarse operator a reconstruction uses.

    ODL works on CPU numpy arrays in float32: inputs are computed there and the results come back
    on the device and in the dtype of the input. With a GPU, astra's CUDA projector is used
    (`astra_impl`).
    """

    dagger_is_pseudo_inverse = False

    def __init__(
        self,
        image_size: int,
        num_angles: int,
        photons: float = 4096,
        upsample: int = 1,
        fbp_filter: str = "Hann",
        frequency_scaling: float = 0.641025641,
        mu_max: float = LODOPAB_MU_MAX,
    ) -> None:
        from odl.contrib.torch import OperatorModule

        self.geometry = CTGeometry(image_size, num_angles)
        self.photons = float(photons)
        self.mu_max = float(mu_max)
        #: counts are floored at this many photons before the log (LoDoPaB: 0.1)
        self.min_counts = LODOPAB_MIN_PHOTON_FRACTION
        self.upsample = int(upsample)
        self.fbp_filter = fbp_filter
        self.frequency_scaling = float(frequency_scaling)
        operator = ray_transform(self.geometry)
        self.ray_transform = operator
        self.in_shape = tuple(operator.domain.shape)
        self.out_shape = tuple(operator.range.shape)
        #: ODL's adjoint times this factor is the Euclidean transpose of A
        self.adjoint_scaling = float(operator.domain.cell_volume / operator.range.cell_volume)
        self._forward = OperatorModule(operator)
        self._adjoint = OperatorModule(operator.adjoint)
        self._fbp = OperatorModule(fbp_operator(self.geometry, fbp_filter, self.frequency_scaling))
        self._fine = (
            OperatorModule(ray_transform(self.geometry, self.upsample))
            if self.upsample > 1
            else self._forward
        )

    @staticmethod
    def _run(module, x: torch.Tensor) -> torch.Tensor:
        """Apply an ODL bridge module in float32 on CPU; return on x's device and in x's dtype."""
        return module(x.to(device="cpu", dtype=torch.float32)).to(device=x.device, dtype=x.dtype)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._forward, x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._run(self._adjoint, y) * self.adjoint_scaling

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        return self._run(self._fbp, y)

    def simulate_clean(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free data of the simulation: A x, or the fine-grid projection when upsampling."""
        if self.upsample == 1:
            return self.A(x)
        n = self.geometry.image_size
        flat = x.reshape(-1, 1, n, n)
        # order-1 resampling, equal (to float rounding) to skimage's resize in upsample_order1
        fine = F.interpolate(flat, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        fine = fine.reshape(*x.shape[:-2], n * self.upsample, n * self.upsample)
        return self._run(self._fine, fine)

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.noise(self.simulate_clean(x), generator)

    def noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Post-log Poisson noise: counts ~ Poisson(N0 exp(-mu_max y)), floored at `min_counts`.

        Returns -log(counts / N0) / mu_max. Counts are drawn in float64 on the generator's device
        (CPU unless a CUDA generator is passed), so a seed gives the same noise on every device.
        """
        device = generator.device if generator is not None else y.device
        rate = self.photons * torch.exp(-self.mu_max * y.detach().to(device, torch.float64))
        counts = torch.poisson(rate, generator=generator).clamp_min(self.min_counts)
        noisy = -torch.log(counts / self.photons) / self.mu_max
        return noisy.to(device=y.device, dtype=y.dtype)
