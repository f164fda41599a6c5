"""A slice of the real DAG through profiles/slurm on a real (single-node) SLURM scheduler.

tests/slurm/start-slurm.sh installs and starts munged + slurmctld + slurmd on this machine, with
one GPU generic resource (no real device behind it). The test skips, saying why, where that is
impossible: not root, no apt-get to install SLURM with, or the start script fails.

The slice: the MNIST report page and what it needs, with the tiny settings of test_workflow.
A page needs numbers.csv, and numbers.csv every evaluation of the sheet, so the tiny project's
copy is cut to that page: config/tables.yaml keeps the `mnist` page and its tables, the sheet
keeps the MNIST rows and runs one of them at smoke, the cINN on A⁺y. Submitted through sbatch:

    tracking_store, prepare (mnist), fit (mnist_ms_pinv), reconstruct (mnist_ms_pinv),
    numbers, notebook (mnist)

The fit declares gpu=1 in the copy (params.yaml scales.smoke.resources.fit.gpu); training still
runs on the CPU (no CUDA here). Checked: the outputs; one FINISHED MLflow run per submitted
genrecon job, tagged with its rule and wildcards; and, read back from Slurm's own job records
(`scontrol show job`), that every job's memory, time limit and GPU count are the ones its rule
declares (params.yaml `resources` for prepare/fit/reconstruct, the --default-resources below for
rules that declare none).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from test_workflow import BIN, ENV, tiny_project

SLURM_DIR = ROOT / "tests" / "slurm"
PAGE = "mnist"
TRAINED = "mnist_ms_pinv"  # the one experiment of the slice (trainable: prepare, fit, reconstruct)
# Resources of the rules that declare none (tracking_store, numbers, notebook): passed as
# --default-resources, as a cluster's profile would set them.
DEFAULTS = {"mem_mb": 1000, "runtime": 10, "gpu": 0}
KIND_OF_RULE = {"prepare": "prepare", "fit": "fit", "reconstruct": "reconstruct"}
NO_MLFLOW_RUN = {"tracking_store"}  # creates the store; every other job is a tracked run
EXPECTED_JOBS = Counter(
    {
        ("tracking_store", ""): 1,
        ("prepare", "mnist"): 1,
        ("fit", TRAINED): 1,
        ("reconstruct", TRAINED): 1,
        ("numbers", ""): 1,
        ("notebook", PAGE): 1,
    }
)


def _run(*cmd: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def slurm():
    """A running single-node SLURM; stops afterwards only the daemons this fixture started."""
    if os.geteuid() != 0:
        pytest.skip(
            "SLURM test: needs root to install and start a local SLURM (munged, slurmctld, slurmd)"
        )
    installed = all(shutil.which(t) for t in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not installed and shutil.which("apt-get") is None:
        pytest.skip("SLURM test: SLURM is not installed and there is no apt-get to install it")
    try:
        start = _run("bash", str(SLURM_DIR / "start-slurm.sh"), timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("SLURM test: tests/slurm/start-slurm.sh did not finish in 600 s")
    started = [
        line.split(":", 1)[1].strip()
        for line in start.stdout.splitlines()
        if line.startswith("started:")
    ]
    try:
        if start.returncode != 0:
            pytest.skip(
                f"SLURM test: local SLURM did not start (tests/slurm/start-slurm.sh exit "
                f"{start.returncode}): {(start.stderr or start.stdout).strip()[-800:]}"
            )
        yield
    finally:
        if started:  # leave the machine as found: a cluster that was already up stays up
            _run("bash", str(SLURM_DIR / "stop-slurm.sh"), *started, timeout=120)


def slice_project(tmp_path: Path) -> Path:
    """The tiny project cut to one report page: its tables, its experiments, one run at smoke."""
    project = tiny_project(tmp_path)
    spec_file = project / "config" / "tables.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    page = spec["pages"][PAGE]
    spec["pages"] = {PAGE: page}
    spec["tables"] = {tid: spec["tables"][tid] for tid in page["tables"]}
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))

    named = {row["experiment"] for t in spec["tables"].values() for row in t.get("rows", [])}
    named |= {
        item["experiment"] for part in ("examples", "training") for item in page.get(part, [])
    }
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["experiments"] = {n: r for n, r in params["experiments"].items() if n in named}
    for name, row in params["experiments"].items():
        if name != TRAINED:
            row["scales"] = ["paper"]  # still in the sheet (the spec resolves), not run here
    for overlay in params["scales"].values():
        if overlay and overlay.get("experiments"):
            overlay["experiments"] = {
                n: o for n, o in overlay["experiments"].items() if n in params["experiments"]
            }
    params["scales"]["smoke"]["resources"]["fit"]["gpu"] = 1  # a GPU request must reach sbatch
    params_file.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    subprocess.run(
        ["git", "-c", "user.email=ci@genrecon", "-c", "user.name=ci", "commit", "-qam", "slice"],
        cwd=project,
        check=True,
    )
    return project


def slurm_jobs(workdir: Path) -> list[dict[str, str]]:
    """Slurm's own records (`scontrol show job`, kept MinJobAge after the end) of one workdir."""
    out = _run("scontrol", "show", "job", "-o").stdout
    jobs = []
    for line in out.splitlines():
        record = dict(tok.partition("=")[::2] for tok in line.split() if "=" in tok)
        if record.get("WorkDir") and Path(record["WorkDir"]).resolve() == workdir.resolve():
            record["_line"] = line
            jobs.append(record)
    return jobs


