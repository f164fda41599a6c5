"""Generator-regularised inversion with a trained Glow (seed 003, Li 2023, Eq. 4 and Sec. 4).

For each image and each of `starts` random starts (the paper: 3), minimise with L-BFGS
(`optim.lbfgs`, the authors' optimiser and options)

    J(u) = 1/2 ||A clip(G(temperature * T(u))) - y||^2  [+ lam ||temperature * T(u)||^2]

over the latent parameter u, T one of the reparameterisations of `latent_reparam` (plain,
spherical, orthogonal, Gaussianization layers) on the patches of a partition (P1 or P2).
The authors' choices kept: the objective is the plain half squared misfit (no noise weighting;
dgminv/optimize/inversion_solver.py `lossFunc`), the generator output is clipped to the data range
before the forward model (glow_wrapper*.py `torch.clamp`), the temperature (0.7 for Glow)
multiplies the latent after T. `lam` is the issue's "plain, with the lam ||z||^2 sweep" on the
generator input z (the authors' Table 7 weighted Glow's negative log-likelihood of x instead).

`reconstruct` returns every start (`samples`, (b, starts, C, H, W)) and, as the point estimate,
the start with the lowest final J: what a user without the truth can pick. The paper instead
reports, per metric, the best of the three starts judged against the truth; the evaluation
protocol (evaluation/inversion.py) computes that estimator from `samples`, labelled as such.

Two registered methods share this code:
- `glow` trains the Glow (`fit`) and then inverts with its own variant;
- `glow_latent` inverts with ANOTHER experiment's trained Glow (variant `generator_model`, a
  parent), so one training serves every reparameterisation and ablation row.
Only `arch` shapes the training (`training_keys`): the inversion keys of a `glow` row can change
without retraining its Glow.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from genrecon.methods.base import Estimate, Method, register_method
from genrecon.methods.priors.latent_reparam import Partition, Reparameterisation
from genrecon.models.glow import GlowModel
from genrecon.optim.lbfgs import minimize_lbfgs


def start_generator(seed: int, index: int, start: int) -> torch.Generator:
    """The random start `start` of image `index`: independent of batches and of the method."""
    return torch.Generator().manual_seed(1_000_003 * int(seed) + 7_919 * int(index) + int(start))


@register_method("glow")
class GlowPrior(Method):
    """Train a Glow, then invert with it; `variant` = this constructor's arguments.

    `layers`: the Gaussianization layers' switches for reparam g_layers (ablations, Tables 2, 9;
    keys of models.gaussianization.GaussianizationLayers, e.g. {ica: true, lambert: true}).
    """

    trainable = True
    training_keys: ClassVar[tuple[str, ...] | None] = ("arch",)

    def __init__(
        self,
        arch: str | None = None,
        reparam: str = "g_layers",
        partition: str = "p2",
        patch: int = 8,
        layers: dict[str, Any] | None = None,
        temperature: float = 0.7,
        lam: float = 0.0,
        starts: int = 3,
        iterations: int = 510,
        memory: int = 30,
        generator_model: str | None = None,
    ) -> None:
        if int(starts) < 1 or int(iterations) < 0 or int(patch) < 1:
            raise ValueError(
                f"{self.name}: starts ({starts}) must be >= 1, iterations ({iterations}) >= 0, "
                f"patch ({patch}) >= 1"
            )
        if float(lam) and reparam != "plain":
            raise ValueError(f"{self.name}: lam ||z||^2 is the plain reparameterisation's penalty")
        self.arch = arch
        self.reparam = Reparameterisation(reparam, layers)
        self.partition_scheme = partition
        self.patch = int(patch)
        self.temperature = float(temperature)
        self.lam = float(lam)
        self.starts = int(starts)
        self.iterations = int(iterations)
        self.memory = int(memory)
        self.generator_model = generator_model
        self.model: GlowModel | None = None
        self.seed = 0
        #: per image of the last `reconstruct`: final J of every start, seconds, L-BFGS iterations
        self.last_solves: list[dict[str, Any]] = []

    @classmethod
    def check_variant(cls, name: str, settings: dict) -> str | None:
        """The reparameterisation, its layers and the partition's patch against the Glow's
        latent shapes at this scale (the trained Glow's: this row's arch, or its parent's)."""
        from types import SimpleNamespace

        from genrecon.models.glow import latent_shapes_for

        row = settings["experiments"][name]
        variant = row["variant"]
        try:
            cls(**variant)  # reparam, layers, lam, starts, iterations, patch
        except (TypeError, ValueError) as error:
            return str(error)
        owner = variant.get("generator_model") if cls.parents else name
        arch_name = (settings["experiments"].get(owner) or {}).get("variant", {}).get("arch")
        if arch_name is None:
            return None  # a missing parent is check_parents' error
        arch = settings["architectures"][arch_name]
        data = settings["datasets"][row["dataset"]]
        shapes = latent_shapes_for(
            int(data.get("channels", 1)), int(data["image_size"]), arch["levels"]
        )
        glow = SimpleNamespace(latent_shapes=shapes)
        try:
            Partition(
                variant.get("partition", "p2"),
                glow,
                int(data.get("channels", 1)),
                int(variant.get("patch", 8)),
            )
        except ValueError as error:
            return str(error)
        return None

    # ---- training ------------------------------------------------------------------------
    def spec(self, fit_job: dict[str, Any], image_shape: tuple[int, ...]) -> dict[str, Any]:
        """The Glow's JSON architecture from the job's `arch` and one image's (C, H, W)."""
        return {
            "kind": "glow",
            **fit_job["variant"]["architecture"],
            "channels": int(image_shape[0]) if len(image_shape) == 3 else 1,  # (H, W): grey
            "image_size": int(image_shape[-1]),
        }

    @staticmethod
    def build(spec: dict[str, Any]) -> GlowModel:
        return GlowModel(spec)

    def attach(self, model: GlowModel, seed: int, settings: dict) -> GlowPrior:
        """Use a trained Glow (eval mode, frozen); `seed` seeds the random starts."""
        self.model = model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.seed = int(seed)
        return self

    # ---- inversion -----------------------------------------------------------------------
    def glow(self) -> GlowModel:
        if self.model is None:
            raise RuntimeError(
                f"{self.name}: no trained Glow attached (a glow row attaches its own checkpoint; "
                f"a glow_latent row needs generator_model = {self.generator_model!r} handed over "
                "by use_parents)"
            )
        return self.model

    def partition(self) -> Partition:
        model = self.glow()
        return Partition(self.partition_scheme, model, model.channels, self.patch)

    def image(self, parameter: torch.Tensor, start: torch.Tensor, part: Partition):
        """(G(z) clipped to [0, 1], z): the image of a latent parameter, and its Glow input."""
        patches = self.reparam(parameter, start) * self.temperature
        levels = part.to_levels(patches)
        return self.glow().decode(levels).clamp(0.0, 1.0), levels

    def objective(self, physics: Any, y: torch.Tensor, start: torch.Tensor, part: Partition):
        """u -> J(u) for ONE image (y without its batch axis)."""

        scale = float(getattr(physics, "misfit_scale", 1.0))  # eikonal: travel times ~1e-4 s

        def value(parameter: torch.Tensor) -> torch.Tensor:
            image, levels = self.image(parameter, start, part)
            misfit = 0.5 * scale * (physics.A(image) - y.unsqueeze(0)).square().sum()
            if self.lam:
                misfit = misfit + self.lam * sum(z.square().sum() for z in levels)
            return misfit

        return value

    def solve_one(self, y: torch.Tensor, physics: Any, index: int) -> tuple[torch.Tensor, dict]:
        """Every start of one image: (images (starts, C, H, W), record of the solves)."""
        model, part = self.glow(), self.partition()
        device = next(model.parameters()).device
        y = y.to(device, torch.float32)
        images, values, iterations = [], [], []
        began = time.perf_counter()
        for k in range(self.starts):
            start = part.draw(start_generator(self.seed, index, k)).to(device)
            objective = self.objective(physics, y, start, part)
            result = minimize_lbfgs(
                objective, self.reparam.parameter(start), self.iterations, self.memory
            )
            with torch.no_grad():
                image, _ = self.image(result.x, start, part)
            images.append(image[0])
            values.append(result.value)
            iterations.append(result.iterations)
        record = {
            "objective": values,
            "iterations": iterations,
            "seconds": time.perf_counter() - began,
        }
        return torch.stack(images), record

    def reconstruct(
        self,
        y: torch.Tensor,
        physics: Any,
        cond: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> Estimate:
        """Each image on its own, every start; point = the start with the lowest final J."""
        indices = list(range(len(y))) if indices is None else list(indices)
        samples, points, self.last_solves = [], [], []
        for measurement, index in zip(y, indices, strict=True):
            images, record = self.solve_one(measurement, physics, index)
            best = min(range(self.starts), key=lambda k: record["objective"][k])
            samples.append(images)
            points.append(images[best])
            self.last_solves.append({**record, "chosen": best})
        samples_t = torch.stack(samples).to(y.device)
        return Estimate(point=torch.stack(points).to(y.device), samples=samples_t)


@register_method("glow_latent")
class GlowLatent(GlowPrior):
    """The inversion of `glow` with another experiment's trained Glow (`generator_model`)."""

    trainable = False
    parents: ClassVar[tuple[str, ...]] = ("generator_model",)

    @classmethod
    def check_parent(cls, key: str, parent_row: dict) -> str | None:
        if parent_row["method"] != "glow":
            return "is not a Glow training row (method glow)"
        return None

    def use_parents(self, models: dict[str, nn.Module]) -> None:
        """Take the trained Glow of `generator_model` (eval mode, frozen)."""
        model = models.get("generator_model")
        if model is not None:
            self.attach(model, self.seed, {})
