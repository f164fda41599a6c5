"""The declarative report: spec -> numbers.csv -> pages, each link of the chain able to fail.

Fixtures write small result files in the pipeline's real formats (summary.json, sweep CSVs,
train.json, history.csv, examples.npz, benchmarks.json) for the experiments the real sheet runs
at smoke scale, and the real config/tables.yaml and paper_results.yaml are used throughout, so a
spec that drifts from the sheet or the reference numbers fails here first.
"""

from __future__ import annotations

import base64
import copy
import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from genrecon.data.registry import lookup as dataset_lookup
from genrecon.report import (
    NumbersMismatch,
    SpecError,
    check_numbers,
    load_spec,
    numbers_rows,
    page_inputs,
    required_inputs,
    resolve_settings,
    sheet_by_scale,
    table_frame,
    validate_tables,
    write_numbers,
)
from genrecon.report.numbers import FLAG, FLAG_TEXT, read_source, std_source
from genrecon.report.settings import facts, scale_note
from genrecon.report.spec import DRAW_COLUMNS
from genrecon.report.tables import flag_footnote, load_numbers

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "reference" / "paper_results.yaml"


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture(scope="module")
def spec() -> dict:
    return load_spec(ROOT / "config" / "tables.yaml")


@pytest.fixture(scope="module")
def paper() -> dict:
    return yaml.safe_load(PAPER.read_text())


@pytest.fixture(scope="module")
def smoke(params) -> dict:
    return resolve_settings(params, "smoke")


def _stats(seed: float) -> dict:
    return {
        "psnr_mean": 25.0 + seed,
        "psnr_std": 2.0 + seed / 10,
        "ssim_mean": 0.6 + seed / 100,
        "ssim_std": 0.05,
    }


def _exploding(n: int, k: int, flagged: bool) -> dict:
    """summary.json's `exploding` block; a flagged run has 3 NaN samples and 2 out of range."""
    bad = (3, 7, 2, 5) if flagged else (0, 0, 0, 0)
    return {
        "n": n,
        "samples": n * k,
        "finite_samples": n * k - bad[0],
        "nonfinite_samples": bad[0],
        "nonfinite_pixels": bad[1],
        "out_of_range_samples": bad[2],
        "out_of_range_pixels": bad[3],
        "images_with_nonfinite": int(flagged),
        "images_with_out_of_range": int(flagged),
        "images_without_finite_sample": 0,
        "flagged": flagged,
    }


def write_results(project: Path, settings: dict, flagged: tuple[str, ...] = ()) -> Path:
    """Result files, in the pipeline's formats, for every experiment that runs at this scale.

    Posterior experiments named in `flagged` drew exploding samples (their summary says so).
    """
    results = project / "results" / "smoke"
    counts = settings["evaluate"]["sample_counts"]
    for i, (exp, row) in enumerate(settings["experiments"].items()):
        posterior = "posterior" in row["protocols"]
        # null: the whole test split (fastMRI: every slice of its test volumes)
        n = settings["evaluate"][row["dataset"]]["num_images"] or 7
        if posterior:
            k = settings["evaluate"][row["dataset"]]["num_samples"]
            estimators = {
                "mean": {**_stats(i + 0.25), "label": f"mean of {k} unclipped samples"},
                "clipped_mean": {**_stats(i + 0.5), "label": f"mean of {k} samples clipped"},
            }
        else:
            estimators = {"point": {**_stats(i), "label": row["method"]}}
        if "grid" in row["protocols"]:  # seed 002: per setting, with seconds and the search
            estimators["point"] |= {"seconds_mean": 0.5 + i, "seconds_std": 0.1}
        if "inversion" in row["protocols"]:  # seed 003: the paper's best of the starts too
            estimators["best_of_starts"] = {**_stats(i + 0.75), "label": "best of 3 starts"}
        summary = {
            "experiment": exp,
            "run_id": f"run-eval-{exp}",
            "method": row["method"],
            "dataset": row["dataset"],
            "n": n,
            "estimators": estimators,
        }
        groups = dataset_lookup(row["dataset"]).groups  # e.g. fastMRI's PD / PDFS / all
        if groups:
            summary["groups"] = {
                "label": "per volume",
                "file": "per_volume.csv",
                "estimators": {
                    est: {g: {**_stats(i + j), "n": 3} for j, g in enumerate(groups)}
                    for est in estimators
                },
            }
        if posterior:
            summary |= {"num_samples": k, "clip": [0, 1]}
            summary["single_sample"] = {**_stats(i - 3), "n": n, "label": "first draw"}
            summary["pixel_std"] = {
                "n": n,
                "pixel_std_mean": 0.02 + i / 1000,
                "pixel_std_std": 0.004,
                "label": "pixel-wise std",
            }
            summary["exploding"] = _exploding(n, k, exp in flagged)
            summary["curves"] = {
                "num_samples": [
                    {"num_samples": c, "estimator": est, **_stats(i + j / 10), "n": n}
                    for est in ("mean", "clipped_mean")
                    for j, c in enumerate(counts)
                ]
            }
        if "grid" in row["protocols"]:
            from genrecon.evaluation.grid import curves, measurement_settings, setting_id

            per_setting = {
                setting_id(st): {**st, **_stats(i + j / 9), "n": n}
                for j, st in enumerate(measurement_settings(settings["evaluate"][row["dataset"]]))
            }
            tuning = None
            if row.get("tune"):
                ((key, values),) = row["tune"].items()
                tuning = {
                    "parameter": key,
                    "chosen": values[0],
                    "values": [{"value": v, **_stats(i + j), "n": 2} for j, v in enumerate(values)],
                }
            summary |= {"settings": per_setting, "tuning": tuning}
            summary["curves"] = curves(per_setting, tuning)
        folder = results / "eval" / exp
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(summary, indent=1))
        rng = np.random.default_rng(i)
        images = rng.random((3, 16, 16)).astype(np.float32)
        arrays = {"truth": images, "cond": images * 0.9, "point": images * 0.95}
        if posterior:
            arrays |= {"std": images * 0.1, "samples": rng.random((3, 3, 16, 16))}
        np.savez(folder / "examples.npz", **arrays)
        for sweep in row.get("sweeps") or []:
            path = results / "sweeps" / sweep / f"{exp}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                starts = _exploding(settings["sweeps"][sweep]["num_images"], 1, exp in flagged)
                w.writerow(
                    ["value", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "n", "run_id"]
                    + ["experiment"]
                    + [f"start_{k}" for k in starts]
                )
                for j, lam in enumerate(settings["sweeps"][sweep]["lambdas"]):
                    s = _stats(i + j / 7)
                    w.writerow(
                        [lam, s["psnr_mean"], s["psnr_std"], s["ssim_mean"], s["ssim_std"]]
                        + [settings["sweeps"][sweep]["num_images"], f"run-sweep-{exp}", exp]
                        + list(starts.values())
                    )
        if row["method"] == "cinn":
            models = results / "models" / exp
            models.mkdir(parents=True)
            train = {
                "best_val_bpd": -3.5 - i / 10,
                "steps": 20,
                "parameters": 12345 + i,
                "run_id": f"run-train-{exp}",
                "experiment": exp,
            }
            (models / "train.json").write_text(json.dumps(train))
            (models / "history.csv").write_text(
                "step,train_bpd,val_bpd,lr\n10,-2.0,-2.5,0.001\n20,-3.0,-3.5,0.001\n"
            )
    bench = {
        "device": "cpu",
        "run_id": "run-bench",
        "results": [{"name": "FBP, 64px", "unit": "ms/slice", "value": 1.5, "std": 0.1}],
    }
    (project / "results" / "benchmarks.json").write_text(json.dumps(bench))
    return results


