"""Check, not just show, where the report's numbers came from: `genrecon audit` and the chain
`genrecon provenance` prints for one number.

Every tracked job records the sha256 of the files its rule declared (genrecon.tracking,
`provenance/files.json` in its MLflow run) and tags the run with its outputs. From the report's
index page, the audit walks back through the runs that produced each input (the latest finished
run naming the file as an output), down to the prepare jobs and their MANIFEST, and recomputes:

- the hash of every input and output file of every run behind the report;
- the hash of every data file a MANIFEST lists (what `prepare` wrote, or `dvc pull` restored);
- every row of numbers.csv against the file and pointer it was read from;
- each run's data hash against the MANIFEST it read.

It prints one line per run (rule, wildcards, commit, files matched) and exits non-zero naming the
file and the run when anything was changed after it was produced. A run on uncommitted code, or
on a commit this clone does not have, is reported beside its line but fails nothing: it says
where the code came from, not that an artifact changed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrecon.data.download import file_digest
from genrecon.tracking import FILES_ARTIFACT, manifest_hash, tracking_uri

MANIFEST = "MANIFEST.json"


def report_dir(settings: dict) -> Path:
    """Where the scale's report lives (as the workflow's REPORT)."""
    scale = settings["scale"]
    return Path("results/report" if scale == "smoke" else f"results/{scale}/report")


@dataclass
class RunStore:
    """The experiment's runs, indexed by the files they wrote, with their file records cached."""

    params: dict
    client: Any = None
    runs: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)  # path -> latest run writing it
    _records: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, params: dict) -> RunStore:
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one per record
        store = cls(params, MlflowClient(tracking_uri(params)))
        experiment = store.client.get_experiment_by_name(params["tracking"]["experiment"])
        if experiment is None:
            raise SystemExit(
                f"no MLflow experiment {params['tracking']['experiment']!r} at "
                f"{tracking_uri(params)}: run the pipeline first"
            )
        token = None
        while True:
            page = store.client.search_runs(
                [experiment.experiment_id], max_results=1000, page_token=token
            )
            for run in page:
                store.runs[run.info.run_id] = run
            token = page.token
            if not token:
                break
        finished = [r for r in store.runs.values() if r.info.status == "FINISHED"]
        for run in sorted(finished, key=lambda r: r.info.end_time or 0):  # latest wins
            for path in run.data.tags.get("outputs", "").split():
                store.producer[path] = run.info.run_id
        return store

    def record(self, run_id: str) -> dict[str, dict[str, str | None]]:
        """The run's {"inputs": {path: sha256}, "outputs": {...}} ({} if it recorded none)."""
        if run_id not in self._records:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    local = self.client.download_artifacts(run_id, FILES_ARTIFACT, tmp)
                    self._records[run_id] = json.loads(Path(local).read_text())
                except Exception:  # noqa: BLE001  (no such artifact: a run from before records)
                    self._records[run_id] = {}
        return self._records[run_id]

    def describe(self, run_id: str) -> str:
        run = self.runs.get(run_id)
        if run is None:
            return f"run {run_id} (not in the store)"
        rule = run.data.tags.get("rule", run.info.run_name)
        return f"run {run_id[:12]} ({rule} {run.data.tags.get('wildcards', '')})"

    def upstream(self, start: Iterable[str]) -> list[str]:
        """`start` and every run that produced one of their inputs, recursively (BFS order)."""
        order, seen = [], set()
        queue = [r for r in start if r]
        while queue:
            run_id = queue.pop(0)
            if run_id in seen:
                continue
            seen.add(run_id)
            order.append(run_id)
            for path in self.record(run_id).get("inputs", {}):
                if path in self.producer:
                    queue.append(self.producer[path])
        return order


