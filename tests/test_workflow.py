"""The Snakemake workflow: lint, dry runs of both scales, and one tiny end-to-end run of the DAG."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", "workflow/Snakefile", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def planned_jobs(output: str) -> dict[str, int]:
    lines = output.split("Job stats:")[1].splitlines()[3:]
    jobs = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def test_lint_is_clean():
    out = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition" in out.stdout + out.stderr


def _sheet(scale: str) -> dict:
    from genrecon.config import resolve

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return resolve(params, scale, ROOT)


def _spec_pages() -> list[str]:
    return list(yaml.safe_load((ROOT / "config" / "tables.yaml").read_text())["pages"])


def test_paper_dry_run_lists_the_full_reproduction(tmp_path):
    from genrecon.methods import method_class

    out = snakemake("-n", "--config", "scale=paper", "--directory", str(ROOT))
    jobs = planned_jobs(out.stdout)
    paper = _sheet("paper")
    rows = paper["experiments"]
    trainable = [e for e, row in rows.items() if method_class(row["method"]).trainable]
    used = {row["dataset"] for row in rows.values()}  # a dataset no row reads is not prepared
    # fastMRI is never downloaded unasked (NYU's agreement): prepared from the user's folder
    # CelebA-HQ too comes from the user's folder at paper scale
    assert jobs["prepare"] == len(used) == 5 and jobs["download"] == 2
    # Tables 2-5 and seed 001's Table 1: every configuration is trained; seed 002: the VAE's
    # three stages, the DnCNN of PnP-ADMM and three variational networks; seed 003: one Glow on
    # faces, one on knees, each shared by every row of its data set
    assert jobs["fit"] == len(trainable) == 23 + 7 + 2
    assert jobs["reconstruct"] == len(rows)
    assert jobs["sweep"] == sum(len(row["sweeps"]) for row in rows.values()) == 5
    assert jobs["notebook"] == len(_spec_pages()) == 7 and jobs["index"] == 1
    for exp in ("lodopab_ms_radial_nonoise", "knee_iunet_radial_condloss", "lodopab_cinn2020"):
        assert f"results/paper/models/{exp}/best.pt" in out.stdout


def test_paper_dry_run_lists_seed_002s_grid():
    """Seed 002 at paper scale: 3 VAE variants, 6 baselines (LS, TV, range, Narnhofer19, PnP-ADMM,
    variational networks on 3 settings), each evaluated on 4 spokes x 3 noise levels and the
    Cartesian study; the covariance stages and the range searches read the mean stage's model."""
    from genrecon.evaluation.grid import measurement_settings, setting_id

    paper = _sheet("paper")
    rows = {  # seed 003's knee Glow rows use the same images under another protocol
        e: r
        for e, r in paper["experiments"].items()
        if r["dataset"] == "knee_pd" and r["protocols"] == ["grid"]
    }
    variants = sorted(r["variant"]["covariance"] for r in rows.values() if r["method"] == "vae")
    assert variants == ["diagonal", "identity", "structured"]
    methods = {r["method"] for r in rows.values()} - {"vae"}
    assert methods == {
        "gd_least_squares",
        "tv",
        "range",
        "narnhofer19",
        "pnp_admm",
        "variational_network",
    }
    assert sum(r["method"] == "variational_network" for r in rows.values()) == 3
    assert all(r["protocols"] == ["grid"] for r in rows.values())
    ids = [setting_id(s) for s in measurement_settings(paper["evaluate"]["knee_pd"])]
    radial = [i for i in ids if i.startswith("radial")]
    assert len(radial) == 4 * 3 and len(ids) - len(radial) == 4  # + the Cartesian study
    out = snakemake("-n", "--config", "scale=paper", "--directory", str(ROOT), "-p")
    for exp in rows:
        assert f"results/paper/eval/{exp}/summary.json" in out.stdout
    mean = "results/paper/models/knee_vae_identity/best.pt"
    for exp in ("knee_vae_covar", "knee_range", "knee_narnhofer19"):
        key = "mean_model" if exp.startswith("knee_vae") else "generator_model"
        assert f"--parent {key}={mean}" in out.stdout


