"""Report assembly: the numbers table, executed notebooks, the index page, provenance lookup.

`numbers.csv` is the single table the notebooks present: every number in the report is one of
its rows, with the file it was read from and the MLflow run that produced it. Paper numbers are
rows too, labelled as the paper's, sourced from the vendored paper_results.yaml and attributed
to the run of the job that assembled the table.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import yaml

from genrecon.config import scale_settings
from genrecon.tracking import tracked_run, tracking_uri

COLUMNS = ["table", "method", "metric", "value", "std", "n", "source", "run_id"]
PAPER_ROOT = "cinn_medical_imaging"
SMOKE_WARNING = "<b>Smoke-scale numbers are not comparable to the papers&#39; datasets.</b>"


def dataset_label(settings: dict, scale: str, dataset: str, steps: int | None = None) -> str:
    """What our numbers were measured on, in words: smoke results never pass as the papers'."""
    d = settings["datasets"][dataset]
    if scale == "paper":
        text = "LoDoPaB-CT test set" if dataset == "lodopab" else "MNIST test set"
    elif dataset == "lodopab":
        text = (
            f"smoke: synthetic LoDoPaB-format CT {d['image_size']}x{d['image_size']}, "
            f"{d['num_angles']} angles, N0={d['photons']}"
        )
    else:
        text = f"smoke: real MNIST t10k split, {d['splits']['train']} train images"
    return f"{text}, {steps} steps" if steps else text


def model_label(cfg: dict) -> str:
    if cfg["dataset"] == "mnist":
        cond = {"pinv": "pseudo-inverse", "tikhonov": "Tikhonov-gradient (paper: 'TV')"}
        return f"cINN multiscale, {cond[cfg['conditioning']]} conditioning"
    noise = "train noise" if cfg.get("train_noise", 0) > 0 else "no train noise"
    return f"cINN multiscale, {cfg['base']} base, {noise}"


def estimators(summary: dict) -> list[tuple[str, str]]:
    """(column prefix, description) of the conditional-mean estimators an evaluation measured."""
    n = summary["num_samples"]
    if not summary.get("clip"):
        return [("", f"mean of {n} samples")]
    lo, hi = summary["clip"]
    return [
        ("", f"mean of {n} samples clipped to [{lo:g}, {hi:g}]"),
        ("raw_", f"mean of {n} unclipped samples"),
    ]


