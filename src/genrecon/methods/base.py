"""What every reconstruction method offers, whatever kind it is.

The five papers hold two kinds of method (DESIGN.md): amortised posterior samplers (cINN, iUNet,
SNF) trained on pairs, and learned priors used inside an iterative reconstruction (VAE, Glow,
patchNR); classical baselines (FBP, pseudo-inverse, least squares, TV) need no training. The
evaluation protocols only ever call `reconstruct`, so they need not know which kind they hold.

- `Method.reconstruct(y, physics, cond=..., indices=...) -> Estimate`: a point estimate for a
  batch of measurements, plus posterior samples when the method draws them. `cond` is the
  dataset's cached conditioning input (FBP, A^+ y, Tikhonov, zero-filled) where a method
  uses one; `indices` are the images' positions in their split, which seed per-image random
  draws so that numbers do not depend on batch sizes or on which images are evaluated together.
- `Method.parents` / `use_parents`: methods built on another experiment's trained model.
- `Prior.nll(x, cond=None)`: a negative log-likelihood per image, the regulariser of a
  variational reconstruction (`genrecon.optim.variational`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import torch

from genrecon.physics.base import LinearPhysics
from genrecon.registry import Registry


@dataclass
class Estimate:
    """A method's answer for a batch: `point` (b, *image); `samples` (b, k, *image) if drawn.

    `extras` holds further per-image estimates a protocol may report beside the point
    estimate (e.g. `clipped_mean`, `std`), each (b, *image).
    """

    point: torch.Tensor
    samples: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """A reconstruction method: `fit` where it learns, `reconstruct` always."""

    name: ClassVar[str] = "method"
    #: whether the method has a training stage (`genrecon fit`) before it can reconstruct
    trainable: ClassVar[bool] = False
    #: whether it reads one of the dataset's cached conditioning inputs (FBP, A^+ y, ...)
    uses_conditioning: ClassVar[bool] = False
    #: which one (e.g. "fbp"); None: the dataset's first, when `uses_conditioning`
    conditioning: str | None = None
    #: variant keys whose values name OTHER experiments whose trained models this method uses
    #: (seed 002: the covariance stage of the VAE starts from the mean stage's model; Bora's range
    #: search and Narnhofer19 use that mean generator). The workflow makes those checkpoints
    #: inputs of this experiment's jobs, and the CLI hands the loaded models to `use_parents`
    #: before `build`/`attach`. A key whose value is None names no model.
    parents: ClassVar[tuple[str, ...]] = ()
    #: the variant keys that shape the trained model (None: all of them). `fit` jobs see only
    #: these, so changing another key (e.g. an inversion setting) reruns the evaluation only
    training_keys: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def check_parent(cls, key: str, parent_row: dict) -> str | None:
        """Why the sheet row `parent_row` cannot be this method's `key` parent (None: it can).

        Checked at startup (config.check_parents), so a wrong name fails there, not inside a
        GPU job that has loaded the wrong model."""
        return None

    @classmethod
    def check_variant(cls, name: str, settings: dict) -> str | None:
        """Why experiment `name`'s variant cannot run at this scale (None: it can).

        Checked at startup (config.check_references) for what a constructor cannot see alone
        (e.g. a patch size against the latent shapes of the architecture at this scale), so a
        bad row fails before any training, not in the evaluation job days later."""
        return None

    def use_parents(self, models: dict[str, torch.nn.Module]) -> None:
        """Receive the trained models the `parents` variant keys name (key -> model, eval mode)."""
        if models:
            raise NotImplementedError(f"{self.name} uses no other experiment's model")

    def attach(self, model: torch.nn.Module, seed: int, settings: dict) -> Method:
        """Trainable methods: use a trained model; `settings` are the job's protocol settings."""
        raise NotImplementedError(f"{self.name} has no trained model to attach")

    def reconstruct(
        self,
        y: torch.Tensor,
        physics: LinearPhysics,
        cond: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> Estimate:
        raise NotImplementedError


@runtime_checkable
class Prior(Protocol):
    """A learned (or hand-made) regulariser: negative log-likelihood of each image."""

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor: ...


_REGISTRY: Registry[Method] = Registry("method")
#: class decorator: make a method constructible by name from an experiment row
register_method = _REGISTRY.register
registered_methods = _REGISTRY.all
method_class = _REGISTRY.lookup


class PosteriorSampler(Method):
    """An amortised sampler: draws x ~ p(x | y) in one pass (cINN, iUNet, SNF).

    Subclasses implement `sample` for one measurement with a per-image generator; the point
    estimate of `reconstruct` is the conditional mean of `num_samples` samples (seed 000 Eq. 7),
    the mean of the unclipped samples: the papers' estimator.
    """

    num_samples: int = 100

    def sample(
        self,
        y: torch.Tensor,
        physics: LinearPhysics,
        cond: torch.Tensor | None,
        index: int,
        num: int,
    ) -> torch.Tensor:
        """`num` samples (num, *image) for ONE measurement, seeded by its split `index`."""
        raise NotImplementedError

    def sample_images(
        self,
        ys: Sequence[torch.Tensor],
        physics: LinearPhysics,
        conds: torch.Tensor | None,
        indices: Sequence[int],
        num: int,
    ) -> torch.Tensor:
        """`num` samples of each of several measurements -> (b, num, *image), each image's drawn
        with its own generator: the same numbers as `sample` one image at a time. Samplers that
        can batch draws ACROSS images (the cINN) override this; measurements may differ in shape
        (fastMRI k-space widths), so `ys` is a sequence, not a stacked tensor."""
        return torch.stack(
            [
                self.sample(y, physics, None if conds is None else conds[i], index, num)
                for i, (y, index) in enumerate(zip(ys, indices, strict=True))
            ]
        )

    def reconstruct(
        self,
        y: torch.Tensor,
        physics: LinearPhysics,
        cond: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> Estimate:
        indices = list(range(len(y))) if indices is None else list(indices)
        samples = self.sample_images(list(y), physics, cond, indices, self.num_samples)
        return Estimate(samples.mean(1), samples, {"std": samples.std(1)})
