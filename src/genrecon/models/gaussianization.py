"""Differentiable Gaussianization layers (Li et al., ICLR 2023, Sec. 2, App. E, G).

During a DGM-regularised inversion the latent patches are reparameterised as z = T(u), where
T pushes the patch vectors of u towards i.i.d. standard Gaussian entries (Sec. 2.1):

    T = standardise(temperature) o Lambert o Yeo-Johnson o FastICA o ZCA-whitening   (Eq. 8)

Every stage is "data dependent": its parameters (the whitening matrix, the ICA rotation W, the
Yeo-Johnson lambda, the Lambert (mu, sigma, delta)) are solved from the current input on every
call and gradients are propagated through those solves (Fig. 18). Each stage is its own
nn.Module (`FastICALayer`, `YeoJohnsonLayer`, `LambertLayer`, `Standardize`) so they can be
timed and ablated separately (Tables 2, 9, 11); `GaussianizationLayers` composes them.

Shapes: every layer takes patches (n, d) (n patch vectors of dimension d) or a batch
(b, n, d); a batch is processed element by element (statistics never mix across the batch
axis). The scalar solves (Brent, L-BFGS-B) run once per batch element.

Facts taken from the authors' code (github lidongzh/DGM-Inv-Gaussianization, read, not copied):

- Whitening (dgminv/ops/ica.py:71-80, `zca_whiten`): subtract the per-dimension mean, covariance
  with the (n - 1) denominator blended as (1 - eps) C + eps I with eps = 1e-3, eigh, then
  W = E diag(lambda^-1/2) E^T; the whole ICA layer runs in float64 and casts back (ica.py:90).
- FastICA (ica.py:21-41): W starts at the identity; per step, with Y = W^T X and the logcosh
  contrast (alpha = 1, ica.py:99-104) g = tanh, g' = 1 - tanh^2,
  W <- 0.8 * X g(Y)^T / n - W diag(mean g'(Y)) (the damping 0.8 of App. E Eq. 22, ica.py:33),
  then symmetric decorrelation; stop after max_iter = 10 steps (glow_wrapper*.py call the layer
  with its default max_iter=10, ica.py:83) or when max | |diag(W_old^T W)| - 1 | < 1e-4.
  Gradients go through the unrolled loop (App. E.1: "without using the trick of App. G").
- Symmetric decorrelation (ica.py:44-60): the ITERATIVE scheme of App. E (Hyvarinen 1999):
  W <- W / sqrt(||W^T W||_F), then W <- 1.5 W - 0.5 W W^T W until ||dW||_F < 1e-8 (float64),
  at most 100 steps. We use it too, rather than (W W^T)^-1/2 W by an eigendecomposition: it is
  only matrix products, so its backward is exact and stable even when W W^T has repeated
  eigenvalues, which is the normal case here (near convergence W W^T ~ c I, where the
  eigh-based backward divides by eigenvalue gaps ~ 0); it also runs well on GPUs.
- Yeo-Johnson (dgminv/ops/yeojohnson.py): ONE lambda for all entries (Sec. 2.3); lambda
  maximises SciPy's Yeo-Johnson log-likelihood (App. E Eq. 24; yeojohnson.py:88-98:
  -n/2 log var(psi) + (lambda - 1) sum sign(x) log(1 + |x|), torch's unbiased var), found by
  Brent with bracket (-2, 2) and tol 1.48e-8 (yeojohnson.py:75-86), then polished by brentq on
  d(nll)/d(lambda) in [lambda - 0.1, lambda + 0.1] (optimize/brent_optimizer.py:94-108).
  Gradient: implicit function theorem on d(nll)/d(lambda) = 0 (App. G Eqs. 30-34;
  yeojohnson.py:63-73): d lambda/dx = -nll_{lambda x} / nll_{lambda lambda}.
  Since the objective IS the MLE, lambda equals scipy.stats.yeojohnson's (tests check).
- Lambert W x F_X (Goerg 2015; dgminv/ops/lambert_transform.py): skipped (identity) unless
  the input's Pearson kurtosis (scipy default, biased) is > 3 (lambert_transform.py:168-175);
  IGMM (lambert_transform.py:32-59): delta0 = clip((sqrt(66 gamma - 162) - 6) / 66, 0.01,
  0.48) from the unbiased Pearson kurtosis gamma (0.01 if not finite), mu0 = mean,
  sigma0 = std (1 - 2 delta0)^0.75; each step: z = (y - mu) / sigma, delta = argmin
  (unbiased Fisher kurtosis of W_delta(z))^2 by L-BFGS-B with delta in [1e-6, inf),
  gtol = ftol = 1e-12, maxiter 100, maxcor 30 (lambert_transform.py:90-118), then
  x = mu + sigma W_delta(z), mu = mean x, sigma = std x; stop when ||d tau|| < 1e-8 (float64),
  at most 100 steps. Output mu + sigma W_delta((y - mu) / sigma).
- Standardisation (glow_wrapper1.py:20-21): (x - mean) / (std + 1e-6) over all entries,
  torch's unbiased std; the temperature multiplies it afterwards (glow_wrapper*.py `z * temp`).
- Patches (dgminv/utils/common.py:23-41, `img_to_patches` = F.unfold with stride = size):
  patch p = grid row i, column j in row-major order (p = i * W/size + j); inside a patch the
  vector is ordered (channel, row, column), channel slowest. `to_patches` uses this order.

Where we differ, and why:

- ZCA backward: our own autograd for C^-1/2 (`_InverseSqrtm`) with the closed-form divided
  differences K_ij = -1 / (s_i s_j (s_i + s_j)), s = sqrt(eigenvalues). It equals
  torch.linalg.eigh's backward where eigenvalues are distinct (tested), and stays exact where
  they coincide: eigh's backward divides by eigenvalue gaps, NaN for exactly equal eigenvalues
  (e.g. C = 2 I, tested) and rounding noise over rounding noise for nearly equal ones. eps keeps
  every eigenvalue >= eps (a rank-deficient covariance, e.g. n <= d, whitens with gain
  <= eps^-1/2 ~ 32 instead of dividing by 0), but it does NOT separate equal eigenvalues:
  blending shifts all of them alike, and rank deficiency leaves the eigenvalue eps repeated
  d - rank times.
- The authors' FastICA asserts n >= d (ica.py:85). We allow n < d (the covariance is then
  rank-deficient, see above) because the lead's P2 partition has small latent levels; the
  layers stay finite and differentiable, but ICA from fewer samples than dimensions is
  poorly determined: prefer n >= d.
- ICA on a batch: each element stops on its own criterion (its result is what it would be
  alone); the authors' code has no batch axis.
- Lambert: W_delta(z) = sgn(z) sqrt(W(delta z^2) / delta) is computed as
  z exp(-W(delta z^2) / 2) (the same function, since W(u) / u = exp(-W(u))): smooth at z = 0
  and delta = 0, where the authors' form has 0/0 and an infinite sqrt' (NaN gradients).
  W is our own torch Halley iteration (checked against scipy.special.lambertw), with
  dW/du = exp(-W) / (1 + W), so it runs on the input's device and is twice differentiable.
- Lambert gradient: the authors backpropagate through the unrolled IGMM loop with the IFT
  for the inner delta only. We apply the implicit function theorem to the whole IGMM fixed
  point (mean W_delta(z) = 0, std W_delta(z) = 1, d/d delta [kurt(W_delta(z))^2] = 0; a 3x3
  solve, App. G Eqs. 35-36), which is exact at the fixed point whatever the iteration count.
  Where the bound delta = 1e-6 is active, delta is held there (zero derivative).
- Solver tolerances: the inner L-BFGS-B solve is warm-started from the previous delta (the
  authors restart from delta0; same minimiser, fewer evaluations) and polished by Newton on
  kurt(W_delta(z)) = 0 to machine precision; IGMM stops at ||d tau|| < 1e-12 in float64
  (1e-6 otherwise) rather than 1e-8, so that the float64 Taylor test (App. G Eq. 37) is not
  limited by the forward solve. Brent's lambda is likewise polished (as the authors do).
- IGMM standardises z = (y - mu) / sigma without the authors' + 1e-6 on sigma
  (lambert_transform.py:41; their final transform, :182-183, has none), so that the fixed point
  and the output use the same z.
- Standardisation keeps the authors' 1e-6 in the denominator.

Behaviour worth knowing (measured here, float64, standard-normal patches): FastICA with few
samples per dimension over-fits, it finds directions where single samples stick out. The
Pearson kurtosis of the ICA output is ~3.0 at n = 20000, d = 8 but ~7.9 at n = 768, d = 192,
~51 at n = 256, d = 192 and ~35 at n = 16, d = 64 (there the rank-deficient whitening leaves
most entries near 0), while the whitened input has ~3.0. So on such inputs the Lambert stage
is active (delta ~0.2 at 768 x 192) and squashes those tails, as in the authors' pipeline.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy import optimize
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------


def _as_batch(x: Tensor, name: str = "patches") -> tuple[Tensor, bool]:
    """(n, d) -> (1, n, d) and a flag to undo it; (b, n, d) unchanged."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 2:
        return x.unsqueeze(0), True
    if x.dim() == 3:
        return x, False
    raise ValueError(f"{name} must have shape (n, d) or (b, n, d), got {tuple(x.shape)}")