def test_paper_dry_run_lists_seed_003s_tables():
    """Seed 003 at paper scale: two Glow trainings and every table's rows, each inverting one
    task with its data set's trained Glow (the parent checkpoint on the command line)."""
    paper = _sheet("paper")
    rows = {e: r for e, r in paper["experiments"].items() if r["protocols"] == ["inversion"]}
    assert {r["method"] for r in rows.values()} == {"glow", "glow_latent", "tv"}
    spec = yaml.safe_load((ROOT / "config" / "tables.yaml").read_text())
    tables = [t for t in spec["tables"] if t.startswith("s003_")]
    assert sorted(tables) == [f"s003_table{k}" for k in (1, 2, 3, 4, 7, 8, 9)]
    for table in tables:  # every row of every seed-003 table runs at paper scale
        assert {r["experiment"] for r in spec["tables"][table]["rows"]} <= set(rows), table
    tasks = {r["task"] for r in rows.values()}
    assert tasks == {
        "deblur",
        "deblur_inaccurate",
        "mri_acc8_snr20",
        "mri_acc8_snr10",
        "mri_acc2_snr20",
        "eikonal",
    }
    out = snakemake("-n", "--config", "scale=paper", "--directory", str(ROOT), "-p")
    for exp in rows:
        assert f"results/paper/eval/{exp}/summary.json" in out.stdout
    for glow in ("faces_glayers_p2", "knee_glow_glayers_acc8_snr20"):
        assert f"results/paper/models/{glow}/best.pt" in out.stdout
    assert "--parent generator_model=results/paper/models/faces_glayers_p2/best.pt" in out.stdout


def test_smoke_dry_run_needs_no_download():
    jobs = planned_jobs(snakemake("-n", "--forceall").stdout)
    used = {row["dataset"] for row in _sheet("smoke")["experiments"].values()}
    assert "download" not in jobs and jobs["prepare"] == len(used)


def test_config_may_only_choose_the_scale():
    out = snakemake("-n", "--config", "seed=3", check=False)
    assert out.returncode != 0
    assert "--config may only set `scale`; edit params.yaml for seed" in out.stdout + out.stderr


