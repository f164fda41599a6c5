"""The Glow generator of seed 003 (Li 2023, App. F), built from FrEIA 0.2 blocks.

App. F: "4 multi-scale levels and 32 flow-steps, additive coupling layers", 5-bit CelebA-HQ at
128 px, Adam lr 1e-4, batch 64, sampling temperature 0.7. The layout and every number below not
in the paper come from the authors' Glow, dgminv/networks/models_cond_glow.py (after
rosinality/glow-pytorch), used with affine=False, conv_lu=True, cond=False, and its trainer
tasks/glow/training/train.py (read for facts; no code is taken from either).

Spec keys (defaults = the paper's model): channels, image_size (required); levels 4, steps 32,
hidden 512, coupling "additive", lu true, n_bits 5, split_prior true. `coupling`: the issue
text asks for affine couplings, App. F and the authors' run (affine=False) use additive ones;
the default follows the paper, "affine" is Kingma & Dhariwal's variant as theirs.
`split_prior: false` replaces the learned split and top priors by N(0, I) on z itself.

Per level (`Block` there): squeeze 2x2 (C -> 4C channels); `steps` flow steps, each ActNorm ->
invertible 1x1 convolution (LU-parameterised) -> coupling; then, on every level but the last,
the channels are split in halves: the first half h goes on to the next level, the second half z
is standardised by a learned prior, eps = (z - mean(h)) * exp(-log_sd(h)), with
(mean, log_sd) = ZeroConv2d(h). The last level keeps all channels and standardises them with a
learned "top" prior, (mean, log_sd) = ZeroConv2d(zeros): the authors feed that convolution zeros
padded with ones, so the top prior is a learned constant field that differs only at the border.
So `encode` gives one standard-normal eps per level ([6,64,64], [12,32,32], [24,16,16],
[96,8,8] for 3 x 128 x 128; their `calc_z_shapes`), `decode(eps)` the image, and the split
priors' -sum(log_sd) is part of the log-determinant of x -> eps.

The coupling (`AffineCouplingCHV`, sp_dim=1, cond=False): the first half of the channels x1
conditions the second, y2 = x2 + NN(x1) (additive; "affine": y2 = x2 * sigmoid(s + 2) + t).
NN = conv3x3 (C/2 -> hidden) -> ReLU -> conv1x1 (hidden -> hidden) -> ReLU -> ZeroConv2d
(hidden -> C/2, or C for affine), hidden = 512 (their filter_size), the two first convolutions
drawn N(0, 0.05^2) with zero bias. ZeroConv2d: pad with the value 1, conv3x3 without padding,
weights and bias zero, output * exp(3 * scale) with a learned per-channel `scale` (zero): every
coupling and prior is the identity at initialisation.

ActNorm (theirs): y = scale * (x + loc) per channel; on its first forward batch,
loc = -mean, scale = 1 / (std + 1e-6) (torch's unbiased std over batch and pixels). Here the
initialisation runs on the first pass in the data -> latent direction made in training mode
(the training loop's first `loss` call; the authors also ran their init batch in training mode)
and is recorded in the buffer `initialized`, saved in the state dict: a model loaded from a
checkpoint (`load_state_dict`) has initialized = 1 and never re-initialises, also when trained
on. A decode on a fresh model does not initialise (ActNorm is then the identity).

Invertible 1x1 convolution (`InvConv2dLU`): W = P (L + I) (U + diag(sign * exp(log_s))), from
the LU factors of a random orthogonal matrix, P and sign fixed; like theirs, L and U are stored
as full C x C matrices of which only the strict lower / upper triangle acts, so the parameter
count is 2 C^2 + C per convolution, as theirs. `lu: false` gives their plain `InvConv2d` (C^2)
on every level (their last Block is built without passing conv_lu, so their --no_lu kept LU
there; the paper's model uses LU throughout, so this only matters for that ablation).

Data and loss (train.py): images in [0, 1] are quantised to n_bits = 5 (x * 255, floor of
/ 2^(8 - n_bits)), divided by n_bins = 32, shifted by -0.5 and dequantised with U(0, 1/n_bins)
noise; the loss is -log p(x)/D + log(n_bins) per dimension (their `calc_loss`, in bits there:
ours is nats, the training loop divides by ln 2). The flow here works in [-0.5, 0.5) exactly
as theirs; `decode` adds 0.5 back (glow_wrapper1.py: image = G(z) + 0.5) and `encode`
subtracts it, so the lead sees images in [0, 1]. A shift has unit Jacobian: `log_prob(x)` is
the continuous density of x in [0, 1]^D, in nats.

FrEIA blocks used, and where this differs from the brief's list:
- GraphINN with InputNode / Node / OutputNode, FrEIA's `Split` (first half kept, as their
  `chunk(2, 1)`), and `IRevNetDownsampling` for the squeeze. Its channel order (FrEIA's default,
  non-legacy backend: channel 4c + 2dy + dx) IS the authors' squeeze order (view + permute to
  (C, dy, dx) -> 4c + 2dy + dx; tested), so P1's latent layout and the splits see the same
  channels as theirs. The legacy backend orders 4 positions outermost instead; for the flow
  itself that would not matter (the next ActNorm and 1x1 convolution absorb any fixed channel
  permutation), but it would for loading the authors' weights. `Squeeze` subclasses it only to
  compute the same permutation by reshaping: FrEIA's strided convolution holds its 0/1 kernel
  as an nn.Parameter (16 C numbers that would be counted and handed to Adam), and on CUDA a
  convolution runs in TF32 by default (cuDNN) or bf16 under the training loop's autocast, which
  rounds the input: the squeeze would stop being exactly invertible there.
- Couplings: FrEIA's NICECouplingBlock and GLOWCouplingBlock are two-sided (two subnets per
  block, each half transformed in turn): twice the authors' subnets, so neither the model nor
  its parameter count would be theirs. Ours are one-sided as theirs: `affine` is FrEIA's
  `AffineCouplingOneSided` with the clamp replaced by their log-sigmoid(s + 2) scale (theirs
  computes (x2 + t) * sigmoid(s + 2), ours x2 * sigmoid(s + 2) + t: t reparameterised, same
  parameters, same map at initialisation); `additive` is `AdditiveCoupling` below.
- ActNorm is ours: FrEIA's initialises on the first call in either direction (a decode would
  initialise it from latents), parameterises log-scale without the 1e-6, and keeps its init flag
  out of the state dict.
- The learned split / top priors are FrEIA InvertibleModules (`SplitPrior`, `TopPrior`).

Training differences that are not this file's (the shared loop, genrecon.training): the
authors used Adam betas (0.9, 0.99), clipped gradients by value (5) then norm (100), had NO lr
warm-up (its line is commented out: warmup_lr = lr), and took no optimiser step on the ActNorm
init batch; the loop uses Adam's default betas, its own norm clip, and steps on the first batch
too. Their n_pixel is 3 * H * W hard-coded; ours is C * H * W (equal for RGB). Their weights
draw from numpy's RNG; ours from torch's (seeded by the loop). Samples: n_sample 20 at temp 0.7
(train.py); `sample` takes both.

P1 (`unsqueeze_latent` / `squeeze_latent`): the authors' GlowInv.squeeze / GlowInv.unsqueeze
(models_cond_glow.py, used by glow_wrapper1.py), named here from the latent's side: one
image-shaped latent (b, C, H, W) is squeezed level by level exactly as the flow squeezes and
splits, the second half of each level's channels being that level's eps.

Quantisation: x * 255 is first rounded to the 8-bit grid, then floored to n_bits. For 8-bit
images divided by 255 that is their floor(x * 255 / 2^(8 - n_bits)) in exact arithmetic; the
rounding guards against x * 255 landing a float ulp below an integer (which floors a whole bin
down). Validation (generator None) dequantises to mid-bin: deterministic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from FrEIA.framework import GraphINN, InputNode, Node, OutputNode
from FrEIA.modules import AffineCouplingOneSided, InvertibleModule, IRevNetDownsampling, Split
from torch import Tensor, nn

COUPLINGS = ("additive", "affine")
#: the paper's Glow (App. F; models_cond_glow.py / train.py defaults)
DEFAULTS: dict[str, Any] = {
    "levels": 4,
    "steps": 32,
    "hidden": 512,
    "coupling": "additive",
    "lu": True,
    "n_bits": 5,
    "split_prior": True,
}
REQUIRED = ("channels", "image_size")
#: keys a spec may carry for provenance only
IGNORED = ("kind",)
#: the authors' sampling temperature (train.py --temp; glow_wrapper*.py temp)
TEMPERATURE = 0.7
#: models_cond_glow.py: the coupling subnet's first two convolutions are drawn N(0, 0.05^2)
SUBNET_INIT_STD = 0.05
#: ZeroConv2d multiplies its output by exp(ZERO_CONV_GAIN * scale)
ZERO_CONV_GAIN = 3.0
#: ActNorm's init: scale = 1 / (std + ACTNORM_EPS)
ACTNORM_EPS = 1e-6
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# ---- spec --------------------------------------------------------------------------------------


def _positive_int(cfg: dict[str, Any], key: str) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"glow spec: {key} must be a positive integer, got {value!r}")
    return value


def resolve_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with the paper's defaults filled in, checked; each error names its key."""
    unknown = set(spec) - set(DEFAULTS) - set(REQUIRED) - set(IGNORED)
    if unknown:
        raise ValueError(
            f"glow spec: unknown keys {sorted(unknown)}; known: {[*REQUIRED, *DEFAULTS]}"
        )
    missing = [key for key in REQUIRED if key not in spec]
    if missing:
        raise ValueError(f"glow spec: missing keys {missing}")
    cfg = {**DEFAULTS, **spec}
    for key in ("channels", "image_size", "levels", "steps", "hidden", "n_bits"):
        _positive_int(cfg, key)
    if cfg["n_bits"] > 8:
        raise ValueError(f"glow spec: n_bits must be in 1..8, got {cfg['n_bits']}")
    if cfg["coupling"] not in COUPLINGS:
        raise ValueError(f"glow spec: coupling {cfg['coupling']!r} not in {COUPLINGS}")
    for key in ("lu", "split_prior"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"glow spec: {key} must be true or false, got {cfg[key]!r}")
    scale = 2 ** cfg["levels"]
    if cfg["image_size"] % scale:
        raise ValueError(
            f"glow spec: image_size {cfg['image_size']} is not divisible by 2**levels = {scale}"
        )
    return cfg


