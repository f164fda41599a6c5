"""Gaussianization layers (seed 003, Li 2023): gradients by the Taylor test, and properties.

The Taylor test is App. G Eq. 37: for f = <layer(x), w> with a fixed random w and a random unit
direction v, |f(x + h v) - f(x) - h <grad f(x), v>| must fall as h^2 (h = 1e-1 ... 1e-5) while
|f(x + h v) - f(x)| falls as h: a wrong gradient leaves an O(h) residual (slope ~1), which
`test_taylor_test_detects_a_missing_implicit_gradient` shows on purpose. All in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st
import torch
import torch.nn.functional as F
from scipy import special

from genrecon.models.gaussianization import (
    ABLATIONS,
    FastICALayer,
    GaussianizationLayers,
    LambertLayer,
    Standardize,
    YeoJohnsonLayer,
    ZCAWhitening,
    excess_kurtosis_unbiased,
    from_patches,
    igmm,
    inverse_sqrtm,
    lambert_w0,
    lambert_w_delta,
    pearson_kurtosis,
    symmetric_decorrelation,
    to_patches,
    yeo_johnson,
    yeo_johnson_lambda,
    zca_whiten,
)

D64 = torch.float64
STEPS = 10.0 ** -np.arange(1, 6)


def heavy_patches(n: int = 64, d: int = 8, seed: int = 0) -> torch.Tensor:
    """Student-t(3) entries mixed across dimensions: correlated and heavy-tailed."""
    rng = np.random.default_rng(seed)
    u = torch.from_numpy(rng.standard_t(3.0, size=(n, d)))
    mix = torch.eye(d, dtype=D64) + 0.3 * torch.from_numpy(rng.standard_normal((d, d)))
    return u @ mix + 0.5


def taylor_slopes(fn, x: torch.Tensor, seed: int = 1) -> tuple[float, float, np.ndarray]:
    """(first-order slope, second-order slope, second-order errors) of App. G Eq. 37."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y0 = fn(x)
    w = torch.randn(y0.shape, generator=g, dtype=D64)
    v = torch.randn(x.shape, generator=g, dtype=D64)
    v = v / v.norm()
    xr = x.clone().requires_grad_(True)
    f0 = (fn(xr) * w).sum()
    (grad,) = torch.autograd.grad(f0, xr)
    assert torch.isfinite(grad).all()
    slope = float((grad * v).sum())
    e1, e2 = [], []
    with torch.no_grad():
        for h in STEPS:
            fh = float((fn(x + h * v) * w).sum())
            e1.append(abs(fh - float(f0)))
            e2.append(abs(fh - float(f0) - h * slope))
    s1 = np.polyfit(np.log(STEPS), np.log(e1), 1)[0]
    s2 = np.polyfit(np.log(STEPS), np.log(e2), 1)[0]
    return float(s1), float(s2), np.array(e2)


