"""The table spec (config/tables.yaml): loading, strict validation, and the files it needs.

The spec is the one place that says which of our numbers is set beside which published number.
Every cross-reference is resolved before any number is read, so a misspelt experiment or paper
key fails at startup with its name, instead of as a missing row on a page nobody checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
SPEC = Path("config/tables.yaml")
PAPER_RESULTS = Path("reference/paper_results.yaml")
SCHEMA = ROOT / "workflow" / "schemas" / "tables.schema.yaml"

# What each protocol writes into summary.json["estimators"]. `mean` is the papers' estimator
# (conditional mean of unclipped samples); `clipped_mean` is an extra row, never beside a paper.
ESTIMATORS: dict[str, tuple[str, ...]] = {
    "posterior": ("mean", "clipped_mean"),
    "point": ("point",),
    "grid": ("point",),  # seed 002: the reference setting's scores (evaluation/grid.py)
    # seed 003: the best of the random starts per metric (the paper's) and the start with the
    # lowest objective (what a user without the truth gets; evaluation/inversion.py)
    "inversion": ("best_of_starts", "point"),
}
NOT_BESIDE_PAPER = ("clipped_mean",)
PAPER_TABLE_KINDS = ("metrics", "sweep")  # kinds whose rows carry paper numbers


@dataclass(frozen=True)
class DrawColumn:
    """One column a `draws` table may show: where the posterior summary.json holds it.

    The `draws` kind exists because these numbers are not an estimator's mean ± std (what
    `metrics` reads) but facts about one experiment's set of posterior draws: how many exploded
    (seed 000 Sec. 5.1), how good one draw is and how far the draws spread (Sec. 4.2.2). Where
    the value's key ends in `_mean`, its std sits beside it as `_std`; `n` is the block's own.
    """

    pointer: tuple[str, ...]  # path in summary.json
    label: str  # column heading on the page
    digits: int | None  # None: a count, shown as an integer


DRAW_COLUMNS: dict[str, DrawColumn] = {
    "samples": DrawColumn(("exploding", "samples"), "samples drawn", None),
    "nonfinite_samples": DrawColumn(
        ("exploding", "nonfinite_samples"), "samples with NaN/inf (left out)", None
    ),
    "nonfinite_pixels": DrawColumn(("exploding", "nonfinite_pixels"), "NaN/inf pixels", None),
    "out_of_range_samples": DrawColumn(
        ("exploding", "out_of_range_samples"), "finite samples out of range (kept)", None
    ),
    "out_of_range_pixels": DrawColumn(
        ("exploding", "out_of_range_pixels"), "pixels out of range", None
    ),
    "unscored_images": DrawColumn(
        ("exploding", "images_without_finite_sample"), "images without a finite sample", None
    ),
    "sample_psnr": DrawColumn(("single_sample", "psnr_mean"), "PSNR (dB), one sample", 2),
    "mean_psnr": DrawColumn(("estimators", "mean", "psnr_mean"), "PSNR (dB), cond. mean", 2),
    "sample_ssim": DrawColumn(("single_sample", "ssim_mean"), "SSIM, one sample", 3),
    "mean_ssim": DrawColumn(("estimators", "mean", "ssim_mean"), "SSIM, cond. mean", 3),
    "pixel_std": DrawColumn(("pixel_std", "pixel_std_mean"), "mean pixel-wise std", 4),
}
DRAW_PROTOCOL = "posterior"  # the protocol whose summary.json holds DRAW_COLUMNS


class SpecError(ValueError):
    """config/tables.yaml is malformed or refers to something that does not exist."""


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (run from the project root)")
    return yaml.safe_load(path.read_text())


def load_spec(path: str | Path = SPEC, schema: str | Path = SCHEMA) -> dict[str, Any]:
    """Read and schema-check the spec; cross-references are validate_tables' job."""
    spec = load_yaml(path)
    check_schema(spec, schema, str(path))
    return spec