def latent_shapes_for(channels: int, image_size: int, levels: int) -> list[tuple[int, int, int]]:
    """(C, H, W) of eps per level: the split-off halves, then the last level's whole tensor.

    The authors' `calc_z_shapes`: each level squeezes (4 C, S/2) and hands half on, so level i
    (i < levels) gives (2^i C, S/2^i), the last (2^(levels+1) C, S/2^levels).
    """
    shapes, c, size = [], channels, image_size
    for _ in range(levels - 1):
        c, size = 2 * c, size // 2
        shapes.append((c, size, size))
    size //= 2
    shapes.append((4 * c, size, size))
    return shapes


# ---- the authors' squeeze and the P1 map -------------------------------------------------------


def squeeze2x2(x: Tensor) -> Tensor:
    """(b, C, H, W) -> (b, 4C, H/2, W/2), channel 4c + 2dy + dx (theirs and FrEIA's order)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2x2(x: Tensor) -> Tensor:
    """The inverse of `squeeze2x2`."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


def latent_to_levels(z: Tensor, levels: int) -> list[Tensor]:
    """P1: one image-shaped latent (b, C, H, W) -> the per-level eps list.

    The authors' `GlowInv.squeeze` (models_cond_glow.py; used by glow_wrapper1.py): squeeze, hand
    the first half of the channels on, keep the second half as this level's eps (the same halves
    the flow splits); the last level keeps its whole squeezed tensor.
    """
    out, current = [], z
    for level in range(levels):
        squeezed = squeeze2x2(current)
        if level == levels - 1:
            out.append(squeezed)
        else:
            current, split_off = squeezed.chunk(2, dim=1)
            out.append(split_off)
    return out


