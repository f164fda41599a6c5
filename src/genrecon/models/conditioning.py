"""Conditioning network H: model-based inversion (precomputed) -> features per flow level.

The inversion layer (FBP for CT, pseudo-inverse or Tikhonov solution for compressed sensing)
has no parameters, so its output is computed once in the data step and H starts from it.

Three networks after it, the three rows of seed 000 Table 2 (the authors' cond_net.py:
`AvgPoolCondNetFBP`, `SimpleCondNetFBP`, `ResNetCondNet`), in `CONDITIONING_NETS`. All share one
contract: `(chain, level_heads, features, dense_cond)` in, and out a list of `level_heads` maps
(chain[i] channels at size / 2^(i+1)) followed by the dense vector of `dense_cond` entries.

Keyword options (defaults = the authors' CT nets, cond_net.py; their fastMRI nets,
cond_net_mri.py, differ in exactly these three points):
  kernels: kernel of each stride-2 convolution of the ResNet heads, the last value repeating
    (CT [5, 5, 5, 5, 3, 3]; fastMRI 3 throughout). The pooling nets have no strided convolution.
  dense_steps: halvings of the dense head (stride-2 steps, or poolings); None = len(chain) (CT:
    `range(ds_level + 1)` with ds_level = len(chain) - 1; fastMRI: `range(ds_level)` with
    ds_level = len(chain) - 1, i.e. one fewer: 320 px ends at 5x5, where all 7 would end at 3x3).
  block_norm: BatchNorm after both 3x3 convolutions inside every ResBlock (CT); False: only the
    BatchNorm on the residual sum (fastMRI's ResBlock).
"""

from __future__ import annotations

import torch
from torch import nn


