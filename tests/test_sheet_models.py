"""Every cINN row of the experiments sheet builds the model it names, and the conditioning loss
(seed 000 Eq. 20) is the NLL plus alpha * MSE(H(y), x), only where the flow has an H(y)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from genrecon import config
from genrecon.methods import method_class
from genrecon.methods.amortised.cinn import CINNModel
from genrecon.models.cinn import ConditionalMultiscaleFlow
from genrecon.models.cinn2020 import ConditionalFlow2020
from genrecon.models.conditioning import CONDITIONING_NETS
from genrecon.models.iunet import ConditionalIUNet

KINDS = {
    "multiscale": ConditionalMultiscaleFlow,
    "iunet": ConditionalIUNet,
    "cinn2020": ConditionalFlow2020,
}
BASES = {"normal": "NormalBase", "radial": "RadialBase"}
ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _settings(scale: str) -> dict:
    return config.resolve(config.load_params(ROOT / "params.yaml"), scale, ROOT)


def _cinn_rows(scale: str) -> list[tuple[str, dict]]:
    settings = _settings(scale)
    return [
        (name, config.fit_settings(settings, name))
        for name, row in settings["experiments"].items()
        if row["method"] == "cinn" and row["dataset"] in ("lodopab", "fastmri_knee")
    ]


@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_every_ct_and_mri_cinn_row_builds_the_parts_it_names(scale):
    """Tables 2-5 and seed 001's Table 1: flow kind, conditioning net, base, training noise and
    loss weight as the row says, and the training settings the authors used for that model."""
    rows = _cinn_rows(scale)
    assert {job["dataset"] for _, job in rows} == {"lodopab", "fastmri_knee"}
    seen_kinds = set()
    for name, job in rows:
        variant = {k: v for k, v in job["variant"].items() if k != "architecture"}
        method = method_class("cinn")(**variant)
        spec = method.spec(job, (64, 64))  # the parts do not depend on the image size
        model = method.build(spec)
        arch = job["variant"]["architecture"]
        kind = arch.get("kind", "multiscale")
        seen_kinds.add(kind)
        assert isinstance(model.flow, KINDS[kind]), name
        if kind == "multiscale":  # Table 2: which conditioning network H
            net = CONDITIONING_NETS[arch.get("cond_net", "resnet")]
            assert type(model.flow.cond_net) is net, name
        if kind == "iunet":  # H(y) ends in a sigmoid for [0, 1] CT only
            assert model.flow.arch.sigmoid == (job["dataset"] == "lodopab"), name
        assert type(model.flow.base).__name__ == BASES[variant.get("base", "normal")], name
        assert model.train_noise == variant.get("train_noise", 0.0), name
        assert model.cond_loss == variant.get("cond_loss", 0.0), name
        train, default = job["train"], _settings(scale)["train"][job["dataset"]]
        if name.startswith("lodopab_iunet"):  # the authors' lodopab_iunet.py
            assert train["batch_size"] == 6 and train["weight_decay"] == 0.0, name
        elif name.startswith("knee_iunet"):  # their mri_iunet.py: no decay, ~constant lr
            assert train["weight_decay"] == 0.0 and train["plateau_factor"] == 0.999, name
            assert train["batch_size"] == default["batch_size"], name
        elif kind == "cinn2020" and scale == "paper":  # seed 001 App. 6.1
            assert (train["batch_size"], train["steps"]) == (10, 15000), name
            assert train["weight_decay"] == 1e-5, name
        elif kind != "cinn2020":
            assert train == default, name
    assert "cinn2020" in seen_kinds and "iunet" in seen_kinds


def _iunet_model(cond_loss: float) -> CINNModel:
    arch = {"kind": "iunet", "levels": 2, "depth": 1}
    return CINNModel(
        {"architecture": arch, "image_size": 8, "base": "normal", "seed": 0, "cond_loss": cond_loss}
    )


def test_conditioning_loss_is_nll_plus_alpha_mse_and_trains_the_image_head():
    torch.manual_seed(0)
    x, cond = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    plain, weighted = _iunet_model(0.0), _iunet_model(2.5)
    batch = {"x": x, "cond": cond}
    plain.loss(batch)  # ActNorm's data-dependent initialisation, then the same weights in both
    weighted.load_state_dict(plain.state_dict())
    plain.eval(), weighted.eval()  # BatchNorm on running statistics: the same in both
    nll = plain.loss(batch)
    total = weighted.loss(batch)
    mse = (weighted.flow.conditioning_output(cond) - x).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(total, nll + 2.5 * mse)
    total.sum().backward()
    plain.loss(batch).sum().backward()
    # the image head H(y) learns from the conditioning loss only, never from the likelihood
    assert any(p.grad.abs().sum() > 0 for p in weighted.flow.cond_net.head.parameters())
    assert all(p.grad is None for p in plain.flow.cond_net.head.parameters())


def test_conditioning_loss_needs_an_image_space_conditioning_output():
    arch = {
        "levels": 2,
        "cond_levels": 2,
        "blocks_per_level": 2,
        "cond_channels": [4, 8, 8],
        "cond_features": 4,
        "dense_dim": 16,
        "dense_cond": 4,
    }
    with pytest.raises(ValueError, match="cond_loss"):
        CINNModel(
            {"architecture": arch, "image_size": 8, "base": "normal", "seed": 0, "cond_loss": 1.0}
        )


def test_unknown_architecture_kind_is_named():
    with pytest.raises(ValueError, match="kind 'unet'"):
        CINNModel({"architecture": {"kind": "unet"}, "image_size": 8, "base": "normal", "seed": 0})
