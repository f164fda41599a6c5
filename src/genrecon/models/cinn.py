"""Multi-scale conditional invertible network (seed 000 Sec. 2.8 and App. A.2; seed 001 App. 6.1).

Per level: invertible downsampling (Haar or i-RevNet), conditional GLOW affine couplings whose
subnets alternate 1x1 and 3x3 kernels, each followed by a fixed random orthogonal 1x1 convolution;
optionally half the channels split off to the output after each level. The rest is flattened,
all but `dense_dim` dimensions go to the output, and a dense conditional section (random
permutation + GLOW coupling with dense subnets) finishes. Built from FrEIA blocks.
Images are reflect-padded so that every level halves evenly (LoDoPaB: 362 -> 384).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
import torch.nn.functional as F
from torch import nn

from genrecon.models.base import make_base
from genrecon.models.conditioning import ConditioningNet


@dataclass(frozen=True)
class Architecture:
    levels: int
    blocks_per_level: int
    cond_channels: tuple[int, ...]
    cond_features: int
    dense_dim: int
    dense_cond: int
    downsampling: str = "haar"
    split: bool = True
    hidden: int = 64
    clamp: float = 1.5

    @classmethod
    def from_config(cls, cfg: dict) -> Architecture:
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}; known: {sorted(known)}")
        cfg = dict(cfg)
        cfg["cond_channels"] = tuple(cfg["cond_channels"])
        if len(cfg["cond_channels"]) != cfg["levels"]:
            raise ValueError("architecture: cond_channels needs one entry per level")
        return cls(**cfg)


def _conv_subnet(kernel: int, hidden: int):
    def build(c_in: int, c_out: int) -> nn.Module:
        net = nn.Sequential(
            nn.Conv2d(c_in, hidden, kernel, padding=kernel // 2),
            nn.LeakyReLU(0.1),
            nn.Conv2d(hidden, c_out, kernel, padding=kernel // 2),
        )
        _init(net)
        return net

    return build


def _dense_subnet(hidden: int):
    def build(c_in: int, c_out: int) -> nn.Module:
        net = nn.Sequential(nn.Linear(c_in, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, c_out))
        _init(net)
        return net

    return build


def _init(net: nn.Sequential) -> None:
    """Weights N(0, 0.02^2), last layer zero: every coupling starts as the identity."""
    for layer in net:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            nn.init.zeros_(layer.bias)
    nn.init.zeros_(net[-1].weight)


def padded_size(size: int, levels: int) -> int:
    step = 2**levels
    return int(math.ceil(size / step) * step)


class ConditionalMultiscaleFlow(nn.Module):
    """x <-> z given the inversion-layer output; `nll`, `sample` and `log_prob` on images."""

    def __init__(self, arch: Architecture, image_size: int, base: str = "normal", seed: int = 0):
        super().__init__()
        self.arch = arch
        self.image_size = image_size
        self.size = padded_size(image_size, arch.levels)
        self.base = make_base(base)
        self.dim = self.size * self.size
        self.cond_net = ConditioningNet(
            list(arch.cond_channels), arch.cond_features, arch.dense_cond
        )
        graph = self._build_flow(seed)
        # GraphINN orders its module_list differently from one build to the next, so its own
        # parameter names cannot be trusted across processes: register each block under its
        # node name instead and keep the graph (same module objects) out of the state dict.
        self.blocks = nn.ModuleDict(
            {node.name: node.module for node in graph.node_list if getattr(node, "module", None)}
        )
        object.__setattr__(self, "flow", graph)

    def _build_flow(self, seed: int) -> Ff.GraphINN:
        arch, size = self.arch, self.size
        generator = torch.Generator().manual_seed(seed)
        conditions = [
            Ff.ConditionNode(c, size // 2 ** (i + 1), size // 2 ** (i + 1), name=f"cond{i}")
            for i, c in enumerate(arch.cond_channels)
        ]
        conditions.append(Ff.ConditionNode(arch.dense_cond, name="cond_dense"))
        down = {"haar": Fm.HaarDownsampling, "irevnet": Fm.IRevNetDownsampling}[arch.downsampling]
        nodes: list = [Ff.InputNode(1, size, size, name="x")]
        z_parts: list = []  # flattened pieces sent to the output

        def add(inputs, module, kwargs, **extra) -> Ff.Node:
            nodes.append(Ff.Node(inputs, module, kwargs, **extra))
            return nodes[-1]

        current = nodes[0].out0
        for level in range(arch.levels):
            current = add(current, down, {}, name=f"down{level}").out0
            for block in range(arch.blocks_per_level):
                subnet = _conv_subnet(1 if block % 2 == 0 else 3, arch.hidden)
                coupling = add(
                    current,
                    Fm.GLOWCouplingBlock,
                    {"subnet_constructor": subnet, "clamp": arch.clamp},
                    conditions=conditions[level],
                    name=f"coupling{level}_{block}",
                )
                channels = coupling.output_dims[0][0]
                q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
                current = add(
                    coupling.out0, Fm.Fixed1x1Conv, {"M": q}, name=f"perm{level}_{block}"
                ).out0
            if arch.split and level < arch.levels - 1:
                channels = nodes[-1].output_dims[0][0]
                half = channels // 2
                split = add(
                    current,
                    Fm.Split,
                    {"section_sizes": [half, channels - half], "dim": 0},
                    name=f"split{level}",
                )
                z_parts.append(add(split.out1, Fm.Flatten, {}, name=f"flat{level}").out0)
                current = split.out0
        flat = add(current, Fm.Flatten, {}, name="flatten")
        remaining = flat.output_dims[0][0]
        if not 0 < arch.dense_dim < remaining:
            raise ValueError(
                f"architecture: dense_dim {arch.dense_dim} must lie in (0, {remaining})"
            )
        split = add(
            flat.out0,
            Fm.Split,
            {"section_sizes": [arch.dense_dim, remaining - arch.dense_dim], "dim": 0},
            name="split_dense",
        )
        z_parts.append(split.out1)
        current = split.out0
        for block in range(2):
            current = add(
                current, Fm.PermuteRandom, {"seed": seed + block}, name=f"dense_perm{block}"
            ).out0
            current = add(
                current,
                Fm.GLOWCouplingBlock,
                {"subnet_constructor": _dense_subnet(4 * arch.dense_dim), "clamp": arch.clamp},
                conditions=conditions[-1],
                name=f"dense_coupling{block}",
            ).out0
        z = add([current, *z_parts], Fm.Concat, {"dim": 0}, name="z")
        nodes.append(Ff.OutputNode(z, name="out"))
        return Ff.GraphINN(nodes + conditions)

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """(b, n, n) or (b, 1, n, n) -> (b, 1, size, size), reflect-padded."""
        if images.dim() == 3:
            images = images[:, None]
        extra = self.size - self.image_size
        if extra == 0:
            return images
        return F.pad(images, (0, extra, 0, extra), mode="reflect")

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, : self.image_size, : self.image_size]

    def encode(
        self, images: torch.Tensor, inversion: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z and log|det dz/dx| for images given the inversion-layer output."""
        cond = self.cond_net(self.pad(inversion))
        z, logdet = self.flow(self.pad(images), c=cond, jac=True)
        return z, logdet

    def log_prob(self, images: torch.Tensor, inversion: torch.Tensor) -> torch.Tensor:
        """log p(x | y) per image of the padded image (nats)."""
        z, logdet = self.encode(images, inversion)
        return self.base.log_prob(z) + logdet

    def nll_per_dim(self, images: torch.Tensor, inversion: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per dimension (nats), one value per image: the training loss."""
        return -self.log_prob(images, inversion) / self.dim

    @torch.no_grad()
    def sample(
        self, inversion: torch.Tensor, num: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """`num` posterior samples for ONE measurement (inversion: (n, n)) -> (num, n, n)."""
        cond = self.cond_net(self.pad(inversion[None]))
        cond = [c.expand(num, *c.shape[1:]) for c in cond]
        # Draw on the CPU from the per-image generator (same numbers on every device), then move.
        z = self.base.sample(num, self.dim, generator=generator).to(inversion.device)
        x, _ = self.flow(z, c=cond, rev=True, jac=False)
        return self.crop(x)


def bits_per_dim(nll_nats_per_dim: float) -> float:
    return nll_nats_per_dim / math.log(2.0)


def build_model(arch_cfg: dict, image_size: int, base: str, seed: int) -> ConditionalMultiscaleFlow:
    torch.manual_seed(seed)
    return ConditionalMultiscaleFlow(Architecture.from_config(arch_cfg), image_size, base, seed)