def _tiny(params: dict) -> dict:
    """Every rule of the smoke DAG, seconds each: a smaller overlay on the same base."""
    s = params["scales"]["smoke"]
    s["datasets"]["lodopab"].update(
        image_size=32,
        num_angles=12,
        slices_per_file=8,
        splits={"train": 24, "validation": 8, "test": 4},
    )
    s["datasets"]["mnist"]["splits"] = {"train": 40, "validation": 10, "test": 6}
    s["datasets"]["fastmri_knee"]["splits"] = {"train": 4, "validation": 2, "test": 2}
    tiny = {"blocks_per_level": 1, "cond_channels": [4, 8, 8], "cond_features": 4, "dense_cond": 8}
    # every multi-scale CT block (Table 2's conditioning-net variants share `lodopab`'s layout)
    for name, arch in params["architectures"].items():
        if name.startswith("lodopab") and arch.get("kind", "multiscale") == "multiscale":
            s["architectures"][name] = {
                **tiny,
                "levels": 2,
                "cond_levels": 1,
                "uncond_blocks": 1,
                "dense_dim": 16,
            }
    for name, arch in params["architectures"].items():
        if arch.get("kind") == "iunet":
            s["architectures"][name] = {"levels": 2, "depth": 1}
    # the 2020 model keeps its 5 downsamplings (hence 32 px CT images), with almost no width
    s["architectures"]["lodopab_2020"] = {
        "couplings": 1,
        "uncond_blocks": 0,
        "subnet_widths": [4, 4],
        "uncond_width": 4,
        "dense_blocks": 1,
        "dense_width": 8,
        "cond_scale": 0.125,
        "dense_cond": 4,
    }
    s["architectures"]["knee"] = {**s["architectures"]["knee"], "blocks_per_level": 1}
    s["architectures"]["mnist"] = {**tiny, "dense_dim": 32, "dense_blocks": 1}
    for dataset in ("lodopab", "mnist", "fastmri_knee"):
        s["train"][dataset] = {
            **s["train"].get(dataset, {}),
            "steps": 4,
            "batch_size": 4,
            "val_every": 2,
        }
        s["evaluate"][dataset] = {"num_samples": 4, "num_images": 4, "batch_samples": 4}
    s["evaluate"]["fastmri_knee"]["num_images"] = None  # both test volumes: a PD and a PDFS one
    s["evaluate"]["sample_counts"] = [1, 2, 4]
    s["sweeps"] = {"refine": {"lambdas": [0, 1], "steps": 2, "lr": 1e-4, "num_images": 2}}
    s["experiments"] = {
        name: {"variant": {"iterations": 5}}
        for name, row in params["experiments"].items()
        if row["method"] == "tv"
    }
    for name, row in params["experiments"].items():  # rows with their own step counts
        if "steps" in row.get("train", {}):
            s["experiments"][name] = {"train": {"steps": 4, "val_every": 2}}
    # seed 002: 2 slices of 2/1/1 PD volumes, two radial settings and one Cartesian, no search
    s["datasets"]["knee_pd"].update(splits={"train": 2, "validation": 1, "test": 1})
    s["datasets"]["knee_pd"]["central_slices"] = 2
    s["architectures"]["knee_vae"] = {"latent": 4, "first_channels": 4, "up_channels": [4, 4, 4]}
    s["architectures"]["knee_dncnn"] = {"depth": 3, "features": 4}
    s["architectures"]["knee_vn"] = {"stages": 2, "filters": 2, "kernel": 3, "rbf": 5}
    s["train"]["knee_pd"] = {**s["train"]["knee_pd"], "steps": 4, "batch_size": 4, "val_every": 2}
    s["evaluate"]["knee_pd"] = {
        "num_images": 1,
        "tune_images": 1,
        "radial": {"spokes": [5, 25], "noise": [0.05, 0.0125]},
        "cartesian": {"p": [0.3], "center_rows": 4, "noise": 0.05},
        "examples": 1,
    }
    # seed 003: 8/2/2 stand-in faces, a 2-level Glow of one step, 2 starts of 2 L-BFGS steps
    s["datasets"]["celeba_hq"]["splits"] = {"train": 8, "validation": 2, "test": 2}
    s["architectures"]["faces_glow"] = {"levels": 2, "steps": 1, "hidden": 4}
    s["train"]["celeba_hq"] = {
        **s["train"]["celeba_hq"],
        "steps": 4,
        "batch_size": 4,
        "val_every": 2,
    }
    s["evaluate"]["celeba_hq"] = {**s["evaluate"]["celeba_hq"], "num_images": 1, "examples": 1}
    for name, row in params["experiments"].items():
        if row["dataset"] == "celeba_hq":
            s["experiments"].setdefault(name, {}).setdefault("variant", {}).update(
                {"iterations": 2, "starts": 2}
            )
    fast = {
        "vae": {"iterations": 2},
        "gd_least_squares": {"iterations": 2},
        "range": {"iterations": 2},
        "narnhofer19": {"z_iterations": 2, "iterations": 1},
        "pnp_admm": {"iterations": 2},
    }
    for name, row in params["experiments"].items():
        if row["dataset"] != "knee_pd":
            continue
        overlay = s["experiments"].setdefault(name, {})
        overlay.setdefault("variant", {}).update(fast.get(row["method"], {}))
        if "tune" in row:  # a two-value search: the protocol still searches and saves it
            ((key, values),) = row["tune"].items()
            overlay["tune"] = {key: values[:2]}
    return params


def tiny_project(tmp_path: Path) -> Path:
    """A committed copy of the project with a tiny params.yaml (every rule, seconds each)."""
    project = tmp_path / "genrecon"
    ignore = shutil.ignore_patterns(
        ".venv",
        "results",
        "data",
        ".snakemake",
        ".git",
        "__pycache__",
        ".dvc-storage",
        "*.egg-info",
    )
    shutil.copytree(ROOT, project, ignore=ignore)
    params = _tiny(yaml.safe_load((project / "params.yaml").read_text()))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.email=ci@genrecon", "-c", "user.name=ci", "commit", "-qm", "tiny"],
    ):
        subprocess.run(["git", *cmd], cwd=project, check=True)
    return project


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback only: sqlite backend, local (proxied) artifact root."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = tmp_path / "server"
    store.mkdir()
    log = open(store / "server.log", "wb")
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store}/mlflow.db",
            "--artifacts-destination",
            str(store / "artifacts"),
        ],
        # no background job runners (GenAI evaluation jobs: ten extra processes, ~2 GB)
        env={**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.RequestException:  # not listening yet, or still starting
            pass
        assert server.poll() is None, (store / "server.log").read_text()[-2000:]
        time.sleep(0.5)
    else:
        raise AssertionError(f"mlflow server did not come up: {(store / 'server.log').read_text()}")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    log.close()


def genrecon(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "genrecon"), *args], cwd=cwd, env=ENV, capture_output=True, text=True
    )


