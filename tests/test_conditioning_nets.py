"""Seed 000 Table 2's three conditioning networks H (models/conditioning.py) in the cINN.

Each net must feed exactly what the flow's condition nodes declare, at the smoke and the paper
layout; the flow built with each must stay invertible and actually read the condition; every
parameter of each net must be trained; the nets must have the authors' sizes (their
cond_net.py, counted from its layer list, without the head no coupling consumes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from genrecon import config
from genrecon.models.cinn import build_model
from genrecon.models.conditioning import (
    CONDITIONING_NETS,
    AvgPoolConditioningNet,
    BatchNormResBlock,
    CNNConditioningNet,
    ResNetConditioningNet,
)

ROOT = Path(__file__).resolve().parents[1]
NETS = sorted(CONDITIONING_NETS)
# params.yaml's Table-2 architecture blocks and sheet rows, per conditioning net
TABLE2_ARCHS = {"resnet": "lodopab", "cnn": "lodopab_cnn", "avgpool": "lodopab_avgpool"}
TABLE2_ROWS = {
    "resnet": "lodopab_ms_normal",
    "cnn": "lodopab_ms_cnn",
    "avgpool": "lodopab_ms_avgpool",
}


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def settings() -> dict[str, dict]:
    params = config.load_params(ROOT / "params.yaml")
    return {scale: config.resolve(params, scale, ROOT) for scale in ("smoke", "paper")}


def _ready(model, size: int, batch: int = 4):
    """ActNorm's data-dependent init on one batch, then every weight perturbed: the couplings'
    zero-initialised last layers would otherwise make the flow ignore its condition."""
    model.train()
    with torch.no_grad():
        model.encode(torch.rand(batch, size, size), torch.rand(batch, size, size))
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def test_registry_and_schema_name_the_same_nets():
    schema = yaml.safe_load((ROOT / config.SCHEMA).read_text())
    enum = schema["$defs"]["multiscale_architecture"]["properties"]["cond_net"]["enum"]
    assert sorted(enum) == NETS == ["avgpool", "cnn", "resnet"]
    assert CONDITIONING_NETS["resnet"] is ResNetConditioningNet
    assert CONDITIONING_NETS["cnn"] is CNNConditioningNet
    assert CONDITIONING_NETS["avgpool"] is AvgPoolConditioningNet


@pytest.mark.parametrize("scale", ["smoke", "paper"])
@pytest.mark.parametrize("net", NETS)
def test_every_net_gives_what_the_condition_nodes_need(settings, scale, net):
    """Per conditioned level i: cond_channels[i] maps at size/2^(i+1), then the dense vector."""
    s = settings[scale]
    arch = s["architectures"][TABLE2_ARCHS[net]]
    assert arch.get("cond_net", "resnet") == net
    torch.manual_seed(0)
    model = build_model(arch, s["datasets"]["lodopab"]["image_size"], "normal", 0)
    assert type(model.cond_net) is CONDITIONING_NETS[net]
    # the graph's condition nodes, in the order its `c` list is read (cond0.., cond_dense)
    expected = [tuple(n.output_dims[0]) for n in model.flow.condition_nodes]
    assert len(expected) == arch["cond_levels"] + 1
    with torch.no_grad():
        out = model.cond_net(model.pad(torch.rand(2, model.image_size, model.image_size)))
    assert [tuple(t.shape) for t in out] == [(2, *dims) for dims in expected]
    assert all(torch.isfinite(t).all() for t in out)


@pytest.mark.parametrize("net", NETS)
def test_flow_with_each_net_roundtrips_and_reads_the_condition(tiny_arch, net):
    torch.manual_seed(0)
    model = _ready(build_model({**tiny_arch, "cond_net": net}, 8, "normal", 0), 8).eval()
    x, c = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    z, _ = model.encode(x, c)
    back, _ = model.flow(z, c=model.cond_net(model.pad(c)), rev=True)
    torch.testing.assert_close(model.crop(back), x, atol=1e-5, rtol=1e-5)
    other, _ = model.encode(x, torch.rand(3, 8, 8))
    # a different measurement moves z (by ~1e-4 in this tiny, barely perturbed flow; exactly 0
    # if the flow ignored H's output): H is wired in
    assert (other - z).abs().max() > 1e-5


@pytest.mark.parametrize("net", NETS)
def test_gradients_reach_every_parameter_of_each_net(settings, net):
    """At the smoke layout: one NLL backward trains every tensor of H (a head or the dense path
    that the flow never reads would keep grad None). Biases right before a BatchNorm get an
    exactly-zero gradient in exact arithmetic (the norm removes them), so only their presence is
    checked; every weight tensor must get a non-zero gradient."""
    s = settings["smoke"]
    arch = s["architectures"][TABLE2_ARCHS[net]]
    torch.manual_seed(0)
    model = _ready(build_model(arch, 64, "normal", 0), 64)
    model.nll_per_dim(torch.rand(4, 64, 64), torch.rand(4, 64, 64)).mean().backward()
    params = dict(model.cond_net.named_parameters())
    assert params
    missing = [name for name, p in params.items() if p.grad is None]
    assert not missing, f"{net}: no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    dead = [name for name, p in params.items() if p.dim() > 1 and not p.grad.abs().sum() > 0]
    assert not dead, f"{net}: zero gradient for {dead}"


@pytest.mark.parametrize("bad", ["unet", "ResNetCond", ""])
def test_unknown_cond_net_is_named(tiny_arch, bad):
    with pytest.raises(ValueError, match=f"unknown cond_net '{bad}'.*avgpool.*cnn.*resnet"):
        build_model({**tiny_arch, "cond_net": bad}, 8, "normal", 0)


def test_schema_rejects_an_unknown_cond_net():
    params = config.load_params(ROOT / "params.yaml")
    params["architectures"]["lodopab_avgpool"]["cond_net"] = "avg_pool"
    with pytest.raises(config.ConfigError, match="architectures.lodopab_avgpool.cond_net"):
        config.validate_schema(params, ROOT)


# The authors' nets at paper scale (cond_net.py; chain [4, 16, 32, 64, 64, 32], 16-channel stem,
# 64-dim dense condition), counted from their layer lists. Each of theirs also builds a head for
# the fifth downsampling level that no coupling consumes (ResNet 642,432, CNN 9,280, AvgPool 640
# parameters); ours does not build it, so the totals are theirs minus that head.
AUTHORS_PAPER_COUNTS = {
    # net: (their total, unused fifth head, stem, per-level heads, dense head)
    "resnet": (1_896_092, 642_432, 48_568, [2_580, 19_024, 90_464, 375_168], 717_856),
    "cnn": (81_420, 9_280, 48_568, [580, 2_320, 4_640, 9_280], 6_752),
    "avgpool": (4_360, 640, 0, [40, 160, 320, 640], 2_560),
}


@pytest.mark.parametrize("net", NETS)
def test_paper_scale_parameter_counts_match_the_authors_nets(settings, net):
    arch = settings["paper"]["architectures"][TABLE2_ARCHS[net]]
    model = build_model(arch, 362, "normal", 0)
    cond = model.cond_net
    theirs, unused, stem, heads, dense = AUTHORS_PAPER_COUNTS[net]
    total = _trainable(cond)
    print(
        f"\n{net}: conditioning net {total:,} (authors {theirs:,} incl. {unused:,} unused -> "
        f"{theirs - unused:,}); invertible part {_trainable(model.blocks):,}"
    )
    assert total == theirs - unused
    assert _trainable(cond.stem) == stem
    assert [_trainable(h) for h in cond.heads] == heads
    assert _trainable(cond.dense) == dense
    assert _trainable(model.blocks) == pytest.approx(3_166_656, rel=0.02)  # same flow for all


@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_table2_rows_differ_only_by_the_conditioning_net(settings, scale):
    """The comparison is controlled: same flow layout, data, base, noise and training."""
    s = settings[scale]
    archs = s["architectures"]
    for net, name in TABLE2_ARCHS.items():
        assert archs[name].get("cond_net", "resnet") == net
        assert {k: v for k, v in archs[name].items() if k != "cond_net"} == archs["lodopab"]
    runs = {net: row for net, row in TABLE2_ROWS.items() if row in s["experiments"]}
    assert set(runs) == ({"resnet", "avgpool"} if scale == "smoke" else set(TABLE2_ROWS))
    reference = config.fit_settings(s, runs["resnet"])

    def rest(fit: dict) -> dict:
        """All a job reads except its name and the architecture (compared above)."""
        variant = {k: v for k, v in fit["variant"].items() if k not in ("arch", "architecture")}
        return {**{k: v for k, v in fit.items() if k != "experiment"}, "variant": variant}

    for net, row in runs.items():
        assert "s000_table2" in s["experiments"][row]["reproduces"]
        fit = config.fit_settings(s, row)
        assert fit["variant"]["arch"] == TABLE2_ARCHS[net]
        assert rest(fit) == rest(reference), row


# --- the authors' fastMRI conditioning nets (cond_net_mri.py) ---------------------------------

# Their MRI layout: chain [4, 16, 16, 16, 32, 32, 32], 16-channel stem, 64-dim dense condition,
# 3x3 strided convolutions, ResBlocks with BatchNorm on the sum only, a dense head of 6 halvings
# (320 -> 5x5). As `architectures.knee` is meant to hold it.
KNEE = {
    "levels": 6,
    "cond_levels": 5,
    "blocks_per_level": 5,
    "uncond_blocks": 0,
    "cond_channels": [4, 16, 16, 16, 32, 32, 32],
    "cond_features": 16,
    "dense_dim": 128,
    "dense_cond": 64,
    "cond_kernels": [3],
    "dense_cond_steps": 6,
    "cond_block_norm": False,
    "dense_permute": "after",
}
KNEE_OPTIONS = {"kernels": (3,), "dense_steps": 6, "block_norm": False}

# Counted from their layer lists (cond_net_mri.py, 320 px); each builds a sixth level head that
# no coupling consumes (their graph conditions sections 0-4 and the dense block), not built here.
AUTHORS_KNEE_COUNTS = {
    # net: (their total, unused sixth head, stem, per-level heads, dense head)
    "resnet": (626_236, 180_160, 48_056, [1_524, 16_816, 33_584, 50_352, 113_344], 182_400),
    "cnn": (71_628, 4_640, 48_056, [580, 2_320, 2_320, 2_320, 4_640], 6_752),
    "avgpool": (3_720, 320, 0, [40, 160, 160, 160, 320], 2_560),
}


@pytest.mark.parametrize("net", NETS)
def test_knee_parameter_counts_match_the_authors_mri_nets(net):
    cond = CONDITIONING_NETS[net]([4, 16, 16, 16, 32, 32, 32], 5, 16, 64, **KNEE_OPTIONS)
    theirs, unused, stem, heads, dense = AUTHORS_KNEE_COUNTS[net]
    assert _trainable(cond) == theirs - unused
    assert _trainable(cond.stem) == stem
    assert [_trainable(h) for h in cond.heads] == heads
    assert _trainable(cond.dense) == dense


@pytest.mark.parametrize("net", NETS)
def test_knee_nets_give_what_the_condition_nodes_need(net):
    """64 px stands in for 320: the same 6 halvings, down to 1x1 (the dense head's map)."""
    torch.manual_seed(0)
    model = build_model({**KNEE, "cond_net": net}, 64, "normal", 0)
    expected = [tuple(n.output_dims[0]) for n in model.flow.condition_nodes]
    assert len(expected) == 6
    model.train()  # BatchNorm in training mode, as in a training step
    with torch.no_grad():
        out = model.cond_net(model.pad(torch.rand(2, 64, 64)))
    assert [tuple(t.shape) for t in out] == [(2, *dims) for dims in expected]
    assert all(torch.isfinite(t).all() for t in out)


def test_knee_options_shape_the_resnet_net():
    """Kernels step by step (the last repeating), no BatchNorm inside the ResBlocks, and a dense
    head of `dense_steps` halvings whose 1x1 convolution takes the width it reached."""
    chain = [2, 4, 6, 8, 8]
    net = ResNetConditioningNet(chain, 4, 4, 5, kernels=(7, 5, 3), dense_steps=3, block_norm=False)

    def strided(module):
        return [
            m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)
        ]

    assert [m.kernel_size[0] for m in strided(net.heads[3])] == [7, 5, 3, 3]
    assert [m.kernel_size[0] for m in strided(net.dense)] == [7, 5, 3]
    pointwise = [m for m in net.dense if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(m.in_channels, m.out_channels) for m in pointwise] == [(6, 8), (8, 5)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    blocks = [m for m in net.modules() if isinstance(m, BatchNormResBlock)]
    assert len(norms) == len(blocks) > 0  # one per ResBlock: the norm of the sum
    assert all(not any(isinstance(m, torch.nn.BatchNorm2d) for m in b.body) for b in blocks)
    with torch.no_grad():
        out = net.train()(torch.rand(2, 1, 32, 32))
    assert [tuple(t.shape[1:]) for t in out] == [(2, 16, 16), (4, 8, 8), (6, 4, 4), (8, 2, 2), (5,)]
    default = ResNetConditioningNet(chain, 4, 4, 5)  # the CT defaults, positional contract
    assert [m.kernel_size[0] for m in strided(default.dense)] == [5, 5, 5, 5, 3]
    assert len([m for m in default.modules() if isinstance(m, torch.nn.BatchNorm2d)]) == 3 * len(
        [m for m in default.modules() if isinstance(m, BatchNormResBlock)]
    )


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dense_steps": 0}, "dense_steps 0 must lie in \\[1, 3\\]"),
        ({"dense_steps": 4}, "dense_steps 4 must lie in \\[1, 3\\]"),
        ({"kernels": (4,)}, "kernels \\[4\\] must be odd"),
        ({"kernels": ()}, "kernels \\[\\] must be odd"),
    ],
)
def test_bad_net_options_are_named(net, options, message):
    with pytest.raises(ValueError, match=message):
        CONDITIONING_NETS[net]([2, 4, 4], 2, 4, 4, **options)


@pytest.mark.parametrize("net", NETS)
def test_gradients_reach_every_parameter_of_each_knee_net(net):
    """As above, in the MRI conventions at 32 px (3 levels, dense head of 3 halvings)."""
    arch = {
        **KNEE,
        "levels": 3,
        "cond_levels": 2,
        "blocks_per_level": 2,
        "cond_channels": [4, 16, 16, 16],
        "cond_features": 8,
        "dense_dim": 64,
        "dense_cond": 32,
        "dense_cond_steps": 3,
        "cond_net": net,
    }
    torch.manual_seed(0)
    model = _ready(build_model(arch, 32, "normal", 0), 32)
    model.nll_per_dim(torch.rand(4, 32, 32), torch.rand(4, 32, 32)).mean().backward()
    params = dict(model.cond_net.named_parameters())
    assert params
    missing = [name for name, p in params.items() if p.grad is None]
    assert not missing, f"{net}: no gradient for {missing}"
    dead = [name for name, p in params.items() if p.dim() > 1 and not p.grad.abs().sum() > 0]
    assert not dead, f"{net}: zero gradient for {dead}"
