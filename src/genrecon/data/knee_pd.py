"""fastMRI knee PD slices, resized and rescaled to [0, 1]: the data set of seed 002 (Sec. 4).

Why a module apart from `knee.py`: seed 002 uses the fastMRI knee data in a different way from
seed 000. It keeps only the proton-density volumes without fat suppression (`CORPD_FBK`), only
the ground-truth images (`reconstruction_esc`, the emulated single-coil target), only the
slices near each volume's centre, and it resizes them to 128 x 128 and rescales each one to
[0, 1]. Its measurements are then SIMULATED from those real images (a radial or Cartesian-row
mask on their Fourier transform, plus noise: `physics.mri.measurement_physics`), so none of the
scanner's k-space, masks or per-volume scoring of `knee.py` applies. What does apply, the real
file format and how the files are got (local folder, the user's own download links, or
synthetic knees written in that format), is `knee.py`'s code, reused rather than copied.

Settings (`datasets.knee_pd`):

- `source`, `path`, `urls`, `folders`: as `datasets.fastmri_knee` (see `knee.py`): train and
  validation draw disjoint volumes from `singlecoil_train`, test from `singlecoil_val` (the
  paper's "training and validation sets of the fastMRI dataset"; images of one volume never
  end up in two splits).
- `splits`: PD VOLUMES per split (paper: 484 / 10 / 100; 484 x 8 = 3,872 training and
  100 x 8 = 800 test slices, the paper's counts).
- `acquisition`: the volumes kept (`CORPD_FBK`: PD without fat suppression, the paper's).
- `central_slices`: per volume, the slices nearest its middle (a centred window of that many
  consecutive slices, `center_crop`'s arithmetic along the slice axis: start = (n - k) // 2).
- `crop`: the fastMRI target crop the images start from (320; the real targets already have
  it; the synthetic ones are written at it).
- `image_size`: the images are resized to image_size x image_size with an anti-aliasing filter
  (scikit-image's `resize(..., anti_aliasing=True)`: Gaussian pre-filter, then bilinear
  interpolation; the paper used the Python Imaging Library's resize with its anti-aliasing
  (Lanczos) filter, so the pixels differ slightly from the paper's), then rescaled linearly so
  that each image's minimum is 0 and its maximum 1.
- `synthetic`: smoke geometry of the synthetic volumes, as `datasets.fastmri_knee.synthetic`.

What `prepare` writes under the data root: the volumes (generated, linked or extracted, as
`knee.py` does), then `knee_pd.hdf5` with per split `x` (n, S, S) float32 in [0, 1], `volume`
(the index of each image's volume in `files`), `slice` (its slice in that volume's file),
`files` (the volume files, relative to the root) and `acquisition`; then MANIFEST.json, last.

Reading: x = the images; y = their fully sampled centred k-space fft2c(x) (n, S, S, 2), computed
on reading (it is a fixed function of x; storing it would double the file). Every measurement
setting of the paper is `mask * y + noise`, made by the evaluation protocol with the setting's
operator (`measurement_physics`); `physics()` names the paper's reference setting.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from fastmri import fft2c
from skimage.transform import resize
from tqdm import tqdm

from genrecon.data import knee
from genrecon.data.base import Dataset, ImageStack, Split, register_dataset, write_manifest
from genrecon.data.download import download
from genrecon.data.errors import REPREPARE, DataFileError, open_h5, require_keys
from genrecon.physics.mri import RealFourierMRI, measurement_physics

SPLITS = knee.SPLITS
CACHE = "knee_pd.hdf5"
SETTING = "datasets.knee_pd"
#: the paper's reference measurement setting (Sec. 4): 25 radial spokes, noise std 0.05
REFERENCE = {"mask": "radial", "spokes": 25, "noise": 0.05}
#: images per fft2c call when computing y (bounds the float64 working memory)
CHUNK = 256


# ---- settings and knee.py's helpers under this data set's name ------------------------------
def _renamed(text: str) -> str:
    return text.replace(knee.SETTING, SETTING)


@contextmanager
def own_setting_names() -> Iterator[None]:
    """Errors of `knee.py`'s helpers name `datasets.fastmri_knee.*`; here they name ours.

    The helpers are shared (same file format, same sources), their messages are not: a user of
    knee_pd must be told which of HIS settings to fix.
    """
    try:
        yield
    except DataFileError as error:
        if knee.SETTING not in str(error):
            raise
        raise type(error)(error.path, _renamed(error.problem), _renamed(error.action)) from None
    except (ValueError, FileNotFoundError) as error:
        if knee.SETTING not in str(error):
            raise
        raise type(error)(_renamed(str(error))) from None


def volume_action(cfg: dict, path: Path) -> str:
    """`knee.volume_action` (what to do about a bad volume file), naming our settings."""
    return _renamed(knee.volume_action(cfg, path))


def doubled(cfg: dict) -> dict:
    """The settings with twice the volumes per split: what `knee.generate_synthetic` must write.

    It alternates acquisitions per file (PD, PDFS, PD, ...), so 2 n files hold n of each.
    """
    return {**cfg, "splits": {split: 2 * int(cfg["splits"][split]) for split in SPLITS}}


def check_geometry(cfg: dict) -> None:
    """Settings that would fail deep inside the processing, refused up front with their names."""
    central, size, crop = (int(cfg[k]) for k in ("central_slices", "image_size", "crop"))
    if central < 1:
        raise ValueError(f"{SETTING}.central_slices = {central}: need at least one slice")
    if not 2 <= size:
        raise ValueError(f"{SETTING}.image_size = {size}: need at least 2 pixels")
    if crop < 1:
        raise ValueError(f"{SETTING}.crop = {crop}: need a positive crop")
    if cfg.get("source") != "synthetic":
        return
    synth = cfg.get("synthetic") or {}
    if not synth:
        raise ValueError(f"{SETTING}.synthetic: source 'synthetic' needs its geometry")
    if cfg["acquisition"] not in knee.ACQUISITIONS:
        raise ValueError(
            f"{SETTING}.acquisition = {cfg['acquisition']!r}: synthetic volumes are one of "
            f"{sorted(knee.ACQUISITIONS)}"
        )
    height, narrowest = int(synth["kspace_height"]), int(synth["kspace_width"][0])
    if crop > min(height, narrowest):
        raise ValueError(
            f"{SETTING}.crop = {crop} does not fit the synthetic k-space ({SETTING}.synthetic: "
            f"kspace_height {height}, kspace_width from {narrowest}); raise those or lower crop"
        )
    fewest = int(synth["slices_per_volume"][0])
    if fewest < central:
        raise ValueError(
            f"{SETTING}.central_slices = {central} exceeds the synthetic volumes' "
            f"{SETTING}.synthetic.slices_per_volume minimum {fewest}"
        )


# ---- which volumes each split reads ---------------------------------------------------------
def acquisition_of(path: Path, cfg: dict) -> str:
    """A volume's `acquisition` attribute, read with `knee.open_volume`'s format check."""
    with own_setting_names(), knee.open_volume(path, cfg) as f:
        return str(f.attrs["acquisition"])


def matching_volumes(folder: Path, cfg: dict) -> list[Path]:
    """The sorted files of `folder` whose acquisition is `cfg['acquisition']`."""
    files = sorted(Path(folder).glob("*.h5"))
    wanted = cfg["acquisition"]
    return [
        p
        for p in tqdm(files, desc=f"acquisitions {folder.name}")
        if acquisition_of(p, cfg) == wanted
    ]


def assign_volumes(data_dir: Path, cfg: dict, seed: int) -> dict[str, list[Path]]:
    """Volumes of the wanted acquisition per split, drawn as `knee.assign_volumes` draws them.

    A seeded permutation (seed, crc32 of the folder) of each folder's sorted matching files, cut
    in split order, so train and validation (both from singlecoil_train) are disjoint; each
    split's list sorted by name. Too few matching files: an error naming the settings.
    """
    out: dict[str, list[Path]] = {}
    taken: dict[str, int] = {}
    need = knee.volumes_per_folder(cfg)
    matching: dict[str, list[Path]] = {}
    for split in SPLITS:
        folder = cfg["folders"][split]
        if folder not in matching:
            matching[folder] = matching_volumes(Path(data_dir) / folder, cfg)
        files = matching[folder]
        if len(files) < need[folder]:
            total = len(list((Path(data_dir) / folder).glob("*.h5")))
            raise ValueError(
                f"{SETTING}.splits asks for {need[folder]} volumes from {folder} with "
                f"{SETTING}.acquisition = {cfg['acquisition']!r}; {Path(data_dir) / folder} "
                f"holds {len(files)} such volumes (of {total})"
            )
        order = np.random.default_rng([seed, zlib.crc32(folder.encode())]).permutation(len(files))
        start, count = taken.get(folder, 0), int(cfg["splits"][split])
        out[split] = sorted(files[i] for i in order[start : start + count])
        taken[folder] = start + count
    return out


# ---- images -----------------------------------------------------------------------------------
def central_window(num_slices: int, count: int) -> range:
    """The `count` consecutive slices nearest the middle of `num_slices` (centred window)."""
    start = (num_slices - count) // 2
    return range(start, start + count)


def resize_and_rescale(image: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased resize to size x size, then the linear map taking min -> 0 and max -> 1."""
    small = resize(np.asarray(image, np.float64), (size, size), anti_aliasing=True)
    low, high = float(small.min()), float(small.max())
    if not high > low:
        raise ValueError(f"constant image (value {low}): cannot rescale to [0, 1]")
    return ((small - low) / (high - low)).astype(np.float32)