def _flip_byte(path: Path, offset: int = -1) -> bytes:
    """Change one byte of `path` in place; returns the original content to restore."""
    original = path.read_bytes()
    data = bytearray(original)
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return original


def test_tiny_end_to_end_run(tmp_path, mlflow_server, evidence):
    from mlflow.tracking import MlflowClient

    from genrecon.methods import method_class
    from genrecon.report import check_numbers
    from genrecon.report.pagecheck import BrowserMissing, check_report_pages

    project = tiny_project(tmp_path)
    # tracked through the server (tracking.uri), not the default sqlite file
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tracking"]["uri"] = mlflow_server
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "server"], cwd=project, check=True)
    snakemake("--cores", "2", cwd=project)
    assert not (project / "results" / "mlflow.db").exists()  # nothing went to the default store
    sheet = tiny_sheet(project)
    rows_of_sheet = sheet["experiments"]
    trainable = [e for e, r in rows_of_sheet.items() if method_class(r["method"]).trainable]

    report = project / "results" / "report"
    assert "numbers.csv" in (report / "index.html").read_text()
    rows = list(csv.DictReader(open(report / "numbers.csv")))
    assert check_numbers(report / "numbers.csv", project) == len(rows) > 0
    assert all(np.isfinite(float(r["value"])) for r in rows)  # no NaN / inf reaches the report
    ours = {r["experiment"] for r in rows if r["who"] == "ours" and r["experiment"]}
    assert ours == set(rows_of_sheet)  # every experiment of the sheet reaches the report
    assert {r["table"] for r in rows} >= {
        "s000_table1",
        "s000_table3",
        "s000_table4",
        "s001_table1",
    }

    client = MlflowClient(mlflow_server)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True
    ).stdout.strip()
    for run_id in {r["run_id"] for r in rows}:
        tags = client.get_run(run_id).data.tags
        assert tags["git_commit"] == head and tags["git_dirty"] == "false"
        assert {"data_hash", "data_dvc_md5", "rule", "wildcards"} <= set(tags)

    # one MLflow tree: the invocation's parent run, every job's run its child
    experiment = client.get_experiment_by_name("genrecon").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "reproduction"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert "snakemake" in parent.data.tags["command"] and "--cores 2" in parent.data.tags["command"]
    assert parent.data.tags["host"] == socket.gethostname()
    assert parent.data.tags["git_commit"] == head
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"snakemake"}
    jobs = [r for r in runs if r is not parent]
    assert {r.data.tags.get("mlflow.parentRunId") for r in jobs} == {parent.info.run_id}
    # every job recorded the sha256 of each file its rule declared, all present
    for run in jobs:
        local = client.download_artifacts(run.info.run_id, "provenance/files.json", str(tmp_path))
        record = json.loads(Path(local).read_text())
        assert list(record["outputs"]) == run.data.tags["outputs"].split(), run.data.tags["rule"]
        assert record["outputs"] and None not in record["outputs"].values()
        assert None not in record["inputs"].values()
    assert {r.data.tags["rule"] for r in jobs} == {
        "prepare",
        "fit",
        "reconstruct",
        "sweep",
        "benchmarks",
        "numbers",
        "notebook",
        "index",
    }

    # the audit: all matches on a fresh run; one changed byte anywhere behind it is named
    audit = genrecon("audit", cwd=project)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "audit passed" in audit.stdout and " 0/" not in audit.stdout
    fit = client.search_runs([experiment], "tags.rule = 'fit'")[0]
    checkpoint = fit.data.tags["outputs"].split()[0]
    evaluation = next(r for r in rows if r["who"] == "ours" and r["source"].endswith("_mean"))
    data_file = next(p for p in (project / "data").rglob("*.hdf5"))
    for victim in (
        project / checkpoint,
        project / evaluation["source"].partition("#")[0].replace("summary.json", "per_image.csv"),
        data_file,
        project / "notebooks" / "mnist.ipynb",
    ):
        original = _flip_byte(victim)
        failed = genrecon("audit", cwd=project)
        victim.write_bytes(original)
        name = str(victim.relative_to(project))
        assert failed.returncode == 1 and name in failed.stdout, (name, failed.stdout)
    numbers_csv = report / "numbers.csv"
    original = numbers_csv.read_bytes()  # bytes: the CSV's \r\n must come back as it was
    value = evaluation["value"].encode()
    typed = original.replace(b"," + value + b",", b",%r," % (float(value) + 1), 1)
    assert typed != original
    numbers_csv.write_bytes(typed)
    failed = genrecon("audit", cwd=project)
    numbers_csv.write_bytes(original)
    assert failed.returncode == 1 and "numbers.csv" in failed.stdout
    assert genrecon("audit", "--no-data", cwd=project).returncode == 0  # all restored
    evidence.append(
        f"MLflow server {mlflow_server} (loopback): {len(jobs)} job runs, children of one parent "
        f"run; genrecon audit passed, then named each of 5 changed files and exited 1"
    )

    # one number's whole chain: file, run, rule, params, inputs with their runs, data, commit
    which = f"{evaluation['table']}/{evaluation['row']}/{evaluation['metric']}"
    chain = genrecon("provenance", "--number", which, cwd=project)
    assert chain.returncode == 0, chain.stderr
    for expected in (
        evaluation["value"],
        "matches its run's record",
        "rule     reconstruct",
        "rule     fit",
        "rule     prepare",
        "MANIFEST.json",
        f"code     git {head}",
        "param    ",
    ):
        assert expected in chain.stdout, (expected, chain.stdout)
    fit_runs = client.search_runs(
        [client.get_experiment_by_name("genrecon").experiment_id], "tags.job = 'fit'"
    )
    assert len(fit_runs) == len(trainable) and all(
        r.data.tags["data_hash"] != "none" for r in fit_runs
    )
    logged = {a.path for a in client.list_artifacts(fit_runs[0].info.run_id)}
    assert {"best.pt", "best.json", "history.csv", "train.json"} <= logged

    audit = subprocess.run(
        [str(BIN / "genrecon"), "provenance", "--numbers", "results/report/numbers.csv"],
        cwd=project,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert audit.count("git_commit") == len({r["run_id"] for r in rows})
    assert f"git_commit      {head}" in audit

    again = snakemake("--cores", "2", "-n", cwd=project)
    assert "Nothing to be done" in again.stdout + again.stderr
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True
    ).stdout
    assert status == ""

    # a data version published with DVC and pulled back: the audit accepts the restored files
    dvc = str(BIN / "dvc")
    for command in (["add", "-q", "data"], ["push", "-q"]):
        subprocess.run([dvc, *command], cwd=project, env=ENV, check=True, capture_output=True)
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache", ignore_errors=True)
    subprocess.run([dvc, "pull", "-q"], cwd=project, env=ENV, check=True, capture_output=True)
    pulled = genrecon("audit", cwd=project)
    assert pulled.returncode == 0 and "data files re-hashed" in pulled.stdout, pulled.stdout

    # A changed setting reruns exactly the jobs that read it: evaluate.clip is read by the
    # posterior evaluations and the refinement sweeps of that dataset, and by nothing upstream.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["scales"]["smoke"]["evaluate"]["lodopab"]["clip"] = [0.0, 0.9]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    jobs = planned_jobs(snakemake("-n", cwd=project).stdout)
    posterior_ct = [
        e
        for e, r in rows_of_sheet.items()
        if r["dataset"] == "lodopab" and "posterior" in r["protocols"]
    ]
    refined = [e for e, r in rows_of_sheet.items() if r["dataset"] == "lodopab" and r["sweeps"]]
    assert jobs.pop("reconstruct") == len(posterior_ct) and jobs.pop("sweep") == len(refined)
    assert set(jobs) == {"numbers", "notebook", "index", "all"}  # the report, downstream

    # last, as it may skip: every page renders in headless Chromium, no broken link or image
    try:
        assert check_report_pages(report) == []
    except BrowserMissing as error:
        pytest.skip(f"no headless Chromium to check the pages: {error}")


def tiny_sheet(project: Path) -> dict:
    from genrecon.config import resolve

    return resolve(yaml.safe_load((project / "params.yaml").read_text()), "smoke", project)
