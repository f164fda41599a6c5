"""`genrecon audit` and the per-job file records on a small, real MLflow store (no pipeline run).

Four tracked jobs as the workflow chains them (prepare -> reconstruct -> numbers -> index), each
declaring its files the way the rules do (GENRECON_INPUTS / GENRECON_OUTPUTS). The audit must
pass on what they wrote and name the file and the run for each kind of later change.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from genrecon.audit import RunStore, find_numbers, run_audit
from genrecon.data.base import write_manifest
from genrecon.data.download import file_digest
from genrecon.report.numbers import COLUMNS, write_numbers
from genrecon.tracking import INPUTS_ENV, OUTPUTS_ENV, PARENT_ENV, tracked_run

MANIFEST = "data/ds/smoke/MANIFEST.json"
SUMMARY = "results/smoke/eval/e/summary.json"
NUMBERS = "results/report/numbers.csv"
INDEX = "results/report/index.html"


def _job(params, monkeypatch, rule, inputs, outputs, write, manifests=()):
    monkeypatch.setenv(INPUTS_ENV, " ".join(inputs))
    monkeypatch.setenv(OUTPUTS_ENV, " ".join(outputs))
    with tracked_run(params, rule, {"what": rule}, [Path(m) for m in manifests]) as run:
        write(run.info.run_id)
    return run.info.run_id


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The store and files, written once (an MLflow sqlite store takes seconds to create)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _write_template(tmp_path_factory.mktemp("template"), monkeypatch)


@pytest.fixture
def project(template, tmp_path, monkeypatch):
    """A fresh copy of the files (tests change them) beside the shared, read-only store."""
    root, params, runs = template
    for folder in ("data", "results"):
        shutil.copytree(root / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    return params, runs


def _write_template(tmp_path: Path, monkeypatch) -> tuple[Path, dict, dict]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    params = {
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "audit"},
        "scale": "smoke",
        "seed": 0,
    }
    runs = {}

    def prepare(_):
        Path("data/ds/smoke").mkdir(parents=True)
        Path("data/ds/smoke/images.bin").write_bytes(bytes(range(200)))
        write_manifest(Path("data/ds/smoke"))

    def reconstruct(_):
        Path(SUMMARY).parent.mkdir(parents=True)
        Path(SUMMARY).write_text(json.dumps({"estimators": {"mean": {"psnr_mean": 31.25}}}))

    def numbers(_):
        row = {key: "" for key in COLUMNS}
        row.update(
            table="t1",
            row="e:mean",
            who="ours",
            experiment="e",
            metric="psnr",
            value="31.25",
            n="1",
            source=f"{SUMMARY}#/estimators/mean/psnr_mean",
            run_id=runs["reconstruct"],
        )
        Path(NUMBERS).parent.mkdir(parents=True)
        write_numbers([row], Path(NUMBERS))

    runs["prepare"] = _job(params, monkeypatch, "prepare", [], [MANIFEST], prepare)
    runs["reconstruct"] = _job(
        params, monkeypatch, "reconstruct", [MANIFEST], [SUMMARY], reconstruct, [MANIFEST]
    )
    runs["numbers"] = _job(params, monkeypatch, "numbers", [SUMMARY], [NUMBERS], numbers)
    runs["index"] = _job(
        params, monkeypatch, "index", [NUMBERS], [INDEX], lambda _: Path(INDEX).write_text("ok")
    )
    return tmp_path, params, runs


def test_jobs_record_the_sha256_of_their_declared_files(project):
    params, runs = project
    store = RunStore.load(params)
    record = store.record(runs["reconstruct"])
    assert record == {
        "inputs": {MANIFEST: file_digest(Path(MANIFEST), "sha256")},
        "outputs": {SUMMARY: file_digest(Path(SUMMARY), "sha256")},
    }
    assert store.producer == {
        MANIFEST: runs["prepare"],
        SUMMARY: runs["reconstruct"],
        NUMBERS: runs["numbers"],
        INDEX: runs["index"],
    }
    # from the report back to the data, every run once
    assert store.upstream([runs["index"]]) == [
        runs["index"],
        runs["numbers"],
        runs["reconstruct"],
        runs["prepare"],
    ]


def test_audit_passes_on_untouched_results(project):
    params, _ = project
    audit = run_audit(params, {"scale": "smoke"})
    assert audit.problems == []
    assert len(audit.lines) == 4 + 1 + 1  # four runs, one data manifest, numbers.csv
    assert "1 data files re-hashed" in "\n".join(audit.lines)


def _flip(path: str) -> None:
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 1
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("victim", "run"),
    [
        ("data/ds/smoke/images.bin", "prepare"),  # a data file under the MANIFEST
        (SUMMARY, "reconstruct"),  # an evaluation output
        (INDEX, "index"),  # the report page itself
    ],
)
def test_audit_names_a_changed_file_and_its_run(project, victim, run):
    params, runs = project
    _flip(victim)
    problems = run_audit(params, {"scale": "smoke"}).problems
    assert problems and all(victim in p for p in problems[:1])
    assert any(runs[run][:12] in p for p in problems if victim in p)


def test_audit_names_a_number_typed_into_numbers_csv(project):
    params, _ = project
    text = Path(NUMBERS).read_text()
    Path(NUMBERS).write_text(text.replace("31.25", "32.25", 1))
    problems = run_audit(params, {"scale": "smoke"}).problems
    assert any(NUMBERS in p and "changed after" in p for p in problems)  # the hash
    assert any("value 32.25" in p for p in problems)  # and the number against its source


def test_audit_names_data_that_changed_under_a_run(project):
    """A MANIFEST rewritten after a run read it: the run's data_hash no longer matches."""
    params, runs = project
    Path("data/ds/smoke/more.bin").write_bytes(b"x")
    write_manifest(Path("data/ds/smoke"))
    problems = run_audit(params, {"scale": "smoke"}).problems
    assert any(MANIFEST in p and runs["reconstruct"][:12] in p for p in problems)


def test_numbers_are_found_by_line_or_by_table_row_metric(project):
    assert [line for line, _ in find_numbers(Path(NUMBERS), "2")] == [2]
    assert [row["value"] for _, row in find_numbers(Path(NUMBERS), "t1/e:mean/psnr")] == ["31.25"]
    assert find_numbers(Path(NUMBERS), "t1/e:mean/psnr@5") == []  # no such x
    assert find_numbers(Path(NUMBERS), "t1/e:mean/ssim") == []
