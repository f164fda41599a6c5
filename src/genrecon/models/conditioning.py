"""Conditioning network H: model-based inversion (precomputed) -> ResNet features per level.

The inversion layer (FBP for CT, pseudo-inverse or Tikhonov solution for compressed sensing)
has no parameters, so its output is computed once in the data step and H starts from it.
"""

from __future__ import annotations

import torch
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConditioningNet(nn.Module):
    """Features at each flow level (resolution / 2^(i+1)) plus a vector for the dense section."""

    def __init__(self, level_channels: list[int], features: int, dense_cond: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, features, 3, padding=1), nn.LeakyReLU(0.1), ResBlock(features)
        )
        heads, previous = [], features
        for channels in level_channels:
            heads.append(
                nn.Sequential(
                    nn.Conv2d(previous, channels, 3, stride=2, padding=1),
                    nn.LeakyReLU(0.1),
                    ResBlock(channels),
                )
            )
            previous = channels
        self.heads = nn.ModuleList(heads)
        self.dense = nn.Sequential(
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * previous, dense_cond)
        )

    def forward(self, inversion: torch.Tensor) -> list[torch.Tensor]:
        feature = self.stem(inversion)
        outputs = []
        for head in self.heads:
            feature = head(feature)
            outputs.append(feature)
        outputs.append(self.dense(feature))
        return outputs