@pytest.fixture
def project(tmp_path, smoke) -> Path:
    """A project root with fixture results and its own copy of paper_results.yaml."""
    (tmp_path / "reference").mkdir()
    shutil.copy(PAPER, tmp_path / "reference" / "paper_results.yaml")
    write_results(tmp_path, smoke)
    return tmp_path


def build(project: Path, spec: dict, smoke: dict, paper: dict) -> tuple[list[dict], Path]:
    rows = numbers_rows(
        spec,
        smoke,
        project / "results" / "smoke",
        paper,
        project / "reference" / "paper_results.yaml",
        project / "results" / "benchmarks.json",
        run_id="run-numbers",
        root=project,
    )
    out = project / "results" / "report" / "numbers.csv"
    write_numbers(rows, out)
    return rows, out


def pick(rows, **match) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


# --- the spec ----------------------------------------------------------------------------------


def test_real_spec_resolves_against_the_sheet_and_the_paper_numbers(spec, params, paper):
    validate_tables(spec, sheet_by_scale(params), paper)


def test_validate_tables_names_a_misspelt_experiment(spec, params, paper):
    bad = copy.deepcopy(spec)
    bad["tables"]["s000_table3"]["rows"][0]["experiment"] = "lodopab_ms_nromal"
    with pytest.raises(SpecError, match=r"rows\[0\]\.experiment: 'lodopab_ms_nromal'"):
        validate_tables(bad, sheet_by_scale(params), paper)


def test_validate_tables_names_a_misspelt_paper_key(spec, params, paper):
    bad = copy.deepcopy(spec)
    bad["tables"]["s000_table1"]["rows"][0]["paper"] = "pseudo_invers"
    with pytest.raises(SpecError, match="'pseudo_invers' is not a row of cinn_medical_imaging"):
        validate_tables(bad, sheet_by_scale(params), paper)
    bad = copy.deepcopy(spec)
    bad["tables"]["s000_table4"]["rows"][0]["paper"] = "multiscale_lam_{value:g}"
    with pytest.raises(SpecError, match="'multiscale_lam_0.01' is not a row"):
        validate_tables(bad, sheet_by_scale(params), paper)