def volume_images(path: Path, cfg: dict) -> tuple[np.ndarray, range]:
    """The central slices of one volume's target, cropped, resized and rescaled; and which."""
    crop, count, size = int(cfg["crop"]), int(cfg["central_slices"]), int(cfg["image_size"])
    with own_setting_names(), knee.open_volume(path, cfg) as f:
        targets = f["reconstruction_esc"]
        if targets.ndim != 3:
            raise DataFileError(
                path,
                f"reconstruction_esc has shape {targets.shape}, expected (slices, H, W)",
                volume_action(cfg, path),
            )
        num_slices = int(targets.shape[0])
        if num_slices < count:
            raise DataFileError(
                path,
                f"{num_slices} slices, fewer than {SETTING}.central_slices = {count}",
                f"lower {SETTING}.central_slices",
            )
        window = central_window(num_slices, count)
        block = targets[window.start : window.stop]
    try:
        block = knee.crop_center(block, crop)
    except ValueError as error:
        raise DataFileError(path, f"{SETTING}.crop: {error}", f"lower {SETTING}.crop") from None
    images = np.empty((count, size, size), np.float32)
    for i, image in enumerate(block):
        try:
            images[i] = resize_and_rescale(image, size)
        except ValueError as error:
            raise DataFileError(
                path, f"slice {window[i]}: {error}", volume_action(cfg, path)
            ) from None
    return images, window


