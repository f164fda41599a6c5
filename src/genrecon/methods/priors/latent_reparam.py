"""How seed 003 parameterises the latent of a Glow during inversion (Li 2023, Sec. 2, App. D, H).

The inversion solves min_u ||A G(temperature * T(u)) - y||^2 (Eq. 4) where T is one of:

- `plain`: T(u) = u, optionally with lam ||z||^2 on the generator input z (Eq. 3);
- `spherical`: T(u) = sqrt(n) u / ||u|| over the whole latent (Bojanowski et al.; the authors'
  `spherical` in glow_wrapper2.py);
- `orthogonal`: u is FIXED at its random start and the parameter is a skew-symmetric matrix S;
  every patch vector is rotated by the Cayley matrix Q = (I + S)(I - S)^-1 (App. H, Eq. 39;
  the authors' OrthoCP builds Q from the strict upper triangle of a free matrix, zero at start,
  so the start is u itself);
- `g_layers`: T = the Gaussianization layers (models/gaussianization.py) on the patch vectors.

The partition (App. D, Fig. 15) says what a patch vector is:

- `p1`: ONE latent tensor of the image's shape (C, H, W) cut into patch x patch x C patches; the
  Glow's `unsqueeze_latent` then maps the whole tensor to its per-level inputs;
- `p2`: patches cut from each level's latent tensor directly. A level tensor (C_l, H_l, W_l) is
  first tiled into a C-channel image by splitting its channels into groups of C and stacking the
  groups along the height (the authors' `zlist_to_latent`: torch.cat(torch.split(z, nc, 1), 2)),
  so a patch is patch x patch x C at every level and ONE Gaussianization acts on them all.

Either way the parameter is the patch matrix (n, d), d = patch^2 C: the layers, the Cayley
rotation and the spherical projection all act on it. The starts are standard-normal draws of
every level's latent, cut into patches (the authors draw each level with np.random.RandomState
(seed).randn; our draws are torch's, seeded per image and start).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from genrecon.models.gaussianization import GaussianizationLayers, from_patches, to_patches

PARTITIONS = ("p1", "p2")
REPARAMETERISATIONS = ("plain", "spherical", "orthogonal", "g_layers")


class LatentGenerator(Protocol):
    """What the partition needs of the Glow (models/glow.GlowModel)."""

    latent_shapes: list[tuple[int, int, int]]

    def unsqueeze_latent(self, z: torch.Tensor) -> list[torch.Tensor]: ...

    def squeeze_latent(self, eps: list[torch.Tensor]) -> torch.Tensor: ...


def _tile(z: torch.Tensor, channels: int) -> torch.Tensor:
    """(b, C_l, H, W) -> (b, channels, H * C_l / channels, W): channel groups stacked in height."""
    return torch.cat(torch.split(z, channels, dim=1), dim=2)


def _untile(tile: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """The inverse of `_tile` for a level of shape (C_l, H, W)."""
    return torch.cat(torch.split(tile, shape[1], dim=2), dim=1)


class Partition:
    """Maps the per-level latents of a Glow to one patch matrix (b, n, d) and back."""

    def __init__(self, scheme: str, model: LatentGenerator, channels: int, patch: int) -> None:
        if scheme not in PARTITIONS:
            raise ValueError(f"partition {scheme!r} is not one of {PARTITIONS}")
        self.scheme, self.model, self.channels, self.patch = scheme, model, channels, patch
        shapes = [tuple(s) for s in model.latent_shapes]
        if scheme == "p1":
            size = shapes[0][1] * 2  # the first level is squeezed once: image = 2 x its side
            tiles = [(channels, size, size)]
        else:
            for c, _, _ in shapes:
                if c % channels:
                    raise ValueError(f"p2: level channels {c} are not a multiple of {channels}")
            tiles = [(channels, h * c // channels, w) for c, h, w in shapes]
        for _, h, w in tiles:
            if h % patch or w % patch:
                raise ValueError(
                    f"partition {scheme}: a latent tile of {h}x{w} is not a whole number of "
                    f"{patch}x{patch} patches; pick `patch` dividing every level's side"
                )
        self.shapes, self.tiles = shapes, tiles
        self.counts = [(h // patch) * (w // patch) for _, h, w in tiles]
        self.dim = channels * patch * patch

    def to_patches(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Per-level latents (each (b, C_l, H_l, W_l)) -> patch matrix (b, n, d)."""
        if self.scheme == "p1":
            return to_patches(self.model.squeeze_latent(levels), self.patch)
        return torch.cat([to_patches(_tile(z, self.channels), self.patch) for z in levels], dim=1)

    def to_levels(self, patches: torch.Tensor) -> list[torch.Tensor]:
        """Patch matrix (b, n, d) -> the per-level latents the Glow decodes."""
        if self.scheme == "p1":
            batch = patches.shape[0]
            image = from_patches(patches, (batch, *self.tiles[0]), self.patch)
            return self.model.unsqueeze_latent(image)
        out, start = [], 0
        for count, tile, shape in zip(self.counts, self.tiles, self.shapes, strict=True):
            chunk = patches[:, start : start + count]
            out.append(_untile(from_patches(chunk, (len(chunk), *tile), self.patch), shape))
            start += count
        return out

    def draw(self, generator: torch.Generator, batch: int = 1) -> torch.Tensor:
        """Standard-normal latents of every level, as a patch matrix (batch, n, d), on the CPU."""
        levels = [torch.randn((batch, *s), generator=generator) for s in self.shapes]
        return self.to_patches(levels)


def cayley(free: torch.Tensor) -> torch.Tensor:
    """Q = (I + S)(I - S)^-1, S the skew part of `free`'s strict upper triangle (App. H)."""
    upper = torch.triu(free, diagonal=1)
    skew = upper - upper.transpose(-1, -2)
    eye = torch.eye(free.shape[-1], dtype=free.dtype, device=free.device)
    return (eye + skew) @ torch.linalg.inv(eye - skew)


class Reparameterisation(nn.Module):
    """u (b, n, d) -> T(u) (b, n, d): one of REPARAMETERISATIONS (module docstring).

    `parameter(start)` is what the optimiser moves from the random start (the patch matrix
    itself, or the free matrix of the Cayley rotation); `forward(parameter, start)` maps it
    to the latent patches.
    """

    def __init__(self, kind: str, layers: dict | None = None) -> None:
        super().__init__()
        if kind not in REPARAMETERISATIONS:
            raise ValueError(f"reparam {kind!r} is not one of {REPARAMETERISATIONS}")
        if layers and kind != "g_layers":
            raise ValueError(f"reparam {kind!r} takes no Gaussianization layer settings")
        if layers and "temperature" in layers:
            raise ValueError(
                "layers.temperature: the method's `temperature` scales the latent (once); "
                "leave it out of the layers"
            )
        self.kind = kind
        self.layers = GaussianizationLayers(**(layers or {})) if kind == "g_layers" else None

    def parameter(self, start: torch.Tensor) -> torch.Tensor:
        if self.kind == "orthogonal":
            d = start.shape[-1]
            return torch.zeros((d, d), dtype=start.dtype, device=start.device)
        return start.clone()

    def forward(self, parameter: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        if self.kind == "plain":
            return parameter
        if self.kind == "spherical":
            flat = parameter.flatten(1)
            scale = flat.shape[1] ** 0.5 / flat.norm(dim=1).clamp_min(1e-12)
            return parameter * scale.reshape(-1, 1, 1)
        if self.kind == "orthogonal":
            return start @ cayley(parameter).transpose(-1, -2)
        assert self.layers is not None
        return torch.stack([self.layers(p) for p in parameter])
