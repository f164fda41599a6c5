"""The seed-003 Glow (models/glow.py): invertibility, log-determinant, priors, P1 map, size, loss.

The authors' Glow is dgminv/networks/models_cond_glow.py (rosinality's layout, affine=False,
conv_lu=True, cond=False) trained by tasks/glow/training/train.py; the tests below check our
FrEIA build against facts read there (shapes, parameter count, init, objective), each worked
out here independently of the model code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from FrEIA.modules import IRevNetDownsampling

from genrecon.models.glow import (
    ActNorm,
    GlowModel,
    InvertibleConv1x1,
    Squeeze,
    latent_to_levels,
    levels_to_latent,
    quantize,
    resolve_spec,
)
from genrecon.training import fit, load_model

TINY = {"channels": 3, "image_size": 8, "levels": 2, "steps": 2, "hidden": 8}
GREY = {"channels": 1, "image_size": 8, "levels": 2, "steps": 2, "hidden": 8}
PAPER = {"channels": 3, "image_size": 128, "levels": 4, "steps": 32, "hidden": 512}
SMOKE = {"channels": 1, "image_size": 32, "levels": 3, "steps": 8, "hidden": 64}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: two threads on a shared 2-core machine only wait on each other
    (seen: 2.6 s -> 24 s for the Adam test under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(spec: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> GlowModel:
    torch.manual_seed(seed)
    return GlowModel(spec).to(dtype)


@torch.no_grad()
def initialised_and_randomised(model: GlowModel, seed: int = 1, noise: float = 0.05):
    """ActNorm initialised on a batch, then every parameter perturbed: the zero-initialised
    couplings and priors would otherwise be the identity and test nothing."""
    generator = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.rand((16, model.channels, model.image_size, model.image_size), generator=generator)
    model.train()
    model.encode(x.to(dtype))
    for parameter in model.parameters():
        parameter.add_(noise * torch.randn(parameter.shape, generator=generator).to(dtype))
    return model.eval()


def flat(eps: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([e.flatten(1) for e in eps], dim=1)


# ---- spec ------------------------------------------------------------------------------------


def test_spec_defaults_are_the_paper_and_errors_name_the_key():
    cfg = resolve_spec({"channels": 3, "image_size": 128, "kind": "glow"})
    assert cfg["levels"] == 4 and cfg["steps"] == 32 and cfg["hidden"] == 512
    assert cfg["coupling"] == "additive" and cfg["lu"] is True and cfg["n_bits"] == 5
    bad = [
        ({**TINY, "width": 3}, "width"),
        ({"image_size": 8}, "channels"),
        ({**TINY, "coupling": "spline"}, "coupling"),
        ({**TINY, "image_size": 10}, "image_size"),
        ({**TINY, "n_bits": 9}, "n_bits"),
        ({**TINY, "lu": 1}, "lu"),
        ({**TINY, "steps": 0}, "steps"),
    ]
    for spec, key in bad:
        with pytest.raises(ValueError, match=key):
            resolve_spec(spec)


# ---- squeeze ----------------------------------------------------------------------------------


def test_squeeze_is_freia_order_and_the_authors_order():
    x = torch.randn(2, 3, 8, 6)
    ours = Squeeze([(3, 8, 6)])
    assert list(ours.parameters()) == []  # FrEIA's 0/1 kernel would be a Parameter
    (out,), _ = ours([x])
    (freia,), _ = IRevNetDownsampling([(3, 8, 6)])([x])
    assert torch.equal(out, freia)
    # models_cond_glow.py Block.forward: view (b, C, H/2, 2, W/2, 2), permute to (C, dy, dx):
    # output channel 4c + 2dy + dx holds pixel (2i + dy, 2j + dx) of channel c
    for c, dy, dx in [(0, 0, 0), (0, 1, 0), (1, 0, 1), (2, 1, 1)]:
        assert torch.equal(out[:, 4 * c + 2 * dy + dx], x[:, c, dy::2, dx::2])
    (back,), _ = ours([out], rev=True)
    assert torch.equal(back, x)


# ---- invertibility ----------------------------------------------------------------------------


@pytest.mark.parametrize("coupling", ["additive", "affine"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_decode_encode_round_trips(coupling, dtype, tol):
    model = initialised_and_randomised(make({**TINY, "coupling": coupling}, dtype=dtype))
    generator = torch.Generator().manual_seed(5)
    x = torch.rand((4, 3, 8, 8), generator=generator, dtype=dtype)
    with torch.no_grad():
        eps = model.encode(x)
        assert [tuple(e.shape[1:]) for e in eps] == model.latent_shapes == [(6, 4, 4), (24, 2, 2)]
        assert (model.decode(eps) - x).abs().max() < tol
        z = [torch.randn((4, *s), generator=generator, dtype=dtype) for s in model.latent_shapes]
        assert (flat(model.encode(model.decode(z))) - flat(z)).abs().max() < tol


def test_decode_is_differentiable_and_checks_shapes():
    model = initialised_and_randomised(make(GREY))
    eps = [torch.randn(2, *s, requires_grad=True) for s in model.latent_shapes]
    model.decode(eps).square().sum().backward()
    assert all(e.grad is not None and e.grad.abs().sum() > 0 for e in eps)
    with pytest.raises(ValueError, match="eps"):
        model.decode(eps[:1])
    with pytest.raises(ValueError, match="x"):
        model.encode(torch.rand(2, 3, 8, 8))


# ---- log-determinant and density ---------------------------------------------------------------


@pytest.mark.parametrize("coupling", ["additive", "affine"])
@pytest.mark.parametrize("split_prior", [True, False])
def test_logdet_equals_autograd_jacobian(coupling, split_prior):
    spec = {**GREY, "coupling": coupling, "split_prior": split_prior}
    model = initialised_and_randomised(make(spec, dtype=torch.float64), noise=0.1)
    x = torch.rand((1, 1, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def to_eps(v: torch.Tensor) -> torch.Tensor:
        return flat(model.encode(v.reshape(1, 1, 8, 8)))[0]

    jacobian = torch.autograd.functional.jacobian(to_eps, x.flatten())
    sign, expected = torch.linalg.slogdet(jacobian)
    assert sign != 0
    eps, logdet = model.encode_with_logdet(x)
    assert abs(logdet.item() - expected.item()) < 1e-8
    # the learned priors contribute: their -sum(log_sd) is not zero after randomising
    assert abs(expected.item()) > 1.0
    # log_prob = log N(eps; 0, I) + log |det J|, in nats
    e = flat(eps)
    normal = -0.5 * e.square().sum() - 0.5 * e.numel() * math.log(2 * math.pi)
    assert abs(model.log_prob(x).item() - (normal + expected).item()) < 1e-8


def test_log_prob_integrates_to_one():
    """Importance sampling with a Gaussian fitted to the model's samples: E_q[p/q] = 1.

    Mildly non-linear (noise 0.03 on the zero-initialised convolutions): the strongly non-linear
    model's weights are too heavy-tailed for a Gaussian proposal. A wrong constant (e.g. a
    missing log 2 pi / 2 per dimension) or log-determinant sign is off by orders of magnitude.
    """
    spec = {"channels": 1, "image_size": 4, "levels": 2, "steps": 2, "hidden": 4}
    model = initialised_and_randomised(make(spec, dtype=torch.float64), noise=0.03)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        samples = model.sample(4000, 1.0, generator).flatten(1)
        mean, cov = samples.mean(0), torch.cov(samples.T) * 1.5**2
        proposal = torch.distributions.MultivariateNormal(mean, cov)
        torch.manual_seed(4)
        draws = proposal.sample((100_000,))
        log_p = model.log_prob(draws.reshape(-1, 1, 4, 4))
        weights = torch.exp(log_p - proposal.log_prob(draws))
    estimate, error = weights.mean().item(), (weights.std() / math.sqrt(len(weights))).item()
    assert error < 0.02
    assert abs(estimate - 1.0) < 0.05


# ---- 1x1 convolution -------------------------------------------------------------------------


@pytest.mark.parametrize("lu", [True, False])
def test_invertible_1x1_against_linalg(lu):
    torch.manual_seed(0)
    conv = InvertibleConv1x1([(6, 5, 4)], lu=lu).double()
    eye = torch.eye(6, dtype=torch.float64)  # orthogonal at init (theirs: QR of a Gaussian)
    assert torch.allclose(conv.matrix() @ conv.matrix().T, eye, atol=1e-6)
    with torch.no_grad():
        for parameter in conv.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    weight = conv.matrix().detach()
    x = torch.randn(3, 6, 5, 4, dtype=torch.float64)
    (y,), logdet = conv([x])
    assert torch.allclose(y, torch.einsum("ij,bjhw->bihw", weight, x), atol=1e-12)
    expected = 5 * 4 * torch.linalg.slogdet(weight).logabsdet
    assert logdet.shape == (3,) and torch.allclose(logdet, expected.expand(3), atol=1e-10)
    (back,), logdet_rev = conv([y], rev=True)
    solved = torch.linalg.solve(weight, y.permute(1, 0, 2, 3).reshape(6, -1))
    assert torch.allclose(back, solved.reshape(6, 3, 5, 4).permute(1, 0, 2, 3), atol=1e-12)
    assert torch.allclose(back, x, atol=1e-12)
    assert torch.allclose(logdet_rev, -logdet)


# ---- initialisation ----------------------------------------------------------------------------


def test_untrained_model_standardises_its_init_batch():
    """Zero-initialised couplings and priors: after ActNorm's init on a batch of independent
    pixels every level's eps has zero mean and about unit variance per channel. The last level
    keeps all its channels, and its orthogonal 1x1 convolutions keep the sum of variances that
    its last ActNorm set to 1 each: there the mean variance is 1 to rounding."""
    model = make(GREY)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((128, 1, 8, 8), generator=generator) ** 2  # skewed, mean 1/3
    assert model.training
    with torch.no_grad():
        eps = model.encode(x)
    for e in eps:
        per_channel = e.transpose(0, 1).flatten(1)
        assert per_channel.mean(1).abs().max() < 1e-5
        assert (per_channel.var(1) - 1.0).abs().max() < 0.1
    assert abs(eps[-1].transpose(0, 1).flatten(1).var(1).mean().item() - 1.0) < 1e-4
    # no second init: other data now gives other statistics, and the parameters stay
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.encode(0.5 * x)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_loaded_model_never_reinitialises():
    trained = initialised_and_randomised(make(GREY))
    fresh = make(GREY, seed=7)
    fresh.load_state_dict(trained.state_dict())
    fresh.train()
    actnorms = [m for m in fresh.modules() if isinstance(m, ActNorm)]
    assert actnorms and all(int(m.initialized) == 1 for m in actnorms)
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(flat(fresh.encode(x)), flat(trained.encode(x)))
    # and a decode never initialises a fresh model
    other = make(GREY, seed=8)
    with torch.no_grad():
        other.decode([torch.randn(2, *s) for s in other.latent_shapes])
    assert all(int(m.initialized) == 0 for m in other.modules() if isinstance(m, ActNorm))


# ---- P1 map ---------------------------------------------------------------------------------


def authors_z_shapes(n_channel: int, input_size: int, n_block: int) -> list[tuple[int, int, int]]:
    """tasks/glow/training/train.py calc_z_shapes, restated."""
    shapes = []
    for _ in range(n_block - 1):
        input_size //= 2
        n_channel *= 2
        shapes.append((n_channel, input_size, input_size))
    input_size //= 2
    shapes.append((n_channel * 4, input_size, input_size))
    return shapes


def test_p1_latent_map_at_paper_scale():
    expected = [(6, 64, 64), (12, 32, 32), (24, 16, 16), (96, 8, 8)]
    assert authors_z_shapes(3, 128, 4) == expected
    z = torch.randn(2, 3, 128, 128)
    levels = latent_to_levels(z, 4)
    assert [tuple(e.shape[1:]) for e in levels] == expected
    assert torch.equal(levels_to_latent(levels), z)
    # GlowInv.squeeze: level 0 keeps the SECOND half of the squeezed channels (6..11 of 12):
    # eps0[:, k] = z[:, c, dy::2, dx::2] with 6 + k = 4c + 2dy + dx
    for k in range(6):
        c, rest = divmod(6 + k, 4)
        dy, dx = divmod(rest, 2)
        assert torch.equal(levels[0][:, k], z[:, c, dy::2, dx::2])
    # and the first half goes on: the last level is the first quarter... squeezed 4 times;
    # pixel (0, 0) of channel 0 of z is level 3's channel 0 at (0, 0)
    assert torch.equal(levels[3][:, 0, 0, 0], z[:, 0, 0, 0])
    model = make(TINY)
    small = torch.randn(2, 3, 8, 8)
    assert torch.equal(model.squeeze_latent(model.unsqueeze_latent(small)), small)


# ---- parameter count -------------------------------------------------------------------------


def authors_parameter_count(
    channels: int, levels: int, steps: int, hidden: int, affine: bool = False, lu: bool = True
) -> int:
    """Parameters of models_cond_glow.Glow(channels, steps, levels, affine, conv_lu, cond=False).

    Per Flow at C = 4 x (the Block's in_channel) channels:
      ActNorm: loc + scale, 2C;
      InvConv2dLU: w_l and w_u stored as full C x C matrices, w_s C: 2C^2 + C (InvConv2d: C^2);
      AffineCouplingCHV(sp_dim=1, cond=False): Conv2d(C/2 -> h, 3x3) 9 h C/2 + h,
        Conv2d(h -> h, 1x1) h^2 + h, ZeroConv2d(h -> o): conv 9 h o + o, scale o, with
        o = C/2 (additive) or C (affine).
    Per Block: the split prior ZeroConv2d(2 c -> 4 c) = (C/2 -> C): 9 C/2 C + C + C, or on the
    last block the top prior ZeroConv2d(4 c -> 8 c) = (C -> 2C): 9 C 2C + 2C + 2C.
    """
    total, c = 0, channels
    for level in range(levels):
        big = 4 * c
        out = big if affine else big // 2
        actnorm = 2 * big
        conv1x1 = 2 * big * big + big if lu else big * big
        subnet = (9 * hidden * big // 2 + hidden) + (hidden * hidden + hidden)
        subnet += 9 * hidden * out + out + out
        total += steps * (actnorm + conv1x1 + subnet)
        if level < levels - 1:
            total += 9 * (big // 2) * big + big + big
            c *= 2
        else:
            total += 9 * big * 2 * big + 2 * big + 2 * big
    return total


@pytest.mark.parametrize(
    "spec",
    [
        PAPER,
        SMOKE,
        {**TINY, "coupling": "affine"},
        {**TINY, "lu": False},
    ],
    ids=["paper", "smoke", "affine", "plain-1x1"],
)
def test_parameter_count_is_the_authors(spec):
    cfg = resolve_spec(spec)
    expected = authors_parameter_count(
        cfg["channels"],
        cfg["levels"],
        cfg["steps"],
        cfg["hidden"],
        affine=cfg["coupling"] == "affine",
        lu=cfg["lu"],
    )
    with torch.device("meta"):  # no memory, no init of 61M numbers (1-2 s, mostly imports)
        model = GlowModel(spec)
    assert sum(p.numel() for p in model.parameters()) == expected
    if spec is PAPER:
        assert expected == 61_214_032
    if spec is SMOKE:
        assert expected == 241_728


# ---- loss ------------------------------------------------------------------------------------


def test_quantisation_is_the_authors_5_bit_grid():
    grey = torch.arange(256, dtype=torch.float64)
    x = (grey / 255).float()
    expected = torch.div(grey, 8, rounding_mode="floor") / 32  # floor(x * 255 / 2^3) / 2^5
    assert torch.equal(quantize(x, 5).double(), expected)
    assert torch.equal(quantize(x, 8).double(), grey / 256)


def test_untrained_bits_per_dim_on_uniform_noise_is_analytic():
    """Dequantised 5-bit uniform images are U[0, 1)^D. The untrained Glow after ActNorm init on
    that batch is a Gaussian with the batch's per-channel variance 1/12: the expected NLL is
    1/2 log(2 pi e / 12) nats, so 5 + 1/2 log2(2 pi e / 12) = 5.2546 bits per dimension."""
    model = make(GREY)
    x = torch.rand((256, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model.loss({"x": x}, torch.Generator().manual_seed(2))
    assert loss.shape == (256,)
    bits = loss.mean().item() / math.log(2)
    assert abs(bits - (5 + 0.5 * math.log2(2 * math.pi * math.e / 12))) < 0.01


def test_loss_noise_comes_from_the_generator_and_validation_is_deterministic():
    model = initialised_and_randomised(make(GREY))
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        a = model.loss({"x": x}, torch.Generator().manual_seed(3))
        b = model.loss({"x": x}, torch.Generator().manual_seed(3))
        c = model.loss({"x": x}, torch.Generator().manual_seed(4))
        v1, v2 = model.loss({"x": x}, None), model.loss({"x": x}, None)
        mid = -model.log_prob(quantize(x, 5) + 1 / 64) / 64 + math.log(32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(v1, v2) and torch.allclose(v1, mid)


def structured_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth random ramps plus a little noise: easy to learn, unlike uniform noise."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(0, 1, size)
    a, b = torch.rand((2, n, 1, 1, 1), generator=generator)
    ramp = 0.5 * a * grid[None, None, :, None] + 0.5 * b * grid[None, None, None, :]
    return (ramp + 0.05 * torch.rand((n, 1, size, size), generator=generator)).clamp(0, 1)


def test_a_few_adam_steps_reduce_the_loss():
    model = make(GREY)
    batch = {"x": structured_images(32)}
    generator = torch.Generator().manual_seed(0)
    model.loss(batch, generator)  # ActNorm init
    with torch.no_grad():
        before = model.loss(batch, None).mean().item()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(25):
        loss = model.loss(batch, generator).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model.loss(batch, None).mean().item()
    assert after < before - 0.1, (before, after)


def test_sample_shapes_temperature_and_generator():
    model = initialised_and_randomised(make(GREY))
    a = model.sample(3, 0.7, torch.Generator().manual_seed(1))
    b = model.sample(3, 0.7, torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b)
    zero = model.sample(1, 0.0, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(zero, model.decode([torch.zeros(1, *s) for s in model.latent_shapes]))


# ---- the training loop -------------------------------------------------------------------------


class ImageData:
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return {"x": self.x[torch.as_tensor(indices)]}


def test_trains_with_genrecons_loop_and_reloads_without_reinit(tmp_path):
    cfg = {
        "steps": 4,
        "batch_size": 8,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "clip": 10.0,
        "val_every": 2,
        "plateau_patience": 2,
    }
    train, val = ImageData(structured_images(32, seed=1)), ImageData(structured_images(8, seed=2))
    result = fit(lambda: GlowModel(GREY), GREY, train, val, cfg, tmp_path, seed=0)
    assert result["steps"] == 4 and math.isfinite(result["best_val_bpd"])
    model, meta = load_model(tmp_path / "best.pt", GlowModel, device="cpu")
    assert all(int(m.initialized) == 1 for m in model.modules() if isinstance(m, ActNorm))
    with torch.no_grad():
        val_bpd = model.loss(val.batch(np.arange(8)), None).mean().item() / math.log(2)
    assert abs(val_bpd - meta["best_val_bpd"]) < 1e-5
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with torch.no_grad():
        model.loss(train.batch(np.arange(8)), torch.Generator().manual_seed(0))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
