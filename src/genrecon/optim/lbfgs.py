"""L-BFGS on a torch objective, through SciPy's L-BFGS-B (the optimiser of seed 003).

Why SciPy and not `torch.optim.LBFGS`: the authors of seed 003 minimise every latent objective
with `scipy.optimize.minimize(method="L-BFGS-B")` (dgminv/optimize/inversion_solver.py:
`maxcor` 30, `ftol` = `gtol` = 1e-12, `maxiter` 510, `maxfun` 15000); SciPy's implementation
(Byrd, Lu, Nocedal & Zhu; Morales & Nocedal's 2011 update) has the More-Thuente-type line search
with strong Wolfe conditions that torch's lacks by default, so the same iteration budget means the
same thing as theirs. The objective and its gradient come from torch (any device, float32 or
float64); SciPy sees float64 host vectors.

One problem per call: seed 003 solves each image and each random start on its own, so their
line searches and curvature pairs must not mix (a summed objective would couple them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize

#: the authors' L-BFGS-B options (inversion_solver.fit_lbfgs), except `maxiter`, a setting
AUTHORS_OPTIONS = {"maxcor": 30, "ftol": 1e-12, "gtol": 1e-12, "maxfun": 15000}


@dataclass
class LBFGSResult:
    """The minimiser, its objective value, and what the optimiser did."""

    x: torch.Tensor
    value: float
    iterations: int
    evaluations: int
    message: str


def minimize_lbfgs(
    objective: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    iterations: int,
    memory: int = AUTHORS_OPTIONS["maxcor"],
) -> LBFGSResult:
    """Minimise the scalar `objective(x)` over a tensor shaped like `x0` with L-BFGS-B.

    `iterations` is SciPy's `maxiter` (the authors: 510); `memory` its `maxcor`. A non-finite
    objective or gradient (e.g. a Gaussianisation layer meeting a degenerate input) is reported
    to SciPy as a large FINITE value with a zero gradient: SciPy's line search then interpolates
    back towards the last good point (an infinite value would end the run as "converged", a
    NaN would poison it). Such evaluations are counted in the result's message.
    """
    if iterations < 0:
        raise ValueError(f"L-BFGS: iterations must be >= 0, got {iterations}")
    shape, device, dtype = x0.shape, x0.device, x0.dtype
    evaluations, non_finite, best = 0, 0, float("inf")

    def value_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal evaluations, non_finite, best
        evaluations += 1
        x = torch.from_numpy(flat).to(device, dtype).reshape(shape).requires_grad_(True)
        with torch.enable_grad():
            value = objective(x)
            (grad,) = torch.autograd.grad(value, x)
        value_f = float(value.detach())
        grad_np = grad.detach().double().cpu().numpy().ravel()
        if not np.isfinite(value_f) or not np.all(np.isfinite(grad_np)):
            non_finite += 1
            penalty = 10.0 * abs(best) + 1e6 if np.isfinite(best) else 1e30
            return penalty, np.zeros_like(flat)
        best = min(best, value_f)
        return value_f, grad_np

    start = x0.detach().double().cpu().numpy().ravel()
    if iterations == 0:
        value, _ = value_and_grad(start)
        return LBFGSResult(x0.detach().clone(), value, 0, evaluations, "no iterations asked")
    options = {**AUTHORS_OPTIONS, "maxiter": int(iterations), "maxcor": int(memory)}
    result = minimize(value_and_grad, start, jac=True, method="L-BFGS-B", options=options)
    found = torch.from_numpy(result.x).to(device, dtype).reshape(shape)
    message = str(result.message)
    if non_finite:
        message += f" ({non_finite} non-finite evaluations backed off)"
    return LBFGSResult(found, float(result.fun), int(result.nit), evaluations, message)
