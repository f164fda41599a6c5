"""Optimisation: data fidelities, iterative solvers and the generic variational reconstruction."""

from genrecon.optim.fidelity import L2, Fidelity, PoissonCT
from genrecon.optim.solvers import (
    AdaptiveSteps,
    OperatorNormCache,
    adam_projected,
    admm,
    cg,
    cgls,
    divergence2d,
    fista_least_squares,
    gradient2d,
    pdhg_tv,
    total_variation,
    tv_objective,
)
from genrecon.optim.variational import variational_objective, variational_reconstruction

__all__ = [
    "AdaptiveSteps",
    "L2",
    "OperatorNormCache",
    "Fidelity",
    "PoissonCT",
    "adam_projected",
    "admm",
    "cg",
    "cgls",
    "divergence2d",
    "fista_least_squares",
    "gradient2d",
    "pdhg_tv",
    "total_variation",
    "tv_objective",
    "variational_objective",
    "variational_reconstruction",
]
