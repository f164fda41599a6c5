"""fastMRI single-coil knee (Zbontar et al. 2018; NYU fastMRI) in its own HDF5 format.

Why a module of its own: the knee data differ from LoDoPaB and MNIST in three ways the pipeline
must not paper over. The k-space width varies from volume to volume (so does the random mask,
seeded per FILE as fastMRI's transforms seed it); the networks see images normalised per slice
(the seed authors' code path) while the metrics must be taken on the scanner's scale; and
fastMRI scores per VOLUME (data range = the volume's maximum), split into PD and PDFS scans.

Format (one HDF5 file per volume, `singlecoil_train/` and `singlecoil_val/`): `kspace`
(slices, H, W) complex64 (emulated single coil, H = 640 with 2x readout oversampling, W ~ 368);
`reconstruction_esc` and `reconstruction_rss` (slices, 320, 320) float32; `ismrmrd_header`
(XML: encodedSpace/reconSpace matrix sizes, kspace_encoding_step_1 limits); attributes
`acquisition` ('CORPD_FBK' = PD, 'CORPDFS_FBK' = PDFS), `max`, `norm` (max and Frobenius norm
of the target volume), `patient_id`. fastMRI's `SliceDataset` reads it.

Settings (`datasets.fastmri_knee`):

- `source`: `local` (a folder the user downloaded after accepting the NYU data-sharing
  agreement), `urls` (the user's own download links, fetched resumably with checksums) or
  `synthetic` (smoke scale: knee-like phantoms written in the real format, see below).
- `path`: for `local`, the folder that holds `singlecoil_train/` and `singlecoil_val/`.
- `urls`: for `urls`, a list of `{url, sha256 | md5, name?}` (tar archives as fastMRI
  distributes them), or the path of a YAML file holding that list. The links are personal and
  expire, so none ship with the project; the receipt and MANIFEST record names and digests, never
  the links, and a YAML file outside the repository keeps them out of params.yaml.
- `folders`: the fastMRI folder each split draws its volumes from. The public test set has no
  targets, so `test` is drawn from `singlecoil_val` (the set the seed paper reports on);
  splits sharing a folder get disjoint volumes (a seeded permutation of the sorted file names).
- `splits`: VOLUMES per split (slices follow from the files).
- `crop` (320), `center_fraction` (0.08), `acceleration` (4): fastMRI's
  `RandomMaskFunc([0.08], [4])`, seeded per file with `file_seed(fname)`, so every volume has
  one mask that never changes (the seed authors' code ignored the seed, FACTS).
- `clamp` (6.0): the normalised images are clamped to +-clamp, as the authors' data transform.
- `synthetic`: smoke geometry, `{kspace_height, kspace_width: [min, max], slices_per_volume:
  [min, max]}`; widths and slice counts vary per file as in the real data.

What `prepare` writes under the data root: the volumes (synthetic files, or per-file symlinks to
the user's `local` files, or the archives extracted to `raw/` for `urls`), then `knee.hdf5` with,
per split, the raw (scanner-scale) cropped target and zero-filled magnitude
|ifft2c(mask * kspace)| of every slice, the per-slice mean and std (ddof=1) of that zero-filled
image, and a table of its volumes (file, acquisition, max of the target volume, k-space size,
mask). Raw arrays plus mean/std are stored, not the normalised ones, because the normalisation is
an affine map that is cheap to apply on reading but loses information where it clamps: the
metrics need the scanner scale and the unclamped ground truth, the networks the normalised one.
"""

from __future__ import annotations

import json
import tarfile
import urllib.parse
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import h5py
import numpy as np
import torch
from fastmri import fft2c, ifft2c
from fastmri.data.transforms import center_crop
from skimage.metrics import structural_similarity

from genrecon.data.base import Dataset, Split, register_dataset, write_manifest
from genrecon.data.download import download, user_url_entries
from genrecon.data.errors import REPREPARE, DataFileError, open_h5, require_keys
from genrecon.physics.base import LinearPhysics
from genrecon.physics.mri import MRIPhysics, file_seed, random_mask

SPLITS = ("train", "validation", "test")
SOURCES = ("local", "urls", "synthetic")
#: fastMRI's knee acquisitions and the names the seed paper's tables use for them
ACQUISITIONS = {"CORPD_FBK": "PD", "CORPDFS_FBK": "PDFS"}
#: the authors' `normalize_instance(..., eps=1e-11)`: (x - mean) / (std + EPS)
EPS = 1e-11
CACHE = "knee.hdf5"
ISMRMRD = "http://www.ismrm.org/ISMRMRD"
SETTING = "datasets.fastmri_knee"


# ---- settings -------------------------------------------------------------------------------
def url_entries(urls: list[dict] | str | None) -> list[dict]:
    """The user's download list: given inline or as the path of a YAML file holding it."""
    wanted = (
        "the download links NYU sent you, as [{url, sha256}] (or set source: local and "
        "path: <folder with singlecoil_train/>)"
    )
    return user_url_entries(urls, f"{SETTING}.urls", wanted)


def entry_name(entry: dict) -> str:
    """The archive's file name: `name`, else the URL's last path part (signed query dropped)."""
    return entry.get("name") or Path(urllib.parse.urlparse(entry["url"]).path).name


def entry_digest(entry: dict) -> tuple[str, str]:
    return ("sha256", entry["sha256"]) if "sha256" in entry else ("md5", entry["md5"])


def public_config(cfg: dict) -> dict:
    """The settings as recorded in the MANIFEST: download links replaced by names and digests."""
    out = dict(cfg)
    if cfg.get("source") == "urls":
        out["urls"] = [
            {"name": entry_name(e), entry_digest(e)[0]: entry_digest(e)[1]}
            for e in url_entries(cfg.get("urls"))
        ]
    elif isinstance(cfg.get("urls"), list):
        out["urls"] = []
    return out


# ---- synthetic knees in the fastMRI format --------------------------------------------------
#: tissue intensities (arbitrary units) per contrast. PD: fatty marrow and subcutaneous fat
#: bright; PDFS suppresses fat, so marrow and fat go dark and fluid stands out.
TISSUES = {
    "CORPD_FBK": dict(
        muscle=0.32, fat=0.95, fluid=0.45, cartilage=0.6, meniscus=0.06, cortex=0.04, marrow=0.8
    ),
    "CORPDFS_FBK": dict(
        muscle=0.3, fat=0.1, fluid=0.8, cartilage=0.55, meniscus=0.05, cortex=0.03, marrow=0.18
    ),
}
#: image scale of the targets: real ESC targets peak at ~1e-4..5e-4, PDFS volumes darker
AMPLITUDE = {"CORPD_FBK": 3e-4, "CORPDFS_FBK": 1.2e-4}
#: complex k-space noise (per part) relative to the volume's amplitude: PDFS has lower SNR
NOISE = {"CORPD_FBK": 0.02, "CORPDFS_FBK": 0.05}
SUPERSAMPLE = 2


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by a 3x3 square, `steps` times (numpy only)."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        grown = np.zeros_like(mask)
        for di in range(3):
            for dj in range(3):
                grown |= padded[di : di + mask.shape[0], dj : dj + mask.shape[1]]
        mask = grown
    return mask


