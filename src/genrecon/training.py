"""One training loop for every trainable method: Adam, plateau LR decay, gradient clipping.

The loop knows nothing about the model beyond a small contract, so cINN, iUNet, SNF, VAE, Glow
and patchNR all train (and resume, and fail) the same way:

- the model is a `torch.nn.Module` with `loss(batch, generator) -> (b,)`: one loss per sample.
  The loop trains on the mean. `generator` is a CPU `torch.Generator` during training, from
  which the model draws any training noise or dequantisation (on the CPU, then moved to the
  batch's device, so the numbers do not depend on the device); `None` means evaluation (no
  noise), and the validation loss is the mean per-sample loss over the validation set;
- the data has `__len__` and `batch(indices: np.ndarray) -> dict[str, torch.Tensor]` (float32,
  CPU), each row depending only on its own index (so a batch may be read in pieces).

Reproducibility is the point of the design: the RNG sequence is exactly that of the loop this
replaces (`genrecon.train`): `torch.manual_seed(seed)`, build, then per step the batch indices
and the model's noise from one generator seeded with `seed`. `last.pt` holds everything that
steers the trajectory (weights, Adam, scheduler, generator), so an interrupted job, or one
asked for more steps, continues bit-identically to an uninterrupted run. It also holds the best
weights so far: Snakemake deletes a failed job's declared outputs (`best.pt`, not `last.pt`),
and the resumed job writes `best.pt` back from them.

Checkpoints are written atomically and hold tensors and plain numbers only
(`torch.load(weights_only=True)`); what is not a tensor (the architecture spec, step, best loss,
history, fingerprint) is in a JSON sidecar (`best.json`, `last.json`) that the `.pt` names by
its SHA-256, so a checkpoint and a sidecar from different saves are never mixed silently. A
truncated or corrupt checkpoint, or a garbled sidecar, is one line naming the file and what to
do (`remedy`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from genrecon.atomic import atomic_write, fsync_dir, remove_stale_temporaries

#: sidecar format version: bump when the JSON layout changes
FORMAT = 1

REQUIRED = ("steps", "batch_size", "lr", "weight_decay", "clip", "val_every", "plateau_patience")
#: optional settings; these defaults reproduce the loop of `genrecon.train` exactly
DEFAULTS: dict[str, Any] = {
    "plateau_factor": 0.8,
    "plateau_threshold": 1e-4,  # torch's default (relative)
    "plateau_cooldown": 0,
    # the scheduler steps on val_loss + offset, in the loss's units (nats/dim for a flow): a
    # relative threshold flips its meaning on a negative loss, so the authors stepped on
    # bits/dim + 8, i.e. offset 8 ln 2 nats/dim (relative thresholds are scale-free)
    "plateau_offset": 0.0,
    # "constant": keep the learning rate fixed (seed 000 App. A.2 trains MNIST at a fixed 1e-4)
    "schedule": "plateau",
    "loader_workers": 0,
    "val_batch_size": 64,
    "amp": None,  # None: bf16 autocast on CUDA, off on the CPU
    "tf32": None,  # None: TF32 matmuls and convolutions on CUDA
}
#: settings that change no number, so a changed value still resumes
NOT_FINGERPRINTED = frozenset({"steps", "loader_workers"})
HISTORY_FIELDS = ("step", "train_bpd", "val_bpd", "lr")
#: test hook: seconds to sleep after every training step, so that a test can SIGKILL a real
#: `genrecon fit` job mid-run (tests/test_pipeline_faults.py); unset, i.e. 0, in real use
STEP_SLEEP_ENV = "GENRECON_TEST_STEP_SLEEP"


class Data(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]: ...


class NonFiniteError(FloatingPointError):
    """Training produced NaN or inf."""


class CheckpointError(RuntimeError):
    """A checkpoint and its JSON sidecar do not belong together, or cannot be resumed."""


def bits_per_dim(nll_nats_per_dim: float) -> float:
    return nll_nats_per_dim / math.log(2.0)


def settings(cfg: dict) -> dict:
    """`cfg` with defaults filled in; unknown keys are refused (a typo must not go unnoticed)."""
    missing = [key for key in REQUIRED if key not in cfg]
    if missing:
        raise KeyError(f"training settings lack {missing}")
    unknown = sorted(set(cfg) - set(REQUIRED) - set(DEFAULTS))
    if unknown:
        raise KeyError(f"unknown training settings {unknown}; known: {[*REQUIRED, *DEFAULTS]}")
    return {**DEFAULTS, **cfg}


def fingerprint_inputs(spec: dict, cfg: dict, seed: int, data_id: str | None) -> dict:
    """What decides whether `last.pt` may be continued: all but `steps` and the worker count."""
    trajectory = {k: v for k, v in settings(cfg).items() if k not in NOT_FINGERPRINTED}
    return {"spec": spec, "train": trajectory, "seed": seed, "data": data_id}


def fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


# --- atomic checkpoints with JSON sidecars ---------------------------------------------------


def sidecar(checkpoint: Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def _pending(checkpoint: Path) -> Path:
    return checkpoint.with_name(f".{sidecar(checkpoint).name}.pending")


def _meta_text(meta: dict) -> bytes:
    return (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()


def save_checkpoint(checkpoint: Path, tensors: dict, meta: dict) -> None:
    """Write `checkpoint` (tensors, plain numbers) and its sidecar so they always match.

    Two files cannot be replaced in one atomic step, so the `.pt` is the commit point: the new
    sidecar is first staged (`.best.json.pending`), then the `.pt`, naming the sidecar's
    SHA-256, replaces the old one, then the staged sidecar is renamed into place. Killed
    before the `.pt` is replaced, the old pair stands; killed after, `read_meta` finishes the
    rename.
    """
    checkpoint = Path(checkpoint)
    text = _meta_text(meta)
    pending = _pending(checkpoint)
    atomic_write(pending, lambda f: f.write(text))
    payload = {**tensors, "meta_sha256": hashlib.sha256(text).hexdigest()}
    atomic_write(checkpoint, lambda f: torch.save(payload, f))
    os.replace(pending, sidecar(checkpoint))
    fsync_dir(checkpoint.parent)


def remedy(checkpoint: Path) -> str:
    """What to do about an unusable checkpoint, for the one-line error naming it.

    `last.pt` is only a resume point: deleting it costs the steps run so far. `best.pt` is the
    fit job's output, which `fit` rebuilds from the copy of the best weights in `last.pt`
    (or retrains), so the job is rerun rather than the file deleted by hand.
    """
    if Path(checkpoint).name.startswith("last"):
        return f"delete {checkpoint} and rerun: training restarts from step 0"
    return (
        "rerun the fit job (`snakemake --forcerun fit`, or delete it and rerun snakemake): "
        "it is rebuilt from last.pt, or retrained"
    )


def _one_line(error: BaseException, limit: int = 120) -> str:
    """`Type: first line of the message`, short: torch's load errors run to paragraphs."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_meta(checkpoint: Path, state: dict) -> dict:
    """The sidecar of `checkpoint` (whose loaded tensors are `state`), checked against it."""
    checkpoint = Path(checkpoint)
    json_path, pending = sidecar(checkpoint), _pending(checkpoint)
    digest = state.get("meta_sha256")
    if digest is None:
        raise CheckpointError(
            f"{checkpoint}: no sidecar digest (written by an older genrecon?); {remedy(checkpoint)}"
        )
    for candidate in (json_path, pending):
        if candidate.exists():
            text = candidate.read_bytes()
            if hashlib.sha256(text).hexdigest() == digest:
                if candidate == pending:  # interrupted between the two renames: finish it
                    with contextlib.suppress(OSError):
                        os.replace(pending, json_path)
                return json.loads(text)
    if not json_path.exists():
        raise FileNotFoundError(
            f"{json_path}: checkpoint metadata not found beside {checkpoint.name} (it holds the "
            f"architecture); copy it with the checkpoint, or {remedy(checkpoint)}"
        )
    raise CheckpointError(
        f"{json_path} does not match {checkpoint.name} (garbled, or from another save); "
        f"restore the pair together, or {remedy(checkpoint)}"
    )


