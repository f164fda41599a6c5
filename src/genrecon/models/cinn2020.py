"""The conditional normalizing flow of Denker et al. 2020 (seed 001, Appendix 6.1).

Why it exists: seed 001 ("Conditional Normalizing Flows for Low-Dose CT Image Reconstruction",
INNF+ 2020) reports its LoDoPaB numbers (Table 1) and the conditional mean's PSNR/SSIM against
the number of samples (Fig. 4) for THIS model, the workshop version, not the later one of
seed 000 (models/cinn.py: learned downsampling, ActNorm, ResNet conditioning net). This module
builds the workshop model from the appendix's layer tables, with FrEIA blocks.

Layout (`ConditionalFlow2020`; paper values, 352 px input):

  level 1: i-RevNet downsampling (a squeeze, 1 -> 4 channels), downsample section,
           conditional section on 4 x 176^2
  level 2: i-RevNet downsampling (16 x 88^2), downsample section, split 8 to the output,
           conditional section on 8 x 88^2
  level 3: i-RevNet, 32 x 44^2, split 16 off, conditional section on 16 x 44^2
  level 4: i-RevNet, 64 x 22^2, split 32 off, conditional section on 32 x 22^2
  level 5: Haar downsampling, 128 x 11^2, split 96 off, conditional section on 32 x 11^2,
           split 28 off
  level 6: the remaining 4 x 11^2 = 484 dimensions, dense conditional section.

  downsample section: downsampling, `uncond_blocks` x [Glow 1x1 convolution, GLOW coupling with
    the unconditioned subnet 1x1: c_in -> 64 -> 64 -> c_out].
  conditional section: `couplings` (6) x [GLOW coupling with the CNN subnet, Glow 1x1
    convolution], the subnet's kernel alternating k=1, k=3 (the paper's 3 x [coupling k=1, 1x1,
    coupling k=3, 1x1]); CNN subnet k x k: c_in -> 64 -> 92 -> c_out, c_in including the
    condition's channels (FrEIA concatenates the condition to the subnet input).
  dense conditional section: `dense_blocks` (4) x [random permutation, GLOW coupling with the
    dense subnet c_in -> 512 -> 512 -> c_out], conditioned on a 256-vector.
  z: the split-off parts level by level (flattened), then the dense section's output.

Every coupling is FrEIA's affine `GLOWCouplingBlock` (soft clamp 1.5). Subnet activations are
LeakyReLU(0.01) (the paper names LeakyReLU, not its slope). Every subnet's last layer starts at
zero, so the model starts as the identity (the paper); the other subnet layers draw weights and
biases from N(0, 0.02^2), as models/cinn.py's `coupling_subnet`.

Conditioning network (`ConditioningNet2020`, the appendix's table): six levels of 3x3
convolutions (padding 1, bias) with BatchNorm where the table says "BN"; level l's output is the
condition of flow level l and, after a LeakyReLU, the input of level l + 1; the sixth ends in
global average pooling, flatten and BatchNorm1d (the dense section's condition).

Deviations from the paper, each deliberate:
  * Input size: LoDoPaB images are 362 x 362; the paper used 352 x 352 without saying how it got
    there. The base class reflect-pads to a multiple of 2^5, 362 -> 384, so the levels run at
    192/96/48/24/12 px and the dense section has 4 x 12 x 12 = 576 dimensions instead of 484.
    The channel layout is the paper's. (`image_size=352` builds the paper's exact shapes.)
  * "Glow 1x1 convolution": Glow's is a learnable invertible 1x1 convolution; FrEIA has none, so
    every one is `Fm.Fixed1x1Conv` with a fixed random orthogonal matrix (QR of a seeded
    Gaussian), as models/cinn.py. Paper scale: 57,856 such fixed entries are not trained.
  * The conditioning table's first convolution reads "1 -> 3": a truncation of "1 -> 32", since
    the next convolution takes 32 channels. Built as 1 -> 32.
  * Convolutions followed by BatchNorm keep their bias (PyTorch's default; the paper is silent).
  * Haar downsampling: FrEIA's default channel order (`order_by_wavelet=False`); the 1x1
    convolutions and couplings before the split mix channels anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
from torch import nn

from genrecon.models.cinn import ConditionalImageFlow, _ChannelsLast, check_keys, coupling_subnet

DOWNSAMPLINGS = {"irevnet": Fm.IRevNetDownsampling, "haar": Fm.HaarDownsampling}
LEVELS = 5  # downsamplings (image levels); the dense section is the sixth level

# The paper's model (seed 001 App. 6.1). At 352 px (the paper's input): 9,125,264 trainable
# parameters in the invertible part (plus 57,856 fixed 1x1-convolution entries, which Glow would
# train), 569,876 in the conditioning network, both equal to a count from the appendix's tables
# (tests/test_cinn2020.py). At 384 px (LoDoPaB's 362 padded) the dense section has 576
# dimensions and the invertible part 9,691,248 parameters.
PAPER: dict = {
    "downsampling": ["irevnet", "irevnet", "irevnet", "irevnet", "haar"],
    "keep": [4, 8, 16, 32, 32],
    "dense_channels": 4,
    "couplings": 6,
    "subnet_widths": [64, 92],
    "uncond_width": 64,
    "uncond_blocks": 2,
    "dense_blocks": 4,
    "dense_width": 512,
    "cond_scale": 1.0,
    "dense_cond": 256,
    "clamp": 1.5,
}

# The paper's layout for 64 x 64 CPU smoke training: the same 5 downsamplings, splits and
# channels (levels at 32/16/8/4/2 px, dense section on 4 x 2 x 2 = 16 dimensions), narrower
# subnets and conditioning net, and shallower sections: 2 conditioned couplings (one k=1, one
# k=3) per level and 1 unconditioned one per downsampling. Narrowing alone does not make a step
# cheap: at batch 16 on one CPU thread the paper's depth takes ~0.27 s per training step with
# widths (16, 24) and still ~0.22 s with (8, 12) (per-layer overhead on the 32 px level
# dominates); this depth takes ~0.12 s. Invertible part 205,560 parameters, conditioning 42,740.
SMOKE: dict = {
    **PAPER,
    "couplings": 2,
    "uncond_blocks": 1,
    "subnet_widths": [16, 24],
    "uncond_width": 16,
    "dense_width": 64,
    "cond_scale": 0.25,
    "dense_cond": 32,
}


@dataclass(frozen=True)
class Architecture2020:
    """The architecture block of the 2020 cINN (built by `ConditionalFlow2020`).

    Keys (defaults: the paper's values):
      downsampling: the kind of each of the 5 downsamplings, "irevnet" (squeeze) or "haar"
        (paper: 4 x irevnet, then haar). Exactly 5: the conditioning net's per-level recipes are
        the paper's five image levels (the model has 5 + 1 levels).
      keep: channels kept after each downsampling's section; the rest is split off to z (paper
        4, 8, 16, 32, 32: level 1 keeps all 4). Also the conditioning net's output width at that
        level (the paper's conditions have exactly these widths).
      dense_channels: channels of the last level kept for the dense section (paper 4).
      couplings: conditioned couplings per conditional section, subnets alternating k=1, k=3.
      subnet_widths: hidden widths of the conditioned CNN subnets (paper 64, 92).
      uncond_width: hidden width of the unconditioned 1x1 subnets (paper 64).
      uncond_blocks: [1x1 convolution, unconditioned coupling] pairs after every downsampling.
      dense_blocks / dense_width: [random permutation, dense coupling] pairs, hidden width.
      cond_scale: multiplies the conditioning net's hidden widths (32/64/128/96 in the table),
        rounded, at least 1; its outputs (`keep`, `dense_cond`) are not scaled.
      dense_cond: width of the dense section's condition vector (paper 256).
      clamp: FrEIA's GLOW soft clamp (the paper gives none; the authors' code uses 1.5).
    """

    downsampling: tuple[str, ...] = ("irevnet", "irevnet", "irevnet", "irevnet", "haar")
    keep: tuple[int, ...] = (4, 8, 16, 32, 32)
    dense_channels: int = 4
    couplings: int = 6
    subnet_widths: tuple[int, int] = (64, 92)
    uncond_width: int = 64
    uncond_blocks: int = 2
    dense_blocks: int = 4
    dense_width: int = 512
    cond_scale: float = 1.0
    dense_cond: int = 256
    clamp: float = 1.5

    def __post_init__(self) -> None:
        what = "architecture2020"
        if len(self.downsampling) != LEVELS:
            raise ValueError(
                f"{what}: downsampling needs exactly {LEVELS} entries (the paper's levels), "
                f"got {len(self.downsampling)}"
            )
        for kind in self.downsampling:
            if kind not in DOWNSAMPLINGS:
                raise ValueError(
                    f"{what}: unknown downsampling {kind!r}; known: {sorted(DOWNSAMPLINGS)}"
                )
        if len(self.keep) != len(self.downsampling):
            raise ValueError(
                f"{what}: keep needs one entry per downsampling ({len(self.downsampling)}), "
                f"got {len(self.keep)}"
            )
        channels = 1
        for level, kept in enumerate(self.keep):
            channels *= 4
            if not 2 <= kept <= channels:
                raise ValueError(
                    f"{what}: keep[{level}] = {kept} must lie in [2, {channels}] (the channels "
                    f"after downsampling {level + 1}; a coupling needs 2)"
                )
            channels = kept
        if not 1 <= self.dense_channels <= self.keep[-1]:
            raise ValueError(
                f"{what}: dense_channels {self.dense_channels} must lie in [1, keep[-1] = "
                f"{self.keep[-1]}]"
            )
        if len(self.subnet_widths) != 2:
            raise ValueError(f"{what}: subnet_widths needs 2 hidden widths")
        positive = {
            "subnet_widths": min(self.subnet_widths),
            "uncond_width": self.uncond_width,
            "dense_width": self.dense_width,
            "dense_cond": self.dense_cond,
            "cond_scale": self.cond_scale,
            "clamp": self.clamp,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"{what}: {key} must be > 0, got {value}")
        for key in ("couplings", "uncond_blocks", "dense_blocks"):
            if getattr(self, key) < 0:
                raise ValueError(f"{what}: {key} must be >= 0")

    @classmethod
    def from_config(cls, cfg: dict) -> Architecture2020:
        check_keys(cls, cfg, "architecture2020")
        cfg = dict(cfg)
        for key in ("downsampling", "keep", "subnet_widths"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        return cls(**cfg)

    def hidden(self, width: int) -> int:
        """A conditioning-net hidden width of the paper's table, scaled by `cond_scale`."""
        return max(1, round(width * self.cond_scale))


