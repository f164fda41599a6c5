"""Dataset preparation jobs: produce each dataset in its real format plus the inversion layer.

Every prepared directory gets a MANIFEST.json (sha256 of each file); runs log its hash as the
data hash, so a number can be traced to the exact bytes it was computed from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from genrecon.data import lodopab, mnist
from genrecon.physics.cs import GaussianCS

MANIFEST = "MANIFEST.json"


def write_manifest(root: Path, extra: dict | None = None) -> Path:
    files = sorted(p for p in Path(root).rglob("*") if p.is_file() and p.name != MANIFEST)
    digests = {}
    for path in tqdm(files, desc=f"hash {root}"):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests[str(path.relative_to(root))] = h.hexdigest()
    out = Path(root) / MANIFEST
    out.write_text(json.dumps({"files": digests, **(extra or {})}, indent=1, sort_keys=True) + "\n")
    return out


def prepare_lodopab(root: Path, cfg: dict, seed: int) -> None:
    """Smoke: generate the synthetic set; paper: expects the download step to have run. Then FBP."""
    root = Path(root)
    if cfg["source"] == "synthetic":
        lodopab.generate_synthetic(root, cfg, seed)
    elif cfg["source"] == "zenodo":
        lodopab.split_files(root, "ground_truth", "train")  # clear error if not downloaded
    else:
        raise ValueError(f"datasets.lodopab.source = {cfg['source']!r}: 'synthetic' or 'zenodo'")
    lodopab.compute_fbp(root, root / "fbp.hdf5", cfg)
    write_manifest(root, {"dataset": "lodopab", "config": cfg})


def prepare_mnist(root: Path, raw: Path, cfg: dict, seed: int) -> None:
    """IDX splits, then the compressed-sensing measurements and both inversion layers."""
    root = Path(root)
    mnist.prepare(Path(raw), root, cfg["source"], cfg["splits"], seed)
    cs_cfg = cfg["cs"]
    operator = GaussianCS.create(cs_cfg["m"], 28, seed)
    inversions = {
        kind: operator.inversion(kind, cs_cfg["tikhonov_lambda"]) for kind in ("pinv", "tikhonov")
    }
    with h5py.File(root / "cs.hdf5", "w") as f:
        f.create_dataset("A", data=operator.matrix, track_times=False)
        for split_index, split in enumerate(("train", "validation", "test")):
            images = mnist.load_images(root, split).astype(np.float64)
            rng = np.random.default_rng([seed, 100 + split_index])
            y = operator.measure(images, cs_cfg["noise_rel"], rng)
            f.create_dataset(f"{split}/y", data=y.astype(np.float32), track_times=False)
            for kind, matrix in inversions.items():
                reco = (y @ matrix.T).reshape(-1, 28, 28).astype(np.float32)
                f.create_dataset(f"{split}/{kind}", data=reco, track_times=False)
    write_manifest(root, {"dataset": "mnist", "config": cfg})
