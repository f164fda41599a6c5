"""`genrecon` command line: one subcommand per pipeline job; Snakemake rules call these.

Every job is an MLflow run (tracking.py) and reads its settings through the same
`genrecon.config` function its rule passes as `params`, so a changed setting reruns exactly the
jobs that read it. No command branches on a dataset or method name: datasets, methods,
protocols and sweeps are looked up in their registries.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from genrecon import config


def _threads(settings: dict) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("GENRECON_THREADS", settings.get("threads", 1))))


def _log_artifacts(*paths: Path) -> None:
    import mlflow

    for path in paths:
        mlflow.log_artifact(str(path))


def _dataset(settings: dict, name: str):
    from genrecon.data.registry import dataset

    return dataset(name, settings)


def _method(row: dict, dataset):
    """The experiment's method, configured by its variant, reading the right conditioning."""
    from genrecon.methods import method_class

    method = method_class(row["method"])(**row["variant"])
    if method.uses_conditioning and method.conditioning is None:
        method.conditioning = dataset.conditionings[0]
    return method


def _use_parents(method, settings: dict, job: dict, given: list[str]) -> None:
    """Load the trained models of the experiments the variant names (`Method.parents`) from the
    checkpoints the rule passes (`--parent KEY=PATH`), and hand them to the method."""
    from genrecon.methods import method_class
    from genrecon.training import load_model

    wanted = job.get("parents") or {}
    paths = dict(item.split("=", 1) for item in given)
    if set(paths) != set(wanted):
        raise SystemExit(
            f"{job['experiment']}: needs the models of {wanted or 'no experiment'}; "
            f"--parent gave {sorted(paths) or 'none'}"
        )
    models = {}
    for key, experiment in wanted.items():
        parent_row = config.experiment(settings, experiment)
        build = method_class(parent_row["method"]).build
        models[key], _ = load_model(Path(paths[key]), build)
    if models:
        method.use_parents(models)


def _trained(method, checkpoint: Path, seed: int, protocol_settings: dict):
    from genrecon.training import load_model

    model, _ = load_model(checkpoint, method.build)
    return method.attach(model, seed, protocol_settings)


def cmd_init_tracking(args, params, settings) -> None:
    from genrecon.tracking import init_store, tracking_uri

    init_store(params)
    print(f"MLflow store ready at {tracking_uri(params)}")


def cmd_download(args, params, settings) -> None:
    from genrecon.evaluation.protocols import write_json
    from genrecon.tracking import tracked_run

    job = config.prepare_settings(settings, args.dataset)
    with tracked_run(params, "download", job, wildcards={"dataset": args.dataset}):
        receipt = _dataset(settings, args.dataset).download(Path(args.root))
        write_json(Path(args.root) / "download.json", receipt)
        _log_artifacts(Path(args.root) / "download.json")


def cmd_prepare(args, params, settings) -> None:
    from genrecon.data.base import manifest_path
    from genrecon.tracking import tracked_run

    job = config.prepare_settings(settings, args.dataset)
    with tracked_run(params, "prepare", job, wildcards={"dataset": args.dataset}) as run:
        _dataset(settings, args.dataset).prepare(Path(args.root))
        _log_artifacts(manifest_path(Path(args.root)))
        print(f"prepared {args.root} (run {run.info.run_id})")


def cmd_fit(args, params, settings) -> None:
    import mlflow

    from genrecon.data.base import TrainingPairs, manifest_path
    from genrecon.evaluation.protocols import write_json
    from genrecon.tracking import tracked_run
    from genrecon.training import fit

    _threads(settings)
    job = config.fit_settings(settings, args.experiment)
    row = config.experiment(settings, args.experiment)
    dataset = _dataset(settings, job["dataset"])
    method = _method(row, dataset)
    if not method.trainable:
        raise SystemExit(
            f"experiment {args.experiment!r}: method {row['method']!r} has no training"
        )
    root, out = Path(args.data), Path(args.out)
    _use_parents(method, settings, job, args.parent)
    # a method that starts from another experiment's model (seed 002's covariance stage) builds
    # through `build_model`, which copies those weights in; `build` alone rebuilds a checkpoint
    build = getattr(method, "build_model", None) or method.build
    # real data at paper scale: read batches from disk
    lazy = dataset.needs_download() or getattr(dataset, "stream_training", False)
    train_split = dataset.split(root, "train", lazy=lazy)
    val_split = dataset.split(root, "validation")
    spec = method.spec(job, tuple(train_split.x.shape[1:]))
    with tracked_run(
        params, "fit", job, [manifest_path(root)], {"experiment": args.experiment}
    ) as run:
        summary = fit(
            lambda: build(spec),
            spec,
            TrainingPairs(train_split, method.conditioning),
            TrainingPairs(val_split, method.conditioning),
            job["train"],
            out,
            job["seed"],
            log_metric=lambda k, v, s: mlflow.log_metric(k, v, step=s),
            name=args.experiment,
        )
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})
        write_json(
            out / "train.json",
            {**summary, "run_id": run.info.run_id, "experiment": args.experiment},
        )
        _log_artifacts(
            *(out / name for name in ("history.csv", "best.pt", "best.json", "train.json"))
        )


