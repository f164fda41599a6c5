"""Forward operators under one contract (`base.LinearPhysics`), registered by name.

Importing this package registers all of them (`base.registered_physics`, `base.build_physics`):

- `ct` (`ct.CTPhysics`): LoDoPaB-style low-dose parallel-beam CT, ODL + astra ray transform,
  FBP as an approximate inverse, post-log Poisson noise;
- `gaussian_cs` (`cs.GaussianCSPhysics`): Gaussian compressed sensing of MNIST-sized images,
  pseudo-inverse and Tikhonov-gradient inversion, relative Gaussian noise;
- `mri` (`mri.MRIPhysics`): single-coil Cartesian MRI with a fastmri column mask, zero-filled
  IFFT as the exact pseudo-inverse, complex Gaussian noise on the sampled k-space;
- `blur` (`blur.GaussianBlur`): periodic Gaussian blur of (b, C, H, W) images, Fourier
  pseudo-inverse, white Gaussian noise.

The numpy helpers that generate the data sets (`ct.ray_transform`, `ct.simulate_lowdose`,
`cs.GaussianCS`, ...) live beside the operators in the same modules.
"""

from genrecon.physics import blur, cs, ct, mri
from genrecon.physics.base import (
    LinearPhysics,
    build_physics,
    register_physics,
    registered_physics,
)

__all__ = [
    "LinearPhysics",
    "blur",
    "build_physics",
    "cs",
    "ct",
    "mri",
    "register_physics",
    "registered_physics",
]
