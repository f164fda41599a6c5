"""LoDoPaB-CT in its original HDF5 layout: reader, writer, Zenodo download, smoke generator.

Layout (Leuschner et al., Sci. Data 2021, Zenodo record 3384092): one directory with
`ground_truth_{split}_{NNN}.hdf5` and `observation_{split}_{NNN}.hdf5`, dataset key `data`,
float32, `slices_per_file` slices per file (the last file shorter). Splits are `train`,
`validation`, `test`.
"""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

import h5py
import numpy as np
from tqdm import tqdm

from genrecon.data.base import Dataset, Split, register_dataset, write_manifest
from genrecon.data.download import (
    CHUNK,
    PINS,
    check_zenodo_pin,
    download,
    get_json,
    require_https,
)
from genrecon.data.errors import REPREPARE, DataFileError, open_h5
from genrecon.data.phantoms import body_phantom
from genrecon.physics.ct import CTGeometry, fbp, fbp_operator, simulate_lowdose

SPLITS = ("train", "validation", "test")
KINDS = ("ground_truth", "observation")
ZENODO_API = "https://zenodo.org/api/records/{record}"
#: what to do about a bad file of the real data set: it is extracted again from its archive
REEXTRACT = (
    "delete it and rerun the download job (`snakemake --forcerun download`), which extracts "
    "it again from its verified archive"
)


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


def file_action(source: str) -> str:
    """What to do about a bad LoDoPaB file: extract it again (Zenodo) or regenerate it."""
    return REEXTRACT if source == "zenodo" else REPREPARE


def open_file(path: Path, shape: tuple[int, ...] | None = None, action: str = REPREPARE):
    """A LoDoPaB file opened for reading with its layout checked: a 3-D float `data` whose
    slices have `shape`. A truncated or foreign file fails here, naming itself, rather than
    deep inside training."""
    f = open_h5(path, action)
    try:
        if "data" not in f or not isinstance(f["data"], h5py.Dataset):
            raise DataFileError(path, "no dataset 'data' (not a LoDoPaB file)", action)
        data = f["data"]
        if data.ndim != 3 or (shape is not None and tuple(data.shape[1:]) != tuple(shape)):
            expected = "(slices, " + ", ".join(map(str, shape or ("height", "width"))) + ")"
            raise DataFileError(
                path, f"dataset 'data' has shape {data.shape}, expected {expected}", action
            )
    except BaseException:
        f.close()
        raise
    return f


class LazySplit:
    """One split of one kind as a read-on-demand stack over its HDF5 files.

    Paper-scale training cannot hold LoDoPaB in memory (train ground truth alone is 18.8 GB):
    `stack[indices]` reads just those slices. Supports integer arrays and slices. Every file is
    checked on opening: `data` present, one slice shape (`shape`, else the first file's).
    """

    def __init__(
        self,
        root: Path,
        kind: str,
        split: str,
        shape: tuple[int, ...] | None = None,
        action: str = REPREPARE,
    ):
        self.files = []
        try:
            for path in split_files(root, kind, split):
                self.files.append(open_file(path, shape, action))
                shape = shape or tuple(self.files[0]["data"].shape[1:])
        except DataFileError:
            for f in self.files:
                f.close()
            raise
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


def read_split(
    root: Path,
    kind: str,
    split: str,
    limit: int | None = None,
    shape: tuple[int, ...] | None = None,
    action: str = REPREPARE,
) -> np.ndarray:
    """Read one split of one kind as a float32 array (n, ...); `limit` reads only the first n.

    Each file's layout is checked (`open_file`); without `shape`, every file must have the
    first file's slice shape. A read that fails midway names the file.
    """
    parts, count = [], 0
    for path in split_files(root, kind, split):
        with open_file(path, shape, action) as f:
            shape = shape or tuple(f["data"].shape[1:])
            take = f["data"].shape[0] if limit is None else min(limit - count, f["data"].shape[0])
            try:
                parts.append(f["data"][:take])
            except OSError as error:
                raise DataFileError(path, f"unreadable data ({error})", action) from None
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
    shape, action = slice_shape(cfg, "observation"), file_action(cfg["source"])
    with h5py.File(out, "w") as f:
        for split in SPLITS:
            files = split_files(root, "observation", split)
            total = 0
            for path in files:
                with open_file(path, shape, action) as g:
                    total += g["data"].shape[0]
            # written file by file: LoDoPaB's train split alone is 18.8 GB of FBPs
            out_split = f.create_dataset(split, (total, size, size), np.float32, track_times=False)
            start = 0
            for path in tqdm(files, desc=f"FBP {split}"):
                with open_file(path, shape, action) as g:
                    reco = fbp(g["data"][:], op)
                out_split[start : start + len(reco)] = reco
                start += len(reco)


def slice_shape(cfg: dict, kind: str) -> tuple[int, int]:
    """One slice of `kind`: the image (size x size) or the sinogram (angles x detector)."""
    geometry = CTGeometry(cfg["image_size"], cfg["num_angles"])
    if kind == "ground_truth":
        return (cfg["image_size"], cfg["image_size"])
    return (cfg["num_angles"], geometry.detector_pixels)


