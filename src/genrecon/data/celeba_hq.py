"""CelebA-HQ faces at 128 px for Glow deblurring (seed 003, Sec. 4.2 and App. F), and a stand-in.

What the paper uses (App. F; FACTS "CelebA-HQ"): the 30,000 CelebA-HQ faces (Karras et al. 2018,
CC BY-NC 4.0; CelebA's images are for non-commercial research only) downsampled to 128 x 128,
split by CelebA's own partition (Liu et al. 2015) into train 24,183 / validation 2,993 / test
2,824; the Glow is trained on train, and 100 test images are deblurred (their CelebA file numbers
are listed in the authors' More_details.md: `PAPER_TEST`).

Why a module of its own: CelebA-HQ has no canonical single-file download (FACTS). It comes as
30,000 images named by their CelebA-HQ index, `00000.jpg` .. `29999.jpg` (or `0.jpg` ..; JPEG or
PNG; 1024 px), plus `CelebA-HQ-to-CelebA-mapping.txt` (columns `idx orig_idx orig_file`, as
CelebAMask-HQ ships it; Karras' `image_list.txt` has the same columns and two more). The split
needs a second file from CelebA itself, `list_eval_partition.txt` (`<file> <0|1|2>`, 202,599
lines; Kaggle's `list_eval_partition.csv` is accepted too). So the user points us at a folder
(`local`) or at his own download links (`urls`), and both index files are checked against the
split sizes of the settings, naming the file or setting that disagrees.

Settings (`datasets.celeba_hq`):

- `source`: `local` (the folder `path`), `urls` (the user's own links, as `knee.py`'s: a list of
  `{url, sha256 | md5, name?}` or the path of a YAML file holding it; zip and tar archives are
  extracted to `raw/`, other files such as `list_eval_partition.txt` copied there; links are
  personal, none ship with the project, the MANIFEST records names and digests only) or `lfw`
  (smoke: the STAND-IN below).
- `path`: for `local`, a folder holding, anywhere below it, the images (any of the name styles
  `00000.jpg`, `0.jpg`, or CelebA's own `182690.jpg` / `000004.jpg` for a renamed copy; `.jpg`,
  `.jpeg` or `.png`) and the two index files.
- `image_size`: images are resized to image_size x image_size with scikit-image's
  `resize(..., anti_aliasing=True)` (Gaussian pre-filter, then bilinear interpolation). The
  authors' training script used torchvision's `Resize` + `CenterCrop` (PIL's bilinear filter with
  its own anti-aliasing; tasks/glow/training/train.py), and their inversion targets were 128 px
  JPEGs they saved; so pixels differ slightly from theirs.
- `channels`: 3 (RGB) for CelebA-HQ; 1 for the grey LFW stand-in.
- `splits`: images per split. For CelebA-HQ they must equal what the two index files give (the
  paper's 24,183 / 2,993 / 2,824 with the real files); for `lfw`, at most 100 in all.
- `blur_sigma`, `noise_std`: the reference deblurring of the paper (Sec. 4.2): a Gaussian blur of
  standard deviation 3 px at 128 px, noise of standard deviation 50/255 (the authors' default
  `--smth_sigma 3.0 --noise_std 50.0` on images in 0..255, tasks/glow/inversion/
  main_glow_inv_p2.py).

The smoke STAND-IN (`source: lfw`) is NOT CelebA-HQ: it is the 100 face images of scikit-image's
`skimage.data.lfw_subset()` (Labeled Faces in the Wild, Huang, Ramesh, Berg and Learned-Miller
2007; the subset of Huang et al. 2012, shipped with scikit-image): 25 x 25 grey faces in [0, 1].
The subset also holds 100 NON-faces (background patches), which are left out. The faces are
padded to image_size by reflection (mirroring the border rows and columns, numpy's `reflect`:
the face crop's texture continues into the border with no constant band and no black frame;
zeros would add a sharp square edge that a blur smears and a face prior never saw), with the
odd pixel at the bottom/right (25 -> 32: 3 above and left, 4 below and right), and split
deterministically by a seeded permutation (identities may repeat across splits: the subset
holds no names).

What `prepare` writes under the data root (the caller's `data/celeba_hq/<scale>`, tracked by
DVC with the rest of data/): `celeba_hq.hdf5` with, per split, `x` (n, C, S, S) uint8 (what the
images are: 8-bit pixels, resized, rounded; a quarter of float32's size, 1.5 GB at paper
scale; read as x / 255) and `source_index` (the CelebA-HQ index, or the lfw_subset index); for
CelebA-HQ also `celeba_file` (the CelebA file number: 182690 = 182690.jpg) and `sha256` (of
each source image file). The test split starts with the paper's 100 images in the authors'
order (`PAPER_TEST`, ascending file numbers); its attribute `paper_test` says how many are
there (100 with the real files; 0 for the stand-in), so `evaluate.num_images: 100` takes
exactly the paper's images. Then MANIFEST.json, last. The 30,000 images are streamed (one
read, resized and written at a time, with a progress bar), never held in memory.

Reading: x = the images in [0, 1], float32 (C, S, S); y = the reference measurement, the blur
of x plus noise, computed on reading (a fixed function of x and a seed: storing it would double
the file), each image with its own generator seeded by (seed, split, index), so y does not
depend on batching or on `limit`. The authors added noise from `RandomState(1234)` per image
run (the same noise pattern for every image); we draw a different one per image.

Physics: `physics.blur.GaussianBlur`: a PERIODIC blur with the full Gaussian kernel. The authors
convolve with a kernel truncated at radius int(4 sigma + 0.5) = 12 after REFLECT padding
(dgminv/ops/gaussian_op.py: GaussianSmoothing); the two differ only within a few pixels of the
border.

Metrics: PSNR and SSIM with the data range of the images, 1 (the authors' 255 on 0..255;
dgminv/utils/img_metrics.py), not the base class's per-image max - min; SSIM as Wang et al.
2004 and the authors (Gaussian window sigma 1.5, 11 x 11, population covariances), averaged over
the colour channels (`channel_axis`).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from skimage.metrics import structural_similarity
from skimage.transform import resize
from tqdm import tqdm

from genrecon.atomic import atomic_path
from genrecon.data import knee, lodopab
from genrecon.data.base import (
    MANIFEST,
    Dataset,
    ImageStack,
    Split,
    register_dataset,
    write_manifest,
)
from genrecon.data.download import download, file_digest, user_url_entries
from genrecon.data.errors import REPREPARE, DataError, DataFileError, open_h5, require_keys
from genrecon.physics.blur import GaussianBlur

SETTING = "datasets.celeba_hq"
SPLITS = ("train", "validation", "test")
SOURCES = ("local", "urls", "lfw")
CACHE = "celeba_hq.hdf5"
#: CelebA's partition codes (list_eval_partition.txt) -> our split names
PARTITION = {0: "train", 1: "validation", 2: "test"}
#: what the real files give: the paper's split sizes (App. F), CelebA-HQ's and CelebA's sizes
PAPER_SPLITS = {"train": 24183, "validation": 2993, "test": 2824}
HQ_IMAGES = 30000
CELEBA_FILES = 202599
MAPPING_NAMES = ("CelebA-HQ-to-CelebA-mapping.txt", "image_list.txt")
PARTITION_NAMES = ("list_eval_partition.txt", "list_eval_partition.csv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: how the image of CelebA-HQ index i (CelebA file number f) may be named, tried in this order
NAME_STYLES = {
    "{idx:05d}": lambda i, f: f"{i:05d}",
    "{idx}": lambda i, f: str(i),
    "{celeba_file:06d}": lambda i, f: f"{f:06d}",
    "{celeba_file}": lambda i, f: str(f),
}
#: the authors' 100 test images (More_details.md), CelebA file numbers in their order
PAPER_TEST = (
    182690, 182722, 182861, 183123, 183723, 183870, 184208, 184312, 184313, 185089, 185120,
    185180, 185258, 185438, 185543, 185545, 185548, 185989, 186069, 186252, 186333, 186352,
    186521, 186618, 187268, 187663, 188005, 188132, 188208, 188581, 189281, 189498, 189674,
    189756, 189915, 190373, 190641, 190678, 191073, 191411, 191463, 191596, 191643, 191695,
    192064, 192104, 192337, 192379, 192501, 192699, 193127, 193272, 193835, 193885, 194044,
    194656, 194792, 195135, 195483, 195665, 195747, 195751, 195988, 196198, 196439, 196804,
    196941, 197102, 197162, 197513, 197913, 198029, 198093, 198141, 198506, 198650, 198725,
    198991, 199367, 199377, 199782, 199841, 200052, 200190, 200431, 200544, 200627, 200746,
    200760, 200813, 200967, 200976, 201009, 201082, 201101, 201195, 201286, 202077, 202409,
    202591,
)  # fmt: skip
#: the stand-in: scikit-image's lfw_subset holds 100 faces, then 100 non-faces, 25 x 25
LFW_FACES, LFW_SIZE = 100, 25
#: what to do about a bad source image
REPLACE_IMAGE = (
    "replace it with the file from your CelebA-HQ copy (re-extract or re-download it) and rerun "
    "the prepare job"
)


class MissingDataError(DataError, FileNotFoundError):
    """A file the CelebA-HQ layout needs is not where the settings point."""


class SplitSizeError(DataError, ValueError):
    """`splits` and the index files disagree; the message says which one to fix."""


# ---- settings -----------------------------------------------------------------------------------
def check_settings(cfg: dict) -> str:
    """The source, after refusing settings that would fail deep inside preparation."""
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"{SETTING}.source = {source!r}: expected one of {SOURCES}")
    size, channels = int(cfg["image_size"]), int(cfg["channels"])
    splits = {split: int(cfg["splits"][split]) for split in SPLITS}
    if min(splits.values()) < 1:
        raise ValueError(f"{SETTING}.splits = {splits}: every split needs at least one image")
    if float(cfg["blur_sigma"]) <= 0:
        raise ValueError(f"{SETTING}.blur_sigma = {cfg['blur_sigma']}: must be positive")
    if float(cfg["noise_std"]) < 0:
        raise ValueError(f"{SETTING}.noise_std = {cfg['noise_std']}: must not be negative")
    if source == "lfw":
        if channels != 1:
            raise ValueError(f"{SETTING}.channels = {channels}: the lfw faces are grey, use 1")
        if size < LFW_SIZE:
            raise ValueError(
                f"{SETTING}.image_size = {size}: the lfw faces ({LFW_SIZE} px) are padded, "
                f"not shrunk; use at least {LFW_SIZE}"
            )
        if sum(splits.values()) > LFW_FACES:
            raise ValueError(
                f"{SETTING}.splits = {splits} asks for {sum(splits.values())} images; the lfw "
                f"stand-in has {LFW_FACES} faces"
            )
        return source
    if channels != 3:
        raise ValueError(f"{SETTING}.channels = {channels}: CelebA-HQ is RGB, use 3")
    if size < 8:
        raise ValueError(f"{SETTING}.image_size = {size}: need at least 8 pixels")
    if source == "local" and not cfg.get("path"):
        raise ValueError(
            f"{SETTING}.path is not set: source 'local' needs the folder holding CelebA-HQ's "
            f"images, {MAPPING_NAMES[0]} and CelebA's {PARTITION_NAMES[0]} (or use source: "
            "urls with your own download links)"
        )
    return source


def url_entries(urls: list[dict] | str | None) -> list[dict]:
    """The user's download list: given inline or as the path of a YAML file holding it."""
    wanted = (
        f"your own links to CelebA-HQ's images (an archive), {MAPPING_NAMES[0]} and CelebA's "
        f"{PARTITION_NAMES[0]}, as [{{url, sha256}}] (or set source: local and path: <your folder>)"
    )
    return user_url_entries(urls, f"{SETTING}.urls", wanted)


