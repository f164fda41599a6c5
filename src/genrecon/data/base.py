"""One interface for every dataset: prepare in the real format, read splits, name its physics.

Why: the pipeline (rules, CLI, evaluation, report) must not branch on dataset names. A dataset
module registers one `Dataset` subclass that knows
- how to get the data (`download`, where the real data must be fetched) and write it in its real
  on-disk format (`prepare`), with a MANIFEST.json of sha256 digests for provenance;
- its splits as `Split` objects: ground truth x, measurements y, and the cached conditioning
  inputs (FBP, A^+ y, Tikhonov, zero-filled IFFT), computed once at preparation because they
  never change during training;
- the forward operator (`physics`) its measurements come from;
- its metric convention (`metrics`): e.g. dival's per-slice data range for LoDoPaB, fastMRI's
  per-volume maximum for knees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from tqdm import tqdm

from genrecon import metrics as metric_functions
from genrecon.atomic import is_temporary, write_text_atomic
from genrecon.data.download import file_digest
from genrecon.physics.base import LinearPhysics
from genrecon.registry import Registry

MANIFEST = "MANIFEST.json"


@dataclass
class Split:
    """One split: x (n, ...), y (n, ...) and named conditioning inputs (n, ...), float32.

    Arrays may be numpy arrays or read-on-demand stacks (LazySplit, h5py datasets) that accept
    integer arrays and slices, so paper-scale LoDoPaB never has to fit in memory.
    """

    x: Any
    y: Any
    cond: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        meta = {"index": index, "cond": {k: np.asarray(v[index]) for k, v in self.cond.items()}}
        return np.asarray(self.x[index]), np.asarray(self.y[index]), meta

    def batches(self, size: int) -> list[np.ndarray]:
        """Consecutive index batches of at most `size` images, in split order."""
        return [np.arange(i, min(i + size, len(self))) for i in range(0, len(self), size)]

    def conditioning(self, name: str | None) -> Any:
        if name is None:
            return None
        if name not in self.cond:
            raise KeyError(f"no conditioning input {name!r} in this split; has {sorted(self.cond)}")
        return self.cond[name]


class TrainingPairs:
    """(x, conditioning input) batches of a split for the training loop (`batch(indices)`)."""

    def __init__(self, split: Split, conditioning: str | None):
        self.x = split.x
        self.cond = split.conditioning(conditioning)

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        out = {"x": _take(self.x, indices)}
        if self.cond is not None:
            out["cond"] = _take(self.cond, indices)
        return out


def _take(stack: Any, indices: np.ndarray) -> torch.Tensor:
    """stack[indices] as a float32 tensor; on-disk stacks read sorted, unique indices."""
    if isinstance(stack, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(stack[indices], dtype=np.float32))
    unique, inverse = np.unique(indices, return_inverse=True)
    return torch.from_numpy(np.asarray(stack[unique], dtype=np.float32)[inverse])


def _rows(stack: Any, index: Any, length: int) -> np.ndarray:
    """stack[index] as float32 for an integer, slice or integer array (any order, repeats)
    within `length`; an on-disk (h5py) stack is read at sorted, unique indices."""
    if isinstance(index, (int, np.integer)):
        if not -length <= index < length:
            raise IndexError(f"index {index} out of range for {length} images")
        return np.asarray(stack[int(index) % length], np.float32)
    index = np.arange(length)[index] if isinstance(index, slice) else np.asarray(index)
    if index.size and (index.min() < -length or index.max() >= length):
        raise IndexError(f"index out of range for {length} images")
    index = np.where(index < 0, index + length, index)
    unique, inverse = np.unique(index, return_inverse=True)  # h5py wants sorted, unique
    return np.asarray(stack[unique], np.float32)[inverse]


class ImageStack:
    """The first `length` images of a stored stack (on disk or in memory), read on demand as
    float32 divided by `divisor` (e.g. 255 for uint8 images): the lazy `x` of a split."""

    def __init__(self, data: Any, length: int, divisor: float = 1.0):
        self.data = data
        self.divisor = np.float32(divisor)
        self.shape = (length, *data.shape[1:])
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        rows = _rows(self.data, index, len(self))
        return rows if self.divisor == 1 else rows / self.divisor

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype)


class Dataset:
    """A dataset of the pipeline; subclasses register with `register_dataset`."""

    name: ClassVar[str] = "dataset"
    #: the cached conditioning inputs the data step writes, by name
    conditionings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: dict, seed: int):
        self.cfg = cfg
        self.seed = seed

    # ---- getting the data ----------------------------------------------------------------
    def needs_download(self) -> bool:
        """Whether `prepare` needs `download` to have run first (real data at paper scale)."""
        return False

    def download(self, root: Path) -> dict:
        """Fetch the real files into `root` (resumable, checksummed); returns a receipt."""
        raise NotImplementedError(
            f"{self.name}: source {self.cfg.get('source')!r} downloads nothing"
        )

    def vendored_inputs(self) -> list[str]:
        """Files of the repository that `prepare` reads (embedded data), for the rule's inputs."""
        return []

    def prepare(self, root: Path) -> None:
        raise NotImplementedError

    # ---- reading it ----------------------------------------------------------------------
    def split(self, root: Path, split: str, limit: int | None = None, lazy: bool = False) -> Split:
        raise NotImplementedError

    def physics(self, root: Path) -> LinearPhysics:
        raise NotImplementedError

    def metrics(self, reconstructions: np.ndarray, truths: np.ndarray) -> list[dict[str, float]]:
        """Per-image PSNR/SSIM; default: data range max - min of each ground truth (dival)."""
        return metric_functions.per_image(reconstructions, truths)

    #: what its split sizes count (`splits`): images, or e.g. fastMRI's volumes
    unit: ClassVar[str] = "images"
    #: groups the dataset's own scoring reports separately (e.g. fastMRI's PD and PDFS scans)
    groups: ClassVar[tuple[str, ...]] = ()

    def group_scorer(self, split: Split) -> GroupScorer | None:
        """The scorer of a dataset whose papers score units larger than one image (None: none).

        Why a hook: fastMRI scores per VOLUME on the scanner's scale, with the volume's maximum
        as data range, and the seed paper reports PD and PDFS scans apart (Table 5); no per-image
        metric can be averaged into that. The protocols feed it every estimate as they go.
        """
        return None

    def describe(self, scale: str) -> str:
        """What our numbers were measured on, in words (smoke data never passes as real)."""
        return self.name