def check_schema(spec: Any, schema: str | Path = SCHEMA, name: str = "config/tables.yaml") -> None:
    """JSON-schema check (additionalProperties: false); the error names the offending key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_yaml(schema))
    errors = sorted(validator.iter_errors(spec), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"{name}: /{'/'.join(str(p) for p in err.absolute_path)}: {err.message}"
            for err in errors
        ]
        raise SpecError("\n".join(lines))


def paper_table(spec: Mapping, paper_results: Mapping, table_id: str) -> dict[str, Any] | None:
    """The paper_results.yaml block of a spec table (None for tables without a paper table)."""
    table = spec["tables"][table_id]
    if "paper" not in table or "table" not in table:
        return None
    paper = spec["papers"][table["paper"]]
    return paper_results[paper["results"]]["tables"][table["table"]]


def citation(spec: Mapping, paper_results: Mapping, table_id: str, row: str) -> str:
    """How numbers.csv cites one paper row: who, where (DOI / arXiv), which table and row."""
    table = spec["tables"][table_id]
    paper = spec["papers"][table["paper"]]
    cite = paper_results[paper["results"]]["cite"]
    ident = f"doi:{cite['doi']}" if cite.get("doi") else f"arXiv:{cite['arxiv']}"
    name = paper_table(spec, paper_results, table_id)["name"]  # type: ignore[index]
    return f"{paper['short']}, {cite['venue']}, {ident}, {name}, row {row}"


def paper_row_key(row: Mapping, value: float | None = None) -> str | None:
    """A row's key in the paper table; sweep rows are templates over the swept {value}."""
    key = row.get("paper")
    if key is None:
        return None
    return key.format(value=value) if value is not None else key


def row_id(table: Mapping, row: Mapping, value: float | None = None) -> str:
    """Stable id of a spec row inside its table (numbers.csv `row`): pairs ours with the paper's."""
    if "experiment" in row:
        base = row["experiment"]
        if table["kind"] == "metrics" and "estimator" in row:
            base += f":{row['estimator']}"
        if "group" in row:
            base += f"/{row['group']}"
    else:
        base = f"paper:{row['paper']}"
    return f"{base}@{value:g}" if value is not None else base


def _experiments(rows: Iterable[Mapping]) -> list[str]:
    return [row["experiment"] for row in rows if "experiment" in row]