LAYERS = {
    "zca": lambda: ZCAWhitening(),
    "ica": lambda: FastICALayer(),
    "ica_fixed_10_steps": lambda: FastICALayer(tol=0.0),
    "yeo_johnson": lambda: YeoJohnsonLayer(),
    "lambert": lambda: LambertLayer(),
    "standardize": lambda: Standardize(temperature=0.7),
    "composition_ica_yj_lambert": lambda: GaussianizationLayers(temperature=0.7),
    "composition_zca": lambda: GaussianizationLayers.from_ablation("zca"),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_taylor_second_order(name: str) -> None:
    layer = LAYERS[name]()
    x = heavy_patches()
    s1, s2, e2 = taylor_slopes(layer, x)
    assert 0.8 < s1 < 1.2, (name, s1)
    assert s2 > 1.8, (name, s2, e2)
    if name in ("lambert", "composition_ica_yj_lambert"):
        lam = layer if isinstance(layer, LambertLayer) else layer.lambert
        assert lam.last_tau[0] is not None  # the Lambert stage was active, not skipped


def test_taylor_batched_composition() -> None:
    x = torch.stack([heavy_patches(48, 6, seed=s) for s in (3, 4)])
    s1, s2, _ = taylor_slopes(GaussianizationLayers(), x)
    assert 0.8 < s1 < 1.2 and s2 > 1.8


def test_taylor_test_detects_a_missing_implicit_gradient() -> None:
    """Dropping d lambda/dx (YJ) or d tau/dy (Lambert) must fail the test: slope ~1, not 2."""
    x = heavy_patches()

    def yj_without_ift(p: torch.Tensor) -> torch.Tensor:
        return yeo_johnson(p, yeo_johnson_lambda(p).detach())

    def lambert_without_ift(p: torch.Tensor) -> torch.Tensor:
        mu, sigma, delta = (float(t) for t in igmm(p.detach()))
        return mu + sigma * lambert_w_delta((p - mu) / sigma, delta)

    for fn in (yj_without_ift, lambert_without_ift):
        s1, s2, _ = taylor_slopes(fn, x)
        assert 0.8 < s1 < 1.2
        assert s2 < 1.2, s2


# ------------------------------------------------------------------ whitening and ICA


def test_whitening_gives_identity_covariance() -> None:
    x = heavy_patches(200, 6)
    out = ZCAWhitening(eps=0.0)(x)
    assert torch.allclose(out.mean(0), torch.zeros(6, dtype=D64), atol=1e-12)
    assert torch.allclose(torch.cov(out.T), torch.eye(6, dtype=D64), atol=1e-10)
    # with the authors' eps = 1e-3 the covariance is C C_eps^-1, eigenvalues
    # lambda / ((1 - eps) lambda + eps): I up to O(eps)
    eps = 1e-3
    cov = torch.cov(ZCAWhitening(eps)(x).T)
    lam = torch.linalg.eigvalsh(torch.cov(x.T))
    expected = lam / ((1 - eps) * lam + eps)
    assert torch.allclose(torch.linalg.eigvalsh(cov), expected, rtol=1e-12)
    assert (cov - torch.eye(6, dtype=D64)).abs().max() < 5e-3


def test_inverse_sqrtm_matches_eigh_gradient_and_survives_repeated_eigenvalues() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g, dtype=D64)
    c = (a @ a.T + torch.eye(5, dtype=D64)).requires_grad_(True)
    w = torch.randn(5, 5, generator=g, dtype=D64)
    (ours,) = torch.autograd.grad((inverse_sqrtm(c) * w).sum(), c)
    lam, vec = torch.linalg.eigh(c)
    ref = (vec / lam.sqrt().unsqueeze(-2)) @ vec.T
    (theirs,) = torch.autograd.grad((ref * w).sum(), c)
    assert torch.allclose(0.5 * (ours + ours.T), 0.5 * (theirs + theirs.T), atol=1e-10)
    # exactly repeated eigenvalues: eigh's backward gives NaN, ours the analytic derivative
    # of C^-1/2 at C = 2 I, which is -(1/2) 2^-3/2 sym(w)
    c2 = (2.0 * torch.eye(4, dtype=D64)).requires_grad_(True)
    w2 = torch.randn(4, 4, generator=g, dtype=D64)
    (grad2,) = torch.autograd.grad((inverse_sqrtm(c2) * w2).sum(), c2)
    assert torch.allclose(grad2, -0.5 * 2**-1.5 * 0.5 * (w2 + w2.T), atol=1e-14)
    # n <= d: the blended covariance has the eigenvalue eps (d - n + 1) times
    x = heavy_patches(5, 8)
    s1, s2, _ = taylor_slopes(ZCAWhitening(), x)
    assert 0.8 < s1 < 1.2 and s2 > 1.8
    _, u = zca_whiten(x.unsqueeze(0))
    assert torch.isfinite(u).all()


def test_ica_output_is_white_and_rotation_orthogonal() -> None:
    x = heavy_patches(300, 8)
    layer = FastICALayer(eps=0.0)
    out = layer(x)
    w = layer.last_rotation[0]
    assert torch.allclose(w.T @ w, torch.eye(8, dtype=D64), atol=1e-10)
    assert torch.allclose(torch.cov(out.T), torch.eye(8, dtype=D64), atol=1e-8)
    assert not torch.allclose(w, torch.eye(8, dtype=D64), atol=1e-2)  # it did rotate


def test_symmetric_decorrelation_is_the_polar_factor() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(2, 6, 6, generator=g, dtype=D64)
    ours = symmetric_decorrelation(w)
    lam, vec = torch.linalg.eigh(w.transpose(-1, -2) @ w)
    polar = w @ (vec / lam.sqrt().unsqueeze(-2)) @ vec.transpose(-1, -2)
    assert torch.allclose(ours, polar, atol=1e-10)


