"""Atomic file writes: a job that fails leaves the old file or none, never a torn one.

Snakemake trusts every output file that exists with a newer time stamp than its inputs, and a
job killed mid-write (SIGKILL, a node lost, a full disk) would otherwise leave a half-written
`summary.json` or `MANIFEST.json` that a rerun reads as finished. So every output is written to
a temporary file in the same directory (the same file system, so the rename is atomic),
flushed and fsynced, then renamed over its path with `os.replace`, and the directory is fsynced
so that the rename survives a power cut.

Temporary files are named `.<name>.<random>.tmp` (hidden, and never a declared output). An
exception removes its temporary file; only a SIGKILL can leave one behind, which
`remove_stale_temporaries` sweeps away (the training loop does at its start).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_path",
    "atomic_write",
    "fsync_dir",
    "is_temporary",
    "remove_stale_temporaries",
    "write_bytes_atomic",
    "write_text_atomic",
]

#: suffix of every temporary file this module creates
TMP_SUFFIX = ".tmp"
#: `.<name>.<mkstemp's random part>.tmp`, optionally followed by a writer's own extension
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: `mkstemp` creates 0600 files; outputs get the mode `open` would give them (read once, at
#: import: reading the umask means setting it, which is not thread-safe)
MODE = 0o666 & ~_umask()


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write by name; renamed over `path` if the body succeeds.

    For writers that want a file name rather than a file object (papermill). `suffix` is added
    after `.tmp` for writers that insist on an extension (`.ipynb`). The writer must have
    closed the file when the body ends; it is then fsynced, renamed and the directory fsynced.
    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX + suffix
    )
    tmp = Path(name)
    try:
        os.fchmod(fd, MODE)
        os.close(fd)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it over `path`.

    A crash or an exception at any point leaves either the old file or the new one under
    `path`, never a half-written one; the parent directory is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: Path | str, text: str, encoding: str = "utf-8") -> None:
    """`Path.write_text`, atomically; text is written as given (no newline translation)."""
    write_bytes_atomic(path, text.encode(encoding))


def is_temporary(path: Path | str) -> bool:
    """Whether `path` is named as this module's temporary files are."""
    return _TEMPORARY.match(Path(path).name) is not None


def remove_stale_temporaries(directory: Path | str) -> None:
    """Remove the temporary files a SIGKILL left in `directory` (not below it)."""
    for stale in Path(directory).iterdir():
        if is_temporary(stale) and stale.is_file():
            stale.unlink(missing_ok=True)