def public_config(cfg: dict) -> dict:
    """The settings as the MANIFEST records them: download links replaced by names and digests."""
    out = dict(cfg)
    if cfg.get("source") == "urls":
        out["urls"] = [
            {"name": knee.entry_name(e), knee.entry_digest(e)[0]: knee.entry_digest(e)[1]}
            for e in url_entries(cfg.get("urls"))
        ]
    elif isinstance(cfg.get("urls"), list):
        out["urls"] = []
    return out


def unpack(path: Path, dest: Path) -> None:
    """A downloaded file into `dest`: zip and tar archives extracted (safely), others copied."""
    if zipfile.is_zipfile(path):
        lodopab.extract_zip(path, dest)  # entries checked to land inside dest; resumable
    elif tarfile.is_tarfile(path):
        knee.extract(path, dest)  # tarfile's "data" filter; once (marker)
    else:
        target = Path(dest) / path.name
        if not (target.exists() and target.stat().st_size == path.stat().st_size):
            Path(dest).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


# ---- the index files ----------------------------------------------------------------------------
def _file_number(name: str, path: Path, line: int) -> int:
    """182690 for '182690.jpg' or '182690' (CelebA names its files by a 1-based number)."""
    stem = Path(name).stem
    if not stem.isdigit():
        raise DataFileError(path, f"line {line}: {name!r} is not a CelebA file name", _ORIGINAL)
    return int(stem)


