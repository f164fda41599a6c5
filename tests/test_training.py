"""The generic training loop learns, resumes bit-identically, and fails loudly and safely."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from genrecon import training
from genrecon.training import (
    CheckpointError,
    NonFiniteError,
    fingerprint,
    fingerprint_inputs,
    fit,
    load_model,
    save_checkpoint,
)
from training_helpers import CFG, SPEC, build_from_spec, make_data, run

HELPERS = Path(__file__).with_name("training_helpers.py")
SRC = Path(training.__file__).resolve().parents[1]  # the subprocess imports the same genrecon


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _history(out: Path) -> list[str]:
    return (out / "history.csv").read_text().splitlines()


def _last_step(out: Path) -> int:
    try:
        return json.loads((out / "last.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_training_lowers_the_validation_loss(tmp_path):
    summary, trained = run(tmp_path, 15)
    rows = [line.split(",") for line in _history(tmp_path)]
    assert rows[0] == ["step", "train_bpd", "val_bpd", "lr"]
    assert [int(r[0]) for r in rows[1:]] == [5, 10, 15] and trained == 15
    val = [float(r[2]) for r in rows[1:]]
    assert val[-1] < val[0]
    assert summary["steps"] == 15 and summary["parameters"] == 6 * 6 + 6 + 6
    assert summary["best_val_bpd"] == pytest.approx(min(val))
    model, meta = load_model(tmp_path / "best.pt", build_from_spec)
    assert meta["spec"] == SPEC and meta["best_val_bpd"] == summary["best_val_bpd"]
    assert not model.training


def test_killed_run_resumes_bit_identically(tmp_path, capsys):
    """SIGKILL a run mid-way, resume it in another process: the weights of a run never killed."""
    steps, killed, straight = 30, tmp_path / "killed", tmp_path / "straight"
    command = [sys.executable, str(HELPERS), str(killed), str(steps), "0"]
    env = {**os.environ, "GENRECON_TEST_STEP_SLEEP": "0.05", "PYTHONPATH": str(SRC)}
    with open(tmp_path / "child.log", "wb") as log:
        child = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        run(straight, steps)  # the reference, while the child imports torch
        deadline = time.monotonic() + 60
        while _last_step(killed) < 5 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    interrupted_at = _last_step(killed)
    assert 5 <= interrupted_at < steps

    capsys.readouterr()
    summary, trained = run(killed, steps)  # this (pytest's) process resumes the killed run
    assert f"from step {interrupted_at}" in capsys.readouterr().err
    assert trained == steps - interrupted_at and summary["steps"] == steps  # not restarted
    _assert_same_weights(killed / "last.pt", straight / "last.pt")
    _assert_same_weights(killed / "best.pt", straight / "best.pt")
    assert _history(killed) == _history(straight)
    assert len({row.split(",")[3] for row in _history(straight)[1:]}) > 1  # the LR did drop


def test_raising_steps_continues_from_last_checkpoint(tmp_path, capsys):
    run(tmp_path / "a", 10)
    summary, trained = run(tmp_path / "a", 15)
    assert trained == 5 and summary["steps"] == 15
    assert "resuming" in capsys.readouterr().err
    straight, _ = run(tmp_path / "b", 15)
    assert summary == straight
    _assert_same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
    assert _history(tmp_path / "a") == _history(tmp_path / "b")


def test_changed_lr_starts_over_and_says_so(tmp_path, capsys):
    run(tmp_path / "a", 10)
    capsys.readouterr()
    summary, trained = run(tmp_path / "a", 15, lr=2e-2)
    err = capsys.readouterr().err
    assert "starting over" in err and "lr 0.01 -> 0.02" in err
    assert trained == 15 and len(_history(tmp_path / "a")) == 4
    fresh, _ = run(tmp_path / "b", 15, lr=2e-2)
    assert summary == fresh
    _assert_same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")


def test_plateau_scheduler_steps_on_the_offset_loss(tmp_path):
    """A relative threshold on loss + offset: a large offset makes small gains count as none."""
    lrs = {}
    for offset in (0.0, 1e4):
        run(tmp_path / str(offset), 15, plateau_threshold=1e-4, plateau_offset=offset)
        lrs[offset] = [float(r.split(",")[3]) for r in _history(tmp_path / str(offset))[1:]]
    assert lrs[0.0] == [1e-2, 1e-2, 1e-2]  # val falls by > 0.01 % each time
    assert lrs[1e4] == [1e-2, 1e-2, 8e-3]  # ... which is < 0.01 % of val + 10^4: a plateau


def test_fingerprint_covers_the_trajectory_but_not_steps():
    base = fingerprint(fingerprint_inputs(SPEC, CFG, 0, None))
    cfg = training.settings(CFG)
    for key in set(cfg) - {"steps", "loader_workers"}:
        if isinstance(cfg[key], str):
            changed = {**cfg, key: cfg[key] + "-changed"}
        else:
            changed = {**cfg, key: 7 if cfg[key] is None else cfg[key] * 2 + 1}
        assert fingerprint(fingerprint_inputs(SPEC, changed, 0, None)) != base, key
    for inputs in (
        fingerprint_inputs({**SPEC, "dim": 7}, CFG, 0, None),
        fingerprint_inputs(SPEC, CFG, 1, None),
        fingerprint_inputs(SPEC, CFG, 0, "data-v2"),
    ):
        assert fingerprint(inputs) != base
    same = {**CFG, "steps": 99, "loader_workers": 3, "plateau_factor": 0.8}
    assert fingerprint(fingerprint_inputs(SPEC, same, 0, None)) == base
    with pytest.raises(KeyError, match="plateau_threshhold"):
        training.settings({**CFG, "plateau_threshhold": 0.005})


class _Payload:
    """A pickle that runs code when loaded without `weights_only` (it touches `marker`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_load_with_weights_only(tmp_path, monkeypatch):
    """Every load is `weights_only`: a checkpoint carrying code is refused and runs nothing."""
    run(tmp_path, 5)
    for name in ("best.pt", "last.pt"):
        state = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        assert isinstance(state["model"]["mean.weight"], torch.Tensor)
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_model(tmp_path / "best.pt", build_from_spec)
    run(tmp_path, 10)  # resumes from last.pt
    assert calls == [True, True]

    marker = tmp_path / "code-ran"
    for name in ("best.pt", "last.pt"):
        torch.save({"model": _Payload(marker), "meta_sha256": "0"}, tmp_path / name)
    with pytest.raises(CheckpointError, match="best.pt: truncated or corrupt checkpoint"):
        load_model(tmp_path / "best.pt", build_from_spec)
    with pytest.raises(CheckpointError, match="last.pt: truncated or corrupt checkpoint"):
        run(tmp_path, 15)
    assert not marker.exists()


def test_checkpoints_are_atomic(tmp_path, monkeypatch):
    run(tmp_path, 5)
    best, sidecar = tmp_path / "best.pt", tmp_path / "best.json"
    before = best.read_bytes(), sidecar.read_bytes()

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(best, {"model": {"w": torch.zeros(3)}}, {"step": 99})
    monkeypatch.undo()
    assert (best.read_bytes(), sidecar.read_bytes()) == before
    assert not list(tmp_path.glob(".*.tmp"))
    model, meta = load_model(best, build_from_spec)
    assert meta["step"] == 5

    # killed between the two renames: the .pt is new, its sidecar still staged; reading finishes
    replace = os.replace

    def killed_before_sidecar(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(training.os, "replace", killed_before_sidecar)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(best, {"model": model.state_dict()}, {"spec": SPEC, "step": 42})
    monkeypatch.undo()
    assert json.loads(sidecar.read_text())["step"] == 5  # stale sidecar on disk
    _, meta = load_model(best, build_from_spec)
    assert meta["step"] == 42 and json.loads(sidecar.read_text())["step"] == 42


def test_nan_in_data_names_step_zero(tmp_path):
    data = make_data()
    data.x[:] = np.nan
    with pytest.raises(NonFiniteError, match="step 0: loss is not finite"):
        run(tmp_path, 5, train_data=data)
    assert not (tmp_path / "last.pt").exists()


def test_nan_gradient_names_the_parameter_and_keeps_the_checkpoint(tmp_path):
    run(tmp_path, 5)
    kept = (tmp_path / "last.pt").read_bytes()

    def build():
        model = build_from_spec(SPEC)
        model.log_sigma.register_hook(lambda grad: grad * float("nan"))
        return model

    cfg = {**CFG, "steps": 10}
    with pytest.raises(NonFiniteError, match="step 5: gradient of log_sigma is not finite"):
        fit(build, SPEC, make_data(), make_data(12, seed=1), cfg, tmp_path, 0)
    assert (tmp_path / "last.pt").read_bytes() == kept


def test_prefetching_workers_give_identical_weights(tmp_path):
    data = make_data()
    sync, _ = run(tmp_path / "sync", 12, train_data=data)
    assert data.calls == 12
    pooled, trained = run(tmp_path / "pool", 12, workers=2, train_data=data)
    assert data.calls == 12, "the training batches were read in this process, not in workers"
    assert pooled == sync and trained == 12
    _assert_same_weights(tmp_path / "sync" / "last.pt", tmp_path / "pool" / "last.pt")
    assert _history(tmp_path / "sync") == _history(tmp_path / "pool")


def test_load_model_names_what_is_missing_or_mismatched(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"best.pt: checkpoint not found \(train the model first\)"
    ):
        load_model(tmp_path / "best.pt", build_from_spec)
    run(tmp_path, 5)
    sidecar = tmp_path / "best.json"
    text = sidecar.read_text()
    sidecar.write_text(text.replace('"step": 5', '"step": 6'))
    with pytest.raises(CheckpointError, match="best.json does not match best.pt"):
        load_model(tmp_path / "best.pt", build_from_spec)
    sidecar.unlink()
    with pytest.raises(FileNotFoundError, match="best.json: checkpoint metadata not found"):
        load_model(tmp_path / "best.pt", build_from_spec)


def test_unreadable_last_checkpoint_is_not_overwritten(tmp_path):
    run(tmp_path, 5)
    (tmp_path / "last.json").unlink()
    kept = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match="cannot resume: .*last.json: .*not found") as error:
        run(tmp_path, 10)
    assert f"delete {tmp_path / 'last.pt'} and rerun: training restarts from step 0" in str(
        error.value
    )
    assert (tmp_path / "last.pt").read_bytes() == kept


def _damage(checkpoint: Path, how: str) -> Path:
    """Damage `checkpoint` or its sidecar as a full disk, a killed copy or bit rot would."""
    target = checkpoint.with_suffix(".json") if how == "garbled sidecar" else checkpoint
    data = target.read_bytes()
    target.write_bytes(
        {
            "truncated": data[: len(data) // 2],
            "cut short": data[:-10],
            "empty": b"",
            "garbage": b"not a checkpoint" * 8,
            "garbled sidecar": data[: len(data) // 2],
        }[how]
    )
    return target


DAMAGES = ["truncated", "cut short", "empty", "garbage", "garbled sidecar"]


@pytest.mark.parametrize("how", DAMAGES)
def test_corrupt_best_checkpoint_is_one_line_naming_it_and_the_fix(tmp_path, how):
    """The evaluation jobs load best.pt: a damaged one says which file, and to rerun the fit."""
    run(tmp_path, 5)
    damaged = _damage(tmp_path / "best.pt", how)
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "best.pt", build_from_spec)
    message = str(error.value)
    assert "\n" not in message and str(damaged) in message
    assert "rerun the fit job (`snakemake --forcerun fit`" in message


@pytest.mark.parametrize("how", DAMAGES)
def test_corrupt_last_checkpoint_is_one_line_and_its_fix_works(tmp_path, how):
    """A damaged last.pt stops the resume with one line naming it; doing what it says works."""
    run(tmp_path, 5)
    damaged = _damage(tmp_path / "last.pt", how)
    kept = damaged.read_bytes()
    with pytest.raises(CheckpointError) as error:
        run(tmp_path, 10)
    message = str(error.value)
    assert "\n" not in message and str(damaged) in message
    last = tmp_path / "last.pt"
    assert f"delete {last} and rerun: training restarts from step 0" in message
    assert damaged.read_bytes() == kept  # nothing overwritten before the user decides
    last.unlink()
    summary, trained = run(tmp_path, 10)
    assert trained == 10 and summary["steps"] == 10


def test_best_checkpoint_is_rebuilt_from_last_after_snakemake_removed_it(tmp_path, monkeypatch):
    """Snakemake deletes a failed fit job's declared outputs (best.pt, best.json), not last.pt.

    The rerun resumes from last.pt and must write best.pt back as it was, also when the best
    validation lies before the last one (else the job ends without its output).
    """
    losses = iter([1.0, 0.5, 0.9])  # the best is at step 10, the last validation at 15
    monkeypatch.setattr(training, "_validation_loss", lambda *args, **kwargs: next(losses))
    run(tmp_path, 15)
    best = tmp_path / "best.pt"
    kept, kept_meta = _weights(best), json.loads(best.with_suffix(".json").read_text())
    assert kept_meta["step"] == 10
    best.unlink()
    best.with_suffix(".json").unlink()
    summary, trained = run(tmp_path, 15)
    assert trained == 0 and summary["best_val_bpd"] == training.bits_per_dim(0.5)
    _, meta = load_model(best, build_from_spec)
    assert meta == kept_meta
    restored = _weights(best)
    assert all(torch.equal(restored[key], kept[key]) for key in kept)
    last = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert not torch.equal(last["model"]["mean.weight"], kept["mean.weight"])


def test_last_checkpoint_stores_the_current_best_weights_once(tmp_path):
    """When the last validation is the best, last.pt's copy of the best shares its storage."""
    run(tmp_path, 5)
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    for key, tensor in state["model"].items():
        shared = state["best_model"][key].untyped_storage().data_ptr()
        assert shared == tensor.untyped_storage().data_ptr(), key


def test_constant_schedule_keeps_the_learning_rate(tmp_path):
    """schedule: constant (seed 000 App. A.2's fixed lr) never decays, even on a plateau."""
    lrs = {}
    for schedule in ("plateau", "constant"):
        run(tmp_path / schedule, 15, plateau_threshold=1e4, plateau_patience=0, schedule=schedule)
        lrs[schedule] = {float(r.split(",")[3]) for r in _history(tmp_path / schedule)[1:]}
    assert len(lrs["plateau"]) > 1  # every validation is a plateau here: the lr drops
    assert len(lrs["constant"]) == 1
