"""Variational reconstruction: argmin_x fidelity(A x, y) + lam * prior.nll(x | cond).

The one routine behind every learned-prior method (VAE, Glow, patchNR) and the cINN's sample
refinement (seed 000 Eq. 22: min ||Ax - y||^2 + lam NLL(x | y), started from one posterior
sample, i.e. `L2(half=False)` with the cINN as a conditional prior). The prior decides what
its `nll` returns (per image or per dimension, as its paper does); this module multiplies it by
`lam`, and divides it by the number of image dimensions only when asked (`per_dim=True`), for
priors that return a per-image total where the paper's lam is per dimension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from genrecon.optim.fidelity import Fidelity
from genrecon.optim.solvers import adam_projected
from genrecon.physics.base import LinearPhysics

if TYPE_CHECKING:  # the methods package imports its methods, which import this module
    from genrecon.methods.base import Prior

SOLVERS = ("adam",)


def variational_objective(
    physics: LinearPhysics,
    y: torch.Tensor,
    fidelity: Fidelity,
    prior: Prior | None,
    lam: float,
    cond: torch.Tensor | None = None,
    per_dim: bool = False,
):
    """The per-image objective x -> fidelity + lam * nll, as a closure for a solver."""
    if lam != 0 and prior is None:
        raise ValueError("a prior weight lam != 0 needs a prior")

    def objective(x: torch.Tensor) -> torch.Tensor:
        value = fidelity(physics, x, y)
        if lam == 0 or prior is None:
            return value
        nll = prior.nll(x, cond)
        if nll.shape != value.shape:
            raise ValueError(
                f"prior.nll must return one value per image {tuple(value.shape)}, "
                f"got {tuple(nll.shape)}"
            )
        if per_dim:
            nll = nll / x[0].numel()
        return value + lam * nll

    return objective


def variational_reconstruction(
    physics: LinearPhysics,
    y: torch.Tensor,
    fidelity: Fidelity,
    prior: Prior | None,
    lam: float,
    x0: torch.Tensor,
    solver: str = "adam",
    cond: torch.Tensor | None = None,
    steps: int = 100,
    lr: float = 1e-4,
    lower: float | None = 0.0,
    upper: float | None = None,
    per_dim: bool = False,
    progress: str | None = None,
) -> torch.Tensor:
    """Minimise fidelity + lam * prior.nll from `x0`, with x kept in [lower, upper].

    Defaults are the authors' refinement settings (Adam, 100 steps, lr 1e-4, x >= 0). With
    `lam == 0` the prior is never evaluated: a plain (projected) fit of the fidelity.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; available: {SOLVERS}")
    objective = variational_objective(physics, y, fidelity, prior, lam, cond, per_dim)
    return adam_projected(objective, x0, steps, lr, lower=lower, upper=upper, progress=progress)
