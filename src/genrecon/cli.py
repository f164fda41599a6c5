"""`genrecon` command line: one subcommand per pipeline job. Snakemake rules call these.

Every job is an MLflow run (see tracking.py); its run id is written into its outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from genrecon.config import load_params, model_settings, scale_settings


def _threads(settings: dict) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("GENRECON_THREADS", settings.get("threads", 1))))


def _manifest(root: Path) -> Path:
    path = Path(root) / "MANIFEST.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: dataset not prepared (run `snakemake` or `genrecon prepare`)"
        )
    return path


def cmd_init_tracking(args, params, settings) -> None:
    from genrecon.tracking import init_store, tracking_uri

    init_store(params)
    print(f"MLflow store ready at {tracking_uri(params)}")


def cmd_download(args, params, settings) -> None:
    from genrecon.data import lodopab, mnist
    from genrecon.tracking import tracked_run

    cfg = settings["datasets"][args.dataset]
    with tracked_run(
        params, f"download_{args.dataset}", {args.dataset: cfg}, wildcards={"dataset": args.dataset}
    ):
        if args.dataset == "lodopab":
            lodopab.download_zenodo(Path(args.root), cfg["zenodo_record"])
        else:
            mnist.download_mnist(Path(args.root))


def cmd_prepare(args, params, settings) -> None:
    from genrecon.data import prepare
    from genrecon.tracking import tracked_run

    cfg = settings["datasets"][args.dataset]
    with tracked_run(
        params, f"prepare_{args.dataset}", {args.dataset: cfg}, wildcards={"dataset": args.dataset}
    ) as run:
        if args.dataset == "lodopab":
            prepare.prepare_lodopab(Path(args.root), cfg, params["seed"])
        else:
            prepare.prepare_mnist(Path(args.root), Path(args.raw), cfg, params["seed"])
        import mlflow

        mlflow.log_artifact(str(_manifest(Path(args.root))))
        print(f"prepared {args.root} (run {run.info.run_id})")


def cmd_train(args, params, settings) -> None:
    import mlflow

    from genrecon.data.pairs import load_pairs, load_pairs_lazy
    from genrecon.evaluate import write_json
    from genrecon.tracking import tracked_run
    from genrecon.train import train

    _threads(settings)
    model_cfg = model_settings(settings, args.model)
    root = Path(args.data)
    if model_cfg["data"].get("source") == "zenodo":  # real LoDoPaB: too large for memory
        train_pairs = load_pairs_lazy(root, "train")
    else:
        train_pairs = load_pairs(model_cfg["dataset"], root, "train", model_cfg)
    val_pairs = load_pairs(model_cfg["dataset"], root, "validation", model_cfg)
    out = Path(args.out)
    with tracked_run(params, "train", model_cfg, [_manifest(root)], {"model": args.model}) as run:
        summary = train(
            model_cfg,
            train_pairs,
            val_pairs,
            out,
            params["seed"],
            log_metric=lambda k, v, s: mlflow.log_metric(k, v, step=s),
        )
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})
        mlflow.log_artifact(str(out / "history.csv"))
        mlflow.log_artifact(str(out / "best.pt"))
        write_json(out / "train.json", {**summary, "run_id": run.info.run_id, "model": args.model})
        mlflow.log_artifact(str(out / "train.json"))


def cmd_evaluate(args, params, settings) -> None:
    import mlflow

    from genrecon.data.pairs import load_pairs
    from genrecon.evaluate import evaluate_model, write_json, write_rows
    from genrecon.tracking import tracked_run
    from genrecon.train import load_checkpoint

    _threads(settings)
    model_cfg = model_settings(settings, args.model)
    ev = model_cfg["evaluate"]
    root, out = Path(args.data), Path(args.out)
    pairs = load_pairs(model_cfg["dataset"], root, "test", model_cfg, ev["num_images"])
    model, _ = load_checkpoint(Path(args.checkpoint))
    with tracked_run(
        params,
        "evaluate",
        {**model_cfg, "checkpoint": args.checkpoint},
        [_manifest(root)],
        {"model": args.model},
    ) as run:
        clip = tuple(ev["clip"]) if ev.get("clip") else None
        summary, sweep = evaluate_model(
            model,
            pairs,
            ev["num_samples"],
            ev["batch_samples"],
            params["seed"],
            out,
            settings["sweeps"]["num_samples"],
            clip,
        )
        rows = [{**r, "run_id": run.info.run_id, "model": args.model} for r in sweep]
        write_rows(out / "samples_sweep.csv", rows)
        mlflow.log_metrics(summary)
        write_json(
            out / "summary.json",
            {
                **summary,
                "run_id": run.info.run_id,
                "model": args.model,
                "num_samples": ev["num_samples"],
                "clip": list(clip) if clip else None,
            },
        )
        for name in ("summary.json", "per_image.csv", "samples_sweep.csv", "examples.npz"):
            mlflow.log_artifact(str(out / name))


def cmd_baseline(args, params, settings) -> None:
    import h5py
    import mlflow

    from genrecon.data import mnist
    from genrecon.data.pairs import load_pairs
    from genrecon.evaluate import evaluate_baselines, write_json
    from genrecon.tracking import tracked_run

    root, out = Path(args.data), Path(args.out)
    n = settings["evaluate"][args.dataset]["num_images"]
    if args.dataset == "lodopab":
        pairs = load_pairs("lodopab", root, "test", {}, n)
        truth, methods = pairs.truth, {"fbp": pairs.inversion}
    else:
        truth = mnist.load_images(root, "test")[:n]
        with h5py.File(root / "cs.hdf5", "r") as f:
            methods = {k: f[f"test/{k}"][: len(truth)] for k in ("pinv", "tikhonov")}
    with tracked_run(
        params,
        "baseline",
        settings["datasets"][args.dataset],
        [_manifest(root)],
        {"dataset": args.dataset},
    ) as run:
        summary = evaluate_baselines(truth, methods, out)
        for method, stats in summary.items():
            mlflow.log_metrics({f"{method}_{k}": v for k, v in stats.items()})
        write_json(
            out / "summary.json",
            {"methods": summary, "run_id": run.info.run_id, "dataset": args.dataset},
        )
        for name in ("summary.json", "per_image.csv"):
            mlflow.log_artifact(str(out / name))


def cmd_sweep(args, params, settings) -> None:
    """Sample refinement over lambda (Table 4); the sample-count sweep runs inside evaluate."""
    import mlflow

    from genrecon.data.pairs import load_pairs
    from genrecon.evaluate import load_observations, sweep_refinement, write_rows
    from genrecon.physics.ct import CTGeometry
    from genrecon.tracking import tracked_run
    from genrecon.train import load_checkpoint

    _threads(settings)
    model_cfg = model_settings(settings, args.model)
    if model_cfg["dataset"] != "lodopab":
        raise SystemExit(f"sample refinement needs a CT model; {args.model} is not one")
    cfg, data = settings["sweeps"]["refinement"], model_cfg["data"]
    clip = model_cfg["evaluate"].get("clip")
    root = Path(args.data)
    model, _ = load_checkpoint(Path(args.checkpoint))
    job_cfg = {"refinement": cfg, "clip": clip, "model": model_cfg}
    with tracked_run(
        params, "sweep_refinement", job_cfg, [_manifest(root)], {"model": args.model}
    ) as run:
        pairs = load_pairs("lodopab", root, "test", model_cfg, cfg["num_images"])
        obs = load_observations(root, "test", cfg["num_images"])
        geometry = CTGeometry(data["image_size"], data["num_angles"])
        rows = sweep_refinement(
            model, pairs, obs, geometry, cfg, params["seed"], tuple(clip) if clip else None
        )
        rows = [{**r, "run_id": run.info.run_id, "model": args.model} for r in rows]
        write_rows(Path(args.out), rows)
        mlflow.log_artifact(args.out)


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
            args.scale,
            Path(args.results),
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
        report.write_index(params, args.scale, [Path(p) for p in args.pages], Path(args.out))


def cmd_provenance(args, params, settings) -> None:
    from genrecon import report

    report.print_provenance(params, args.run_id, Path(args.numbers) if args.numbers else None)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrecon", description=__doc__)
    p.add_argument("--params", default="params.yaml", help="parameter file (default params.yaml)")
    p.add_argument("--scale", default=None, help="smoke or paper (default: params.yaml's scale)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init-tracking", help="create the MLflow store and experiment")
    s = sub.add_parser("download", help="download a dataset (resumable, md5-checked)")
    s.add_argument("dataset", choices=["lodopab", "mnist"])
    s.add_argument("--root", required=True)
    s = sub.add_parser("prepare", help="prepare a dataset and its inversion layer")
    s.add_argument("dataset", choices=["lodopab", "mnist"])
    s.add_argument("--root", required=True)
    s.add_argument("--raw", default="vendor/mnist", help="MNIST source folder (IDX files)")
    s = sub.add_parser("train", help="train one model of params.yaml")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    for name, text in (
        ("evaluate", "conditional mean, std and sample-count sweep"),
        ("sweep", "sample refinement over lambda (CT)"),
    ):
        s = sub.add_parser(name, help=text)
        if name == "sweep":
            s.add_argument("kind", choices=["refine"])
        s.add_argument("--model", required=True)
        s.add_argument("--checkpoint", required=True)
        s.add_argument("--data", required=True)
        s.add_argument("--out", required=True)
    s = sub.add_parser("baseline", help="classical reconstructions on the test images")
    s.add_argument("dataset", choices=["lodopab", "mnist"])
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("bench", help="benchmarks: projector, FBP, training and sampling throughput")
    s.add_argument("--out", default="results/benchmarks.json")
    s.add_argument("--quick", action="store_true", help="fewer repetitions")
    s = sub.add_parser("report", help="numbers table, notebooks, index page")
    s.add_argument("what", choices=["numbers", "notebook", "index"])
    s.add_argument("--results", default="results")
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
    return p


COMMANDS = {
    "init-tracking": cmd_init_tracking,
    "download": cmd_download,
    "prepare": cmd_prepare,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "baseline": cmd_baseline,
    "sweep": cmd_sweep,
    "bench": cmd_bench,
    "report": cmd_report,
    "provenance": cmd_provenance,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    params = load_params(args.params)
    if args.scale:
        params["scale"] = args.scale
    args.scale = params["scale"]
    settings = scale_settings(params)
    COMMANDS[args.command](args, params, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
