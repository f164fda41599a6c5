"""The cINN is invertible, its log-determinant is right, its base densities are densities."""

from __future__ import annotations

import math

import FrEIA.modules as Fm
import numpy as np
import pytest
import torch
from scipy import stats

from conftest import assert_logdet_matches_autograd, flow_in_float64
from genrecon.models.base import NormalBase, RadialBase, make_base
from genrecon.models.cinn import build_model
from genrecon.models.downsampling import LearnedInvertibleDownsampling, haar_matrix


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # fixed 1x1 convolutions keep their precomputed inverse
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


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


# --- the seed authors' multi-scale cINN (cinn_for_imaging) ---------------------------------

# The paper-scale LoDoPaB model and the MNIST model as params.yaml is meant to hold them.
AUTHORS_LODOPAB = {
    "levels": 5,
    "cond_levels": 4,
    "blocks_per_level": 5,
    "uncond_blocks": 2,
    "act_norm": True,
    "split": True,
    "cond_channels": [4, 16, 32, 64, 64, 32],
    "cond_features": 16,
    "dense_dim": 128,
    "dense_cond": 64,
    "dense_blocks": 2,
    "clamp": 1.5,
}
AUTHORS_MNIST = {
    "levels": 2,
    "cond_levels": 2,
    "blocks_per_level": 2,
    "uncond_blocks": 0,
    "act_norm": False,
    "split": False,
    "cond_channels": [4, 16, 32],
    "cond_features": 16,
    "dense_dim": 128,
    "dense_cond": 64,
    "dense_blocks": 3,
    "clamp": 1.5,
}


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _ready(model, size: int):
    """Data-dependent ActNorm init on one training batch, then perturb: a non-identity flow."""
    model.train()
    with torch.no_grad():
        model.encode(torch.rand(4, size, size), torch.rand(4, size, size))
    return _perturbed(model)


def test_authors_paper_scale_parameter_ledger():
    """362 -> 384 px; counts match the authors' model as published, part by part (FACTS ledger).

    Invertible part: 3,166,656 (the paper's "3.2 Mio"). Conditioning net: theirs has 1,896,092,
    of which 642,432 sit in the head for the fifth downsampling level that no coupling consumes
    (their graph conditions sections 0-3 and the dense block only); that head is not built here,
    so ours must have exactly 1,896,092 - 642,432 = 1,253,660.
    """
    model = build_model(AUTHORS_LODOPAB, 362, "normal", 0)
    assert model.size == 384
    flow, cond = _trainable(model.blocks), _trainable(model.cond_net)
    print(
        f"\ninvertible part {flow:,} (authors 3,166,656); conditioning net {cond:,} "
        f"(authors 1,896,092 incl. 642,432 unused -> 1,253,660)"
    )
    assert flow == pytest.approx(3_166_656, rel=0.02)
    assert cond == 1_896_092 - 642_432

    parts: dict[str, int] = {}
    for name, block in model.blocks.items():
        if not _trainable(block):  # splits, flattens, fixed permutations
            continue
        if name.startswith(("down", "uncond", "actnorm_uncond")):
            key = "downsampling + unconditioned"
        elif name.startswith("dense"):
            key = "dense"
        else:  # coupling{l}_{k}, actnorm_coupling{l}_{k}
            key = f"section{name.split('_')[-2][-1]}"
        parts[key] = parts.get(key, 0) + _trainable(block)
    assert parts == {
        "downsampling + unconditioned": 222_640,
        "section0": 11_408,
        "section1": 115_200,
        "section2": 458_880,
        "section3": 1_831_680,
        "dense": 526_848,
    }
    net = model.cond_net
    assert _trainable(net.stem) == 48_568
    assert [_trainable(h) for h in net.heads] == [2_580, 19_024, 90_464, 375_168]
    assert _trainable(net.dense) == 717_856


@pytest.mark.parametrize("size", [8, 6])  # 6 is padded to 8
def test_cinn_roundtrip(tiny_arch, size):
    torch.manual_seed(0)
    model = _ready(build_model(tiny_arch, size, "normal", 0), size).eval()
    x, c = torch.rand(3, size, size), torch.rand(3, size, size)
    z, _ = model.encode(x, c)
    cond = model.cond_net(model.pad(c))
    back, _ = model.flow(z, c=cond, rev=True)
    torch.testing.assert_close(model.crop(back), x, atol=1e-5, rtol=1e-5)


