"""Page tables from numbers.csv: ours and the paper's in ONE row, with Δ, and no NaN cells.

The pages read numbers.csv and nothing else for their tables, so a table can never show a number
that check_numbers has not traced to its source. A number that does not exist (a paper row we do
not run, an extra row the paper lacks) is shown as "–", never as NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

MISSING = "–"


def load_numbers(path: str | Path) -> pd.DataFrame:
    """numbers.csv with every cell a string: empty stays empty instead of becoming NaN."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def fmt(value: str | float, std: str | float = "", digits: int = 3) -> str:
    """'mean ± std' at the metric's precision; '–' for a number that does not exist."""
    if value == "" or value is None:
        return MISSING
    text = f"{float(value):.{digits}f}"
    return f"{text} ± {float(std):.{digits}f}" if std not in ("", None) else text


def delta(ours: str, paper: str, digits: int) -> str:
    """Δ = ours − paper, signed; '–' unless both exist."""
    if ours in ("", None) or paper in ("", None):
        return MISSING
    return f"{float(ours) - float(paper):+.{digits}f}"


def _pick(rows: pd.DataFrame, who: str, metric: str) -> dict[str, str]:
    hit = rows[(rows["who"] == who) & (rows["metric"] == metric)]
    return hit.iloc[0].to_dict() if len(hit) else {}


def metric_frame(numbers: pd.DataFrame, spec: Mapping[str, Any], table_id: str) -> pd.DataFrame:
    """One line per spec row: per metric ours (mean ± std), paper, Δ; then n and our estimator."""
    table = spec["tables"][table_id]
    rows = numbers[numbers["table"] == table_id]
    columns: list[tuple[str, str]] = []
    for metric in table["metrics"]:
        label = spec["metrics"][metric]["label"]
        columns += [(label, "ours"), (label, "paper"), (label, "Δ")]
    columns += [("", "n"), ("", "our estimator")]
    lines, index = [], []
    for rid in dict.fromkeys(rows["row"]):
        group = rows[rows["row"] == rid]
        cells: list[str] = []
        for metric in table["metrics"]:
            digits = spec["metrics"][metric]["digits"]
            ours, paper = _pick(group, "ours", metric), _pick(group, "paper", metric)
            cells += [
                fmt(ours.get("value", ""), ours.get("std", ""), digits),
                fmt(paper.get("value", ""), paper.get("std", ""), digits),
                delta(ours.get("value", ""), paper.get("value", ""), digits),
            ]
        first_ours = group[group["who"] == "ours"]
        n = first_ours["n"].iloc[0] if len(first_ours) else ""
        note = first_ours["note"].iloc[0] if len(first_ours) else ""
        cells += [n or MISSING, note or MISSING]
        lines.append(cells)
        index.append(group["method"].iloc[0])
    return pd.DataFrame(lines, index=index, columns=pd.MultiIndex.from_tuples(columns))


def training_frame(numbers: pd.DataFrame, table_id: str) -> pd.DataFrame:
    """Best validation bits/dim, steps and parameter count of each trained model."""
    rows = numbers[numbers["table"] == table_id]
    lines, index = [], []
    for rid in dict.fromkeys(rows["row"]):
        group = rows[rows["row"] == rid]
        bpd = _pick(group, "ours", "best_val_bits_per_dim")
        params = _pick(group, "ours", "parameters")
        lines.append(
            [
                fmt(bpd.get("value", ""), "", 3),
                bpd.get("n") or MISSING,
                f"{int(float(params['value'])):,}" if params.get("value") else MISSING,
            ]
        )
        index.append(group["method"].iloc[0])
    return pd.DataFrame(
        lines, index=index, columns=["best val. bits/dim", "training steps", "parameters"]
    )


def benchmark_frame(numbers: pd.DataFrame, table_id: str) -> pd.DataFrame:
    """Each benchmark as 'value ± std unit' with its repeat count and device."""
    rows = numbers[numbers["table"] == table_id]
    lines = [
        [fmt(r["value"], r["std"], 2), r["metric"], r["n"] or MISSING, r["note"] or MISSING]
        for _, r in rows.iterrows()
    ]
    return pd.DataFrame(
        lines, index=list(rows["method"]), columns=["value", "unit", "repeats", "where"]
    )


def table_frame(numbers: pd.DataFrame, spec: Mapping[str, Any], table_id: str) -> pd.DataFrame:
    """The frame a page shows for one spec table (curves tables are plots, not frames)."""
    kind = spec["tables"][table_id]["kind"]
    if kind in ("metrics", "sweep"):
        return metric_frame(numbers, spec, table_id)
    if kind == "training":
        return training_frame(numbers, table_id)
    if kind == "benchmarks":
        return benchmark_frame(numbers, table_id)
    raise ValueError(f"table {table_id}: a {kind} table is shown as a plot")
