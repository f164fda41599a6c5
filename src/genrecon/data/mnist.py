"""MNIST in the canonical IDX format (LeCun, Cortes, Burges; CC BY-SA 3.0).

Paper scale downloads the four gzipped IDX files and checks their md5; smoke scale uses the real
t10k test set vendored in `vendor/mnist/`, split deterministically into train/val/test.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from genrecon.data.download import download

MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_DTYPE_CODE = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file into an array of its declared type and shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPE_CODE:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_DTYPE_CODE[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header says {shape}, file holds {data.size} values")
    return data.reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (deterministic: no gzip timestamp)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + array.tobytes())


def download_mnist(dest: Path, mirror: str = MIRROR) -> None:
    for name, md5 in MD5.items():
        download(mirror + name, dest / name, md5)


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
        pool = read_idx(source_dir / "t10k-images-idx3-ubyte.gz")
        pool_labels = read_idx(source_dir / "t10k-labels-idx1-ubyte.gz")
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
    return read_idx(Path(root) / f"{split}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
