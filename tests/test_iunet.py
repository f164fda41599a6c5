"""The conditional iUNet is invertible, its log-determinant is right, it uses its condition, its
conditioning loss trains H, and at paper scale it has the authors' size (seed 000 Sec. 2.9)."""

from __future__ import annotations

import FrEIA.modules as Fm
import pytest
import torch
from torch import nn

from conftest import assert_logdet_matches_autograd, flow_in_float64
from genrecon.methods.amortised.cinn import CINNModel, CINNPrior
from genrecon.models.downsampling import LearnedInvertibleDownsampling, haar_matrix
from genrecon.models.iunet import (
    PAPER_LODOPAB,
    SMOKE,
    ConditionalIUNet,
    LearnedInvertibleUpsampling,
    build_iunet,
)

# Every piece at a size where a float64 Jacobian is cheap (8x8): top wrap, two down levels with a
# split, one up level with its concatenation, the final coupling, permutations and ActNorm.
TINY = {"levels": 3, "depth": 1}


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _ready(model: ConditionalIUNet, size: int) -> ConditionalIUNet:
    """ActNorm's data-dependent init on one batch, then perturb every trainable parameter: the
    zero-initialised last subnet layers and the Haar resamplings would otherwise make the flow
    close to a fixed orthogonal map, where a wrong inverse or log-determinant can hide."""
    model.train()
    with torch.no_grad():
        model.encode(torch.rand(4, size, size), torch.rand(4, size, size))
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("size", [16, 14])  # 14 is reflect-padded to 16
def test_roundtrip_is_exact(size):
    torch.manual_seed(0)
    model = _ready(build_iunet(TINY, size, "normal", 0), size)
    x, y = torch.rand(3, size, size), torch.rand(3, size, size)
    z, logdet = model.encode(x, y)
    assert z.shape == (3, model.dim) and model.dim == 16 * 16
    cond = model.cond_net(model.pad(y))
    back, logdet_rev = model.flow(z, c=cond, rev=True)
    assert (model.crop(back) - x).abs().max() < 1e-4
    assert (back - model.pad(x)).abs().max() < 1e-4  # the padded border too
    torch.testing.assert_close(logdet_rev, -logdet)
    assert logdet.abs().min() > 1e-2  # ActNorm perturbed: not volume-preserving


def test_logdet_matches_autograd():
    torch.manual_seed(0)
    model = flow_in_float64(_ready(build_iunet(TINY, 8, "normal", 0), 8))
    resamplings = [
        m for m in model.modules() if isinstance(m, LearnedInvertibleDownsampling)
    ]  # includes the ones inside every LearnedInvertibleUpsampling
    assert sum(isinstance(m, LearnedInvertibleUpsampling) for m in model.modules()) == 3
    assert resamplings and all(
        not torch.allclose(m.matrices()[0], haar_matrix(torch.float64)) for m in resamplings
    )
    x = torch.rand(1, 8, 8, dtype=torch.float64)
    y = torch.rand(1, 8, 8, dtype=torch.float64)
    assert_logdet_matches_autograd(model, model.pad(x), model.cond_net(model.pad(y)))


def test_every_conditioned_section_uses_its_condition():
    """z depends on the inversion image, through each of H's feature maps the iUNet consumes
    (down path: H's decoder and bottom; up path: H's encoder); H's image output feeds no block."""
    torch.manual_seed(0)
    model = _ready(build_iunet(TINY, 16, "normal", 0), 16)
    x, y = torch.rand(2, 16, 16), torch.rand(2, 16, 16)
    z, _ = model.encode(x, y)
    z_other, _ = model.encode(x, torch.rand(2, 16, 16))
    assert (z - z_other).abs().max() > 1e-3

    cond = [c.detach().requires_grad_(True) for c in model.cond_net(model.pad(y))]
    assert len(cond) == 2 * TINY["levels"] - 2
    z, _ = model.flow(model.pad(x), c=cond, jac=True)
    grads = torch.autograd.grad(z.square().sum(), cond, allow_unused=True)
    assert grads[0] is None  # the image: conditioning loss only
    assert all(g is not None and g.abs().sum() > 0 for g in grads[1:])


