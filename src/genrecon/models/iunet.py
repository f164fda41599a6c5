"""Conditional invertible U-Net (seed 000 Sec. 2.9, Fig. 3, Eq. 20; Etmann et al. 2020).

An invertible network shaped like a U-Net: on the way down each level downsamples (learned,
orthogonal), couples and splits half of its channels off; on the way up each level upsamples
(the inverse of a learned downsampling, with its own weights), concatenates the part split off at
that resolution and couples again. Couplings are additive (NICE), so the log-determinant comes
from ActNorm alone; seed 000 Sec. 5 reports that affine couplings made this deep network
numerically non-invertible at test time (exploding inverse), which is why additive ones are used.

The condition at every scale comes from a conditioning U-Net H that runs in the opposite
direction (inversion-layer image -> image space X): the iUNet's down path is conditioned on H's
decoder (up-path) features, its up path on H's encoder (down-path) features, each at the
resolution of the block. H's last stage maps to an image, the H(y) of the conditioning loss
alpha * MSE(H(y), x) (Eq. 20); with data in [0, 1] (CT) it ends in a sigmoid.

Layout, channel counts and depths follow the authors' code (cinn_for_imaging,
reconstructors/networks/iunet.py `IUNet.build_iunet`, cond_net.py `CondUNet`, `ResBlock`, and
train/lodopab_iunet.py); see `InvertibleUNet` and `ConditioningUNet`. Written fresh here, with
this project's `LearnedInvertibleDownsampling` for every resampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
import torch.nn.functional as F
from torch import nn

from genrecon.models.cinn import ConditionalImageFlow, check_keys
from genrecon.models.conditioning import BatchNormResBlock
from genrecon.models.downsampling import LearnedInvertibleDownsampling

# The authors' LoDoPaB iUNet (train/lodopab_iunet.py: downsample_levels 5, depth 22, coupling
# 'additive', permute True with permute_type '1x1', normalize_inn True, data_range [0, 1] ->
# sigmoid). 362 -> 384 px. Invertible part 2,868,286 trainable parameters: the paper's "2.9 Mio"
# (seed 000 Sec. 4.2; with their fastMRI depth 19 the same count gives 2,548,450, the paper's
# "2.5 Mio"), plus 78,936 fixed entries of the orthogonal 1x1 convolutions. Conditioning U-Net
# 961,644, of which 1,562 in the image head that only the conditioning loss trains.
PAPER_LODOPAB: dict = {"levels": 5, "depth": 22, "act_norm": True, "permute": True, "sigmoid": True}

# The same layout at smoke scale (64x64 CT, CPU budget): 4 levels (64 -> 8 px at the bottom),
# 2 unconditioned couplings per section. Invertible part 185,550, conditioning U-Net 236,532.
SMOKE: dict = {"levels": 4, "depth": 2, "act_norm": True, "permute": True, "sigmoid": True}


@dataclass(frozen=True)
class IUNetArchitecture:
    """The architecture block of a conditional iUNet (built by `ConditionalIUNet`).

    Keys:
      levels: the authors' `downsample_levels`: a top section at half resolution (wrapped in a
        downsampling/upsampling pair) plus levels - 1 down-path levels at 1/2 .. 1/2^(levels-1) of
        the (padded) size, levels - 2 up-path levels. Images are padded to a multiple of
        2^levels, as theirs (362 -> 384 for 5 levels).
      depth: unconditioned couplings after the conditioned one in every section, and the number
        of couplings in the top section (theirs: 22 for LoDoPaB, 19 for fastMRI).
      act_norm: ActNorm on the input and after every coupling but the last (`normalize_inn`).
      permute: a fixed random orthogonal 1x1 convolution before every coupling (theirs '1x1');
        without it an additive coupling always updates the same two channel halves.
      sigmoid: H's image output through a sigmoid, for data in [0, 1] (CT). Normalised MRI data
        are not in [0, 1]: set False there if alpha > 0 (theirs kept the sigmoid for fastMRI via
        the default data_range [0, 1], harmless only because they trained it with alpha = 0).
    """

    levels: int
    depth: int
    act_norm: bool = True
    permute: bool = True
    sigmoid: bool = True

    @classmethod
    def from_config(cls, cfg: dict) -> IUNetArchitecture:
        check_keys(cls, cfg, "iUNet architecture")
        if int(cfg["levels"]) < 2:
            raise ValueError("iUNet architecture: levels must be >= 2 (one down-path level)")
        if int(cfg["depth"]) < 0:
            raise ValueError("iUNet architecture: depth must be >= 0")
        return cls(**cfg)


class LearnedInvertibleUpsampling(Fm.InvertibleModule):
    """(4C, H, W) -> (C, 2H, 2W): the inverse of a learned orthogonal downsampling of C channels.

    An upsampling with its own weights (C x 16, as the authors' `InvertibleUpsampling`), not the
    inverse of the matching downsampling of the down path: sharing would tie the two paths.
    """

    def __init__(self, dims_in, dims_c=None):
        super().__init__(dims_in, dims_c)
        channels, height, width = dims_in[0]
        if channels % 4:
            raise ValueError(f"learned upsampling needs a multiple of 4 channels, got {channels}")
        self.down = LearnedInvertibleDownsampling([(channels // 4, 2 * height, 2 * width)])

    def forward(self, x, c=None, rev: bool = False, jac: bool = True):
        return self.down(x, rev=not rev, jac=jac)

    def output_dims(self, input_dims):
        channels, height, width = input_dims[0]
        return [(channels // 4, 2 * height, 2 * width)]


def _coupling_subnet(c_in: int, c_out: int) -> nn.Module:
    """The authors' iUNet subnet (iunet.py `subnet`): ResBlock(i -> i), ResBlock(i -> o), 3x3
    convolution o -> o; the ResBlocks are the BatchNorm ones of their conditioning nets.

    i includes the condition's channels (FrEIA concatenates it to the coupling's input). The last
    convolution starts at zero so that every coupling starts as the identity. Theirs instead
    drew every flow parameter (BatchNorm scales included) from N(0, 0.02^2): near the identity
    too, but not exactly. BatchNorm inside an additive coupling keeps it exactly invertible even
    in training mode: the same half-batch enters the subnet in both directions.
    """
    last = nn.Conv2d(c_out, c_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(BatchNormResBlock(c_in, c_in), BatchNormResBlock(c_in, c_out), last)


class InvertibleUNet(nn.Module):
    """The invertible part: image (b, 1, S, S) <-> z (b, S*S), given H's outputs as a list.

    Called like FrEIA's GraphINN, `flow(x, c=conditions, jac=True)` and
    `flow(z, c=conditions, rev=True)`, both returning (output, log|det|), so that code written for
    the multi-scale cINN (methods/amortised/cinn.py `encode_padded`) runs it unchanged.
    `conditions` is `ConditioningUNet`'s list: [image, down-path conditions for levels
    0 .. levels-2, up-path conditions for levels 0 .. levels-3].

    Layout (theirs, `build_iunet`, for in_ch = 1; C_l = 4 * 2^l channels at S / 2^(l+1)):
      top: [ActNorm], downsampling, depth x unit, upsampling  (1 -> 4 channels at S/2 and back;
           a one-channel image cannot be coupled, hence the wrap);
      down level l = 0 .. levels-2: downsampling, unit(condition), depth x unit, and for
           l < levels-2 a split: the first half goes on down, the second waits for the up path;
      up level l = levels-3 .. 0: upsampling, concatenation [split-off half, upsampled],
           unit(condition), depth x unit;
      final: one unconditioned coupling without ActNorm, upsampling to (1, S, S), flatten.
    unit = [fixed orthogonal 1x1 convolution], additive (NICE) coupling, [ActNorm].
    At paper scale: 4/8/16/32 channels at 192/96/48/24 px down, 16/8/4 at 48/96/192 up.

    Their known defect, a coupling-type switch (`_add_conditioned_section`: the final `else`
    belongs to the 'allInOne' test only) that appends a NICE coupling after every affine or RNVP
    coupling, is not reproduced: a unit has exactly one coupling. With their LoDoPaB setting
    (coupling 'additive') the switch adds nothing, so this is their model.
    """

    def __init__(self, arch: IUNetArchitecture, size: int, seed: int = 0):
        super().__init__()
        self.arch = arch
        self.size = size
        self.levels = arch.levels
        self._generator = torch.Generator().manual_seed(seed)
        half = size // 2
        self.top = Ff.SequenceINN(1, size, size)
        if arch.act_norm:
            self.top.append(Fm.ActNorm)
        self.top.append(LearnedInvertibleDownsampling)
        self._units(self.top, arch.depth)
        self.top.append(LearnedInvertibleUpsampling)

        self.down = nn.ModuleList()
        self.splits: list[int] = []
        channels = 1
        for level in range(arch.levels - 1):
            res = size // 2 ** (level + 1)
            section = Ff.SequenceINN(channels, 2 * res, 2 * res)
            section.append(LearnedInvertibleDownsampling)
            channels *= 4
            self._units(section, 1, condition=(channels, res, res))
            self._units(section, arch.depth)
            self.down.append(section)
            if level < arch.levels - 2:
                self.splits.append(channels // 2)
                channels -= channels // 2

        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(arch.levels - 2):
            res = size // 2 ** (level + 1)
            width = 4 * 2**level  # the split-off half plus the upsampled deeper level
            self.upsample.append(
                Ff.SequenceINN(4 * (width - self.splits[level]), res // 2, res // 2)
            )
            self.upsample[-1].append(LearnedInvertibleUpsampling)
            section = Ff.SequenceINN(width, res, res)
            self._units(section, 1, condition=(width, res, res))
            self._units(section, arch.depth)
            self.up.append(section)

        self.final = Ff.SequenceINN(4, half, half)
        self._units(self.final, 1, act_norm=False)
        self.final.append(LearnedInvertibleUpsampling)
        del self._generator  # only the build draws from it

    def _units(
        self,
        section: Ff.SequenceINN,
        count: int,
        condition: tuple[int, int, int] | None = None,
        act_norm: bool | None = None,
    ) -> None:
        """Append `count` x [fixed orthogonal 1x1, additive coupling, ActNorm] to `section`."""
        act_norm = self.arch.act_norm if act_norm is None else act_norm
        for _ in range(count):
            channels = section.shapes[-1][0]
            if self.arch.permute:
                q, _ = torch.linalg.qr(
                    torch.randn(channels, channels, generator=self._generator, dtype=torch.float64)
                )
                section.append(Fm.Fixed1x1Conv, M=q.float())
            if condition is None:
                section.append(Fm.NICECouplingBlock, subnet_constructor=_coupling_subnet)
            else:
                section.append(
                    Fm.NICECouplingBlock,
                    cond=0,
                    cond_shape=condition,
                    subnet_constructor=_coupling_subnet,
                )
            if act_norm:
                section.append(Fm.ActNorm)

    def forward(
        self, x: torch.Tensor, c: list[torch.Tensor], rev: bool = False, jac: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if rev:
            return self._inverse(x, c)
        levels = self.levels
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

        def run(section: Ff.SequenceINN, h: torch.Tensor, cond=None) -> torch.Tensor:
            nonlocal logdet
            h, j = section(h, c=None if cond is None else [cond], jac=jac)
            logdet = logdet + j
            return h

        h = run(self.top, x)
        skips = []
        for level, section in enumerate(self.down):
            h = run(section, h, c[1 + level])
            if level < levels - 2:
                h, skip = h.split([h.shape[1] - self.splits[level], self.splits[level]], dim=1)
                skips.append(skip)
        for level in reversed(range(levels - 2)):
            h = run(self.upsample[level], h)
            h = run(self.up[level], torch.cat([skips[level], h], dim=1), c[levels + level])
        h = run(self.final, h)
        return h.reshape(h.shape[0], -1), logdet

    def _inverse(self, z: torch.Tensor, c: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x from z: the forward pass backwards; returns log|det dx/dz| = -log|det dz/dx|."""
        levels = self.levels
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

        def run(section: Ff.SequenceINN, h: torch.Tensor, cond=None) -> torch.Tensor:
            nonlocal logdet
            h, j = section(h, c=None if cond is None else [cond], rev=True)
            logdet = logdet + j
            return h

        h = run(self.final, z.reshape(z.shape[0], 1, self.size, self.size))
        skips: list[torch.Tensor | None] = [None] * (levels - 2)
        for level in range(levels - 2):
            h = run(self.up[level], h, c[levels + level])
            skips[level], h = h.split([self.splits[level], h.shape[1] - self.splits[level]], dim=1)
            h = run(self.upsample[level], h)
        for level in reversed(range(levels - 1)):
            if level < levels - 2:
                h = torch.cat([h, skips[level]], dim=1)
            h = run(self.down[level], h, c[1 + level])
        return run(self.top, h), logdet


