"""Eikonal (first-arrival travel-time) transmission tomography with adjoint-state gradients.

Seed 003 (Li et al. 2023, Sec. 4.3 and App. A.3) reconstructs a wave-speed image from the first
arrival times of waves excited one source at a time on the boundary of a square box and
recorded on its boundary. The travel time T_s from source s solves the eikonal equation
|grad T_s| = 1 / v(x), T_s(source) = 0; the data are T_s sampled at the receivers. The map
x -> y is NONLINEAR (the rays bend with v), so this operator has no adjoint in the
`LinearPhysics` sense and is deliberately NOT registered in `physics.base` (whose contract
tests check <A x, y> = <x, A^T y>). `EikonalTomography` is a plain class with the same
`A` / `noise` / `measure` / `in_shape` / `out_shape` vocabulary; its `A` is differentiable by
autograd through a custom `torch.autograd.Function`.

Setup, as read from the authors' code (tasks/stylegan2/inversion/main_tomo_sg2.py, README.md;
facts only, the code here is ours):

- grid spacing h = 0.001 m (`h = 0.001`), the image pixels are the grid nodes;
- image -> velocity: x in [0, 1] -> v = 1500 + 100 x m/s, slowness 1 / v (`img2phys`; the
  StyleGAN output in [-1, 1] is first mapped to [0, 1] by `img_convert`, our images already
  are in [0, 1]). The authors clamp x to [0, 1] there; we do not clamp (the physics is defined
  for any positive velocity) and raise if a velocity is not positive;
- sources on all four sides, the first 2 nodes from the corner, every `src_stride` nodes
  (`src_mask[2:nz:src_stride, 0]` etc.); the README runs `--src_stride 36` on 256 px images,
  i.e. 8 sources per side at 2, 38, ..., 254 (App. A.3: "eight sources located on each
  side"). We take `sources_per_side` S and use stride (N - 4) // (S - 1), which gives exactly
  36 for N = 256, S = 8 and keeps the last source off the corner for any N;
- receivers on every boundary node of the three sides other than the source's own (the
  source's side, corners included, is dropped: `rec_mask_curr[z, :] = 0` / `[:, x] = 0`), so
  every source of a square image has 3 N - 4 receivers;
- noise (`add_noise(..., mode='speckle')` in dgminv/utils/common.py, `--noise_std 0.001`):
  y_noisy = y + noise_std * y * eps, eps ~ N(0, 1): the error grows with the travel time
  (Sec. 4.3: "longer traveltime corresponds to larger uncertainties").

Where we differ from the authors, and why:

- Solver: they use fast sweeping (Zhao 2005; dgminv/ops/eikonal/src/eikonal.h); we use the
  first-order fast marching method of scikit-fmm (`order=1`). Both solve the same discrete
  equations, the first-order upwind Godunov scheme
      sum_{d in rows, cols} max(T_i - m_d(i), 0)^2 = (h s_i)^2,
  m_d(i) the smaller of the two neighbours of node i along axis d (the only one on an edge);
  the discrete solution is unique, so the two give the same T up to the sweeping tolerance
  (the tests check the scheme's relative residual at skfmm's T: ~1e-12). FMM needs one pass;
  sweeping iterates to a tolerance (1e-8 relative in eikonal.h).
- Point source: the authors set T = 0 at the source node and compute every other node with
  the scheme. We give skfmm phi = 1 everywhere and phi = 0 at the source node: skfmm freezes
  nodes where phi == 0 at distance 0 and, with no sign change of phi anywhere, initialises no
  other node by interpolation (skfmm distance_marcher.cpp, initializeFrozen), so the
  initialisation is the authors'. Its cost: the point-source singularity is not resolved
  (e.g. the diagonal neighbour gets h s (1 + 1/sqrt 2) instead of h s sqrt 2), the scheme
  over-estimates T and the error is O(h log(1/h)) rather than O(h): measured max error
  ~0.33 s h ln(N - 1) in a constant medium, an observed order ~0.75 between grids. A
  phi < 0 source node would put the front half a cell away from the source (T = h s / 2 at its
  neighbours), a bias we avoid. The error is systematic and shared by data and inversion
  (the authors' set-up, an inverse crime); at 128 px it is ~0.9 % of T on average over the
  receivers (up to ~7 % next to the source), i.e. larger than the 0.1 % noise, which matters
  only when comparing with travel times from another solver.
- Order: only order = 1. skfmm's second-order stencil uses a data-dependent choice of upwind
  points (and, next to a point source, a stencil through the source gives T = h s / 3 at the
  source's neighbour along its side, measured with scikit-fmm 2025.6.23); the adjoint below is
  the discrete adjoint of the first-order scheme, so a different forward would get a wrong
  gradient.
- Noise: the authors reseed numpy with 1234 for every source, so every source row gets the
  same noise draws; we draw independent noise for every (image, source, receiver) from the
  torch generator the caller passes.
- Data layout: y is (b, n_sources, n_receivers), sources in clockwise order (top side left to
  right, right side top to bottom, bottom side right to left, left side bottom to top) and,
  for each source, receivers in clockwise order from the top-left corner skipping the
  source's side (the paper's Fig. 8(c) convention); the authors stack row-major `argwhere`
  order. Only a permutation: a least-squares loss is unchanged.
- Square images only (the paper's are 256 x 256; ours 128 x 128).

Gradient (adjoint state, after the discrete adjoint of the authors' eikonal.h `backward`, our
own derivation and code): with T known, write the scheme as F(T, s) = 0 with
F_i = sum_d a_id (T_i - m_d(i))^2 - h^2 s_i^2 (a_id = 1 where T_i > m_d(i), else 0) and
F_source = T_source. Then dF/dT has diagonal 2 sum_d a_id (T_i - m_d(i)) and -2 a_id
(T_i - m_d(i)) at the upwind neighbour, which has a strictly smaller T; dF/ds = -2 h^2 s
(0 at the source). Ordered by increasing T, dF/dT is lower triangular, so for an upstream
gradient g on T the adjoint system (dF/dT)^T lam = g is one sparse triangular solve
(scipy `spsolve_triangular`), and d loss / d s = 2 h^2 s lam. The chain to x through the
velocity map is left to autograd. Exact identity used in the tests: T is homogeneous of
degree 1 in s, so <dT_r / ds, s> = T_r for every receiver r (Euler).

Cost: see `EikonalTomography` (at 256 px our forward is ~2x slower and our backward ~5x
faster than the figures the paper reports for its solver, App. K).
Computation is numpy on the CPU; inputs on CUDA are copied over and results copied back
to the input's device and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import skfmm
import torch
from scipy.sparse.linalg import spsolve_triangular
from torch.autograd.function import once_differentiable

from genrecon.physics.cs import standard_normal

#: velocity range of the authors' image -> velocity map (img2phys: 1500 + 100 x m/s)
VELOCITY_RANGE: tuple[float, float] = (1500.0, 1600.0)
#: grid spacing in metres (main_tomo_sg2.py: h = 0.001)
GRID_SPACING: float = 1e-3
#: first source this many nodes from the corner (main_tomo_sg2.py: src_mask[2:nz:src_stride, ...])
SOURCE_OFFSET: int = 2
#: relative travel-time noise level of the paper's runs (README: --noise_std 0.001)
NOISE_STD: float = 1e-3


# ----------------------------------------------------------------------------------------------
# acquisition geometry
# ----------------------------------------------------------------------------------------------


def _side_positions(image_size: int, sources_per_side: int) -> list[int]:
    """Source positions along one side: 2, 2 + stride, ..., stride = (N - 4) // (S - 1)."""
    if sources_per_side == 1:
        return [SOURCE_OFFSET]
    stride = (image_size - 2 * SOURCE_OFFSET) // (sources_per_side - 1)
    return [SOURCE_OFFSET + k * stride for k in range(sources_per_side)]


