"""Multi-scale conditional invertible network (seed 000 Sec. 2.8 and App. A.2; seed 001 App. 6.1).

The seed authors' model (cinn_for_imaging, networks/cinn.py + cond_net.py): learned invertible
downsampling, unconditioned couplings, conditioned GLOW sections with ActNorm, and a dense final
section; see `ConditionalMultiscaleFlow._build_flow` and `conditioning.ResNetConditioningNet`
(the default H; `Architecture.cond_net` picks one of Table 2's three).

Built from FrEIA blocks. Images are reflect-padded so that every level halves evenly
(LoDoPaB: 362 -> 384).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
import torch.nn.functional as F
from torch import nn

from genrecon.models.base import make_base
from genrecon.models.conditioning import CONDITIONING_NETS, CT_KERNELS
from genrecon.models.downsampling import LearnedInvertibleDownsampling


def check_keys(cls: type, cfg: dict, what: str) -> None:
    """A config block for dataclass `cls`: no unknown key, no missing required one, each named."""
    fields = cls.__dataclass_fields__
    unknown = set(cfg) - set(fields)
    if unknown:
        raise ValueError(f"unknown {what} keys {sorted(unknown)}; known: {sorted(fields)}")
    missing = {name for name, f in fields.items() if f.default is MISSING} - set(cfg)
    if missing:
        raise ValueError(f"{what}: missing keys {sorted(missing)}")


@dataclass(frozen=True)
class Architecture:
    """The `architectures.<name>` block of params.yaml (built by `ConditionalMultiscaleFlow`).

    Keys:
      levels: learned invertible downsamplings (the image is padded to a multiple of 2^levels).
      cond_levels: the first `cond_levels` levels get a conditioned section.
      blocks_per_level: conditioned couplings per conditioned section.
      cond_channels: the widths of the conditioning chain (levels + 1 entries); head i uses the
        first i + 1, the dense head the first `dense_cond_steps` (theirs, CT:
        [4, 16, 32, 64, 64, 32]; fastMRI: [4, 16, 16, 16, 32, 32, 32]).
      cond_features: width of the conditioning net's stem.
      cond_net: which conditioning network H (seed 000 Table 2; `conditioning.CONDITIONING_NETS`):
        "resnet" (the authors' default and ours), "cnn" or "avgpool".
      dense_dim / dense_cond: dimensions of the dense section / of its condition vector.
      split: after the downsampling of every level but the first, half the channels go to z.
      uncond_blocks: unconditioned 1x1-subnet couplings after every downsampling.
      dense_blocks: [random permutation, dense GLOW coupling] pairs at the end.
      act_norm: ActNorm after every coupling (data-dependent init, first batch).
      clamp: FrEIA's GLOW soft clamp.

    Keys where the authors' fastMRI model (cinn_mri.py, cond_net_mri.py) differs from their CT
    one; each default is the CT choice, so CT and MNIST blocks build exactly as before:
      cond_kernels: kernel of the conditioning ResNet heads' stride-2 convolutions, step by
        step, the last value repeating: (5, 5, 5, 5, 3) as their CT heads ([5, 5, 5, 5, 3, 3]);
        [3] for fastMRI (3x3 throughout). Odd; no effect on the cnn/avgpool nets (no strided
        convolutions there).
      dense_cond_steps: halvings of the conditioning net's dense head; null = len(cond_channels),
        as their CT net (384 -> 6x6); their fastMRI net makes one fewer (6 of 7: 320 -> 5x5).
      cond_block_norm: BatchNorm after both 3x3 convolutions inside the conditioning ResBlocks
        (their CT ResBlock); false: only the BatchNorm on the residual sum (their fastMRI one).
      dense_permute: "before": each dense coupling preceded by its random permutation (their CT
        `build_inn`); "after": followed by it (their fastMRI `_add_fc_section`). Not a
        reparametrisation: see `ConditionalMultiscaleFlow._build_flow`.
    """

    levels: int
    cond_levels: int
    blocks_per_level: int
    cond_channels: tuple[int, ...]
    cond_features: int
    dense_dim: int
    dense_cond: int
    split: bool = True
    clamp: float = 1.5
    uncond_blocks: int = 2
    dense_blocks: int = 2
    act_norm: bool = True
    cond_net: str = "resnet"
    cond_kernels: tuple[int, ...] = CT_KERNELS
    dense_cond_steps: int | None = None
    cond_block_norm: bool = True
    dense_permute: str = "before"

    def __post_init__(self) -> None:
        # here rather than in from_config: a direct construction is checked too, and a typo must
        # not silently fall back to the default network
        if self.cond_net not in CONDITIONING_NETS:
            raise ValueError(
                f"architecture: unknown cond_net {self.cond_net!r}; known: "
                f"{sorted(CONDITIONING_NETS)}"
            )
        kernels = self.cond_kernels
        if (
            not isinstance(kernels, tuple)
            or not kernels
            or any(isinstance(k, bool) or not isinstance(k, int) for k in kernels)
            or any(k < 1 or k % 2 == 0 for k in kernels)
        ):
            raise ValueError(
                f"architecture: cond_kernels {kernels!r} must be a non-empty list of odd "
                "integers >= 1 (padding k // 2 must halve every size)"
            )
        steps, chain = self.dense_cond_steps, len(self.cond_channels)
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= chain
        ):
            raise ValueError(
                f"architecture: dense_cond_steps {steps!r} must be null or an integer in "
                f"[1, {chain}] (len(cond_channels))"
            )
        if not isinstance(self.cond_block_norm, bool):
            raise ValueError(
                f"architecture: cond_block_norm must be true or false, not {self.cond_block_norm!r}"
            )
        if self.dense_permute not in ("before", "after"):
            raise ValueError(
                f"architecture: dense_permute {self.dense_permute!r} must be 'before' or 'after'"
            )

    @classmethod
    def from_config(cls, cfg: dict) -> Architecture:
        check_keys(cls, cfg, "architecture")
        cfg = dict(cfg)
        cfg["cond_channels"] = tuple(cfg["cond_channels"])
        if isinstance(cfg.get("cond_kernels"), list):
            cfg["cond_kernels"] = tuple(cfg["cond_kernels"])
        if not 0 <= cfg["cond_levels"] <= cfg["levels"]:
            raise ValueError("architecture: cond_levels must lie in [0, levels]")
        if len(cfg["cond_channels"]) != cfg["levels"] + 1:
            raise ValueError(
                "architecture: needs levels + 1 cond_channels (the widths of the conditioning "
                "chain; by default the dense head runs all of them)"
            )
        return cls(**cfg)


def coupling_subnet(kernel: int | None, widths: tuple[int, int] | None = None):
    """Subnet of the authors' couplings: 3 layers c_in -> w1 -> w2 -> c_out, LeakyReLU(0.01).

    kernel: 1 or 3 for convolutions (padding k // 2), None for a dense section's linear layers.
    widths: the two hidden widths; None = (2 c_in, 2 c_in), the 2021 models' subnets, where
    c_in is the subnet's input width including the condition (FrEIA concatenates it), so the
    width grows with the condition, as theirs; the 2020 model fixes them (64, 92 / 512, 512).
    Initialised as their `init_params`: every weight and bias N(0, 0.02^2), the last layer
    zero, so every coupling starts as the identity.
    """

    def build(c_in: int, c_out: int) -> nn.Module:
        w1, w2 = (2 * c_in, 2 * c_in) if widths is None else widths
        if kernel is None:
            layers = [nn.Linear(c_in, w1), nn.Linear(w1, w2), nn.Linear(w2, c_out)]
        else:
            pad = kernel // 2
            layers = [
                nn.Conv2d(c_in, w1, kernel, padding=pad),
                nn.Conv2d(w1, w2, kernel, padding=pad),
                nn.Conv2d(w2, c_out, kernel, padding=pad),
            ]
        for layer in layers[:-1]:
            nn.init.normal_(layer.weight, 0.0, 0.02)
            nn.init.normal_(layer.bias, 0.0, 0.02)
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        modules = (layers[0], nn.LeakyReLU(0.01), layers[1], nn.LeakyReLU(0.01), layers[2])
        if kernel is None:
            return nn.Sequential(*modules)
        return _ChannelsLast(*modules).to(memory_format=torch.channels_last)

    return build


class _ChannelsLast(nn.Sequential):
    """Convolutions in channels-last layout, oneDNN's fast one for these narrow convolutions (as
    the conditioning net): the paper-scale flow's inverse pass of 8 samples on 2 cores takes
    0.68 s instead of 0.94 s. Input and output stay in the default layout, because FrEIA's
    Flatten and Split take views that need it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def padded_size(size: int, levels: int) -> int:
    step = 2**levels
    return int(math.ceil(size / step) * step)


class ConditionalImageFlow(nn.Module):
    """An image flow x <-> z given the inversion-layer output: what the cINN method relies on.

    Subclasses set `image_size`, `size` (the padded size), `dim`, `base`, `cond_net` (inversion
    image -> list of conditions) and `flow` (FrEIA-style: `flow(x, c=conds, jac=True)` and
    `rev=True`); the multi-scale cINN and the conditional iUNet share everything below.
    """

    def __init__(self, image_size: int, levels: int, base: str):
        super().__init__()
        self.image_size = image_size
        self.size = padded_size(image_size, levels)  # every level halves evenly
        self.base = make_base(base)
        self.dim = self.size * self.size

    def adopt(self, graph: Ff.GraphINN) -> None:
        """Make `graph` this flow's `flow`, its blocks registered under their node names.

        GraphINN orders its module_list differently from one build to the next, so its own
        parameter names cannot be trusted across processes: each block is registered under
        its node name instead, and the graph (the same module objects) kept out of the state
        dict.
        """
        self.blocks = nn.ModuleDict(
            {node.name: node.module for node in graph.node_list if getattr(node, "module", None)}
        )
        object.__setattr__(self, "flow", graph)

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
        return self.decode(z, cond)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, cond: list[torch.Tensor]) -> torch.Tensor:
        """Images (b, n, n) of latents z (b, dim) under the conditioning features `cond` (one
        row per latent): the inverse pass, for samples of one image or of many at once."""
        x, _ = self.flow(z, c=cond, rev=True, jac=False)
        return self.crop(x)


