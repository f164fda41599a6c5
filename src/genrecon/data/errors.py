"""Errors about data files and data sources that the user can fix, each one line saying how.

Why a module of its own: a truncated download or a corrupt prepared file must stop a job with
the file's name and the next step to take, not with a traceback from deep inside h5py or gzip
that leaves the user guessing which of thousands of files is bad. Every reader that opens a data
file turns a failure to read it into a `DataFileError`; the command line prints any `DataError`
as its one-line message, without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # h5py is imported where a file is opened: the CLI imports DataError early
    import h5py

#: what to do about a file a finished download job left behind
REFETCH = "delete it and rerun the download job (`snakemake --forcerun download`)"
#: what to do about a file the prepare job wrote (or generated, at smoke scale)
REPREPARE = "rerun the prepare job (`snakemake --forcerun prepare`)"


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


class DataError(Exception):
    """A problem with the data or where it comes from that the user can fix.

    Its message says what is wrong and what to do; the command line prints it without a
    traceback (a traceback would only bury the one line that matters).
    """


class DataFileError(DataError, ValueError):
    """A data file that cannot be used: "<path>: <what is wrong>; <what to do>", one line.

    A ValueError, so code that caught the readers' former ValueErrors keeps working.
    """

    def __init__(self, path: str | Path, problem: str, action: str):
        self.path, self.problem, self.action = Path(path), one_line(problem), one_line(action)
        super().__init__(f"{path}: {self.problem}; {self.action}")


def open_h5(path: str | Path, action: str) -> h5py.File:
    """Open an HDF5 file for reading; a missing, truncated or non-HDF5 file is a DataFileError.

    h5py reports a truncated file at open (the superblock records the file's end), so this is
    where a download cut short or a prepare job killed mid-write shows up.
    """
    import h5py

    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise DataFileError(path, "no such file", action) from None
    except OSError as error:
        raise DataFileError(
            path, f"not a readable HDF5 file, truncated or corrupt ({one_line(error)})", action
        ) from None


def require_keys(f: h5py.File | h5py.Group, keys: tuple[str, ...], what: str, action: str) -> None:
    """Every one of `keys` is in `f`, else a DataFileError naming the first one missing."""
    for key in keys:
        if key not in f:
            raise DataFileError(f.file.filename, f"no {key!r} ({what})", action)
