"""LoDoPaB-CT in its original HDF5 layout: reader, writer, Zenodo download, smoke generator.

Layout (Leuschner et al., Sci. Data 2021, Zenodo record 3384092): one directory with
`ground_truth_{split}_{NNN}.hdf5` and `observation_{split}_{NNN}.hdf5`, dataset key `data`,
float32, `slices_per_file` slices per file (the last file shorter). Splits are `train`,
`validation`, `test`.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import requests
from tqdm import tqdm

from genrecon.data.base import Dataset, Split, register_dataset, write_manifest
from genrecon.data.download import download
from genrecon.data.phantoms import body_phantom
from genrecon.physics.ct import CTGeometry, fbp, fbp_operator, simulate_lowdose

SPLITS = ("train", "validation", "test")
KINDS = ("ground_truth", "observation")
ZENODO_API = "https://zenodo.org/api/records/{record}"


def file_name(kind: str, split: str, index: int) -> str:
    return f"{kind}_{split}_{index:03d}.hdf5"


def write_split(root: Path, kind: str, split: str, array: np.ndarray, slices_per_file: int) -> None:
    """Write a stack as consecutive LoDoPaB files (key `data`, float32, no timestamps)."""
    root.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, len(array), slices_per_file)):
        with h5py.File(root / file_name(kind, split, index), "w", track_order=False) as f:
            f.create_dataset(
                "data",
                data=array[start : start + slices_per_file].astype(np.float32),
                track_times=False,
            )


def split_files(root: Path, kind: str, split: str) -> list[Path]:
    files = sorted(Path(root).glob(f"{kind}_{split}_[0-9][0-9][0-9].hdf5"))
    if not files:
        raise FileNotFoundError(
            f"no LoDoPaB files {kind}_{split}_NNN.hdf5 in {root}: run the data step "
            "(`snakemake data` or `genrecon prepare lodopab`)"
        )
    return files


class LazySplit:
    """One split of one kind as a read-on-demand stack over its HDF5 files.

    Paper-scale training cannot hold LoDoPaB in memory (train ground truth alone is 18.8 GB):
    `stack[indices]` reads just those slices. Supports integer arrays and slices.
    """

    def __init__(self, root: Path, kind: str, split: str):
        self.files = [h5py.File(path, "r") for path in split_files(root, kind, split)]
        sizes = [f["data"].shape[0] for f in self.files]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.shape = (int(self.offsets[-1]), *self.files[0]["data"].shape[1:])
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index)
        unique, inverse = np.unique(index, return_inverse=True)  # h5py wants sorted, unique
        out = np.empty((len(unique), *self.shape[1:]), dtype=np.float32)
        which = np.searchsorted(self.offsets, unique, side="right") - 1
        for file_index in np.unique(which):
            mask = which == file_index
            out[mask] = self.files[file_index]["data"][unique[mask] - self.offsets[file_index]]
        return out[inverse]


def read_split(root: Path, kind: str, split: str, limit: int | None = None) -> np.ndarray:
    """Read one split of one kind as a float32 array (n, ...); `limit` reads only the first n."""
    parts, count = [], 0
    for path in split_files(root, kind, split):
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise KeyError(f"{path}: no dataset 'data' (not a LoDoPaB file?)")
            take = f["data"].shape[0] if limit is None else min(limit - count, f["data"].shape[0])
            parts.append(f["data"][:take])
            count += take
        if limit is not None and count >= limit:
            break
    return np.concatenate(parts).astype(np.float32)


def generate_synthetic(root: Path, cfg: dict, seed: int) -> None:
    """Smoke-scale LoDoPaB: body-like phantoms, simulated as LoDoPaB was (reduced geometry)."""
    geometry = CTGeometry(cfg["image_size"], cfg["num_angles"])
    for split_index, split in enumerate(SPLITS):
        n = cfg["splits"][split]
        rng = np.random.default_rng([seed, split_index])
        truth = np.stack(
            [body_phantom(cfg["image_size"], rng) for _ in tqdm(range(n), desc=f"phantoms {split}")]
        )
        obs = np.stack(
            [
                simulate_lowdose(x, geometry, cfg["photons"], rng, cfg["upsample"])
                for x in tqdm(truth, desc=f"simulate {split}")
            ]
        )
        write_split(root, "ground_truth", split, truth, cfg["slices_per_file"])
        write_split(root, "observation", split, obs, cfg["slices_per_file"])


def compute_fbp(root: Path, out: Path, cfg: dict) -> None:
    """FBP of every observation, once: the conditioning input never changes during training.

    Its filter is `conditioning_fbp` (the authors' cINN input: Hann, frequency scaling 1.0), not
    `fbp`, the tuned reference FBP (scaling 0.641) that the FBP baseline row uses.
    """
    geometry = CTGeometry(cfg["image_size"], cfg["num_angles"])
    settings = cfg["conditioning_fbp"]
    op = fbp_operator(geometry, settings["filter"], settings["frequency_scaling"])
    size = cfg["image_size"]
    with h5py.File(out, "w") as f:
        for split in SPLITS:
            files = split_files(root, "observation", split)
            total = 0
            for path in files:
                with h5py.File(path, "r") as g:
                    total += g["data"].shape[0]
            # written file by file: LoDoPaB's train split alone is 18.8 GB of FBPs
            out_split = f.create_dataset(split, (total, size, size), np.float32, track_times=False)
            start = 0
            for path in tqdm(files, desc=f"FBP {split}"):
                with h5py.File(path, "r") as g:
                    reco = fbp(g["data"][:], op)
                out_split[start : start + len(reco)] = reco
                start += len(reco)


def download_zenodo(root: Path, record: int, api: str = ZENODO_API) -> None:
    """Download every file of a Zenodo record with its published md5, resumably, then unzip.

    The record's metadata (file names, sizes, md5 checksums) is saved beside the data so the
    exact version downloaded is on record.
    """
    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / "zenodo_record.json"
    if not meta_path.exists():
        response = requests.get(api.format(record=record), timeout=60)
        response.raise_for_status()
        meta_path.write_text(json.dumps(response.json(), indent=1))
    meta = json.loads(meta_path.read_text())
    archives = root / "archives"
    for entry in meta["files"]:
        algorithm, digest = entry["checksum"].split(":", 1)
        url = entry["links"].get("self") or entry["links"]["download"]
        path = download(url, archives / entry["key"], digest, algorithm)
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                missing = [n for n in z.namelist() if not (root / n).exists()]
                for name in tqdm(missing, desc=f"unzip {path.name}"):
                    z.extract(name, root)
        elif not (root / path.name).exists():
            (root / path.name).symlink_to(path.resolve())


@register_dataset("lodopab")
class LoDoPaB(Dataset):
    """LoDoPaB-CT: the Zenodo files at paper scale, LoDoPaB-format phantoms at smoke scale.

    y is the post-log observation divided by mu_max; the cached conditioning input `fbp` is the
    FBP with the `conditioning_fbp` filter; the physics' A_dagger is the reference FBP (`fbp`).
    """

    conditionings = ("fbp",)

    def needs_download(self) -> bool:
        return self.cfg["source"] == "zenodo"

    def download(self, root: Path) -> dict:
        download_zenodo(Path(root), self.cfg["zenodo_record"])
        return json.loads((Path(root) / "zenodo_record.json").read_text())

    def prepare(self, root: Path) -> None:
        """Smoke: generate the synthetic set; paper: the download step has run. Then FBP."""
        root = Path(root)
        if self.cfg["source"] == "synthetic":
            generate_synthetic(root, self.cfg, self.seed)
        elif self.cfg["source"] == "zenodo":
            split_files(root, "ground_truth", "train")  # clear error if not downloaded
        else:
            raise ValueError(
                f"datasets.lodopab.source = {self.cfg['source']!r}: 'synthetic' or 'zenodo'"
            )
        compute_fbp(root, root / "fbp.hdf5", self.cfg)
        write_manifest(root, {"dataset": "lodopab", "config": self.cfg})

    def split(self, root: Path, split: str, limit: int | None = None, lazy: bool = False) -> Split:
        root = Path(root)
        if lazy:
            fbp_stack = h5py.File(root / "fbp.hdf5", "r")[split]
            return Split(
                LazySplit(root, "ground_truth", split),
                LazySplit(root, "observation", split),
                {"fbp": fbp_stack},
            )
        truth = read_split(root, "ground_truth", split, limit)
        observation = read_split(root, "observation", split, limit)
        with h5py.File(root / "fbp.hdf5", "r") as f:
            fbp_images = f[split][: len(truth)].astype(np.float32)
        return Split(truth, observation, {"fbp": fbp_images})

    def physics(self, root: Path | None = None):
        from genrecon.physics.ct import CTPhysics

        return CTPhysics(
            image_size=self.cfg["image_size"],
            num_angles=self.cfg["num_angles"],
            photons=self.cfg["photons"],
            fbp_filter=self.cfg["fbp"]["filter"],
            frequency_scaling=self.cfg["fbp"]["frequency_scaling"],
        )

    def describe(self, scale: str) -> str:
        if self.cfg["source"] == "zenodo":
            return "LoDoPaB-CT"
        size = self.cfg["image_size"]
        return (
            f"smoke: synthetic LoDoPaB-format CT {size}x{size}, {self.cfg['num_angles']} angles, "
            f"N0={self.cfg['photons']}"
        )