def test_validate_tables_rejects_an_unknown_key_and_a_bad_estimator(spec, params, paper):
    sheet = sheet_by_scale(params)
    bad = copy.deepcopy(spec)
    bad["tables"]["s000_table1"]["rows"][0]["experimnt"] = "mnist_ms_pinv"
    with pytest.raises(SpecError, match="'experimnt' was unexpected"):
        validate_tables(bad, sheet, paper)
    bad = copy.deepcopy(spec)
    bad["tables"]["s000_table3"]["rows"][0]["estimator"] = "point"
    with pytest.raises(SpecError, match="estimator: 'point' is not written by 'lodopab_ms_normal'"):
        validate_tables(bad, sheet, paper)
    bad = copy.deepcopy(spec)
    bad["tables"]["s000_table3"]["rows"][4]["paper"] = "multiscale_normal_noise"
    with pytest.raises(SpecError, match="'clipped_mean' is an extra row"):
        validate_tables(bad, sheet, paper)


def test_validate_tables_checks_the_sheet_reproduces_both_ways(spec, params, paper):
    sheet = copy.deepcopy(sheet_by_scale(params))
    sheet["smoke"]["mnist_tv"]["reproduces"] = ["s000_tabel1"]
    with pytest.raises(SpecError) as err:
        validate_tables(spec, sheet, paper)
    assert "experiments.mnist_tv.reproduces: 's000_tabel1' is not a table" in str(err.value)
    assert "tables.s000_table1: has a row for 'mnist_tv'" in str(err.value)


def test_validate_tables_checks_citations_against_paper_results(spec, params, paper):
    bad = copy.deepcopy(spec)
    bad["papers"]["s000"]["doi"] = "10.3390/jimaging7110244"
    with pytest.raises(SpecError, match=r"papers\.s000\.doi"):
        validate_tables(bad, sheet_by_scale(params), paper)


def test_required_inputs_skip_experiments_that_do_not_run_at_a_scale(spec, params, smoke):
    files = required_inputs(spec, smoke, "results/smoke")
    assert "results/smoke/eval/lodopab_ms_normal/summary.json" in files
    assert "results/smoke/sweeps/refine/lodopab_ms_normal.csv" in files
    assert "results/smoke/sweeps/refine/lodopab_ms_radial.csv" not in files  # paper scale only
    assert "results/smoke/models/mnist_ms_pinv/train.json" in files
    assert "results/benchmarks.json" in files
    assert not [f for f in files if "nonoise" in f]
    assert len(files) == len(set(files))
    full = required_inputs(spec, resolve_settings(params, "paper"), "results/paper")
    assert "results/paper/eval/lodopab_ms_radial_nonoise/summary.json" in full
    assert "results/paper/sweeps/refine/lodopab_ms_normal_nonoise.csv" in full
    assert "results/paper/models/lodopab_ms_normal_nonoise/train.json" in full
    pages = page_inputs(spec, smoke, "results/smoke", "lodopab")
    assert "results/smoke/eval/lodopab_tv/examples.npz" in pages
    assert "results/smoke/models/lodopab_ms_radial/history.csv" in pages
    assert not [f for f in pages if "nonoise" in f]


def test_settings_in_prose_come_from_params(params, smoke):
    note = scale_note(smoke, "smoke", ["lodopab"])
    assert note == (
        "smoke: synthetic LoDoPaB-format CT 64×64, 60 angles, N0=4096, 1200 training steps"
        " — compare gaps, not absolute values"
    )
    f = facts(smoke, "smoke")
    assert f["mnist_images"] == "the first 200 of 1000 test images"
    assert f["lodopab_images"] == "the test set (100 images)"
    assert f["refine_images"] == "the first 8 test images"
    # fastMRI's splits count volumes (FastMRIKnee.unit), its evaluation the whole split
    assert f["fastmri_knee_volumes"] == "10 test volumes"
    assert f["fastmri_knee_images"] == "the test set (10 volumes)"
    full = facts(resolve_settings(params, "paper"), "paper")
    assert full["mnist_images"] == "the test set (10000 images)"
    assert "compare gaps" not in full["lodopab_note"]


# --- numbers.csv -------------------------------------------------------------------------------