class ConditioningNet2020(nn.Module):
    """The appendix's conditioning network: inversion image (b, 1, S, S) -> the list of the 5
    level conditions (keep[l] x S/2^(l+1) x S/2^(l+1)) and the dense vector (b, dense_cond).

    Per level (k=3, padding 1 unless noted; h(w) = the hidden width w scaled by cond_scale;
    o_l = keep[l]; every level after the first starts with a LeakyReLU on the previous output):
      1: conv 1->h32 s2, LReLU; h32->h64, LReLU; h64->h128 BN LReLU; h128->h64 BN LReLU;
         h64->h32 BN LReLU; h32->o1 BN      (paper "1 -> 3": read 1 -> 32)
      2: conv o1->h32 s2 BN LReLU; h32->h32 k1 LReLU; h32->h32 BN LReLU; h32->o2 BN
      3: conv o2->h32 k1 LReLU; h32->h64 s2 LReLU; h64->o3 BN
      4: conv o3->h64 k1 LReLU; h64->h64 s2 LReLU; h64->o4 BN
      5: conv o4->h96 k1 LReLU; h96->h128 s2 LReLU; h128->o5 k1 BN
      6: conv o5->h64 s2 LReLU; h64->dense_cond s2 LReLU; average pooling, flatten, BN1d.
    BatchNorm needs a batch of more than one in training mode (one image: eval mode).
    """

    def __init__(self, arch: Architecture2020):
        super().__init__()
        h, o = arch.hidden, arch.keep
        act = nn.LeakyReLU

        def conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)

        def bn(c: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(c)

        stages = [
            [
                conv(1, h(32), stride=2), act(),
                conv(h(32), h(64)), act(),
                conv(h(64), h(128)), bn(h(128)), act(),
                conv(h(128), h(64)), bn(h(64)), act(),
                conv(h(64), h(32)), bn(h(32)), act(),
                conv(h(32), o[0]), bn(o[0]),
            ],
            [
                act(),
                conv(o[0], h(32), stride=2), bn(h(32)), act(),
                conv(h(32), h(32), kernel=1), act(),
                conv(h(32), h(32)), bn(h(32)), act(),
                conv(h(32), o[1]), bn(o[1]),
            ],
            [
                act(),
                conv(o[1], h(32), kernel=1), act(),
                conv(h(32), h(64), stride=2), act(),
                conv(h(64), o[2]), bn(o[2]),
            ],
            [
                act(),
                conv(o[2], h(64), kernel=1), act(),
                conv(h(64), h(64), stride=2), act(),
                conv(h(64), o[3]), bn(o[3]),
            ],
            [
                act(),
                conv(o[3], h(96), kernel=1), act(),
                conv(h(96), h(128), stride=2), act(),
                conv(h(128), o[4], kernel=1), bn(o[4]),
            ],
        ]  # fmt: skip
        self.levels = nn.ModuleList(
            _ChannelsLast(*stage).to(memory_format=torch.channels_last) for stage in stages
        )
        self.dense = nn.Sequential(
            act(),
            conv(o[4], h(64), stride=2), act(),
            conv(h(64), arch.dense_cond, stride=2), act(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(arch.dense_cond),
        )  # fmt: skip

    def forward(self, inversion: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        h = inversion
        for stage in self.levels:
            h = stage(h)
            outputs.append(h)
        outputs.append(self.dense(h))
        return outputs


class ConditionalFlow2020(ConditionalImageFlow):
    """The 2020 cINN: x <-> z given the inversion-layer output (`ConditionalImageFlow`'s
    interface, so the cINN method trains and samples it unchanged).

    `cond_net` returns [level 1 .. level 5 maps, dense vector], the order of the GraphINN's
    condition nodes `cond0` .. `cond4`, `cond_dense`.
    """

    def __init__(
        self, arch: Architecture2020, image_size: int, base: str = "normal", seed: int = 0
    ):
        super().__init__(image_size, len(arch.downsampling), base)
        if self.size - image_size >= image_size:
            raise ValueError(
                f"image_size {image_size}: too small to reflect-pad to {self.size} (a multiple "
                f"of 2^{len(arch.downsampling)})"
            )
        self.arch = arch
        self.cond_net = ConditioningNet2020(arch)
        self.adopt(self._build_flow(seed))

    def _build_flow(self, seed: int) -> Ff.GraphINN:
        arch, size = self.arch, self.size
        generator = torch.Generator().manual_seed(seed)
        conditions = [
            Ff.ConditionNode(kept, size // 2 ** (i + 1), size // 2 ** (i + 1), name=f"cond{i}")
            for i, kept in enumerate(arch.keep)
        ]
        conditions.append(Ff.ConditionNode(arch.dense_cond, name="cond_dense"))
        nodes: list = [Ff.InputNode(1, size, size, name="x")]
        z_parts: list = []

        def add(inputs, module, kwargs, **extra) -> Ff.Node:
            nodes.append(Ff.Node(inputs, module, kwargs, **extra))
            return nodes[-1]

        def channels(output) -> int:
            node, index = output  # FrEIA's `node.outN` is (node, N)
            return node.output_dims[index][0]

        def conv1x1(inputs, name: str):
            """Glow 1x1 convolution: here fixed, a random orthogonal matrix (module docstring)."""
            c = channels(inputs)
            q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64))
            return add(inputs, Fm.Fixed1x1Conv, {"M": q.float()}, name=name).out0

        def coupling(inputs, subnet, name: str, condition=None):
            kwargs = {"subnet_constructor": subnet, "clamp": arch.clamp}
            return add(inputs, Fm.GLOWCouplingBlock, kwargs, conditions=condition, name=name).out0

        def split(inputs, kept: int, name: str):
            """The first `kept` channels go on, the rest (flattened) to z."""
            total = channels(inputs)
            if kept == total:
                return inputs
            sizes = {"section_sizes": [kept, total - kept], "dim": 0}
            node = add(inputs, Fm.Split, sizes, name=name)
            z_parts.append(add(node.out1, Fm.Flatten, {}, name=f"flat_{name}").out0)
            return node.out0

        uncond = coupling_subnet(1, (arch.uncond_width, arch.uncond_width))
        current = nodes[0].out0
        for level, (kind, kept) in enumerate(zip(arch.downsampling, arch.keep, strict=True)):
            # downsample section
            current = add(current, DOWNSAMPLINGS[kind], {}, name=f"down{level}").out0
            for block in range(arch.uncond_blocks):
                current = conv1x1(current, f"down{level}_conv{block}")
                current = coupling(current, uncond, f"down{level}_coupling{block}")
            current = split(current, kept, f"split{level}")
            # conditional section
            for block in range(arch.couplings):
                subnet = coupling_subnet(1 if block % 2 == 0 else 3, arch.subnet_widths)
                name = f"cond{level}_coupling{block}"
                current = coupling(current, subnet, name, conditions[level])
                current = conv1x1(current, f"cond{level}_conv{block}")
        # dense conditional section on the first dense_channels channels
        current = split(current, arch.dense_channels, "split_dense")
        current = add(current, Fm.Flatten, {}, name="flatten").out0
        for block in range(arch.dense_blocks):
            permutation_seed = int(torch.randint(2**31 - 1, (), generator=generator))
            permute = {"seed": permutation_seed}
            current = add(current, Fm.PermuteRandom, permute, name=f"dense_perm{block}").out0
            dense = coupling_subnet(None, (arch.dense_width, arch.dense_width))
            current = coupling(current, dense, f"dense_coupling{block}", conditions[-1])
        z = add([*z_parts, current], Fm.Concat, {"dim": 0}, name="z")
        nodes.append(Ff.OutputNode(z, name="out"))
        return Ff.GraphINN(nodes + conditions)

    @property
    def dense_dim(self) -> int:
        """Dimensions of the dense section (paper: 4 x 11 x 11 = 484 at 352 px)."""
        return self.arch.dense_channels * (self.size // 2 ** len(self.arch.downsampling)) ** 2


def build_cinn2020(arch_cfg: dict, image_size: int, base: str, seed: int) -> ConditionalFlow2020:
    torch.manual_seed(seed)
    return ConditionalFlow2020(Architecture2020.from_config(arch_cfg), image_size, base, seed)
