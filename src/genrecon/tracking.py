"""MLflow runs with provenance: git commit and dirty flag, data hash, params, rule, wildcards.

Every job of the pipeline runs inside `tracked_run`; its run id is written into the job's
outputs so each number in the report can name the run that produced it. Two more links make
provenance checkable rather than merely shown (`genrecon audit`, genrecon/audit.py):

- Files. The rule tells its job which files it reads and writes (GENRECON_INPUTS /
  GENRECON_OUTPUTS, set in the rule's shell from Snakemake's {input} and {output}); when the job
  succeeds, `tracked_run` records the sha256 of each in the run (artifact `provenance/files.json`).
  An artifact edited after its run no longer matches what its run recorded.
- One tree per reproduction. The Snakefile's `onstart` opens a parent run (`start_reproduction`:
  the Snakemake command line, profile, host) and exports its id (GENRECON_PARENT_RUN_ID); every
  job started by that invocation, locally or through sbatch (which exports the environment),
  becomes its child. `onsuccess` / `onerror` close it with the Snakemake log attached.
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
PARENT_ENV = "GENRECON_PARENT_RUN_ID"
INPUTS_ENV, OUTPUTS_ENV = "GENRECON_INPUTS", "GENRECON_OUTPUTS"
FILES_ARTIFACT = "provenance/files.json"


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


def declared_files(variable: str) -> list[str]:
    """The paths a rule declared (space-separated in `variable`; workflow paths have no spaces)."""
    return os.environ.get(variable, "").split()


def file_record(inputs: list[str], outputs: list[str]) -> dict[str, dict[str, str | None]]:
    """{"inputs": {path: sha256}, "outputs": {...}}; None for a declared file that is absent."""
    from genrecon.data.download import file_digest

    return {
        side: {p: file_digest(Path(p), "sha256") if Path(p).is_file() else None for p in paths}
        for side, paths in (("inputs", inputs), ("outputs", outputs))
    }


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
        # what the job writes, searchable: `genrecon audit` finds each file's producing run
        "outputs": " ".join(declared_files(OUTPUTS_ENV))[:8000],
        "wildcards": json.dumps(wildcards or {}),
        "scale": params.get("scale", "smoke"),
        "job": job,
    }
    parent = os.environ.get(PARENT_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent  # MLflow's own nesting tag: the UI shows the tree
    with mlflow.start_run(experiment_id=experiment_id, run_name=job, tags=tags) as run:
        flat: dict[str, str] = {}
        # presigned download links (fastMRI `urls`) carry their signature in the query string
        from genrecon.data.download import redact_urls

        _flatten("", redact_urls({"seed": params.get("seed"), **(job_params or {})}), flat)
        if flat:
            mlflow.log_params({k: v[:6000] for k, v in flat.items()})
        yield run
        # reached only when the job's body succeeded: a failed run records no file hashes
        record = file_record(declared_files(INPUTS_ENV), declared_files(OUTPUTS_ENV))
        mlflow.log_dict(record, FILES_ARTIFACT)


def _profile(argv: list[str]) -> str:
    """The --profile / --workflow-profile a Snakemake command line names ('' for none)."""
    for flag in ("--profile", "--workflow-profile"):
        for i, arg in enumerate(argv):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return os.environ.get("SNAKEMAKE_PROFILE", "")


def start_reproduction(params: dict, argv: list[str]) -> str:
    """Open the parent run of one pipeline invocation and export its id to the jobs."""
    import socket

    from mlflow.tracking import MlflowClient

    experiment_id = init_store(params)
    tags = {
        "kind": "reproduction",
        "command": " ".join(argv),
        "profile": _profile(argv) or "(none: local)",
        "host": socket.gethostname(),
        "scale": params.get("scale", "smoke"),
        **code_version(),
        "data_dvc_md5": dvc_pinned_hash(),
    }
    run = MlflowClient(tracking_uri(params)).create_run(
        experiment_id, tags=tags, run_name="reproduction"
    )
    os.environ[PARENT_ENV] = run.info.run_id
    return run.info.run_id


def end_reproduction(params: dict, status: str, logs: str | list[str] | None = None) -> None:
    """Close the parent run (FINISHED / FAILED), with the Snakemake log(s) as its artifacts."""
    from mlflow.tracking import MlflowClient

    run_id = os.environ.get(PARENT_ENV)
    if not run_id:
        return
    client = MlflowClient(tracking_uri(params))
    for log in [logs] if isinstance(logs, str) else logs or []:
        if Path(log).is_file():
            client.log_artifact(run_id, log, "snakemake")
    client.set_terminated(run_id, status)
