"""A tiny model and data set for `genrecon.training`, importable by a subprocess.

Run as a script (`python tests/training_helpers.py OUT STEPS WORKERS`) it trains the tiny model
and prints how many training steps this process ran, so a test can kill it and resume it.
Set GENRECON_TEST_STEP_SLEEP (seconds; `genrecon.training.fit` honours it, so the real `fit`
job of the pipeline does too) to slow the steps down enough to be killed mid-run.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from genrecon.training import fit

SPEC = {"dim": 6, "noise": 0.05}
CFG = {
    "steps": 15,
    "batch_size": 4,
    "lr": 1e-2,
    "weight_decay": 0.0,
    "clip": 1.0,
    "val_every": 5,
    "plateau_patience": 1,
    # a loose threshold, so that the LR drops within a few validations and a resume that lost
    # the scheduler's state (best, bad-epoch count) shows in the weights
    "plateau_threshold": 0.5,
}


class ConditionalGaussian(torch.nn.Module):
    """x | c ~ N(W c + b, diag(sigma^2)); `loss` is the NLL per dimension of each sample.

    Training noise is drawn from the loop's generator, as a flow's dequantisation noise is, so
    that a resume which lost the generator state gives other weights.
    """

    def __init__(self, dim: int, noise: float) -> None:
        super().__init__()
        self.mean = torch.nn.Linear(dim, dim)
        self.log_sigma = torch.nn.Parameter(torch.zeros(dim))
        self.noise = noise
        self.training_steps = 0

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None):
        x = batch["x"]
        if generator is not None:
            self.training_steps += 1
            x = x + self.noise * torch.randn(x.shape, generator=generator).to(x.device)
        z = (x - self.mean(batch["c"])) * torch.exp(-self.log_sigma)
        nll = 0.5 * z**2 + self.log_sigma + 0.5 * math.log(2 * math.pi)
        return nll.mean(dim=1)


def build_from_spec(spec: dict) -> ConditionalGaussian:
    return ConditionalGaussian(spec["dim"], spec["noise"])


class ArrayData:
    """In-memory pairs; counts the batches read in this process."""

    def __init__(self, x: np.ndarray, c: np.ndarray) -> None:
        self.x, self.c = x, c
        self.calls = 0

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"x": torch.from_numpy(self.x[indices]), "c": torch.from_numpy(self.c[indices])}


def make_data(n: int = 24, dim: int = SPEC["dim"], seed: int = 0) -> ArrayData:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, dim)).astype(np.float32)
    x = (0.5 * c + 0.3 + 0.1 * rng.normal(size=(n, dim))).astype(np.float32)
    return ArrayData(x, c)


def run(
    out: Path, steps: int, workers: int = 0, train_data: ArrayData | None = None, **cfg
) -> tuple[dict, int]:
    """Train the tiny model; returns the summary and the training steps run in this call."""
    models: list[ConditionalGaussian] = []

    def build() -> ConditionalGaussian:
        model = build_from_spec(SPEC)
        models.append(model)
        return model

    settings = {**CFG, **cfg, "steps": steps, "loader_workers": workers}
    train_data = make_data() if train_data is None else train_data
    summary = fit(build, SPEC, train_data, make_data(12, seed=1), settings, out, 0, name="tiny")
    return summary, models[0].training_steps


if __name__ == "__main__":
    _, trained = run(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    print(f"trained_steps={trained}", flush=True)
