"""Shared fixtures: small files in the real formats, written fresh for each test."""

from __future__ import annotations

import os
from pathlib import Path

import FrEIA.modules as Fm
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")
EVIDENCE = pytest.StashKey[list[str]]()


@pytest.fixture
def evidence(request) -> list[str]:
    """Lines a test adds once it has passed its checks, printed at the end of the session: the CI
    log then shows what the integration tests did (jobs submitted, resources seen), not a dot."""
    return request.config.stash.setdefault(EVIDENCE, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    lines = config.stash.get(EVIDENCE, [])
    if lines:
        terminalreporter.section("integration evidence (tests that passed)")
        for line in lines:
            terminalreporter.write_line(line)


def tiny_lodopab() -> dict:
    """A LoDoPaB-format synthetic dataset small enough to prepare in a second."""
    return {
        "source": "synthetic",
        "image_size": 16,
        "num_angles": 12,
        "upsample": 2,
        "photons": 4096,
        "slices_per_file": 4,
        "splits": {"train": 6, "validation": 3, "test": 2},
        "fbp": {"filter": "Hann", "frequency_scaling": 0.641025641},
        "conditioning_fbp": {"filter": "Hann", "frequency_scaling": 1.0},
    }


@pytest.fixture
def tiny_lodopab_cfg() -> dict:
    return tiny_lodopab()


@pytest.fixture
def tiny_arch() -> dict:
    """Every piece of the cINN at a size where a float64 Jacobian is cheap (8x8 images):
    learned downsampling, unconditioned couplings + ActNorm, a split, conditioned 1x1 and 3x3
    sections, the dense section."""
    return {
        "levels": 2,
        "cond_levels": 2,
        "blocks_per_level": 2,
        "uncond_blocks": 1,
        "cond_channels": [2, 4, 4],
        "cond_features": 4,
        "dense_dim": 16,
        "dense_cond": 4,
        "dense_blocks": 2,
    }


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def flow_in_float64(model):
    """model.double(), with the fixed 1x1 convolutions' inverse and log|det| redone in float64.

    Fm.Fixed1x1Conv computes M^-1 and log|det M| once, in float32, when the model is built; cast
    to float64 they are off by ~1e-7 per pixel, which over a whole flow exceeds what a float64
    log-determinant check should tolerate (this once made the check fail by 1.4e-6).
    """
    model = model.double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Fm.Fixed1x1Conv):
                stored = module.M[:, :, 0, 0]
                module.M_inv.copy_(stored.inverse()[:, :, None, None])
                module.logDetM.copy_(torch.linalg.slogdet(stored)[1])
    return model


def assert_logdet_matches_autograd(model, x: torch.Tensor, cond: list[torch.Tensor]) -> None:
    """The flow's log|det dz/dx| at one padded image x (1, 1, S, S) equals log|det| of the full
    Jacobian from autograd (float64 models: `flow_in_float64`).

    Row i of the Jacobian is the gradient of z_i: one backward pass through a batch of D copies
    of x (copy i gives row i; the flows treat images independently), faster than a vmap over
    rows. The flow must not be volume-preserving (perturb it first), or the check could not fail.
    """
    _, logdet = model.flow(x, c=cond, jac=True)
    dim = x.numel()
    copies = x.repeat(dim, 1, 1, 1).requires_grad_(True)
    z, _ = model.flow(copies, c=[c.expand(dim, *c.shape[1:]) for c in cond], jac=False)
    (rows,) = torch.autograd.grad(z.reshape(dim, -1).diagonal().sum(), copies)
    _, expected = torch.linalg.slogdet(rows.reshape(dim, dim))
    assert abs(expected.item()) > 1e-2
    assert logdet.item() == pytest.approx(expected.item(), abs=1e-8)