def cmd_reconstruct(args, params, settings) -> None:
    import mlflow

    from genrecon.data.base import manifest_path
    from genrecon.evaluation.protocols import PROTOCOLS, write_json
    from genrecon.tracking import tracked_run

    _threads(settings)
    job = config.reconstruct_settings(settings, args.experiment)
    row = config.experiment(settings, args.experiment)
    dataset = _dataset(settings, job["dataset"])
    method = _method(row, dataset)
    root, out = Path(args.data), Path(args.out)
    _use_parents(method, settings, job, args.parent)
    if method.trainable:
        method = _trained(method, Path(args.checkpoint), job["seed"], job["evaluate"])
    (protocol,) = job["protocols"]  # one protocol per experiment: one summary file
    extra = {}
    if getattr(PROTOCOLS[protocol], "wants_validation", False):  # seed 002's grid: tuning
        # whole splits: the grid spreads its images over the volumes (evaluation/grid.spread)
        split = dataset.split(root, "test")
        extra = {
            "validation": dataset.split(root, "validation"),
            "search": job.get("tune"),
            "seed": job["seed"],
        }
    elif getattr(PROTOCOLS[protocol], "wants_seed", False):  # seed 003: seeded starts, data
        split = dataset.split(root, "test")  # the protocol picks its images (spread)
        extra = {"seed": job["seed"]}
    else:
        split = dataset.split(root, "test", job["evaluate"]["num_images"])
    tracked = {**job, "checkpoint": args.checkpoint}
    with tracked_run(
        params, "reconstruct", tracked, [manifest_path(root)], {"experiment": args.experiment}
    ) as run:
        summary = PROTOCOLS[protocol](
            method, dataset, split, dataset.physics(root), job["evaluate"], out, **extra
        )
        for estimator, stats in summary["estimators"].items():
            mlflow.log_metrics(
                {f"{estimator}_{k}": v for k, v in stats.items() if isinstance(v, float)}
            )
        for block in ("single_sample", "pixel_std", "exploding"):  # posterior protocol only
            stats = summary.get(block) or {}
            mlflow.log_metrics(
                {
                    f"{block}_{k}": float(v)
                    for k, v in stats.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
            )
        payload = {
            "experiment": args.experiment,
            "method": row["method"],
            "dataset": job["dataset"],
            "data": dataset.describe(settings["scale"]),
            "run_id": run.info.run_id,
            **summary,
        }
        write_json(out / "summary.json", payload)
        _log_artifacts(*(out / n for n in ("summary.json", "per_image.csv", "examples.npz")))


def cmd_sweep(args, params, settings) -> None:
    from genrecon.data.base import manifest_path
    from genrecon.evaluation.protocols import SWEEPS, write_rows
    from genrecon.tracking import tracked_run

    _threads(settings)
    job = config.sweep_settings(settings, args.sweep, args.experiment)
    row = config.experiment(settings, args.experiment)
    dataset = _dataset(settings, job["dataset"])
    method = _method(row, dataset)
    root = Path(args.data)
    if method.trainable:
        method = _trained(method, Path(args.checkpoint), job["seed"], job["settings"])
    split = dataset.split(root, "test", job["settings"]["num_images"])
    wildcards = {"sweep": args.sweep, "experiment": args.experiment}
    with tracked_run(params, "sweep", job, [manifest_path(root)], wildcards) as run:
        rows = SWEEPS[args.sweep](
            method, dataset, split, dataset.physics(root), job["settings"], job["clip"]
        )
        rows = [{**r, "run_id": run.info.run_id, "experiment": args.experiment} for r in rows]
        write_rows(Path(args.out), rows)
        _log_artifacts(Path(args.out))


def cmd_bench(args, params, settings) -> None:
    from genrecon.bench import run_benchmarks
    from genrecon.tracking import tracked_run

    with tracked_run(params, "benchmarks", {"quick": args.quick}) as run:
        run_benchmarks(params, Path(args.out), run.info.run_id, quick=args.quick)


def cmd_report(args, params, settings) -> None:
    from genrecon import report

    if args.what == "numbers":
        report.build_numbers(
            params,
            settings,
            Path(args.results),
            Path(args.tables),
            Path(args.paper),
            Path(args.out),
            Path(args.benchmarks),
        )
    elif args.what == "notebook":
        report.run_notebook(
            params,
            Path(args.notebook),
            Path(args.out),
            Path(args.html),
            dict(p.split("=", 1) for p in args.parameter),
        )
    else:
        from genrecon.tracking import tracked_run

        with tracked_run(params, "index", {"pages": args.pages}):
            report.write_index(params, settings, [Path(p) for p in args.pages], Path(args.out))


def cmd_provenance(args, params, settings) -> int:
    if args.number:
        from genrecon.audit import print_number_chain, report_dir

        numbers = Path(args.numbers) if args.numbers else report_dir(settings) / "numbers.csv"
        return print_number_chain(params, numbers, args.number)
    from genrecon import report

    report.print_provenance(params, args.run_id, Path(args.numbers) if args.numbers else None)
    return 0


def cmd_audit(args, params, settings) -> int:
    from genrecon.audit import print_audit, run_audit

    report = Path(args.report) if args.report else None
    return print_audit(run_audit(params, settings, report, check_data=not args.no_data))


PARENT_HELP = "KEY=CHECKPOINT: the trained model a `parents` variant key names (repeatable)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrecon", description=__doc__)
    p.add_argument("--params", default="params.yaml", help="parameter file (default params.yaml)")
    p.add_argument("--scale", default=None, help="smoke or paper (default: params.yaml's scale)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init-tracking", help="create the MLflow store and experiment")
    for name, text in (
        ("download", "download a dataset's real files (resumable, checksummed)"),
        ("prepare", "write a dataset in its real format with its conditioning inputs"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("dataset")
        s.add_argument("--root", required=True)
    s = sub.add_parser("fit", help="train one experiment's method")
    s.add_argument("experiment")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--parent", action="append", default=[], help=PARENT_HELP)
    s = sub.add_parser("reconstruct", help="evaluate one experiment on the test split")
    s.add_argument("experiment")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--checkpoint", help="trained model (trainable methods)")
    s.add_argument("--parent", action="append", default=[], help=PARENT_HELP)
    s = sub.add_parser("sweep", help="one sweep (e.g. refine: lambda) on one experiment")
    s.add_argument("sweep")
    s.add_argument("experiment")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--checkpoint", help="trained model (trainable methods)")
    s = sub.add_parser("bench", help="benchmarks: projector, FBP, training and sampling throughput")
    s.add_argument("--out", default="results/benchmarks.json")
    s.add_argument("--quick", action="store_true", help="fewer repetitions")
    s = sub.add_parser("report", help="numbers table, notebooks, index page")
    s.add_argument("what", choices=["numbers", "notebook", "index"])
    s.add_argument("--results", default="results")
    s.add_argument("--tables", default="config/tables.yaml")
    s.add_argument("--paper", default="reference/paper_results.yaml")
    s.add_argument("--benchmarks", default="results/benchmarks.json")
    s.add_argument("--notebook")
    s.add_argument("--html")
    s.add_argument("--pages", nargs="*", default=[])
    s.add_argument("-p", "--parameter", action="append", default=[], help="NAME=VALUE")
    s.add_argument("--out", required=True)
    s = sub.add_parser("provenance", help="where a number came from: run, code, data, params")
    s.add_argument("run_id", nargs="?", help="MLflow run id (or use --numbers to list all)")
    s.add_argument("--numbers", help="numbers.csv: resolve every row's run")
    s.add_argument(
        "--number",
        help="the whole chain behind one number: its numbers.csv line, or TABLE/ROW/METRIC[@X]",
    )
    s = sub.add_parser("audit", help="recompute the hashes behind every number of the report")
    s.add_argument("--report", help="report folder (default: the scale's)")
    s.add_argument("--no-data", action="store_true", help="do not re-hash the data files")
    return p


COMMANDS = {
    "init-tracking": cmd_init_tracking,
    "download": cmd_download,
    "prepare": cmd_prepare,
    "fit": cmd_fit,
    "reconstruct": cmd_reconstruct,
    "sweep": cmd_sweep,
    "bench": cmd_bench,
    "report": cmd_report,
    "provenance": cmd_provenance,
    "audit": cmd_audit,
}


def main(argv: list[str] | None = None) -> int:
    from genrecon.data.errors import DataError

    args = parser().parse_args(argv)
    try:
        params = config.load_params(args.params)
        if args.scale:
            params["scale"] = args.scale
        settings = config.resolve(params, root=Path(args.params).parent)
        args.scale = settings["scale"]
        return COMMANDS[args.command](args, params, settings) or 0
    except (config.ConfigError, DataError) as error:
        # the message names the file or setting and what to do; a traceback would bury it
        print(f"genrecon: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
