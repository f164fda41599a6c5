"""The 2020 cINN (seed 001 App. 6.1) is invertible, its log-determinant is right, it starts as an
orthogonal map, and at paper scale it has the appendix's layout and size."""

from __future__ import annotations

import FrEIA.modules as Fm
import pytest
import torch
from torch import nn

from conftest import assert_logdet_matches_autograd, flow_in_float64
from genrecon.methods.amortised import cinn as cinn_method
from genrecon.models.cinn2020 import (
    PAPER,
    SMOKE,
    Architecture2020,
    ConditionalFlow2020,
    build_cinn2020,
)

# Every piece at a size where a float64 Jacobian is cheap (32 px -> 1 px at the bottom): four
# i-RevNet squeezes and a Haar downsampling, unconditioned couplings, splits at levels 2-5,
# conditioned k=1 and k=3 couplings, fixed 1x1 convolutions, the dense section (4 dimensions).
TINY = {
    "keep": [4, 8, 8, 8, 8],
    "couplings": 2,
    "subnet_widths": [4, 4],
    "uncond_width": 4,
    "uncond_blocks": 1,
    "dense_blocks": 2,
    "dense_width": 8,
    "cond_scale": 0.125,
    "dense_cond": 4,
}


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _ready(model: ConditionalFlow2020) -> ConditionalFlow2020:
    """Perturb every trainable parameter (the zero-initialised last subnet layers make a fresh
    flow orthogonal, where a wrong inverse or log-determinant can hide); BatchNorm in eval mode
    (one image at a time)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize(
    ("size", "extra"),
    [
        (64, {}),
        (48, {"downsampling": ["haar", "irevnet", "haar", "irevnet", "haar"]}),  # padded to 64
        (64, {"couplings": 0, "uncond_blocks": 0}),  # only the dense section couples
    ],
)
def test_roundtrip_is_exact(size, extra):
    torch.manual_seed(0)
    model = build_cinn2020({**TINY, **extra}, size, "normal", 0)
    model = flow_in_float64(_ready(model))
    x = torch.rand(3, size, size, dtype=torch.float64)
    y = torch.rand(3, size, size, dtype=torch.float64)
    z, logdet = model.encode(x, y)
    assert z.shape == (3, model.dim) and model.dim == 64 * 64
    back, logdet_rev = model.flow(z, c=model.cond_net(model.pad(y)), rev=True)
    assert (back - model.pad(x)).abs().max() < 1e-10
    torch.testing.assert_close(logdet_rev, -logdet, rtol=0, atol=1e-10)
    assert logdet.abs().min() > 1e-2  # perturbed couplings: not volume-preserving


def test_logdet_matches_autograd():
    """log|det dz/dx| against the full 1024 x 1024 Jacobian from autograd."""
    torch.manual_seed(0)
    model = flow_in_float64(_ready(build_cinn2020(TINY, 32, "normal", 0)))
    assert model.dense_dim == 4
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    cond = model.cond_net(torch.rand(1, 1, 32, 32, dtype=torch.float64))
    assert_logdet_matches_autograd(model, x, cond)


def test_fresh_model_is_orthogonal_and_uses_every_condition():
    """Zero last subnet layers (the paper: "initializes the model as a whole with the
    identity"): a fresh flow is squeezes, Haar and orthogonal 1x1 convolutions, so |z| = |x| and
    log|det| = 0. Once trained (perturbed), z depends on each of the six conditions."""
    torch.manual_seed(0)
    model = build_cinn2020(TINY, 32, "normal", 0).eval()
    x, y = torch.rand(2, 32, 32), torch.rand(2, 32, 32)
    z, logdet = model.encode(x, y)
    torch.testing.assert_close(z.norm(dim=1), x.flatten(1).norm(dim=1))
    assert logdet.abs().max() < 1e-4

    model = _ready(model)
    cond = [c.detach().requires_grad_(True) for c in model.cond_net(model.pad(y))]
    assert [tuple(c.shape[1:]) for c in cond] == [
        (4, 16, 16),
        (8, 8, 8),
        (8, 4, 4),
        (8, 2, 2),
        (8, 1, 1),
        (4,),
    ]
    z, _ = model.flow(model.pad(x), c=cond, jac=True)
    grads = torch.autograd.grad(z.square().sum(), cond)
    assert all(g.abs().sum() > 0 for g in grads)


def test_the_cinn_method_trains_it_unchanged(monkeypatch):
    """The contract of methods/amortised/cinn.py (`flow.pad`, `flow.cond_net`,
    `flow.flow(x, c=..., jac=True)`, `flow.base`, `flow.dim`), through a `kind` registered here
    for the test only."""
    monkeypatch.setitem(cinn_method.FLOWS, "cinn2020", build_cinn2020)
    torch.manual_seed(0)
    architecture = {"kind": "cinn2020", **TINY}
    spec = {"architecture": architecture, "image_size": 30, "base": "normal", "seed": 0}
    model = cinn_method.CINNModel(spec).train()
    assert isinstance(model.flow, ConditionalFlow2020) and model.flow.size == 32
    x, y = torch.rand(2, 30, 30), torch.rand(2, 30, 30)
    loss = model.loss({"x": x, "cond": y})
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.mean().backward()
    # zero last subnet layers: the first step trains those, the conditioning net from the next
    last = model.flow.blocks["cond0_coupling0"].subnet1[-1]
    assert last.weight.grad.abs().sum() > 0
    assert model.flow.cond_net.levels[0][0].weight.grad is not None
    samples = model.flow.eval().sample(y[0], 3, torch.Generator().manual_seed(1))
    assert samples.shape == (3, 30, 30)


def test_model_is_rebuilt_identically():
    a = build_cinn2020(TINY, 32, "normal", 3).state_dict()
    torch.manual_seed(123)  # the build seeds itself: the global state does not matter
    b = build_cinn2020(TINY, 32, "normal", 3).state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    c = build_cinn2020(TINY, 32, "normal", 4).state_dict()
    assert not torch.equal(a["blocks.cond0_conv0.M"], c["blocks.cond0_conv0.M"])
    assert not torch.equal(a["blocks.dense_perm0.perm"], c["blocks.dense_perm0.perm"])
    assert not torch.equal(
        a["blocks.cond0_coupling0.subnet1.0.weight"], c["blocks.cond0_coupling0.subnet1.0.weight"]
    )


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"blocks": 3}, "unknown architecture2020 keys \\['blocks'\\]"),
        ({"downsampling": ["irevnet"] * 4}, "downsampling needs exactly 5 entries"),
        ({"downsampling": ["irevnet"] * 4 + ["wavelet"]}, "unknown downsampling 'wavelet'"),
        ({"keep": [4, 8, 16, 32]}, "keep needs one entry per downsampling"),
        ({"keep": [4, 20, 16, 32, 32]}, "keep\\[1\\] = 20 must lie in \\[2, 16\\]"),
        ({"keep": [4, 8, 16, 32, 1]}, "keep\\[4\\] = 1"),
        ({"dense_channels": 0}, "dense_channels 0"),
        ({"dense_channels": 9}, "dense_channels 9 must lie in \\[1, keep\\[-1\\] = 8\\]"),
        ({"subnet_widths": [4]}, "subnet_widths needs 2"),
        ({"subnet_widths": [4, 0]}, "subnet_widths must be > 0"),
        ({"cond_scale": 0}, "cond_scale must be > 0"),
        ({"clamp": -1.0}, "clamp must be > 0"),
        ({"couplings": -1}, "couplings must be >= 0"),
    ],
)
def test_architecture_keys_are_checked(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_cinn2020({**TINY, **cfg}, 32, "normal", 0)


def test_image_too_small_to_pad_is_refused():
    with pytest.raises(ValueError, match="image_size 10: too small"):
        build_cinn2020(TINY, 10, "normal", 0)


# ---- paper scale ---------------------------------------------------------------------------
# An independent count from the appendix's tables (seed 001 Sec. 6.1), written out from the
# paper's numbers: conv k x k with bias, BatchNorm's weight and bias, linear with bias.


def _conv(c_in: int, c_out: int, k: int = 3) -> int:
    return c_in * c_out * k * k + c_out


def _linear(c_in: int, c_out: int) -> int:
    return c_in * c_out + c_out


def _bn(c: int) -> int:
    return 2 * c


def _glow(channels: int, cond: int, subnet) -> int:
    """FrEIA's GLOW coupling: two subnets, (half + cond) -> 2 x other half each."""
    a = channels // 2
    b = channels - a
    return subnet(a + cond, 2 * b) + subnet(b + cond, 2 * a)


def _paper_flow_count() -> int:
    def cnn(k):  # CNN-subnetwork: c_in -> 64 -> 92 -> c_out
        return lambda i, o: _conv(i, 64, k) + _conv(64, 92, k) + _conv(92, o, k)

    def uncond(i, o):  # unconditioned: c_in -> 64 -> 64 -> c_out, k = 1
        return _conv(i, 64, 1) + _conv(64, 64, 1) + _conv(64, o, 1)

    def dense(i, o):  # Dense-subnetwork: c_in -> 512 -> 512 -> c_out
        return _linear(i, 512) + _linear(512, 512) + _linear(512, o)

    # downsample sections: 2 unconditioned couplings on 4, 16, 32, 64, 128 channels
    downsample = sum(2 * _glow(c, 0, uncond) for c in (4, 16, 32, 64, 128))
    # conditional sections: 3 x [coupling k=1, coupling k=3] on 4/8/16/32/32 channels, each
    # conditioned on a map of as many channels (the conditioning net's level outputs)
    conditional = sum(3 * (_glow(c, c, cnn(1)) + _glow(c, c, cnn(3))) for c in (4, 8, 16, 32, 32))
    # dense section: 4 couplings on 4 x 11 x 11 = 484 dimensions, conditioned on 256
    return downsample + conditional + 4 * _glow(484, 256, dense)


def _paper_conditioning_count() -> int:
    level1 = (
        _conv(1, 32)  # printed "1 -> 3"
        + _conv(32, 64)
        + _conv(64, 128) + _bn(128)
        + _conv(128, 64) + _bn(64)
        + _conv(64, 32) + _bn(32)
        + _conv(32, 4) + _bn(4)
    )  # fmt: skip
    level2 = _conv(4, 32) + _bn(32) + _conv(32, 32, 1) + _conv(32, 32) + _bn(32) + _conv(32, 8)
    level2 += _bn(8)
    level3 = _conv(8, 32, 1) + _conv(32, 64) + _conv(64, 16) + _bn(16)
    level4 = _conv(16, 64, 1) + _conv(64, 64) + _conv(64, 32) + _bn(32)
    level5 = _conv(32, 96, 1) + _conv(96, 128) + _conv(128, 32, 1) + _bn(32)
    level6 = _conv(32, 64) + _conv(64, 256) + _bn(256)  # + average pooling, flatten
    return level1 + level2 + level3 + level4 + level5 + level6


PAPER_FLOW = 9_125_264  # = _paper_flow_count(), quoted in the module docstring
PAPER_CONDITIONING = 569_876  # = _paper_conditioning_count()


@pytest.fixture(scope="module")
def paper_model() -> ConditionalFlow2020:
    return build_cinn2020(PAPER, 352, "normal", 0)


def test_paper_scale_layout(paper_model):
    """352 px as the paper (no padding): its table of output sizes, level by level."""
    model = paper_model
    assert model.size == 352 and model.dim == 352 * 352 and model.dense_dim == 484
    nodes = {node.name: node for node in model.flow.node_list}
    assert [node.output_dims[0] for node in model.flow.condition_nodes] == [
        (4, 176, 176),
        (8, 88, 88),
        (16, 44, 44),
        (32, 22, 22),
        (32, 11, 11),
        (256,),
    ]
    after_downsampling = [nodes[f"down{level}"].output_dims[0] for level in range(5)]
    assert after_downsampling == [
        (4, 176, 176),
        (16, 88, 88),
        (32, 44, 44),
        (64, 22, 22),
        (128, 11, 11),
    ]
    assert "split0" not in nodes  # level 1 keeps all 4 channels
    kept_and_split = [[tuple(d) for d in nodes[f"split{level}"].output_dims] for level in (1, 2)]
    kept_and_split += [[tuple(d) for d in nodes[f"split{level}"].output_dims] for level in (3, 4)]
    assert kept_and_split == [
        [(8, 88, 88), (8, 88, 88)],
        [(16, 44, 44), (16, 44, 44)],
        [(32, 22, 22), (32, 22, 22)],
        [(32, 11, 11), (96, 11, 11)],
    ]
    assert [tuple(d) for d in nodes["split_dense"].output_dims] == [(4, 11, 11), (28, 11, 11)]
    assert tuple(nodes["flatten"].output_dims[0]) == (484,)
    assert tuple(nodes["z"].output_dims[0]) == (352 * 352,)
    # conditional sections: 6 conditioned couplings per level, on the kept channels
    for level, kept, res in [(0, 4, 176), (1, 8, 88), (2, 16, 44), (3, 32, 22), (4, 32, 11)]:
        couplings = [n for name, n in nodes.items() if name.startswith(f"cond{level}_coupling")]
        assert len(couplings) == 6
        assert all(tuple(n.output_dims[0]) == (kept, res, res) for n in couplings)
    kinds = [type(n.module).__name__ for n in model.flow.node_list if hasattr(n, "module")]
    assert kinds.count("IRevNetDownsampling") == 4 and kinds.count("HaarDownsampling") == 1
    assert kinds.count("GLOWCouplingBlock") == 5 * 2 + 5 * 6 + 4
    assert kinds.count("Fixed1x1Conv") == 5 * 2 + 5 * 6 and kinds.count("PermuteRandom") == 4
    # the conditioning net is fully convolutional: the same widths at 64 px, sizes / 2^level
    with torch.no_grad():
        cond = model.cond_net.eval()(torch.zeros(1, 1, 64, 64))
    assert [tuple(c.shape[1:]) for c in cond] == [
        (4, 32, 32),
        (8, 16, 16),
        (16, 8, 8),
        (32, 4, 4),
        (32, 2, 2),
        (256,),
    ]


def test_paper_scale_parameter_counts(paper_model):
    """Invertible part 9,125,264 trainable parameters, conditioning net 569,876 (352 px), both
    equal to the count from the appendix's tables; plus 57,856 fixed 1x1-convolution entries."""
    flow, cond = _trainable(paper_model.blocks), _trainable(paper_model.cond_net)
    print(f"\ncINN 2020 paper scale (352 px): invertible part {flow:,}, conditioning {cond:,}")
    assert _paper_flow_count() == PAPER_FLOW
    assert _paper_conditioning_count() == PAPER_CONDITIONING
    assert flow == PAPER_FLOW
    assert cond == PAPER_CONDITIONING
    assert _trainable(paper_model) == flow + cond  # nothing trainable outside the two
    fixed = sum(m.M.numel() for m in paper_model.modules() if isinstance(m, Fm.Fixed1x1Conv))
    assert fixed == 2 * (4**2 + 16**2 + 32**2 + 64**2 + 128**2) + 6 * (
        4**2 + 8**2 + 16**2 + 32**2 + 32**2
    )


def test_lodopab_and_smoke_sizes():
    """LoDoPaB (362 -> 384 px): a 576-dimensional dense section, whose subnets' first and last
    layers grow with it (9,691,248 in all); the smoke model at 64 px."""
    arch = Architecture2020.from_config(PAPER)
    assert arch == Architecture2020()  # PAPER is the dataclass defaults
    lodopab = build_cinn2020(PAPER, 362, "normal", 0)
    assert lodopab.size == 384 and lodopab.dense_dim == 4 * 12 * 12
    extra = 4 * 2 * ((288 - 242) * 512 + 512 * (576 - 484) + (576 - 484))
    assert _trainable(lodopab.blocks) == PAPER_FLOW + extra
    smoke = build_cinn2020(SMOKE, 64, "normal", 0)
    assert smoke.dense_dim == 16
    assert (_trainable(smoke.blocks), _trainable(smoke.cond_net)) == (205_560, 42_740)
    z, _ = smoke.eval().encode(torch.rand(2, 64, 64), torch.rand(2, 64, 64))
    assert z.shape == (2, 64 * 64)