def test_conditioning_loss_trains_h_and_only_h():
    torch.manual_seed(0)
    model = build_iunet(TINY, 14, "normal", 0).train()
    x, y = torch.rand(3, 14, 14), torch.rand(3, 14, 14)
    h = model.conditioning_output(y)
    assert h.shape == (3, 14, 14)
    assert 0 < h.min() and h.max() < 1  # sigmoid head for CT data in [0, 1]
    nn.functional.mse_loss(h, x).backward()
    net = model.cond_net
    for part in (net.encoder[0][0], net.decoder[0][-1].body[0], net.head[-1]):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.flow.parameters())

    unbounded = build_iunet({**TINY, "sigmoid": False}, 14, "normal", 0)
    with torch.no_grad():
        unbounded.cond_net.head[-1].bias.fill_(-2.0)
        assert unbounded.eval().conditioning_output(y).max() < 0  # no sigmoid: any range (MRI)


def test_sampling_is_seeded_and_shaped():
    torch.manual_seed(0)
    model = _ready(build_iunet(TINY, 14, "radial", 0), 14)
    y = torch.rand(14, 14)
    a = model.sample(y, 5, torch.Generator().manual_seed(3))
    b = model.sample(y, 5, torch.Generator().manual_seed(3))
    assert a.shape == (5, 14, 14) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert (a[0] - a[1]).abs().max() > 1e-3  # different z, different samples


def test_the_cinn_method_trains_and_scores_it_unchanged():
    """The contract methods/amortised/cinn.py relies on (`flow.pad`, `flow.cond_net`,
    `flow.flow(x, c=..., jac=True)`, `flow.base`, `flow.dim`): its loss and its Eq. 22 prior run
    on the iUNet as they are, and the loss equals the model's own NLL per dimension."""
    torch.manual_seed(0)
    spec = {
        "architecture": {"kind": "iunet", **TINY},
        "image_size": 14,
        "base": "normal",
        "seed": 0,
    }
    model = CINNModel(spec)
    assert isinstance(model.flow, ConditionalIUNet)
    model.flow = _ready(model.flow, 14)
    x, y = torch.rand(2, 14, 14), torch.rand(2, 14, 14)
    loss = model.loss({"x": x, "cond": y})
    torch.testing.assert_close(loss, model.flow.nll_per_dim(x, y))
    assert CINNPrior(model).nll(x, y).shape == (2,)


def test_model_is_rebuilt_identically():
    a = build_iunet(TINY, 8, "normal", 3).state_dict()
    b = build_iunet(TINY, 8, "normal", 3).state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    c = build_iunet(TINY, 8, "normal", 4).state_dict()
    assert not all(torch.equal(a[key], c[key]) for key in a)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"coupling": "affine"}, "unknown iUNet architecture keys \\['coupling'\\]"),
        ({"cond_levels": 4}, "unknown iUNet architecture keys \\['cond_levels'\\]"),
        ({"depth": None}, "missing keys \\['depth'\\]"),
        ({"levels": 1}, "levels must be >= 2"),
        ({"depth": -1}, "depth must be >= 0"),
    ],
)
def test_architecture_keys_are_checked(cfg, message):
    cfg = {k: v for k, v in {**TINY, **cfg}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        build_iunet(cfg, 8, "normal", 0)


def test_paper_scale_parameter_count_and_layout():
    """The authors' LoDoPaB iUNet (5 levels, depth 22, additive couplings, 1x1 permutations,
    ActNorm; 362 -> 384 px): 2,868,286 trainable parameters in the invertible part, the paper's
    "2.9 Mio" (seed 000 Sec. 4.2), and a 961,644-parameter conditioning U-Net."""
    model = build_iunet(PAPER_LODOPAB, 362, "normal", 0)
    assert model.size == 384 and model.dim == 384 * 384
    flow, cond = _trainable(model.flow), _trainable(model.cond_net)
    print(f"\niUNet paper scale: invertible part {flow:,} (paper: 2.9 Mio); conditioning {cond:,}")
    assert flow == pytest.approx(2_868_286, rel=0.02)
    assert flow == pytest.approx(2.9e6, rel=0.02)
    assert cond == pytest.approx(961_644, rel=0.02)

    # channels x resolution per section: 4/8/16/32 at 192/96/48/24 down, 16/8/4 up
    assert [s.shapes[-1] for s in model.flow.down] == [
        (4, 192, 192),
        (8, 96, 96),
        (16, 48, 48),
        (32, 24, 24),
    ]
    assert [s.shapes[-1] for s in model.flow.up] == [(4, 192, 192), (8, 96, 96), (16, 48, 48)]
    couplings = sum(isinstance(m, Fm.NICECouplingBlock) for m in model.flow.modules())
    assert couplings == 22 + 7 * 23 + 1  # top + 7 sections of (1 conditioned + 22) + final

    smoke = build_iunet(SMOKE, 64, "normal", 0)
    assert (_trainable(smoke.flow), _trainable(smoke.cond_net)) == (185_550, 236_532)
