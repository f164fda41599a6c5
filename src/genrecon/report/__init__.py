"""The report: numbers.csv from a declarative table spec, the pages, the index, provenance.

config/tables.yaml says which of our numbers is set beside which paper number; build_numbers
reads exactly those (one number per row of numbers.csv, each with a source that re-reads it),
check_numbers proves every row still equals its source, and the pages show numbers.csv with ours,
the paper's and Δ in one line. Modules: spec (load, validate, required inputs), numbers, tables
(page frames), plots (shared by every page), pages (Page, notebooks, index), provenance, pagecheck
(headless-Chromium check of the rendered report).
"""

from genrecon.report.numbers import (
    COLUMNS,
    NumbersMismatch,
    build_numbers,
    check_numbers,
    numbers_rows,
    read_source,
    write_numbers,
)
from genrecon.report.pagecheck import BrowserMissing, check_report_pages, find_chromium
from genrecon.report.pages import Page, render_notebook, run_notebook, write_index
from genrecon.report.provenance import print_provenance, reproduction_tree, runs_frame
from genrecon.report.settings import resolve_settings, sheet_by_scale
from genrecon.report.spec import (
    SpecError,
    load_spec,
    page_inputs,
    required_inputs,
    validate_tables,
)
from genrecon.report.tables import load_numbers, table_frame

__all__ = [
    "COLUMNS",
    "BrowserMissing",
    "NumbersMismatch",
    "Page",
    "SpecError",
    "build_numbers",
    "check_numbers",
    "check_report_pages",
    "find_chromium",
    "load_numbers",
    "load_spec",
    "numbers_rows",
    "page_inputs",
    "print_provenance",
    "read_source",
    "render_notebook",
    "required_inputs",
    "resolve_settings",
    "run_notebook",
    "reproduction_tree",
    "runs_frame",
    "sheet_by_scale",
    "table_frame",
    "validate_tables",
    "write_index",
    "write_numbers",
]
