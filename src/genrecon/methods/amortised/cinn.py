"""The multi-scale cINN (seed 000 Sec. 2.8, seed 001) as a `Method` and a trainable model.

- `CINNModel`: a conditional flow plus its training loss (per-image NLL per dimension in nats,
  with optional training noise and the conditioning loss of Eq. 20), the contract of
  `genrecon.training`. The flow is the architecture's `kind`: the multi-scale cINN
  (models/cinn.py), the conditional iUNet (models/iunet.py) or seed 001's 2020 cINN
  (models/cinn2020.py); all expose the same interface.
- `CINN`: the registered method "cinn". Its variant is the experiment row's settings (which
  architecture, base distribution, training noise, conditioning input and loss). It samples the
  posterior per image with a generator seeded by (seed, image index), so numbers do not depend on
  batch sizes, and refines a sample by the variational reconstruction of seed 000 Eq. 22
  (`refine`), with the cINN as the conditional prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from genrecon.methods.base import PosteriorSampler, register_method
from genrecon.models.cinn import build_model
from genrecon.models.cinn2020 import build_cinn2020
from genrecon.models.iunet import build_iunet
from genrecon.physics.base import LinearPhysics


def image_generator(seed: int, index: int) -> torch.Generator:
    """The generator of image `index`'s posterior draws: the same on every device and batch."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


# architecture `kind` -> the builder of that conditional flow (params.yaml `architectures`)
FLOWS = {"multiscale": build_model, "iunet": build_iunet, "cinn2020": build_cinn2020}


def build_flow(architecture: dict[str, Any], image_size: int, base: str, seed: int) -> nn.Module:
    """The conditional flow an `architectures` block describes (`kind`, default multiscale)."""
    cfg = dict(architecture)
    kind = cfg.pop("kind", "multiscale")
    if kind not in FLOWS:
        raise ValueError(f"architecture kind {kind!r}: known kinds {sorted(FLOWS)}")
    return FLOWS[kind](cfg, image_size, base, seed)


