"""Learned invertible downsampling (Etmann et al., iUNets 2020; seed 000 Sec. 2.4.2).

Each channel's 2x2 pixel blocks are mapped to 4 output channels by an orthogonal 4x4 matrix
Q_c, one per input channel: a grouped stride-2 convolution whose inverse is the transposed
convolution with the same kernel, and whose log-determinant is 0 because Q_c is orthogonal.

Why this parametrisation: Q_c = cayley(A_c) @ H with A_c = W_c - W_c^T skew-symmetric and H the
orthonormal 2D Haar matrix. The Cayley transform of a skew matrix is orthogonal for every W,
so a gradient step can never break invertibility, and W = 0 gives exactly the Haar transform
(FrEIA's `HaarDownsampling` with rebalance=1, channels grouped a1, v1, h1, d1, a2, ...). The
fixed factor H is needed because a Cayley transform never has the eigenvalue -1, and this
(symmetric, orthogonal) Haar matrix has it twice: cayley(A) alone cannot equal it.
W has C x 4 x 4 entries (of which the skew part, 6 per channel, is effective), the same
parameter count as the authors' layer (FACTS: C x 16 weights).

The authors (cinn_for_imaging, via the iunets package) parametrise Q_c = cayley(A_c) directly and
start W at the skew matrix whose Cayley transform is *a* Haar matrix; their `init_params` then
overwrites every trainable flow parameter, this weight included, with N(0, 0.02^2), so their
downsampling actually starts near the identity (a pixel-shuffle "squeeze"), not at Haar. Here
the Haar start is kept, as the seed paper describes it; see `haar_matrix` for the sign
convention.
"""

from __future__ import annotations

import FrEIA.modules as Fm
import torch
import torch.nn.functional as F
from torch import nn


def haar_matrix(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal 2D Haar matrix, rows = (average, vertical, horizontal, diagonal) filters.

    Columns index the 2x2 block row-major: (0,0), (0,1), (1,0), (1,1). The signs follow FrEIA's
    `HaarDownsampling`, so the learned layer at initialisation reproduces that module exactly.
    """
    return 0.5 * torch.tensor(
        [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=dtype
    )


def cayley(weight: torch.Tensor) -> torch.Tensor:
    """Orthogonal (I - A)(I + A)^-1 for A = W - W^T (batched over the leading dimension).

    I + A is invertible for every skew-symmetric A (its eigenvalues are 1 + i*lambda), so this
    is defined for every W, and differentiable through `torch.linalg.solve`.
    """
    skew = weight - weight.transpose(-1, -2)
    eye = torch.eye(weight.shape[-1], dtype=weight.dtype, device=weight.device).expand_as(skew)
    # (I - A)(I + A)^-1 == (I + A)^-1 (I - A) since both are functions of A; solve is stabler.
    return torch.linalg.solve(eye + skew, eye - skew)


class LearnedInvertibleDownsampling(Fm.InvertibleModule):
    """(C, H, W) -> (4C, H/2, W/2) by a learnable orthogonal 2x2 -> 4 transform per channel."""

    def __init__(self, dims_in, dims_c=None):
        super().__init__(dims_in, dims_c)
        channels, height, width = dims_in[0]
        if height % 2 or width % 2:
            raise ValueError(f"learned downsampling needs even sizes, got {height}x{width}")
        self.channels = channels
        self.weight = nn.Parameter(torch.zeros(channels, 4, 4))
        self.register_buffer("haar", haar_matrix())

    def matrices(self) -> torch.Tensor:
        """The C orthogonal 4x4 matrices Q_c (rows = output filters)."""
        return cayley(self.weight) @ self.haar.to(self.weight.dtype)

    def kernel(self) -> torch.Tensor:
        """Grouped convolution kernel (4C, 1, 2, 2): output channel 4c + k is row k of Q_c."""
        return self.matrices().reshape(4 * self.channels, 1, 2, 2)

    def forward(self, x, c=None, rev: bool = False, jac: bool = True):
        kernel = self.kernel()
        if not rev:
            out = F.conv2d(x[0], kernel, stride=2, groups=self.channels)
        else:
            out = F.conv_transpose2d(x[0], kernel, stride=2, groups=self.channels)
        return (out,), torch.zeros((), dtype=x[0].dtype, device=x[0].device)

    def output_dims(self, input_dims):
        if len(input_dims) != 1:
            raise ValueError(f"{type(self).__name__} takes exactly one input")
        channels, height, width = input_dims[0]
        return [(4 * channels, height // 2, width // 2)]