def rule_and_wildcards(record: dict[str, str]) -> tuple[str, str]:
    """From the plugin's --comment: rule_<rule> or rule_<rule>_wildcards_<values joined by _>."""
    comment = record["Comment"].removeprefix("rule_")
    rule, _, wildcards = comment.partition("_wildcards_")
    return rule, wildcards


def megabytes(value: str) -> int:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    return round(float(value[:-1]) * units[value[-1]]) if value[-1] in units else int(value)


def minutes(limit: str) -> int:
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def declared(settings: dict, rule: str) -> dict[str, int]:
    """What the rule declares: workflow/rules/*.smk read params.yaml `resources` per job kind."""
    from genrecon.config import resources

    if rule not in KIND_OF_RULE:
        return dict(DEFAULTS)
    res = resources(settings, KIND_OF_RULE[rule])
    return {"mem_mb": res["mem_mb"], "runtime": res["runtime"], "gpu": res.get("gpu", 0)}


def requested(record: dict[str, str]) -> dict[str, int]:
    """What Slurm recorded for the job: --mem, -t and --gpus as it accepted them."""
    tres = record.get("TresPerJob", "")  # --gpus=N: gres:gpu:N (absent without a GPU request)
    gpu = int(tres.rsplit(":", 1)[1]) if tres.startswith("gres:gpu:") else 0
    return {
        "mem_mb": megabytes(record["MinMemoryNode"]),
        "runtime": minutes(record["TimeLimit"]),
        "gpu": gpu,
    }


