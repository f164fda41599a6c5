"""Faults the pipeline must survive: a job failing mid-write, a training job killed with -9.

Snakemake trusts every output file that exists, so a job that fails must leave nothing a rerun
would take as finished (atomic writes), and a training job killed mid-run must, when the
pipeline is simply run again, continue from its last checkpoint to exactly the weights of a run
never killed.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
import yaml

from conftest import ROOT
from genrecon import atomic
from genrecon.atomic import atomic_write, is_temporary, remove_stale_temporaries
from test_workflow import BIN, ENV, snakemake, tiny_project

# --- atomic outputs ----------------------------------------------------------------------------


class _TornFile:
    """A file that takes half of the first write, then fails as a full disk would."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, data: Any) -> int:
        data = data if isinstance(data, str) else bytes(data)
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device (torn on purpose)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _TornFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _writing(mode: str) -> bool:
    return any(flag in mode for flag in "wax+")


@pytest.fixture
def torn(monkeypatch) -> Callable[[], contextlib.AbstractContextManager]:
    """`with torn(): ...` tears every file write halfway: through `open` (a plain write, which
    then leaves a torn file) and `os.fdopen` (`genrecon.atomic`, which must leave none)."""
    fdopen, open_ = os.fdopen, io.open

    def torn_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = open_(file, mode, *args, **kwargs)
        return _TornFile(f) if _writing(mode) else f

    @contextlib.contextmanager
    def tearing() -> Iterator[None]:
        with monkeypatch.context() as m:
            m.setattr(atomic.os, "fdopen", lambda fd, *a, **k: _TornFile(fdopen(fd, *a, **k)))
            m.setattr(io, "open", torn_open)
            m.setattr(builtins, "open", torn_open)
            yield

    return tearing


def _assert_left_alone(path: Path, before: bytes | None) -> None:
    """`path` holds what it held before the failed write (or does not exist); no temp file."""
    if before is None:
        assert not path.exists()
    else:
        assert path.read_bytes() == before
    assert not [p.name for p in path.parent.iterdir() if is_temporary(p)]


def _write_numbers(path: Path) -> None:
    from genrecon.report.numbers import COLUMNS, write_numbers

    write_numbers([dict.fromkeys(COLUMNS, "1")], path)


def _write_index(path: Path) -> None:
    from genrecon import config
    from genrecon.report.pages import write_index

    params = config.load_params(ROOT / "params.yaml")
    write_index(params, config.resolve(params, "smoke", ROOT), [path.with_name("a.html")], path)


def _write_bench(path: Path) -> None:
    import mlflow

    from genrecon import bench, config

    patch = pytest.MonkeyPatch()  # no timing runs, and no MLflow store in the working directory
    patch.setattr(bench, "_projector", lambda *args, **kwargs: [])
    patch.setattr(bench, "_training", lambda *args, **kwargs: [])
    patch.setattr(mlflow, "log_artifact", lambda *args, **kwargs: None)
    try:
        bench.run_benchmarks(config.load_params(ROOT / "params.yaml"), path, "run", quick=True)
    finally:
        patch.undo()


def _write_manifest(path: Path) -> None:
    from genrecon.data.base import write_manifest

    data = path.parent / "train.bin"
    if not data.exists():  # (a setup step, so not while writes are torn)
        path.parent.mkdir(parents=True, exist_ok=True)
        data.write_bytes(b"data")
    assert write_manifest(path.parent, {"dataset": "tiny"}) == path


def _protocols(name: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from genrecon.evaluation import protocols

        {
            "write_json": lambda: protocols.write_json(path, {"psnr_mean": 30.0}),
            "write_rows": lambda: protocols.write_rows(path, [{"index": 0, "psnr": 30.0}]),
            "write_npz": lambda: protocols.write_npz(path, truth=np.zeros((2, 4, 4))),
        }[name]()

    return write


#: every kind of output file a job writes: (file name, writer)
WRITERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "summary.json": ("summary.json", _protocols("write_json")),
    "per_image.csv": ("per_image.csv", _protocols("write_rows")),
    "examples.npz": ("examples.npz", _protocols("write_npz")),
    "numbers.csv": ("numbers.csv", _write_numbers),
    "index.html": ("index.html", _write_index),
    "benchmarks.json": ("benchmarks.json", _write_bench),
    "MANIFEST.json": ("MANIFEST.json", _write_manifest),
}