def write_cache(root: Path, volumes: dict[str, list[Path]], cfg: dict) -> None:
    """knee_pd.hdf5: per split the images, their volume and slice, the volume table."""
    root = Path(root)
    count, size = int(cfg["central_slices"]), int(cfg["image_size"])
    text = h5py.string_dtype()
    with h5py.File(root / CACHE, "w", track_order=False) as f:
        for split in SPLITS:
            files = volumes[split]
            group = f.create_group(split)
            total = count * len(files)
            x = group.create_dataset(
                "x", (total, size, size), np.float32, chunks=(1, size, size), track_times=False
            )
            volume_index = np.repeat(np.arange(len(files), dtype=np.int32), count)
            slice_index = np.zeros(total, np.int32)
            for v, path in enumerate(tqdm(files, desc=f"knee_pd {split}")):
                images, window = volume_images(path, cfg)
                x[v * count : (v + 1) * count] = images
                slice_index[v * count : (v + 1) * count] = np.asarray(window, np.int32)
            columns = {
                "volume": (volume_index, None),
                "slice": (slice_index, None),
                "files": (np.array([str(p.relative_to(root)) for p in files], object), text),
                "acquisition": (np.array([cfg["acquisition"]] * len(files), object), text),
            }
            for key, (value, dtype) in columns.items():
                group.create_dataset(key, data=value, dtype=dtype, track_times=False)


# ---- reading ----------------------------------------------------------------------------------
def kspace(images: np.ndarray) -> np.ndarray:
    """fft2c of real images (n, H, W) -> (n, H, W, 2) float32: RealFourierMRI's A, full mask.

    Computed with fastmri's `fft2c` in float64 (the physics' own transform), in chunks.
    """
    images = np.asarray(images)
    out = np.empty((*images.shape, 2), np.float32)
    for start in range(0, len(images), CHUNK):
        block = torch.from_numpy(np.asarray(images[start : start + CHUNK], np.float64))
        out[start : start + CHUNK] = fft2c(torch.stack([block, torch.zeros_like(block)], -1))
    return out


class KSpaceStack:
    """y of a lazy split: fft2c of the images, computed for the images asked for."""

    def __init__(self, images: ImageStack):
        self.images = images
        self.shape = (*images.shape, 2)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        images = self.images[index]
        return kspace(images[None])[0] if images.ndim == 2 else kspace(images)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype)