def _load_state(checkpoint: Path) -> dict:
    """The tensors of `checkpoint` (`weights_only`: a checkpoint cannot run code when loaded).

    A truncated or corrupt file raises one of many exceptions from deep inside torch (OSError,
    EOFError, KeyError, UnpicklingError, RuntimeError, ...), with messages that name neither
    the file nor a way out; they become one `CheckpointError` line that names both.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found (train the model first)")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"{checkpoint}: truncated or corrupt checkpoint ({_one_line(error)}); "
            f"{remedy(checkpoint)}"
        ) from error
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"{checkpoint}: not a genrecon checkpoint (no model weights); {remedy(checkpoint)}"
        )
    return state


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    checkpoint: Path,
    build_from_spec: Callable[[dict], torch.nn.Module],
    device: str | torch.device | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model, in eval mode on `device` (default: CUDA if available).

    The architecture comes from the JSON sidecar, the weights from the `.pt`; the sidecar is
    returned as `meta` (spec, step, best validation loss, fingerprint, ...).
    """
    state = _load_state(checkpoint)
    meta = read_meta(checkpoint, state)
    model = build_from_spec(meta["spec"])
    model.load_state_dict(state["model"])
    model.eval()
    return model.to(default_device() if device is None else device), meta


# --- reading batches, synchronously or ahead in worker processes ------------------------------