@pytest.mark.parametrize("old", [True, False], ids=["over an old file", "no old file"])
@pytest.mark.parametrize("output", list(WRITERS))
def test_a_write_failing_midway_leaves_the_old_file_or_none(
    tmp_path, torn, monkeypatch, output, old
):
    monkeypatch.chdir(ROOT)  # the report and bench writers read config/ from the project root
    name, write = WRITERS[output]
    path = tmp_path / "out" / name
    write(path)  # the writer works, and writes a file
    assert path.stat().st_size > 0
    before = path.read_bytes() if old else None
    if not old:
        path.unlink()
    with torn(), pytest.raises(OSError, match="torn on purpose"):
        write(path)
    _assert_left_alone(path, before)


def _notebook(path: Path, text: str) -> None:
    """A one-cell notebook, written by `os.write`: what papermill writes is never torn here."""
    import nbformat

    node = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, nbformat.writes(node).encode())
    finally:
        os.close(fd)


@pytest.mark.parametrize("fails", ["executing", "writing the html"])
def test_a_failed_report_page_leaves_the_old_page(tmp_path, torn, monkeypatch, fails):
    """papermill writes the executed notebook as it goes; neither it nor the html is torn."""
    import papermill

    from genrecon.report.pages import render_notebook

    failures = [fails == "executing"]  # the first execution fails (if that is the case)

    def execute(source: str, out: str, **kwargs: Any) -> None:
        _notebook(Path(out), "new page")
        if failures.pop() if failures else False:
            raise RuntimeError("a cell failed")

    executed, html = tmp_path / "page.ipynb", tmp_path / "page.html"
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    _notebook(tmp_path / "source.ipynb", "source")
    _notebook(executed, "old page")
    html.write_text("old html")
    before = executed.read_bytes(), html.read_bytes()
    with torn() if fails == "writing the html" else contextlib.nullcontext():
        with pytest.raises((RuntimeError, OSError)):
            render_notebook(tmp_path / "source.ipynb", executed, html, {})
    assert html.read_bytes() == before[1]
    if fails == "executing":  # (a torn html only: the notebook ran, and is whole)
        assert executed.read_bytes() == before[0]
    assert not [p.name for p in tmp_path.iterdir() if is_temporary(p)]
    render_notebook(tmp_path / "source.ipynb", executed, html, {})
    assert "new page" in html.read_text() and "new page" in executed.read_text()


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")

    def half_then_fail(f) -> None:
        f.write(b'{"half": ')
        raise ValueError("writer failed")

    with pytest.raises(ValueError, match="writer failed"):
        atomic_write(path, half_then_fail)
    _assert_left_alone(path, b"old")
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == atomic.MODE  # as `open` would, not mkstemp's 0600


def test_stale_temporaries_are_swept_and_never_hashed_into_a_manifest(tmp_path):
    """A SIGKILL mid-write leaves `.<name>.<random>.tmp`: not data, and removed by `fit`."""
    from genrecon.data.base import write_manifest

    (tmp_path / "train.bin").write_bytes(b"data")
    stale = [tmp_path / ".train.bin.k2j4h1a_.tmp", tmp_path / ".page.ipynb.abcd1234.tmp.ipynb"]
    for path in stale:
        path.write_bytes(b"half")
    keep = tmp_path / ".gitignore"
    keep.write_text("*\n")
    manifest = json.loads(write_manifest(tmp_path).read_text())
    assert set(manifest["files"]) == {"train.bin", ".gitignore"}
    remove_stale_temporaries(tmp_path)
    assert not any(path.exists() for path in stale) and keep.exists()


# --- kill -9 of a training job in the pipeline --------------------------------------------------

EXPERIMENT = "mnist_ms_pinv"
TARGET = f"results/smoke/models/{EXPERIMENT}/best.pt"  # workflow/rules/fit.smk
STEPS, VAL_EVERY = 30, 5


def _project(tmp_path: Path) -> Path:
    """The tiny project, training EXPERIMENT long enough to be killed between validations."""
    project = tiny_project(tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["scales"]["smoke"]["train"]["mnist"].update(steps=STEPS, val_every=VAL_EVERY)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "longer training"], cwd=project, check=True)

    from genrecon import config

    settings = config.resolve(params, "smoke", project)
    train = config.fit_settings(settings, EXPERIMENT)["train"]
    assert (train["steps"], train["val_every"]) == (STEPS, VAL_EVERY)
    return project


