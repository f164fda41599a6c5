"""fastMRI single-coil knee: the real file format, per-file masks, the zero-filled input, metrics.

The references are fastMRI's own code wherever it exists: its `SliceDataset` reads the files,
its `RandomMaskFunc`/`apply_mask`/`ifft2c` make the zero-filled reference, its
`evaluate.psnr/ssim` score the volumes.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fastmri import complex_abs, ifft2c
from fastmri.data import SliceDataset
from fastmri.data.subsample import RandomMaskFunc
from fastmri.data.transforms import apply_mask, center_crop, complex_center_crop, to_tensor
from fastmri.evaluate import psnr as fastmri_psnr
from fastmri.evaluate import ssim as fastmri_ssim

from genrecon.data import knee
from genrecon.data.base import TrainingPairs, lookup
from genrecon.data.download import ChecksumError
from genrecon.physics.mri import file_seed
from test_download import make_certificate, serve_https

CROP = 16
PD, PDFS = "CORPD_FBK", "CORPDFS_FBK"


def tiny_cfg(**changes) -> dict:
    cfg = {
        "source": "synthetic",
        "path": None,
        "urls": [],
        "folders": {
            "train": "singlecoil_train",
            "validation": "singlecoil_train",
            "test": "singlecoil_val",
        },
        "splits": {"train": 2, "validation": 1, "test": 2},
        "crop": CROP,
        "center_fraction": 0.08,
        "acceleration": 4,
        "clamp": 6.0,
        "synthetic": {"kspace_height": 32, "kspace_width": [24, 30], "slices_per_volume": [3, 5]},
    }
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[knee.FastMRIKnee, Path]:
    root = tmp_path_factory.mktemp("knee")
    dataset = knee.FastMRIKnee(tiny_cfg(), seed=3)
    dataset.prepare(root)
    return dataset, root


def read_folder(root: Path, folder: str) -> list:
    """Every slice of a folder as fastMRI's SliceDataset returns it (no transform)."""
    return [sample for sample in SliceDataset(root / folder, challenge="singlecoil")]


def test_registered_under_its_name():
    assert lookup("fastmri_knee") is knee.FastMRIKnee


def test_smoke_files_are_fastmri_singlecoil_volumes(prepared):
    _, root = prepared
    samples = read_folder(root, "singlecoil_train") + read_folder(root, "singlecoil_val")
    volumes: dict[str, list] = {}
    for kspace, mask, target, attrs, fname, slice_num in samples:
        assert mask is None  # train/val files carry targets, not masks
        assert kspace.dtype == np.complex64 and kspace.ndim == 2
        assert target.dtype == np.float32 and target.shape == (CROP, CROP)
        assert {"acquisition", "max", "norm", "patient_id"} <= set(attrs)
        height, width = kspace.shape
        assert attrs["encoding_size"] == (height, width, 1)
        assert attrs["recon_size"] == (CROP, CROP, 1)
        assert 24 <= width <= 30 and height == 32
        # columns outside the header's acquired lines are zero, inside they are not
        left, right = attrs["padding_left"], attrs["padding_right"]
        column_energy = np.abs(kspace).sum(axis=0)
        assert (column_energy[:left] == 0).all() and (column_energy[right:] == 0).all()
        assert (column_energy[left:right] > 0).all()
        # the ESC target is the magnitude reconstruction of the file's own k-space, cropped
        image = complex_abs(ifft2c(to_tensor(kspace).double()))
        np.testing.assert_allclose(center_crop(image, (CROP, CROP)).numpy(), target, rtol=1e-4)
        volumes.setdefault(fname, []).append((slice_num, target, attrs))
    assert len(volumes) == 5  # 2 + 1 train/validation, 2 test
    for slices in volumes.values():
        stack = np.stack([t for _, t, _ in sorted(slices, key=lambda s: s[0])])
        attrs = slices[0][2]
        assert attrs["max"] == pytest.approx(float(stack.max()))
        assert attrs["norm"] == pytest.approx(float(np.linalg.norm(stack)), rel=1e-6)


def test_both_acquisitions_in_every_folder_and_pdfs_darker(prepared):
    dataset, root = prepared
    for folder in ("singlecoil_train", "singlecoil_val"):
        by_kind: dict[str, list[float]] = {}
        for _, _, _, attrs, _, _ in read_folder(root, folder):
            by_kind.setdefault(attrs["acquisition"], []).append(attrs["max"])
        assert set(by_kind) == {PD, PDFS}
        assert np.mean(by_kind[PDFS]) < np.mean(by_kind[PD])
    test = dataset.split(root, "test")
    assert set(test.acquisition) == {PD, PDFS}


