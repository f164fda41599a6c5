"""One training loop for every model: maximum likelihood with Adam, plateau LR decay, clipping.

Checkpoints: `last.pt` every validation (model, optimizer, scheduler, RNG, step) so an
interrupted job resumes where it stopped; `best.pt` holds the weights of the best validation
NLL. A non-finite loss or gradient stops training with the step and the tensor named; the
last good checkpoint stays on disk.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from genrecon.data.pairs import Pairs
from genrecon.models.cinn import ConditionalMultiscaleFlow, bits_per_dim, build_model


class NonFiniteError(FloatingPointError):
    """Training produced NaN or inf."""


def config_fingerprint(model_cfg: dict) -> str:
    return hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:16]


def _batch(pairs: Pairs, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and conditions at `idx`, from memory or read on demand (LazySplit, h5py)."""
    if isinstance(pairs.truth, np.ndarray) and isinstance(pairs.inversion, np.ndarray):
        return torch.from_numpy(pairs.truth[idx]), torch.from_numpy(pairs.inversion[idx])
    unique, inverse = np.unique(idx, return_inverse=True)  # h5py reads sorted, unique indices
    return (
        torch.from_numpy(pairs.truth[unique][inverse]),
        torch.from_numpy(pairs.inversion[unique][inverse]),
    )


def _check_finite(step: int, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise NonFiniteError(
                f"step {step}: {name} is not finite (NaN or inf); lower train.lr or train.clip, "
                "or resume from the last checkpoint with another seed"
            )


def _check_gradients(step: int, model: torch.nn.Module) -> None:
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
            raise NonFiniteError(f"step {step}: gradient of {name} is not finite (NaN or inf)")


@torch.no_grad()
def validation_nll(model: ConditionalMultiscaleFlow, pairs: Pairs, batch: int = 64) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(pairs), batch):
        device = next(model.parameters()).device
        x = torch.from_numpy(pairs.truth[start : start + batch]).to(device)
        c = torch.from_numpy(pairs.inversion[start : start + batch]).to(device)
        total += model.nll_per_dim(x, c).sum().item()
    model.train()
    return total / len(pairs)


def load_checkpoint(path: Path) -> tuple[ConditionalMultiscaleFlow, dict]:
    """Rebuild a trained model from a checkpoint (architecture travels with the weights)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: checkpoint not found (train the model first)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(state["architecture"], state["image_size"], state["base"], state["seed"])
    model.load_state_dict(state["model"])
    model.eval()
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), state


def train(
    model_cfg: dict,
    train_pairs: Pairs,
    val_pairs: Pairs,
    out_dir: Path,
    seed: int,
    log_metric=None,
) -> dict:
    """Train one model; returns a summary (best validation bits/dim, steps, parameters)."""
    cfg = model_cfg["train"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_size = train_pairs.truth.shape[-1]
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(model_cfg["architecture"], image_size, model_cfg["base"], seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.8, patience=cfg["plateau_patience"]
    )
    generator = torch.Generator().manual_seed(seed)
    fingerprint = config_fingerprint(model_cfg)
    step, best, history = 0, math.inf, []
    last = out_dir / "last.pt"
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False)
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            step, best, history = state["step"], state["best"], state["history"]
            print(f"resuming {out_dir} from step {step}")
    meta = {
        "architecture": model_cfg["architecture"],
        "image_size": image_size,
        "base": model_cfg["base"],
        "seed": seed,
        "fingerprint": fingerprint,
    }
    model.train()
    running = []
    with tqdm(total=cfg["steps"], initial=step, desc=f"train {model_cfg['name']}") as bar:
        while step < cfg["steps"]:
            idx = torch.randint(len(train_pairs), (cfg["batch_size"],), generator=generator)
            x, c = _batch(train_pairs, idx.numpy())
            if model_cfg.get("train_noise", 0.0) > 0:
                x = x + model_cfg["train_noise"] * torch.randn(x.shape, generator=generator)
            loss = model.nll_per_dim(x.to(device), c.to(device)).mean()
            _check_finite(step, loss=loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _check_gradients(step, model)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
            optimizer.step()
            step += 1
            running.append(loss.item())
            bar.update(1)
            if step % 50 == 0 and log_metric:
                log_metric("train_bpd", bits_per_dim(float(np.mean(running[-50:]))), step)
            if step % cfg["val_every"] == 0 or step == cfg["steps"]:
                val = validation_nll(model, val_pairs)
                scheduler.step(val)
                row = {
                    "step": step,
                    "train_bpd": bits_per_dim(float(np.mean(running))),
                    "val_bpd": bits_per_dim(val),
                    "lr": optimizer.param_groups[0]["lr"],
                }
                running = []
                history.append(row)
                bar.set_postfix(val_bpd=f"{row['val_bpd']:.3f}")
                if log_metric:
                    log_metric("val_bpd", row["val_bpd"], step)
                    log_metric("lr", row["lr"], step)
                if val < best:
                    best = val
                    torch.save(
                        {**meta, "model": model.state_dict(), "step": step}, out_dir / "best.pt"
                    )
                torch.save(
                    {
                        **meta,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "generator": generator.get_state(),
                        "step": step,
                        "best": best,
                        "history": history,
                    },
                    last,
                )
    with open(out_dir / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    return {
        "best_val_bpd": bits_per_dim(best),
        "steps": step,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