class ConditionalMultiscaleFlow(ConditionalImageFlow):
    """x <-> z given the inversion-layer output; `nll`, `sample` and `log_prob` on images."""

    def __init__(self, arch: Architecture, image_size: int, base: str = "normal", seed: int = 0):
        super().__init__(image_size, arch.levels, base)
        self.arch = arch
        self.cond_net = CONDITIONING_NETS[arch.cond_net](
            list(arch.cond_channels),
            arch.cond_levels,
            arch.cond_features,
            arch.dense_cond,
            kernels=arch.cond_kernels,
            dense_steps=arch.dense_cond_steps,
            block_norm=arch.cond_block_norm,
        )
        self.adopt(self._build_flow(seed))

    def _build_flow(self, seed: int) -> Ff.GraphINN:
        """The seed authors' multi-scale cINNs (cinn_for_imaging networks/cinn.py and
        cinn_mri.py, `build_inn`).

        For level l = 0 .. levels-1:
          learned downsampling (orthogonal per-channel 2x2 -> 4, Haar at init),
          `uncond_blocks` unconditioned GLOW couplings with 1x1 subnets (+ ActNorm each),
          for l >= 1 and `split`: half the channels split off to the output,
          for l < cond_levels: the conditioned section, `blocks_per_level` x [conditioned GLOW
          coupling (subnet 1x1 for even, 3x3 for odd blocks), ActNorm, fixed orthogonal 1x1].
        Then flatten, all but `dense_dim` dimensions to the output, and `dense_blocks` x
        [random permutation, dense GLOW coupling] conditioned on the dense head's vector (in
        the other order for `dense_permute` "after").

        At paper scale (levels 5, cond_levels 4, 384 px): 5 downsamplings, conditioned sections
        with 4/8/16/32 channels at 192/96/48/24 px, the dense section on 128 of the 64x12x12
        remaining dimensions. The first level is not split, as theirs (the split follows the
        downsampling of levels 1..4). The fifth downsampling has no conditioned section there;
        their conditioning net still builds a head for it that nothing consumes: not here.

        Their fastMRI model (cinn_mri.py; levels 6, cond_levels 5, uncond_blocks 0, 320 px) is
        the same loop: its local `_add_downsample` (which shadows the CT one it imports) adds no
        unconditioned couplings, and its sections 0-4 each follow a downsampling, the split
        after each later downsampling, as here: 4/8/16/32/64 channels at 160/80/40/20/10 px,
        then 256 -> 128 channels at 5x5 and the dense section on 128 of 3,200 dimensions.

        Dense section order. CT: x -> P0 -> C0 -> P1 -> C1 ("before"); fastMRI: x -> C0 -> P0
        -> C1 -> P1 ("after"), P_k = PermuteRandom(seed k) there (here seed + k, the same for
        seed 0). The trailing P1 of "after" changes nothing: the base densities are invariant
        under permutations and |det P| = 1, so log p(x | y) and the sample distribution are those
        of C0 -> P0 -> C1. The leading P0 of "before" is NOT absorbed by anything: a coupling's
        fixed half/half partition is a structural choice, and no layer before it can represent
        P0 (the last learned one, the final downsampling, applies one orthogonal 4x4 map per
        input channel to every 2x2 block alike, and the flatten/split are fixed). So "before"
        couples a random half of the 128 dimensions against the other, where "after" couples
        the first 64 (channels 0-1 and 14 pixels of channel 2 of the 128 x 5 x 5 map) against
        the rest: two different model families of the same kind and size; "after" is theirs.

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
            current = add(current, LearnedInvertibleDownsampling, {}, name=f"down{level}").out0
            for block in range(arch.uncond_blocks):
                current = glow(current, coupling_subnet(1), f"uncond{level}_{block}")
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
                subnet = coupling_subnet(1 if block % 2 == 0 else 3)
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

        def permute(inputs, block: int):
            return add(
                inputs, Fm.PermuteRandom, {"seed": seed + block}, name=f"dense_perm{block}"
            ).out0

        for block in range(arch.dense_blocks):
            if arch.dense_permute == "before":
                current = permute(current, block)
            coupling = add(
                current,
                Fm.GLOWCouplingBlock,
                {"subnet_constructor": coupling_subnet(None), "clamp": arch.clamp},
                conditions=conditions[-1],
                name=f"dense_coupling{block}",
            )
            current = coupling.out0
            if arch.dense_permute == "after":
                current = permute(current, block)
        # Output order as theirs: the split-off parts level by level, then the dense section.
        z = add([*z_parts, current], Fm.Concat, {"dim": 0}, name="z")
        nodes.append(Ff.OutputNode(z, name="out"))
        return Ff.GraphINN(nodes + conditions)


def build_model(arch_cfg: dict, image_size: int, base: str, seed: int) -> ConditionalMultiscaleFlow:
    torch.manual_seed(seed)
    return ConditionalMultiscaleFlow(Architecture.from_config(arch_cfg), image_size, base, seed)
