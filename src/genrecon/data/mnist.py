"""MNIST in the canonical IDX format (LeCun, Cortes, Burges; CC BY-SA 3.0).

Paper scale downloads the four gzipped IDX files and checks their md5; smoke scale uses the real
t10k test set vendored in `vendor/mnist/`, split deterministically into train/val/test.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np

from genrecon.data.base import Dataset, Split, register_dataset, write_manifest
from genrecon.data.download import download
from genrecon.data.errors import REFETCH, REPREPARE, DataFileError, open_h5, require_keys
from genrecon.physics.cs import GaussianCS

MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_DTYPE_CODE = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


#: what to do about a bad vendored file (smoke scale reads the t10k set from the repository)
RESTORE_VENDORED = "restore it from the repository (`git checkout -- vendor/mnist`)"


def read_idx(path: Path, action: str = REFETCH) -> np.ndarray:
    """Read a (gzipped) IDX file into an array of its declared type and shape.

    A truncated or corrupt file is a DataFileError naming it and `action` (what to do: fetch
    it again, restore it, prepare again), checked before any byte is interpreted as an image.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, zlib.error) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise DataFileError(path, f"truncated or corrupt gzip data ({error})", action) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPE_CODE:
        raise DataFileError(path, f"not an IDX file (bad magic number {raw[:4].hex()})", action)
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataFileError(path, "IDX header cut short (truncated file)", action)
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPE_CODE[raw[2]])
    payload = len(raw) - 4 - 4 * ndim
    if payload != int(np.prod(shape)) * dtype.itemsize:
        raise DataFileError(
            path,
            f"IDX header says shape {shape} ({int(np.prod(shape)) * dtype.itemsize} bytes), "
            f"the file holds {payload} bytes (truncated?)",
            action,
        )
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (deterministic: no gzip timestamp)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + array.tobytes())


def download_mnist(dest: Path, mirror: str = MIRROR) -> None:
    for name, md5 in MD5.items():
        download(mirror + name, dest / name, md5, setting="genrecon.data.mnist.MIRROR")