def source_positions(image_size: int, sources_per_side: int) -> np.ndarray:
    """(4 S, 2) int array of (row, col) source nodes, clockwise from the top side.

    Top side left to right, right side top to bottom, bottom side right to left, left side
    bottom to top; along each side the positions are `SOURCE_OFFSET + k * stride` counted from
    the top / left edge, as in the authors' masks (so opposite sides are mirror images only
    when the spacing is symmetric).
    """
    n = int(image_size)
    if n < 2 * SOURCE_OFFSET:
        raise ValueError(f"image_size must be at least {2 * SOURCE_OFFSET}, got {image_size}")
    max_sources = n - 2 * SOURCE_OFFSET + 1
    if not 1 <= sources_per_side <= max_sources:
        raise ValueError(
            f"sources_per_side must be between 1 and {max_sources} for image_size {n} "
            f"(sources sit on distinct boundary nodes {SOURCE_OFFSET}..{n - SOURCE_OFFSET} of "
            f"a side, off the corners), got {sources_per_side}"
        )
    pos = _side_positions(n, sources_per_side)
    top = [(0, p) for p in pos]
    right = [(p, n - 1) for p in pos]
    bottom = [(n - 1, p) for p in reversed(pos)]
    left = [(p, 0) for p in reversed(pos)]
    return np.array(top + right + bottom + left, dtype=np.int64)