def test_ica_unmixes_two_independent_sources() -> None:
    g = torch.Generator().manual_seed(0)
    n = 4000
    uniform = (torch.rand(n, generator=g, dtype=D64) - 0.5) * 12**0.5
    laplace = torch.distributions.Laplace(0.0, 2**-0.5).icdf(
        torch.rand(n, generator=g, dtype=D64).clamp(1e-9, 1 - 1e-9)
    )
    sources = torch.stack([uniform, laplace], dim=1)
    mixed = sources @ torch.tensor([[1.0, 0.6], [0.4, 1.0]], dtype=D64)
    out = FastICALayer()(mixed)
    corr = torch.corrcoef(torch.cat([out, sources], dim=1).T)[:2, 2:].abs()
    best = max(corr[0, 0] * corr[1, 1], corr[0, 1] * corr[1, 0])  # up to sign and permutation
    assert best > 0.99**2, corr
    mixed_corr = torch.corrcoef(torch.cat([mixed, sources], dim=1).T)[:2, 2:].abs()
    assert max(mixed_corr[0, 0] * mixed_corr[1, 1], mixed_corr[0, 1] * mixed_corr[1, 0]) < 0.9


def test_ica_batch_equals_each_element_alone() -> None:
    xs = [heavy_patches(40, 5, seed=s) for s in (5, 6)]
    layer = FastICALayer()
    batched = layer(torch.stack(xs))
    for i, x in enumerate(xs):
        assert torch.allclose(batched[i], layer(x), atol=1e-12)


# ------------------------------------------------------------------ Yeo-Johnson


def test_yeo_johnson_branches() -> None:
    x = torch.linspace(-3, 3, 61, dtype=D64)
    assert torch.allclose(yeo_johnson(x, 1.0), x, atol=1e-15)
    pos, neg = x >= 0, x < 0
    assert torch.allclose(yeo_johnson(x, 0.0)[pos], torch.log1p(x[pos]))
    assert torch.allclose(yeo_johnson(x, 2.0)[neg], -torch.log1p(-x[neg]))
    ref = st.yeojohnson(x.numpy(), lmbda=0.37)
    assert np.allclose(yeo_johnson(x, 0.37).numpy(), ref, atol=1e-13)
    # smooth through lambda = 0 and 2: values and lambda-derivatives continuous
    for at in (0.0, 2.0):
        lam = torch.tensor(at, dtype=D64, requires_grad=True)
        (d0,) = torch.autograd.grad(yeo_johnson(x, lam).sum(), lam)
        near = (yeo_johnson(x, at + 1e-6) - yeo_johnson(x, at - 1e-6)).sum() / 2e-6
        assert torch.isfinite(d0) and abs(float(d0) - float(near)) < 1e-6 * (1 + abs(float(d0)))


def test_yeo_johnson_lambda_is_scipy_mle_and_reduces_skewness() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.exp(0.6 * torch.randn(40, 10, generator=g, dtype=D64)) - 1.0  # right-skewed
    layer = YeoJohnsonLayer()
    out = layer(x)
    _, scipy_lambda = st.yeojohnson(x.numpy().ravel())
    assert abs(layer.last_lambda[0] - scipy_lambda) < 1e-6
    assert layer.last_lambda[0] < 1.0
    assert abs(st.skew(out.numpy().ravel())) < 0.2 * abs(st.skew(x.numpy().ravel()))


def test_yeo_johnson_implicit_gradient_matches_finite_differences_of_brent() -> None:
    x = heavy_patches(20, 4)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(yeo_johnson_lambda(xr), xr)
    g = torch.Generator().manual_seed(3)
    h = 1e-5
    for _ in range(3):
        v = torch.randn(x.shape, generator=g, dtype=D64)
        fd = (float(yeo_johnson_lambda(x + h * v)) - float(yeo_johnson_lambda(x - h * v))) / (2 * h)
        assert abs(fd - float((grad * v).sum())) < 1e-6 * max(1.0, abs(fd)), fd
    i = (3, 1)
    e = torch.zeros_like(x)
    e[i] = 1.0
    fd = (float(yeo_johnson_lambda(x + h * e)) - float(yeo_johnson_lambda(x - h * e))) / (2 * h)
    assert abs(fd - float(grad[i])) < 1e-6 * max(1.0, abs(fd))


# ------------------------------------------------------------------ Lambert