class GroupScorer(Protocol):
    """Scores estimates by a dataset's own units (e.g. volumes) and groups (e.g. PD / PDFS).

    `add` takes one image's estimate at a time (so a paper-scale split never has to be held in
    memory); `finish` returns one row per unit and estimator (written to `filename`) and the
    summary per estimator and group, each with n (units), psnr_mean/std, ssim_mean/std.
    """

    filename: str
    label: str

    def add(self, estimator: str, index: int, estimate: np.ndarray | None) -> None: ...

    def finish(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, dict[str, float]]]]: ...


def manifest_path(root: Path) -> Path:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: dataset not prepared (run `snakemake` or `genrecon prepare`)"
        )
    return path


def write_manifest(root: Path, extra: dict | None = None) -> Path:
    """sha256 of every file below `root`: runs log its hash as the data version they read.

    The manifest is the prepare job's declared output, so it is written last (after every data
    file) and atomically: a prepare job that fails or is killed leaves no manifest, or the old
    one, never a torn one that Snakemake would take as a finished data set. Temporary files
    that a killed atomic write left behind (`.<name>.<random>.tmp`) are not data: not hashed.
    """
    files = sorted(
        p
        for p in Path(root).rglob("*")
        if p.is_file() and p.name != MANIFEST and not is_temporary(p)
    )
    digests = {}
    for path in tqdm(files, desc=f"hash {root}"):
        digests[str(path.relative_to(root))] = file_digest(path, "sha256")
    out = Path(root) / MANIFEST
    text = json.dumps({"files": digests, **(extra or {})}, indent=1, sort_keys=True) + "\n"
    write_text_atomic(out, text)
    return out


_REGISTRY: Registry[Dataset] = Registry("dataset")
register_dataset = _REGISTRY.register
registered_datasets = _REGISTRY.all
lookup = _REGISTRY.lookup
