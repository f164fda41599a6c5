"""Page tables from numbers.csv: ours and the paper's in ONE row, with Δ, and no NaN cells.

A row whose run drew exploding samples is marked with FLAG and explained in a footnote
(`flag_footnote`), so a conditional mean that lost samples is never read as a clean number.

The pages read numbers.csv and nothing else for their tables, so a table can never show a number
that check_numbers has not traced to its source. A number that does not exist (a paper row we do
not run, an extra row the paper lacks) is shown as "–", never as NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from genrecon.metrics import RANGE_MARGIN
from genrecon.report.numbers import FLAG, split_note
from genrecon.report.spec import DRAW_COLUMNS

MISSING = "–"
FOOTNOTE = (
    "{flag} exploding inverses (Denker et al. 2021, Sec. 5.1): the run behind a marked row drew "
    "samples with NaN/inf pixels, which are left out of its conditional means, curves and "
    "spread (n counts the images that kept a finite sample), or finite samples with pixels more "
    "than {m:g}·L outside the ground truth's range [min, max] (L = max − min), which are kept. "
    "Counts per run: the exploding-inverses table."
)


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


def flagged(rows: pd.DataFrame) -> bool:
    """Whether any of our rows carries the exploding-inverse flag in its note."""
    ours = rows[rows["who"] == "ours"]
    return any(split_note(note)[1] for note in ours["note"])


def marked(label: str, rows: pd.DataFrame) -> str:
    """The row label a page shows: with FLAG appended when its run drew exploding samples."""
    return f"{label} {FLAG}" if flagged(rows) else label


def flag_footnote(numbers: pd.DataFrame, table_id: str) -> str:
    """Markdown under a table with flagged rows: what FLAG means, then each flagged run's counts.

    One line per run (experiment), named by its first row's label, however many rows it has
    here (both estimators, every k of a curve). '' when no row is flagged: clean tables carry
    no footnote.
    """
    rows = numbers[(numbers["table"] == table_id) & (numbers["who"] == "ours")]
    runs: dict[str, tuple[str, str]] = {}
    for _, row in rows.iterrows():
        flag = split_note(row["note"])[1]
        if flag:
            runs.setdefault(row["experiment"], (row["method"], flag.removeprefix(f"{FLAG} ")))
    if not runs:
        return ""
    items = "\n".join(f"- {FLAG} {label}: {flag}" for label, flag in runs.values())
    return f"{FOOTNOTE.format(flag=FLAG, m=RANGE_MARGIN)}\n\n{items}"


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
        note = split_note(first_ours["note"].iloc[0])[0] if len(first_ours) else ""
        cells += [n or MISSING, note or MISSING]
        lines.append(cells)
        index.append(marked(group["method"].iloc[0], group))
    return pd.DataFrame(lines, index=index, columns=pd.MultiIndex.from_tuples(columns))


def _count(value: str) -> str:
    return f"{int(float(value)):,}" if value not in ("", None) else MISSING


def draws_frame(numbers: pd.DataFrame, spec: Mapping[str, Any], table_id: str) -> pd.DataFrame:
    """One line per experiment: the table's draws columns (counts as integers), then n.

    n is the first column's: the run's test images for a count, the images that were scored
    (kept a finite draw) for a PSNR/SSIM/spread, so a column that lost images shows it.
    """
    table = spec["tables"][table_id]
    rows = numbers[numbers["table"] == table_id]
    lines, index = [], []
    for rid in dict.fromkeys(rows["row"]):
        group = rows[rows["row"] == rid]
        cells = []
        for column in table["columns"]:
            got = _pick(group, "ours", column)
            digits = DRAW_COLUMNS[column].digits
            value = got.get("value", "")
            cells.append(
                _count(value) if digits is None else fmt(value, got.get("std", ""), digits)
            )
        images = _pick(group, "ours", table["columns"][0])
        cells.append(images.get("n") or MISSING)
        lines.append(cells)
        index.append(marked(group["method"].iloc[0], group))
    headings = [DRAW_COLUMNS[column].label for column in table["columns"]]
    return pd.DataFrame(lines, index=index, columns=[*headings, "n"])


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
    if kind == "draws":
        return draws_frame(numbers, spec, table_id)
    raise ValueError(f"table {table_id}: a {kind} table is shown as a plot")
