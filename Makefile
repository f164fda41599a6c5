# genrecon: the two commands a new user types are `make run` and `make test`.
# Both create the virtual environment (.venv) first when it is missing or out of date.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genrecon-installed
export PATH := $(abspath $(BIN)):$(PATH)
SNAKEMAKE := snakemake --snakefile workflow/Snakefile

.PHONY: run test test-all lint bench paper-dry-run data-publish data-pull clean-results venv

venv: $(STAMP)

$(STAMP): envs/requirements.txt pyproject.toml Makefile
	test -x $(BIN)/python || python3 -m venv $(VENV)
	# torch first, alone: on CPU machines the local CPU wheel, on clusters the CUDA build.
	# --no-compile, then compileall on every core: pip byte-compiles ~40k files on one core
	# (48 s here), and skipping compilation altogether costs every job and every no-op rerun
	# seconds where PYTHONDONTWRITEBYTECODE is set (as on this project's machines: 14 -> 21 s).
	$(BIN)/pip install --quiet --no-compile torch==2.13.0
	$(BIN)/pip install --quiet --no-compile -r envs/requirements.txt
	# fastmri pins old torch/numpy: installed without its dependencies (they are listed above).
	$(BIN)/pip install --quiet --no-deps fastmri==0.3.0
	$(BIN)/pip install --quiet --no-deps -e .
	# a few vendored test files are not Python 3 on purpose: their errors are not ours
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(STAMP)

## Run the whole pipeline at the default (smoke) scale: results/report/index.html
run: venv
	$(SNAKEMAKE) --cores 2

## Fast tests (unit tests, lint, dry runs of both scales, one tiny end-to-end DAG run)
test: venv
	$(BIN)/python -m pytest -q

## Everything, including slow tests
test-all: venv
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: venv
	$(BIN)/ruff check src tests
	$(SNAKEMAKE) --lint

bench: venv
	$(BIN)/genrecon bench --out results/benchmarks.json

## What the full reproduction runs (downloads, training, evaluation, sweeps, report)
paper-dry-run: venv
	$(SNAKEMAKE) -n --config scale=paper

## Publish the current data/ as the pinned data version (updates data.dvc; commit it)
data-publish: venv
	$(BIN)/dvc add data
	$(BIN)/dvc push

## Restore data/ from the DVC remote without re-downloading or regenerating
data-pull: venv
	$(BIN)/dvc pull

clean-results:
	rm -rf results