def _git_has(commit: str) -> bool:
    try:
        return (
            subprocess.run(
                ["git", "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True, timeout=30
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


@dataclass
class Audit:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sha256_now(path: str | Path) -> str | None:
    """The file's sha256 as it is now; None when it is gone."""
    return file_digest(Path(path), "sha256") if Path(path).is_file() else None


def _hash_now(path: str, cache: dict[str, str | None]) -> str | None:
    if path not in cache:
        cache[path] = sha256_now(path)
    return cache[path]


def _check_manifest(manifest: Path, owner: str, audit: Audit, check_data: bool) -> int:
    """Re-hash every data file the MANIFEST lists; returns how many were checked."""
    from tqdm import tqdm

    files = json.loads(manifest.read_text()).get("files", {})
    if not check_data:
        return 0
    for name, digest in tqdm(sorted(files.items()), desc=f"audit {manifest.parent}", leave=False):
        path = manifest.parent / name
        if not path.is_file():
            audit.problems.append(f"{path}: data file missing (listed in {manifest}, {owner})")
        elif sha256_now(path) != digest:
            audit.problems.append(
                f"{path}: data file changed since {manifest} was written ({owner}); "
                "restore it (`dvc pull` / `dvc checkout`) or rerun its prepare job"
            )
    return len(files)


def run_audit(
    params: dict, settings: dict, report: Path | None = None, check_data: bool = True
) -> Audit:
    """Everything behind the report's index page, checked; see the module docstring."""
    from genrecon.report.numbers import NumbersMismatch, check_numbers

    report = report or report_dir(settings)
    index, numbers = report / "index.html", report / "numbers.csv"
    audit = Audit()
    store = RunStore.load(params)
    missing = [p for p in (index, numbers) if not p.is_file()]
    if missing:
        audit.problems.append(f"{missing[0]}: not found: build the report first (`make run`)")
        return audit
    start = [store.producer.get(str(index)), store.producer.get(str(numbers))]
    if not any(start):
        audit.problems.append(
            f"{index}: no finished MLflow run records it as an output at {tracking_uri(params)}"
        )
        return audit
    with open(numbers, newline="") as f:
        number_runs = list(dict.fromkeys(row["run_id"] for row in csv.DictReader(f)))
    for run_id in number_runs:
        if run_id and run_id not in store.runs:
            audit.problems.append(f"{numbers}: names run {run_id}, which is not in the store")
    hashes: dict[str, str | None] = {}
    manifests: dict[str, str] = {}
    changed: dict[str, list[tuple[str, str, str]]] = {}  # path -> (side, run, recorded sha256)
    for run_id in store.upstream([*start, *number_runs]):
        run = store.runs.get(run_id)
        if run is None:
            continue
        who = store.describe(run_id)
        tags = run.data.tags
        if run.info.status != "FINISHED":
            audit.problems.append(f"{who}: status {run.info.status}, not FINISHED")
        record = store.record(run_id)
        if not record:
            audit.problems.append(f"{who}: recorded no file hashes (ran before audit existed?)")
        checked = matched = 0
        for side in ("inputs", "outputs"):
            for path, recorded in record.get(side, {}).items():
                checked += 1
                now = _hash_now(path, hashes)
                if recorded is None:
                    audit.problems.append(f"{path}: declared {side[:-1]} of {who} was absent")
                elif now != recorded:
                    changed.setdefault(path, []).append((side, who, recorded))
                else:
                    matched += 1
                if Path(path).name == MANIFEST:
                    manifests.setdefault(path, store.describe(store.producer.get(path, run_id)))
        for manifest, recorded in zip(
            filter(None, tags.get("data_manifests", "").split(",")),
            tags.get("data_hash", "").split(","),
            strict=False,
        ):
            if Path(manifest).is_file() and manifest_hash(Path(manifest)) != recorded:
                audit.problems.append(f"{manifest}: not the data {who} read (data_hash {recorded})")
        commit = tags.get("git_commit", "unknown")
        flags = []
        if tags.get("git_dirty") == "true":
            flags.append("uncommitted changes")
        if commit != "unknown" and not _git_has(commit):
            flags.append("commit not in this clone")
        if flags:
            audit.notes.append(f"{who}: ran on {commit[:10]} with {', '.join(flags)}")
        audit.lines.append(
            f"{tags.get('rule', run.info.run_name):12s} {tags.get('wildcards', ''):56s} "
            f"{run_id[:12]}  {commit[:10]}  {matched}/{checked} files"
        )
    for path, records in changed.items():  # one line per file: its producer, then its readers
        records.sort(key=lambda r: r[0] != "outputs")
        side, who, recorded = records[0]
        now = hashes[path]
        state = "missing" if now is None else f"sha256 {recorded[:12]}… then, {now[:12]}… now"
        verb = "wrote" if side == "outputs" else "read"
        readers = len(records) - 1
        also = f"; {readers} more run(s) read it" if readers else ""
        audit.problems.append(f"{path}: changed after {who} {verb} it ({state}){also}")
    for manifest, owner in sorted(manifests.items()):
        count = _check_manifest(Path(manifest), owner, audit, check_data)
        label = f"{count} data files re-hashed" if check_data else "data files not re-hashed"
        audit.lines.append(f"{'data':12s} {manifest:56s} {label}")
    try:
        rows = check_numbers(numbers)
        audit.lines.append(f"{'numbers':12s} {str(numbers):56s} {rows} numbers equal sources")
    except NumbersMismatch as error:
        audit.problems.extend(str(error).splitlines()[1:])
    return audit


def print_audit(audit: Audit) -> int:
    print(f"{'rule':12s} {'wildcards':56s} {'run':12s}  {'commit':10s}  files matching")
    for line in audit.lines:
        print(line)
    for note in audit.notes:
        print(f"note: {note}")
    if audit.problems:
        print(f"\naudit FAILED: {len(audit.problems)} problem(s)")
        for problem in audit.problems:
            print(f"  {problem}")
        return 1
    print("\naudit passed: every file behind the report matches its run's record")
    return 0


# ---- `genrecon provenance NUMBER`: the whole chain behind one number --------------------------


def find_numbers(numbers: Path, which: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of numbers.csv named by `which`: a line number, or TABLE/ROW/METRIC[@X] (ours).

    ROW may itself hold slashes (`knee_ms_radial:mean/PD`): TABLE ends at the first slash and
    METRIC starts after the last one.
    """
    with open(numbers, newline="") as f:
        rows = list(enumerate(csv.DictReader(f), start=2))  # line 1 is the header
    if which.isdigit():
        return [(line, row) for line, row in rows if line == int(which)]
    name, _, x = which.partition("@")
    table, _, rest = name.partition("/")
    row_name, _, metric = rest.rpartition("/")
    if not (table and row_name and metric):
        raise SystemExit(f"{which!r}: give a numbers.csv line number or TABLE/ROW/METRIC[@X]")
    return [
        (line, row)
        for line, row in rows
        if row["who"] == "ours"
        and (row["table"], row["row"], row["metric"]) == (table, row_name, metric)
        and (not x or row["x"] == x)
    ]


def _print_run(store: RunStore, run_id: str, depth: int, seen: set[str]) -> None:
    pad = "  " * depth
    run = store.runs.get(run_id)
    if run is None:
        print(f"{pad}run {run_id}: NOT IN THE STORE")
        return
    seen.add(run_id)
    tags, params = run.data.tags, run.data.params
    print(f"{pad}run      {run_id}  {run.info.status}")
    print(f"{pad}rule     {tags.get('rule', '')}  wildcards {tags.get('wildcards', '')}")
    parent = store.runs.get(tags.get("mlflow.parentRunId", ""))
    if parent is not None:
        ptags = parent.data.tags
        print(
            f"{pad}invoked  by `{ptags.get('command', '')}` on {ptags.get('host', '')} "
            f"(profile {ptags.get('profile', '')}; parent run {parent.info.run_id[:12]})"
        )
    for key in sorted(params):
        print(f"{pad}param    {key} = {params[key][:110]}")
    record = store.record(run_id)
    for path, recorded in record.get("inputs", {}).items():
        now = sha256_now(path)
        state = "matches" if now == recorded and now else "CHANGED" if now else "MISSING"
        producer = store.producer.get(path)
        source = f" <- {store.describe(producer)}" if producer else " (source file, no producer)"
        print(f"{pad}input    {path}  sha256 {str(recorded)[:16]}… {state}{source}")
        if producer and producer not in seen:
            _print_run(store, producer, depth + 1, seen)
    manifests = tags.get("data_manifests", "") or "-"
    for path, recorded in record.get("outputs", {}).items():
        if Path(path).name == MANIFEST and Path(path).is_file():
            count = len(json.loads(Path(path).read_text()).get("files", {}))
            print(f"{pad}output   {path}  sha256 {str(recorded)[:16]}…, lists {count} data files")
    print(
        f"{pad}data     hash {tags.get('data_hash', '')} of {manifests}"
        f"; data.dvc md5 {tags.get('data_dvc_md5', '')}"
    )
    print(
        f"{pad}code     git {tags.get('git_commit', '')} (uncommitted changes: "
        f"{tags.get('git_dirty', '')})"
    )


def print_number_chain(params: dict, numbers: Path, which: str) -> int:
    """number -> file -> run -> rule, wildcards -> params -> inputs (hashes, their runs, down to
    the data) -> data version -> commit, for every numbers.csv row `which` names."""
    found = find_numbers(numbers, which)
    if not found:
        print(f"{which!r}: no such number in {numbers}")
        return 1
    store = RunStore.load(params)
    for line, row in found:
        std = f" ± {row['std']}" if row["std"] else ""
        x = f" at x={row['x']}" if row["x"] else ""
        print(
            f"number   {numbers}:{line}  {row['table']} / {row['row']} / {row['metric']}{x} "
            f"({row['who']}) = {row['value']}{std}  (n={row['n']})"
        )
        path = row["source"].partition("#")[0]
        if path:
            now = sha256_now(path)
            recorded = store.record(row["run_id"]).get("outputs", {}).get(path)
            state = "matches its run's record" if now and now == recorded else "DOES NOT match"
            print(f"file     {row['source']}  sha256 {str(now)[:16]}… {state}")
        if row["citation"]:
            print(f"cited    {row['citation']}")
        _print_run(store, row["run_id"], 0, set())
        print()
    return 0