def test_cinn_logdet_matches_autograd(tiny_arch):
    torch.manual_seed(0)
    model = flow_in_float64(_ready(build_model(tiny_arch, 8, "normal", 0), 8))
    downs = [m for m in model.blocks.values() if isinstance(m, LearnedInvertibleDownsampling)]
    assert downs and all(
        not torch.allclose(d.matrices()[0], haar_matrix(torch.float64)) for d in downs
    )
    x, c = torch.rand(1, 8, 8, dtype=torch.float64), torch.rand(1, 8, 8, dtype=torch.float64)
    assert_logdet_matches_autograd(model, model.pad(x), model.cond_net(model.pad(c)))


def test_learned_downsampling_starts_at_haar_and_stays_orthogonal():
    torch.manual_seed(0)
    learned = LearnedInvertibleDownsampling([(3, 8, 8)]).double()
    haar = Fm.HaarDownsampling([(3, 8, 8)]).double()  # rebalance 1: the orthonormal transform
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    (out,), jac = learned([x])
    (expected,), _ = haar([x])
    torch.testing.assert_close(out, expected)
    assert float(jac) == 0.0

    optimizer = torch.optim.SGD(learned.parameters(), lr=0.5)
    (learned([x])[0][0] * torch.randn_like(out)).sum().backward()
    optimizer.step()
    q = learned.matrices()
    assert not torch.allclose(q, haar_matrix(torch.float64).expand_as(q))  # it did learn
    eye = torch.eye(4, dtype=torch.float64).expand_as(q)
    torch.testing.assert_close(q @ q.transpose(1, 2), eye)
    (out,), _ = learned([x])
    (back,), _ = learned([out], rev=True)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(out.square().sum(), x.square().sum())  # orthogonal: norm kept


def test_model_is_rebuilt_identically(tiny_arch):
    """Checkpoints load into a fresh build: same parameter names, same fixed permutations."""
    a = build_model(tiny_arch, 8, "normal", 3).state_dict()
    b = build_model(tiny_arch, 8, "normal", 3).state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    c = build_model(tiny_arch, 8, "normal", 4).state_dict()
    assert not all(torch.equal(a[key], c[key]) for key in a)


def test_sampling_is_seeded_and_shaped(tiny_arch):
    model = _ready(build_model(tiny_arch, 14, "radial", 0), 14).eval()
    c = torch.rand(14, 14)
    a = model.sample(c, 5, torch.Generator().manual_seed(3))
    b = model.sample(c, 5, torch.Generator().manual_seed(3))
    assert a.shape == (5, 14, 14)
    torch.testing.assert_close(a, b)


