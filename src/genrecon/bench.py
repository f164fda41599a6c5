"""Benchmarks that print figures (no timed tests): projector, FBP, training and sampling throughput.

Measured at the smoke geometry/model and at LoDoPaB's geometry/model size, on whatever device
is present (CUDA when available). Results go to a JSON file that the report shows.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genrecon.config import resolve
from genrecon.models.cinn import build_model
from genrecon.physics.ct import CTGeometry, apply, fbp_operator, ray_transform


def _time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.mean(times), statistics.pstdev(times)


def _projector(name: str, geometry: CTGeometry, repeats: int) -> list[dict]:
    image = np.random.default_rng(0).random((geometry.image_size,) * 2).astype(np.float32)
    op = ray_transform(geometry)
    sino = apply(op, image)
    fbp = fbp_operator(geometry)
    out = []
    for what, fn in (
        ("forward projection", lambda: apply(op, image)),
        ("FBP", lambda: apply(fbp, sino)),
    ):
        mean, std = _time(fn, repeats)
        out.append(
            {
                "name": f"{what}, {name}",
                "unit": "ms/slice",
                "value": 1e3 * mean,
                "std": 1e3 * std,
                "repeats": repeats,
            }
        )
    return out


def _training(
    name: str, arch: dict, size: int, batch: int, repeats: int, device: str
) -> list[dict]:
    model = build_model(arch, size, "normal", 0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.rand(batch, size, size, device=device)
    c = torch.rand(batch, size, size, device=device)

    def step():
        loss = model.nll_per_dim(x, c).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    mean, std = _time(step, repeats)
    out = [
        {
            "name": f"cINN training (forward+backward), {name}, batch {batch}",
            "unit": "images/s",
            "value": batch / mean,
            "std": batch * std / mean**2,
            "repeats": repeats,
        }
    ]
    model.eval()
    samples = min(batch * 4, 50)
    mean, std = _time(lambda: model.sample(c[0], samples), repeats)
    out.append(
        {
            "name": f"conditional-mean sampling, {name}, {samples} per call",
            "unit": "samples/s",
            "value": samples / mean,
            "std": samples * std / mean**2,
            "repeats": repeats,
        }
    )
    return out


def run_benchmarks(params: dict, out: Path, run_id: str, quick: bool = False) -> dict:
    import mlflow

    device = "cuda" if torch.cuda.is_available() else "cpu"
    smoke, paper = resolve(params, "smoke"), resolve(params, "paper")
    sd, pd = smoke["datasets"]["lodopab"], paper["datasets"]["lodopab"]
    repeats = 3 if quick else 10
    big = 2 if quick else 4  # LoDoPaB-size items take seconds each
    results = []
    results += _projector(
        f"smoke {sd['image_size']}px/{sd['num_angles']} angles",
        CTGeometry(sd["image_size"], sd["num_angles"]),
        repeats,
    )
    results += _projector(
        f"LoDoPaB {pd['image_size']}px/{pd['num_angles']} angles",
        CTGeometry(pd["image_size"], pd["num_angles"]),
        big,
    )
    results += _training(
        "smoke 64x64",
        smoke["architectures"]["lodopab"],
        sd["image_size"],
        smoke["train"]["lodopab"]["batch_size"],
        repeats,
        device,
    )
    results += _training(
        "paper 362x362",
        paper["architectures"]["lodopab"],
        pd["image_size"],
        2,
        big,
        device,
    )
    for item in results:
        print(f"{item['name']:70s} {item['value']:10.2f} ± {item['std']:.2f} {item['unit']}")
        mlflow.log_metric(re.sub(r"[^A-Za-z0-9_. -]+", "_", item["name"]), item["value"])
    payload = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "run_id": run_id,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    mlflow.log_artifact(str(out))
    return payload