def test_slice_of_the_dag_through_the_slurm_profile(slurm, tmp_path, evidence):
    """prepare -> fit (1 GPU requested) -> reconstruct -> numbers -> one page, all via sbatch."""
    from mlflow.tracking import MlflowClient

    from genrecon.config import resolve

    node = _run("scontrol", "show", "node", "localhost", "-o").stdout
    assert "Gres=gpu:1" in node, f"the test cluster has no GPU gres: {node}"
    project = slice_project(tmp_path)
    settings = resolve(yaml.safe_load((project / "params.yaml").read_text()), "smoke", project)
    memory = int(node.split("RealMemory=")[1].split()[0])
    need = max(declared(settings, rule)["mem_mb"] for rule, _ in EXPECTED_JOBS)
    if memory < need:
        pytest.skip(f"SLURM test: the node has {memory} MB, a job of the slice declares {need} MB")

    target = f"results/report/{PAGE}.html"
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        "workflow/Snakefile",
        "--profile",
        "profiles/slurm",
        "--default-resources",
        "slurm_partition=debug",
        f"mem_mb={DEFAULTS['mem_mb']}",
        f"runtime={DEFAULTS['runtime']}",
        "cpus_per_task=1",
        "--slurm-init-seconds-before-status-checks",
        "2",
        target,
    ]
    began = time.monotonic()
    try:
        run = _run(*cmd, cwd=project, env=ENV, timeout=600)
    except subprocess.TimeoutExpired as error:
        for job in slurm_jobs(project):  # nothing of ours left queued on the machine
            _run("scancel", job["JobId"])
        raise AssertionError(f"the SLURM run did not finish in 600 s: {error.stdout}") from None
    jobs = slurm_jobs(project)
    summary = "\n".join(job["_line"] for job in jobs)
    assert run.returncode == 0, (
        f"snakemake --profile profiles/slurm failed:\n{run.stdout}\n{run.stderr}\n{summary}"
    )
    print(f"\nSLURM slice: {len(jobs)} jobs in {time.monotonic() - began:.0f} s\n{summary}")

    # the slice, and only it: the outputs of each step, no other page, no index
    for path in (
        "data/mnist/smoke/MANIFEST.json",
        f"results/smoke/models/{TRAINED}/best.pt",
        f"results/smoke/eval/{TRAINED}/summary.json",
        "results/report/numbers.csv",
        target,
    ):
        assert (project / path).exists(), path
    assert not (project / "results" / "report" / "index.html").exists()

    # every job went through sbatch, ran to the end, with the resources its rule declares
    submitted = Counter(rule_and_wildcards(job) for job in jobs)
    assert submitted == EXPECTED_JOBS, summary
    for job in jobs:
        rule, _ = rule_and_wildcards(job)
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job["_line"]
        assert requested(job) == declared(settings, rule), f"{rule}: {job['_line']}"
    fit = next(job for job in jobs if rule_and_wildcards(job)[0] == "fit")
    assert fit["TresPerJob"] == "gres:gpu:1"  # the declared GPU reached the scheduler

    # one FINISHED MLflow run per submitted genrecon job, tagged with its rule and wildcards
    client = MlflowClient(f"sqlite:///{project}/results/mlflow.db")
    experiment = client.get_experiment_by_name(settings["tracking"]["experiment"])
    # job runs carry their rule; other runs (e.g. a parent run of the invocation) are not jobs
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "rule" in r.data.tags]
    assert all(r.info.status == "FINISHED" for r in runs)
    head = _run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    assert all(
        (r.data.tags["git_commit"], r.data.tags["git_dirty"]) == (head, "false") for r in runs
    )
    tracked = Counter(
        (r.data.tags["rule"], "_".join(json.loads(r.data.tags["wildcards"]).values())) for r in runs
    )
    assert tracked == Counter({k: n for k, n in submitted.items() if k[0] not in NO_MLFLOW_RUN})
    # the jobs ran on SLURM's side, yet each is a child of this invocation's parent run (its id
    # reached them through sbatch's exported environment), which names the profile
    parents = client.search_runs([experiment.experiment_id], "tags.kind = 'reproduction'")
    assert len(parents) == 1 and parents[0].data.tags["profile"] == "profiles/slurm"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    evidence.append(
        f"SLURM: {len(jobs)} jobs submitted through sbatch with profiles/slurm, all "
        "COMPLETED, resources as declared; MLflow runs children of one parent run:"
    )
    for job in jobs:
        rule, wildcards = rule_and_wildcards(job)
        evidence.append(f"  job {job['JobId']:>5} {rule:14s} {wildcards:14s} {requested(job)}")