def _dig(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing result file (run its Snakemake rule first)")
    return json.loads(path.read_text())


def build_numbers(
    params: dict, scale: str, results: Path, paper_file: Path, out: Path, benchmarks: Path | None
) -> None:
    settings = scale_settings(params, scale)
    paper = yaml.safe_load(paper_file.read_text())
    rows: list[dict] = []
    with tracked_run(params, "numbers", {"results": str(results)}) as run:
        numbers_run = run.info.run_id

        def ours(table, method, metric, value, std, n, source, run_id):
            rows.append(
                dict(
                    zip(
                        COLUMNS,
                        [table, method, metric, value, std, n, str(source), run_id],
                        strict=True,
                    )
                )
            )

        def theirs(table, method, path, metric, entry):
            value, std = entry if isinstance(entry, list) else (entry, "")
            ours(
                table,
                f"{method} [paper]",
                metric,
                value,
                std,
                "",
                f"{paper_file}:{path}",
                numbers_run,
            )

        tables = {"lodopab": "table3_lodopab", "mnist": "table1_mnist_cs"}
        for name, model in settings["models"].items():
            cfg = {**model, "name": name}
            dataset = cfg["dataset"]
            steps = settings["train"][dataset]["steps"]
            label = f"{model_label(cfg)} [ours, {dataset_label(settings, scale, dataset, steps)}]"
            summary_path = results / "eval" / name / "summary.json"
            summary = _read_json(summary_path)
            for prefix, estimator in estimators(summary):
                for metric in ("psnr", "ssim"):
                    ours(
                        tables[dataset],
                        label.replace(" [ours", f", {estimator} [ours"),
                        metric,
                        summary[f"{prefix}{metric}_mean"],
                        summary[f"{prefix}{metric}_std"],
                        summary["n"],
                        summary_path,
                        summary["run_id"],
                    )
            key = f"{tables[dataset]}.{cfg['paper']}"
            for metric in ("psnr", "ssim"):
                theirs(
                    tables[dataset],
                    model_label(cfg),
                    f"{PAPER_ROOT}.{key}.{metric}",
                    metric,
                    _dig(paper[PAPER_ROOT], f"{key}.{metric}"),
                )
            train_path = results / "models" / name / "train.json"
            trained = _read_json(train_path)
            ours(
                "training",
                label,
                "best_val_bits_per_dim",
                trained["best_val_bpd"],
                "",
                trained["steps"],
                train_path,
                trained["run_id"],
            )
            ours(
                "training",
                label,
                "parameters",
                trained["parameters"],
                "",
                "",
                train_path,
                trained["run_id"],
            )
            sweep_path = results / "eval" / name / "samples_sweep.csv"
            for row in _read_csv(sweep_path):
                for metric in ("psnr", "ssim"):
                    ours(
                        "sweep_num_samples",
                        label,
                        f"{metric}@{row['num_samples']}",
                        row[f"{metric}_mean"],
                        row[f"{metric}_std"],
                        row["n"],
                        sweep_path,
                        row["run_id"],
                    )
            refine_path = results / "sweeps" / f"refine_{name}.csv"
            if dataset == "lodopab":
                for row in _read_csv(refine_path):
                    lam = row["lambda"]
                    for metric in ("psnr", "ssim"):
                        ours(
                            "table4_refinement",
                            f"{label} lambda={float(lam):g}",
                            metric,
                            row[f"{metric}_mean"],
                            row[f"{metric}_std"],
                            row["n"],
                            refine_path,
                            row["run_id"],
                        )
        for lam, entry in paper[PAPER_ROOT]["table4_sample_refinement"]["multiscale"].items():
            for metric in ("psnr", "ssim"):
                theirs(
                    "table4_refinement",
                    f"cINN multiscale lambda={float(lam):g}",
                    f"{PAPER_ROOT}.table4_sample_refinement.multiscale.{lam}.{metric}",
                    metric,
                    entry[metric],
                )
        baseline_names = {
            "fbp": "FBP (Hann)",
            "pinv": "pseudo-inverse A^+ y",
            "tikhonov": "Tikhonov-gradient solution (paper: 'TV')",
        }
        for dataset, table in tables.items():
            path = results / "eval" / f"baseline_{dataset}" / "summary.json"
            summary = _read_json(path)
            for method, stats in summary["methods"].items():
                label = (
                    f"{baseline_names[method]} [ours, {dataset_label(settings, scale, dataset)}]"
                )
                for metric in ("psnr", "ssim"):
                    ours(
                        table,
                        label,
                        metric,
                        stats[f"{metric}_mean"],
                        stats[f"{metric}_std"],
                        stats["n"],
                        path,
                        summary["run_id"],
                    )
        for method in ("fbp", "cinn"):
            for metric in ("psnr", "ssim"):
                theirs(
                    "table_lowdose_ct_2020",
                    {"fbp": "FBP", "cinn": "cINN (1000 samples)"}[method],
                    f"cond_nf_lowdose_ct.{method}.{metric}",
                    metric,
                    paper["cond_nf_lowdose_ct"][method][metric],
                )
        if benchmarks and benchmarks.exists():
            bench = _read_json(benchmarks)
            for item in bench["results"]:
                ours(
                    "benchmarks",
                    item["name"],
                    item["unit"],
                    item["value"],
                    item.get("std", ""),
                    item.get("repeats", ""),
                    benchmarks,
                    bench["run_id"],
                )
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        import mlflow

        mlflow.log_artifact(str(out))
        mlflow.log_artifact(str(paper_file))
        mlflow.log_metric("rows", len(rows))
    print(f"{out}: {len(rows)} numbers")


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing sweep file (run its Snakemake rule first)")
    with open(path) as f:
        return list(csv.DictReader(f))


def run_notebook(params: dict, notebook: Path, out: Path, html_out: Path, parameters: dict) -> None:
    """Execute a papermill notebook and render it to HTML (code hidden), as one tracked run."""
    import mlflow
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    out.parent.mkdir(parents=True, exist_ok=True)
    with tracked_run(
        params,
        "notebook",
        {"notebook": str(notebook), **parameters},
        wildcards={"notebook": notebook.stem},
    ) as run:
        parameters = {**parameters, "run_id": run.info.run_id}
        papermill.execute_notebook(
            str(notebook),
            str(out),
            parameters=parameters,
            kernel_name="python3",
            progress_bar=False,
            cwd=str(Path.cwd()),
        )
        exporter = HTMLExporter(exclude_input=True)
        body, _ = exporter.from_notebook_node(nbformat.read(out, as_version=4))
        html_out.write_text(body)
        mlflow.log_artifact(str(out))
        mlflow.log_artifact(str(html_out))


def write_index(params: dict, scale: str, pages: list[Path], out: Path) -> None:
    settings = scale_settings(params, scale)
    labels = [dataset_label(settings, scale, d) for d in settings["datasets"]]
    links = "\n".join(
        f'<li><a href="{html.escape(p.name)}">{html.escape(p.stem.replace("_", " "))}</a></li>'
        for p in pages
    )
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>genrecon report</title>
<style>body{{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.5}}</style></head>
<body><h1>genrecon report ({html.escape(scale)} scale)</h1>
<p>Reproduction of conditional invertible networks for imaging inverse problems
(Denker et al., J. Imaging 2021; Denker et al., INNF+ 2020).</p>
<p><b>Data:</b> {"; ".join(html.escape(label) for label in labels)}.
{SMOKE_WARNING if scale == "smoke" else ""}</p>
<ul>{links}</ul>
<p>Every number on these pages is a row of <a href="numbers.csv">numbers.csv</a>
(table, method, metric, value, std, n, source file, MLflow run). Trace one with
<code>genrecon provenance RUN_ID</code>; the MLflow store is at
<code>{html.escape(tracking_uri(params))}</code>.</p></body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body)