def _ellipse(c: np.ndarray, r: np.ndarray, cc: float, rc: float, a: float, b: float) -> np.ndarray:
    return ((c - cc) / a) ** 2 + ((r - rc) / b) ** 2 <= 1.0


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, width: float) -> np.ndarray:
    """Zero-mean, unit-std random field low-passed by a Gaussian of `width` pixels (texture)."""
    noise = np.fft.fft2(rng.standard_normal(shape))
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]
    field = np.fft.ifft2(noise * np.exp(-2 * (np.pi * width) ** 2 * (fy**2 + fx**2))).real
    return (field - field.mean()) / (field.std() + 1e-12)


def knee_anatomy(rng: np.random.Generator) -> dict[str, float]:
    """One subject's proportions (units: half the crop): leg width, joint line, bones, layers."""
    return {
        "width": rng.uniform(0.78, 0.9),
        "joint": rng.uniform(-0.08, 0.08),
        "gap": rng.uniform(0.12, 0.18),
        "condyle": rng.uniform(0.24, 0.3),
        "offset": rng.uniform(0.26, 0.34),
        "plateau": rng.uniform(0.58, 0.7),
        "fat": rng.uniform(0.07, 0.12),
        "cartilage": rng.uniform(0.04, 0.06),
        "tilt": rng.uniform(-0.05, 0.05),
    }


def knee_regions(
    shape: tuple[int, int], crop: int, anatomy: dict[str, float], position: float
) -> dict[str, np.ndarray]:
    """Tissue masks of one coronal slice on a `SUPERSAMPLE`-times finer grid.

    Rows are the readout axis (H, 2x oversampled: the knee fills the central `crop` rows and the
    leg runs on beyond them), columns the phase-encoding axis (W). `position` in [-1, 1] moves
    through the volume: condyles and plateau shrink towards its ends.
    """
    rows, cols = shape[0] * SUPERSAMPLE, shape[1] * SUPERSAMPLE
    r = ((np.arange(rows) + 0.5) / SUPERSAMPLE - shape[0] / 2) / (crop / 2)
    c = ((np.arange(cols) + 0.5) / SUPERSAMPLE - shape[1] / 2) / (crop / 2)
    r, c = np.meshgrid(r, c, indexing="ij")
    c = c - anatomy["tilt"] * r
    shrink = np.sqrt(1.0 - 0.5 * position**2)
    half = anatomy["width"] * (1 - 0.12 * position**2) * (1 + 0.06 * np.cos(np.pi * r / 2))
    body = np.abs(c) < half
    joint, gap = anatomy["joint"], anatomy["gap"]
    femur_end, tibia_top = joint - gap / 2, joint + gap / 2
    radius, offset = anatomy["condyle"] * shrink, anatomy["offset"] * shrink
    condyles = _ellipse(c, r, -offset, femur_end - 0.85 * radius, radius, 0.85 * radius)
    condyles |= _ellipse(c, r, offset, femur_end - 0.85 * radius, radius, 0.85 * radius)
    femur = condyles | _ellipse(
        c, r, 0.0, femur_end - 0.85 * radius - 0.15, offset + 0.6 * radius, 0.4
    )
    femur |= (np.abs(c) < 0.32 * shrink + 0.05) & (r < femur_end - 0.5)
    plateau = anatomy["plateau"] * shrink
    tibia = (np.abs(c / plateau) ** 4 + np.abs((r - tibia_top - 0.3) / 0.3) ** 4 <= 1) & (
        r >= tibia_top
    )
    tibia |= (np.abs(c) < 0.3 * shrink + 0.05) & (r > tibia_top + 0.45)
    bone = (femur | tibia) & body
    marrow = ~_dilate(~bone, SUPERSAMPLE)
    layer = max(1, round(anatomy["cartilage"] * crop / 2 * SUPERSAMPLE))
    near_joint = np.abs(r - joint) < gap / 2 + 2 * anatomy["cartilage"]
    cartilage = _dilate(bone, layer) & ~bone & near_joint & body
    menisci = (
        _ellipse(c, r, -(plateau - 0.12), joint, 0.12, gap / 2)
        | _ellipse(c, r, plateau - 0.12, joint, 0.12, gap / 2)
    ) & body
    fluid = (np.abs(r - joint) < gap / 2) & (np.abs(c) < plateau) & body
    return {
        "muscle": body,
        "fat": body & (np.abs(c) > half - anatomy["fat"]),
        "fluid": fluid & ~bone,
        "cartilage": cartilage,
        "meniscus": menisci & ~bone,
        "cortex": bone & ~marrow,
        "marrow": marrow,
    }


