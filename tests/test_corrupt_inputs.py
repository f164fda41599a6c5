"""A corrupt or truncated input fails with ONE line: the file, what is wrong, what to do.

Per format: LoDoPaB HDF5, MNIST IDX, fastMRI volumes and the knee cache, params.yaml (syntax,
values, credentials) and the experiments sheet.
"""

from __future__ import annotations

import copy
import gzip
import re
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import ROOT
from genrecon import config
from genrecon.config import ConfigError
from genrecon.data import knee, lodopab, mnist
from genrecon.data.errors import REFETCH, REPREPARE, DataFileError
from genrecon.data.lodopab import LoDoPaB


def one_line(error: pytest.ExceptionInfo, path: Path | str, *needles: str) -> str:
    """The error's message: a single line, starting with `path`, holding every needle."""
    message = str(error.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---- LoDoPaB HDF5 -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lodopab_root(tmp_path_factory) -> Path:
    from conftest import tiny_lodopab

    root = tmp_path_factory.mktemp("lodopab")
    LoDoPaB(tiny_lodopab(), seed=0).prepare(root)
    return root


@pytest.fixture
def lodopab_copy(lodopab_root, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(lodopab_root, tmp_path / "lodopab"))


def test_truncated_lodopab_file_is_named_with_what_to_do(lodopab_copy, tiny_lodopab_cfg):
    bad = lodopab_copy / "observation_train_001.hdf5"
    truncate(bad)
    dataset = LoDoPaB(tiny_lodopab_cfg, seed=0)
    for lazy in (False, True):
        with pytest.raises(DataFileError) as error:
            dataset.split(lodopab_copy, "train", lazy=lazy)
        one_line(error, bad, "truncated", REPREPARE)


def test_lodopab_file_without_data_key(lodopab_copy, tiny_lodopab_cfg):
    bad = lodopab_copy / "ground_truth_test_000.hdf5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 16, 16), np.float32))
    with pytest.raises(DataFileError) as error:
        LoDoPaB(tiny_lodopab_cfg, seed=0).split(lodopab_copy, "test")
    one_line(error, bad, "no dataset 'data'", REPREPARE)


def test_lodopab_file_of_the_wrong_shape(lodopab_copy, tiny_lodopab_cfg):
    bad = lodopab_copy / "ground_truth_validation_000.hdf5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("data", data=np.zeros((3, 8, 8), np.float32))
    with pytest.raises(DataFileError) as error:
        LoDoPaB(tiny_lodopab_cfg, seed=0).split(lodopab_copy, "validation")
    one_line(error, bad, "(3, 8, 8)", "expected (slices, 16, 16)")
    with pytest.raises(DataFileError) as error:  # without the settings: files must agree
        lodopab.write_split(lodopab_copy, "ground_truth", "train", np.zeros((5, 4, 4)), 4)
        with h5py.File(lodopab_copy / "ground_truth_train_001.hdf5", "w") as f:
            f.create_dataset("data", data=np.zeros((1, 4, 5), np.float32))
        lodopab.read_split(lodopab_copy, "ground_truth", "train")
    one_line(error, lodopab_copy / "ground_truth_train_001.hdf5", "expected (slices, 4, 4)")


def test_downloaded_lodopab_files_are_checked_before_the_fbp(lodopab_copy, tiny_lodopab_cfg):
    """At paper scale the files come from Zenodo: what to do is extract them again."""
    bad = lodopab_copy / "ground_truth_validation_000.hdf5"
    truncate(bad)
    cfg = {**tiny_lodopab_cfg, "source": "zenodo"}
    with pytest.raises(DataFileError) as error:
        LoDoPaB(cfg, seed=0).prepare(lodopab_copy)
    one_line(error, bad, "truncated", "rerun the download job", "--forcerun download")


def test_truncated_fbp_cache_says_prepare_again(lodopab_copy, tiny_lodopab_cfg):
    truncate(lodopab_copy / "fbp.hdf5")
    with pytest.raises(DataFileError) as error:
        LoDoPaB(tiny_lodopab_cfg, seed=0).split(lodopab_copy, "test")
    one_line(error, lodopab_copy / "fbp.hdf5", REPREPARE)


# ---- MNIST IDX --------------------------------------------------------------------------------
def test_truncated_gzip_idx(tmp_path, rng):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    mnist.write_idx(path, rng.integers(0, 256, (50, 28, 28), dtype=np.uint8))
    truncate(path)
    with pytest.raises(DataFileError) as error:
        mnist.read_idx(path)
    one_line(error, path, "truncated or corrupt gzip", REFETCH)


def test_idx_payload_shorter_than_its_header(tmp_path, rng):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 10, 28, 28)
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(9 * 28 * 28 + 5))  # a whole gzip stream, the payload cut short
    with pytest.raises(DataFileError) as error:
        mnist.read_idx(path)
    one_line(error, path, "(10, 28, 28)", "truncated", REFETCH)


def test_idx_bad_magic(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataFileError) as error:
        mnist.read_idx(bad)
    one_line(error, bad, "not an IDX file (bad magic number 01020304)")