def test_mask_is_fastmris_random_mask_seeded_per_file(prepared):
    dataset, root = prepared
    split = dataset.split(root, "train")
    for name, (_, width), mask in zip(
        split.volumes.names, split.volumes.shapes, split.volumes.masks, strict=True
    ):
        func = RandomMaskFunc(center_fractions=[0.08], accelerations=[4])
        reference, _ = func((1, width, 1), seed=file_seed(name))
        np.testing.assert_array_equal(mask, reference.numpy().reshape(width))
        # the same file gets the same mask again, however often it is drawn
        np.testing.assert_array_equal(mask, knee.volume_mask(name, width, dataset.cfg))
    first = split.volumes.names[0]
    width = split.volumes.shapes[0][1]
    other = knee.volume_mask("file1999999.h5", width, dataset.cfg)
    assert not np.array_equal(knee.volume_mask(first, width, dataset.cfg), other)
    # y is the file's k-space under that mask: zero on the unsampled columns, equal elsewhere
    _, y, meta = split[0]
    kspace = read_folder(root, "singlecoil_train")
    (raw,) = [k for k, _, _, _, f, s in kspace if f == meta["volume"] and s == meta["slice"]]
    mask = split.volumes.masks[int(split.volume[0])].astype(bool)
    np.testing.assert_array_equal(y[:, ~mask], 0)
    np.testing.assert_array_equal(y[:, mask, 0], raw.real[:, mask])


def test_zero_filled_is_the_operators_dagger_cropped_and_normalised_as_the_authors(prepared):
    dataset, root = prepared
    split = dataset.split(root, "test")
    raw_zero_filled = knee.cached(root, "test", "zero_filled")
    physics = dataset.physics(root)
    for i in range(len(split)):
        x, y, meta = split[i]
        y = torch.from_numpy(y)[None]
        by_slice = split.operator(i).zero_filled_magnitude(y, (CROP, CROP))[0]
        np.testing.assert_allclose(raw_zero_filled[i], by_slice.numpy(), rtol=1e-5, atol=1e-12)
        by_dataset = physics.zero_filled_magnitude(y, (CROP, CROP))[0]
        np.testing.assert_allclose(raw_zero_filled[i], by_dataset.numpy(), rtol=1e-5, atol=1e-12)
        # the authors' normalisation: torch mean/std (unbiased) of the zero-filled slice, +-6
        image = torch.from_numpy(raw_zero_filled[i]).double()
        mean, std = image.mean(), image.std()
        expected = ((image - mean) / (std + 1e-11)).clamp(-6, 6)
        np.testing.assert_allclose(meta["cond"]["zero_filled"], expected.numpy(), atol=1e-5)
        target = torch.from_numpy(np.asarray(split.target[i])).double()
        np.testing.assert_allclose(x, ((target - mean) / (std + 1e-11)).clamp(-6, 6), atol=1e-5)
    # independently: fastMRI's own transforms on the files, through its SliceDataset
    reference = {}
    for kspace, _, _, _, fname, slice_num in read_folder(root, "singlecoil_val"):
        mask_func = RandomMaskFunc(center_fractions=[0.08], accelerations=[4])
        masked, _, _ = apply_mask(to_tensor(kspace), mask_func, seed=file_seed(fname))
        image = complex_abs(complex_center_crop(ifft2c(masked), (CROP, CROP)))
        reference[(fname, slice_num)] = image.numpy()
    for i in range(len(split)):
        key = (split.volume_name[i], int(split.slice_index[i]))
        np.testing.assert_allclose(raw_zero_filled[i], reference[key], rtol=1e-4, atol=1e-10)


def test_knee_physics_refuses_a_forward_pass_without_the_volume(prepared):
    dataset, root = prepared
    physics = dataset.physics(root)
    split = dataset.split(root, "test")
    with pytest.raises(NotImplementedError, match="mask"):
        physics.A(torch.zeros(1, 32, 24, 2))
    name = split.volume_name[0]
    assert torch.equal(physics.volume(name).mask, split.operator(0).mask)


def test_y_stacks_within_a_volume_and_refuses_mixed_widths(prepared):
    dataset, root = prepared
    split = dataset.split(root, "test")
    assert len({shape[1] for shape in split.volumes.shapes}) == 2  # widths differ, as real ones
    first = np.flatnonzero(split.volume == 0)
    assert split.y[first].shape == (len(first), *split.volumes.shapes[0], 2)
    with pytest.raises(ValueError, match="widths"):
        split.y[np.arange(len(split))]


def noisy_reconstructions(split: knee.KneeSplit, rng: np.random.Generator) -> np.ndarray:
    """Network-scale reconstructions: the targets plus noise that differs per volume."""
    level = 0.05 + 0.1 * split.volume[:, None, None]
    return split.x + level * rng.standard_normal(split.x.shape).astype(np.float32)


