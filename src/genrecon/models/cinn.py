"""Multi-scale conditional invertible network (seed 000 Sec. 2.8 and App. A.2; seed 001 App. 6.1).

Two layouts, chosen by the architecture key `layout`:

`simple` (the default, kept bit-for-bit for existing configs): per level an invertible
downsampling (Haar or i-RevNet), conditional GLOW affine couplings whose subnets alternate 1x1
and 3x3 kernels (fixed `hidden` width), each followed by a fixed random orthogonal 1x1
convolution; optionally half the channels split off to the output after each level. The rest is
flattened, all but `dense_dim` dimensions go to the output, and a dense conditional section
(2 x random permutation + GLOW coupling with dense subnets) finishes.

`authors`: the seed authors' model (cinn_for_imaging, networks/cinn.py + cond_net.py), see
`ConditionalMultiscaleFlow._build_authors_flow` and `conditioning.ResNetConditioningNet`.

Built from FrEIA blocks. Images are reflect-padded so that every level halves evenly
(LoDoPaB: 362 -> 384).
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
from genrecon.models.conditioning import ConditioningNet, ResNetConditioningNet
from genrecon.models.downsampling import LearnedInvertibleDownsampling

LAYOUTS = ("simple", "authors")
# Keys that only the authors' layout reads, and keys that only the simple layout reads: a key
# given to a layout that ignores it is an error rather than a silent no-op.
_AUTHORS_ONLY = {"cond_levels", "uncond_blocks", "dense_blocks", "act_norm"}
_SIMPLE_ONLY = {"hidden"}
_DOWNSAMPLING = {
    "haar": Fm.HaarDownsampling,
    "irevnet": Fm.IRevNetDownsampling,
    "learned": LearnedInvertibleDownsampling,
}


@dataclass(frozen=True)
class Architecture:
    """The `architectures.<name>` block of params.yaml.

    Shared keys mean, per layout:
      levels: invertible downsamplings (the image is padded to a multiple of 2^levels).
      blocks_per_level: conditioned couplings per conditioned section.
      cond_channels: simple: the conditioning features per level (one per level);
        authors: the widths of the conditioning chain (levels + 1 entries); head i uses the
        first i + 1, the dense head all of them (theirs: [4, 16, 32, 64, 64, 32]).
      cond_features: width of the conditioning net's stem.
      dense_dim / dense_cond: dimensions of the dense section / of its condition vector.
      downsampling: haar | irevnet | learned.   split: split half the channels off per level.
      hidden: simple only, the fixed subnet width (authors: 2 x the subnet's input width).
    """

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
    layout: str = "simple"  # "simple" (default) or "authors"
    # read by layout "authors" only (see ConditionalMultiscaleFlow._build_authors_flow):
    cond_levels: int | None = None  # the first `cond_levels` levels get a conditioned section
    uncond_blocks: int = 2  # unconditioned 1x1-subnet couplings after every downsampling
    dense_blocks: int = 2  # [random permutation + dense GLOW coupling] pairs at the end
    act_norm: bool = True  # ActNorm after every coupling (data-dependent init, first batch)

    @classmethod
    def from_config(cls, cfg: dict) -> Architecture:
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}; known: {sorted(known)}")
        cfg = dict(cfg)
        cfg["cond_channels"] = tuple(cfg["cond_channels"])
        layout = cfg.get("layout", "simple")
        if layout not in LAYOUTS:
            raise ValueError(f"architecture: unknown layout {layout!r}; known: {list(LAYOUTS)}")
        ignored = set(cfg) & (_SIMPLE_ONLY if layout == "authors" else _AUTHORS_ONLY)
        if ignored:
            raise ValueError(f"architecture: layout {layout!r} does not use {sorted(ignored)}")
        if cfg.get("downsampling", "haar") not in _DOWNSAMPLING:
            raise ValueError(
                f"architecture: unknown downsampling {cfg['downsampling']!r}; "
                f"known: {sorted(_DOWNSAMPLING)}"
            )
        if layout == "simple" and len(cfg["cond_channels"]) != cfg["levels"]:
            raise ValueError("architecture: cond_channels needs one entry per level")
        if layout == "authors":
            if "cond_levels" not in cfg:
                raise ValueError("architecture: layout 'authors' needs cond_levels")
            if not 0 <= cfg["cond_levels"] <= cfg["levels"]:
                raise ValueError("architecture: cond_levels must lie in [0, levels]")
            if len(cfg["cond_channels"]) != cfg["levels"] + 1:
                raise ValueError(
                    "architecture: layout 'authors' needs levels + 1 cond_channels (the widths "
                    "of the conditioning chain; the dense head runs all of them)"
                )
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


def _authors_subnet(kernel: int | None):
    """Subnet of the authors' couplings: 3 layers i -> 2i -> 2i -> o, LeakyReLU(0.01).

    kernel: 1 or 3 for convolutions, None for the dense section's linear layers. i is the
    subnet's input width including the condition (FrEIA concatenates it), so the width grows
    with the condition, as theirs. Initialised as their `init_params`: every weight and
    bias N(0, 0.02^2), the last layer zero, so every coupling starts as the identity.
    """

    def build(c_in: int, c_out: int) -> nn.Module:
        if kernel is None:
            layers = [nn.Linear(c_in, 2 * c_in), nn.Linear(2 * c_in, 2 * c_in)]
            layers.append(nn.Linear(2 * c_in, c_out))
        else:
            pad = kernel // 2
            layers = [
                nn.Conv2d(c_in, 2 * c_in, kernel, padding=pad),
                nn.Conv2d(2 * c_in, 2 * c_in, kernel, padding=pad),
                nn.Conv2d(2 * c_in, c_out, kernel, padding=pad),
            ]
        for layer in layers[:-1]:
            nn.init.normal_(layer.weight, 0.0, 0.02)
            nn.init.normal_(layer.bias, 0.0, 0.02)
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        return nn.Sequential(
            layers[0], nn.LeakyReLU(0.01), layers[1], nn.LeakyReLU(0.01), layers[2]
        )

    return build


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
        if arch.layout == "authors":
            self.cond_net = ResNetConditioningNet(
                list(arch.cond_channels), arch.cond_levels, arch.cond_features, arch.dense_cond
            )
            graph = self._build_authors_flow(seed)
        else:
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
        down = _DOWNSAMPLING[arch.downsampling]
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

    def _build_authors_flow(self, seed: int) -> Ff.GraphINN:
        """The seed authors' multi-scale cINN (cinn_for_imaging networks/cinn.py, `build_inn`).

        For level l = 0 .. levels-1:
          downsampling (learned: orthogonal per-channel 2x2 -> 4, Haar at init),
          `uncond_blocks` unconditioned GLOW couplings with 1x1 subnets (+ ActNorm each),
          for l >= 1 and `split`: half the channels split off to the output,
          for l < cond_levels: the conditioned section, `blocks_per_level` x [conditioned GLOW
          coupling (subnet 1x1 for even, 3x3 for odd blocks), ActNorm, fixed orthogonal 1x1].
        Then flatten, all but `dense_dim` dimensions to the output, and `dense_blocks` x
        [random permutation + dense GLOW coupling] conditioned on the dense head's vector.

        At paper scale (levels 5, cond_levels 4, 384 px): 5 downsamplings, conditioned sections
        with 4/8/16/32 channels at 192/96/48/24 px, the dense section on 128 of the 64x12x12
        remaining dimensions. The first level is not split, as theirs (the split follows the
        downsampling of levels 1..4). The fifth downsampling has no conditioned section there;
        their conditioning net still builds a head for it that nothing consumes: not here.

        Their other known defect, a coupling-type switch that adds a second coupling block where
        one was meant, lives in their iUNet (networks/iunet.py), not in this model; nothing of
        it is reproduced. Clamp: FrEIA's GLOW clamp (atan soft clamp) at `clamp` (theirs 1.5).
        """
        arch, size = self.arch, self.size
        generator = torch.Generator().manual_seed(seed)
        conditions = [
            Ff.ConditionNode(
                arch.cond_channels[i], size // 2 ** (i + 1), size // 2 ** (i + 1), name=f"cond{i}"
            )
            for i in range(arch.cond_levels)
        ]
        conditions.append(Ff.ConditionNode(arch.dense_cond, name="cond_dense"))
        down = _DOWNSAMPLING[arch.downsampling]
        nodes: list = [Ff.InputNode(1, size, size, name="x")]
        z_parts: list = []

        def add(inputs, module, kwargs, **extra) -> Ff.Node:
            nodes.append(Ff.Node(inputs, module, kwargs, **extra))
            return nodes[-1]

        def glow(inputs, subnet, name: str, condition=None):
            coupling = add(
                inputs,
                Fm.GLOWCouplingBlock,
                {"subnet_constructor": subnet, "clamp": arch.clamp},
                conditions=condition,
                name=name,
            )
            if not arch.act_norm:
                return coupling.out0
            return add(coupling.out0, Fm.ActNorm, {}, name=f"actnorm_{name}").out0

        current = nodes[0].out0
        for level in range(arch.levels):
            current = add(current, down, {}, name=f"down{level}").out0
            for block in range(arch.uncond_blocks):
                current = glow(current, _authors_subnet(1), f"uncond{level}_{block}")
            if arch.split and level > 0:
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
            if level >= arch.cond_levels:
                continue
            for block in range(arch.blocks_per_level):
                subnet = _authors_subnet(1 if block % 2 == 0 else 3)
                current = glow(current, subnet, f"coupling{level}_{block}", conditions[level])
                channels = nodes[-1].output_dims[0][0]
                q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
                current = add(current, Fm.Fixed1x1Conv, {"M": q}, name=f"perm{level}_{block}").out0
        flat = add(current, Fm.Flatten, {}, name="flatten")
        remaining = flat.output_dims[0][0]
        if not 0 < arch.dense_dim <= remaining:
            raise ValueError(
                f"architecture: dense_dim {arch.dense_dim} must lie in (0, {remaining}]"
            )
        if arch.dense_dim < remaining:
            split = add(
                flat.out0,
                Fm.Split,
                {"section_sizes": [arch.dense_dim, remaining - arch.dense_dim], "dim": 0},
                name="split_dense",
            )
            z_parts.append(split.out1)
            current = split.out0
        else:
            current = flat.out0
        for block in range(arch.dense_blocks):
            current = add(
                current, Fm.PermuteRandom, {"seed": seed + block}, name=f"dense_perm{block}"
            ).out0
            coupling = add(
                current,
                Fm.GLOWCouplingBlock,
                {"subnet_constructor": _authors_subnet(None), "clamp": arch.clamp},
                conditions=conditions[-1],
                name=f"dense_coupling{block}",
            )
            current = coupling.out0
        # Output order as theirs: the split-off parts level by level, then the dense section.
        z = add([*z_parts, current], Fm.Concat, {"dim": 0}, name="z")
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
