"""params.yaml -> the settings of one scale: base + overlay, validated, cross-references resolved.

Why one module: Snakemake rules and the jobs they run must see the same settings, or a changed
setting reruns the wrong jobs (the old rules copied settings and drifted). So every stage has one
function here (`prepare_settings`, `fit_settings`, `reconstruct_settings`, `sweep_settings`)
that returns exactly what that job reads; rules pass its result as `params`, and the job calls
the same function. A changed setting then reruns exactly the jobs whose settings it is part of.

Scales are overlays: `scales.<scale>` is deep-merged onto the base (mappings key by key, lists
and values replace). An overlay may only set keys the base has, so a misspelt key is an error.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

SCALES = ("smoke", "paper")
PROTOCOLS = ("posterior", "point", "grid", "inversion")
SCHEMA = Path("workflow/schemas/params.schema.yaml")


class ConfigError(ValueError):
    """params.yaml is inconsistent; the message names the key."""


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml; a YAML syntax error is one line naming the file, line and column."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: parameter file not found (run from the project root)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise ConfigError(
            _one_line(f"{where}: YAML syntax error ({detail}); fix that line and rerun")
        ) from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(params).__name__}")
    check_no_credentials(params)
    return params


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


#: query parameters that carry a secret (an access token, a signature)
SECRET_QUERY = re.compile(r"token|secret|password|passwd|pwd|key|signature|sig|auth", re.I)


def check_no_credentials(params: dict) -> None:
    """`tracking.uri` (base and overlays) must not embed credentials.

    Why: params.yaml is committed, logged to MLflow with every run and copied into reports;
    a password or token in it leaks with all of them. MLflow reads its credentials from the
    environment (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN),
    DVC from its own config (`dvc remote modify --local`) or environment.
    """
    blocks = [("tracking.uri", params.get("tracking"))]
    for scale, overlay in (params.get("scales") or {}).items():
        if isinstance(overlay, dict):
            blocks.append((f"scales.{scale}.tracking.uri", overlay.get("tracking")))
    for where, block in blocks:
        uri = block.get("uri") if isinstance(block, dict) else None
        if not isinstance(uri, str) or not uri:
            continue
        parts = urllib.parse.urlsplit(uri)
        found = []
        if "@" in parts.netloc:
            found.append("user:password@ in the address")
        names = [k for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
        found += [f"the query parameter {k!r}" for k in names if SECRET_QUERY.search(k)]
        if found:
            raise ConfigError(
                f"params.yaml: {where} embeds credentials ({', '.join(found)}); remove them "
                "and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                "MLFLOW_TRACKING_TOKEN) in the environment instead"
            )


def deep_merge(base: Any, overlay: Any, where: str = "") -> Any:
    """`overlay` merged onto `base`; a key the base lacks is an error naming its path."""
    if not isinstance(overlay, dict) or not isinstance(base, dict):
        return copy.deepcopy(overlay)
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in base:
            raise ConfigError(
                f"params.yaml: overlay key {path!r} does not exist in the base settings "
                f"(known here: {sorted(base)})"
            )
        merged[key] = deep_merge(base[key], value, path)
    return merged


@functools.lru_cache(maxsize=2)
def _schema(root: Path) -> dict:
    """Read once per process: resolving both scales at startup validates several times."""
    return yaml.safe_load((root / SCHEMA).read_text())


def validate_schema(params: dict, root: Path = Path(".")) -> None:
    """Strict JSON-schema check of the whole file (base, overlays and sheet)."""
    import jsonschema

    try:
        jsonschema.validate(params, _schema(root))
    except jsonschema.ValidationError as error:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(_one_line(f"params.yaml: {where}: {error.message}")) from None


def resolve(params: dict, scale: str | None = None, root: Path = Path(".")) -> dict[str, Any]:
    """The settings of `scale` (default: params['scale']): overlay merged, sheet filtered.

    `settings["experiments"]` holds only the rows that run at this scale, each with its name.
    Every cross-reference of the sheet is checked here, at startup.
    """
    validate_schema(params, root)
    check_no_credentials(params)  # also here: Snakemake reads params.yaml itself
    scale = scale or params.get("scale", "smoke")
    if scale not in SCALES or scale not in params["scales"]:
        raise ConfigError(f"scale={scale!r}: expected one of {SCALES} with an overlay in params")
    base = {k: v for k, v in params.items() if k not in ("scales", "scale")}
    settings = deep_merge(base, params["scales"][scale] or {})
    # the merged settings obey the same schema as the base (types of overlaid values)
    validate_schema({**settings, "scale": scale, "scales": {s: None for s in SCALES}}, root)
    settings["scale"] = scale
    settings["experiments"] = {
        name: {"name": name, "variant": {}, "sweeps": [], **row}
        for name, row in settings["experiments"].items()
        if scale in row.get("scales", SCALES)
    }
    check_references(settings)
    return settings


def check_references(settings: dict) -> None:
    """Every name an experiment row uses exists: dataset, method, variant keys, arch, sweeps."""
    from genrecon.data.registry import lookup as dataset_class
    from genrecon.methods import method_class

    for name, row in settings["experiments"].items():
        where = f"params.yaml: experiments.{name}"
        if row["dataset"] not in settings["datasets"]:
            raise ConfigError(f"{where}.dataset: no dataset {row['dataset']!r} in `datasets`")
        try:
            cls = method_class(row["method"])
            dataset_class(row["dataset"])
        except KeyError as error:
            raise ConfigError(f"{where}: {error.args[0]}") from None
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = set(row["variant"]) - accepted
        if unknown:
            raise ConfigError(
                f"{where}.variant: unknown keys {sorted(unknown)} for method "
                f"{row['method']!r}; it accepts {sorted(accepted)}"
            )
        arch = row["variant"].get("arch")
        if arch is not None and arch not in settings["architectures"]:
            raise ConfigError(f"{where}.variant.arch: no architecture {arch!r}")
        if cls.trainable and row["dataset"] not in settings["train"]:
            raise ConfigError(f"{where}: trainable, but `train` has no block {row['dataset']!r}")
        if "posterior" in row["protocols"] and row["dataset"] not in settings["evaluate"]:
            raise ConfigError(f"{where}: `evaluate` has no block {row['dataset']!r}")
        for sweep in row["sweeps"]:
            if sweep not in settings["sweeps"]:
                raise ConfigError(f"{where}.sweeps: no sweep {sweep!r} in `sweeps`")
        check_parents(settings, name, row, cls)
        problem = cls.check_variant(name, settings)
        if problem:
            raise ConfigError(f"{where}.variant: {problem}")
        check_tune(settings, name, row, accepted)
        check_task(settings, name, row)


def check_parents(settings: dict, name: str, row: dict, cls: type) -> None:
    """Each experiment a `parents` variant key names runs at this scale, on the same dataset,
    and trains a model (seed 002: the covariance stage and the range searches need the mean)."""
    experiments = settings["experiments"]
    for key, parent in parent_experiments(settings, name).items():
        where = f"params.yaml: experiments.{name}.variant.{key}"
        if parent not in experiments:
            raise ConfigError(f"{where}: experiment {parent!r} does not run at this scale")
        if parent == name:
            raise ConfigError(f"{where}: an experiment cannot be its own parent")
        other = experiments[parent]
        if other["dataset"] != row["dataset"]:
            raise ConfigError(f"{where}: {parent!r} is trained on {other['dataset']!r}")
        from genrecon.methods import method_class

        if not method_class(other["method"]).trainable:
            raise ConfigError(f"{where}: {parent!r} ({other['method']}) trains no model")
        problem = cls.check_parent(key, other)
        if problem:
            raise ConfigError(f"{where}: {parent!r} {problem}")


def check_tune(settings: dict, name: str, row: dict, accepted: set[str]) -> None:
    """`tune` names one variant key of the method, searched by the grid protocol only."""
    tune = row.get("tune")
    if not tune:
        return
    where = f"params.yaml: experiments.{name}.tune"
    if row["protocols"] != ["grid"]:
        raise ConfigError(f"{where}: only the grid protocol tunes a parameter")
    ((key, _),) = tune.items()
    if key not in accepted:
        raise ConfigError(f"{where}: {key!r} is not a variant key of {row['method']!r}")


def check_task(settings: dict, name: str, row: dict) -> None:
    """The inversion protocol (seed 003) runs the row's `task`, one of its dataset's tasks."""
    where = f"params.yaml: experiments.{name}"
    inverts = "inversion" in row["protocols"]
    if not inverts:
        if row.get("task") is not None:
            raise ConfigError(f"{where}.task: only the inversion protocol runs a task")
        return
    tasks = (settings["evaluate"].get(row["dataset"]) or {}).get("tasks") or {}
    if row.get("task") not in tasks:
        raise ConfigError(
            f"{where}.task: {row.get('task')!r} is not a task of evaluate.{row['dataset']}.tasks "
            f"({sorted(tasks)})"
        )


def parent_experiments(settings: dict, name: str) -> dict[str, str]:
    """{variant key: experiment} of the trained models experiment `name` builds on."""
    from genrecon.methods import method_class

    row = experiment(settings, name)
    keys = method_class(row["method"]).parents
    return {key: row["variant"][key] for key in keys if row["variant"].get(key)}


def experiment(settings: dict, name: str) -> dict[str, Any]:
    if name not in settings["experiments"]:
        raise KeyError(
            f"experiment {name!r} does not run at scale {settings['scale']!r}; "
            f"known: {sorted(settings['experiments'])}"
        )
    return settings["experiments"][name]


# ---- what each job reads (and what its rule passes as params) --------------------------------


def prepare_settings(settings: dict, dataset: str) -> dict[str, Any]:
    return {"dataset": dataset, "data": settings["datasets"][dataset], "seed": settings["seed"]}


def fit_settings(settings: dict, name: str) -> dict[str, Any]:
    """Everything training reads: the row, its variant with the architecture resolved, the
    dataset's `train` block with the row's own `train` overrides on top, the data settings."""
    row = experiment(settings, name)
    from genrecon.methods import method_class

    keys = method_class(row["method"]).training_keys
    # only the keys that shape the training (None: all): the others change no trained weight,
    # so a change to them must not retrain (seed 003's Glow rows carry inversion settings)
    variant = {k: v for k, v in row["variant"].items() if keys is None or k in keys}
    if "arch" in variant:
        variant["architecture"] = settings["architectures"][variant["arch"]]
    job = {
        "experiment": name,
        "dataset": row["dataset"],
        "method": row["method"],
        "variant": variant,
        "train": {**settings["train"][row["dataset"]], **row.get("train", {})},
        "data": settings["datasets"][row["dataset"]],
        "seed": settings["seed"],
    }
    parents = parent_experiments(settings, name)
    if parents:  # only where there are any: the other jobs keep their settings (no reruns)
        job["parents"] = parents
    return job


def reconstruct_settings(settings: dict, name: str) -> dict[str, Any]:
    """What the evaluation of one experiment reads: method, data and its protocols' settings."""
    row = experiment(settings, name)
    out: dict[str, Any] = {
        "experiment": name,
        "dataset": row["dataset"],
        "method": row["method"],
        "variant": row["variant"],
        "protocols": row["protocols"],
        "data": settings["datasets"][row["dataset"]],
        "seed": settings["seed"],
    }
    evaluate = settings["evaluate"][row["dataset"]]
    out["evaluate"] = dict(evaluate)
    parents = parent_experiments(settings, name)
    if parents:
        out["parents"] = parents
    if "posterior" in row["protocols"]:
        out["evaluate"]["sample_counts"] = settings["evaluate"]["sample_counts"]
    elif "grid" in row["protocols"]:  # every measurement setting, and the tuning search
        out["tune"] = row.get("tune")
    elif "inversion" in row["protocols"]:  # seed 003: the row's task only
        out["evaluate"] = {
            "num_images": evaluate["num_images"],
            "examples": evaluate["examples"],
            "task_name": row["task"],
            "task": evaluate["tasks"][row["task"]],
        }
    else:  # point estimates: no samples, so only the image count matters
        out["evaluate"] = {"num_images": evaluate["num_images"]}
    return out


def sweep_settings(settings: dict, sweep: str, name: str) -> dict[str, Any]:
    """A sweep on one experiment: the sweep's settings and the evaluation settings it reuses."""
    row = experiment(settings, name)
    if sweep not in row["sweeps"]:
        raise KeyError(f"experiment {name!r} lists no sweep {sweep!r} (sheet: {row['sweeps']})")
    evaluate = settings["evaluate"][row["dataset"]]
    return {
        "experiment": name,
        "sweep": sweep,
        "dataset": row["dataset"],
        "method": row["method"],
        "variant": row["variant"],
        "data": settings["datasets"][row["dataset"]],
        "settings": settings["sweeps"][sweep],
        "clip": evaluate.get("clip"),
        "seed": settings["seed"],
    }


def resources(settings: dict, kind: str) -> dict[str, int]:
    table = settings["resources"]
    return {**table["default"], **table.get(kind, {})}