def test_volume_metrics_are_fastmris_split_by_acquisition(prepared, rng):
    dataset, root = prepared
    split = dataset.split(root, "test")
    reco = noisy_reconstructions(split, rng)
    result = dataset.volume_metrics(split, reco)
    scanner = split.denormalise(reco, np.arange(len(split)))
    truth = np.asarray(split.target, np.float64)
    expected: dict[str, dict[str, list[float]]] = {}
    for row in result["volumes"]:
        where = split.volume_name == row["volume"]
        gt, pred = truth[where], scanner[where].astype(np.float64)
        assert row["slices"] == int(where.sum())
        assert row["acquisition"] == split.acquisition[where][0]
        assert row["psnr"] == pytest.approx(float(fastmri_psnr(gt, pred)), rel=1e-10)
        assert row["ssim"] == pytest.approx(fastmri_ssim(gt, pred).item(), rel=1e-10)
        label = knee.ACQUISITIONS[row["acquisition"]]
        expected.setdefault(label, {"psnr": [], "ssim": []})
        expected[label]["psnr"].append(row["psnr"])
        expected[label]["ssim"].append(row["ssim"])
    assert set(result["by_acquisition"]) == {"PD", "PDFS"}
    for label, values in expected.items():
        summary = result["by_acquisition"][label]
        assert summary["n"] == len(values["psnr"])
        assert summary["psnr_mean"] == pytest.approx(np.mean(values["psnr"]))
        assert summary["ssim_mean"] == pytest.approx(np.mean(values["ssim"]))


def test_volume_scorer_fed_slice_by_slice_equals_the_whole_split_evaluation(prepared, rng):
    """The protocols feed slices one at a time (two estimators interleaved): the scores must be
    those of fastMRI's evaluation of the whole split, and a slice without an estimate leaves its
    volume unscored (counted), never scored on the remaining slices."""
    dataset, root = prepared
    split = dataset.split(root, "test")
    reco = noisy_reconstructions(split, rng).astype(np.float32)  # the protocols' estimates
    whole = dataset.volume_metrics(split, reco)
    scorer = dataset.group_scorer(split)
    dropped = int(split.volume[-1])  # the last volume loses one slice's estimate
    for i in rng.permutation(len(split)):
        scorer.add("mean", int(i), reco[i])
        lost = i == np.flatnonzero(split.volume == dropped)[0]
        scorer.add("other", int(i), None if lost else reco[i])
    rows, summary = scorer.finish()
    by_volume = {(r["estimator"], r["volume"]): r for r in rows}
    for row in whole["volumes"]:
        assert by_volume[("mean", row["volume"])]["psnr"] == pytest.approx(row["psnr"], rel=1e-12)
        assert by_volume[("mean", row["volume"])]["ssim"] == pytest.approx(row["ssim"], rel=1e-12)
    for label, stats in whole["by_acquisition"].items():
        assert summary["mean"][label]["psnr_mean"] == pytest.approx(stats["psnr_mean"])
        assert summary["mean"][label]["n"] == stats["n"]
    assert summary["mean"]["all"]["n"] == len(whole["volumes"])
    lost_label = knee.ACQUISITIONS[split.volumes.acquisitions[dropped]]
    assert summary["other"][lost_label]["unscored"] == 1
    assert summary["other"][lost_label]["n"] == summary["mean"][lost_label]["n"] - 1
    assert summary["other"]["all"]["unscored"] == 1


def test_a_limit_never_cuts_a_volume_and_batches_stay_within_one(prepared):
    dataset, root = prepared
    split = dataset.split(root, "test")
    for batch in split.batches(3):
        assert len(set(split.volume[batch])) == 1 and len(batch) <= 3
    assert np.array_equal(np.concatenate(split.batches(3)), np.arange(len(split)))
    assert knee.whole_volumes(np.array([0, 0, 0, 1, 1, 2]), 2) == 3
    assert knee.whole_volumes(np.array([0, 0, 0, 1, 1, 2]), 4) == 5
    assert knee.whole_volumes(np.array([0, 0, 0, 1, 1, 2]), None) == 6


def test_per_volume_regroups_interleaved_slices(rng):
    """Slices of two volumes in any order: each volume scored with its own max, as fastMRI."""
    truths = rng.random((6, 12, 12)) * np.array([1, 5, 1, 5, 1, 5])[:, None, None]
    recos = truths + 0.05 * rng.standard_normal(truths.shape)
    volumes = np.array(["a", "b", "a", "b", "a", "b"])
    acquisitions = np.array([PD, PDFS] * 3)
    rows = knee.per_volume(recos, truths, volumes, acquisitions)
    for row, name in zip(rows, ("a", "b"), strict=True):
        gt, pred = truths[volumes == name], recos[volumes == name]
        assert row["psnr"] == pytest.approx(float(fastmri_psnr(gt, pred)), rel=1e-10)
        assert row["ssim"] == pytest.approx(fastmri_ssim(gt, pred).item(), rel=1e-10)
    assert set(knee.by_acquisition(rows)) == {"PD", "PDFS"}


