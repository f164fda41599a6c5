"""(ground truth, inversion-layer output) pairs for training and evaluation, one API per dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from genrecon.data import lodopab, mnist


@dataclass
class Pairs:
    """Images x and conditioning inputs (inversion-layer outputs) of one split, float32."""

    truth: np.ndarray  # or any array-like indexed by integer arrays and slices (LazySplit)
    inversion: np.ndarray

    def __len__(self) -> int:
        return len(self.truth)


def load_pairs_lazy(data_root: Path, split: str) -> Pairs:
    """LoDoPaB pairs read on demand (paper scale): ground truth files and the FBP stack."""
    data_root = Path(data_root)
    fbp = h5py.File(data_root / "fbp.hdf5", "r")[split]
    return Pairs(lodopab.LazySplit(data_root, "ground_truth", split), fbp)


def load_pairs(
    dataset: str, data_root: Path, split: str, model: dict, limit: int | None = None
) -> Pairs:
    """Read a split of a dataset in its real format plus its precomputed inversion layer."""
    data_root = Path(data_root)
    if dataset == "lodopab":
        truth = lodopab.read_split(data_root, "ground_truth", split, limit)
        with h5py.File(data_root / "fbp.hdf5", "r") as f:
            inversion = f[split][: len(truth)]
    elif dataset == "mnist":
        truth = mnist.load_images(data_root, split)[:limit]
        with h5py.File(data_root / "cs.hdf5", "r") as f:
            key = f"{split}/{model['conditioning']}"
            if key not in f:
                raise KeyError(f"{data_root / 'cs.hdf5'}: no inversion {key!r}")
            inversion = f[key][: len(truth)]
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    return Pairs(truth.astype(np.float32), inversion.astype(np.float32))
