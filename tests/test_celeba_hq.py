"""Seed 003's faces: CelebA-HQ in its real layout (local folder, the user's links) and the LFW
stand-in; the split by CelebA's partition, the paper's test images first, y seeded per image.

References are independent of the code under test: scikit-image's lfw_subset read directly,
block means (area averages) for the resized images, hashlib for the digests, scipy's wrapped
Gaussian filter for the blur, and a numpy transcription of the authors' SSIM (11 x 11 Gaussian
window, sigma 1.5, valid convolution; dgminv/utils/img_metrics.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d
from skimage.data import lfw_subset

from conftest import ROOT
from genrecon import config
from genrecon.data import celeba_hq
from genrecon.data.base import MANIFEST, lookup
from genrecon.data.celeba_hq import (
    CACHE,
    PAPER_TEST,
    CelebAHQ,
    MissingDataError,
    SplitSizeError,
)
from genrecon.data.download import ChecksumError
from genrecon.data.errors import DataFileError
from genrecon.physics.blur import GaussianBlur
from test_download import RangeHandler, make_certificate, serve_https

SPLITS = ("train", "validation", "test")


def lfw_cfg(**changes) -> dict:
    cfg = {
        "source": "lfw",
        "path": None,
        "urls": [],
        "image_size": 32,
        "channels": 1,
        "splits": {"train": 80, "validation": 10, "test": 10},
        "blur_sigma": 1.0,
        "noise_std": 0.196,
    }
    cfg.update(changes)
    return cfg


def cache(root: Path, split: str) -> dict[str, np.ndarray]:
    with h5py.File(root / CACHE, "r") as f:
        group = f[split]
        out = {key: group[key][()] for key in group}
        out["paper_test"] = int(f["test"].attrs["paper_test"])
    return out


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> tuple[CelebAHQ, Path]:
    root = tmp_path_factory.mktemp("lfw")
    dataset = CelebAHQ(lfw_cfg(), seed=4)
    dataset.prepare(root)
    return dataset, root


# ---- the smoke stand-in -------------------------------------------------------------------------
def test_registered():
    assert lookup("celeba_hq") is CelebAHQ


def test_stand_in_is_the_lfw_faces_reflect_padded_and_split(stand_in):
    dataset, root = stand_in
    faces = np.rint(lfw_subset()[:100] * 255)  # the subset's first 100 images are its faces
    seen = []
    for split, count in lfw_cfg()["splits"].items():
        data = cache(root, split)
        x, index = data["x"], data["source_index"]
        assert x.shape == (count, 1, 32, 32) and x.dtype == np.uint8
        assert np.all(index < 100)  # never one of the subset's 100 non-faces
        inner = x[:, 0, 3:28, 3:28].astype(np.float64)
        np.testing.assert_array_equal(inner, faces[index])  # 25 -> 32: 3 before, 4 after
        # reflection: the border rows/columns mirror the face's, without repeating its edge
        np.testing.assert_array_equal(x[:, 0, :3], x[:, 0, 6:3:-1])
        np.testing.assert_array_equal(x[:, 0, 28:], x[:, 0, 26:22:-1])
        np.testing.assert_array_equal(x[:, 0, :, :3], x[:, 0, :, 6:3:-1])
        seen += index.tolist()
    assert len(seen) == len(set(seen)) == 100  # disjoint splits of all 100 faces
    split = dataset.split(root, "train")
    assert split.x.dtype == np.float32 and split.x.shape == (80, 1, 32, 32)
    np.testing.assert_array_equal(split.x, cache(root, "train")["x"] / np.float32(255))
    assert 0 <= split.x.min() and split.x.max() <= 1
    assert split.paper_test == 0 and split.celeba_file is None
    description = dataset.describe("smoke")
    assert "STAND-IN" in description and "not CelebA-HQ" in description and "LFW" in description


def test_stand_in_prepares_deterministically(stand_in, tmp_path):
    _, root = stand_in
    CelebAHQ(lfw_cfg(), seed=4).prepare(tmp_path / "again")
    assert (tmp_path / "again" / MANIFEST).read_bytes() == (root / MANIFEST).read_bytes()
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["files"][CACHE] == hashlib.sha256((root / CACHE).read_bytes()).hexdigest()
    CelebAHQ(lfw_cfg(), seed=5).prepare(tmp_path / "other")
    assert set(cache(tmp_path / "other", "test")["source_index"]) != set(
        cache(root, "test")["source_index"]
    )


def test_y_is_blur_plus_noise_seeded_per_image(stand_in):
    dataset, root = stand_in
    split = dataset.split(root, "test")
    y = np.asarray(split.y)
    assert y.shape == (10, 1, 32, 32) and y.dtype == np.float32
    # the same y whatever the batch, the limit, the reading mode or the order asked
    lazy = dataset.split(root, "test", lazy=True, limit=6)
    np.testing.assert_array_equal(lazy.y[[5, 0, 5]], y[[5, 0, 5]])
    np.testing.assert_array_equal(lazy.y[3], y[3])
    np.testing.assert_array_equal(dataset.split(root, "test", limit=2).y[1], y[1])
    np.testing.assert_array_equal(split[4][1], y[4])
    np.testing.assert_array_equal(np.asarray(lazy.x), split.x[:6])
    again = CelebAHQ(lfw_cfg(), seed=4).split(root, "test").y
    np.testing.assert_array_equal(again[7], y[7])
    other_seed = CelebAHQ(lfw_cfg(), seed=5).split(root, "test").y
    assert not np.allclose(other_seed[7], y[7])
    # y = periodic Gaussian blur (scipy's wrapped filter, kernel exact to 1e-14) + white noise
    clean = gaussian_filter(split.x.astype(np.float64), (0, 0, 1.0, 1.0), mode="wrap", truncate=8)
    noiseless = CelebAHQ(lfw_cfg(noise_std=0.0), seed=4).split(root, "test").y
    np.testing.assert_allclose(np.asarray(noiseless), clean, atol=1e-6)
    residual = (y - clean).ravel()
    assert abs(residual.std() / 0.196 - 1) < 5 / np.sqrt(2 * residual.size)
    assert abs(residual.mean()) < 5 * 0.196 / np.sqrt(residual.size)
    per_image = (y - clean).reshape(10, -1)
    assert np.abs(np.corrcoef(per_image)[np.triu_indices(10, 1)]).max() < 0.2  # not one pattern


def test_physics_is_the_reference_deblurring(stand_in):
    dataset, root = stand_in
    physics = dataset.physics(root)
    assert isinstance(physics, GaussianBlur)
    assert (physics.sigma, physics.channels, physics.noise_std) == (1.0, 1, 0.196)
    assert physics.in_shape == (1, 32, 32)
    assert CelebAHQ(lfw_cfg(channels=1, blur_sigma=3.0), 0).physics(root).sigma == 3.0


def authors_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The authors' SSIM (data range 1): 11 x 11 Gaussian window (sigma 1.5), valid part only,
    mean over channels and pixels."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2

    def f(image: np.ndarray) -> np.ndarray:
        return convolve2d(image, window, mode="valid")

    maps = []
    for x, y in zip(a, b, strict=True):
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        maps.append(
            ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        )
    return float(np.mean(maps))


def test_metrics_use_unit_data_range_and_the_authors_rgb_ssim(rng):
    dataset = CelebAHQ(lfw_cfg(), 0)
    truth = 0.2 + 0.4 * rng.random((2, 3, 24, 24))  # range 0.4: the base class would use that
    noisy = truth + 0.05 * rng.standard_normal(truth.shape)
    rows = dataset.metrics(noisy, truth)
    for row, r, t in zip(rows, noisy, truth, strict=True):
        assert row["psnr"] == pytest.approx(-10 * np.log10(np.mean((r - t) ** 2)), abs=1e-10)
        assert row["ssim"] == pytest.approx(authors_ssim(r, t), abs=1e-8)
    assert dataset.metrics(truth[:1], truth[:1]) == [{"psnr": float("inf"), "ssim": 1.0}]
    grey = dataset.metrics(noisy[:, :1], truth[:, :1])[0]  # one channel, (1, S, S)
    assert grey["ssim"] == pytest.approx(authors_ssim(noisy[0, :1], truth[0, :1]), abs=1e-8)


def test_params_blocks_fit_the_module():
    """params.yaml's base (paper) and smoke settings pass the module's checks; paper values are
    App. F's and the authors' defaults. (Read without the schema: that file is the lead's.)"""
    params = config.load_params(ROOT / "params.yaml")
    paper = params["datasets"]["celeba_hq"]
    smoke = config.deep_merge(paper, params["scales"]["smoke"]["datasets"]["celeba_hq"])
    with pytest.raises(ValueError, match=r"datasets\.celeba_hq\.path is not set"):
        celeba_hq.check_settings(paper)  # the user's folder: none ships with the project
    assert celeba_hq.check_settings({**paper, "path": "/data/CelebAMask-HQ"}) == "local"
    assert not CelebAHQ(paper, 0).needs_download()  # the DAG is built before `path` is set
    assert celeba_hq.check_settings(smoke) == "lfw"
    assert paper["splits"] == {"train": 24183, "validation": 2993, "test": 2824}
    assert (paper["image_size"], paper["channels"], paper["blur_sigma"]) == (128, 3, 3.0)
    assert paper["noise_std"] == pytest.approx(50 / 255)
    assert sum(smoke["splits"].values()) <= 100


# ---- CelebA-HQ in its real layout -------------------------------------------------------------
#: (CelebA-HQ index, CelebA file number, partition): train 3, validation 2, test 3, of which two
#: are the paper's (listed later in the mapping than the third, so the reordering shows)
ROWS = [
    (0, 5, 0),
    (1, 100, 0),
    (2, 190000, 2),
    (3, 162800, 1),
    (4, 20, 0),
    (5, 202591, 2),
    (6, 182690, 2),
    (7, 170000, 1),
]
COUNTS = {"train": 3, "validation": 2, "test": 3}
#: stored order: train/validation by index; test: PAPER_TEST's order (182690 before 202591)
ORDER = {"train": [0, 1, 4], "validation": [3, 7], "test": [6, 5, 2]}
SOURCE_PX, SIZE = 64, 8


def face(index: int) -> np.ndarray:
    """A smooth RGB image (64, 64, 3) uint8, different per index."""
    r = np.linspace(0, 2 * np.pi, SOURCE_PX)[:, None, None]
    c = np.linspace(0, 2 * np.pi, SOURCE_PX)[None, :, None]
    phase = np.array([0.0, 2.0, 4.0])[None, None, :] + 0.7 * index
    image = 0.5 + 0.2 * np.sin(r + phase) * np.cos(c - phase) + 0.03 * (index - 4)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def image_bytes(array: np.ndarray, extension: str) -> bytes:
    buffer = io.BytesIO()
    fmt = "PNG" if extension == ".png" else "JPEG"
    Image.fromarray(array).save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def celeba_folder(folder: Path, style: str = "{idx:05d}", extension: str = ".jpg") -> Path:
    """A CelebA-HQ copy as CelebAMask-HQ lays it out, plus CelebA's partition file (tiny)."""
    images = folder / "CelebA-HQ-img"
    images.mkdir(parents=True)
    for idx, file, _ in ROWS:
        name = celeba_hq.NAME_STYLES[style](idx, file) + extension
        (images / name).write_bytes(image_bytes(face(idx), extension))
    mapping = ["idx         orig_idx    orig_file"]
    mapping += [f"{idx:<12d}{file - 1:<12d}{file}.jpg" for idx, file, _ in ROWS]
    (folder / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    lines = [f"{file:06d}.jpg {part}" for _, file, part in sorted(ROWS, key=lambda r: r[1])]
    lines.append("000007.jpg 0")  # CelebA files outside CelebA-HQ are in the list too
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return folder


def local_cfg(folder: Path, **changes) -> dict:
    return (
        lfw_cfg(source="local", path=str(folder), image_size=SIZE, channels=3, splits=dict(COUNTS))
        | changes
    )


def block_mean(image: np.ndarray) -> np.ndarray:
    """An independent downsampling: area averages, (3, SIZE, SIZE) in [0, 1]."""
    f = SOURCE_PX // SIZE
    small = image.astype(np.float64).reshape(SIZE, f, SIZE, f, 3).mean(axis=(1, 3)) / 255
    return small.transpose(2, 0, 1)


def prepare_quietly(dataset: CelebAHQ, root: Path) -> None:
    """prepare, which warns that the tiny copy lacks 98 of the paper's 100 test images."""
    with pytest.warns(UserWarning, match="98 of the paper's 100 test images"):
        dataset.prepare(root)


@pytest.mark.parametrize(
    "style, extension",
    [("{idx:05d}", ".jpg"), ("{idx}", ".png"), ("{celeba_file:06d}", ".jpeg")],
)
def test_local_copy_is_split_by_celeba_partition_and_resized(tmp_path, style, extension):
    folder = celeba_folder(tmp_path / "CelebAMask-HQ", style, extension)
    root = tmp_path / "root"
    dataset = CelebAHQ(local_cfg(folder), seed=0)
    prepare_quietly(dataset, root)
    by_index = {idx: (file, part) for idx, file, part in ROWS}
    references = np.stack([block_mean(face(idx)) for idx, _, _ in ROWS])
    tolerance = 0.02 if extension == ".png" else 0.03  # JPEG's own error on top
    for split, order in ORDER.items():
        data = cache(root, split)
        assert data["source_index"].tolist() == order
        assert data["celeba_file"].tolist() == [by_index[i][0] for i in order]
        assert data["x"].shape == (len(order), 3, SIZE, SIZE) and data["x"].dtype == np.uint8
        for image, idx, digest in zip(data["x"], order, data["sha256"], strict=True):
            errors = np.abs(references - image / 255.0).max(axis=(1, 2, 3))
            assert int(errors.argmin()) == idx and errors[idx] < tolerance
            name = celeba_hq.NAME_STYLES[style](idx, by_index[idx][0]) + extension
            path = folder / "CelebA-HQ-img" / name
            assert digest.decode() == hashlib.sha256(path.read_bytes()).hexdigest()
    split = dataset.split(root, "test")
    assert split.paper_test == 2 and split.celeba_file[:2].tolist() == [182690, 202591]
    assert list(PAPER_TEST[:1]) == [182690] and PAPER_TEST[-1] == 202591 and len(PAPER_TEST) == 100
    assert dataset.split(root, "test", limit=1).paper_test == 1
    assert split.x.shape == split.y.shape == (3, 3, SIZE, SIZE)
    manifest = json.loads((root / MANIFEST).read_text())
    mapping = folder / "CelebA-HQ-to-CelebA-mapping.txt"
    assert manifest["index_files"][mapping.name] == hashlib.sha256(mapping.read_bytes()).hexdigest()
    assert manifest["files"] == {CACHE: hashlib.sha256((root / CACHE).read_bytes()).hexdigest()}
    assert "CelebA-HQ" in dataset.describe("paper") and "STAND-IN" not in dataset.describe("x")


def test_index_files_in_their_other_published_forms(tmp_path):
    """Karras' image_list.txt (five columns, zero-padded names) and Kaggle's partition csv."""
    image_list = tmp_path / "image_list.txt"
    image_list.write_text(
        "idx    orig_idx  orig_file   proc_md5  final_md5\n"
        "1      99094     099095.jpg  1e2d      c391\n"
        "0      119613    119614.jpg  0be7      d76e\n"
    )
    hq, files = celeba_hq.read_mapping(image_list)
    assert hq.tolist() == [0, 1] and files.tolist() == [119614, 99095]  # sorted by idx
    csv = tmp_path / "list_eval_partition.csv"
    csv.write_text("image_id,partition\n000001.jpg,0\n182690.jpg,2\n")
    assert celeba_hq.read_partition(csv) == {1: 0, 182690: 2}
    csv.write_text("image_id,partition\n000001.jpg,3\n")
    with pytest.raises(DataFileError, match=r"line 2: '000001.jpg,3' is not"):
        celeba_hq.read_partition(csv)
    image_list.write_text("0 119613 119614.jpg\n")
    with pytest.raises(DataFileError, match="no header naming the columns"):
        celeba_hq.read_mapping(image_list)


def test_resize_is_anti_aliased(tmp_path):
    stripes = np.zeros((SOURCE_PX, SOURCE_PX, 3), np.uint8)
    stripes[:, ::3] = 255  # every third column: plain interpolation would alias (0 to 0.5)
    path = tmp_path / "0.png"
    path.write_bytes(image_bytes(stripes, ".png"))
    image, digest = celeba_hq.load_image(path, SIZE)
    assert (
        image.shape == (3, SIZE, SIZE) and digest == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert np.abs(image / 255.0 - 1 / 3).max() < 0.05


def https_server(tmp_path, monkeypatch):
    RangeHandler.files, RangeHandler.requests, RangeHandler.drops = {}, [], {}
    certificate = make_certificate(tmp_path / "tls")  # downloads are https only
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return serve_https(RangeHandler, certificate)


def test_urls_source_downloads_checks_and_unpacks(tmp_path, monkeypatch):
    folder = celeba_folder(tmp_path / "copy")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:  # images and mapping in one zip, as CelebAMask-HQ
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != "list_eval_partition.txt":
                z.write(path, f"CelebAMask-HQ/{path.relative_to(folder)}")
    files = {
        "/CelebAMask-HQ.zip": archive.getvalue(),
        "/list_eval_partition.txt": (folder / "list_eval_partition.txt").read_bytes(),
    }
    with https_server(tmp_path, monkeypatch) as base:
        RangeHandler.files = files
        urls = [
            {"url": f"{base}{path}?signature=personal", "sha256": hashlib.sha256(body).hexdigest()}
            for path, body in files.items()
        ]
        dataset = CelebAHQ(local_cfg(folder, source="urls", path=None, urls=urls), seed=0)
        assert dataset.needs_download()
        receipt = dataset.download(tmp_path / "ok")
        assert "personal" not in str(receipt) and len(receipt["files"]) == 2
        prepare_quietly(dataset, tmp_path / "ok")
        reference = tmp_path / "local"
        prepare_quietly(CelebAHQ(local_cfg(folder), seed=0), reference)
        for split in SPLITS:
            np.testing.assert_array_equal(
                cache(tmp_path / "ok", split)["x"], cache(reference, split)["x"]
            )
        assert "personal" not in (tmp_path / "ok" / MANIFEST).read_text()
        urls[1]["sha256"] = "0" * 64
        bad = CelebAHQ(local_cfg(folder, source="urls", path=None, urls=urls), seed=0)
        with pytest.raises(ChecksumError, match="list_eval_partition.txt"):
            bad.download(tmp_path / "bad")


# ---- errors that name what to fix -------------------------------------------------------------
def test_missing_index_files_are_named(tmp_path):
    folder = celeba_folder(tmp_path / "copy")
    (folder / "CelebA-HQ-to-CelebA-mapping.txt").unlink()
    with pytest.raises(MissingDataError, match=rf"path = '{re.escape(str(folder))}': no CelebA-HQ"):
        CelebAHQ(local_cfg(folder), 0).prepare(tmp_path / "a")
    folder = celeba_folder(tmp_path / "copy2")
    (folder / "list_eval_partition.txt").unlink()
    with pytest.raises(MissingDataError, match="no list_eval_partition.txt or .*csv anywhere"):
        CelebAHQ(local_cfg(folder), 0).prepare(tmp_path / "b")
    assert not (tmp_path / "b" / MANIFEST).exists()


def test_wrong_split_sizes_name_the_setting_or_the_file(tmp_path, monkeypatch):
    folder = celeba_folder(tmp_path / "copy")
    wrong = local_cfg(folder, splits={"train": 3, "validation": 2, "test": 2})
    message = r"splits = 3/2/2 .* gives 3/2/3;.* lists 8 images, CelebA-HQ has 30000"
    with pytest.raises(SplitSizeError, match=message):
        CelebAHQ(wrong, 0).prepare(tmp_path / "a")
    # were these CelebA-HQ's own sizes, the setting is what is wrong
    monkeypatch.setattr(celeba_hq, "PAPER_SPLITS", dict(COUNTS))
    with pytest.raises(
        SplitSizeError, match=r"the setting is wrong; set datasets\.celeba_hq\.splits"
    ):
        CelebAHQ(wrong, 0).prepare(tmp_path / "b")
    monkeypatch.setattr(celeba_hq, "PAPER_SPLITS", {"train": 1, "validation": 1, "test": 1})
    monkeypatch.setattr(celeba_hq, "HQ_IMAGES", 8)
    with pytest.raises(SplitSizeError, match=r"list_eval_partition\.txt assigns 9 files"):
        CelebAHQ(wrong, 0).prepare(tmp_path / "c")


@pytest.mark.filterwarnings("ignore:.*of the paper's 100 test images")
def test_unreadable_or_missing_images_are_named(tmp_path):
    folder = celeba_folder(tmp_path / "copy")
    bad = folder / "CelebA-HQ-img" / "00004.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataFileError, match=rf"{re.escape(str(bad))}: not a readable image"):
        CelebAHQ(local_cfg(folder), 0).prepare(tmp_path / "a")
    assert not (tmp_path / "a" / MANIFEST).exists() and not (tmp_path / "a" / CACHE).exists()
    bad.unlink()
    with pytest.raises(MissingDataError, match=r"CelebA-HQ-img' lacks 1 of the 8 images .*00004"):
        CelebAHQ(local_cfg(folder), 0).prepare(tmp_path / "b")
    (folder / "CelebA-HQ-img" / "00004.jpg").write_bytes(image_bytes(face(4)[:, :60], ".jpg"))
    with pytest.raises(DataFileError, match="64x60 pixels; CelebA-HQ images are square"):
        CelebAHQ(local_cfg(folder), 0).prepare(tmp_path / "c")


def test_partition_must_cover_every_image(tmp_path):
    folder = celeba_folder(tmp_path / "copy")
    partition = folder / "list_eval_partition.txt"
    partition.write_text(partition.read_text().replace("202591.jpg 2\n", ""))
    with pytest.raises(DataFileError, match=r"no partition for 1 .* 202591\.jpg"):
        CelebAHQ(local_cfg(folder), 0).prepare(tmp_path / "a")


def test_settings_errors_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"datasets\.celeba_hq\.source = 'zenodo'"):
        CelebAHQ(lfw_cfg(source="zenodo"), 0).prepare(tmp_path)
    with pytest.raises(ValueError, match=r"datasets\.celeba_hq\.channels = 3: the lfw faces"):
        CelebAHQ(lfw_cfg(channels=3), 0).prepare(tmp_path)
    with pytest.raises(ValueError, match=r"asks for 101 images; the lfw stand-in has 100"):
        CelebAHQ(lfw_cfg(splits={"train": 81, "validation": 10, "test": 10}), 0).prepare(tmp_path)
    with pytest.raises(ValueError, match=r"datasets\.celeba_hq\.path is not set"):
        CelebAHQ(local_cfg(tmp_path, path=None), 0).prepare(tmp_path)
    with pytest.raises(ValueError, match=r"datasets\.celeba_hq\.urls is empty"):
        CelebAHQ(local_cfg(tmp_path, source="urls"), 0).prepare(tmp_path)
    with pytest.raises(MissingDataError, match="no such folder"):
        CelebAHQ(local_cfg(tmp_path / "nowhere"), 0).prepare(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        CelebAHQ(lfw_cfg(), 0).split(tmp_path / "empty", "train")


def test_measurement_depends_only_on_the_image_and_its_seed():
    """measure_image draws its noise in float64 on the CPU generator: the same y from the same
    seed whatever dtype the image arrives in."""
    physics = GaussianBlur((8, 8), 1.0, channels=3, noise_std=0.1)
    image = torch.rand((3, 8, 8), generator=torch.Generator().manual_seed(0)).numpy()
    a = celeba_hq.measure_image(image, physics, 11)
    b = celeba_hq.measure_image(image.astype(np.float64), physics, 11)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, celeba_hq.measure_image(image, physics, 12))
    assert celeba_hq.image_seed(0, "test", 3) != celeba_hq.image_seed(0, "validation", 3)


def test_paper_ids_are_celeba_test_files():
    """The authors' 100 ids lie in CelebA's test partition (files 182638..202599), as they say."""
    assert len(set(PAPER_TEST)) == 100 and all(182638 <= f <= 202599 for f in PAPER_TEST)
