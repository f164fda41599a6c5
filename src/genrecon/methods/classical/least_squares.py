"""Least squares stopped early: the classical iterative baseline without an explicit prior.

`iterations` of CGLS from zero (Krylov iterates of A^T A x = A^T y). On noisy, ill-posed data
the error first falls then rises again (semi-convergence), so the iteration count *is* the
regulariser and belongs to the experiment's settings. With `nonneg=True` the iterates are
instead projected-gradient (FISTA) steps onto x >= 0, which converge more slowly per
iteration: the two counts are not comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from genrecon.methods.base import Estimate, Method, register_method
from genrecon.optim.solvers import OperatorNormCache, cgls, fista_least_squares
from genrecon.physics.base import LinearPhysics


@register_method("least_squares")
class LeastSquares(Method):
    def __init__(self, iterations: int = 30, nonneg: bool = False) -> None:
        self.iterations = int(iterations)
        self.nonneg = bool(nonneg)
        self._norm = OperatorNormCache()

    def reconstruct(
        self,
        y: torch.Tensor,
        physics: LinearPhysics,
        cond: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> Estimate:
        if self.nonneg:
            point = fista_least_squares(
                physics, y, self.iterations, lower=0.0, operator_norm=self._norm(physics)
            )
        else:
            point = cgls(physics, y, self.iterations)
        return Estimate(point=point)
