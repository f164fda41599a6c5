"""The cINN is invertible, its log-determinant is right, its base densities are densities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from genrecon.models.base import NormalBase, RadialBase, make_base
from genrecon.models.cinn import build_model


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # fixed 1x1 convolutions keep their precomputed inverse
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("downsampling", ["haar", "irevnet"])
@pytest.mark.parametrize("size", [16, 14])  # 14 is padded to 16
def test_cinn_roundtrip(tiny_arch, size, downsampling):
    torch.manual_seed(0)
    model = _perturbed(build_model({**tiny_arch, "downsampling": downsampling}, size, "normal", 0))
    x, c = torch.rand(3, size, size), torch.rand(3, size, size)
    z, _ = model.encode(x, c)
    cond = model.cond_net(model.pad(c))
    back, _ = model.flow(z, c=cond, rev=True)
    torch.testing.assert_close(model.crop(back), x, atol=1e-5, rtol=1e-5)


def test_cinn_logdet_matches_autograd(tiny_arch):
    torch.manual_seed(0)
    model = _perturbed(build_model(tiny_arch, 8, "normal", 0)).double()
    x, c = torch.rand(1, 8, 8, dtype=torch.float64), torch.rand(1, 8, 8, dtype=torch.float64)
    cond = model.cond_net(model.pad(c))
    _, logdet = model.flow(model.pad(x), c=cond, jac=True)

    def f(flat):
        z, _ = model.flow(flat.reshape(1, 1, 8, 8), c=cond, jac=False)
        return z.reshape(-1)

    jacobian = torch.autograd.functional.jacobian(f, x.reshape(-1))
    _, expected = torch.linalg.slogdet(jacobian)
    assert logdet.item() == pytest.approx(expected.item(), abs=1e-6)


def test_model_is_rebuilt_identically(tiny_arch):
    """Checkpoints load into a fresh build: same parameter names, same fixed permutations."""
    a = build_model(tiny_arch, 16, "normal", 3).state_dict()
    b = build_model(tiny_arch, 16, "normal", 3).state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_sampling_is_seeded_and_shaped(tiny_arch):
    model = build_model(tiny_arch, 14, "radial", 0).eval()
    c = torch.rand(14, 14)
    a = model.sample(c, 5, torch.Generator().manual_seed(3))
    b = model.sample(c, 5, torch.Generator().manual_seed(3))
    assert a.shape == (5, 14, 14)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dim", [2, 3])
def test_radial_density_integrates_to_one(dim):
    base = RadialBase()
    # In radial coordinates: integral = int_0^inf p(r) * S_n r^(n-1) dr with p depending on r only.
    r = np.linspace(1e-6, 12, 200001)
    z = torch.zeros(len(r), dim, dtype=torch.float64)
    z[:, 0] = torch.from_numpy(r)
    log_p = base.log_prob(z).numpy()
    surface = 2 * math.pi ** (dim / 2) / math.gamma(dim / 2)
    total = np.trapezoid(np.exp(log_p) * surface * r ** (dim - 1), r)
    assert total == pytest.approx(1.0, abs=1e-4)


def test_radial_density_integrates_to_one_on_a_grid():
    edges = np.linspace(-8, 8, 801)
    grid = 0.5 * (edges[1:] + edges[:-1])  # cell centres: never exactly at the 1/r singularity
    xx, yy = np.meshgrid(grid, grid)
    z = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1))
    density = np.exp(RadialBase().log_prob(z).numpy())
    cell = (grid[1] - grid[0]) ** 2
    assert density.sum() * cell == pytest.approx(1.0, abs=2e-2)  # 1/r singularity at 0


def test_radial_radius_is_half_normal_and_direction_uniform():
    z = RadialBase().sample(20000, 50, torch.Generator().manual_seed(0)).double()
    radius = z.norm(dim=1).numpy()
    assert stats.kstest(radius, stats.halfnorm.cdf).pvalue > 1e-3
    direction = (z / z.norm(dim=1, keepdim=True)).mean(0)
    assert direction.abs().max() < 0.05


def test_normal_base_matches_torch():
    z = torch.randn(4, 7, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(NormalBase().log_prob(z), expected)


def test_unknown_base_is_named():
    with pytest.raises(ValueError, match="unknown base distribution 'laplace'"):
        make_base("laplace")
