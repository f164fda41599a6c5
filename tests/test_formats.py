"""Round trips of the real on-disk formats and clear errors on bad files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT
from genrecon import config
from genrecon.data import lodopab, mnist
from genrecon.data.lodopab import LoDoPaB
from genrecon.data.mnist import MNIST


def test_lodopab_layout_round_trip(tmp_path, rng):
    truth = rng.random((10, 8, 8)).astype(np.float32)
    lodopab.write_split(tmp_path, "ground_truth", "train", truth, slices_per_file=4)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"ground_truth_train_{i:03d}.hdf5" for i in range(3)]
    with h5py.File(tmp_path / names[-1]) as f:
        assert f["data"].shape == (2, 8, 8) and f["data"].dtype == np.float32  # last file shorter
    np.testing.assert_array_equal(lodopab.read_split(tmp_path, "ground_truth", "train"), truth)
    np.testing.assert_array_equal(
        lodopab.read_split(tmp_path, "ground_truth", "train", 5), truth[:5]
    )


def test_lodopab_missing_split_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        lodopab.read_split(tmp_path, "observation", "test")


def test_synthetic_lodopab_is_deterministic_and_lodopab_like(tmp_path, tiny_lodopab_cfg):
    for name in ("a", "b"):
        LoDoPaB(tiny_lodopab_cfg, seed=7).prepare(tmp_path / name)
    a, b = (
        (tmp_path / "a" / "MANIFEST.json").read_text(),
        (tmp_path / "b" / "MANIFEST.json").read_text(),
    )
    assert a == b  # same seed, same bytes
    truth = lodopab.read_split(tmp_path / "a", "ground_truth", "train")
    obs = lodopab.read_split(tmp_path / "a", "observation", "train")
    assert truth.shape == (6, 16, 16) and 0 <= truth.min() and truth.max() <= 1
    assert obs.shape[1:] == (12, 23)
    with h5py.File(tmp_path / "a" / "fbp.hdf5") as f:
        assert f["test"].shape == (2, 16, 16)


def test_mnist_idx_round_trip(tmp_path, rng):
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    mnist.write_idx(tmp_path / "x-idx3-ubyte.gz", images)
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "x-idx3-ubyte.gz"), images)


def test_mnist_bad_magic_is_reported(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(ValueError, match="not an IDX file"):
        mnist.read_idx(bad)


def test_vendored_mnist_is_the_canonical_test_set():
    folder = ROOT / "vendor" / "mnist"
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert hashlib.md5((folder / name).read_bytes()).hexdigest() == mnist.MD5[name]
    images = mnist.read_idx(folder / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8


def test_mnist_prepare_splits_and_cs(tmp_path):
    cfg = {
        "source": "embedded",
        "splits": {"train": 30, "validation": 10, "test": 10},
        "cs": {"m": 196, "noise_rel": 0.1, "tikhonov_lambda": 0.02},
    }
    MNIST(cfg, seed=0).prepare(tmp_path)
    sets = {s: mnist.load_images(tmp_path, s) for s in ("train", "validation", "test")}
    assert [len(v) for v in sets.values()] == [30, 10, 10]
    flat = [tuple(img.ravel()) for v in sets.values() for img in v]
    assert len(set(flat)) == 50  # disjoint
    with h5py.File(tmp_path / "cs.hdf5") as f:
        assert f["A"].shape == (196, 784)
        assert f["test/tikhonov"].shape == (10, 28, 28)
        y = f["test/y"][:]
    clean = sets["test"].reshape(10, -1) @ h5py.File(tmp_path / "cs.hdf5")["A"][:].T
    ratio = np.linalg.norm(y - clean, axis=1) / np.linalg.norm(clean, axis=1)
    np.testing.assert_allclose(ratio, 0.1, rtol=1e-4)


def test_mnist_split_too_large_is_reported():
    with pytest.raises(ValueError, match="ask for 30 images, the pool has 20"):
        mnist.split_sets(
            np.zeros((20, 2, 2)), np.zeros(20), {"train": 10, "validation": 10, "test": 10}, 0
        )


def test_unknown_source_is_named(tmp_path):
    with pytest.raises(ValueError, match="datasets.mnist.source"):
        mnist.prepare(Path("."), tmp_path, "zenodo", {"train": 1, "validation": 1, "test": 1}, 0)


def test_lazy_split_reads_like_the_array(tmp_path, rng):
    truth = rng.random((10, 4, 4)).astype(np.float32)
    lodopab.write_split(tmp_path, "ground_truth", "train", truth, slices_per_file=3)
    lazy = lodopab.LazySplit(tmp_path, "ground_truth", "train")
    assert len(lazy) == 10 and lazy.shape == (10, 4, 4)
    index = np.array([9, 0, 3, 3, 7])  # unsorted, repeated, across files
    np.testing.assert_array_equal(lazy[index], truth[index])
    np.testing.assert_array_equal(lazy[2:8], truth[2:8])


def _smoke_settings() -> dict:
    return config.resolve(config.load_params(ROOT / "params.yaml"), "smoke", ROOT)


def test_every_dataset_yields_x_y_meta_measured_by_its_physics(tmp_path, tiny_lodopab_cfg):
    """The dataset interface: (x, y, meta) with the cached conditioning inputs, and y = A x + noise
    for the operator the dataset names (so a method gets the physics its data came from)."""
    import torch

    from genrecon.data.registry import registered_datasets

    mnist_cfg = {
        "source": "embedded",
        "splits": {"train": 6, "validation": 2, "test": 4},
        "cs": {"m": 196, "noise_rel": 0.1, "tikhonov_lambda": 0.02},
    }
    knee_cfg = _smoke_settings()["datasets"]["fastmri_knee"]
    knee_cfg = {**knee_cfg, "splits": {"train": 1, "validation": 1, "test": 2}}
    configs = {
        "lodopab": (tiny_lodopab_cfg, 0.05),
        "mnist": (mnist_cfg, 0.1 + 1e-4),
        "fastmri_knee": (knee_cfg, None),
        "knee_pd": (
            {
                **_smoke_settings()["datasets"]["knee_pd"],
                "splits": {"train": 1, "validation": 1, "test": 1},
            },
            None,
        ),
        # the smoke stand-in faces with little noise: y = blur(x) + noise, ||noise|| ~ 2.5%
        "celeba_hq": (
            {
                **_smoke_settings()["datasets"]["celeba_hq"],
                "splits": {"train": 4, "validation": 2, "test": 3},
                "noise_std": 0.01,
            },
            0.05,
        ),
    }
    assert set(registered_datasets()) == set(configs)  # a new dataset needs a case here
    for name, (cfg, noise_bound) in configs.items():
        dataset = registered_datasets()[name](cfg, seed=0)
        root = tmp_path / name
        dataset.prepare(root)
        split = dataset.split(root, "test")
        x, y, meta = split[1]
        assert meta["index"] == 1 and set(meta["cond"]) == set(dataset.conditionings)
        physics = dataset.physics(root)
        if name == "knee_pd":  # y: the full k-space; every setting's operator measures mask * y
            images = torch.from_numpy(np.asarray(split.x, np.float32))
            expected = physics.mask[..., None].numpy() * np.asarray(split.y)
            np.testing.assert_allclose(physics.A(images).numpy(), expected, atol=1e-5)
            continue
        if noise_bound is None:
            # fastMRI: x is the cropped magnitude target, not in A's domain (k-space is 640 rows
            # of the full field of view); y's link to the data is the zero-filled input
            crop = (cfg["crop"], cfg["crop"])
            zero_filled = physics.zero_filled_magnitude(torch.from_numpy(y)[None], crop)[0]
            normalised = (zero_filled - zero_filled.mean()) / zero_filled.std()
            np.testing.assert_allclose(
                meta["cond"]["zero_filled"], normalised.clamp(-6, 6).numpy(), atol=1e-4
            )
            continue
        clean = physics.A(torch.from_numpy(np.asarray(split.x, np.float32))).numpy()
        relative = np.linalg.norm((np.asarray(split.y) - clean).reshape(len(split), -1), axis=1)
        relative /= np.linalg.norm(clean.reshape(len(split), -1), axis=1)
        assert np.all(relative < noise_bound), (name, relative)
        if dataset.conditionings:  # celeba_hq has none: its methods read y alone
            assert np.all(np.isfinite(split.cond[dataset.conditionings[0]]))