class _SyncReader:
    """Reads a batch when it is asked for: the reference path."""

    def __init__(self, data: Data) -> None:
        self.data = data

    def submit(self, indices: np.ndarray) -> np.ndarray:
        return indices

    def result(self, handle: np.ndarray) -> dict[str, torch.Tensor]:
        return self.data.batch(handle)


_WORKER_DATA: dict[str, Data] = {}


def _worker_init(data: dict[str, Data]) -> None:
    torch.set_num_threads(1)  # as DataLoader workers: the main process owns the cores
    _WORKER_DATA.update(data)


def _worker_read(key: str, indices: np.ndarray) -> dict[str, np.ndarray]:
    # numpy travels by value through the pipe: no shared-memory file descriptors to run out of
    return {k: v.numpy() for k, v in _WORKER_DATA[key].batch(indices).items()}


class _PoolReader:
    """Reads batches in `workers` processes, each batch split across them.

    The main process draws each batch's indices from the training generator, in the order of
    the synchronous loop, and submits them here as soon as they are known; the workers read
    while the main process computes. Rows depend only on their own index, so the reassembled
    batch is bit-identical to `data.batch(indices)`, whatever the worker count.

    `torch.utils.data.DataLoader` cannot do this: it pulls indices from its sampler ahead of
    time (`prefetch_factor * num_workers` at once), and these indices do not exist until the
    model has drawn the previous step's noise from the same generator.
    """

    def __init__(self, pool: ProcessPoolExecutor, key: str, workers: int, pin: bool) -> None:
        self.pool, self.key, self.workers, self.pin = pool, key, workers, pin

    def submit(self, indices: np.ndarray) -> list[Future]:
        chunks = np.array_split(indices, min(self.workers, len(indices)))
        return [self.pool.submit(_worker_read, self.key, chunk) for chunk in chunks]

    def result(self, handle: list[Future]) -> dict[str, torch.Tensor]:
        parts = [future.result() for future in handle]
        batch = {k: torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in parts[0]}
        return {k: v.pin_memory() for k, v in batch.items()} if self.pin else batch


@contextlib.contextmanager
def _readers(
    train: Data, val: Data, workers: int, pin: bool
) -> Iterator[tuple[_SyncReader | _PoolReader, _SyncReader | _PoolReader]]:
    if workers <= 0:
        yield _SyncReader(train), _SyncReader(val)
        return
    # fork shares the data objects (h5py handles included) without pickling them
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_worker_init,
        initargs=({"train": train, "val": val},),
    )
    try:
        yield _PoolReader(pool, "train", workers, pin), _PoolReader(pool, "val", workers, pin)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _per_sample(losses: torch.Tensor, size: int) -> torch.Tensor:
    if losses.shape != (size,):
        shape = tuple(losses.shape)
        raise ValueError(f"model.loss must return one loss per sample, ({size},); got {shape}")
    return losses.float()  # bf16 under autocast; float32 (unchanged) otherwise