def test_numbers_follow_the_spec_with_paper_rows_beside_ours(project, spec, smoke, paper):
    rows, _ = build(project, spec, smoke, paper)
    summary = json.loads(
        (project / "results/smoke/eval/lodopab_ms_normal/summary.json").read_text()
    )
    ours = pick(rows, table="s000_table3", row="lodopab_ms_normal:mean", who="ours", metric="psnr")
    assert len(ours) == 1
    assert float(ours[0]["value"]) == summary["estimators"]["mean"]["psnr_mean"]
    assert float(ours[0]["std"]) == summary["estimators"]["mean"]["psnr_std"]
    assert ours[0]["n"] == "100" and ours[0]["run_id"] == "run-eval-lodopab_ms_normal"
    assert ours[0]["source"] == (
        "results/smoke/eval/lodopab_ms_normal/summary.json#/estimators/mean/psnr_mean"
    )
    theirs = pick(rows, table="s000_table3", row="lodopab_ms_normal:mean", who="paper")
    assert {r["metric"]: (r["value"], r["std"]) for r in theirs} == {
        "psnr": ("34.99", "4.26"),
        "ssim": ("0.83", "0.158"),
    }
    assert theirs[0]["source"] == (
        "reference/paper_results.yaml#/cinn_medical_imaging/tables/table3/rows/"
        "multiscale_normal_noise/psnr/0"
    )
    assert "doi:10.3390/jimaging7110243" in theirs[0]["citation"]
    assert "Table 3, row multiscale_normal_noise" in theirs[0]["citation"]
    assert theirs[0]["run_id"] == "run-numbers"
    # a grouped row (Table 5: fastMRI per volume, PDFS) reads the dataset's own scores
    knee = json.loads((project / "results/smoke/eval/knee_ms_normal/summary.json").read_text())
    pdfs = pick(rows, table="s000_table5", row="knee_ms_normal:mean/PDFS", metric="ssim")
    assert [r["who"] for r in pdfs] == ["ours", "paper"]
    assert float(pdfs[0]["value"]) == knee["groups"]["estimators"]["mean"]["PDFS"]["ssim_mean"]
    assert pdfs[0]["n"] == "3" and pdfs[0]["source"].endswith(
        "knee_ms_normal/summary.json#/groups/estimators/mean/PDFS/ssim_mean"
    )
    assert pdfs[1]["value"] == "0.536" and "multiscale_normal_no_noise_pdfs" in pdfs[1]["source"]
    # the clipped mean is an extra row: ours only, never beside a paper number
    assert not pick(rows, row="lodopab_ms_normal:clipped_mean", who="paper")
    assert pick(rows, row="lodopab_ms_normal:clipped_mean", who="ours")
    # experiments that do not run at smoke scale are left out, paper numbers included
    assert not [
        r
        for r in rows
        if "lodopab_ms_normal_nonoise" in r["row"]
        or "multiscale_normal_no_noise" in r["source"]
        and r["table"] == "s000_table3"
    ]
    # the 2020 table keeps the paper's list; means only there, so no std
    unet = pick(rows, table="s001_table1", row="paper:fbp_unet")
    assert {r["who"] for r in unet} == {"paper"} and unet[0]["std"] == ""
    assert "arXiv:2006.06270" in unet[0]["citation"]
    # the λ sweep: ours at every λ we ran, the paper beside the normal-base rows only
    lam = pick(rows, table="s000_table4", row="lodopab_ms_normal@0.1", metric="psnr")
    assert {r["who"] for r in lam} == {"ours", "paper"}
    assert pick(lam, who="ours")[0]["source"].endswith(
        "refine/lodopab_ms_normal.csv#value=0.1/psnr_mean"
    )
    assert not pick(rows, table="s000_table4", row="lodopab_ms_radial@1")  # paper scale only
    # curves: one point per sample count, unclipped estimator only
    curve = pick(rows, table="s001_fig4", experiment="lodopab_ms_radial", metric="ssim")
    assert [r["x"] for r in curve] == [str(k) for k in smoke["evaluate"]["sample_counts"]]
    assert {r["estimator"] for r in curve} == {"mean"}
    # training and benchmark rows stay
    assert {r["metric"] for r in pick(rows, table="training", row="mnist_ms_pinv")} == {
        "best_val_bits_per_dim",
        "parameters",
    }
    assert pick(rows, table="benchmarks")[0]["source"].endswith("benchmarks.json#/results/0/value")


def test_a_group_without_scored_units_leaves_its_row_out(project, spec, smoke, paper):
    """Only PD volumes evaluated (e.g. a small `num_images`): the PDFS rows of Table 5 have no
    number of ours, and the report says nothing rather than a NaN or a crash."""
    path = project / "results/smoke/eval/knee_ms_radial/summary.json"
    summary = json.loads(path.read_text())
    summary["groups"]["estimators"]["mean"].pop("PDFS")
    path.write_text(json.dumps(summary))
    rows, _ = build(project, spec, smoke, paper)
    assert pick(rows, row="knee_ms_radial:mean/PD", who="ours")
    assert not pick(rows, row="knee_ms_radial:mean/PDFS", who="ours")
    assert pick(rows, row="knee_ms_radial:mean/PDFS", who="paper")  # the paper's, labelled


def test_page_tables_set_ours_paper_and_delta_in_one_row(project, spec, smoke, paper):
    _, out = build(project, spec, smoke, paper)
    numbers = load_numbers(out)
    frame = table_frame(numbers, spec, "s000_table3")
    summary = json.loads(
        (project / "results/smoke/eval/lodopab_ms_normal/summary.json").read_text()
    )
    mean = summary["estimators"]["mean"]
    line = frame.loc["cINN, normal base"]
    assert line[("PSNR (dB)", "ours")] == f"{mean['psnr_mean']:.2f} ± {mean['psnr_std']:.2f}"
    assert line[("PSNR (dB)", "paper")] == "34.99 ± 4.26"
    assert line[("PSNR (dB)", "Δ")] == f"{mean['psnr_mean'] - 34.99:+.2f}"
    assert line[("SSIM", "Δ")] == f"{mean['ssim_mean'] - 0.830:+.3f}"
    assert line[("", "our estimator")] == "mean of 100 unclipped samples"
    assert frame.loc["FBP", ("PSNR (dB)", "paper")] == "–"
    assert frame.loc["FBP", ("PSNR (dB)", "Δ")] == "–"
    assert list(frame.index).count("cINN, normal base") == 1
    for table_id in (
        "s000_table3",
        "s001_table1",
        "s000_table4",
        "s000_table1",
        "training",
        "lodopab_base_sampling",
        "lodopab_exploding",
        "mnist_exploding",
    ):
        cells = table_frame(numbers, spec, table_id).to_numpy().ravel()
        assert not [c for c in cells if not isinstance(c, str) or c.lower() in ("nan", "")]
    wide = table_frame(numbers, spec, "s001_table1")
    assert wide.loc["FBP + U-Net", ("PSNR (dB)", "ours")] == "–"
    assert wide.loc["FBP + U-Net", ("PSNR (dB)", "paper")] == "35.90"
    sweep = table_frame(numbers, spec, "s000_table4")
    assert sweep.loc["cINN, normal base, λ = 1", ("SSIM", "paper")] == "0.783 ± 0.148"


