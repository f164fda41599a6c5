"""DVC restores data/ from the configured remote without regenerating it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT
from genrecon.tracking import dvc_pinned_hash

DVC = str(Path(sys.executable).parent / "dvc")


def run(*cmd: str, cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_push_and_pull_restore_data(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run("git", "init", "-q", cwd=repo)
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    # The project's own DVC config: default remote `local` at <repo>/.dvc-storage.
    assert "url = ../.dvc-storage" in (repo / ".dvc" / "config").read_text()
    data = repo / "data" / "mnist" / "smoke"
    data.mkdir(parents=True)
    (data / "MANIFEST.json").write_text('{"files": {}}\n')
    (data / "train-images-idx3-ubyte.gz").write_bytes(bytes(range(200)))
    run(DVC, "add", "-q", "data", cwd=repo)
    run(DVC, "push", "-q", cwd=repo)
    pinned = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert (repo / ".dvc-storage").is_dir()

    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    run(DVC, "pull", "-q", cwd=repo)
    assert (data / "train-images-idx3-ubyte.gz").read_bytes() == bytes(range(200))
    assert dvc_pinned_hash(repo / "data.dvc") == pinned


def test_project_pins_a_data_version():
    pinned = dvc_pinned_hash(ROOT / "data.dvc")
    assert pinned.endswith(".dir") and len(pinned) == 36