class BatchNormResBlock(nn.Module):
    """The authors' conditioning ResBlock (cond_net.py): BatchNorm after every 3x3 convolution.

    conv3x3(in -> 2 out) - BN - LeakyReLU - conv3x3(2 out -> 2 out) - BN - LeakyReLU -
    conv1x1(2 out -> out), plus the input (through a 1x1 convolution when the widths differ),
    then BN and LeakyReLU on the sum. LeakyReLU has PyTorch's default slope 0.01, as theirs.

    inner_norm=False drops the two inner BatchNorms (8 x out parameters): the ResBlock of their
    fastMRI conditioning net (cond_net_mri.py), which normalises the residual sum only.
    """

    def __init__(self, in_channels: int, out_channels: int, inner_norm: bool = True):
        super().__init__()
        wide = 2 * out_channels

        def norm() -> list[nn.Module]:
            return [nn.BatchNorm2d(wide)] if inner_norm else []

        self.body = nn.Sequential(
            nn.Conv2d(in_channels, wide, 3, padding=1),
            *norm(),
            nn.LeakyReLU(0.01),
            nn.Conv2d(wide, wide, 3, padding=1),
            *norm(),
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


# The authors' CT head kernels (cond_net.py: [5, 5, 5, 5, 3, 3]); the last value repeats.
CT_KERNELS: tuple[int, ...] = (5, 5, 5, 5, 3)


def _strided_chain(
    widths: list[int], depth: int, kernels: tuple[int, ...] = CT_KERNELS, inner_norm: bool = True
) -> list[nn.Module]:
    """`depth` stride-2 convolutions along widths[0] -> widths[1] -> ..., each + a ResBlock.

    Step i has kernel kernels[min(i, len(kernels) - 1)]: by default 5x5 for the first four
    steps and 3x3 beyond, as the authors' CT heads; (3,) for their fastMRI heads. Padding
    k // 2 (odd k) halves every size (rounding up).
    """
    layers: list[nn.Module] = []
    for step in range(depth):
        kernel = kernels[min(step, len(kernels) - 1)]
        layers += [
            nn.Conv2d(widths[step], widths[step + 1], kernel, stride=2, padding=kernel // 2),
            BatchNormResBlock(widths[step + 1], widths[step + 1], inner_norm),
        ]
    return layers


def _check_heads(
    chain: list[int], level_heads: int, dense_steps: int | None, kernels: tuple[int, ...]
) -> int:
    """Validate the common arguments; return the dense head's number of halvings."""
    if not 0 <= level_heads <= len(chain):
        raise ValueError(f"conditioning: {level_heads} level heads need <= {len(chain)} widths")
    steps = len(chain) if dense_steps is None else dense_steps
    if not 1 <= steps <= len(chain):
        raise ValueError(
            f"conditioning: dense_steps {dense_steps} must lie in [1, {len(chain)}] "
            "(the dense head runs along the first dense_steps widths of the chain)"
        )
    if not kernels or any(k < 1 or k % 2 == 0 for k in kernels):
        raise ValueError(f"conditioning: kernels {list(kernels)} must be odd and >= 1")
    return steps


def _resnet_stem(features: int, inner_norm: bool = True) -> nn.Sequential:
    """The authors' shared stem ("preprocessing_net"), full resolution in and out.

    ResBlock(1 -> f/2), ResBlock(f/2), stride-2 conv, ResBlock(f/2 -> f), ResBlock(f), bilinear
    2x upsampling, ResBlock(f). Their ResNet and CNN nets use the same one (f = 16), for CT and
    for fastMRI (there with the BatchNorm-on-the-sum-only ResBlock: inner_norm False).
    """
    half = max(features // 2, 1)
    return nn.Sequential(
        BatchNormResBlock(1, half, inner_norm),
        BatchNormResBlock(half, half, inner_norm),
        nn.Conv2d(half, half, 3, stride=2, padding=1),
        BatchNormResBlock(half, features, inner_norm),
        BatchNormResBlock(features, features, inner_norm),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        BatchNormResBlock(features, features, inner_norm),
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
    1x1 convolution, giving chain[i] channels at size / 2^(i+1). The dense head runs the first
    `dense_steps` steps of the chain (default all len(chain): 384 -> 6x6 at CT paper scale; their
    fastMRI net runs 6 of 7: 320 -> 5x5), a 1x1 conv from the width reached to chain[-1]
    (theirs: chain[-1] -> chain[-1]; for fastMRI their conv declares chain[6] inputs and reads
    chain[5], equal there), LeakyReLU, 1x1 conv to `dense_cond` channels, global average pooling
    (their AvgPool2d(6) on 6x6, AvgPool2d(5) on 5x5) and BatchNorm1d. `kernels` and
    `block_norm`: see the module docstring.

    The authors also build a head for the last downsampling level, which no coupling block
    consumes (CT: cond_4 in their graph, 642,432 parameters that never receive a gradient;
    fastMRI: cond_5, 180,160). It is not built here: `level_heads` heads are built, one per
    conditioned flow section.
    """

    def __init__(
        self,
        chain: list[int],
        level_heads: int,
        features: int,
        dense_cond: int,
        *,
        kernels: tuple[int, ...] = CT_KERNELS,
        dense_steps: int | None = None,
        block_norm: bool = True,
    ):
        steps = _check_heads(chain, level_heads, dense_steps, kernels)
        # built first: the same initial weights as before per seed
        stem = _resnet_stem(features, block_norm)
        widths = [features, *chain]
        heads = [
            nn.Sequential(
                *_strided_chain(widths, level + 1, kernels, block_norm),
                nn.Conv2d(chain[level], chain[level], 1),
            )
            for level in range(level_heads)
        ]
        last = chain[-1]
        dense = nn.Sequential(
            *_strided_chain(widths, steps, kernels, block_norm),
            nn.Conv2d(chain[steps - 1], last, 1),
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
    3x3 convolution (features -> chain[-1]), `dense_steps` poolings (default len(chain); their
    fastMRI net one fewer), 1x1 convolution to `dense_cond`, global average pooling (their
    AvgPool2d(6) on the 6x6 map). No BatchNorm1d on the dense vector: theirs has none in this
    net (the other two have one). `block_norm` applies to the stem's ResBlocks; `kernels` has
    no effect (no strided convolution here).

    As for the ResNet net, only the `level_heads` consumed heads are built (theirs also builds
    the fifth, unconsumed one: 9,280 parameters at paper scale).
    """

    def __init__(
        self,
        chain: list[int],
        level_heads: int,
        features: int,
        dense_cond: int,
        *,
        kernels: tuple[int, ...] = CT_KERNELS,
        dense_steps: int | None = None,
        block_norm: bool = True,
    ):
        steps = _check_heads(chain, level_heads, dense_steps, kernels)
        stem = _resnet_stem(features, block_norm)
        heads = [
            nn.Sequential(*_pooled_head(features, chain[level], level + 1))
            for level in range(level_heads)
        ]
        dense = nn.Sequential(
            *_pooled_head(features, chain[-1], steps),
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
    (1 -> chain[-1]), `dense_steps` poolings (default len(chain)), 1x1 convolution to
    `dense_cond`, global average pooling, BatchNorm1d (theirs has it here). `features` (the
    stem's width), `kernels` and `block_norm` are accepted for the common signature and unused:
    there is no stem, no ResBlock and no strided convolution. The fifth, unconsumed head of
    theirs (640 parameters at paper scale) is not built.
    """

    def __init__(
        self,
        chain: list[int],
        level_heads: int,
        features: int,
        dense_cond: int,
        *,
        kernels: tuple[int, ...] = CT_KERNELS,
        dense_steps: int | None = None,
        block_norm: bool = True,
    ):
        steps = _check_heads(chain, level_heads, dense_steps, kernels)
        heads = [
            nn.Sequential(*_pooled_head(1, chain[level], level + 1)) for level in range(level_heads)
        ]
        dense = nn.Sequential(
            *_pooled_head(1, chain[-1], steps),
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
