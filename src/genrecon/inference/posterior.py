"""Conditional mean and pixel-wise standard deviation from posterior samples (seed 000 Eq. 7-8).

Samples are drawn in batches with a generator seeded per image (seed, image index), so the
numbers do not depend on batch sizes or on which images are evaluated together.
"""

from __future__ import annotations

import numpy as np
import torch

from genrecon.models.cinn import ConditionalMultiscaleFlow


def image_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


@torch.no_grad()
def draw_samples(
    model: ConditionalMultiscaleFlow,
    inversion: np.ndarray,
    num: int,
    batch: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """`num` samples x ~ p(x | y) for one measurement, drawn `batch` at a time -> (num, n, n)."""
    c = torch.from_numpy(inversion).to(next(model.parameters()).device)
    return torch.cat(
        [
            model.sample(c, min(batch, num - start), generator).cpu()
            for start in range(0, num, batch)
        ]
    )


def running_means(samples: torch.Tensor, counts: list[int]) -> dict[int, np.ndarray]:
    """Conditional means from the first k samples for each k in `counts` (one set of draws)."""
    cumulative = samples.double().cumsum(0)
    return {k: (cumulative[k - 1] / k).float().numpy() for k in counts if k <= len(samples)}


def mean_and_std(samples: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return samples.mean(0).numpy(), samples.std(0).numpy()