def levels_to_latent(eps: Sequence[Tensor]) -> Tensor:
    """The inverse of `latent_to_levels` (the authors' `GlowInv.unsqueeze`)."""
    current = unsqueeze2x2(eps[-1])
    for split_off in reversed(eps[:-1]):
        current = unsqueeze2x2(torch.cat([current, split_off], dim=1))
    return current


# ---- building blocks -----------------------------------------------------------------------


class ZeroConv2d(nn.Module):
    """Pad with ones, conv3x3 (zero weights and bias), times exp(3 * scale): zero at init."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=0)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.scale = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1), value=1.0)) * torch.exp(ZERO_CONV_GAIN * self.scale)


def coupling_subnet(cin: int, cout: int, hidden: int) -> nn.Sequential:
    """conv3x3 -> ReLU -> conv1x1 -> ReLU -> ZeroConv2d (the authors' coupling network)."""
    first = nn.Conv2d(cin, hidden, 3, padding=1)
    middle = nn.Conv2d(hidden, hidden, 1)
    for conv in (first, middle):
        nn.init.normal_(conv.weight, 0.0, SUBNET_INIT_STD)
        nn.init.zeros_(conv.bias)
    return nn.Sequential(first, nn.ReLU(), middle, nn.ReLU(), ZeroConv2d(hidden, cout))


def _per_sample(value: Tensor, like: Tensor) -> Tensor:
    """A scalar log-determinant as one entry per sample of `like`."""
    return value.expand(like.shape[0])


def _zeros_jac(x: Tensor) -> Tensor:
    return x.new_zeros(x.shape[0])


def _wide(x: Tensor) -> Tensor:
    """At least float32: a log-determinant summed in bf16 (autocast) would lose its digits."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class Squeeze(IRevNetDownsampling):
    """FrEIA's IRevNetDownsampling (its default channel order) computed by an exact reshape.

    The parent's 0/1 convolution kernel is removed: it is an nn.Parameter (counted, given to
    the optimiser), and a convolution is not exact under TF32 / bf16 autocast on CUDA.
    """

    def __init__(self, dims_in: list[tuple[int, ...]], dims_c: Any = None) -> None:
        super().__init__(dims_in, dims_c, legacy_backend=False)
        del self.downsample_kernel

    def forward(self, x, c=None, jac=True, rev=False):
        out = unsqueeze2x2(x[0]) if rev else squeeze2x2(x[0])
        return (out,), _zeros_jac(x[0])


class ActNorm(InvertibleModule):
    """y = scale * (x + loc) per channel, data-initialised (see the module docstring)."""

    def __init__(self, dims_in: list[tuple[int, ...]], dims_c: Any = None) -> None:
        super().__init__(dims_in, dims_c)
        channels = dims_in[0][0]
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        # a host-side mirror of `initialized`, so that a step does not sync with the GPU at every
        # ActNorm; loading a state dict clears it, and the buffer is read again once
        self._seen_initialized = False
        self._register_load_state_dict_pre_hook(self._forget_initialized)

    def _forget_initialized(self, *args: Any, **kwargs: Any) -> None:
        self._seen_initialized = False

    def _needs_init(self) -> bool:
        if not self._seen_initialized:
            self._seen_initialized = bool(self.initialized)
        return not self._seen_initialized

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """loc = -mean, scale = 1 / (std + 1e-6) per channel over batch and pixels."""
        flat = x.detach().transpose(0, 1).reshape(x.shape[1], -1)
        mean = flat.mean(dim=1)
        std = flat.std(dim=1) if flat.shape[1] > 1 else torch.ones_like(mean)
        self.loc.copy_(-mean.reshape(self.loc.shape))
        self.scale.copy_((1.0 / (std + ACTNORM_EPS)).reshape(self.scale.shape))
        self.initialized.fill_(1)
        self._seen_initialized = True

    def forward(self, x, c=None, rev=False, jac=True):
        x = x[0]
        if not rev and self.training and self._needs_init():
            self.initialize(x)
        logdet = x.shape[2] * x.shape[3] * torch.log(torch.abs(self.scale)).sum()
        if rev:
            return (x / self.scale - self.loc,), -_per_sample(logdet, x)
        return (self.scale * (x + self.loc),), _per_sample(logdet, x)

    def output_dims(self, input_dims):
        return input_dims


class InvertibleConv1x1(InvertibleModule):
    """Invertible 1x1 convolution, LU-parameterised (`lu`) or a plain matrix (theirs both)."""

    def __init__(self, dims_in: list[tuple[int, ...]], dims_c: Any = None, lu: bool = True):
        super().__init__(dims_in, dims_c)
        channels = dims_in[0][0]
        self.lu = lu
        # a random orthogonal start, factorised on the CPU (also when built on the meta device)
        q, _ = torch.linalg.qr(torch.randn(channels, channels, device="cpu"))
        device = torch.get_default_device()
        if lu:
            p, lower, upper = torch.linalg.lu(q)
            s = torch.diagonal(upper)
            self.register_buffer("perm", p.to(device))
            self.register_buffer("sign", torch.sign(s).to(device))
            # full matrices as theirs (w_l, w_u): only the strict triangles act
            self.lower = nn.Parameter(lower.to(device))
            self.upper = nn.Parameter(torch.triu(upper, 1).to(device))
            self.log_s = nn.Parameter(torch.log(torch.abs(s)).to(device))
        else:
            self.weight = nn.Parameter(q.to(device))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.log_s.shape[0], dtype=self.log_s.dtype, device=self.log_s.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_s))
        return lower, upper

    def matrix(self) -> Tensor:
        """W (C, C): y[:, i] = sum_j W[i, j] x[:, j]."""
        if not self.lu:
            return self.weight
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def inverse_matrix(self) -> Tensor:
        """W^-1, by triangular solves of the LU factors (or a plain inverse)."""
        if not self.lu:
            return torch.linalg.inv(self.weight)
        lower, upper = self._factors()
        eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
        inv_lower = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        inv_upper = torch.linalg.solve_triangular(upper, eye, upper=True)
        return inv_upper @ inv_lower @ self.perm.T

    def log_abs_det(self) -> Tensor:
        """log |det W| (of the matrix; the layer's is this times H * W)."""
        if self.lu:
            return self.log_s.sum()
        return torch.linalg.slogdet(self.weight)[1]

    def forward(self, x, c=None, rev=False, jac=True):
        x = x[0]
        matrix = self.inverse_matrix() if rev else self.matrix()
        out = F.conv2d(x, matrix.to(x.dtype)[:, :, None, None])
        logdet = x.shape[2] * x.shape[3] * self.log_abs_det()
        return (out,), _per_sample(-logdet if rev else logdet, x)

    def output_dims(self, input_dims):
        return input_dims


class AdditiveCoupling(InvertibleModule):
    """One-sided additive coupling: y = (x1, x2 + NN(x1)), x1 the first half (theirs)."""

    def __init__(
        self,
        dims_in: list[tuple[int, ...]],
        dims_c: Any = None,
        subnet_constructor: Callable[[int, int], nn.Module] | None = None,
    ) -> None:
        super().__init__(dims_in, dims_c)
        if subnet_constructor is None:
            raise ValueError("AdditiveCoupling: subnet_constructor is required")
        channels = dims_in[0][0]
        self.split = channels // 2
        self.subnet = subnet_constructor(self.split, channels - self.split)

    def forward(self, x, c=None, rev=False, jac=True):
        x1, x2 = x[0][:, : self.split], x[0][:, self.split :]
        shift = self.subnet(x1)
        y2 = x2 - shift if rev else x2 + shift
        return (torch.cat([x1, y2], dim=1),), _zeros_jac(x[0])

    def output_dims(self, input_dims):
        return input_dims


def glow_log_scale(raw: Tensor) -> Tensor:
    """log sigmoid(raw + 2): the authors' affine scale, as FrEIA's clamp (with clamp = 1)."""
    return F.logsigmoid(raw + 2.0)


class SplitPrior(InvertibleModule):
    """(h, z) -> (h, (z - mean(h)) * exp(-log_sd(h))), (mean, log_sd) = ZeroConv2d(h)."""

    def __init__(self, dims_in: list[tuple[int, ...]], dims_c: Any = None) -> None:
        super().__init__(dims_in, dims_c)
        self.net = ZeroConv2d(dims_in[0][0], 2 * dims_in[1][0])

    def forward(self, x, c=None, rev=False, jac=True):
        h, z = x
        mean, log_sd = self.net(h).chunk(2, dim=1)
        logdet = _wide(log_sd).flatten(1).sum(1)
        if rev:
            return (h, mean + torch.exp(log_sd) * z), logdet
        return (h, (z - mean) * torch.exp(-log_sd)), -logdet

    def output_dims(self, input_dims):
        return input_dims


class TopPrior(InvertibleModule):
    """z -> (z - mean) * exp(-log_sd), (mean, log_sd) = ZeroConv2d(zeros): a learned field."""

    def __init__(self, dims_in: list[tuple[int, ...]], dims_c: Any = None) -> None:
        super().__init__(dims_in, dims_c)
        self.shape = tuple(dims_in[0])
        self.net = ZeroConv2d(self.shape[0], 2 * self.shape[0])

    def forward(self, x, c=None, rev=False, jac=True):
        z = x[0]
        mean, log_sd = self.net(z.new_zeros((1, *self.shape))).chunk(2, dim=1)
        logdet = _per_sample(_wide(log_sd).sum(), z)
        if rev:
            return (mean + torch.exp(log_sd) * z,), logdet
        return ((z - mean) * torch.exp(-log_sd),), -logdet

    def output_dims(self, input_dims):
        return input_dims


def build_flow(cfg: dict[str, Any]) -> GraphINN:
    """The GraphINN x - 0.5 -> (eps_1, ..., eps_levels) of a resolved spec."""
    size = cfg["image_size"]
    subnet = functools.partial(coupling_subnet, hidden=cfg["hidden"])
    if cfg["coupling"] == "additive":
        coupling, coupling_args = AdditiveCoupling, {"subnet_constructor": subnet}
    else:
        coupling = AffineCouplingOneSided
        coupling_args = {
            "subnet_constructor": subnet,
            "clamp": 1.0,
            "clamp_activation": glow_log_scale,
        }
    nodes: list[Node] = [InputNode(cfg["channels"], size, size, name="x")]
    current: Node | tuple[Node, int] = nodes[0]
    for level in range(cfg["levels"]):
        nodes.append(Node(current, Squeeze, {}, name=f"squeeze{level}"))
        for step in range(cfg["steps"]):
            name = f"level{level}.step{step}"
            nodes.append(Node(nodes[-1], ActNorm, {}, name=f"{name}.actnorm"))
            nodes.append(Node(nodes[-1], InvertibleConv1x1, {"lu": cfg["lu"]}, name=f"{name}.1x1"))
            nodes.append(Node(nodes[-1], coupling, coupling_args, name=f"{name}.coupling"))
        if level < cfg["levels"] - 1:
            split = Node(nodes[-1], Split, {}, name=f"split{level}")
            nodes.append(split)
            if cfg["split_prior"]:
                prior = Node([(split, 0), (split, 1)], SplitPrior, {}, name=f"prior{level}")
                nodes.append(prior)
                current, eps = (prior, 0), (prior, 1)
            else:
                current, eps = (split, 0), (split, 1)
        else:
            eps = (nodes[-1], 0)
            if cfg["split_prior"]:
                nodes.append(Node(nodes[-1], TopPrior, {}, name="prior_top"))
                eps = (nodes[-1], 0)
        nodes.append(OutputNode(eps, name=f"eps{level}"))
    return GraphINN(nodes, force_tuple_output=True)


# ---- the model -------------------------------------------------------------------------------


def standard_normal_log_density(eps: Sequence[Tensor]) -> Tensor:
    """sum over every level and entry of log N(eps; 0, 1), per sample (b,)."""
    total = 0.0
    for e in eps:
        e = _wide(e)
        total = total - 0.5 * e.square().flatten(1).sum(1) - _HALF_LOG_2PI * e[0].numel()
    return total


def quantize(x: Tensor, n_bits: int) -> Tensor:
    """Images in [0, 1] -> the lower edge of their n_bits bin, k / 2^n_bits (train.py)."""
    grey = torch.round(x.clamp(0.0, 1.0) * 255.0)
    return torch.floor(grey / 2 ** (8 - n_bits)) / 2**n_bits


class GlowModel(nn.Module):
    """The authors' Glow (see the module docstring); images in [0, 1], eps standard normal."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = dict(spec)
        cfg = resolve_spec(spec)
        self.cfg = cfg
        self.channels = int(cfg["channels"])
        self.image_size = int(cfg["image_size"])
        self.levels = int(cfg["levels"])
        self.n_bits = int(cfg["n_bits"])
        self.n_bins = 2**self.n_bits
        self.latent_shapes: list[tuple[int, int, int]] = latent_shapes_for(
            self.channels, self.image_size, self.levels
        )
        self.flow = build_flow(cfg)

    @property
    def _reference(self) -> Tensor:
        return next(self.parameters())

    @property
    def dimensions(self) -> int:
        return self.channels * self.image_size**2

    # ---- checks ------------------------------------------------------------------------------
    def _check_image(self, x: Tensor, name: str = "x") -> None:
        expected = (self.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{name}: expected shape (b, {expected}), got {tuple(x.shape)}")

    def _check_levels(self, eps: Sequence[Tensor], name: str = "eps") -> None:
        shapes = [tuple(e.shape[1:]) for e in eps]
        if shapes != [tuple(s) for s in self.latent_shapes]:
            raise ValueError(
                f"{name}: expected one tensor per level of shapes (b, *{self.latent_shapes}), "
                f"got {[tuple(e.shape) for e in eps]}"
            )

    # ---- the map -------------------------------------------------------------------------------
    def encode_with_logdet(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """eps per level and log |det d eps / d x| (b,), split and top priors included."""
        self._check_image(x)
        eps, logdet = self.flow(x - 0.5, jac=True)
        return list(eps), logdet

    def encode(self, x: Tensor) -> list[Tensor]:
        """Images (b, C, H, W) in [0, 1] -> standard-normal eps per level (`latent_shapes`)."""
        self._check_image(x)
        eps, _ = self.flow(x - 0.5, jac=False)
        return list(eps)

    def decode(self, eps: Sequence[Tensor]) -> Tensor:
        """eps per level (already times the temperature) -> images in [0, 1] (unclipped)."""
        self._check_levels(eps)
        x, _ = self.flow(list(eps), rev=True, jac=False)
        return x[0] + 0.5

    def log_prob(self, x: Tensor) -> Tensor:
        """log density (b,) in nats of x in [0, 1]^D: continuous, no quantisation term."""
        eps, logdet = self.encode_with_logdet(x)
        return standard_normal_log_density(eps) + logdet

    # ---- training ------------------------------------------------------------------------------
    def dequantize(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """n_bits quantisation + U(0, 1/n_bins) noise from `generator` (CPU); None: mid-bin."""
        q = quantize(x, self.n_bits)
        if generator is None:
            return q + 0.5 / self.n_bins
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)
        return q + noise.to(x.device) / self.n_bins

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The authors' objective per image, nats per dimension: -log p(x~)/D + log n_bins.

        x~ = the dequantised 5-bit image (noise from `generator`, or mid-bin when None); the
        training loop's bits/dim (this / ln 2) is their `calc_loss`.
        """
        if "x" not in batch:
            raise KeyError(f"glow loss: the batch has no 'x' (keys {sorted(batch)})")
        reference = self._reference
        x = batch["x"].to(device=reference.device, dtype=reference.dtype)
        if x.dim() == 3 and self.channels == 1:  # grey data sets store (b, H, W) (knee_pd)
            x = x.unsqueeze(1)
        x = self.dequantize(x, generator)
        return -self.log_prob(x) / self.dimensions + math.log(self.n_bins)

    @torch.no_grad()
    def sample(
        self, num: int, temperature: float = TEMPERATURE, generator: torch.Generator | None = None
    ) -> Tensor:
        """`num` images from eps ~ N(0, temperature^2 I), drawn on the CPU (no autograd)."""
        reference = self._reference
        eps = [
            (
                torch.randn((num, *shape), generator=generator, dtype=reference.dtype) * temperature
            ).to(reference.device)
            for shape in self.latent_shapes
        ]
        return self.decode(eps)

    # ---- the P1 map ---------------------------------------------------------------------------
    def unsqueeze_latent(self, z: Tensor) -> list[Tensor]:
        """P1: an image-shaped latent (b, C, H, W) -> eps per level (their GlowInv.squeeze)."""
        self._check_image(z, "z")
        return latent_to_levels(z, self.levels)

    def squeeze_latent(self, eps: Sequence[Tensor]) -> Tensor:
        """The inverse of `unsqueeze_latent` (their GlowInv.unsqueeze)."""
        self._check_levels(eps)
        return levels_to_latent(eps)
