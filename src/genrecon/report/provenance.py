"""Where a number came from: the MLflow run behind each numbers.csv row, its code and data.

Every row of numbers.csv names a run; these helpers resolve those runs to the git commit, the
dirty flag, the data hash, the rule and wildcards that produced it, for the CLI
(`genrecon provenance`) and for the provenance page.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

TAGS = (
    "rule",
    "wildcards",
    "scale",
    "git_commit",
    "git_dirty",
    "data_hash",
    "data_dvc_md5",
    "data_manifests",
)


def print_provenance(params: dict, run_id: str | None, numbers: Path | None) -> None:
    """Print code version, data version, params and artifacts of a run (or of every row's run)."""
    from mlflow.tracking import MlflowClient

    from genrecon.tracking import tracking_uri

    client = MlflowClient(tracking_uri(params))
    run_ids = [run_id] if run_id else []
    if numbers:
        with open(numbers) as f:
            run_ids += sorted({row["run_id"] for row in csv.DictReader(f)})
    if not run_ids:
        raise SystemExit("give a run id or --numbers results/report/numbers.csv")
    for rid in run_ids:
        run = client.get_run(rid)
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        print(f"run {rid}  ({run.info.run_name}, {run.info.status})")
        for key in TAGS:
            print(f"  {key:15s} {tags.get(key, '')}")
        if run_id:
            for key, value in sorted(run.data.params.items()):
                print(f"  param {key} = {value}")
            for key, value in sorted(run.data.metrics.items()):
                print(f"  metric {key} = {value}")
            for artifact in client.list_artifacts(rid):
                print(f"  artifact {artifact.path}")


def runs_frame(numbers: Any, params: dict) -> Any:
    """One line per MLflow run behind numbers.csv, with its provenance tags and row count.

    A run missing from the store is listed as such (status 'not in store'), not dropped: the page
    then shows the gap instead of a shorter, clean-looking list.
    """
    import logging

    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from genrecon.tracking import tracking_uri

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no store-migration chatter on the page
    client = MlflowClient(tracking_uri(params))
    rows = []
    for rid in dict.fromkeys(numbers["run_id"]):
        count = int((numbers["run_id"] == rid).sum())
        try:
            run = client.get_run(rid)
        except MlflowException:
            rows.append({"run_id": rid, "status": "not in store", "numbers": count})
            continue
        tags = run.data.tags
        rows.append(
            {
                "run_id": rid,
                "rule": tags.get("rule", ""),
                "wildcards": tags.get("wildcards", ""),
                "git_commit": tags.get("git_commit", "")[:10],
                "dirty": tags.get("git_dirty", ""),
                "data_hash": tags.get("data_hash", ""),
                "data.dvc md5": tags.get("data_dvc_md5", ""),
                "status": run.info.status,
                "numbers": count,
            }
        )
    return pd.DataFrame(rows).fillna("–").set_index("run_id")
