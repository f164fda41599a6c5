"""Real properties of the forward operators: adjointness, FBP quality, the LoDoPaB simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

from genrecon.metrics import psnr
from genrecon.physics.cs import GaussianCS, gradient_matrix
from genrecon.physics.ct import (
    CTGeometry,
    apply,
    fbp_operator,
    ray_transform,
    simulate_lowdose,
    torch_ray_transform,
)


def test_detector_follows_lodopab_rule():
    assert CTGeometry(362, 1000).detector_pixels == 513
    assert CTGeometry(64, 60).detector_pixels % 2 == 1


def test_ray_transform_is_adjoint(rng):
    op = ray_transform(CTGeometry(32, 30))
    x = rng.random((32, 32)).astype(np.float32)
    y = rng.random(op.range.shape).astype(np.float32)
    lhs = float(np.sum(apply(op, x) * y) * op.range.cell_volume)
    rhs = float(np.sum(x * apply(op.adjoint, y)) * op.domain.cell_volume)
    assert lhs == pytest.approx(rhs, rel=2e-2)


def test_torch_ray_transform_gradient_is_adjoint(rng):
    geometry = CTGeometry(16, 10)
    module = torch_ray_transform(geometry)
    op = ray_transform(geometry)
    x = torch.tensor(rng.random((1, 16, 16)), dtype=torch.float32, requires_grad=True)
    w = rng.random((1, *op.range.shape)).astype(np.float32)
    (module(x) * torch.from_numpy(w)).sum().backward()
    # autograd gives the Euclidean transpose; ODL's adjoint is w.r.t. cell-volume-weighted products
    expected = apply(op.adjoint, w[0]) * op.domain.cell_volume / op.range.cell_volume
    np.testing.assert_allclose(x.grad[0].numpy(), expected, rtol=1e-3, atol=1e-3 * expected.max())


def test_fbp_reconstructs_shepp_logan():
    geometry = CTGeometry(64, 90)
    phantom = resize(shepp_logan_phantom(), (64, 64), anti_aliasing=True).astype(np.float32)
    sinogram = apply(ray_transform(geometry), phantom)
    reco = apply(fbp_operator(geometry, "Hann", 1.0), sinogram)
    assert psnr(reco, phantom) > 20.0
    assert psnr(reco, phantom) > psnr(np.zeros_like(phantom), phantom) + 10


def test_lowdose_simulation_is_unbiased_at_high_dose(rng):
    geometry = CTGeometry(16, 12)
    image = np.full((16, 16), 0.2, dtype=np.float32)
    clean = apply(ray_transform(geometry, 2), np.full((32, 32), 0.2, dtype=np.float32))
    noisy = simulate_lowdose(image, geometry, 1e9, rng, upsample=2)
    np.testing.assert_allclose(noisy, clean, atol=2e-4)
    lowdose = simulate_lowdose(image, geometry, 4096, rng, upsample=2)
    assert 0 < np.std(lowdose - clean) < 0.01


def test_cs_pseudo_inverse_and_tikhonov(rng):
    cs = GaussianCS.create(m=20, image_size=6, seed=0)
    assert cs.matrix.std() == pytest.approx(1 / np.sqrt(20), rel=0.15)
    pinv = cs.inversion("pinv")
    np.testing.assert_allclose(cs.matrix @ pinv @ cs.matrix, cs.matrix, atol=1e-10)
    y = rng.normal(size=(2, 20))
    x = y @ cs.inversion("tikhonov", 0.02).T
    grad = gradient_matrix(6)
    normal = cs.matrix.T @ cs.matrix + 0.02 * grad.T @ grad
    np.testing.assert_allclose(x @ normal.T, y @ cs.matrix, atol=1e-9)


def test_cs_relative_noise_level(rng):
    cs = GaussianCS.create(m=30, image_size=5, seed=1)
    images = rng.random((4, 5, 5))
    y = cs.measure(images, 0.1, rng)
    clean = cs.forward(images)
    ratio = np.linalg.norm(y - clean, axis=1) / np.linalg.norm(clean, axis=1)
    np.testing.assert_allclose(ratio, 0.1, rtol=1e-10)


def test_unknown_inversion_is_named():
    with pytest.raises(ValueError, match="unknown CS inversion 'tv'"):
        GaussianCS.create(4, 2, 0).inversion("tv")