class ConditioningUNet(nn.Module):
    """The authors' conditioning U-Net H (cond_net.py `CondUNet`), on the padded inversion image.

    Widths are tied to the flow's: encoder level l (l = 0 .. levels-2) is a stride-2 3x3
    convolution 2^l -> 2^(l+1), LeakyReLU, and BatchNorm ResBlocks 2^(l+1) -> 2^(l+2) -> 2^(l+3)
    -> 2^(l+2) -> 2^(l+2), giving C_l = 2^(l+2) channels at S / 2^(l+1), as many as the iUNet
    has there. All but the bottom level pass their first half down and keep the second half as
    the skip. Decoder level l (levels-3 .. 0): bilinear 2x upsampling, 1x1 convolution to
    2^(l+1), concatenation [upsampled, skip], ResBlocks 2^(l+2) -> 2^(l+3) -> 2^(l+4) -> 2^(l+3)
    -> 2^(l+2). Image head: upsampling, 1x1 convolution 4 -> 1, ResBlocks 1 -> 2 -> 2 -> 3 -> 3,
    3x3 convolution 3 -> 1, sigmoid for data in [0, 1].

    Returns [image, decoder features for levels 0 .. levels-3, the bottom, encoder features for
    levels 0 .. levels-3]: the iUNet's down path takes H's decoder (and the bottom), its up path
    H's encoder, as the authors' graph (their list reversed, `outputs[::-1]`). The image feeds
    no coupling: only the conditioning loss trains the head (with alpha = 0 it gets no gradient).
    """

    def __init__(self, levels: int, sigmoid: bool = True):
        super().__init__()
        self.levels = levels
        self.sigmoid = sigmoid
        block = BatchNormResBlock
        self.encoder = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(2**level, 2 ** (level + 1), 3, stride=2, padding=1),
                nn.LeakyReLU(0.01),
                block(2 ** (level + 1), 2 ** (level + 2)),
                block(2 ** (level + 2), 2 ** (level + 3)),
                block(2 ** (level + 3), 2 ** (level + 2)),
                block(2 ** (level + 2), 2 ** (level + 2)),
            )
            for level in range(levels - 1)
        )
        self.reduce = nn.ModuleList(
            nn.Conv2d(2 ** (level + 3), 2 ** (level + 1), 1) for level in range(levels - 2)
        )
        self.decoder = nn.ModuleList(
            nn.Sequential(
                block(2 ** (level + 2), 2 ** (level + 3)),
                block(2 ** (level + 3), 2 ** (level + 4)),
                block(2 ** (level + 4), 2 ** (level + 3)),
                block(2 ** (level + 3), 2 ** (level + 2)),
            )
            for level in range(levels - 2)
        )
        self.head = nn.Sequential(
            nn.Conv2d(4, 1, 1),
            block(1, 2),
            block(2, 2),
            block(2, 3),
            block(3, 3),
            nn.Conv2d(3, 1, 3, padding=1),
        )

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

    def forward(self, inversion: torch.Tensor) -> list[torch.Tensor]:
        x = inversion
        encoded, skips = [], []
        for level, stage in enumerate(self.encoder):
            x = stage(x)
            encoded.append(x)
            if level < self.levels - 2:
                x, skip = x.split(x.shape[1] // 2, dim=1)
                skips.append(skip)
        decoded = []  # deepest first
        for level in reversed(range(self.levels - 2)):
            x = self.reduce[level](self._up(x))
            x = self.decoder[level](torch.cat([x, skips[level]], dim=1))
            decoded.append(x)
        decoded.reverse()
        image = self.head(self._up(x))
        if self.sigmoid:
            image = torch.sigmoid(image)
        return [image, *decoded, encoded[-1], *encoded[:-1]]


class ConditionalIUNet(ConditionalImageFlow):
    """x <-> z given the inversion-layer output, with the multi-scale cINN's interface
    (`ConditionalImageFlow`), so the cINN method trains and samples it unchanged;
    `conditioning_output` adds H(y) for the conditioning loss (Eq. 20).
    """

    def __init__(
        self, arch: IUNetArchitecture, image_size: int, base: str = "normal", seed: int = 0
    ):
        super().__init__(image_size, arch.levels, base)
        self.arch = arch
        self.cond_net = ConditioningUNet(arch.levels, arch.sigmoid)
        self.flow = InvertibleUNet(arch, self.size, seed)

    def conditioning_image(self, conditions: list[torch.Tensor]) -> torch.Tensor:
        """H(y) (b, n, n) from an already computed `cond_net` output: lets a training step run
        H once for both the likelihood and the conditioning loss (theirs ran it twice)."""
        return self.crop(conditions[0])

    def conditioning_output(self, inversion: torch.Tensor) -> torch.Tensor:
        """H(y) in image space, cropped to (b, n, n): the prediction of alpha * MSE(H(y), x)."""
        return self.conditioning_image(self.cond_net(self.pad(inversion)))


def build_iunet(arch_cfg: dict, image_size: int, base: str, seed: int) -> ConditionalIUNet:
    torch.manual_seed(seed)
    return ConditionalIUNet(IUNetArchitecture.from_config(arch_cfg), image_size, base, seed)