# ---- the dataset --------------------------------------------------------------------------------
@register_dataset("knee_pd")
class KneePD(Dataset):
    """fastMRI knee PD central slices at image_size, in [0, 1]; y = their full k-space.

    Per-image PSNR/SSIM (the base class's `metrics`, data range max - min of each truth = 1).
    """

    unit = "volumes"  # `splits` counts volumes; each gives `central_slices` images

    def _source(self) -> str:
        source = self.cfg.get("source")
        if source not in knee.SOURCES:
            raise ValueError(f"{SETTING}.source = {source!r}: expected one of {knee.SOURCES}")
        return source

    def needs_download(self) -> bool:
        return self._source() == "urls"

    def download(self, root: Path) -> dict:
        """Fetch the user's archives (resumable, checksummed) and extract them to `raw/`."""
        if self._source() != "urls":
            return super().download(root)
        root = Path(root)
        receipt = []
        with own_setting_names():
            for index, entry in enumerate(knee.url_entries(self.cfg.get("urls"))):
                algorithm, digest = knee.entry_digest(entry)
                dest = root / "archives" / knee.entry_name(entry)
                setting = f"{SETTING}.urls[{index}]"
                path = download(entry["url"], dest, digest, algorithm, setting=setting)
                knee.extract(path, root / "raw")
                receipt.append({"name": path.name, algorithm: digest})
        return {"files": receipt}

    def _data_dir(self, root: Path) -> Path:
        """Where the fastMRI folders are: the root (synthetic), `path` (local), `raw/` (urls)."""
        source = self._source()
        if source == "local":
            if not self.cfg.get("path"):
                raise ValueError(
                    f"{SETTING}.path is not set: source 'local' needs the folder holding "
                    "fastMRI's singlecoil_train/ and singlecoil_val/ (or use source: urls "
                    "with the links NYU sent you)"
                )
            with own_setting_names():
                return knee.check_local(Path(self.cfg["path"]), self.cfg)
        return Path(root) / "raw" if source == "urls" else Path(root)

    def prepare(self, root: Path) -> None:
        """Volumes in place (generated, linked or downloaded), then the images, then MANIFEST."""
        root = Path(root)
        source = self._source()
        check_geometry(self.cfg)
        root.mkdir(parents=True, exist_ok=True)
        if source == "synthetic":
            knee.generate_synthetic(root, doubled(self.cfg), self.seed)
        elif source == "urls":
            with own_setting_names():
                knee.url_entries(self.cfg.get("urls"))  # a clear error before looking for files
        volumes = assign_volumes(self._data_dir(root), self.cfg, self.seed)
        if source == "local":
            volumes = knee.link_volumes(volumes, root)
        write_cache(root, volumes, self.cfg)
        with own_setting_names():
            public = knee.public_config(self.cfg)
        write_manifest(root, {"dataset": "knee_pd", "config": public})

    def split(self, root: Path, split: str, limit: int | None = None, lazy: bool = False) -> Split:
        path = Path(root) / CACHE
        if not path.exists():
            raise FileNotFoundError(f"{path}: knee_pd data not prepared (run the data step)")
        f = open_h5(path, REPREPARE)
        try:
            require_keys(f, (f"{split}/x",), "the prepare job did not finish", REPREPARE)
        except DataFileError:
            f.close()
            raise
        data = f[split]["x"]
        n = len(data) if limit is None else max(0, min(int(limit), len(data)))
        if lazy:
            x = ImageStack(data, n)
            return Split(x, KSpaceStack(x), {})
        with f:
            x = np.asarray(data[:n], np.float32)
        return Split(x, kspace(x), {})

    def physics(self, root: Path) -> RealFourierMRI:
        """The paper's reference setting; the protocols build the others (measurement_physics)."""
        return measurement_physics(int(self.cfg["image_size"]), REFERENCE)

    def describe(self, scale: str) -> str:
        splits, count = self.cfg["splits"], int(self.cfg["central_slices"])
        size = int(self.cfg["image_size"])
        volumes = f"{splits['train']}/{splits['validation']}/{splits['test']}"
        what = (
            f"{count} central slices of {volumes} {self.cfg['acquisition']} volumes "
            f"(train/validation/test), resized to {size}x{size}, rescaled to [0, 1]"
        )
        if self._source() == "synthetic":
            synth = self.cfg["synthetic"]
            return (
                "smoke: synthetic knee-like phantoms in fastMRI's single-coil format "
                f"(k-space {synth['kspace_height']} rows, crop {self.cfg['crop']}), {what}"
            )
        return f"fastMRI knee PD (single-coil reconstruction_esc), {what}"