# --- posterior draws: exploding inverses, one sample, spread -----------------------------------


def test_draws_tables_read_counts_and_spread_from_the_summary(project, spec, smoke, paper):
    rows, out = build(project, spec, smoke, paper)
    path = project / "results/smoke/eval/lodopab_ms_radial/summary.json"
    summary = json.loads(path.read_text())
    spread = pick(rows, table="lodopab_base_sampling", row="lodopab_ms_radial", metric="pixel_std")
    assert len(spread) == 1 and spread[0]["who"] == "ours"
    assert float(spread[0]["value"]) == summary["pixel_std"]["pixel_std_mean"]
    assert float(spread[0]["std"]) == summary["pixel_std"]["pixel_std_std"]
    assert spread[0]["source"].endswith("lodopab_ms_radial/summary.json#/pixel_std/pixel_std_mean")
    one = pick(rows, table="lodopab_base_sampling", row="lodopab_ms_radial", metric="sample_psnr")
    assert float(one[0]["value"]) == summary["single_sample"]["psnr_mean"]
    counts = pick(rows, table="lodopab_exploding", row="lodopab_ms_radial")
    assert {r["metric"]: r["value"] for r in counts} == {
        "samples": str(100 * 100),
        "nonfinite_samples": "0",
        "nonfinite_pixels": "0",
        "out_of_range_samples": "0",
        "out_of_range_pixels": "0",
        "unscored_images": "0",
    }
    assert all(r["std"] == "" and r["note"] == "" for r in counts)  # counts: no std, no flag
    assert check_numbers(out, project) == len(rows)
    numbers = load_numbers(out)
    frame = table_frame(numbers, spec, "lodopab_base_sampling")
    assert list(frame.index) == ["cINN, normal base", "cINN, radial base"]  # what runs at smoke
    assert frame.loc["cINN, radial base", "mean pixel-wise std"] == (
        f"{summary['pixel_std']['pixel_std_mean']:.4f} ± 0.0040"
    )
    line = table_frame(numbers, spec, "mnist_exploding").loc["cINN, A⁺y input"]
    assert line["samples drawn"] == "20,000" and line["samples with NaN/inf (left out)"] == "0"
    for table_id in spec["tables"]:  # a clean run: no marker and no footnote anywhere
        assert flag_footnote(numbers, table_id) == ""
        if spec["tables"][table_id]["kind"] != "curves":
            assert not [i for i in table_frame(numbers, spec, table_id).index if FLAG in i]


def test_a_flagged_run_is_noted_marked_and_footnoted(tmp_path, spec, smoke, paper):
    (tmp_path / "reference").mkdir()
    shutil.copy(PAPER, tmp_path / "reference" / "paper_results.yaml")
    write_results(tmp_path, smoke, flagged=("lodopab_ms_normal",))
    rows, out = build(tmp_path, spec, smoke, paper)
    note = pick(rows, table="s000_table3", row="lodopab_ms_normal:mean", metric="psnr")[0]["note"]
    assert note == (
        "mean of 100 unclipped samples; ⚠ exploding inverses: 3 of 10000 samples with NaN/inf "
        "pixels (left out of the means), 2 of 10000 finite samples out of range (kept)"
    )
    tables = ("s000_table3", "s001_fig4", "lodopab_exploding", "lodopab_base_sampling")
    for table_id in (*tables, "s000_table4"):  # the sweep: its own starting draws, checked
        ours = pick(rows, table=table_id, experiment="lodopab_ms_normal", who="ours")
        assert ours and all(FLAG_TEXT in r["note"] for r in ours), table_id
    sweep = pick(rows, table="s000_table4", experiment="lodopab_ms_normal", who="ours")[0]
    assert sweep["note"] == (
        "⚠ exploding inverses: 3 of 8 samples with NaN/inf pixels (left out of the means), "
        "2 of 8 finite samples out of range (kept)"
    )
    assert not [r for r in rows if r["experiment"] != "lodopab_ms_normal" and FLAG in r["note"]]
    assert check_numbers(out, tmp_path) == len(rows)

    numbers = load_numbers(out)
    frame = table_frame(numbers, spec, "s000_table3")
    assert "cINN, normal base ⚠" in frame.index and "cINN, radial base" in frame.index
    assert "cINN, normal base" not in frame.index
    flagged_line = frame.loc["cINN, normal base ⚠"]
    assert flagged_line[("", "our estimator")] == "mean of 100 unclipped samples"
    assert flagged_line[("PSNR (dB)", "paper")] == "34.99 ± 4.26"  # still beside the paper
    assert "cINN, normal base ⚠</th>" in frame.to_html()  # the marker the page renders
    counts = table_frame(numbers, spec, "lodopab_exploding").loc["cINN, normal base ⚠"]
    assert counts["samples with NaN/inf (left out)"] == "3"
    assert counts["NaN/inf pixels"] == "7" and counts["pixels out of range"] == "5"
    footnote = flag_footnote(numbers, "s000_table3")
    assert footnote.startswith("⚠ exploding inverses (Denker et al. 2021, Sec. 5.1)")
    assert footnote.count("\n- ⚠ ") == 1 and "- ⚠ cINN, normal base: exploding inverses: 3" in (
        footnote
    )
    assert flag_footnote(numbers, "s000_table1") == ""  # MNIST runs are clean
    assert flag_footnote(numbers, "s001_fig4").count("\n- ⚠ ") == 1  # one per run, not per k