def validate_tables(
    spec: Mapping[str, Any],
    experiments_by_scale: Mapping[str, Mapping[str, Mapping[str, Any]]],
    paper_results: Mapping[str, Any],
) -> None:
    """Resolve every cross-reference of the spec; raise SpecError naming each bad key.

    experiments_by_scale: {scale: {experiment: sheet row}} (settings.sheet_by_scale(params)). An
    experiment must exist at SOME scale (the no-noise variants run at paper scale only) and a
    sweep row's experiment run that sweep at some scale (the iUNet's refinement runs at paper
    scale only); its estimator must be one its protocols write; a paper key must exist in
    paper_results.yaml; the
    sheet's `reproduces` and the spec's rows must agree for tables that carry paper numbers.
    """
    check_schema(spec)
    errors: list[str] = []
    sheet: dict[str, Mapping[str, Any]] = {}
    for rows in experiments_by_scale.values():
        for name, row in rows.items():
            sweeps = {*(sheet.get(name, {}).get("sweeps") or []), *(row.get("sweeps") or [])}
            sheet[name] = {**row, "sweeps": sorted(sweeps)}
    metrics = spec["metrics"]

    for pid, paper in spec["papers"].items():
        where = f"papers.{pid}"
        block = paper_results.get(paper["results"])
        if block is None:
            errors.append(
                f"{where}.results: {paper['results']!r} is not a paper of paper_results.yaml "
                f"({', '.join(paper_results)})"
            )
            continue
        cite = block.get("cite", {})
        for key in ("doi", "arxiv", "title"):
            if str(paper.get(key, "")) != str(cite.get(key, "")):
                errors.append(
                    f"{where}.{key}: {paper.get(key)!r} but paper_results.yaml "
                    f"{paper['results']}.cite.{key} is {cite.get(key)!r}"
                )

    shown: dict[str, str] = {}
    for page_id, page in spec["pages"].items():
        for tid in page["tables"]:
            if tid not in spec["tables"]:
                errors.append(f"pages.{page_id}.tables: {tid!r} is not a table of the spec")
            elif tid in shown:
                errors.append(f"pages.{page_id}.tables: {tid!r} is already on page {shown[tid]}")
            else:
                shown[tid] = page_id
        for part in ("examples", "training"):
            for i, item in enumerate(page.get(part, [])):
                if item["experiment"] not in sheet:
                    errors.append(
                        f"pages.{page_id}.{part}[{i}].experiment: {item['experiment']!r} is in "
                        f"no scale's experiments sheet"
                    )

    for tid, table in spec["tables"].items():
        where = f"tables.{tid}"
        if tid not in shown:
            errors.append(f"{where}: on no page (add it to a page's `tables`)")
        for metric in table.get("metrics", []):
            if metric not in metrics:
                errors.append(f"{where}.metrics: {metric!r} is not in `metrics` ({list(metrics)})")
        for column in table.get("columns", []):
            if column not in DRAW_COLUMNS:
                errors.append(
                    f"{where}.columns: {column!r} is not a draws column ({', '.join(DRAW_COLUMNS)})"
                )
        ptable = None
        if "paper" in table:
            if table["paper"] not in spec["papers"]:
                errors.append(f"{where}.paper: {table['paper']!r} is not in `papers`")
            elif "table" in table:
                block = paper_results.get(spec["papers"][table["paper"]]["results"], {})
                ptable = block.get("tables", {}).get(table["table"])
                if ptable is None:
                    errors.append(
                        f"{where}.table: {table['table']!r} is not a table of "
                        f"{spec['papers'][table['paper']]['results']} in paper_results.yaml "
                        f"({', '.join(block.get('tables', {}))})"
                    )
        values = table.get("values", [None]) if table["kind"] == "sweep" else [None]
        seen: set[str] = set()
        for i, row in enumerate(table.get("rows", [])):
            here = f"{where}.rows[{i}]"
            exp = row.get("experiment")
            if exp is None and "paper" not in row:
                errors.append(f"{here}: needs an experiment, a paper key, or both")
            if exp is not None and exp not in sheet:
                errors.append(
                    f"{here}.experiment: {exp!r} is in no scale's experiments sheet "
                    f"(known: {', '.join(sorted(sheet))})"
                )
            if exp is not None and exp in sheet:
                errors += _check_estimator(table, row, sheet[exp], here)
                errors += _check_group(table, row, sheet[exp], here)
            if "paper" in row:
                if row.get("estimator") in NOT_BESIDE_PAPER:
                    errors.append(
                        f"{here}: estimator {row['estimator']!r} is an extra row and is never set "
                        f"beside a paper number (drop its `paper` key)"
                    )
                if table["kind"] not in PAPER_TABLE_KINDS:
                    errors.append(f"{here}.paper: a {table['kind']} table carries no paper numbers")
                elif ptable is None and "table" not in table:
                    errors.append(f"{here}.paper: the table names no paper `table` to look in")
                elif ptable is not None:
                    for value in values:
                        try:
                            key = paper_row_key(row, value)
                        except (KeyError, IndexError, ValueError) as err:
                            errors.append(f"{here}.paper: bad template {row['paper']!r} ({err})")
                            continue
                        if key not in ptable.get("rows", {}):
                            errors.append(
                                f"{here}.paper: {key!r} is not a row of "
                                f"{spec['papers'][table['paper']]['results']}/{table['table']} "
                                f"in paper_results.yaml"
                            )
                        else:
                            for metric in table.get("metrics", []):
                                if metric not in ptable["rows"][key]:
                                    errors.append(f"{here}.paper: {key!r} has no {metric}")
            if exp is not None or "paper" in row:
                rid = row_id(table, row)
                if rid in seen:
                    errors.append(f"{here}: duplicate row {rid!r}")
                seen.add(rid)

    errors += _check_reproduces(spec, sheet)
    if errors:
        raise SpecError("config/tables.yaml:\n  " + "\n  ".join(errors))


def _check_estimator(table: Mapping, row: Mapping, entry: Mapping, here: str) -> list[str]:
    """The estimator (row's or table's) must be one the experiment's protocols write."""
    kind = table["kind"]
    if kind == "metrics":
        estimator = row.get("estimator")
        if estimator is None:
            return [f"{here}: a row with an experiment needs an estimator"]
    elif kind == "curves":
        estimator = table["estimator"]
        if row.get("estimator"):
            return [f"{here}.estimator: set once per curves table, not per row"]
    else:
        if row.get("estimator"):
            return [f"{here}.estimator: {kind} rows take no estimator"]
        if kind == "sweep" and table["sweep"] not in (entry.get("sweeps") or []):
            return [
                f"{here}.experiment: {row['experiment']!r} does not run sweep "
                f"{table['sweep']!r} (its sheet row lists {entry.get('sweeps') or []})"
            ]
        if kind == "draws" and DRAW_PROTOCOL not in (entry.get("protocols") or []):
            return [
                f"{here}.experiment: {row['experiment']!r} draws no posterior samples "
                f"(protocols {entry.get('protocols')}; a draws table needs {DRAW_PROTOCOL!r})"
            ]
        return []
    allowed: list[str] = []
    for protocol in entry.get("protocols") or []:
        if protocol not in ESTIMATORS:
            exp = row["experiment"]
            return [f"{here}: protocol {protocol!r} of {exp!r} writes no known estimator"]
        allowed += ESTIMATORS[protocol]
    if estimator not in allowed:
        return [
            f"{here}.estimator: {estimator!r} is not written by {row['experiment']!r} "
            f"(protocols {entry.get('protocols')}: {allowed})"
        ]
    return []