def test_authors_mnist_model_matches_appendix_a2_and_roundtrips():
    torch.manual_seed(0)
    model = build_model(AUTHORS_MNIST, 28, "normal", 0)
    dims = {
        n.name: n.output_dims[0] for n in model.flow.node_list if getattr(n, "output_dims", None)
    }
    assert dims["down0"] == (4, 14, 14) and dims["down1"] == (16, 7, 7)  # seed 000 App. A.2
    assert dims["flatten"] == (784,) and dims["split_dense"] == (128,)
    assert sum(name.startswith("dense_coupling") for name in model.blocks) == 3
    model = _perturbed(model)
    x, c = torch.rand(2, 28, 28), torch.rand(2, 28, 28)
    z, _ = model.encode(x, c)
    assert z.shape == (2, 784)
    back, _ = model.flow(z, c=model.cond_net(model.pad(c)), rev=True)
    torch.testing.assert_close(model.crop(back), x, atol=1e-5, rtol=1e-5)
    samples = model.sample(c[0], 3, torch.Generator().manual_seed(0))
    assert samples.shape == (3, 28, 28) and torch.isfinite(samples).all()


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"hidden": 8}, "unknown architecture keys \\['hidden'\\]"),
        ({"layout": "authors"}, "unknown architecture keys \\['layout'\\]"),
        ({"downsampling": "haar"}, "unknown architecture keys \\['downsampling'\\]"),
        ({"cond_levels": None}, "missing keys \\['cond_levels'\\]"),
        ({"cond_levels": 3}, "cond_levels must lie in \\[0, levels\\]"),
        ({"cond_channels": [2, 4]}, "levels \\+ 1 cond_channels"),
    ],
)
def test_architecture_keys_are_checked(tiny_arch, cfg, message):
    cfg = {k: v for k, v in {**tiny_arch, **cfg}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        build_model(cfg, 8, "normal", 0)


# --- the seed authors' fastMRI cINN (cinn_mri.py, cond_net_mri.py, train/mri_cinn.py) ---------

# As params.yaml's `architectures.knee` is meant to hold it: their MRI run's settings
# (downsample_levels 6, num_blocks 5, cond_conv_channels [4, 16, 16, 16, 32, 32, 32],
# cond_fc_size 64, use_act_norm, permutation '1x1', num_fc_blocks 2) and the four points where
# their MRI code differs from their CT code (3x3 strided head convolutions, a dense head of 6
# halvings, ResBlocks without inner BatchNorm, dense couplings before their permutations).
AUTHORS_KNEE = {
    "levels": 6,
    "cond_levels": 5,
    "blocks_per_level": 5,
    "uncond_blocks": 0,
    "act_norm": True,
    "split": True,
    "cond_channels": [4, 16, 16, 16, 32, 32, 32],
    "cond_features": 16,
    "dense_dim": 128,
    "dense_cond": 64,
    "dense_blocks": 2,
    "clamp": 1.5,
    "cond_kernels": [3],
    "dense_cond_steps": 6,
    "cond_block_norm": False,
    "dense_permute": "after",
}
# The same four options at their CT values: what every block that omits them gets.
CT_OPTIONS = {
    "cond_kernels": [5, 5, 5, 5, 3],
    "cond_block_norm": True,
    "dense_permute": "before",
}


def test_authors_knee_parameter_ledger():
    """320 px (no padding); counts match the authors' fastMRI cINN, part by part.

    Counted independently from their layer lists (cinn_mri.py `build_inn`,
    `_add_conditioned_section`, `_add_fc_section`; cond_net_mri.py `ResNetCondNet`, `ResBlock`),
    trainable parameters only (their fixed 1x1 convolutions and PermuteRandom hold none).
    Invertible part 2,560,224: the paper's "2.6 Mio" (seed 000 Sec. 4.3). Conditioning net:
    theirs 626,236, of which 180,160 in the head for the sixth downsampling level: their graph
    declares cond_5 but no coupling reads it (sections 0-4 and the dense block only). That head
    is not built here, so ours must have exactly 626,236 - 180,160 = 446,076.
    """
    model = build_model(AUTHORS_KNEE, 320, "normal", 0)
    assert model.size == 320
    flow, cond = _trainable(model.blocks), _trainable(model.cond_net)
    print(
        f"\ninvertible part {flow:,} (authors 2,560,224); conditioning net {cond:,} "
        f"(authors 626,236 incl. 180,160 unused -> 446,076)"
    )
    assert flow == 2_560_224
    assert cond == 626_236 - 180_160

    parts: dict[str, int] = {}
    for name, block in model.blocks.items():
        if not _trainable(block):  # splits, flattens, fixed permutations
            continue
        if name.startswith("down"):
            key = "downsampling"
        elif name.startswith("dense"):
            key = "dense"
        else:  # coupling{l}_{k}, actnorm_coupling{l}_{k}
            key = f"section{name.split('_')[-2][-1]}"
        parts[key] = parts.get(key, 0) + _trainable(block)
    assert parts == {
        "downsampling": 2_000,  # 6 learned downsamplings of 1/4/8/16/32/64 channels, 16 each
        "section0": 11_408,  # C=4 at 160 px, condition 4 channels
        "section1": 115_200,  # C=8 at 80, cond 16
        "section2": 178_688,  # C=16 at 40, cond 16
        "section3": 345_984,  # C=32 at 20, cond 16
        "section4": 1_380_096,  # C=64 at 10, cond 32
        "dense": 526_848,  # 128 dims, 2 blocks, 64-dim condition
    }
    net = model.cond_net
    assert _trainable(net.stem) == 48_056
    assert [_trainable(h) for h in net.heads] == [1_524, 16_816, 33_584, 50_352, 113_344]
    assert _trainable(net.dense) == 182_400

    dims = {
        n.name: n.output_dims[0] for n in model.flow.node_list if getattr(n, "output_dims", None)
    }
    assert dims["down0"] == (4, 160, 160) and "split0" not in dims
    assert dims["down5"] == (256, 5, 5) and dims["split5"] == (128, 5, 5)
    assert dims["flatten"] == (3200,) and dims["split_dense"] == (128,)
    assert not any(name.startswith("uncond") for name in model.blocks)
    strided = [
        m for m in net.dense.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)
    ]
    assert len(strided) == 6 and {m.kernel_size for m in strided} == {(3, 3)}  # 320 -> 5x5
    # their dense section: coupling, then permutation (`_add_fc_section`)
    order = [n.name for n in model.flow.node_list if n.name.startswith("dense_")]
    assert order == ["dense_coupling0", "dense_perm0", "dense_coupling1", "dense_perm1"]