def knee_slice(
    shape: tuple[int, int],
    crop: int,
    anatomy: dict[str, float],
    position: float,
    acquisition: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """A complex knee-like image (H, W): tissue contrast of `acquisition`, texture, bias, phase."""
    regions = knee_regions(shape, crop, anatomy, position)
    fine = np.zeros(regions["muscle"].shape)
    for tissue, value in TISSUES[acquisition].items():  # later tissues overwrite earlier ones
        fine[regions[tissue]] = value
    fine *= 1 + 0.08 * _smooth_field(fine.shape, rng, 1.5 * SUPERSAMPLE)
    magnitude = fine.reshape(shape[0], SUPERSAMPLE, shape[1], SUPERSAMPLE).mean(axis=(1, 3))
    r = np.linspace(-1, 1, shape[0])[:, None]
    c = np.linspace(-1, 1, shape[1])[None, :]
    bias = 1 + rng.uniform(-0.1, 0.1) * r + rng.uniform(-0.1, 0.1) * c  # receive-coil shading
    phase = rng.uniform(-np.pi, np.pi) + rng.uniform(-0.5, 0.5) * r + rng.uniform(-0.5, 0.5) * c
    return np.clip(magnitude * bias, 0, None) * np.exp(1j * phase)


def to_channels(image: np.ndarray) -> torch.Tensor:
    """Complex array (..., H, W) -> fastmri's real tensor (..., H, W, 2), float64."""
    return torch.from_numpy(np.stack([image.real, image.imag], axis=-1).astype(np.float64))


def to_complex(data: torch.Tensor) -> np.ndarray:
    return torch.view_as_complex(data.contiguous()).numpy()


def crop_center(images: np.ndarray, crop: int) -> np.ndarray:
    """fastmri's `center_crop` on the last two axes (its arithmetic, numpy in and out)."""
    height, width = images.shape[-2:]
    if not (0 < crop <= height and 0 < crop <= width):
        raise ValueError(f"crop {crop} does not fit images of {height}x{width}")
    top, left = (height - crop) // 2, (width - crop) // 2
    return images[..., top : top + crop, left : left + crop]


def ismrmrd_header(height: int, width: int, crop: int, center: int, maximum: int) -> bytes:
    """The parts of an ISMRMRD header that fastMRI's `SliceDataset._retrieve_metadata` reads.

    Sizes as in the real files: encodedSpace = the k-space (readout x phase encoding),
    reconSpace = the target crop, kspace_encoding_step_1 = the acquired phase-encoding lines
    (`center`, `maximum`); columns outside them are zero (fastMRI's `padding_left/right`).
    """
    fov = 140.0  # mm of the recon crop; the encoded FOV scales with the matrix
    fov_x, fov_y = fov * height / crop, fov * width / crop
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="{ISMRMRD}">
  <encoding>
    <encodedSpace>
      <matrixSize><x>{height}</x><y>{width}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fov_x}</x><y>{fov_y}</y><z>3.0</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{crop}</x><y>{crop}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fov}</x><y>{fov}</y><z>3.0</z></fieldOfView_mm>
    </reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center></kspace_encoding_step_1>
    </encodingLimits>
  </encoding>
</ismrmrdHeader>
"""
    return xml.encode()


def synthetic_volume(cfg: dict, acquisition: str, rng: np.random.Generator) -> dict[str, Any]:
    """One volume as fastMRI stores it: k-space from fastmri's fft2c, targets, header sizes.

    The k-space is the phantom's fft2c plus complex noise, with a few edge columns left zero as
    in the real scans (fewer lines acquired than the encoded width). `reconstruction_esc` is the
    magnitude reconstruction of exactly that k-space, cropped (as the emulated single-coil target
    is); `reconstruction_rss` stands in for the multi-coil RSS target: the same slices without
    the single-coil noise.
    """
    synth = cfg["synthetic"]
    height, crop = int(synth["kspace_height"]), int(cfg["crop"])
    lo, hi = synth["kspace_width"]
    width = 2 * int(rng.integers(-(-lo // 2), hi // 2 + 1))  # even, as the real widths
    num_slices = int(rng.integers(synth["slices_per_volume"][0], synth["slices_per_volume"][1] + 1))
    pad_left, pad_right = (int(p) for p in rng.integers(0, 3, size=2))
    acquired = width - pad_left - pad_right
    anatomy = knee_anatomy(rng)
    amplitude = AMPLITUDE[acquisition] * rng.uniform(0.8, 1.2)
    positions = np.linspace(-0.9, 0.9, num_slices)
    clean = (
        np.stack(
            [knee_slice((height, width), crop, anatomy, t, acquisition, rng) for t in positions]
        )
        * amplitude
    )
    sigma = NOISE[acquisition] * amplitude
    noise = sigma * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape))
    kspace = to_complex(fft2c(to_channels(clean))) + noise
    kspace[..., :pad_left] = 0
    kspace[..., width - pad_right :] = 0
    esc = np.abs(to_complex(ifft2c(to_channels(kspace))))
    target = crop_center(esc, crop).astype(np.float32)
    center = width // 2 - pad_left  # so that padding_left = W // 2 - center = pad_left
    return {
        "kspace": kspace.astype(np.complex64),
        "reconstruction_esc": target,
        "reconstruction_rss": crop_center(np.abs(clean), crop).astype(np.float32),
        "ismrmrd_header": ismrmrd_header(height, width, crop, center, acquired - 1),
    }


def write_volume(path: Path, volume: dict[str, Any], acquisition: str, patient_id: str) -> None:
    """One fastMRI volume file; attrs `max` and `norm` of the target volume, as fastMRI's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = volume["reconstruction_esc"]
    with h5py.File(path, "w", track_order=False) as f:
        for key in ("kspace", "reconstruction_esc", "reconstruction_rss"):
            f.create_dataset(key, data=volume[key], track_times=False)
        f.create_dataset(
            "ismrmrd_header", data=np.bytes_(volume["ismrmrd_header"]), track_times=False
        )
        f.attrs["acquisition"] = acquisition
        f.attrs["max"] = float(target.max())
        f.attrs["norm"] = float(np.linalg.norm(target))
        f.attrs["patient_id"] = patient_id


def generate_synthetic(root: Path, cfg: dict, seed: int) -> None:
    """Smoke-scale knees: as many volumes per fastMRI folder as the splits draw from it.

    Acquisitions alternate per file (PD, PDFS, PD, ...) so every split of two or more volumes
    holds both. Names follow fastMRI's `fileNNNNNNN.h5`; the mask seed comes from the name.
    """
    for folder_index, (folder, count) in enumerate(sorted(volumes_per_folder(cfg).items())):
        out = Path(root) / folder
        if out.exists():  # a smaller config must not leave stale volumes behind
            for stale in out.glob("*.h5"):
                stale.unlink()
        rng = np.random.default_rng([seed, 7, folder_index])
        for index in range(count):
            acquisition = list(ACQUISITIONS)[index % 2]
            patient = f"{rng.integers(2**63):016x}{rng.integers(2**63):016x}"
            name = f"file{1_000_000 + 100_000 * folder_index + index}.h5"
            write_volume(out / name, synthetic_volume(cfg, acquisition, rng), acquisition, patient)