def split_sets(
    images: np.ndarray, labels: np.ndarray, sizes: dict, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deterministic train/validation/test split of one pool by a seeded permutation."""
    need = sum(sizes.values())
    if need > len(images):
        raise ValueError(f"MNIST splits ask for {need} images, the pool has {len(images)}")
    order = np.random.default_rng(seed).permutation(len(images))
    out, start = {}, 0
    for split in ("train", "validation", "test"):
        idx = np.sort(order[start : start + sizes[split]])
        out[split] = (images[idx], labels[idx])
        start += sizes[split]
    return out


def prepare(source_dir: Path, dest: Path, source: str, sizes: dict, seed: int) -> None:
    """Write `{split}-images-idx3-ubyte.gz` and `{split}-labels-idx1-ubyte.gz` per split."""
    dest.mkdir(parents=True, exist_ok=True)
    if source == "embedded":
        pool = read_idx(source_dir / "t10k-images-idx3-ubyte.gz", RESTORE_VENDORED)
        pool_labels = read_idx(source_dir / "t10k-labels-idx1-ubyte.gz", RESTORE_VENDORED)
        sets = split_sets(pool, pool_labels, sizes, seed)
    elif source == "download":
        download_mnist(source_dir)
        train = split_sets(
            read_idx(source_dir / "train-images-idx3-ubyte.gz"),
            read_idx(source_dir / "train-labels-idx1-ubyte.gz"),
            {"train": sizes["train"], "validation": sizes["validation"], "test": 0},
            seed,
        )
        sets = {
            "train": train["train"],
            "validation": train["validation"],
            "test": (
                read_idx(source_dir / "t10k-images-idx3-ubyte.gz")[: sizes["test"]],
                read_idx(source_dir / "t10k-labels-idx1-ubyte.gz")[: sizes["test"]],
            ),
        }
    else:
        raise ValueError(f"datasets.mnist.source = {source!r}: expected 'embedded' or 'download'")
    for split, (images, labels) in sets.items():
        write_idx(dest / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(dest / f"{split}-labels-idx1-ubyte.gz", labels)


def load_images(root: Path, split: str) -> np.ndarray:
    """Images of one split scaled to [0, 1], float32 (n, 28, 28)."""
    images = read_idx(Path(root) / f"{split}-images-idx3-ubyte.gz", REPREPARE)
    return images.astype(np.float32) / 255.0


VENDORED = Path("vendor/mnist")


@register_dataset("mnist")
class MNIST(Dataset):
    """MNIST compressed sensing (seed 000 Sec. 3.1): y = A x + 10% relative noise, m = 196.

    Cached conditioning inputs: the pseudo-inverse A^+ y (`pinv`) and the Tikhonov-gradient
    solution (A^T A + lam grad^T grad)^-1 A^T y (`tikhonov`; the paper's "TV"), in cs.hdf5.
    """

    conditionings = ("pinv", "tikhonov")

    def needs_download(self) -> bool:
        return self.cfg["source"] == "download"

    def download(self, root: Path) -> dict:
        download_mnist(Path(root) / "raw")
        return {"files": {name: {"md5": md5} for name, md5 in MD5.items()}, "mirror": MIRROR}

    def vendored_inputs(self) -> list[str]:
        if self.cfg["source"] != "embedded":
            return []
        return [str(VENDORED / name) for name in MD5 if name.startswith("t10k")]

    def prepare(self, root: Path) -> None:
        """IDX splits, then the compressed-sensing measurements and both conditioning inputs."""
        root = Path(root)
        raw = VENDORED if self.cfg["source"] == "embedded" else root / "raw"
        prepare(raw, root, self.cfg["source"], self.cfg["splits"], self.seed)
        cs_cfg = self.cfg["cs"]
        operator = GaussianCS.create(cs_cfg["m"], 28, self.seed)
        inversions = {
            kind: operator.inversion(kind, cs_cfg["tikhonov_lambda"]) for kind in self.conditionings
        }
        with h5py.File(root / "cs.hdf5", "w") as f:
            f.create_dataset("A", data=operator.matrix, track_times=False)
            for split_index, split in enumerate(("train", "validation", "test")):
                images = load_images(root, split).astype(np.float64)
                rng = np.random.default_rng([self.seed, 100 + split_index])
                y = operator.measure(images, cs_cfg["noise_rel"], rng)
                f.create_dataset(f"{split}/y", data=y.astype(np.float32), track_times=False)
                for kind, matrix in inversions.items():
                    reco = (y @ matrix.T).reshape(-1, 28, 28).astype(np.float32)
                    f.create_dataset(f"{split}/{kind}", data=reco, track_times=False)
        write_manifest(root, {"dataset": "mnist", "config": self.cfg})

    def split(self, root: Path, split: str, limit: int | None = None, lazy: bool = False) -> Split:
        root = Path(root)
        truth = load_images(root, split)[:limit]
        with open_h5(root / "cs.hdf5", REPREPARE) as f:
            keys = tuple(f"{split}/{k}" for k in ("y", *self.conditionings))
            require_keys(f, keys, "the prepare job did not finish", REPREPARE)
            y = f[f"{split}/y"][: len(truth)].astype(np.float32)
            cond = {
                k: f[f"{split}/{k}"][: len(truth)].astype(np.float32) for k in self.conditionings
            }
        return Split(truth.astype(np.float32), y, cond)

    def physics(self, root: Path):
        from genrecon.physics.cs import GaussianCSPhysics

        with open_h5(Path(root) / "cs.hdf5", REPREPARE) as f:
            require_keys(f, ("A",), "the prepare job did not finish", REPREPARE)
            matrix = f["A"][:]
        return GaussianCSPhysics(matrix, 28, noise_rel=self.cfg["cs"]["noise_rel"])

    def describe(self, scale: str) -> str:
        if self.cfg["source"] == "embedded":
            return f"smoke: real MNIST t10k split, {self.cfg['splits']['train']} train images"
        return "MNIST"
