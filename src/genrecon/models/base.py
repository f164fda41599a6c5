"""Base distributions of the flows: standard normal and radial Gaussian (seed 000, Sec. 2.5).

The radial Gaussian puts the radius r = |r_hat|, r_hat ~ N(0, 1), and the direction uniformly on
the sphere, so its high-density region and typical set coincide (Eq. 16, Appendix A.1):
    log p(z) = log(sqrt(2) / (sqrt(pi) S_n)) - (n - 1) log ||z|| - ||z||^2 / 2,
with S_n = 2 pi^(n/2) / Gamma(n/2) the surface of the unit sphere in R^n.
"""

from __future__ import annotations

import math

import torch


class NormalBase:
    name = "normal"

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log density of each row of z (batch, n)."""
        n = z.shape[1]
        return -0.5 * (z**2).sum(1) - 0.5 * n * math.log(2 * math.pi)

    def sample(self, num: int, dim: int, generator: torch.Generator | None = None, device=None):
        return torch.randn(num, dim, generator=generator, device=device)


class RadialBase:
    name = "radial"

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[1]
        r = z.norm(dim=1).clamp_min(1e-12)
        log_surface = math.log(2.0) + 0.5 * n * math.log(math.pi) - math.lgamma(0.5 * n)
        return 0.5 * math.log(2.0 / math.pi) - log_surface - (n - 1) * torch.log(r) - 0.5 * r**2

    def sample(self, num: int, dim: int, generator: torch.Generator | None = None, device=None):
        direction = torch.randn(num, dim, generator=generator, device=device)
        direction = direction / direction.norm(dim=1, keepdim=True)
        radius = torch.randn(num, 1, generator=generator, device=device).abs()
        return direction * radius


def make_base(name: str) -> NormalBase | RadialBase:
    bases = {"normal": NormalBase, "radial": RadialBase}
    if name not in bases:
        raise ValueError(f"unknown base distribution {name!r}: expected one of {sorted(bases)}")
    return bases[name]()
