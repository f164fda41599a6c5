"""Total-variation reconstruction: argmin_{x >= 0} 0.5 ||Ax - y||^2 + lam TV(x), by PDHG.

A true (isotropic, non-smooth) TV solution for CT and compressed sensing, next to the quadratic
"TV" conditioning of seed 000 (`tikhonov`). lam is relative to the ½-scaled data term and to
the data's units (post-log CT observations, CS measurements), so it is tuned per data set.
`init="dagger"` starts PDHG from A_dagger y (FBP), which saves iterations on CT.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from genrecon.methods.base import Estimate, Method, register_method
from genrecon.optim.solvers import OperatorNormCache, pdhg_tv
from genrecon.physics.base import LinearPhysics

INITS = ("zeros", "dagger")


@register_method("tv")
class TotalVariation(Method):
    def __init__(
        self, lam: float = 0.01, iterations: int = 500, nonneg: bool = True, init: str = "zeros"
    ) -> None:
        if init not in INITS:
            raise ValueError(f"tv: unknown init {init!r}; expected one of {INITS}")
        self.lam = float(lam)
        self.iterations = int(iterations)
        self.nonneg = bool(nonneg)
        self.init = init
        self._norm = OperatorNormCache()

    def reconstruct(
        self,
        y: torch.Tensor,
        physics: LinearPhysics,
        cond: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> Estimate:
        with torch.no_grad():
            x0 = physics.A_dagger(y) if self.init == "dagger" else None
        point = pdhg_tv(
            physics,
            y,
            self.lam,
            self.iterations,
            x0=x0,
            nonneg=self.nonneg,
            operator_norm=self._norm(physics),
        )
        return Estimate(point=point)