@torch.no_grad()
def _validation_loss(
    model: torch.nn.Module,
    reader: _SyncReader | _PoolReader,
    size: int,
    device: torch.device,
    batch_size: int = 64,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """Mean per-sample loss without training noise, in the order of `genrecon.train`.

    Batches are summed in order, so the value does not depend on the worker count; a few
    batches are read ahead.
    """
    model.eval()
    starts = iter(range(0, size, batch_size))
    ahead: deque = deque()

    def submit_next() -> None:
        start = next(starts, None)
        if start is not None:
            ahead.append(reader.submit(np.arange(start, min(start + batch_size, size))))

    for _ in range(4):
        submit_next()
    total = 0.0
    while ahead:
        batch = reader.result(ahead.popleft())
        submit_next()
        rows = len(next(iter(batch.values())))
        with autocast():
            losses = model.loss(_to_device(batch, device), None)
        total += _per_sample(losses, rows).sum().item()
    model.train()
    return total / size


# --- the loop --------------------------------------------------------------------------------


def _check_finite(step: int, last: Path, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            kept = f"; the last good checkpoint {last} is kept" if last.exists() else ""
            raise NonFiniteError(
                f"step {step}: {name} is not finite (NaN or inf); check the data, or lower "
                f"train.lr or train.clip{kept}"
            )


def _clip_checked(step: int, model: torch.nn.Module, clip: float) -> None:
    """`clip_grad_norm_`, split so a non-finite gradient is named before clipping smears it.

    The total norm is finite iff every gradient is (barring an overflow of the norm itself),
    so the per-parameter search, one device sync per parameter, runs only when it is not.
    """
    parameters = list(model.parameters())
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
    if not torch.isfinite(norm):
        for name, parameter in model.named_parameters():
            if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
                raise NonFiniteError(f"step {step}: gradient of {name} is not finite (NaN or inf)")
    torch.nn.utils.clip_grads_with_norm_(parameters, clip, norm)


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Which settings differ, for the message that training starts over."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


def _resume_state(last: Path, fp: str, inputs: dict) -> tuple[dict, dict] | None:
    """(tensors, sidecar) of `last.pt` if it may be continued; None (said why) to start over."""
    if not last.exists():
        return None
    try:
        state = _load_state(last)
        meta = read_meta(last, state)
    except (FileNotFoundError, CheckpointError) as error:  # each names the file and the remedy
        raise CheckpointError(f"cannot resume: {error}") from error
    if meta.get("fingerprint") != fp:
        changed = _changes(meta.get("fingerprint_inputs", {}), inputs) or ["unrecorded"]
        _say(
            f"{last}: settings changed ({'; '.join(changed)}); starting over from step 0 "
            f"(fingerprint {meta.get('fingerprint')} -> {fp})"
        )
        return None
    return state, meta


def fit(
    build: Callable[[], torch.nn.Module],
    spec: dict,
    train_data: Data,
    val_data: Data,
    cfg: dict,
    out_dir: Path,
    seed: int,
    log_metric: Callable[[str, float, int], None] | None = None,
    name: str = "",
    data_id: str | None = None,
) -> dict:
    """Train one model; returns {best_val_bpd, steps, parameters}.

    `build()` makes the model (after `torch.manual_seed(seed)`); `spec` is its JSON
    architecture, stored beside each checkpoint for `load_model`. `cfg` holds `REQUIRED` and
    optionally `DEFAULTS` keys. `data_id` (e.g. a DVC hash) joins the fingerprint, so training
    on other data starts over. Writes `best.pt`/`best.json` (best validation loss),
    `last.pt`/`last.json` (every validation: what a resume needs) and `history.csv` to `out_dir`;
    an existing `last.pt` with the same fingerprint is continued, also when `steps` was raised.
    Bits/dim is the loss in bits (nats / ln 2), whatever the loss is.
    """
    cfg = settings(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # left by a SIGKILL during a write
    step_sleep = float(os.environ.get(STEP_SLEEP_ENV) or 0)
    try:
        json.dumps(spec)
    except TypeError as error:
        raise TypeError(f"spec must be JSON-serialisable: {error}") from error
    inputs = fingerprint_inputs(spec, cfg, seed, data_id)
    fp = fingerprint(inputs)

    device = default_device()
    cuda = device.type == "cuda"
    amp = cuda and cfg["amp"] is not False
    if cuda and cfg["tf32"] is not False:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast() -> contextlib.AbstractContextManager:
        if amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    torch.manual_seed(seed)
    model = build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        factor=cfg["plateau_factor"],
        patience=cfg["plateau_patience"],
        threshold=cfg["plateau_threshold"],
        cooldown=cfg["plateau_cooldown"],
    )
    generator = torch.Generator().manual_seed(seed)
    step, best, history = 0, math.inf, []
    parameters = sum(p.numel() for p in model.parameters())
    common = {
        "format": FORMAT,
        "name": name,
        "spec": spec,
        "seed": seed,
        "fingerprint": fp,
        "fingerprint_inputs": inputs,
        "parameters": parameters,
    }
    # the best weights so far (on the CPU), kept for last.pt: Snakemake deletes best.pt, a
    # declared output, when the job fails, and a resume must be able to write it back
    best_step: int | None = None
    best_weights: dict[str, torch.Tensor] | None = None

    def save_best(weights: dict[str, torch.Tensor], at: int) -> None:
        meta = {**common, "kind": "best", "step": at, "best": best}
        save_checkpoint(
            out_dir / "best.pt", {"model": weights}, {**meta, "best_val_bpd": bits_per_dim(best)}
        )

    last = out_dir / "last.pt"
    resumed = _resume_state(last, fp, inputs)
    if resumed is not None:
        state, meta = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        step, history = meta["step"], meta["history"]
        best = math.inf if meta["best"] is None else meta["best"]
        best_step = meta.get("best_step")
        if best_step is not None and "best_model" in state:
            best_weights = state["best_model"]
            save_best(best_weights, best_step)  # as it was, whatever removed or tore it
        _say(f"resuming {out_dir} from step {step}")

    def draw() -> np.ndarray:
        return torch.randint(len(train_data), (cfg["batch_size"],), generator=generator).numpy()

    model.train()
    running: list[float] = []
    steps = cfg["steps"]
    workers = cfg["loader_workers"]
    with (
        _readers(train_data, val_data, workers, pin=cuda) as (train_reader, val_reader),
        tqdm(total=steps, initial=step, desc=f"train {name}".strip()) as bar,
    ):
        pending = None
        while step < steps:
            if pending is None:
                pending = train_reader.submit(draw())
            batch = _to_device(train_reader.result(pending), device)
            with autocast():
                losses = model.loss(batch, generator)
            loss = _per_sample(losses, cfg["batch_size"]).mean()
            # the model has drawn this step's noise: the next indices are now known, so the
            # workers read them during backward (the generator state to save is this one)
            generator_state = generator.get_state()
            pending = train_reader.submit(draw()) if workers > 0 and step + 1 < steps else None
            _check_finite(step, last, loss=loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _clip_checked(step, model, cfg["clip"])
            optimizer.step()
            step += 1
            running.append(loss.item())
            bar.update(1)
            if step_sleep:
                time.sleep(step_sleep)
            if step % 50 == 0 and log_metric:
                log_metric("train_bpd", bits_per_dim(float(np.mean(running[-50:]))), step)
            if step % cfg["val_every"] == 0 or step == steps:
                val = _validation_loss(
                    model, val_reader, len(val_data), device, cfg["val_batch_size"], autocast
                )
                if cfg["schedule"] == "plateau":
                    scheduler.step(val + cfg["plateau_offset"])
                row = {
                    "step": step,
                    "train_bpd": bits_per_dim(float(np.mean(running))),
                    "val_bpd": bits_per_dim(val),
                    "lr": optimizer.param_groups[0]["lr"],
                }
                running = []
                history.append(row)
                bar.set_postfix(val_bpd=f"{row['val_bpd']:.3f}")
                if log_metric:
                    log_metric("val_bpd", row["val_bpd"], step)
                    log_metric("lr", row["lr"], step)
                weights = model.state_dict()
                if val < best:
                    best, best_step = val, step
                    best_weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
                    save_best(weights, step)
                tensors = {
                    "model": weights,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator_state,
                }
                if best_weights is not None:
                    # the same tensors as "model" when this step is the best: torch.save
                    # stores shared storage once, so last.pt grows only once the best is older
                    tensors["best_model"] = weights if best_step == step else best_weights
                save_checkpoint(
                    last,
                    tensors,
                    {
                        **common,
                        "kind": "last",
                        "step": step,
                        "best": best if math.isfinite(best) else None,
                        "best_step": best_step,
                        "history": history,
                        "train": cfg,
                    },
                )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(out_dir / "history.csv", lambda f: f.write(buffer.getvalue().encode()))
    return {"best_val_bpd": bits_per_dim(best), "steps": step, "parameters": parameters}
