"""Sample refinement (seed 000 Eq. 22): argmin_x ||A x - y||^2 - lambda log p(x | y).

Started from one posterior sample, minimised with Adam and projected onto x >= 0 after each
step, as the authors did (100 steps, lr 1e-4). The data term uses the ray transform inside
autograd through ODL's torch bridge; its gradient is the adjoint.
"""

from __future__ import annotations

import torch

from genrecon.models.cinn import ConditionalMultiscaleFlow


def refine(
    model: ConditionalMultiscaleFlow,
    forward_op: torch.nn.Module,
    start: torch.Tensor,
    observation: torch.Tensor,
    inversion: torch.Tensor,
    lam: float,
    steps: int,
    lr: float,
) -> torch.Tensor:
    """Refine a batch of images `start` (b, n, n) against observations (b, angles, det)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        residual = forward_op(x) - observation
        loss = residual.pow(2).flatten(1).sum(1)
        if lam > 0:
            loss = loss - lam * model.log_prob(x, inversion)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(min=0.0)
    return x.detach()