def test_lambert_w_matches_scipy_and_inverts_goerg_transform() -> None:
    u = torch.cat([torch.zeros(1, dtype=D64), torch.logspace(-12, 4, 200, dtype=D64)])
    ref = np.real(special.lambertw(u.numpy()))
    assert np.allclose(lambert_w0(u).numpy(), ref, rtol=1e-14, atol=1e-300)
    z = torch.linspace(-4, 4, 81, dtype=D64)
    for delta in (0.0, 0.05, 0.4):
        heavy = z * torch.exp(0.5 * delta * z * z)  # Goerg's forward H_delta
        assert torch.allclose(lambert_w_delta(heavy, delta), z, atol=1e-12)


def test_lambert_reduces_kurtosis_to_three_and_skips_light_tails() -> None:
    x = heavy_patches(100, 8)
    assert float(pearson_kurtosis(x)) > 4.0
    layer = LambertLayer()
    out = layer(x)
    assert abs(float(excess_kurtosis_unbiased(out))) < 1e-8  # the IGMM fixed point
    assert abs(float(pearson_kurtosis(out)) - 3.0) < 0.1
    mu, sigma, delta = layer.last_tau[0]
    assert delta > 0.05 and sigma > 0
    g = torch.Generator().manual_seed(1)
    light = torch.rand(100, 8, generator=g, dtype=D64)  # uniform: kurtosis 1.8
    assert float(pearson_kurtosis(light)) <= 3.0
    assert torch.equal(layer(light), light) and layer.last_tau == [None]
    # Gaussian quantiles: Gaussian-shaped, sample kurtosis just below 3 -> identity as well
    gauss = torch.from_numpy(st.norm.ppf((np.arange(800) + 0.5) / 800)).reshape(100, 8)
    assert 2.8 < float(pearson_kurtosis(gauss)) <= 3.0
    assert torch.equal(layer(gauss), gauss) and layer.last_tau == [None]


# ------------------------------------------------------------------ standardisation, patches


def test_standardize_mean_zero_std_temperature() -> None:
    x = heavy_patches(30, 5) * 3.0 + 2.0
    out = Standardize(temperature=0.7)(x)
    assert abs(float(out.mean())) < 1e-12
    assert abs(float(out.std()) - 0.7) < 1e-6
    exact = Standardize(temperature=0.7, eps=0.0)(x)
    assert abs(float(exact.std()) - 0.7) < 1e-12


def test_patches_round_trip_and_follow_unfold_order() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 8, 12, generator=g, dtype=D64)
    p = to_patches(z, 4)
    assert p.shape == (2, 6, 48)
    assert torch.equal(p, F.unfold(z, 4, stride=4).transpose(1, 2))  # the authors' order
    assert torch.equal(from_patches(p, z.shape, 4), z)
    assert torch.equal(from_patches(to_patches(z[0], 4), z.shape[1:], 4), z[0])
    with pytest.raises(ValueError, match="size"):
        to_patches(z, 5)
    with pytest.raises(ValueError, match="shape"):
        from_patches(p, (2, 3, 8, 8), 4)


# ------------------------------------------------------------------ composition


def test_ablations_build_the_right_stages() -> None:
    names = {
        "none": [],
        "zca": ["FastICALayer"],
        "ica_yj_lambert": ["FastICALayer", "YeoJohnsonLayer", "LambertLayer"],
        "yj_lambert": ["YeoJohnsonLayer", "LambertLayer"],
    }
    for name, stages in names.items():
        layers = GaussianizationLayers.from_ablation(name)
        assert [type(s).__name__ for s in layers.stages] == [*stages, "Standardize"]
    assert GaussianizationLayers.from_ablation("zca").ica.whiten_only
    assert set(ABLATIONS) >= {"none", "yj", "lambert", "zca", "ica", "ica_yj", "ica_lambert"}
    with pytest.raises(ValueError, match="ablation"):
        GaussianizationLayers.from_ablation("pca")


def test_composition_batch_dtype_and_errors() -> None:
    xs = torch.stack([heavy_patches(48, 6, seed=s) for s in (7, 8)])
    layers = GaussianizationLayers(temperature=0.7)
    batched = layers(xs)
    for i in range(2):
        assert torch.allclose(batched[i], layers(xs[i]), atol=1e-10)
        assert abs(float(batched[i].std()) - 0.7) < 1e-5
    out32 = layers(xs[0].float())
    assert out32.dtype == torch.float32 and out32.shape == (48, 6)
    assert torch.allclose(out32.double(), batched[0], atol=1e-3)
    with pytest.raises(ValueError, match="patches"):
        layers(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="non-finite"):
        layers(torch.full((10, 3), float("nan")))
