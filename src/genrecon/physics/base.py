"""The physics contract every forward operator follows, and the registry that lists them.

Shaped after DeepInverse's `LinearPhysics` (which cannot be imported here, see FACTS): one object
per measurement process with

- `A(x)`: the forward operator, batched over the first axis, differentiable by autograd;
- `A_adjoint(y)`: the adjoint with respect to the plain (Euclidean) inner products of the
  tensors, so that `sum(A(x) * y) == sum(x * A_adjoint(y))`: exactly what autograd's
  vector-Jacobian product of `A` is, and what a data-fidelity gradient needs;
- `A_dagger(y)`: a reconstruction operator where one exists (`dagger_is_pseudo_inverse` says
  whether it is the Moore-Penrose pseudo-inverse or an approximate inverse such as FBP);
- `noise(y, generator)`: the seeded noise model, and `measure(x, generator)` = noise(A(x)).

Tensors are torch, float32 or float64, on CPU or CUDA; an operator follows the device of its
input. Complex data (MRI k-space) are real tensors with a trailing axis of 2 (fastmri's
convention), so every inner product stays a real sum.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from genrecon.registry import Registry


class LinearPhysics:
    """A linear forward operator with its adjoint, an optional inverse and a noise model."""

    name: ClassVar[str] = "linear"
    #: shapes of one image and one measurement, without the batch axis
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    #: True when A_dagger is the Moore-Penrose pseudo-inverse (tested against least squares)
    dagger_is_pseudo_inverse: ClassVar[bool] = False

    def A(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name}: this operator has no inverse (A_dagger)")

    def noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy version of clean measurements `y`; the identity when the model is noiseless."""
        return y

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.noise(self.A(x), generator)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^T A x (the Gram operator), used by least-squares and ADMM solvers."""
        return self.A_adjoint(self.A(x))

    def operator_norm(self, iterations: int = 30, seed: int = 0) -> float:
        """||A||_2 by power iteration on A^T A (step sizes of PDHG and gradient methods)."""
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((1, *self.in_shape), generator=generator, dtype=torch.float64)
        x = x.to(self._probe_dtype())
        norm = 0.0
        for _ in range(iterations):
            x = x / x.norm()
            x = self.normal(x)
            norm = float(x.norm())
        return norm**0.5

    def _probe_dtype(self) -> torch.dtype:
        return torch.float32


_REGISTRY: Registry[LinearPhysics] = Registry("physics")
#: class decorator: make an operator constructible by name (`build_physics`)
register_physics = _REGISTRY.register
#: every registered operator (importing genrecon.physics registers them all)
registered_physics = _REGISTRY.all


def build_physics(name: str, **settings) -> LinearPhysics:
    return _REGISTRY.lookup(name)(**settings)