def test_local_source_needs_a_path_and_urls_source_needs_links(tmp_path):
    with pytest.raises(ValueError, match=r"datasets\.fastmri_knee\.path"):
        knee.FastMRIKnee(tiny_cfg(source="local"), seed=0).prepare(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="singlecoil_train"):
        knee.FastMRIKnee(tiny_cfg(source="local", path=str(tmp_path)), seed=0).prepare(tmp_path)
    urls = knee.FastMRIKnee(tiny_cfg(source="urls"), seed=0)
    assert urls.needs_download()
    with pytest.raises(ValueError, match=r"datasets\.fastmri_knee\.urls"):
        urls.download(tmp_path / "b")
    with pytest.raises(ValueError, match=r"datasets\.fastmri_knee\.urls"):
        urls.prepare(tmp_path / "b")
    with pytest.raises(ValueError, match="sha256"):
        knee.url_entries([{"url": "https://example.org/knee_singlecoil_val.tar.xz"}])


def test_local_source_links_the_users_volumes(prepared, tmp_path):
    dataset, source = prepared
    local = knee.FastMRIKnee(tiny_cfg(source="local", path=str(source)), seed=3)
    local.prepare(tmp_path)
    links = sorted((tmp_path / "singlecoil_val").iterdir())
    assert links and all(p.is_symlink() for p in links)
    np.testing.assert_array_equal(
        knee.cached(tmp_path, "test", "zero_filled"), knee.cached(source, "test", "zero_filled")
    )


def test_manifest_never_records_the_download_links():
    cfg = tiny_cfg(
        source="urls", urls=[{"url": "https://x.example/a.tar.xz?sig=SECRET", "sha256": "ab"}]
    )
    public = knee.public_config(cfg)
    assert public["urls"] == [{"name": "a.tar.xz", "sha256": "ab"}]
    assert "SECRET" not in str(public)


def test_smoke_data_never_passes_as_real():
    text = knee.FastMRIKnee(tiny_cfg(), seed=0).describe("smoke")
    assert "synthetic knee-like phantoms in fastMRI's single-coil format" in text


def test_lazy_split_reads_like_the_array(prepared):
    dataset, root = prepared
    eager, lazy = dataset.split(root, "train"), dataset.split(root, "train", lazy=True)
    index = np.array([3, 0, 3, 1])
    np.testing.assert_array_equal(lazy.x[index], eager.x[index])
    np.testing.assert_array_equal(lazy.x[2], eager.x[2])
    for pairs in (TrainingPairs(eager, "zero_filled"), TrainingPairs(lazy, "zero_filled")):
        batch = pairs.batch(index)
        np.testing.assert_array_equal(batch["cond"].numpy(), eager.cond["zero_filled"][index])
    limited = dataset.split(root, "train", limit=2)  # rounded up to the whole first volume
    first = int(np.count_nonzero(eager.volume == eager.volume[0]))
    assert len(limited) == first == len(limited.y) and set(limited.volume) == {eager.volume[0]}
    np.testing.assert_array_equal(limited.x, eager.x[:first])


class ArchiveHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 (http.server API)
        body = self.files.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def tar_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def test_urls_source_downloads_checks_and_extracts_fastmri_archives(
    prepared, tmp_path, monkeypatch
):
    dataset, source = prepared
    archives = {f"/{n}.tar.gz": tar_of(source / n) for n in ("singlecoil_train", "singlecoil_val")}
    ArchiveHandler.files = archives
    certificate = make_certificate(tmp_path / "tls")  # downloads are https only
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with serve_https(ArchiveHandler, certificate) as base:
        urls = [
            {"url": f"{base}{path}?signature=personal", "sha256": hashlib.sha256(body).hexdigest()}
            for path, body in archives.items()
        ]
        knees = knee.FastMRIKnee(tiny_cfg(source="urls", urls=urls), seed=3)
        receipt = knees.download(tmp_path / "ok")
        assert "personal" not in str(receipt) and len(receipt["files"]) == 2
        knees.prepare(tmp_path / "ok")
        np.testing.assert_array_equal(
            knee.cached(tmp_path / "ok", "test", "zero_filled"),
            knee.cached(source, "test", "zero_filled"),
        )
        assert "personal" not in (tmp_path / "ok" / "MANIFEST.json").read_text()
        urls[0]["sha256"] = "0" * 64
        with pytest.raises(ChecksumError):
            knee.FastMRIKnee(tiny_cfg(source="urls", urls=urls), seed=3).download(tmp_path / "bad")
