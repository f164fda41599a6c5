"""The inversion layer alone: the cached conditioning input returned as the reconstruction.

Why a method of its own: a conditional flow starts from a model-based inversion (FBP, A^+ y, the
zero-filled IFFT) and must beat it to have learnt anything. For fastMRI the zero-filled image is
the only classical baseline Table 5's reader needs, and it is exactly the network's input (the
same crop and normalisation), so it is scored through the same path as the flows' estimates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from genrecon.methods.base import Estimate, Method, register_method
from genrecon.physics.base import LinearPhysics


@register_method("inversion")
class InversionLayer(Method):
    """The dataset's conditioning input `conditioning` (default: its first) as the estimate."""

    uses_conditioning = True

    def __init__(self, conditioning: str | None = None) -> None:
        self.conditioning = conditioning

    def reconstruct(
        self,
        y: torch.Tensor,
        physics: LinearPhysics,
        cond: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> Estimate:
        if cond is None:
            raise ValueError(f"inversion: no conditioning input {self.conditioning!r} was given")
        return Estimate(point=cond)