_ORIGINAL = "use the original file (CelebAMask-HQ's mapping, CelebA's Eval/ partition list)"


def read_mapping(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """CelebA-HQ index and CelebA file number of every image, in CelebA-HQ index order.

    Columns by the header's names (`idx`, `orig_file`), so CelebAMask-HQ's three-column mapping
    and Karras' five-column image_list.txt both work; `orig_file` may be zero-padded or not.
    """
    lines = [(n, line.split()) for n, line in enumerate(Path(path).read_text().splitlines(), 1)]
    lines = [(n, tokens) for n, tokens in lines if tokens]
    if not lines or not {"idx", "orig_file"} <= set(lines[0][1]):
        raise DataFileError(
            path, "no header naming the columns `idx` and `orig_file`: not CelebA-HQ's mapping",
            _ORIGINAL,
        )  # fmt: skip
    header = lines[0][1]
    column_idx, column_file = header.index("idx"), header.index("orig_file")
    hq, files = [], []
    for number, tokens in lines[1:]:
        if len(tokens) < len(header) or not tokens[column_idx].isdigit():
            raise DataFileError(
                path, f"line {number}: {' '.join(tokens)!r} is not a row", _ORIGINAL
            )
        hq.append(int(tokens[column_idx]))
        files.append(_file_number(tokens[column_file], path, number))
    hq_array, file_array = np.asarray(hq, np.int64), np.asarray(files, np.int64)
    if len(np.unique(hq_array)) != len(hq_array) or len(np.unique(file_array)) != len(file_array):
        raise DataFileError(path, "an `idx` or `orig_file` appears twice", _ORIGINAL)
    order = np.argsort(hq_array, kind="stable")
    return hq_array[order], file_array[order]


def read_partition(path: Path) -> dict[int, int]:
    """CelebA file number -> partition (0 train, 1 validation, 2 test).

    `list_eval_partition.txt` ("000001.jpg 0") or Kaggle's `.csv` ("image_id,partition" header).
    """
    out: dict[int, int] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        tokens = [t for t in re.split(r"[,\s]+", line.strip()) if t]
        if not tokens:
            continue
        if number == 1 and not tokens[-1].isdigit():  # the csv's header
            continue
        if len(tokens) != 2 or tokens[1] not in ("0", "1", "2"):
            raise DataFileError(
                path, f"line {number}: {line.strip()!r} is not '<file> <0|1|2>'", _ORIGINAL
            )
        out[_file_number(tokens[0], path, number)] = int(tokens[1])
    return out


@dataclass
class Layout:
    """Where a CelebA-HQ copy keeps its index files and images (found under one folder)."""

    folder: Path
    mapping: Path
    partition: Path
    #: folder -> {numeric stem: file name} of its image files (folders holding any)
    images: dict[Path, dict[str, str]] = field(default_factory=dict)


def find_layout(folder: Path, where: str) -> Layout:
    """Walk `folder` once for the two index files and every folder of numbered images.

    `where` names the folder and the setting that gave it, for the errors.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MissingDataError(f"{where}: no such folder")
    found: dict[str, list[Path]] = {name: [] for name in (*MAPPING_NAMES, *PARTITION_NAMES)}
    images: dict[Path, dict[str, str]] = {}
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs.sort()
        stems = {}
        for name in files:
            if name in found:
                found[name].append(Path(directory) / name)
            stem, extension = os.path.splitext(name)
            if extension.lower() in IMAGE_EXTENSIONS and stem.isdigit():
                stems.setdefault(stem, name)
        if stems:
            images[Path(directory)] = stems
    mapping = _first(found, MAPPING_NAMES)
    partition = _first(found, PARTITION_NAMES)
    for what, path, names, origin in (
        ("CelebA-HQ's index of its images (columns idx, orig_idx, orig_file)", mapping,
         MAPPING_NAMES, "CelebAMask-HQ ships it"),
        ("CelebA's partition of its 202,599 files into train/validation/test", partition,
         PARTITION_NAMES, "CelebA's Eval/ folder, mmlab.ie.cuhk.edu.hk/projects/CelebA.html"),
    ):  # fmt: skip
        if path is None:
            raise MissingDataError(
                f"{where}: no {' or '.join(names)} anywhere below it; that file is {what} "
                f"({origin}); put it in that folder"
            )
    return Layout(folder, mapping, partition, images)


def _first(found: dict[str, list[Path]], names: tuple[str, ...]) -> Path | None:
    """The shallowest file of the first of `names` found (sorted, so always the same one)."""
    for name in names:
        if found[name]:
            return min(found[name], key=lambda p: (len(p.parts), str(p)))
    return None


def image_files(layout: Layout, hq: np.ndarray, files: np.ndarray, where: str) -> list[Path]:
    """The image file of every mapped image, in one folder and one name style.

    The folder and style are the ones under which every image exists (styles tried in the
    order of NAME_STYLES); none complete: an error naming the folder and style that came
    closest and the first names missing; several folders complete: an error listing them.
    """
    complete, best = [], (-1, None, None, [])
    for directory, stems in sorted(layout.images.items()):
        for style, name_of in NAME_STYLES.items():
            names = [name_of(int(i), int(f)) for i, f in zip(hq, files, strict=True)]
            missing = [n for n in names if n not in stems]
            if not missing:
                complete.append((directory, style, names))
                break
            if len(names) - len(missing) > best[0]:
                best = (len(names) - len(missing), directory, style, missing)
    if len(complete) > 1:
        folders = ", ".join(str(c[0]) for c in complete)
        raise MissingDataError(
            f"{where}: several folders below it hold all {len(hq)} CelebA-HQ images "
            f"({folders}); keep one (or point {SETTING}.path at a folder with one of them and "
            "the two index files)"
        )
    if not complete:
        found, directory, style, missing = best
        if directory is None:
            raise MissingDataError(
                f"{where}: no numbered images (00000.jpg or 0.jpg; "
                f".jpg, .jpeg or .png) anywhere below it; the {len(hq)} images that "
                f"{layout.mapping} lists are needed"
            )
        shown = ", ".join(f"{n}.*" for n in missing[:5])
        raise MissingDataError(
            f"{where}: its folder {str(directory)!r} lacks {len(missing)} of the {len(hq)} images "
            f"that {layout.mapping.name} lists (named {style}.jpg/.png: {shown}"
            f"{', ...' if len(missing) > 5 else ''})"
        )
    directory, _, names = complete[0]
    stems = layout.images[directory]
    return [directory / stems[name] for name in names]


# ---- which image goes where -------------------------------------------------------------------
def assign_splits(
    hq: np.ndarray, files: np.ndarray, partition: dict[int, int], layout: Layout, cfg: dict
) -> dict[str, np.ndarray]:
    """Positions (into the mapping's rows) of each split's images, in the order they are stored.

    train and validation in CelebA-HQ index order; test with the paper's images first, in the
    order of PAPER_TEST, then the rest in index order. The sizes must equal `splits`.
    """
    missing = [int(f) for f in files if int(f) not in partition]
    if missing:
        raise DataFileError(
            layout.partition,
            f"no partition for {len(missing)} of the images {layout.mapping.name} lists "
            f"(CelebA files {', '.join(f'{m:06d}.jpg' for m in missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''})",
            "use CelebA's own list_eval_partition.txt (202,599 lines)",
        )
    codes = np.array([partition[int(f)] for f in files])
    out = {split: np.flatnonzero(codes == code) for code, split in PARTITION.items()}
    check_split_sizes({s: len(v) for s, v in out.items()}, len(files), len(partition), layout, cfg)
    first = {int(f): position for position, f in enumerate(files)}
    paper = [first[f] for f in PAPER_TEST if f in first and codes[first[f]] == 2]
    rest = np.setdiff1d(out["test"], paper, assume_unique=True)
    out["test"] = np.concatenate([np.asarray(paper, np.int64), rest]).astype(np.int64)
    return out


def check_split_sizes(
    counts: dict[str, int], mapped: int, partitioned: int, layout: Layout, cfg: dict
) -> None:
    """`splits` must equal what the files give; the message says which one is wrong."""
    wanted = {split: int(cfg["splits"][split]) for split in SPLITS}
    if counts == wanted:
        return

    def show(sizes: dict[str, int]) -> str:
        return "/".join(str(sizes[s]) for s in SPLITS)

    if counts == PAPER_SPLITS:
        verdict = (
            f"the files are CelebA-HQ's and CelebA's: the setting is wrong; set {SETTING}.splits "
            f"to {{train: {counts['train']}, validation: {counts['validation']}, test: "
            f"{counts['test']}}}"
        )
    elif mapped != HQ_IMAGES:
        verdict = (
            f"{layout.mapping} lists {mapped} images, CelebA-HQ has {HQ_IMAGES}: that file is "
            "incomplete or not CelebA-HQ's mapping"
        )
    elif partitioned != CELEBA_FILES:
        verdict = (
            f"{layout.partition} assigns {partitioned} files, CelebA has {CELEBA_FILES}: that "
            "file is not CelebA's list_eval_partition.txt"
        )
    else:
        verdict = "both files have CelebA's sizes yet split differently: is either edited?"
    raise SplitSizeError(
        f"{SETTING}.splits = {show(wanted)} (train/validation/test), but {layout.mapping} with "
        f"{layout.partition} gives {show(counts)}; with the real files it is "
        f"{show(PAPER_SPLITS)} (the paper's). {verdict}"
    )


# ---- images -------------------------------------------------------------------------------------
def load_image(path: Path, size: int) -> tuple[np.ndarray, str]:
    """One source image -> (3, size, size) uint8, anti-aliased resize; and its file's sha256."""
    raw = Path(path).read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataFileError(path, f"not a readable image ({error})", REPLACE_IMAGE) from None
    height, width = rgb.shape[:2]
    if height != width:
        raise DataFileError(
            path, f"{height}x{width} pixels; CelebA-HQ images are square", REPLACE_IMAGE
        )
    small = resize(rgb.astype(np.float32) / 255.0, (size, size, 3), anti_aliasing=True)
    return to_uint8(small.transpose(2, 0, 1)), hashlib.sha256(raw).hexdigest()


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> the nearest of the 256 levels k / 255, as uint8."""
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def lfw_faces(size: int) -> np.ndarray:
    """The stand-in's 100 faces, (100, 1, size, size) uint8, reflect-padded (module docstring)."""
    from skimage.data import lfw_subset

    faces = np.asarray(lfw_subset(), np.float64)
    if faces.shape != (2 * LFW_FACES, LFW_SIZE, LFW_SIZE):
        raise ValueError(
            f"skimage.data.lfw_subset() has shape {faces.shape}, expected (200, 25, 25)"
        )
    before = (size - LFW_SIZE) // 2
    after = size - LFW_SIZE - before
    padded = np.pad(
        to_uint8(faces[:LFW_FACES]), ((0, 0), (before, after), (before, after)), "reflect"
    )
    return padded[:, None]


def lfw_digest() -> str:
    from skimage.data import lfw_subset

    return hashlib.sha256(np.ascontiguousarray(lfw_subset(), np.float64).tobytes()).hexdigest()


def lfw_splits(sizes: dict, seed: int) -> dict[str, np.ndarray]:
    """Indices of the faces per split: a seeded permutation, cut in split order, each sorted."""
    order = np.random.default_rng(seed).permutation(LFW_FACES)
    out, start = {}, 0
    for split in SPLITS:
        out[split] = np.sort(order[start : start + int(sizes[split])])
        start += int(sizes[split])
    return out


# ---- the cache ----------------------------------------------------------------------------------
def create_split(
    f: h5py.File, split: str, count: int, channels: int, size: int, columns: dict[str, Any]
) -> h5py.Dataset:
    """The group of one split with its index columns; returns its empty `x`, chunked per image."""
    group = f.create_group(split)
    for key, value in columns.items():
        dtype = h5py.string_dtype() if value.dtype == object else None
        group.create_dataset(key, data=value, dtype=dtype, track_times=False)
    return group.create_dataset(
        "x", (count, channels, size, size), np.uint8, chunks=(1, channels, size, size),
        track_times=False,
    )  # fmt: skip


def write_lfw(path: Path, cfg: dict, seed: int) -> None:
    faces = lfw_faces(int(cfg["image_size"]))
    with h5py.File(path, "w") as f:
        f.attrs["source"] = "lfw"
        for split, index in lfw_splits(cfg["splits"], seed).items():
            columns = {"source_index": index.astype(np.int32)}
            x = create_split(f, split, len(index), 1, int(cfg["image_size"]), columns)
            x[...] = faces[index]
        f["test"].attrs["paper_test"] = 0


def write_celeba(path: Path, plan: dict[str, np.ndarray], data: dict[str, Any], size: int) -> None:
    """Stream the images of every split through `load_image` into the cache, one at a time."""
    text = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f.attrs["source"] = "celeba_hq"
        for split, positions in plan.items():
            columns = {
                "source_index": data["hq"][positions].astype(np.int32),
                "celeba_file": data["files"][positions].astype(np.int32),
            }
            x = create_split(f, split, len(positions), 3, size, columns)
            digests = []
            for i, position in enumerate(tqdm(positions, desc=f"celeba_hq {split}", unit="img")):
                x[i], digest = load_image(data["paths"][position], size)
                digests.append(digest)
            f[split].create_dataset(
                "sha256", data=np.array(digests, object), dtype=text, track_times=False
            )
        f["test"].attrs["paper_test"] = data["paper_test"]


# ---- reading ------------------------------------------------------------------------------------


def image_seed(seed: int, split: str, index: int) -> int:
    """The noise seed of one image: a function of (seed, split, index) only."""
    state = np.random.SeedSequence([int(seed), SPLITS.index(split), int(index)])
    return int(state.generate_state(1, np.uint64)[0])


def measure_image(image: np.ndarray, physics: GaussianBlur, seed: int) -> np.ndarray:
    """y = blur(x) + noise for one image (C, S, S), in float64, from its own generator."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(image, np.float64))[None]
    return physics.measure(x, generator)[0].numpy().astype(np.float32)


class MeasurementStack:
    """y of a split: each image's measurement, computed when asked for (never stored)."""

    def __init__(self, images: Any, physics: GaussianBlur, seed: int, split: str):
        self.images, self.physics, self.seed, self.split = images, physics, seed, split
        self.shape = (len(images), *physics.out_shape)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def _one(self, index: int) -> np.ndarray:
        return measure_image(
            self.images[index], self.physics, image_seed(self.seed, self.split, index)
        )

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} images")
            return self._one(int(index) % len(self))
        rows = np.arange(len(self))[index]
        return np.stack([self._one(int(i)) for i in rows]).reshape(len(rows), *self.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype)


@dataclass
class FaceSplit(Split):
    """A split with where each image came from and how many of the paper's come first."""

    source_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    celeba_file: np.ndarray | None = None
    paper_test: int = 0


def unit_psnr(reconstruction: np.ndarray, truth: np.ndarray) -> float:
    """PSNR with data range 1 (images in [0, 1]), over every pixel and channel."""
    mse = float(np.mean((np.asarray(reconstruction, np.float64) - truth) ** 2))
    return float("inf") if mse == 0 else float(-10.0 * np.log10(mse))


def unit_ssim(reconstruction: np.ndarray, truth: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, the authors' settings) with data range 1; (C, S, S) or (S, S)."""
    truth = np.asarray(truth, np.float64)
    return float(
        structural_similarity(
            np.asarray(reconstruction, np.float64),
            truth,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            channel_axis=0 if truth.ndim == 3 else None,
        )
    )


# ---- the dataset --------------------------------------------------------------------------------
@register_dataset("celeba_hq")
class CelebAHQ(Dataset):
    """CelebA-HQ at image_size, RGB in [0, 1], CelebA's partition; y = blurred + noise.

    Smoke scale (`source: lfw`) is a stand-in: 100 grey LFW faces, not CelebA-HQ (module doc).
    """

    def _source(self) -> str:
        """The source, checked by name only: the DAG is built before anyone sets `path`."""
        source = self.cfg.get("source")
        if source not in SOURCES:
            raise ValueError(f"{SETTING}.source = {source!r}: expected one of {SOURCES}")
        return source

    def needs_download(self) -> bool:
        return self._source() == "urls"

    @staticmethod
    def evaluation_indices(split: FaceSplit, count: int | None) -> list[int]:
        """The test images seed 003's protocol inverts: the authors' 100 faces (stored first)
        when the split holds them and `count` asks for no more, otherwise spread evenly."""
        from genrecon.evaluation.grid import spread

        held = int(getattr(split, "paper_test", 0))
        if count is not None and 0 < count <= held:
            return list(range(count))
        return spread(len(split), count)

    @property
    def stream_training(self) -> bool:
        """Real faces are read batch by batch in training (24,183 float images are 4.75 GB)."""
        return self.cfg["source"] != "lfw"

    def download(self, root: Path) -> dict:
        """Fetch the user's files (resumable, checksummed) and unpack them into `raw/`."""
        if check_settings(self.cfg) != "urls":
            return super().download(root)
        root = Path(root)
        receipt = []
        for index, entry in enumerate(url_entries(self.cfg.get("urls"))):
            algorithm, digest = knee.entry_digest(entry)
            dest = root / "archives" / knee.entry_name(entry)
            path = download(
                entry["url"], dest, digest, algorithm, setting=f"{SETTING}.urls[{index}]"
            )
            unpack(path, root / "raw")
            receipt.append({"name": path.name, algorithm: digest})
        return {"files": receipt}

    def _folder(self, root: Path) -> tuple[Path, str]:
        """Where the CelebA-HQ copy is, and the setting that says so (for the errors)."""
        if self._source() == "local":
            folder = Path(self.cfg["path"]).expanduser()
            return folder, f"{SETTING}.path = {str(folder)!r}"
        url_entries(self.cfg.get("urls"))  # a clear error before looking for files
        folder = Path(root) / "raw"
        return (
            folder,
            f"{str(folder)!r} (the files of {SETTING}.urls, unpacked by the download job)",
        )

    def prepare(self, root: Path) -> None:
        """The cache (stand-in faces, or every CelebA-HQ image resized), then the MANIFEST."""
        root = Path(root)
        source = check_settings(self.cfg)
        root.mkdir(parents=True, exist_ok=True)
        (root / MANIFEST).unlink(missing_ok=True)  # no stale manifest beside a new cache
        size = int(self.cfg["image_size"])
        extra: dict[str, Any] = {"dataset": "celeba_hq", "config": public_config(self.cfg)}
        if source == "lfw":
            with atomic_path(root / CACHE) as path:
                write_lfw(path, self.cfg, self.seed)
            extra["stand_in"] = {"skimage.data.lfw_subset": {"sha256": lfw_digest()}}
        else:
            data = self._plan(root)
            with atomic_path(root / CACHE) as path:
                write_celeba(path, data["plan"], data, size)
            extra["index_files"] = data["index_files"]
            extra["images"] = data["images"]
        write_manifest(root, extra)

    def _plan(self, root: Path) -> dict[str, Any]:
        """Index files read and checked, every image file found, each split's images ordered."""
        folder, where = self._folder(root)
        layout = find_layout(folder, where)
        hq, files = read_mapping(layout.mapping)
        partition = read_partition(layout.partition)
        plan = assign_splits(hq, files, partition, layout, self.cfg)
        paths = image_files(layout, hq, files, where)
        test_files = {int(f) for f in files[plan["test"]]}
        absent = [f for f in PAPER_TEST if f not in test_files]
        paper = len(PAPER_TEST) - len(absent)
        if absent:
            warnings.warn(
                f"{layout.mapping}: {len(absent)} of the paper's {len(PAPER_TEST)} test images "
                f"are not in CelebA-HQ's test split (CelebA files {absent[:5]}"
                f"{', ...' if len(absent) > 5 else ''}); the test split starts with the "
                f"{paper} that are",
                stacklevel=2,
            )
        return {
            "plan": plan,
            "hq": hq,
            "files": files,
            "paths": paths,
            "paper_test": paper,
            "index_files": {
                layout.mapping.name: file_digest(layout.mapping, "sha256"),
                layout.partition.name: file_digest(layout.partition, "sha256"),
            },
            "images": {
                "count": int(sum(len(v) for v in plan.values())),
                "named": paths[0].name if paths else None,
            },
        }

    # ---- reading it -------------------------------------------------------------------------
    def split(
        self, root: Path, split: str, limit: int | None = None, lazy: bool = False
    ) -> FaceSplit:
        """x (n, C, S, S) float32 in [0, 1]; y their measurements, computed per image on demand.

        `lazy`: x read from disk as asked for (the file stays open); else read at once.
        y is always computed when indexed (MeasurementStack), so a whole training split never
        holds a second copy of itself.
        """
        path = Path(root) / CACHE
        if not path.exists():
            raise FileNotFoundError(f"{path}: celeba_hq data not prepared (run the data step)")
        f = open_h5(path, REPREPARE)
        try:
            require_keys(
                f,
                (f"{split}/x", f"{split}/source_index"),
                "the prepare job did not finish",
                REPREPARE,
            )
        except DataFileError:
            f.close()
            raise
        group = f[split]
        n = len(group["x"]) if limit is None else max(0, min(int(limit), len(group["x"])))
        columns = {
            "source_index": group["source_index"][:n],
            "celeba_file": group["celeba_file"][:n] if "celeba_file" in group else None,
            "paper_test": min(n, int(f["test"].attrs.get("paper_test", 0)))
            if split == "test"
            else 0,
        }
        if lazy:
            x: Any = ImageStack(group["x"], n, divisor=255)
        else:
            with f:
                x = ImageStack(group["x"][:n], n, divisor=255)[:]
        y = MeasurementStack(x, self.physics(root), self.seed, split)
        return FaceSplit(x, y, {}, **columns)

    def physics(self, root: Path) -> GaussianBlur:
        """The reference deblurring: Gaussian blur `blur_sigma` px, noise `noise_std`."""
        size = int(self.cfg["image_size"])
        return GaussianBlur(
            (size, size),
            sigma=float(self.cfg["blur_sigma"]),
            channels=int(self.cfg["channels"]),
            noise_std=float(self.cfg["noise_std"]),
        )

    def metrics(self, reconstructions: np.ndarray, truths: np.ndarray) -> list[dict[str, float]]:
        """Per-image PSNR/SSIM with data range 1, SSIM over the colour channels (module doc)."""
        return [
            {"psnr": unit_psnr(r, t), "ssim": unit_ssim(r, t)}
            for r, t in zip(np.asarray(reconstructions), np.asarray(truths), strict=True)
        ]

    def describe(self, scale: str) -> str:
        splits, size = self.cfg["splits"], int(self.cfg["image_size"])
        counts = f"{splits['train']}/{splits['validation']}/{splits['test']}"
        blur = (
            f"deblurring: Gaussian blur sigma {float(self.cfg['blur_sigma']):g} px, noise std "
            f"{float(self.cfg['noise_std']):.4g}"
        )
        if self._source() == "lfw":
            return (
                "smoke STAND-IN, not CelebA-HQ: the 100 grey LFW faces of scikit-image's "
                f"lfw_subset (Huang et al. 2007), 25x25 reflect-padded to {size}x{size}, "
                f"{counts} train/validation/test; {blur}"
            )
        return (
            f"CelebA-HQ (Karras et al. 2018), resized to {size}x{size} RGB, CelebA's partition "
            f"{counts} train/validation/test, the paper's 100 test images first; {blur}"
        )


__all__ = [
    "CACHE",
    "PAPER_TEST",
    "CelebAHQ",
    "FaceSplit",
    "MissingDataError",
    "SplitSizeError",
    "find_layout",
    "image_seed",
    "read_mapping",
    "read_partition",
    "unit_psnr",
    "unit_ssim",
]
