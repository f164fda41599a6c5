"""MLflow runs with provenance: git commit and dirty flag, data hash, params, rule, wildcards.

Every job of the pipeline runs inside `tracked_run`; its run id is written into the job's
outputs so each number in the report can name the run that produced it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///results/mlflow.db"


def tracking_uri(params: dict | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or ((params or {}).get("tracking") or {}).get("uri")
    return uri or DEFAULT_URI


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (subprocess.SubprocessError, FileNotFoundError):
        return ""


def code_version() -> dict[str, str]:
    """Commit and whether tracked files differ from it (untracked outputs do not count)."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def dvc_pinned_hash(dvc_file: Path = Path("data.dvc")) -> str:
    """The md5 that data.dvc pins (the published data version), or 'none'."""
    if not dvc_file.exists():
        return "none"
    import yaml

    outs = yaml.safe_load(dvc_file.read_text()).get("outs", [{}])
    return str(outs[0].get("md5", "none"))


def manifest_hash(manifest: Path) -> str:
    """Content hash of the data a job read: sha256 of its dataset MANIFEST.json."""
    return hashlib.sha256(Path(manifest).read_bytes()).hexdigest()[:16]


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)


def init_store(params: dict) -> str:
    """Create the store and the experiment once, before jobs race to do it."""
    import mlflow

    uri = tracking_uri(params)
    artifacts = None
    if uri.startswith("sqlite:///"):
        # Local store: artifacts beside it under results/, not in ./mlruns of the working dir.
        store = Path(uri.removeprefix("sqlite:///"))
        store.parent.mkdir(parents=True, exist_ok=True)
        artifacts = (store.parent / "mlartifacts").resolve().as_uri()
    mlflow.set_tracking_uri(uri)
    name = params["tracking"]["experiment"]
    experiment = mlflow.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifacts)


@contextlib.contextmanager
def tracked_run(
    params: dict,
    job: str,
    job_params: dict | None = None,
    manifests: list[Path] | tuple = (),
    wildcards: dict | None = None,
) -> Iterator[Any]:
    """An MLflow run for one pipeline job, tagged with everything needed to reproduce it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(params))
    experiment = mlflow.get_experiment_by_name(params["tracking"]["experiment"])
    if experiment is None:
        experiment_id = init_store(params)
    else:
        experiment_id = experiment.experiment_id
    tags = {
        **code_version(),
        "data_dvc_md5": dvc_pinned_hash(),
        "data_hash": ",".join(manifest_hash(m) for m in manifests) or "none",
        "data_manifests": ",".join(str(m) for m in manifests),
        "rule": job,  # every job is named after the Snakemake rule that runs it
        "wildcards": json.dumps(wildcards or {}),
        "scale": params.get("scale", "smoke"),
        "job": job,
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=job, tags=tags) as run:
        flat: dict[str, str] = {}
        _flatten("", {"seed": params.get("seed"), **(job_params or {})}, flat)
        if flat:
            mlflow.log_params({k: v[:6000] for k, v in flat.items()})
        yield run
