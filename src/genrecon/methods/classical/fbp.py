"""The operator's own inverse as a method: `fbp` (CT) and `pinv` (A^+, compressed sensing).

Both just apply `physics.A_dagger`; what that is belongs to the physics (CT: filtered
back-projection with the dataset's filter, Hann at frequency scaling 0.641 for LoDoPaB). Two
names keep result tables honest: `pinv` refuses an operator whose A_dagger is not the
Moore-Penrose pseudo-inverse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from genrecon.methods.base import Estimate, Method, register_method
from genrecon.physics.base import LinearPhysics


class _OperatorInverse(Method):
    def reconstruct(
        self,
        y: torch.Tensor,
        physics: LinearPhysics,
        cond: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> Estimate:
        self.check(physics)
        with torch.no_grad():
            return Estimate(point=physics.A_dagger(y))

    def check(self, physics: LinearPhysics) -> None:
        """Refuse operators for which this method's name would be wrong."""


@register_method("fbp")
class FBP(_OperatorInverse):
    """Filtered back-projection: CT's A_dagger (any operator's A_dagger, labelled as FBP)."""


@register_method("pinv")
class PseudoInverse(_OperatorInverse):
    """The Moore-Penrose pseudo-inverse A^+ y, for operators whose A_dagger is exactly that."""

    def check(self, physics: LinearPhysics) -> None:
        if not physics.dagger_is_pseudo_inverse:
            raise TypeError(
                f"pinv: the A_dagger of physics {physics.name!r} ({type(physics).__name__}) is "
                "not the pseudo-inverse; use 'fbp' (CT) or 'least_squares'"
            )