def _start(project: Path, log: Path, **env: str) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(BIN / "snakemake"), "--snakefile", "workflow/Snakefile", "--cores", "2", TARGET],
            cwd=project,
            env={**ENV, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, to clean up after a failed test
        )


def _last_step(models: Path) -> int:
    try:
        return json.loads((models / "last.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _fit_process(snake: subprocess.Popen) -> psutil.Process | None:
    """The `genrecon ... fit EXPERIMENT` python process under this snakemake (not its shell)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(snake.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                argv = child.cmdline()
                if any(Path(a).name == "genrecon" for a in argv) and "fit" in argv:
                    return child
    return None


def _assert_equal(a: Any, b: Any, where: str) -> None:
    """Every tensor equal (torch.equal), every other value ==, through nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize(
    "dies",
    [
        "the job",  # a lost SLURM node, the OOM killer: the scheduler outlives its job
        pytest.param("snakemake too", marks=pytest.mark.slow),  # the whole machine or session
    ],
)
def test_killed_training_job_resumes_in_the_pipeline_bit_identically(tmp_path, dies):
    """kill -9 the fit job mid-run, run snakemake again: the weights of a run never killed.

    When only the job dies, Snakemake removes its declared outputs (best.pt, ...) but not
    last.pt, which is not one; when Snakemake dies too, its lock stays (`--unlock`, as it
    says) and the rerun redoes the incomplete job (`rerun-incomplete`, the default profile).
    Either way the rerun resumes from last.pt, writes best.pt back, and ends with every tensor
    and the history of an uninterrupted run.
    """
    killed = _project(tmp_path / "killed")
    straight = tmp_path / "straight" / "genrecon"
    shutil.copytree(killed, straight, symlinks=True)
    models = killed / Path(TARGET).parent

    interrupted = _start(killed, tmp_path / "killed.log", GENRECON_TEST_STEP_SLEEP="0.1")
    reference = _start(straight, tmp_path / "straight.log")
    try:
        deadline = time.monotonic() + 300
        while _last_step(models) <= VAL_EVERY and time.monotonic() < deadline:  # past the 1st
            assert interrupted.poll() is None, (tmp_path / "killed.log").read_text()
            time.sleep(0.02)
        fit = _fit_process(interrupted)
        assert fit is not None, "no genrecon fit process under snakemake"
        if dies == "the job":
            fit.send_signal(signal.SIGKILL)
            assert interrupted.wait(timeout=120) != 0  # snakemake outlives its job, and says so
        else:
            os.killpg(interrupted.pid, signal.SIGKILL)  # snakemake, its shell and the job
            interrupted.wait(timeout=120)
            fit.wait(timeout=120)
        assert reference.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()
    finally:
        _kill_group(interrupted)
        _kill_group(reference)
    said = (tmp_path / "killed.log").read_text()
    interrupted_at = _last_step(models)
    assert VAL_EVERY < interrupted_at < STEPS, said
    assert (models / "last.pt").exists(), said
    if dies == "the job":
        assert "Error in rule fit" in said and not (models / "best.pt").exists(), said
    else:
        locked = snakemake("--cores", "2", TARGET, cwd=killed, check=False)
        assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
        snakemake("--unlock", cwd=killed)

    rerun = snakemake("--cores", "2", TARGET, cwd=killed)
    log = killed / "results" / "logs" / "smoke" / f"fit_{EXPERIMENT}.log"
    assert f"from step {interrupted_at}" in log.read_text(), rerun.stdout + rerun.stderr
    assert _last_step(models) == STEPS
    _assert_same_models(models, straight / Path(TARGET).parent)

    # best.pt cut short: what its error says to do rebuilds it, here from a best older than the
    # last validation or not (the resume above may have found a new best after the kill)
    (models / "best.pt").write_bytes((models / "best.pt").read_bytes()[:100])
    snakemake("--cores", "2", TARGET, "--forcerun", "fit", cwd=killed)
    assert f"from step {STEPS}" in log.read_text()
    _assert_same_models(models, straight / Path(TARGET).parent)


def _assert_same_models(models: Path, reference: Path) -> None:
    """Every tensor of best.pt and last.pt, the sidecars and the history, as the reference."""
    for name in ("best.pt", "last.pt"):
        _assert_equal(
            torch.load(models / name, map_location="cpu", weights_only=True),
            torch.load(reference / name, map_location="cpu", weights_only=True),
            name,
        )
    for name in ("best.json", "last.json", "history.csv"):
        assert (models / name).read_text() == (reference / name).read_text(), name
