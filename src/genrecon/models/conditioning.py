"""Conditioning network H: model-based inversion (precomputed) -> features per flow level.

The inversion layer (FBP for CT, pseudo-inverse or Tikhonov solution for compressed sensing)
has no parameters, so its output is computed once in the data step and H starts from it.

Three networks after it, the three rows of seed 000 Table 2 (the authors' cond_net.py:
`AvgPoolCondNetFBP`, `SimpleCondNetFBP`, `ResNetCondNet`), in `CONDITIONING_NETS`. All share one
contract: `(chain, level_heads, features, dense_cond)` in, and out a list of `level_heads` maps
(chain[i] channels at size / 2^(i+1)) followed by the dense vector of `dense_cond` entries.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchNormResBlock(nn.Module):
    """The authors' conditioning ResBlock (cond_net.py): BatchNorm after every 3x3 convolution.

    conv3x3(in -> 2 out) - BN - LeakyReLU - conv3x3(2 out -> 2 out) - BN - LeakyReLU -
    conv1x1(2 out -> out), plus the input (through a 1x1 convolution when the widths differ),
    then BN and LeakyReLU on the sum. LeakyReLU has PyTorch's default slope 0.01, as theirs.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        wide = 2 * out_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, wide, 3, padding=1),
            nn.BatchNorm2d(wide),
            nn.LeakyReLU(0.01),
            nn.Conv2d(wide, wide, 3, padding=1),
            nn.BatchNorm2d(wide),
            nn.LeakyReLU(0.01),
            nn.Conv2d(wide, out_channels, 1),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.body(x) + self.skip(x)))