def test_validate_tables_checks_draws_tables(spec, params, paper):
    sheet = sheet_by_scale(params)
    bad = copy.deepcopy(spec)
    bad["tables"]["lodopab_exploding"]["rows"].append({"label": "FBP", "experiment": "lodopab_fbp"})
    with pytest.raises(SpecError, match="'lodopab_fbp' draws no posterior samples"):
        validate_tables(bad, sheet, paper)
    bad = copy.deepcopy(spec)
    bad["tables"]["lodopab_exploding"]["columns"].append("nan_pixels")
    with pytest.raises(SpecError, match="'nan_pixels' is not one of"):
        validate_tables(bad, sheet, paper)
    bad = copy.deepcopy(spec)
    bad["tables"]["lodopab_exploding"]["rows"][0]["estimator"] = "mean"
    with pytest.raises(SpecError, match=r"rows\[0\]\.estimator: draws rows take no estimator"):
        validate_tables(bad, sheet, paper)
    bad = copy.deepcopy(spec)
    bad["tables"]["lodopab_exploding"]["rows"][0]["paper"] = "multiscale_normal_noise"
    with pytest.raises(SpecError, match="a draws table carries no paper numbers"):
        validate_tables(bad, sheet, paper)
    bad = copy.deepcopy(spec)
    bad["tables"]["s000_table3"]["columns"] = ["samples"]
    with pytest.raises(SpecError, match="s000_table3"):
        validate_tables(bad, sheet, paper)
    bad = copy.deepcopy(spec)
    del bad["tables"]["mnist_exploding"]["columns"]
    with pytest.raises(SpecError, match="'columns' is a required property"):
        validate_tables(bad, sheet, paper)


def test_schema_lists_exactly_the_draws_columns_the_code_reads():
    schema = yaml.safe_load((ROOT / "workflow/schemas/tables.schema.yaml").read_text())
    enum = schema["$defs"]["table"]["properties"]["columns"]["items"]["enum"]
    assert enum == list(DRAW_COLUMNS)


def test_check_numbers_accepts_a_faithful_table(project, spec, smoke, paper):
    rows, out = build(project, spec, smoke, paper)
    assert check_numbers(out, project) == len(rows) > 100


def _edit(path: Path, match: dict, column: str, value: str) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    hits = pick(rows, **match)
    assert hits
    hits[0][column] = value
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_check_numbers_catches_a_value_typed_in_by_hand(project, spec, smoke, paper):
    _, out = build(project, spec, smoke, paper)
    _edit(
        out,
        {"table": "s000_table1", "row": "mnist_ms_pinv:mean", "metric": "psnr"},
        "value",
        "31.5",
    )
    with pytest.raises(
        NumbersMismatch, match=r"s000_table1 / mnist_ms_pinv:mean / psnr, ours\): value 31.5"
    ):
        check_numbers(out, project)


def test_check_numbers_catches_an_edited_std_a_paper_number_and_a_stale_source(
    project, spec, smoke, paper
):
    _, out = build(project, spec, smoke, paper)
    _edit(out, {"table": "s000_table4", "row": "lodopab_ms_normal@10", "who": "ours"}, "std", "0.2")
    with pytest.raises(NumbersMismatch, match=r"lodopab_ms_normal@10 / psnr, ours\): std 0.2"):
        check_numbers(out, project)
    _, out = build(project, spec, smoke, paper)
    _edit(out, {"table": "s001_table1", "row": "paper:learned_pd"}, "value", "37.12")
    with pytest.raises(NumbersMismatch, match="paper:learned_pd"):
        check_numbers(out, project)
    _, out = build(project, spec, smoke, paper)
    summary = project / "results/smoke/eval/mnist_tv/summary.json"
    data = json.loads(summary.read_text())
    data["estimators"]["point"]["ssim_mean"] += 0.01
    summary.write_text(json.dumps(data))
    with pytest.raises(NumbersMismatch, match=r"mnist_tv:point / ssim, ours"):
        check_numbers(out, project)


