"""Quadratic-gradient (Tikhonov / H^1) reconstruction (A^T A + lam grad^T grad)^{-1} A^T y.

Seed 000 (Sec. 3.1) conditions its compressed-sensing cINN on this solution with lam = 0.02 and
calls it "TV-regularised"; it is the quadratic smoothness prior, not TV (FACTS.md), which is
why the true TV baseline is a separate method (`tv`). The solve belongs to the operator (a
dense factorisation for CS), so only operators with a `tikhonov(y, lam)` method qualify.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from genrecon.methods.base import Estimate, Method, register_method
from genrecon.physics.base import LinearPhysics


@register_method("tikhonov")
class Tikhonov(Method):
    def __init__(self, lam: float = 0.02) -> None:
        self.lam = float(lam)

    def reconstruct(
        self,
        y: torch.Tensor,
        physics: LinearPhysics,
        cond: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> Estimate:
        solve = getattr(physics, "tikhonov", None)
        if not callable(solve):
            raise TypeError(
                f"tikhonov: physics {physics.name!r} ({type(physics).__name__}) has no "
                "tikhonov(y, lam) solver; it is provided for Gaussian compressed sensing"
            )
        with torch.no_grad():
            return Estimate(point=solve(y, self.lam))