def _strided_chain(widths: list[int], depth: int) -> list[nn.Module]:
    """`depth` stride-2 convolutions along widths[0] -> widths[1] -> ..., each + a ResBlock.

    Kernels 5x5 for the first four steps and 3x3 beyond, as the authors' heads (their kernel
    list [5, 5, 5, 5, 3, 3]); padding k // 2 halves every size (rounding up).
    """
    layers: list[nn.Module] = []
    for step in range(depth):
        kernel = 5 if step < 4 else 3
        layers += [
            nn.Conv2d(widths[step], widths[step + 1], kernel, stride=2, padding=kernel // 2),
            BatchNormResBlock(widths[step + 1], widths[step + 1]),
        ]
    return layers


def _check_heads(chain: list[int], level_heads: int) -> None:
    if not 0 <= level_heads <= len(chain):
        raise ValueError(f"conditioning: {level_heads} level heads need <= {len(chain)} widths")


def _resnet_stem(features: int) -> nn.Sequential:
    """The authors' shared stem ("preprocessing_net"), full resolution in and out.

    ResBlock(1 -> f/2), ResBlock(f/2), stride-2 conv, ResBlock(f/2 -> f), ResBlock(f), bilinear
    2x upsampling, ResBlock(f). Their ResNet and CNN nets use the same one (f = 16).
    """
    half = max(features // 2, 1)
    return nn.Sequential(
        BatchNormResBlock(1, half),
        BatchNormResBlock(half, half),
        nn.Conv2d(half, half, 3, stride=2, padding=1),
        BatchNormResBlock(half, features),
        BatchNormResBlock(features, features),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        BatchNormResBlock(features, features),
    )


def _pooled_head(in_channels: int, out_channels: int, halvings: int) -> list[nn.Module]:
    """The authors' pooling head: ONE 3x3 convolution at full resolution, then `halvings`
    AvgPool2d(3, stride 2, padding 1), each halving the size (rounding up, as the strided
    convolutions of the ResNet heads), so its output lands on its flow level's grid.

    The convolution comes first, at full resolution, as theirs (conv then pool is not pool then
    conv: the zero padding sits at a different resolution). Padded zeros count in the average
    (PyTorch's default, theirs).
    """
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        *(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(halvings)),
    ]


class _LevelFeatureNet(nn.Module):
    """stem -> one head per conditioned level + the dense head: the contract of every H here.

    Channels-last: oneDNN's (CPU) and cuDNN's (GPU, bf16) fast layout for these narrow
    convolutions; a training step of the smoke CT model is 20% faster (0.36 -> 0.29 s, CPU).
    """

    def __init__(self, stem: nn.Module, heads: list[nn.Module], dense: nn.Module):
        super().__init__()
        self.stem = stem
        self.heads = nn.ModuleList(heads)
        self.dense = dense
        self.to(memory_format=torch.channels_last)

    def forward(self, inversion: torch.Tensor) -> list[torch.Tensor]:
        feature = self.stem(inversion.contiguous(memory_format=torch.channels_last))
        return [head(feature) for head in self.heads] + [self.dense(feature)]


class ResNetConditioningNet(_LevelFeatureNet):
    """The authors' conditioning network H ("ResNetCond", seed 000 Sec. 3.3, Table 2).

    A shared stem turns the (padded) inversion-layer image into `features` channels at full
    resolution: ResBlock(1 -> f/2), ResBlock(f/2), stride-2 conv, ResBlock(f/2 -> f), ResBlock(f),
    bilinear 2x upsampling, ResBlock(f). Every flow level i then has its OWN head (no sharing
    between heads): i + 1 stride-2 convolutions along `chain` (each followed by a ResBlock), and a
    1x1 convolution, giving chain[i] channels at size / 2^(i+1). The dense head runs the whole
    chain (len(chain) stride-2 steps; 384 -> 6x6 at paper scale), 1x1 conv, LeakyReLU, 1x1 conv
    to `dense_cond` channels, global average pooling (their AvgPool2d(6) on a 6x6 map) and
    BatchNorm1d.

    The authors also build a head for the last downsampling level, which no coupling block
    consumes (cond_4 in their graph: 642,432 parameters that never receive a gradient). It is
    not built here: `level_heads` heads are built, one per conditioned flow section.
    """

    def __init__(self, chain: list[int], level_heads: int, features: int, dense_cond: int):
        _check_heads(chain, level_heads)
        stem = _resnet_stem(features)  # built first: the same initial weights as before per seed
        widths = [features, *chain]
        heads = [
            nn.Sequential(
                *_strided_chain(widths, level + 1), nn.Conv2d(chain[level], chain[level], 1)
            )
            for level in range(level_heads)
        ]
        last = chain[-1]
        dense = nn.Sequential(
            *_strided_chain(widths, len(chain)),
            nn.Conv2d(last, last, 1),
            nn.LeakyReLU(0.01),
            nn.Conv2d(last, dense_cond, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.BatchNorm1d(dense_cond),
        )
        super().__init__(stem, heads, dense)


class CNNConditioningNet(_LevelFeatureNet):
    """Table 2's "CNN" row: the authors' `SimpleCondNetFBP` ("ResNet backbone and Downsampling
    heads" in their networks/cinn.py).

    The same shared stem as `ResNetConditioningNet` (their code reuses it verbatim: this is the
    paper's "fully convolutional network" in place of the single convolution), then per level
    i one 3x3 convolution (features -> chain[i]) and i + 1 average poolings. The dense head:
    3x3 convolution (features -> chain[-1]), len(chain) poolings, 1x1 convolution to
    `dense_cond`, global average pooling (their AvgPool2d(6) on the 6x6 map). No BatchNorm1d on
    the dense vector: theirs has none in this net (the other two have one).

    As for the ResNet net, only the `level_heads` consumed heads are built (theirs also builds
    the fifth, unconsumed one: 9,280 parameters at paper scale).
    """

    def __init__(self, chain: list[int], level_heads: int, features: int, dense_cond: int):
        _check_heads(chain, level_heads)
        stem = _resnet_stem(features)
        heads = [
            nn.Sequential(*_pooled_head(features, chain[level], level + 1))
            for level in range(level_heads)
        ]
        dense = nn.Sequential(
            *_pooled_head(features, chain[-1], len(chain)),
            nn.Conv2d(chain[-1], dense_cond, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        super().__init__(stem, heads, dense)


class AvgPoolConditioningNet(_LevelFeatureNet):
    """Table 2's "Average Pooling" row: the authors' `AvgPoolCondNetFBP` ("Just Downsampling
    heads"): no stem; every head reads the 1-channel inversion image directly.

    Per level i: one 3x3 convolution (1 -> chain[i]) "to blow up the number of channels", then
    i + 1 average poolings down to the level's size. Dense head: 3x3 convolution
    (1 -> chain[-1]), len(chain) poolings, 1x1 convolution to `dense_cond`, global average
    pooling, BatchNorm1d (theirs has it here). `features` (the stem's width) is accepted for the
    common signature and unused: there is no stem. The fifth, unconsumed head of theirs (640
    parameters at paper scale) is not built.
    """

    def __init__(self, chain: list[int], level_heads: int, features: int, dense_cond: int):
        _check_heads(chain, level_heads)
        heads = [
            nn.Sequential(*_pooled_head(1, chain[level], level + 1)) for level in range(level_heads)
        ]
        dense = nn.Sequential(
            *_pooled_head(1, chain[-1], len(chain)),
            nn.Conv2d(chain[-1], dense_cond, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.BatchNorm1d(dense_cond),
        )
        super().__init__(nn.Identity(), heads, dense)


# `Architecture.cond_net` -> the network; the schema's enum (params.schema.yaml) names the same.
CONDITIONING_NETS: dict[str, type[_LevelFeatureNet]] = {
    "resnet": ResNetConditioningNet,
    "cnn": CNNConditioningNet,
    "avgpool": AvgPoolConditioningNet,
}