def test_check_numbers_catches_a_row_added_by_hand(project, spec, smoke, paper):
    _, out = build(project, spec, smoke, paper)
    with open(out, "a", newline="") as f:
        csv.writer(f).writerow(
            ["s000_table3", "made_up", "ours", "made up", "", "", "", "psnr", "40.0", "", "", ""]
            + ["", "", "run-x"]
        )
    with pytest.raises(NumbersMismatch, match="made_up / psnr, ours\\): no source"):
        check_numbers(out, project)


def test_read_source_and_std_source(project):
    csv_source = "results/smoke/sweeps/refine/lodopab_ms_normal.csv#value=0.01/psnr_mean"
    assert read_source(csv_source, project) == pytest.approx(25.0 + 0 + 1 / 7)
    assert std_source(csv_source).endswith("#value=0.01/psnr_std")
    yaml_source = "reference/paper_results.yaml#/cond_nf_lowdose_ct/tables/table1/rows/cinn/ssim"
    assert read_source(yaml_source, project) == 0.88
    assert std_source(yaml_source) is None
    assert std_source("x.yaml#/a/psnr/0") == "x.yaml#/a/psnr/1"
    with pytest.raises(KeyError, match="2 rows|0 rows"):
        read_source(
            "results/smoke/sweeps/refine/lodopab_ms_normal.csv#value=0.5/psnr_mean", project
        )


def test_paper_results_cite_every_paper_by_doi_or_arxiv(paper):
    for key, block in paper.items():
        cite = block["cite"]
        assert cite.get("doi") or cite.get("arxiv") or "doi:" in cite["venue"], key
        for table in block["tables"].values():
            assert table["name"] and table["rows"], key
    text = PAPER.read_text()
    assert "../seeds" not in text and "seeds/" not in text


# --- the rendered pages (headless Chromium) ----------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing; the tests skip if that fails."""
    from genrecon.report import find_chromium

    found = find_chromium()
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is not installed and apt-get (as root) is not available")
    log = []
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        log.append(done.stderr.strip().splitlines()[-1:] if done.returncode else [])
        if done.returncode:
            pytest.skip(f"apt-get could not install chromium: {' '.join(log[-1])}")
    return find_chromium() or pytest.skip("apt-get ran but no chromium binary was found")


PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5f3a0fb0000000049454e44ae426082"
    )
).decode()