class CINNModel(nn.Module):
    """A cINN with its training loss; built from a JSON-serialisable `spec`."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.flow = build_flow(spec["architecture"], spec["image_size"], spec["base"], spec["seed"])
        self.train_noise = float(spec.get("train_noise", 0.0))
        self.noise_clip = spec.get("noise_clip")
        self.dequantize = bool(spec.get("dequantize", False))
        self.cond_loss = float(spec.get("cond_loss", 0.0))
        if self.cond_loss and not hasattr(self.flow, "conditioning_image"):
            raise ValueError(
                f"cond_loss={self.cond_loss}: architecture kind "
                f"{spec['architecture'].get('kind', 'multiscale')!r} has no image-space "
                "conditioning output (only the iUNet's conditioning U-Net has one)"
            )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        """NLL per dimension of each image (nats) on the padded image (+ the conditioning loss).

        Training perturbations (`perturbed`) only when `generator` is given, not for validation.
        `cond_loss` = alpha > 0 adds alpha * MSE(H(y), x) per image (seed 000 Eq. 20, the
        iUNet's conditioning U-Net), against the clean unpadded image, as the authors' training
        step; it is part of the validation loss too (theirs), so checkpoints are chosen on the
        objective that is trained.
        """
        x = self.perturbed(batch["x"], generator)
        features = self.flow.cond_net(self.flow.pad(batch["cond"].to(self.device)))
        z, logdet = self.flow.flow(x.to(self.device), c=features, jac=True)
        loss = -(self.flow.base.log_prob(z) + logdet) / self.flow.dim
        if self.cond_loss:
            error = self.flow.conditioning_image(features) - batch["x"].to(self.device)
            loss = loss + self.cond_loss * error.pow(2).flatten(1).mean(1)
        return loss

    def perturbed(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The padded training image, perturbed when `generator` is given (training only).

        In the authors' order: pad first, then add noise, then clip to `noise_clip` ([0, 1];
        None: no clip, see params.yaml's smoke overlay for why). Noise added before the
        reflect padding would make the padded border an exact copy of interior pixels: an
        unbounded likelihood on those dimensions (FACTS). `dequantize` (MNIST, whose many exact
        zeros make an undequantised likelihood degenerate; the paper is silent) replaces each
        8-bit grey level v/255 by (v + u)/256, u ~ U(0, 1).
        """
        x = self.flow.pad(x)
        if generator is not None and self.dequantize:
            x = (x * 255.0 + torch.rand(x.shape, generator=generator)) / 256.0
        if generator is not None and self.train_noise > 0:
            x = x + self.train_noise * torch.randn(x.shape, generator=generator)
            if self.noise_clip is not None:
                x = x.clamp(*self.noise_clip)
        return x

    def encode_padded(self, x: torch.Tensor, cond: torch.Tensor):
        """z and log|det dz/dx| of an already padded image (b, 1, S, S) given the condition."""
        features = self.flow.cond_net(self.flow.pad(cond))
        return self.flow.flow(x, c=features, jac=True)


class CINNPrior:
    """The regulariser of seed 000 Eq. 22 as the authors computed it: the normal-form NLL per
    dimension, mean(z^2)/2 - logdet/D, on the padded image, whatever the model's base.

    Per dimension matters: a lambda multiplying the NLL summed over D dimensions is D times
    stronger, and with Adam (invariant to the gradient's scale) every lambda > 0 then gives the
    same iterates, so the Table 4 curve could not appear (FACTS).
    """

    def __init__(self, model: CINNModel):
        self.model = model

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        z, logdet = self.model.encode_padded(self.model.flow.pad(x), cond)
        return 0.5 * (z**2).mean(1) - logdet / self.model.flow.dim


@register_method("cinn")
class CINN(PosteriorSampler):
    """Multi-scale conditional invertible network; `variant` = this constructor's arguments."""

    trainable = True
    uses_conditioning = True

    def __init__(
        self,
        arch: str,
        base: str = "normal",
        train_noise: float = 0.0,
        conditioning: str | None = None,
        dequantize: bool = False,
        noise_clip: list[float] | None = None,
        cond_loss: float = 0.0,
    ):
        self.arch = arch
        self.base = base
        self.train_noise = train_noise
        self.conditioning = conditioning
        self.dequantize = dequantize
        self.noise_clip = noise_clip
        self.cond_loss = cond_loss
        self.model: CINNModel | None = None
        self.seed = 0
        self.batch_samples = 100

    # ---- training ------------------------------------------------------------------------
    def spec(self, fit: dict[str, Any], image_shape: tuple[int, ...]) -> dict[str, Any]:
        """What rebuilds the model (stored as JSON beside every checkpoint), from the job's
        settings (`config.fit_settings`) and the shape of one training image."""
        return {
            "kind": "cinn",
            "architecture": fit["variant"]["architecture"],
            "image_size": int(image_shape[-1]),
            "base": self.base,
            "train_noise": self.train_noise,
            "dequantize": self.dequantize,
            "noise_clip": self.noise_clip,
            "cond_loss": self.cond_loss,
            "conditioning": self.conditioning,
            "seed": fit["seed"],
        }

    @staticmethod
    def build(spec: dict[str, Any]) -> CINNModel:
        return CINNModel(spec)

    def attach(self, model: CINNModel, seed: int, settings: dict) -> CINN:
        """Use a trained model; `seed` seeds the per-image draws, drawn in batches of
        `settings["batch_samples"]` (default 100; the numbers do not depend on it)."""
        self.model = model.eval()
        self.seed = seed
        self.batch_samples = int(settings.get("batch_samples", 100))
        self.num_samples = int(settings.get("num_samples", self.num_samples))
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        return self

    # ---- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        y: torch.Tensor,
        physics: LinearPhysics,
        cond: torch.Tensor | None,
        index: int,
        num: int,
    ) -> torch.Tensor:
        """`num` posterior samples for one measurement, drawn `batch_samples` at a time."""
        return self.sample_images([y], physics, torch.as_tensor(cond)[None], [index], num)[0]

    def _latents(self, index: int, num: int) -> torch.Tensor:
        """Image `index`'s `num` latents, drawn on the CPU from its own generator in blocks of
        `batch_samples` (the same numbers on every device, and whatever images share a pass)."""
        flow, generator = self.model.flow, image_generator(self.seed, index)
        return torch.cat(
            [
                flow.base.sample(
                    min(self.batch_samples, num - start), flow.dim, generator=generator
                )
                for start in range(0, num, self.batch_samples)
            ]
        )

    @torch.no_grad()
    def sample_images(
        self,
        ys: Sequence[torch.Tensor],
        physics: LinearPhysics,
        conds: torch.Tensor | None,
        indices: Sequence[int],
        num: int,
    ) -> torch.Tensor:
        """`num` samples of each image -> (b, num, n, n), with inverse passes of `batch_samples`
        latents that may mix images: one sample each of 100 images (the refinement's starts) or
        the 100 samples of many small fastMRI slices take one pass instead of one per image.
        Each image's conditioning features are computed on their own, as `sample` does, so
        its samples do not depend on which images share its pass."""
        if self.model is None:
            raise RuntimeError("cinn: no trained model attached (load a checkpoint first)")
        flow, device = self.model.flow, self.model.device
        conds = torch.as_tensor(conds).to(device)
        features = [flow.cond_net(flow.pad(c[None])) for c in conds]
        z = torch.cat([self._latents(index, num) for index in indices])
        owner = torch.arange(len(indices)).repeat_interleave(num)
        images = []
        for start in range(0, len(z), self.batch_samples):
            rows = owner[start : start + self.batch_samples].tolist()
            level_conds = [
                torch.cat([features[i][level] for i in rows]) for level in range(len(features[0]))
            ]
            block = z[start : start + self.batch_samples].to(device)
            images.append(flow.decode(block, level_conds).cpu())
        return torch.cat(images).reshape(len(indices), num, *images[0].shape[1:])

    def refine(
        self,
        y: torch.Tensor,
        physics: LinearPhysics,
        cond: torch.Tensor,
        start: torch.Tensor,
        lam: float,
        steps: int,
        lr: float,
    ) -> torch.Tensor:
        """Seed 000 Eq. 22: min ||A x - y||^2 + lam * NLL(x | y) from `start`, Adam, x >= 0."""
        from genrecon.optim.fidelity import L2
        from genrecon.optim.variational import variational_reconstruction

        assert self.model is not None
        model = self.model.cpu()  # the ODL/astra bridge works on CPU tensors
        return variational_reconstruction(
            physics,
            y,
            L2(half=False),
            CINNPrior(model) if lam > 0 else None,
            lam,
            x0=start,
            cond=cond,
            steps=steps,
            lr=lr,
            lower=0.0,
        )