def zip_members(z: zipfile.ZipFile, archive: Path, root: Path) -> list[zipfile.ZipInfo]:
    """The archive's entries, each checked to land inside `root`, before anything is written.

    zipfile would quietly rewrite '../x' or '/x' to a path inside the folder, hiding that the
    archive is not the published one; symlinks would let a later entry write through them.
    So any absolute path, '..' part, symlink or target resolving outside `root` is refused.
    """
    base = root.resolve()
    for info in z.infolist():
        name = info.filename
        posix = PurePosixPath(name.replace("\\", "/"))
        problem = None
        if stat.S_ISLNK(info.external_attr >> 16):
            problem = "is a symbolic link"
        elif posix.is_absolute() or PureWindowsPath(name).drive:
            problem = "has an absolute path"
        elif ".." in posix.parts:
            problem = "climbs out with '..'"
        elif not (base / posix).resolve().is_relative_to(base):
            problem = "resolves outside the folder"
        if problem:
            raise DataFileError(
                archive,
                f"entry {name!r} {problem}: refused, as it could write outside {root}; "
                "nothing was extracted",
                "delete the archive and rerun `snakemake` to fetch it again (if it recurs, the "
                "file on the server is not the published one)",
            )
    return z.infolist()


def extract_zip(archive: Path, root: Path) -> None:
    """Unzip `archive` into `root`: every entry checked first, each file written whole.

    Files already present with the right size are kept (a rerun resumes an interrupted
    extraction); each file goes to a temporary name first, so a killed job never leaves a
    truncated file under the real name. A corrupt archive (bad CRC) names itself.
    """
    action = "delete it and rerun `snakemake` to fetch it again"
    try:
        with zipfile.ZipFile(archive) as z:
            members = zip_members(z, archive, root)
            todo = [
                m
                for m in members
                if not m.is_dir()
                and not (
                    (root / m.filename).is_file()
                    and (root / m.filename).stat().st_size == m.file_size
                )
            ]
            for info in tqdm(todo, desc=f"unzip {archive.name}"):
                target = root / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".part")
                with z.open(info) as source, open(partial, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                partial.replace(target)
    except (zipfile.BadZipFile, EOFError) as error:
        raise DataFileError(archive, f"corrupt zip archive ({error})", action) from None


def download_zenodo(root: Path, record: int, api: str = ZENODO_API, pins: Path = PINS) -> None:
    """Download every file of a Zenodo record with its published md5, resumably, then unzip.

    The record's metadata (file names, sizes, md5 checksums) is saved beside the data so the
    exact version downloaded is on record, and compared with the pin committed in the
    repository (`pins`) before any download (see `check_zenodo_pin`). Every address must be
    https.
    """
    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / "zenodo_record.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        meta = get_json(api.format(record=record), "genrecon.data.lodopab.ZENODO_API")
    check_zenodo_pin(meta, record, root, pins)
    if not meta_path.exists():
        meta_path.write_text(json.dumps(meta, indent=1))
    links = {
        entry["key"]: entry["links"].get("self") or entry["links"]["download"]
        for entry in meta["files"]
    }
    for key, url in links.items():  # every link checked before the first download
        require_https(url, f"Zenodo record {record}: the link of {key}")
    archives = root / "archives"
    for entry in meta["files"]:
        algorithm, digest = entry["checksum"].split(":", 1)
        url = links[entry["key"]]
        setting = f"Zenodo record {record}: the link of {entry['key']}"
        path = download(url, archives / entry["key"], digest, algorithm, setting=setting)
        if path.suffix == ".zip":
            extract_zip(path, root)
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
            for kind in KINDS:  # every file's layout, before hours of FBP (observations next)
                for split in SPLITS:
                    for path in split_files(root, kind, split):
                        open_file(path, slice_shape(self.cfg, kind), REEXTRACT).close()
        else:
            raise ValueError(
                f"datasets.lodopab.source = {self.cfg['source']!r}: 'synthetic' or 'zenodo'"
            )
        compute_fbp(root, root / "fbp.hdf5", self.cfg)
        write_manifest(root, {"dataset": "lodopab", "config": self.cfg})

    def split(self, root: Path, split: str, limit: int | None = None, lazy: bool = False) -> Split:
        root = Path(root)
        action = file_action(self.cfg["source"])
        shapes = {kind: slice_shape(self.cfg, kind) for kind in KINDS}
        fbp_file = open_h5(root / "fbp.hdf5", REPREPARE)
        if split not in fbp_file:
            fbp_file.close()
            raise DataFileError(root / "fbp.hdf5", f"no {split!r} (cut short?)", REPREPARE)
        if lazy:
            return Split(
                LazySplit(root, "ground_truth", split, shapes["ground_truth"], action),
                LazySplit(root, "observation", split, shapes["observation"], action),
                {"fbp": fbp_file[split]},
            )
        with fbp_file:
            truth = read_split(root, "ground_truth", split, limit, shapes["ground_truth"], action)
            observation = read_split(
                root, "observation", split, limit, shapes["observation"], action
            )
            fbp_images = fbp_file[split][: len(truth)].astype(np.float32)
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