# ---- which volumes each split reads ---------------------------------------------------------
def volumes_per_folder(cfg: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for split in SPLITS:
        folder = cfg["folders"][split]
        counts[folder] = counts.get(folder, 0) + int(cfg["splits"][split])
    return counts


def assign_volumes(data_dir: Path, cfg: dict, seed: int) -> dict[str, list[Path]]:
    """Volumes per split: a seeded permutation of each folder's sorted files, cut in split order.

    Splits that share a folder (train and validation from `singlecoil_train`) get disjoint
    volumes; each split's list is sorted by name so its slice order is reproducible.
    """
    out: dict[str, list[Path]] = {}
    taken: dict[str, int] = {}
    for split in SPLITS:
        folder = cfg["folders"][split]
        files = sorted((Path(data_dir) / folder).glob("*.h5"))
        need = volumes_per_folder(cfg)[folder]
        if len(files) < need:
            raise FileNotFoundError(
                f"{SETTING}.splits asks for {need} volumes from {folder}; "
                f"{Path(data_dir) / folder} holds {len(files)}"
            )
        order = np.random.default_rng([seed, zlib.crc32(folder.encode())]).permutation(len(files))
        start = taken.get(folder, 0)
        count = int(cfg["splits"][split])
        out[split] = sorted(files[i] for i in order[start : start + count])
        taken[folder] = start + count
    return out


def check_local(path: Path, cfg: dict) -> Path:
    """The user's fastMRI folder, with every folder the splits draw from (clear error if not)."""
    path = Path(path).expanduser()
    for folder in volumes_per_folder(cfg):
        if not (path / folder).is_dir():
            raise FileNotFoundError(
                f"{SETTING}.path = {str(path)!r} has no folder {folder}/ (expected fastMRI's "
                "extracted singlecoil_train/ and singlecoil_val/)"
            )
    return path


def link_volumes(volumes: dict[str, list[Path]], root: Path) -> dict[str, list[Path]]:
    """Index the user's files under the data root: one symlink per volume the splits read.

    Links, not copies (the training set is ~88 GB), and only the volumes used, so the MANIFEST
    hashes exactly the files read; links of an earlier preparation are removed first.
    """
    folders = {path.parent.name for paths in volumes.values() for path in paths}
    for folder in folders:
        dest = Path(root) / folder
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.iterdir():
            if old.is_symlink():
                old.unlink()
    linked: dict[str, list[Path]] = {}
    for split, paths in volumes.items():
        linked[split] = []
        for path in paths:
            link = Path(root) / path.parent.name / path.name
            link.symlink_to(path.resolve())
            linked[split].append(link)
    return linked


# ---- masks, zero-filled inputs and the cache ------------------------------------------------
def volume_mask(fname: str, width: int, cfg: dict) -> np.ndarray:
    """The column mask of one file: fastMRI's RandomMaskFunc seeded with `file_seed(fname)`."""
    mask = random_mask(width, cfg["center_fraction"], cfg["acceleration"], file_seed(fname))
    return mask.numpy().astype(np.uint8)


def zero_filled(kspace: np.ndarray, mask: np.ndarray, crop: int) -> np.ndarray:
    """|ifft2c(mask * kspace)| centre-cropped, (slices, crop, crop) float32, via the operator.

    Computed with the project's MRI operator (its A_dagger is the zero-filled IFFT and applies
    the mask itself), so the cached input and the physics cannot drift apart.
    """
    operator = MRIPhysics(mask, kspace.shape[-2:])
    magnitude = operator.zero_filled_magnitude(to_channels(kspace), (crop, crop))
    return magnitude.numpy().astype(np.float32)


def slice_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice mean and std (ddof=1, as torch's `std()` in the authors' normalize_instance)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    return flat.mean(axis=1), flat.std(axis=1, ddof=1)


def normalise(images: np.ndarray, mean: Any, std: Any, clamp: float) -> np.ndarray:
    """(images - mean) / (std + EPS) clamped to +-clamp: the authors' network scale."""
    mean, std = np.asarray(mean)[..., None, None], np.asarray(std)[..., None, None]
    return np.clip((images - mean) / (std + EPS), -clamp, clamp).astype(np.float32)


def denormalise(images: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """The inverse of `normalise` where nothing was clamped: back to the scanner's scale."""
    mean, std = np.asarray(mean)[..., None, None], np.asarray(std)[..., None, None]
    return (np.asarray(images, np.float64) * (std + EPS) + mean).astype(np.float32)


@dataclass
class VolumeData:
    """What the cache keeps of one volume."""

    name: str
    acquisition: str
    maxval: float
    shape: tuple[int, int]
    mask: np.ndarray
    target: np.ndarray
    zero_filled: np.ndarray


#: what a volume file must hold for the cache to be computed from it
VOLUME_KEYS = ("kspace", "reconstruction_esc")
VOLUME_ATTRS = ("acquisition",)


def volume_action(cfg: dict, path: Path) -> str:
    """What to do about a bad volume file, by where it came from."""
    source = cfg.get("source")
    if source == "local":
        return f"replace it with an intact copy in your fastMRI folder ({SETTING}.path)"
    if source == "urls":  # <root>/raw/<folder>/<file>.h5, extracted from verified archives
        return (
            f"delete {Path(path).parent.parent} (the extracted archives) and rerun the download "
            "job (`snakemake --forcerun download`) to extract them again"
        )
    return REPREPARE


def open_volume(path: Path, cfg: dict) -> h5py.File:
    """A fastMRI volume opened for reading, with the datasets and attributes the cache reads.

    A truncated file (an interrupted copy or extraction) or a file of another fastMRI track
    fails here, naming itself and what to do, instead of as a KeyError deep in `write_cache`.
    """
    action = volume_action(cfg, path)
    f = open_h5(path, action)
    try:
        require_keys(f, VOLUME_KEYS, "not a fastMRI single-coil volume", action)
        for attr in VOLUME_ATTRS:
            if attr not in f.attrs:
                raise DataFileError(
                    path, f"no attribute {attr!r} (not a fastMRI single-coil volume)", action
                )
    except BaseException:
        f.close()
        raise
    return f


def process_volume(path: Path, cfg: dict) -> VolumeData:
    """Read one fastMRI file, draw its mask, compute its zero-filled input; targets cropped."""
    crop = int(cfg["crop"])
    with open_volume(path, cfg) as f:
        kspace = f["kspace"][()]
        target = f["reconstruction_esc"][()]
        acquisition = str(f.attrs["acquisition"])
    mask = volume_mask(path.name, kspace.shape[-1], cfg)
    target = crop_center(target, crop).astype(np.float32)
    return VolumeData(
        name=path.name,
        acquisition=acquisition,
        maxval=float(target.max()),
        shape=(int(kspace.shape[-2]), int(kspace.shape[-1])),
        mask=mask,
        target=target,
        zero_filled=zero_filled(kspace, mask, crop),
    )


def write_cache(root: Path, volumes: dict[str, list[Path]], cfg: dict) -> None:
    """knee.hdf5: per split the raw target and zero-filled slices, their statistics, volumes.

    Written volume by volume into pre-sized datasets (the train split alone is ~14 GB at
    320x320); chunks of one slice so lazy training batches read only their slices.
    """
    root, crop = Path(root), int(cfg["crop"])
    with h5py.File(root / CACHE, "w", track_order=False) as f:
        for split in SPLITS:
            files = volumes[split]
            slices = []
            for path in files:
                with open_volume(path, cfg) as g:
                    slices.append(int(g["kspace"].shape[0]))
            total, group = sum(slices), f.create_group(split)
            images = {
                key: group.create_dataset(
                    key, (total, crop, crop), np.float32, chunks=(1, crop, crop), track_times=False
                )
                for key in ("target", "zero_filled")
            }
            mean, std = np.zeros(total), np.zeros(total)
            volume_index, slice_index = np.zeros(total, np.int32), np.zeros(total, np.int32)
            table: list[VolumeData] = []
            start = 0
            for index, path in enumerate(files):
                data = process_volume(path, cfg)
                stop = start + len(data.target)
                images["target"][start:stop] = data.target
                images["zero_filled"][start:stop] = data.zero_filled
                mean[start:stop], std[start:stop] = slice_statistics(data.zero_filled)
                volume_index[start:stop] = index
                slice_index[start:stop] = np.arange(stop - start)
                data.target = data.zero_filled = np.empty(0)  # keep only the table in memory
                table.append(data)
                start = stop
            for key, value in (
                ("mean", mean),
                ("std", std),
                ("volume", volume_index),
                ("slice", slice_index),
            ):
                group.create_dataset(key, data=value, track_times=False)
            write_volume_table(group, table, [str(p.relative_to(root)) for p in files])


def write_volume_table(group: h5py.Group, table: list[VolumeData], paths: list[str]) -> None:
    widest = max(v.shape[1] for v in table)
    masks = np.zeros((len(table), widest), np.uint8)
    for row, volume in enumerate(table):
        masks[row, : volume.shape[1]] = volume.mask
    text = h5py.string_dtype()
    columns = {
        "files": np.array(paths, dtype=object),
        "acquisition": np.array([v.acquisition for v in table], dtype=object),
        "maxval": np.array([v.maxval for v in table]),
        "shape": np.array([v.shape for v in table], np.int32),
        "mask": masks,
    }
    for key, value in columns.items():
        dtype = text if value.dtype == object else value.dtype
        group.create_dataset(f"volumes/{key}", data=value, dtype=dtype, track_times=False)


# ---- reading ---------------------------------------------------------------------------------
@dataclass
class Volumes:
    """One split's volume table: file (relative to the root), acquisition, max, size, mask."""

    files: list[str]
    acquisitions: list[str]
    maxval: np.ndarray
    shapes: list[tuple[int, int]]
    masks: list[np.ndarray]

    @property
    def names(self) -> list[str]:
        return [Path(f).name for f in self.files]


def read_volumes(group: h5py.Group) -> Volumes:
    table = group["volumes"]
    shapes = [tuple(int(s) for s in row) for row in table["shape"][()]]
    masks = [row[: shape[1]].copy() for row, shape in zip(table["mask"][()], shapes, strict=True)]
    return Volumes(
        files=list(table["files"].asstr()[()]),
        acquisitions=list(table["acquisition"].asstr()[()]),
        maxval=table["maxval"][()],
        shapes=shapes,
        masks=masks,
    )


def _indices(index: Any, length: int) -> np.ndarray:
    if isinstance(index, slice):
        return np.arange(length)[index]
    index = np.asarray(index)
    if index.size and (index.min() < -length or index.max() >= length):
        raise IndexError(f"index out of range for {length} slices")
    return np.where(index < 0, index + length, index)


class NormalisedStack:
    """A raw on-disk stack read as the network sees it: normalised per slice and clamped.

    Paper-scale training cannot hold the knee slices in memory; `stack[indices]` reads and
    normalises just those slices (integer arrays and slices, like LoDoPaB's LazySplit).
    """

    def __init__(self, raw: Any, mean: np.ndarray, std: np.ndarray, clamp: float, length: int):
        self.raw, self.mean, self.std, self.clamp = raw, mean, std, clamp
        self.shape = (length, *raw.shape[1:])
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            (i,) = _indices([index], len(self))
            return normalise(self.raw[int(i)], self.mean[i], self.std[i], self.clamp)
        index = _indices(index, len(self))
        unique, inverse = np.unique(index, return_inverse=True)  # h5py wants sorted, unique
        block = np.asarray(self.raw[unique], np.float32)
        return normalise(block, self.mean[unique], self.std[unique], self.clamp)[inverse]


class MaskedKSpace:
    """y: the masked k-space of each slice, (H, W_v, 2) float32, read from its volume file.

    Always read on demand (a copy would be as large as the data set, ~65 GB for train). The
    width W_v is the volume's: a batch of slices stacks only when the widths agree, otherwise
    the error says so (zero-padding k-space would resample the image, not measure it).
    """

    max_open = 32

    def __init__(self, root: Path, volumes: Volumes, volume: np.ndarray, slices: np.ndarray):
        self.root, self.volumes = Path(root), volumes
        self.volume, self.slices = volume, slices
        self._open: OrderedDict[int, h5py.File] = OrderedDict()

    def __len__(self) -> int:
        return len(self.volume)

    def _file(self, v: int) -> h5py.File:
        if v not in self._open:
            if len(self._open) >= self.max_open:
                self._open.popitem(last=False)[1].close()
            self._open[v] = open_h5(self.root / self.volumes.files[v], REPREPARE)
        self._open.move_to_end(v)
        return self._open[v]

    def _one(self, i: int) -> np.ndarray:
        v = int(self.volume[i])
        kspace = self._file(v)["kspace"][int(self.slices[i])]
        data = np.stack([kspace.real, kspace.imag], axis=-1).astype(np.float32)
        return data * self.volumes.masks[v][None, :, None].astype(np.float32)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._one(int(_indices([index], len(self))[0]))
        parts = [self._one(int(i)) for i in _indices(index, len(self))]
        widths = sorted({p.shape[1] for p in parts})
        if len(widths) > 1:
            raise ValueError(
                f"k-space widths {widths} differ within this batch: fastMRI volumes have "
                "different phase-encoding widths; take the slices of one volume at a time"
            )
        return np.stack(parts)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}


@dataclass
class KneeSplit(Split):
    """A knee split: x and cond normalised as the networks see them, plus what scoring needs.

    `volume`/`slice_index` (n,) place each slice in `volumes`; `mean`/`std` (n,) are the
    zero-filled statistics that normalised it; `target` (n, crop, crop) is the raw, unclamped
    reconstruction_esc: fastMRI's ground truth.
    """

    volume: np.ndarray | None = None
    slice_index: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    volumes: Volumes | None = None
    target: Any = None

    @property
    def acquisition(self) -> np.ndarray:
        """Per slice: 'CORPD_FBK' or 'CORPDFS_FBK'."""
        return np.asarray(self.volumes.acquisitions, dtype=object)[self.volume]

    @property
    def volume_name(self) -> np.ndarray:
        return np.asarray(self.volumes.names, dtype=object)[self.volume]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        x, y, meta = super().__getitem__(index)
        v = int(self.volume[index])
        meta.update(
            volume=self.volumes.names[v],
            slice=int(self.slice_index[index]),
            acquisition=self.volumes.acquisitions[v],
            maxval=float(self.volumes.maxval[v]),
            mean=float(self.mean[index]),
            std=float(self.std[index]),
        )
        return x, y, meta

    def batches(self, size: int) -> list[np.ndarray]:
        """As `Split.batches`, but never across volumes: their k-space widths differ."""
        starts = np.flatnonzero(np.diff(self.volume, prepend=-1))
        ends = [*starts[1:], len(self)]
        return [
            np.arange(i, min(i + size, int(end)))
            for start, end in zip(starts, ends, strict=True)
            for i in range(int(start), int(end), size)
        ]

    def denormalise(self, images: np.ndarray, indices: Any) -> np.ndarray:
        """Network-scale images of slices `indices` back on the scanner's scale."""
        indices = _indices(indices, len(self))
        return denormalise(images, self.mean[indices], self.std[indices])

    def operator(self, index: int) -> MRIPhysics:
        """The exact forward operator of slice `index`: its volume's mask and k-space size."""
        v = int(self.volume[index])
        return MRIPhysics(self.volumes.masks[v], self.volumes.shapes[v])


def whole_volumes(volume: np.ndarray, limit: int | None) -> int:
    """How many slices a `limit` of slices reads: rounded UP to the end of the last volume.

    fastMRI scores whole volumes (one PSNR over a volume, its max as data range), so a limit
    never cuts one; the cache stores each volume's slices contiguously.
    """
    total = len(volume)
    if limit is None or limit >= total:
        return total
    if limit < 1:
        raise ValueError(f"num_images = {limit}: need at least one slice")
    last = volume[limit - 1]
    return int(limit + np.count_nonzero(volume[limit:] == last))


def cached(root: Path, split: str, key: str, limit: int | None = None) -> np.ndarray:
    """One array of the cache (e.g. the raw `zero_filled`), first `limit` slices."""
    with open_h5(Path(root) / CACHE, REPREPARE) as f:
        require_keys(f, (f"{split}/{key}",), "the prepare job did not finish", REPREPARE)
        return f[f"{split}/{key}"][:limit]


# ---- physics ---------------------------------------------------------------------------------
class KneeMRI(LinearPhysics):
    """The knee measurements' physics: one single-coil MRI operator per volume.

    Masks (seeded per file) and k-space widths differ between volumes, so no single
    `MRIPhysics` is right for a whole split: `volume(name)` (or `KneeSplit.operator(i)`) gives
    the exact one. Without knowing the volume, only the zero-filled inverse is exact for every
    slice, because the stored y is already masked (mask * y = y): A_dagger(y) = ifft2c(y).
    `A` and `A_adjoint` need the mask and refuse rather than guess.
    """

    name = "mri_knee"
    dagger_is_pseudo_inverse = True

    def __init__(self, volumes: dict[str, tuple[np.ndarray, tuple[int, int]]]):
        self.volumes = volumes

    def volume(self, name: str) -> MRIPhysics:
        if name not in self.volumes:
            raise KeyError(f"no knee volume {name!r} in this data root")
        mask, shape = self.volumes[name]
        return MRIPhysics(mask, shape)

    def _per_volume(self, what: str) -> NoReturn:
        raise NotImplementedError(
            f"fastmri_knee: {what} needs the volume's own mask (masks differ per file); use "
            "physics.volume(name) or split.operator(index)"
        )

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self._per_volume("A")

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._per_volume("A_adjoint")

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        return ifft2c(y)

    def zero_filled_magnitude(
        self, y: torch.Tensor, crop: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """|A_dagger(y)| as (b, H, W), centre-cropped to `crop`: the cached input's formula.

        Same signature as `MRIPhysics.zero_filled_magnitude`, so callers need not know which.
        """
        image = self.A_dagger(y)
        magnitude = (image**2).sum(dim=-1).sqrt()
        return magnitude if crop is None else center_crop(magnitude, crop)


# ---- fastMRI's evaluation --------------------------------------------------------------------
def volume_psnr(
    truth: np.ndarray, reconstruction: np.ndarray, maxval: float | None = None
) -> float:
    """PSNR over a whole volume (one MSE over all its voxels), data range = the volume's max."""
    truth = np.asarray(truth, np.float64)
    maxval = float(truth.max()) if maxval is None else float(maxval)
    mse = float(np.mean((truth - np.asarray(reconstruction, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(maxval**2 / mse)


def volume_ssim(
    truth: np.ndarray, reconstruction: np.ndarray, maxval: float | None = None
) -> float:
    """Mean over slices of 7x7 SSIM (scikit-image), each with the VOLUME's max as data range."""
    truth = np.asarray(truth, np.float64)
    reconstruction = np.asarray(reconstruction, np.float64)
    maxval = float(truth.max()) if maxval is None else float(maxval)
    return float(
        np.mean(
            [
                structural_similarity(t, r, data_range=maxval)
                for t, r in zip(truth, reconstruction, strict=True)
            ]
        )
    )


def per_volume(
    reconstructions: np.ndarray,
    truths: np.ndarray,
    volumes: np.ndarray,
    acquisitions: np.ndarray,
    maxvals: dict[Any, float] | None = None,
) -> list[dict[str, Any]]:
    """fastMRI's scores: one row per volume (slices regrouped by `volumes`), with acquisition.

    `maxvals` (volume -> max of its full target volume) keeps the data range right when only
    some slices of a volume are scored; without it, the max of the given slices is used, which
    is fastMRI's `gt.max()` when whole volumes are scored.
    """
    volumes, acquisitions = np.asarray(volumes), np.asarray(acquisitions)
    rows = []
    for volume in dict.fromkeys(volumes.tolist()):  # first-seen order
        where = np.flatnonzero(volumes == volume)
        kinds = set(acquisitions[where].tolist())
        if len(kinds) != 1:
            raise ValueError(f"volume {volume!r} has slices of several acquisitions {kinds}")
        maxval = None if maxvals is None else maxvals[volume]
        truth, reco = np.asarray(truths)[where], np.asarray(reconstructions)[where]
        rows.append(
            {
                "volume": volume,
                "acquisition": kinds.pop(),
                "slices": len(where),
                "psnr": volume_psnr(truth, reco, maxval),
                "ssim": volume_ssim(truth, reco, maxval),
            }
        )
    return rows


def volume_statistics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and std over volumes of PSNR and SSIM; n = volumes.

    std with ddof=0 (numpy's default, the authors' per-volume script); fastMRI's own
    evaluate.py reports runstats' ddof=1 std, so the two differ slightly for few volumes.
    """
    psnr = np.array([r["psnr"] for r in rows], np.float64)
    ssim = np.array([r["ssim"] for r in rows], np.float64)
    if not len(rows):
        return {"n": 0}
    return {
        "n": len(rows),
        "psnr_mean": float(psnr.mean()),
        "psnr_std": float(psnr.std()),
        "ssim_mean": float(ssim.mean()),
        "ssim_std": float(ssim.std()),
    }


def by_acquisition(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """`volume_statistics` per acquisition ('PD', 'PDFS'), as the seed paper's Table 5."""
    out: dict[str, dict[str, float]] = {}
    for acquisition, label in ACQUISITIONS.items():
        group = [r for r in rows if r["acquisition"] == acquisition]
        if group:
            out[label] = volume_statistics(group)
    return out


class VolumeScorer:
    """fastMRI's evaluation fed slice by slice: a volume is scored when its last slice arrives.

    The protocols see one slice at a time; holding every reconstruction of the fastMRI
    validation set (7,135 slices of 320x320) per estimator would cost gigabytes, so only the
    volume being filled is kept. Scores are those of `FastMRIKnee.volume_metrics` (scanner scale,
    data range = the max of the full target volume, PSNR over the volume, mean slice SSIM), per
    estimator, then mean and std over volumes per acquisition (PD, PDFS) and over all volumes.
    A slice without an estimate (every posterior draw non-finite) leaves its volume unscored,
    counted in `unscored`, rather than scored on the slices that remain.
    """

    filename = "per_volume.csv"
    label = "fastMRI's per-volume scores (scanner scale, data range = the volume's max)"

    def __init__(self, dataset: FastMRIKnee, split: KneeSplit):
        self.dataset, self.split = dataset, split
        self.expected = np.bincount(split.volume, minlength=len(split.volumes.files))
        self.pending: dict[tuple[str, int], dict[int, np.ndarray | None]] = {}
        self.rows: list[dict[str, Any]] = []

    def add(self, estimator: str, index: int, estimate: np.ndarray | None) -> None:
        volume = int(self.split.volume[index])
        slices = self.pending.setdefault((estimator, volume), {})
        slices[int(index)] = None if estimate is None else np.asarray(estimate, np.float32)
        if len(slices) == self.expected[volume]:
            self._score(estimator, volume, self.pending.pop((estimator, volume)))

    def _score(self, estimator: str, volume: int, slices: dict[int, np.ndarray | None]) -> None:
        indices = np.array(sorted(slices))
        name = self.split.volumes.names[volume]
        if any(slices[i] is None for i in indices):
            row = {"volume": name, "acquisition": self.split.volumes.acquisitions[volume]}
            row.update(slices=len(indices), psnr=float("nan"), ssim=float("nan"))
        else:
            stack = np.stack([slices[i] for i in indices])
            (row,) = self.dataset.volume_metrics(self.split, stack, indices)["volumes"]
        self.rows.append({"estimator": estimator, **row})

    def finish(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, dict[str, float]]]]:
        if self.pending:
            missing = sorted({self.split.volumes.names[v] for _, v in self.pending})
            raise RuntimeError(f"volumes {missing} were not scored: some slices never arrived")
        summary: dict[str, dict[str, dict[str, float]]] = {}
        for estimator in dict.fromkeys(r["estimator"] for r in self.rows):
            rows = [r for r in self.rows if r["estimator"] == estimator]
            scored = [r for r in rows if np.isfinite(r["psnr"])]
            groups = {**by_acquisition(scored), "all": volume_statistics(scored)}
            lost = [r["acquisition"] for r in rows if not np.isfinite(r["psnr"])]
            for acquisition, label in [*ACQUISITIONS.items(), (None, "all")]:
                count = sum(acquisition in (None, a) for a in lost)
                if count or label in groups:
                    groups.setdefault(label, {"n": 0})["unscored"] = count
            summary[estimator] = groups
        return self.rows, summary


# ---- the dataset -----------------------------------------------------------------------------
@register_dataset("fastmri_knee")
class FastMRIKnee(Dataset):
    """fastMRI single-coil knee, 4x random Cartesian masks, the seed authors' normalisation.

    x = reconstruction_esc and cond['zero_filled'] = |ifft2c(mask * kspace)|, both cropped and
    normalised by the zero-filled slice's mean and std, clamped to +-clamp (what the authors'
    cINN learns on); y = the masked k-space (H, W_v, 2) of the scanner's scale. The paper's numbers
    come from `volume_metrics` (per volume, scanner scale, split PD/PDFS); `metrics`, the
    per-image hook the generic protocols call, stays the base class's per-slice max - min
    convention on the stored scale: a diagnostic (its PSNR is invariant to the per-slice affine
    normalisation where nothing was clamped; its SSIM is not).
    """

    conditionings = ("zero_filled",)
    unit = "volumes"  # `splits` counts volumes; slices follow from the files
    groups = (*ACQUISITIONS.values(), "all")

    # ---- getting the data -------------------------------------------------------------------
    def _source(self) -> str:
        source = self.cfg.get("source")
        if source not in SOURCES:
            raise ValueError(f"{SETTING}.source = {source!r}: expected one of {SOURCES}")
        return source

    def needs_download(self) -> bool:
        return self._source() == "urls"

    def download(self, root: Path) -> dict:
        """Fetch the user's archives (resumable, checksummed), extract them to `raw/`.

        The receipt names archives and digests only: the links are the user's own.
        """
        if self._source() != "urls":
            return super().download(root)
        root = Path(root)
        receipt = []
        for index, entry in enumerate(url_entries(self.cfg.get("urls"))):
            algorithm, digest = entry_digest(entry)
            dest = root / "archives" / entry_name(entry)
            setting = f"{SETTING}.urls[{index}]"
            path = download(entry["url"], dest, digest, algorithm, setting=setting)
            extract(path, root / "raw")
            receipt.append({"name": path.name, algorithm: digest})
        return {"files": receipt}

    def _data_dir(self, root: Path) -> Path:
        """Where the fastMRI folders are read: the root (synthetic), the user's `path`
        (local; linked into the root afterwards) or `raw/` (extracted downloads)."""
        source = self._source()
        if source == "local":
            return check_local(Path(self.cfg["path"]), self.cfg)
        return Path(root) / "raw" if source == "urls" else Path(root)

    def prepare(self, root: Path) -> None:
        """Volumes in place (generated, linked or downloaded), then the cache, then MANIFEST."""
        root = Path(root)
        source = self._source()
        root.mkdir(parents=True, exist_ok=True)
        if source == "synthetic":
            if not self.cfg.get("synthetic"):
                raise ValueError(f"{SETTING}.synthetic: source 'synthetic' needs its geometry")
            generate_synthetic(root, self.cfg, self.seed)
        elif source == "local":
            if not self.cfg.get("path"):
                raise ValueError(
                    f"{SETTING}.path is not set: source 'local' needs the folder holding "
                    "fastMRI's singlecoil_train/ and singlecoil_val/ (or use source: urls "
                    "with the links NYU sent you)"
                )
        else:
            url_entries(self.cfg.get("urls"))  # a clear error before looking for files
        volumes = assign_volumes(self._data_dir(root), self.cfg, self.seed)
        if source == "local":
            volumes = link_volumes(volumes, root)
        write_cache(root, volumes, self.cfg)
        write_manifest(root, {"dataset": "fastmri_knee", "config": public_config(self.cfg)})

    # ---- reading it -------------------------------------------------------------------------
    def split(
        self, root: Path, split: str, limit: int | None = None, lazy: bool = False
    ) -> KneeSplit:
        root = Path(root)
        path = root / CACHE
        if not path.exists():
            raise FileNotFoundError(f"{path}: knee data not prepared (run the data step)")
        clamp = float(self.cfg["clamp"])
        f = open_h5(path, REPREPARE)
        try:
            require_keys(f, (split,), "the prepare job did not finish", REPREPARE)
        except DataFileError:
            f.close()
            raise
        group = f[split]
        n = whole_volumes(group["volume"][()], limit)
        table = {k: group[k][:n] for k in ("mean", "std", "volume", "slice")}
        volumes = read_volumes(group)
        y = MaskedKSpace(root, volumes, table["volume"], table["slice"])
        if lazy:
            target = group["target"]
            x = NormalisedStack(target, table["mean"], table["std"], clamp, n)
            cond = NormalisedStack(group["zero_filled"], table["mean"], table["std"], clamp, n)
        else:
            target = group["target"][:n]
            x = normalise(target, table["mean"], table["std"], clamp)
            cond = normalise(group["zero_filled"][:n], table["mean"], table["std"], clamp)
            f.close()
        return KneeSplit(
            x,
            y,
            {"zero_filled": cond},
            volume=table["volume"],
            slice_index=table["slice"],
            mean=table["mean"],
            std=table["std"],
            volumes=volumes,
            target=target,
        )

    def physics(self, root: Path) -> KneeMRI:
        operators = {}
        with open_h5(Path(root) / CACHE, REPREPARE) as f:
            require_keys(f, SPLITS, "the prepare job did not finish", REPREPARE)
            for split in SPLITS:
                volumes = read_volumes(f[split])
                for name, mask, shape in zip(
                    volumes.names, volumes.masks, volumes.shapes, strict=True
                ):
                    operators[name] = (mask, shape)
        return KneeMRI(operators)

    def volume_metrics(
        self, split: KneeSplit, reconstructions: np.ndarray, indices: Any = None
    ) -> dict[str, Any]:
        """fastMRI's evaluation of network-scale reconstructions of slices `indices`.

        Reconstructions are taken back to the scanner's scale with each slice's mean/std and
        scored against the raw, unclamped reconstruction_esc; data range = the max of the full
        target volume. Returns per-volume rows and the PD/PDFS aggregate.
        """
        indices = _indices(
            np.arange(len(reconstructions)) if indices is None else indices, len(split)
        )
        scanner = split.denormalise(np.asarray(reconstructions), indices)
        unique, inverse = np.unique(indices, return_inverse=True)  # h5py wants sorted, unique
        truths = np.asarray(split.target[unique], np.float32)[inverse]
        names = split.volume_name[indices]
        maxvals = dict(zip(split.volumes.names, split.volumes.maxval.tolist(), strict=True))
        rows = per_volume(scanner, truths, names, split.acquisition[indices], maxvals)
        return {"volumes": rows, "by_acquisition": by_acquisition(rows)}

    def group_scorer(self, split: KneeSplit) -> VolumeScorer:
        return VolumeScorer(self, split)

    def describe(self, scale: str) -> str:
        splits = self.cfg["splits"]
        counts = f"{splits['train']}/{splits['validation']}/{splits['test']} volumes"
        mask = f"{self.cfg['acceleration']}x random mask, {self.cfg['center_fraction']:g} centre"
        if self._source() == "synthetic":
            synth = self.cfg["synthetic"]
            lo, hi = synth["kspace_width"]
            return (
                "smoke: synthetic knee-like phantoms in fastMRI's single-coil format "
                f"(k-space {synth['kspace_height']}x{lo}-{hi}, crop {self.cfg['crop']}, "
                f"{counts}, {mask})"
            )
        return (
            f"fastMRI single-coil knee ({counts}, test from {self.cfg['folders']['test']}, {mask})"
        )


def extract(archive: Path, dest: Path) -> None:
    """Unpack a fastMRI tar archive once (a marker records it); refuse anything else.

    tarfile's "data" filter refuses entries that would land outside `dest` (absolute or '..'
    paths, links pointing out, devices); the refusal names the archive and the entry. A
    truncated archive names itself. Either way no marker is written, so a rerun tries again.
    """
    marker = Path(dest) / f".{archive.name}.extracted"
    if marker.exists():
        return
    refetch = "delete it and rerun `snakemake` to fetch it again"
    if not tarfile.is_tarfile(archive):
        raise DataFileError(
            archive,
            "not a tar archive",
            f"{SETTING}.urls should list fastMRI's knee_singlecoil_*.tar.* files",
        )
    Path(dest).mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:  # one pass: an .xz archive of ~88 GB is slow to reread
            tar.extractall(dest, filter="data")
            members = len(tar.getmembers())  # already read by extractall
    except tarfile.FilterError as error:
        name = error.tarinfo.name if error.tarinfo is not None else "?"
        raise DataFileError(
            archive,
            f"entry {name!r} refused, as it could write outside {dest} ({error})",
            f"{refetch} (if it recurs, the file on the server is not fastMRI's)",
        ) from None
    except (tarfile.ReadError, EOFError) as error:
        raise DataFileError(archive, f"truncated or corrupt archive ({error})", refetch) from None
    marker.write_text(json.dumps({"members": members}) + "\n")