def test_ct_options_spelt_out_build_the_same_model(tiny_arch):
    """The new keys' defaults are the CT choices: spelling them out changes no weight."""
    for net in ("resnet", "cnn", "avgpool"):
        plain = build_model({**tiny_arch, "cond_net": net}, 8, "normal", 5).state_dict()
        explicit = {**tiny_arch, **CT_OPTIONS, "cond_net": net, "dense_cond_steps": 3}
        spelt = build_model(explicit, 8, "normal", 5).state_dict()
        assert sorted(plain) == sorted(spelt)
        for key in plain:
            torch.testing.assert_close(plain[key], spelt[key], rtol=0, atol=0)


@pytest.fixture
def tiny_knee(tiny_arch) -> dict:
    """tiny_arch in the authors' MRI conventions (one dense halving fewer: 8 -> 2x2)."""
    return {
        **tiny_arch,
        "cond_kernels": [3],
        "dense_cond_steps": 2,
        "cond_block_norm": False,
        "dense_permute": "after",
    }


def test_knee_options_roundtrip_and_logdet_matches_autograd(tiny_knee):
    torch.manual_seed(0)
    model = _ready(build_model(tiny_knee, 8, "normal", 0), 8).eval()
    x, c = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    z, _ = model.encode(x, c)
    back, _ = model.flow(z, c=model.cond_net(model.pad(c)), rev=True)
    torch.testing.assert_close(model.crop(back), x, atol=1e-5, rtol=1e-5)

    model = flow_in_float64(model)
    x, c = x[:1].double(), c[:1].double()
    assert_logdet_matches_autograd(model, model.pad(x), model.cond_net(model.pad(c)))


def test_dense_permute_after_differs_from_before_only_in_order(tiny_arch):
    """Same modules and parameter counts; the graph places each permutation after its
    coupling. The likelihoods differ (the first coupling sees another partition)."""
    before = build_model(tiny_arch, 8, "normal", 0)
    after = build_model({**tiny_arch, "dense_permute": "after"}, 8, "normal", 0)
    assert sorted(before.blocks) == sorted(after.blocks)
    assert _trainable(before) == _trainable(after)

    def order(model):
        return [n.name for n in model.flow.node_list if n.name.startswith("dense_")]

    assert order(before) == ["dense_perm0", "dense_coupling0", "dense_perm1", "dense_coupling1"]
    assert order(after) == ["dense_coupling0", "dense_perm0", "dense_coupling1", "dense_perm1"]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"cond_kernels": [4]}, "cond_kernels \\(4,\\) must be a non-empty list of odd"),
        ({"cond_kernels": []}, "cond_kernels \\(\\) must be"),
        ({"cond_kernels": [3, 0]}, "cond_kernels"),
        ({"cond_kernels": 3}, "cond_kernels 3 must be"),
        ({"dense_cond_steps": 0}, "dense_cond_steps 0 must be null or an integer in \\[1, 3\\]"),
        ({"dense_cond_steps": 4}, "dense_cond_steps 4 must"),
        ({"dense_cond_steps": 2.0}, "dense_cond_steps 2.0 must"),
        ({"cond_block_norm": "no"}, "cond_block_norm must be true or false"),
        ({"dense_permute": "between"}, "dense_permute 'between' must be 'before' or 'after'"),
    ],
)
def test_knee_option_keys_are_checked(tiny_arch, cfg, message):
    with pytest.raises(ValueError, match=message):
        build_model({**tiny_arch, **cfg}, 8, "normal", 0)


def test_the_paper_scale_sheet_holds_the_authors_architectures():
    """The counts above are tested on these dicts: params.yaml's paper scale must hold them."""
    from pathlib import Path

    from genrecon import config
    from genrecon.models.cinn2020 import PAPER as PAPER_2020
    from genrecon.models.iunet import PAPER_LODOPAB

    root = Path(__file__).resolve().parents[1]
    archs = config.resolve(config.load_params(root / "params.yaml"), "paper", root)["architectures"]
    assert archs["lodopab"] == AUTHORS_LODOPAB
    assert archs["mnist"] == AUTHORS_MNIST
    assert archs["knee"] == AUTHORS_KNEE
    assert archs["lodopab_iunet"] == {"kind": "iunet", **PAPER_LODOPAB}
    assert archs["knee_iunet"] == {"kind": "iunet", **PAPER_LODOPAB, "depth": 19, "sigmoid": False}
    assert archs["lodopab_2020"] == {"kind": "cinn2020", **PAPER_2020}