def test_prepared_mnist_files_say_prepare_again(tmp_path):
    cfg = {
        "source": "embedded",
        "splits": {"train": 6, "validation": 2, "test": 2},
        "cs": {"m": 196, "noise_rel": 0.1, "tikhonov_lambda": 0.02},
    }
    dataset = mnist.MNIST(cfg, seed=0)
    dataset.prepare(tmp_path)
    truncate(tmp_path / "test-images-idx3-ubyte.gz", 0.6)
    with pytest.raises(DataFileError) as error:
        dataset.split(tmp_path, "test")
    one_line(error, tmp_path / "test-images-idx3-ubyte.gz", REPREPARE)
    with h5py.File(tmp_path / "cs.hdf5", "a") as f:
        del f["validation/tikhonov"]
    with pytest.raises(DataFileError) as error:
        dataset.split(tmp_path, "validation")
    one_line(error, tmp_path / "cs.hdf5", "no 'validation/tikhonov'", REPREPARE)
    truncate(tmp_path / "cs.hdf5")
    with pytest.raises(DataFileError) as error:
        dataset.physics(tmp_path)
    one_line(error, tmp_path / "cs.hdf5", "truncated", REPREPARE)


# ---- fastMRI volumes and the knee cache -------------------------------------------------------
def write_knee_volume(path: Path, drop: str | None = None) -> None:
    """A minimal fastMRI single-coil volume; `drop` leaves out one dataset or attribute."""
    with h5py.File(path, "w") as f:
        if drop != "kspace":
            f.create_dataset("kspace", data=np.ones((2, 16, 12), np.complex64))
        if drop != "reconstruction_esc":
            f.create_dataset("reconstruction_esc", data=np.ones((2, 8, 8), np.float32))
        if drop != "acquisition":
            f.attrs["acquisition"] = "CORPD_FBK"


KNEE_CFG = {"source": "local", "crop": 8, "center_fraction": 0.08, "acceleration": 4}


@pytest.mark.parametrize("drop", ["kspace", "reconstruction_esc", "acquisition"])
def test_fastmri_volume_missing_what_the_cache_reads(tmp_path, drop):
    path = tmp_path / "file1000000.h5"
    write_knee_volume(path, drop)
    with pytest.raises(DataFileError) as error:
        knee.process_volume(path, KNEE_CFG)
    one_line(error, path, repr(drop), "datasets.fastmri_knee.path")


def test_truncated_fastmri_volume(tmp_path):
    raw = tmp_path / "raw" / "singlecoil_val"
    raw.mkdir(parents=True)
    path = raw / "file1000001.h5"
    write_knee_volume(path)
    knee.process_volume(path, KNEE_CFG)  # intact: reads
    truncate(path)
    with pytest.raises(DataFileError) as error:
        knee.process_volume(path, {**KNEE_CFG, "source": "urls"})
    one_line(error, path, "truncated", f"delete {tmp_path / 'raw'}", "--forcerun download")


def test_truncated_knee_cache_says_prepare_again(tmp_path):
    cache = tmp_path / knee.CACHE
    with h5py.File(cache, "w") as f:
        f.create_dataset("filler", data=np.zeros(4096))
    truncate(cache)
    with pytest.raises(DataFileError) as error:
        knee.FastMRIKnee({"source": "synthetic", "clamp": 6.0}, seed=0).split(tmp_path, "test")
    one_line(error, cache, "truncated", REPREPARE)


# ---- params.yaml and the experiments sheet ----------------------------------------------------
@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_params_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("scale: smoke\nseed: 0\ntracking:\n  uri: [unclosed\n  experiment: x\n")
    with pytest.raises(ConfigError) as error:
        config.load_params(path)
    message = str(error.value)
    assert "\n" not in message and "fix that line" in message
    assert re.match(rf"{re.escape(str(path))}:5:\d+: YAML syntax error", message), message


def test_a_bad_value_is_one_line_naming_its_key(params):
    broken = copy.deepcopy(params)
    broken["datasets"]["lodopab"]["num_angles"] = "many"
    with pytest.raises(ConfigError) as error:
        config.resolve(broken, "smoke", ROOT)
    one_line(error, "params.yaml", "datasets.lodopab.num_angles", "'many'")


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("dataset", "lodopap", "experiments.lodopab_fbp.dataset: no dataset 'lodopap'"),
        ("method", "fpb", "experiments.lodopab_fbp: unknown method 'fpb'"),
    ],
)
def test_an_unknown_dataset_or_method_in_the_sheet_is_one_line(params, key, value, needle):
    broken = copy.deepcopy(params)
    broken["experiments"]["lodopab_fbp"][key] = value
    with pytest.raises(ConfigError) as error:
        config.resolve(broken, "smoke", ROOT)
    one_line(error, "params.yaml", needle)


@pytest.mark.parametrize(
    "uri, what",
    [
        ("https://alice:hunter2@mlflow.example.org", "user:password@"),
        ("https://mlflow.example.org/?token=hunter2", "'token'"),
        ("https://mlflow.example.org/api?access_token=hunter2&x=1", "'access_token'"),
    ],
)
def test_tracking_uri_with_credentials_is_refused(params, tmp_path, uri, what):
    broken = copy.deepcopy(params)
    broken["tracking"]["uri"] = uri
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(broken))
    for load in (lambda: config.load_params(path), lambda: config.resolve(broken, "smoke", ROOT)):
        with pytest.raises(ConfigError) as error:
            load()
        message = one_line(error, "params.yaml", "tracking.uri", what)
        assert "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_PASSWORD" in message
        assert "hunter2" not in message


@pytest.mark.parametrize(
    "uri", ["", "sqlite:///results/mlflow.db", "https://mlflow.example.org:5000/", "databricks"]
)
def test_tracking_uri_without_credentials_passes(params, uri):
    fine = copy.deepcopy(params)
    fine["tracking"]["uri"] = uri
    config.check_no_credentials(fine)


def test_cli_prints_one_line_without_traceback(tmp_path, capsys):
    from genrecon.cli import main

    path = tmp_path / "params.yaml"
    path.write_text("scale: smoke\nseed: [\n")
    assert main(["--params", str(path), "init-tracking"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0 and str(path) in err