def _check_group(table: Mapping, row: Mapping, entry: Mapping, here: str) -> list[str]:
    """A `group` (e.g. fastMRI's PD) must be one the experiment's dataset scores by."""
    if "group" not in row:
        return []
    if table["kind"] != "metrics":
        return [f"{here}.group: only metrics rows read a dataset's groups"]
    from genrecon.data.registry import lookup  # the dataset classes, registered on import

    groups = lookup(entry["dataset"]).groups
    if row["group"] not in groups:
        return [
            f"{here}.group: {row['group']!r} is not a group of dataset {entry['dataset']!r} "
            f"(it has {list(groups) or 'none'})"
        ]
    return []


def _check_reproduces(spec: Mapping, sheet: Mapping[str, Mapping]) -> list[str]:
    """The sheet's `reproduces` and the spec must agree, both ways, for paper-number tables."""
    errors = []
    for exp, entry in sheet.items():
        for tid in entry.get("reproduces") or []:
            table = spec["tables"].get(tid)
            if table is None:
                errors.append(
                    f"experiments.{exp}.reproduces: {tid!r} is not a table of config/tables.yaml "
                    f"({', '.join(spec['tables'])})"
                )
            elif exp not in _experiments(table.get("rows", [])):
                errors.append(f"experiments.{exp}.reproduces: {tid!r} has no row for {exp!r}")
    for tid, table in spec["tables"].items():
        if table["kind"] not in PAPER_TABLE_KINDS or "paper" not in table:
            continue
        for exp in set(_experiments(table.get("rows", []))):
            if exp in sheet and tid not in (sheet[exp].get("reproduces") or []):
                errors.append(
                    f"tables.{tid}: has a row for {exp!r}, whose sheet row does not list {tid!r} "
                    f"under `reproduces`"
                )
    return errors


def runs_here(
    settings: Mapping[str, Any], experiment: str, table: Mapping[str, Any] | None = None
) -> bool:
    """Whether `experiment` runs at this scale, and, for a sweep table, runs its sweep here."""
    row = (settings.get("experiments") or {}).get(experiment)
    if row is None:
        return False
    return table is None or table["kind"] != "sweep" or table["sweep"] in row.get("sweeps", [])


def _join(results_dir: str | Path, *parts: str) -> str:
    return "/".join([str(results_dir).rstrip("/"), *parts])


def required_inputs(
    spec: Mapping[str, Any],
    settings: Mapping[str, Any],
    results_dir: str | Path,
    benchmarks: str | Path | None = "results/benchmarks.json",
) -> list[str]:
    """The result files the numbers job reads at one scale (for the Snakemake input function).

    Rows whose experiment does not run at this scale are skipped, as build_numbers skips them.
    """
    files: list[str] = []
    for table in spec["tables"].values():
        kind = table["kind"]
        if kind == "benchmarks":
            if benchmarks is not None:
                files.append(str(benchmarks))
            continue
        for exp in _experiments(table.get("rows", [])):
            if not runs_here(settings, exp, table):
                continue
            if kind in ("metrics", "curves", "draws"):
                files.append(_join(results_dir, "eval", exp, "summary.json"))
            elif kind == "sweep":
                files.append(_join(results_dir, "sweeps", table["sweep"], f"{exp}.csv"))
            elif kind == "training":
                files.append(_join(results_dir, "models", exp, "train.json"))
    return list(dict.fromkeys(files))


def page_inputs(
    spec: Mapping[str, Any], settings: Mapping[str, Any], results_dir: str | Path, page: str
) -> list[str]:
    """Files a page's notebook reads besides numbers.csv: example images and training histories."""
    entry = spec["pages"][page]
    files = [
        _join(results_dir, "eval", item["experiment"], "examples.npz")
        for item in entry.get("examples", [])
        if runs_here(settings, item["experiment"])
    ]
    files += [
        _join(results_dir, "models", item["experiment"], "history.csv")
        for item in entry.get("training", [])
        if runs_here(settings, item["experiment"])
    ]
    return list(dict.fromkeys(files))