def print_provenance(params: dict, run_id: str | None, numbers: Path | None) -> None:
    """Print code version, data version, params and artifacts of a run (or of every row's run)."""
    from mlflow.tracking import MlflowClient

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
        for key in (
            "rule",
            "wildcards",
            "scale",
            "git_commit",
            "git_dirty",
            "data_hash",
            "data_dvc_md5",
            "data_manifests",
        ):
            print(f"  {key:15s} {tags.get(key, '')}")
        if run_id:
            for key, value in sorted(run.data.params.items()):
                print(f"  param {key} = {value}")
            for key, value in sorted(run.data.metrics.items()):
                print(f"  metric {key} = {value}")
            for artifact in client.list_artifacts(rid):
                print(f"  artifact {artifact.path}")


def metric_table(numbers, table: str):
    """Rows of one table as method x metric with 'mean ± std' cells (what the notebooks show)."""
    import pandas as pd

    rows = numbers[numbers["table"] == table]

    def cell(row) -> str:
        std = "" if pd.isna(row["std"]) or row["std"] == "" else f" ± {float(row['std']):.3g}"
        return f"{float(row['value']):.4g}{std}"

    frame = rows.assign(cell=rows.apply(cell, axis=1))
    out = frame.pivot_table(
        index="method", columns="metric", values="cell", aggfunc="first", sort=False
    )
    n = rows.groupby("method", sort=False)["n"].first()
    return out.assign(n=n.fillna("").astype(str).str.replace(".0", "", regex=False))
