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
                "parent": tags.get("mlflow.parentRunId", "")[:12] or "–",
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


def reproduction_tree(numbers: Any, params: dict) -> Any:
    """The MLflow tree behind numbers.csv: one line per pipeline invocation (parent run) whose
    jobs produced a number, with its command line, profile, host and its child runs by rule.

    Runs started outside Snakemake (no parent) are grouped under "(no parent run)".
    """
    import logging
    from collections import Counter

    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from genrecon.tracking import tracking_uri

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri(params))
    children: dict[str, Counter] = {}
    for rid in dict.fromkeys(numbers["run_id"]):
        try:
            tags = client.get_run(rid).data.tags
        except MlflowException:
            continue
        parent = tags.get("mlflow.parentRunId", "")
        children.setdefault(parent, Counter())[tags.get("rule", "?")] += 1
    rows = []
    for parent, rules in children.items():
        jobs = ", ".join(f"{rule} ×{count}" for rule, count in sorted(rules.items()))
        if not parent:
            rows.append({"parent run": "(no parent run)", "child runs behind numbers": jobs})
            continue
        try:
            run = client.get_run(parent)
        except MlflowException:
            rows.append(
                {
                    "parent run": parent[:12],
                    "status": "not in store",
                    "child runs behind numbers": jobs,
                }
            )
            continue
        tags = run.data.tags
        rows.append(
            {
                "parent run": parent[:12],
                "started": pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
                "status": run.info.status,
                "command": tags.get("command", ""),
                "profile": tags.get("profile", ""),
                "host": tags.get("host", ""),
                "git_commit": tags.get("git_commit", "")[:10],
                "child runs behind numbers": jobs,
            }
        )
    return pd.DataFrame(rows).fillna("–").set_index("parent run")
