"""Learned priors inside an iterative reconstruction: importing this package registers them.

- `vae` (seed 002): the VAE regulariser of Eq. 12 (identity, diagonal or structured covariance);
- `range` (Bora et al. 2017, seed 002 Eq. 13): search in the range of the VAE's mean generator;
- `narnhofer19` (Narnhofer et al. 2019): that search, then the generator's weights fitted too;
- `glow`, `glow_latent` (seed 003): inversion through a trained Glow's latent, reparameterised
  (plain, spherical, orthogonal, Gaussianization layers).
"""

from genrecon.methods.priors import glow, narnhofer, range_search, vae  # noqa: F401  (registers them)