def good_report(folder: Path) -> Path:
    """A tiny report in the shape of the real one: index, a page, numbers.csv, images."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "numbers.csv").write_text("table,row\n")
    (folder / "figure.png").write_bytes(base64.b64decode(PNG))
    (folder / "index.html").write_text(
        '<!doctype html><html><body><h1>report</h1><a href="page.html">page</a> '
        '<a href="numbers.csv#row">numbers</a> <a href="https://doi.org/10.1/x">paper</a> '
        '<a href="#top">top</a></body></html>'
    )
    (folder / "page.html").write_text(
        "<!doctype html><html><body><h2>Table</h2><table><tr><th>method</th><th>ours</th></tr>"
        "<tr><td>cINN</td><td>31.20 ± 2.00</td></tr><tr><td>FBP + U-Net</td><td>–</td></tr>"
        f'</table><img src="data:image/png;base64,{PNG}"><img src="figure.png">'
        '<p>Out of range values are clipped (the word "Out" alone is fine).</p></body></html>'
    )
    return folder


def test_page_check_passes_a_good_report(tmp_path, chromium):
    from genrecon.report import check_report_pages

    assert check_report_pages(good_report(tmp_path / "report"), chromium) == []


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        ('<a href="mnist.html">a page never made</a>', "broken link <a href='mnist.html'>"),
        ('<img src="missing.png">', "image does not load: <img src='missing.png'"),
        ('<img src="data:image/png;base64,iVBORw0KGgoAAAAA">', "image does not load"),
        (
            '<pre>Traceback (most recent call last):\n  File "x.py", line 1\n'
            "KeyError: 'psnr'</pre>",
            "Python traceback in the page",
        ),
        ("<div>Out[3]: 0.5</div>", "notebook prompt 'Out[3]:'"),
        ("<table><tr><td>NaN</td></tr></table>", "table cell shows 'NaN'"),
    ],
)
def test_page_check_fails_on_each_defect(tmp_path, chromium, defect, expected):
    from genrecon.report import check_report_pages

    report = good_report(tmp_path / "report")
    page = report / "page.html"
    page.write_text(page.read_text().replace("</body>", defect + "</body>"))
    problems = check_report_pages(report, chromium)
    assert len(problems) == 1, problems
    assert problems[0].startswith("page.html: ") and expected in problems[0]


def test_page_check_requires_the_index(tmp_path, chromium):
    from genrecon.report import check_report_pages

    report = good_report(tmp_path / "report")
    (report / "index.html").unlink()
    assert check_report_pages(report, chromium) == [f"{report / 'index.html'}: missing"]


@pytest.mark.slow
def test_pages_render_from_fixture_results(tmp_path, spec, smoke, paper, params, chromium):
    """The three real notebooks and the index, executed on fixture results, render cleanly."""
    from genrecon.report import build_numbers, check_report_pages, render_notebook, write_index

    project = tmp_path
    (project / "reference").mkdir()
    shutil.copy(PAPER, project / "reference" / "paper_results.yaml")
    results = write_results(project, smoke, flagged=("lodopab_ms_radial",))
    numbers = project / "results" / "report" / "numbers.csv"
    report = numbers.parent
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        build_numbers(
            params,
            smoke,
            results,
            ROOT / "config" / "tables.yaml",
            project / "reference" / "paper_results.yaml",
            numbers,
            project / "results" / "benchmarks.json",
            root=project,
        )
        pages = []
        for name in ("lodopab", "mnist", "provenance"):
            html = report / f"{name}.html"
            render_notebook(
                ROOT / "notebooks" / f"{name}.ipynb",
                report / f"{name}.ipynb",
                html,
                {"numbers": str(numbers), "results": str(results), "scale": "smoke"},
            )
            pages.append(html)
        write_index(params, smoke, pages, report / "index.html")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    assert check_report_pages(report, chromium) == []
    lodopab = (report / "lodopab.html").read_text()
    assert lodopab.count("compare gaps, not absolute values") == 1
    assert "34.99 ± 4.26" in lodopab and "the test set (100 images)" in lodopab
    # the flagged run: marked rows, its footnote, its counts; the MNIST page stays clean
    assert "cINN, radial base ⚠</th>" in lodopab and "cINN, normal base ⚠" not in lodopab
    assert "exploding inverses (Denker et al. 2021, Sec. 5.1): the run behind" in lodopab
    assert "Exploding inverses on LoDoPaB-CT" in lodopab and "samples drawn" in lodopab
    assert "mean pixel-wise std" in lodopab
    mnist = (report / "mnist.html").read_text()
    assert "Exploding inverses on MNIST" in mnist and "⚠</th>" not in mnist


def test_a_summary_without_draw_counts_fails_naming_the_file(project, spec, smoke, paper):
    path = project / "results/smoke/eval/mnist_ms_tikhonov/summary.json"
    data = json.loads(path.read_text())
    del data["exploding"]
    path.write_text(json.dumps(data))
    with pytest.raises(KeyError, match=r"mnist_ms_tikhonov/summary.json: no /exploding/samples"):
        build(project, spec, smoke, paper)


def test_seed002_curves_and_timings_read_the_grid_summary(project, spec, smoke, paper):
    """A setting curve's point is the per-setting statistic it plots (x = the curve's axis);
    the timing row sets our seconds beside the paper's, cited."""
    rows, _ = build(project, spec, smoke, paper)
    path = project / "results/smoke/eval/knee_vae_covar/summary.json"
    summary = json.loads(path.read_text())
    line = pick(rows, table="s002_fig7_noise", experiment="knee_vae_covar", metric="psnr")
    assert [float(r["x"]) for r in line] == sorted(smoke["evaluate"]["knee_pd"]["radial"]["noise"])
    at = summary["settings"]["radial_s25_n0.2"]
    point = [r for r in line if float(r["x"]) == 0.2][0]
    assert float(point["value"]) == at["psnr_mean"] and float(point["std"]) == at["psnr_std"]
    assert point["source"].endswith(
        "knee_vae_covar/summary.json#/curves/noise_at_spokes_25/2/psnr_mean"
    )
    timing = pick(rows, table="s002_timings", row="knee_vae_covar:point")
    assert {r["who"]: r["value"] for r in timing} == {
        "ours": str(summary["estimators"]["point"]["seconds_mean"]),
        "paper": "78.2",
    }
    tuned = pick(rows, table="s002_tuning", experiment="knee_tv", metric="psnr")
    assert [float(r["x"]) for r in tuned] == smoke["experiments"]["knee_tv"]["tune"]["lam"]


def test_a_grid_curve_missing_at_a_scale_leaves_its_rows_out(project, spec, smoke, paper):
    """A smaller grid (a scale without noise 0.0125) empties that figure's table, not the run."""
    path = project / "results/smoke/eval/knee_vae_covar/summary.json"
    summary = json.loads(path.read_text())
    del summary["curves"]["spokes_at_noise_0.0125"]
    path.write_text(json.dumps(summary))
    rows, _ = build(project, spec, smoke, paper)
    assert not pick(rows, table="s002_fig3_n0125", experiment="knee_vae_covar")
    assert pick(rows, table="s002_fig3_n0125", experiment="knee_vae_identity")
    assert pick(rows, table="s002_fig3_n05", experiment="knee_vae_covar")


@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_every_caption_fills_at_every_scale(params, spec, scale):
    """A caption may quote only settings that exist at every scale (a paper-only row does not
    exist at smoke): the numbers job renders every caption, also for tables empty there."""
    from genrecon.report.settings import fill

    settings = resolve_settings(params, scale)
    for tid, table in spec["tables"].items():
        if "caption" in table:
            fill(table["caption"], settings, scale, f"tables.{tid}.caption")