def _check_samples(x: Tensor, minimum: int, name: str = "patches") -> None:
    if x.shape[-2] < minimum:
        raise ValueError(f"{name} needs at least {minimum} patch vectors, got n = {x.shape[-2]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")


def to_patches(z: Tensor, size: int) -> Tensor:
    """(b, C, H, W) -> (b, n, C * size * size) non-overlapping patches; (C, H, W) -> (n, d).

    Order as the authors' F.unfold (module docstring): patches row-major over the grid,
    vector entries (channel, row, column) with the channel slowest. H and W must be multiples
    of `size` (the authors pad circularly instead; that is not invertible).
    """
    if z.dim() not in (3, 4):
        raise ValueError(f"z must have shape (b, C, H, W) or (C, H, W), got {tuple(z.shape)}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    z4 = z if z.dim() == 4 else z.unsqueeze(0)
    b, c, h, w = z4.shape
    if h % size or w % size:
        raise ValueError(f"size {size} does not divide the spatial shape {h}x{w}")
    p = z4.reshape(b, c, h // size, size, w // size, size).permute(0, 2, 4, 1, 3, 5)
    p = p.reshape(b, (h // size) * (w // size), c * size * size)
    return p if z.dim() == 4 else p[0]


def from_patches(p: Tensor, shape: Sequence[int], size: int) -> Tensor:
    """Inverse of `to_patches`: (b, n, d) -> `shape` = (b, C, H, W); (n, d) -> (C, H, W)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"shape must be (b, C, H, W) or (C, H, W), got {shape}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    b, c, h, w = shape if len(shape) == 4 else (1, *shape)
    if h % size or w % size:
        raise ValueError(f"size {size} does not divide the spatial shape {h}x{w}")
    n, d = (h // size) * (w // size), c * size * size
    if p.shape[-2:] != (n, d) or p.numel() != b * n * d:
        raise ValueError(f"patches of shape {tuple(p.shape)} do not fit shape {shape}, size {size}")
    z = p.reshape(b, h // size, w // size, c, size, size).permute(0, 3, 1, 4, 2, 5)
    z = z.reshape(b, c, h, w)
    return z if len(shape) == 4 else z[0]


# --------------------------------------------------------------------------------------------
# 1. ZCA whitening
# --------------------------------------------------------------------------------------------


class _InverseSqrtm(torch.autograd.Function):
    """C^-1/2 of symmetric positive definite (..., d, d) matrices, stable backward.

    For C = V diag(s^2) V^T the derivative of C^-1/2 is E -> V (K o V^T E V) V^T with the
    divided differences K_ij = (s_i^-1 - s_j^-1) / (s_i^2 - s_j^2) = -1 / (s_i s_j (s_i + s_j)),
    a closed form without the 1 / (s_i^2 - s_j^2) that blows up at repeated eigenvalues.
    """

    @staticmethod
    def forward(ctx, c: Tensor) -> Tensor:
        evals, evecs = torch.linalg.eigh(c)
        s = evals.clamp_min(torch.finfo(c.dtype).tiny).sqrt()
        ctx.save_for_backward(s, evecs)
        return (evecs / s.unsqueeze(-2)) @ evecs.transpose(-1, -2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        s, v = ctx.saved_tensors
        g = 0.5 * (grad + grad.transpose(-1, -2))
        si, sj = s.unsqueeze(-1), s.unsqueeze(-2)
        k = -1.0 / (si * sj * (si + sj))
        return v @ (k * (v.transpose(-1, -2) @ g @ v)) @ v.transpose(-1, -2)


def inverse_sqrtm(c: Tensor) -> Tensor:
    """C^-1/2 for symmetric positive definite C (..., d, d), differentiable (see _InverseSqrtm)."""
    return _InverseSqrtm.apply(c)


def blended_covariance(xc: Tensor, eps: float) -> Tensor:
    """(1 - eps) Xc^T Xc / (n - 1) + eps I for centred samples xc (b, n, d) (App. E)."""
    n, d = xc.shape[-2:]
    eye = torch.eye(d, dtype=xc.dtype, device=xc.device)
    return (1.0 - eps) * (xc.transpose(-1, -2) @ xc) / (n - 1) + eps * eye


def zca_whiten(x: Tensor, eps: float = 1e-3) -> tuple[Tensor, Tensor]:
    """ZCA whitening of rows x (b, n, d): ((x - mean) U, U) with U = C_eps^-1/2 (App. E)."""
    xc = x - x.mean(dim=-2, keepdim=True)
    u = inverse_sqrtm(blended_covariance(xc, eps))
    return xc @ u, u


def _check_eps(eps: float) -> float:
    if not 0.0 <= float(eps) < 1.0:
        raise ValueError(f"eps must lie in [0, 1), got {eps!r}")
    return float(eps)


class ZCAWhitening(nn.Module):
    """Patches (n, d) or (b, n, d) -> ZCA-whitened patches (same shape and dtype).

    Runs in float64 as the authors' layer (ica.py:74). The output covariance is C C_eps^-1,
    eigenvalues lambda / ((1 - eps) lambda + eps): I up to O(eps) (exactly I for eps = 0).
    """

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = _check_eps(eps)

    def forward(self, patches: Tensor) -> Tensor:
        x, squeeze = _as_batch(patches)
        _check_samples(x, 2)
        out, _ = zca_whiten(x.to(torch.float64), self.eps)
        out = out.to(patches.dtype)
        return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------
# 2. FastICA
# --------------------------------------------------------------------------------------------


def logcosh_contrast(y: Tensor) -> tuple[Tensor, Tensor]:
    """G(y) = log cosh(y): g = tanh(y) (b, n, d) and mean over samples of g' = 1 - tanh^2 (b, d)."""
    g = torch.tanh(y)
    return g, (1.0 - g * g).mean(dim=-2)


def symmetric_decorrelation(w: Tensor, tol: float = 1e-8, max_iter: int = 100) -> Tensor:
    """Orthogonalise w (b, d, d) by the iterative scheme of App. E (ica.py:44-60).

    W <- W / sqrt(||W^T W||_F), then W <- 1.5 W - 0.5 W W^T W until ||dW||_F < tol for every
    batch element (extra steps leave an orthogonal W unchanged, so elements do not interact).
    The limit is the orthogonal polar factor W (W^T W)^-1/2.
    """
    frob = torch.linalg.matrix_norm(w.transpose(-1, -2) @ w)
    w = w / frob.sqrt()[..., None, None]
    for _ in range(max_iter):
        w_new = 1.5 * w - 0.5 * w @ (w.transpose(-1, -2) @ w)
        with torch.no_grad():
            change = torch.linalg.matrix_norm(w_new - w).max().item()
        w = w_new
        if change < tol:
            return w
    warnings.warn(
        f"symmetric_decorrelation did not converge in {max_iter} steps",
        RuntimeWarning,
        stacklevel=2,
    )
    return w


def fastica_rotation(
    xw: Tensor, iterations: int = 10, damping: float = 0.8, tol: float = 1e-4
) -> Tensor:
    """Orthogonal W (b, d, d) from whitened rows xw (b, n, d): the damped FastICA of App. E.

    Columns of W are the unmixing directions, output = xw @ W (= (W^T X)^T in the authors'
    column layout). Each batch element stops on its own criterion.
    """
    b, n, d = xw.shape
    w = torch.eye(d, dtype=xw.dtype, device=xw.device).expand(b, d, d)
    done = torch.zeros(b, dtype=torch.bool, device=xw.device)
    for _ in range(iterations):
        g, g_prime = logcosh_contrast(xw @ w)
        w_new = damping * (xw.transpose(-1, -2) @ g) / n - w * g_prime.unsqueeze(-2)
        w_new = symmetric_decorrelation(w_new)
        with torch.no_grad():
            overlap = torch.diagonal(w.transpose(-1, -2) @ w_new, dim1=-2, dim2=-1)
            lim = (overlap.abs() - 1.0).abs().amax(dim=-1)
        w = torch.where(done[:, None, None], w, w_new)
        done = done | (lim < tol)
        if bool(done.all()):
            break
    return w


class FastICALayer(nn.Module):
    """Whitening + FastICA (Sec. 2.2, App. E.1): patches (n, d) / (b, n, d) -> same shape.

    whiten_only=True gives the ZCA ablation row. `last_rotation` keeps the last W (detached,
    float64; None for whiten_only). tol = 0 always runs all `iterations` steps.
    """

    def __init__(
        self,
        whiten_only: bool = False,
        iterations: int = 10,
        damping: float = 0.8,
        tol: float = 1e-4,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
        if not damping > 0:
            raise ValueError(f"damping must be > 0, got {damping!r}")
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0, got {tol!r}")
        self.whiten_only = bool(whiten_only)
        self.iterations, self.damping, self.tol = iterations, float(damping), float(tol)
        self.eps = _check_eps(eps)
        self.last_rotation: Tensor | None = None

    def forward(self, patches: Tensor) -> Tensor:
        x, squeeze = _as_batch(patches)
        _check_samples(x, 2)
        xw, _ = zca_whiten(x.to(torch.float64), self.eps)
        if self.whiten_only:
            out, self.last_rotation = xw, None
        else:
            w = fastica_rotation(xw, self.iterations, self.damping, self.tol)
            self.last_rotation = w.detach()
            out = xw @ w
        out = out.to(patches.dtype)
        return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------
# 3. Yeo-Johnson
# --------------------------------------------------------------------------------------------

_EXPM1_SERIES = tuple(1.0 / math.factorial(k + 1) for k in range(8))


def _expm1_ratio(a: Tensor) -> Tensor:
    """(e^a - 1) / a, = 1 at a = 0, with exact first and second derivatives near 0."""
    small = a.abs() < 1e-2
    safe = torch.where(small, torch.ones_like(a), a)
    series = torch.zeros_like(a)
    for coeff in reversed(_EXPM1_SERIES):
        series = series * a + coeff
    return torch.where(small, series, torch.expm1(safe) / safe)


def yeo_johnson(x: Tensor, lmbda: Tensor | float) -> Tensor:
    """Yeo-Johnson transform (App. E Eq. 23) elementwise, one scalar lambda.

    x >= 0: ((1 + x)^l - 1) / l  (log1p(x) at l = 0);
    x < 0: -((1 - x)^(2 - l) - 1) / (2 - l)  (-log1p(-x) at l = 2).
    Both are written L * (e^(c L) - 1) / (c L), L = log1p(|x|), so l = 0 and l = 2 need no
    branch and derivatives in x and l are smooth there.
    """
    lmbda = torch.as_tensor(lmbda, dtype=x.dtype, device=x.device)
    pos = x >= 0
    lp = torch.log1p(x.clamp_min(0.0))
    ln = torch.log1p((-x).clamp_min(0.0))
    out_pos = lp * _expm1_ratio(lmbda * lp)
    out_neg = -ln * _expm1_ratio((2.0 - lmbda) * ln)
    return torch.where(pos, out_pos, out_neg)


def yeo_johnson_nll(x: Tensor, lmbda: Tensor | float) -> Tensor:
    """Negative Yeo-Johnson log-likelihood of all entries of x (App. E Eq. 24).

    n/2 log var(psi(x)) - (lambda - 1) sum sign(x) log1p(|x|)  (yeojohnson.py:88-98).
    """
    flat = x.reshape(-1)
    lmbda = torch.as_tensor(lmbda, dtype=x.dtype, device=x.device)
    n = flat.numel()
    psi = yeo_johnson(flat, lmbda)
    log_jac = (torch.sign(flat) * torch.log1p(flat.abs())).sum()
    return 0.5 * n * torch.log(psi.var()) - (lmbda - 1.0) * log_jac


def _nll_value(x: Tensor, lmbda: float) -> float:
    with torch.no_grad():
        v = float(yeo_johnson_nll(x, lmbda))
    return v if math.isfinite(v) else math.inf


def _nll_slope(x: Tensor, lmbda: float) -> float:
    with torch.enable_grad():
        lam = torch.tensor(lmbda, dtype=x.dtype, device=x.device, requires_grad=True)
        (g,) = torch.autograd.grad(yeo_johnson_nll(x, lam), lam)
    return float(g)


def solve_yeo_johnson_lambda(x: Tensor, bracket: tuple[float, float] = (-2.0, 2.0)) -> float:
    """argmin of `yeo_johnson_nll` over lambda for all entries of x, in float64.

    Brent (scipy.optimize.brent, bracket (-2, 2), tol 1.48e-8) as the authors, then brentq
    on the slope in [lambda - 0.1, lambda + 0.1] (brent_optimizer.py:94-108). If Brent cannot
    bracket a minimum, a bounded search over the range where (1 + |x|)^lambda cannot overflow.
    """
    x = x.detach().reshape(-1).to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("yeo_johnson input contains non-finite values")
    try:
        lam = float(optimize.brent(lambda t: _nll_value(x, t), brack=bracket, tol=1.48e-8))
        if not math.isfinite(lam):
            raise RuntimeError("non-finite Brent solution")
    except (RuntimeError, ValueError, OverflowError):
        reach = 300.0 / float(torch.log1p(x.abs().max()).clamp_min(1e-3))
        lam = float(optimize.fminbound(lambda t: _nll_value(x, t), -reach, 2.0 + reach, xtol=1e-10))
    lo, hi = lam - 0.1, lam + 0.1
    s_lo, s_hi = _nll_slope(x, lo), _nll_slope(x, hi)
    if math.isfinite(s_lo) and math.isfinite(s_hi) and s_lo * s_hi < 0:
        lam = float(optimize.brentq(lambda t: _nll_slope(x, t), lo, hi, xtol=1e-15, maxiter=200))
    return lam


class _YeoJohnsonLambda(torch.autograd.Function):
    """lambda*(x) = argmin nll(x, lambda), gradient by the implicit function theorem (App. G)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        ctx.degenerate = bool((x == x.reshape(-1)[0]).all())
        lam = 1.0 if ctx.degenerate else solve_yeo_johnson_lambda(x)
        ctx.lam = lam
        return torch.tensor(lam, dtype=x.dtype, device=x.device)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        if ctx.degenerate:
            return torch.zeros_like(x)
        with torch.enable_grad():
            x64 = x.detach().to(torch.float64).requires_grad_(True)
            lam = torch.tensor(ctx.lam, dtype=torch.float64, device=x.device, requires_grad=True)
            (slope,) = torch.autograd.grad(yeo_johnson_nll(x64, lam), lam, create_graph=True)
            curvature, slope_x = torch.autograd.grad(slope, (lam, x64))
        # d lambda / dx = -nll_{lambda x} / nll_{lambda lambda}   (App. G Eq. 33)
        return (-grad.to(torch.float64) * slope_x / curvature).to(x.dtype)


def yeo_johnson_lambda(x: Tensor) -> Tensor:
    """The shared MLE lambda of all entries of x (0-dim tensor), differentiable in x."""
    return _YeoJohnsonLambda.apply(x)


class YeoJohnsonLayer(nn.Module):
    """psi(x; lambda*(x)) with one lambda for all entries of each batch element (Sec. 2.3).

    `last_lambda` keeps the lambdas of the last call (floats, one per batch element).
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_lambda: list[float] = []

    def forward(self, patches: Tensor) -> Tensor:
        x, squeeze = _as_batch(patches)
        _check_samples(x, 1)
        if x[0].numel() < 2:
            raise ValueError("patches need at least 2 entries for the Yeo-Johnson variance")
        outs, self.last_lambda = [], []
        for sample in x:
            lam = yeo_johnson_lambda(sample)
            self.last_lambda.append(float(lam.detach()))
            outs.append(yeo_johnson(sample, lam))
        out = torch.stack(outs)
        return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------
# 4. Lambert W x F_X
# --------------------------------------------------------------------------------------------


class _LambertW0(torch.autograd.Function):
    """Principal branch W(u) for u >= 0 by Halley's method; dW/du = exp(-W) / (1 + W).

    The backward uses the saved OUTPUT, so it is itself differentiable (double backward is
    needed by the Lambert layer's implicit gradient).
    """

    @staticmethod
    def forward(ctx, u: Tensor) -> Tensor:
        w = torch.log1p(u)  # W(u) <= log1p(u) for u >= 0; Halley converges cubically from here
        tol = 4.0 * torch.finfo(u.dtype).eps
        for _ in range(30):
            ew = torch.exp(w)
            f = w * ew - u
            step = f / (ew * (w + 1.0) - (w + 2.0) * f / (2.0 * w + 2.0))
            w = w - step
            if bool((step.abs() <= tol * w.abs().clamp_min(1.0)).all()):
                break
        ctx.save_for_backward(w)
        return w

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return grad * torch.exp(-w) / (1.0 + w)


def lambert_w0(u: Tensor) -> Tensor:
    """Principal-branch Lambert W of u >= 0 (twice differentiable)."""
    if bool((u < 0).any()):
        raise ValueError("lambert_w0 is implemented for u >= 0 only")
    return _LambertW0.apply(u)


def lambert_w_delta(z: Tensor, delta: Tensor | float) -> Tensor:
    """Goerg's inverse W_delta(z) = sgn(z) sqrt(W(delta z^2) / delta) = z exp(-W(delta z^2) / 2).

    The second form (W(u)/u = exp(-W(u))) is smooth at z = 0 and gives z at delta = 0.
    """
    delta = torch.as_tensor(delta, dtype=z.dtype, device=z.device)
    return z * torch.exp(-0.5 * lambert_w0(delta * z * z))


def excess_kurtosis_unbiased(u: Tensor) -> Tensor:
    """Fisher kurtosis with the k-statistics bias correction (scipy bias=False), all entries."""
    u = u.reshape(-1)
    n = u.numel()
    c = u - u.mean()
    m2, m4 = (c * c).mean(), (c**4).mean()
    return ((n * n - 1.0) * m4 / m2**2 - 3.0 * (n - 1.0) ** 2) / ((n - 2.0) * (n - 3.0))


def pearson_kurtosis(u: Tensor) -> Tensor:
    """Biased Pearson kurtosis m4 / m2^2 (scipy's default, fisher=False) of all entries."""
    c = u.reshape(-1) - u.mean()
    return (c**4).mean() / (c * c).mean() ** 2


def _delta_init(y: Tensor) -> float:
    """Goerg's starting delta from the unbiased Pearson kurtosis (lambert_transform.py:22-29)."""
    gamma = float(excess_kurtosis_unbiased(y)) + 3.0
    with np.errstate(all="ignore"):
        d0 = float(np.clip((np.sqrt(66.0 * gamma - 162.0) - 6.0) / 66.0, 0.01, 0.48))
    return d0 if math.isfinite(d0) else 0.01


def _kurtosis_and_slope(z: Tensor, delta: float) -> tuple[float, float]:
    """k(delta) = excess_kurtosis_unbiased(W_delta(z)) and dk/d delta, analytically.

    dW_delta(z)/d delta = -z^3 exp(-3 W / 2) / (2 (1 + W)), W = W(delta z^2).
    """
    with torch.no_grad():
        n = z.numel()
        w = lambert_w0(delta * z * z)
        u = z * torch.exp(-0.5 * w)
        du = -(z**3) * torch.exp(-1.5 * w) / (2.0 * (1.0 + w))
        c, dc = u - u.mean(), du - du.mean()
        m2, m4 = (c * c).mean(), (c**4).mean()
        dm2, dm4 = 2.0 * (c * dc).mean(), 4.0 * (c**3 * dc).mean()
        a = (n * n - 1.0) / ((n - 2.0) * (n - 3.0))
        k = a * m4 / m2**2 - 3.0 * (n - 1.0) ** 2 / ((n - 2.0) * (n - 3.0))
        dk = a * (dm4 / m2**2 - 2.0 * m4 * dm2 / m2**3)
    return float(k), float(dk)


def solve_lambert_delta(z: Tensor, delta0: float, lower: float = 1e-6) -> float:
    """argmin_{delta >= lower} (excess kurtosis of W_delta(z))^2 (App. E Eq. 28).

    L-BFGS-B with the authors' options and an analytic gradient, then Newton on k(delta) = 0
    (only while it keeps |k| decreasing) to reach machine precision.
    """

    def fun(d: np.ndarray) -> tuple[float, np.ndarray]:
        k, dk = _kurtosis_and_slope(z, float(d[0]))
        if not (math.isfinite(k) and math.isfinite(dk)):
            return 1e10, np.zeros(1)
        return k * k, np.array([2.0 * k * dk])

    res = optimize.minimize(
        fun,
        np.array([max(delta0, lower)]),
        jac=True,
        method="L-BFGS-B",
        bounds=((lower, None),),
        options={"gtol": 1e-12, "ftol": 1e-12, "maxiter": 100, "maxcor": 30},
    )
    delta = float(res.x[0])
    k, dk = _kurtosis_and_slope(z, delta)
    for _ in range(20):
        if dk == 0 or not math.isfinite(k / dk):
            break
        trial = max(delta - k / dk, lower)
        k_new, dk_new = _kurtosis_and_slope(z, trial)
        if not abs(k_new) < abs(k):
            break
        step, delta, k, dk = abs(trial - delta), trial, k_new, dk_new
        if step <= 1e-15 * max(delta, 1.0):
            break
    return delta


def igmm(
    y: Tensor, tol: float = 1e-12, max_iter: int = 100, lower: float = 1e-6
) -> tuple[float, float, float]:
    """Goerg's IGMM for (mu, sigma, delta) of the Lambert W x Gaussian model of all entries."""
    y = y.detach().reshape(-1).to(torch.float64)
    delta = _delta_init(y)
    mu, sigma = float(y.mean()), float(y.std()) * (1.0 - 2.0 * delta) ** 0.75
    for _ in range(max_iter):
        z = (y - mu) / sigma
        delta_new = solve_lambert_delta(z, delta, lower)
        with torch.no_grad():
            x = mu + sigma * lambert_w_delta(z, delta_new)
        mu_new, sigma_new = float(x.mean()), float(x.std())
        change = math.sqrt((mu_new - mu) ** 2 + (sigma_new - sigma) ** 2 + (delta_new - delta) ** 2)
        mu, sigma, delta = mu_new, sigma_new, delta_new
        if change < tol:
            return mu, sigma, delta
    warnings.warn(f"IGMM did not converge in {max_iter} steps", RuntimeWarning, stacklevel=2)
    return mu, sigma, delta


def _igmm_residuals(y: Tensor, tau: Tensor, lower: float, at_bound: bool) -> Tensor:
    """F(y, tau) = 0 at the IGMM fixed point tau = (mu, sigma, delta) (3,).

    mean W_delta(z) = 0 and std W_delta(z) = 1 (the mu and sigma updates are then stationary),
    and d/d delta of kurt(W_delta(z))^2 = 0 (the inner optimum), or delta = lower when the
    bound is active.
    """
    mu, sigma, delta = tau[0], tau[1], tau[2]
    u = lambert_w_delta((y - mu) / sigma, delta)
    if at_bound:
        f3 = delta - lower
    else:
        (g,) = torch.autograd.grad(excess_kurtosis_unbiased(u) ** 2, tau, create_graph=True)
        f3 = g[2]
    return torch.stack([u.mean(), u.std() - 1.0, f3])


class _IGMM(torch.autograd.Function):
    """tau*(y) = (mu, sigma, delta) of IGMM; gradient by the IFT on the fixed point F = 0."""

    @staticmethod
    def forward(ctx, y: Tensor, tol: float, max_iter: int, lower: float) -> Tensor:
        mu, sigma, delta = igmm(y, tol, max_iter, lower)
        ctx.save_for_backward(y)
        ctx.tau, ctx.lower = (mu, sigma, delta), lower
        ctx.at_bound = delta <= lower * (1.0 + 1e-9)
        return torch.tensor([mu, sigma, delta], dtype=y.dtype, device=y.device)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (y,) = ctx.saved_tensors
        with torch.enable_grad():
            y64 = y.detach().reshape(-1).to(torch.float64).requires_grad_(True)
            tau = torch.tensor(ctx.tau, dtype=torch.float64, device=y.device, requires_grad=True)
            f = _igmm_residuals(y64, tau, ctx.lower, ctx.at_bound)
            rows = [torch.autograd.grad(f[i], tau, retain_graph=True)[0] for i in range(3)]
            jac = torch.stack(rows)  # dF/dtau
            adj = torch.linalg.solve(jac.transpose(0, 1), grad.to(torch.float64))
            (gy,) = torch.autograd.grad(f, y64, grad_outputs=adj)
        # dtau/dy = -F_tau^-1 F_y  (App. G Eqs. 33-36)
        return (-gy).reshape(y.shape).to(y.dtype), None, None, None


class LambertLayer(nn.Module):
    """Lambert W x F_X Gaussianization of all entries of each batch element (App. E.3).

    Identity where the Pearson kurtosis is <= 3. `last_tau` keeps (mu, sigma, delta) per batch
    element of the last call (None where skipped). tol=None: 1e-12 for float64 input,
    1e-6 otherwise.
    """

    def __init__(self, tol: float | None = None, max_iter: int = 100, lower: float = 1e-6) -> None:
        super().__init__()
        if tol is not None and not tol > 0:
            raise ValueError(f"tol must be > 0 or None, got {tol!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        if not lower > 0:
            raise ValueError(f"lower must be > 0, got {lower!r}")
        self.tol, self.max_iter, self.lower = tol, max_iter, float(lower)
        self.last_tau: list[tuple[float, float, float] | None] = []

    def forward(self, patches: Tensor) -> Tensor:
        x, squeeze = _as_batch(patches)
        _check_samples(x, 1)
        if x[0].numel() < 4:
            raise ValueError("patches need at least 4 entries for the unbiased kurtosis")
        tol = self.tol if self.tol is not None else (1e-12 if x.dtype == torch.float64 else 1e-6)
        outs, self.last_tau = [], []
        for sample in x:
            if float(pearson_kurtosis(sample.detach().to(torch.float64))) <= 3.0:
                outs.append(sample)
                self.last_tau.append(None)
                continue
            tau = _IGMM.apply(sample, tol, self.max_iter, self.lower)
            self.last_tau.append(tuple(float(t) for t in tau.detach()))
            mu, sigma, delta = tau[0], tau[1], tau[2]
            outs.append(mu + sigma * lambert_w_delta((sample - mu) / sigma, delta))
        out = torch.stack(outs)
        return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------
# 5. standardisation, 6. composition
# --------------------------------------------------------------------------------------------


class Standardize(nn.Module):
    """(x - mean) / (std + eps) * temperature over all entries of each batch element (Eq. 9)."""

    def __init__(self, temperature: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        self.temperature, self.eps = float(temperature), float(eps)

    def forward(self, patches: Tensor) -> Tensor:
        x, squeeze = _as_batch(patches)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True)
        out = (x - mean) / (std + self.eps) * self.temperature
        return out[0] if squeeze else out


ABLATIONS: dict[str, dict[str, bool]] = {
    # Tables 2 and 9 (standardisation is always on)
    "none": {"ica": False, "whiten_only": False, "yeo_johnson": False, "lambert": False},
    "yj": {"ica": False, "whiten_only": False, "yeo_johnson": True, "lambert": False},
    "lambert": {"ica": False, "whiten_only": False, "yeo_johnson": False, "lambert": True},
    "yj_lambert": {"ica": False, "whiten_only": False, "yeo_johnson": True, "lambert": True},
    "zca": {"ica": True, "whiten_only": True, "yeo_johnson": False, "lambert": False},
    "ica": {"ica": True, "whiten_only": False, "yeo_johnson": False, "lambert": False},
    "ica_yj": {"ica": True, "whiten_only": False, "yeo_johnson": True, "lambert": False},
    "ica_lambert": {"ica": True, "whiten_only": False, "yeo_johnson": False, "lambert": True},
    "ica_yj_lambert": {"ica": True, "whiten_only": False, "yeo_johnson": True, "lambert": True},
}


class GaussianizationLayers(nn.Module):
    """T(u) = standardise o Lambert o Yeo-Johnson o (whitening + ICA) on patch vectors (Eq. 8).

    ica: the whitening + FastICA stage; whiten_only: ZCA only (ablation "zca"; turns the stage
    on even with ica=False). forward(patches (n, d) or (b, n, d)) -> same shape and dtype; each
    batch element is Gaussianized on its own. `stages` lists the active sub-modules in order.
    """

    def __init__(
        self,
        ica: bool = True,
        whiten_only: bool = False,
        yeo_johnson: bool = True,
        lambert: bool = True,
        temperature: float = 1.0,
        ica_iterations: int = 10,
        ica_damping: float = 0.8,
        ica_tol: float = 1e-4,
        whiten_eps: float = 1e-3,
        lambert_tol: float | None = None,
        standardize_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.ica = (
            FastICALayer(whiten_only, ica_iterations, ica_damping, ica_tol, whiten_eps)
            if (ica or whiten_only)
            else None
        )
        self.yeo_johnson = YeoJohnsonLayer() if yeo_johnson else None
        self.lambert = LambertLayer(tol=lambert_tol) if lambert else None
        self.standardize = Standardize(temperature, standardize_eps)

    @classmethod
    def from_ablation(cls, name: str, **kwargs: object) -> GaussianizationLayers:
        """One row of Tables 2 / 9 by name (see ABLATIONS); kwargs set the other options."""
        if name not in ABLATIONS:
            raise ValueError(f"ablation {name!r} is not one of {sorted(ABLATIONS)}")
        return cls(**ABLATIONS[name], **kwargs)  # type: ignore[arg-type]

    @property
    def stages(self) -> list[nn.Module]:
        parts = [self.ica, self.yeo_johnson, self.lambert, self.standardize]
        return [p for p in parts if p is not None]

    def forward(self, patches: Tensor) -> Tensor:
        _as_batch(patches)
        out = patches
        for stage in self.stages:
            out = stage(out)
        return out


__all__: list[str] = [
    "ABLATIONS",
    "FastICALayer",
    "GaussianizationLayers",
    "LambertLayer",
    "Standardize",
    "YeoJohnsonLayer",
    "ZCAWhitening",
    "excess_kurtosis_unbiased",
    "fastica_rotation",
    "from_patches",
    "igmm",
    "inverse_sqrtm",
    "lambert_w0",
    "lambert_w_delta",
    "pearson_kurtosis",
    "solve_lambert_delta",
    "solve_yeo_johnson_lambda",
    "symmetric_decorrelation",
    "to_patches",
    "yeo_johnson",
    "yeo_johnson_lambda",
    "yeo_johnson_nll",
    "zca_whiten",
]