def boundary_ring(image_size: int) -> np.ndarray:
    """(4 N - 4, 2) boundary nodes clockwise from the top-left corner."""
    n = int(image_size)
    idx = np.arange(n)
    top = np.stack([np.zeros(n, np.int64), idx], 1)
    right = np.stack([idx[1:], np.full(n - 1, n - 1)], 1)
    bottom = np.stack([np.full(n - 1, n - 1), idx[::-1][1:]], 1)
    left = np.stack([idx[::-1][1:-1], np.zeros(n - 2, np.int64)], 1)
    return np.concatenate([top, right, bottom, left]).astype(np.int64)


def receiver_positions(image_size: int, source: tuple[int, int]) -> np.ndarray:
    """(3 N - 4, 2) receivers of one source: the boundary without the source's side."""
    n = int(image_size)
    row, col = int(source[0]), int(source[1])
    ring = boundary_ring(n)
    drop = np.zeros(len(ring), dtype=bool)
    if row in (0, n - 1):
        drop |= ring[:, 0] == row
    if col in (0, n - 1):
        drop |= ring[:, 1] == col
    if not drop.any():
        raise ValueError(f"source {source} is not on the boundary of a {n} x {n} grid")
    return ring[~drop]


@dataclass(frozen=True)
class Geometry:
    """Sources (S, 2) and, per source, flat receiver indices into the N * N grid (S, R)."""

    image_size: int
    sources: np.ndarray
    receivers: np.ndarray

    @classmethod
    def build(cls, image_size: int, sources_per_side: int) -> Geometry:
        sources = source_positions(image_size, sources_per_side)
        receivers = np.stack(
            [
                np.ravel_multi_index(
                    tuple(receiver_positions(image_size, tuple(s)).T), (image_size,) * 2
                )
                for s in sources
            ]
        )
        return cls(int(image_size), sources, receivers)


# ----------------------------------------------------------------------------------------------
# forward solver and discrete adjoint (numpy, float64, one source on one (N, N) slowness)
# ----------------------------------------------------------------------------------------------


def travel_time_field(slowness: np.ndarray, source: tuple[int, int], dx: float) -> np.ndarray:
    """First-arrival times from a point source: first-order FMM (module docstring).

    phi = 0 at the source node and 1 elsewhere: skfmm freezes the source at T = 0 and
    computes every other node with the first-order upwind update (the authors' set-up).
    """
    phi = np.ones(slowness.shape, dtype=np.float64)
    phi[int(source[0]), int(source[1])] = 0.0
    times = skfmm.travel_time(phi, 1.0 / slowness, dx=float(dx), order=1)
    if np.ma.isMaskedArray(times) and np.ma.getmaskarray(times).any():
        raise RuntimeError("fast marching left nodes unreached (non-positive or tiny velocity?)")
    return np.asarray(times, dtype=np.float64)


def _upwind(times: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per axis: the smaller neighbour's time m_d and its flat index (inf / -1 off the grid)."""
    n_rows, n_cols = times.shape
    flat = np.arange(times.size).reshape(times.shape)
    padded_t = np.pad(times, 1, constant_values=np.inf)
    padded_i = np.pad(flat, 1, constant_values=-1)
    inner = (slice(1, n_rows + 1), slice(1, n_cols + 1))
    out = []
    for lo, hi in (
        ((slice(0, n_rows), inner[1]), (slice(2, n_rows + 2), inner[1])),
        ((inner[0], slice(0, n_cols)), (inner[0], slice(2, n_cols + 2))),
    ):
        take_lo = padded_t[lo] <= padded_t[hi]
        out.append(
            (
                np.where(take_lo, padded_t[lo], padded_t[hi]),
                np.where(take_lo, padded_i[lo], padded_i[hi]),
            )
        )
    return out


def godunov_residual(
    times: np.ndarray, slowness: np.ndarray, source: tuple[int, int], dx: float
) -> np.ndarray:
    """F_i / (h s_i)^2 of the first-order Godunov scheme (0 where `times` solves it)."""
    total = np.zeros_like(times)
    for m, _ in _upwind(times):
        total += np.maximum(times - m, 0.0) ** 2
    residual = total / (dx * slowness) ** 2 - 1.0
    residual[int(source[0]), int(source[1])] = times[int(source[0]), int(source[1])]
    return residual


def scheme_jacobian(times: np.ndarray, source: tuple[int, int]) -> sp.csr_matrix:
    """dF/dT of the Godunov scheme at the solution `times` (flat, row-major node order)."""
    n = times.size
    t = times.ravel()
    src = int(np.ravel_multi_index((int(source[0]), int(source[1])), times.shape))
    diag = np.zeros(n)
    rows, cols, vals = [], [], []
    for m, idx in _upwind(times):
        m, idx = m.ravel(), idx.ravel()
        active = t > m
        active[src] = False
        gap = np.where(active, t - m, 0.0)
        diag += 2.0 * gap
        nodes = np.flatnonzero(active)
        rows.append(nodes)
        cols.append(idx[nodes])
        vals.append(-2.0 * gap[nodes])
    diag[src] = 1.0
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )


def adjoint_slowness_gradient(
    times: np.ndarray,
    slowness: np.ndarray,
    source: tuple[int, int],
    dx: float,
    grad_times: np.ndarray,
) -> np.ndarray:
    """d loss / d slowness for d loss / d T = `grad_times` (both (N, N)), by the adjoint state.

    Solves (dF/dT)^T lam = grad_times as an upper-triangular system in the order of
    increasing T (each node depends only on strictly earlier ones), then 2 h^2 s lam.
    """
    jac = scheme_jacobian(times, source)
    order = np.argsort(times.ravel(), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    coo = jac.tocoo()
    # lower triangular in rank order; its transpose is the adjoint system
    upper = sp.csr_matrix((coo.data, (rank[coo.col], rank[coo.row])), shape=jac.shape)
    lam_sorted = spsolve_triangular(upper, grad_times.ravel()[order], lower=False)
    lam = np.empty_like(lam_sorted)
    lam[order] = lam_sorted
    grad = 2.0 * dx**2 * slowness.ravel() * lam
    grad[np.ravel_multi_index((int(source[0]), int(source[1])), times.shape)] = 0.0
    return grad.reshape(times.shape)


# ----------------------------------------------------------------------------------------------
# autograd wrapper
# ----------------------------------------------------------------------------------------------


class _ReceiverTimes(torch.autograd.Function):
    """(b, N, N) slowness -> (b, S, R) receiver travel times; backward by the adjoint state."""

    @staticmethod
    def forward(ctx, slowness: torch.Tensor, geometry: Geometry, dx: float) -> torch.Tensor:
        s = slowness.detach().to(device="cpu", dtype=torch.float64).numpy()
        b, n_src = s.shape[0], len(geometry.sources)
        fields = np.empty((b, n_src, *s.shape[1:]), dtype=np.float64)
        for i in range(b):
            for k, src in enumerate(geometry.sources):
                fields[i, k] = travel_time_field(s[i], tuple(src), dx)
        flat = fields.reshape(b, n_src, -1)
        data = np.take_along_axis(flat, geometry.receivers[None].repeat(b, 0), axis=2)
        ctx.fields, ctx.slowness, ctx.geometry, ctx.dx = fields, s, geometry, dx
        return torch.from_numpy(data).to(device=slowness.device, dtype=slowness.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        g = grad_out.detach().to(device="cpu", dtype=torch.float64).numpy()
        fields, s, geometry, dx = ctx.fields, ctx.slowness, ctx.geometry, ctx.dx
        grad = np.zeros_like(s)
        n_nodes = s[0].size
        for i in range(s.shape[0]):
            for k, src in enumerate(geometry.sources):
                if not np.any(g[i, k]):
                    continue
                g_times = np.zeros(n_nodes)
                g_times[geometry.receivers[k]] = g[i, k]
                grad[i] += adjoint_slowness_gradient(
                    fields[i, k], s[i], tuple(src), dx, g_times.reshape(s[i].shape)
                )
        out = torch.from_numpy(grad).to(device=grad_out.device, dtype=grad_out.dtype)
        return out, None, None


# ----------------------------------------------------------------------------------------------
# the operator
# ----------------------------------------------------------------------------------------------


class EikonalTomography:
    """Transmission travel-time tomography of (b, 1, N, N) images in [0, 1] (seed 003 Sec. 4.3).

    NONLINEAR operator: not a `LinearPhysics`, not in the physics registry, no `A_adjoint`.

    - `A(x)`: x -> v = v_min + (v_max - v_min) x -> slowness 1 / v -> first-order FMM travel
      times from each of the 4 S boundary sources, sampled at the 3 N - 4 boundary receivers
      of the other three sides: (b, 4 S, 3 N - 4) in seconds. Differentiable by autograd
      (adjoint-state backward, once differentiable); computed on the CPU in float64 and
      returned on x's device and dtype.
    - `noise(y, generator)`: y + noise_std * y * eps (travel-time-proportional Gaussian).
    - `measure(x, generator)` = noise(A(x)).

    Settings: `image_size` N, `sources_per_side` S (8 in the paper), `velocity_range`
    (1500, 1600) m/s, grid spacing `dx` (0.001 m, so the box is (N - 1) dx wide), `order`
    (first-order scheme only, see module docstring) and `noise_std` (0.001).

    Cost per image, 32 sources, float64 inside, shared 2-core CPU (load ~4), median of 7:
    N = 32: A 6-10 ms, backward 30-45 ms; N = 128: A 0.09-0.13 s, backward 0.14-0.20 s;
    N = 256: A 0.56 s, backward 1.1 s (the paper, App. K: 0.29 s and 5.9 s for its 256 px
    set-up on a Xeon 8276 / V100). Batches loop over images and sources (serial; no threads).

    The authors scale their data misfit by 1e10 (0.5 ||A(x) - y||^2 * 1e10, main_tomo_sg2.py)
    because travel times are ~1e-4 s; a caller that runs L-BFGS on this operator needs a
    similar scaling.
    """

    name = "eikonal"

    def __init__(
        self,
        image_size: int = 128,
        sources_per_side: int = 8,
        velocity_range: tuple[float, float] = VELOCITY_RANGE,
        dx: float = GRID_SPACING,
        order: int = 1,
        noise_std: float = NOISE_STD,
    ) -> None:
        v_min, v_max = (float(v) for v in velocity_range)
        if not v_min > 0:
            raise ValueError(f"velocity_range must be positive, got {velocity_range}")
        if not v_max > v_min:
            raise ValueError(
                f"velocity_range must be (v_min, v_max) with v_max > v_min, got {velocity_range}"
            )
        if not dx > 0:
            raise ValueError(f"dx (grid spacing) must be positive, got {dx}")
        if order != 1:
            raise ValueError(
                f"order must be 1 (the adjoint is that of the first-order scheme), got {order}"
            )
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be non-negative, got {noise_std}")
        if int(image_size) != image_size:
            raise ValueError(f"image_size must be an integer, got {image_size}")
        self.image_size = int(image_size)
        self.sources_per_side = int(sources_per_side)
        self.velocity_range = (v_min, v_max)
        self.dx = float(dx)
        self.order = 1
        self.noise_std = float(noise_std)
        self.geometry = Geometry.build(self.image_size, self.sources_per_side)
        self.in_shape = (1, self.image_size, self.image_size)
        self.out_shape = tuple(self.geometry.receivers.shape)

    @property
    def physical_size(self) -> float:
        """Side of the square box in metres: (N - 1) dx (the nodes are the pixels)."""
        return (self.image_size - 1) * self.dx

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"x must have shape (b, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}"
            )

    def velocity(self, x: torch.Tensor) -> torch.Tensor:
        """v = v_min + (v_max - v_min) x in m/s (the authors' img2phys); raises if v <= 0."""
        v_min, v_max = self.velocity_range
        v = v_min + (v_max - v_min) * x
        bad = ~torch.isfinite(v) | (v <= 0)
        if bool(bad.any()):
            raise ValueError(
                "velocity must be finite and positive: x has values that map outside "
                f"(0, inf) m/s (min x = {float(x.detach().min()):.3g})"
            )
        return v

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Receiver travel times (b, 4 S, 3 N - 4) in seconds; differentiable."""
        self._check(x)
        slowness = 1.0 / self.velocity(x)
        return _ReceiverTimes.apply(slowness[:, 0], self.geometry, self.dx)

    def travel_time_fields(self, x: torch.Tensor) -> torch.Tensor:
        """Full travel-time fields (b, 4 S, N, N) (for figures; not differentiable)."""
        self._check(x)
        s = (1.0 / self.velocity(x.detach()))[:, 0].to("cpu", torch.float64).numpy()
        fields = np.stack(
            [
                np.stack(
                    [travel_time_field(s[i], tuple(src), self.dx) for src in self.geometry.sources]
                )
                for i in range(s.shape[0])
            ]
        )
        return torch.from_numpy(fields).to(device=x.device, dtype=x.dtype)

    def noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y + noise_std * y * eps, eps ~ N(0, 1) from `generator` (the paper's speckle noise)."""
        if self.noise_std == 0:
            return y
        return y + self.noise_std * y * standard_normal(tuple(y.shape), y, generator)

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.noise(self.A(x), generator)
