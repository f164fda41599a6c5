"""Resumable, checksummed HTTP downloads with a progress bar.

A partial file `NAME.part` is continued with an HTTP Range request; the finished file is
verified against its checksum before it is moved into place, so a corrupt download never
looks like a finished one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import requests
from tqdm import tqdm

CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A downloaded file does not match its published checksum."""


def file_digest(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(
    url: str, dest: Path, checksum: str | None, algorithm: str = "md5", timeout: float = 60.0
) -> Path:
    """Download `url` to `dest`, resuming `dest.part`; verify `checksum` (hex) when given.

    Raises ChecksumError naming the file and both digests; the corrupt part file is removed so
    the next attempt starts clean. A finished `dest` with the right checksum is not fetched again.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (checksum is None or file_digest(dest, algorithm) == checksum):
        return dest
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if offset and response.status_code == 200:  # server ignored the range: start over
            offset = 0
        elif offset and response.status_code == 416:  # nothing left to fetch
            response = None
        if response is not None:
            response.raise_for_status()
            total = response.headers.get("Content-Length")
            total = int(total) + offset if total is not None else None
            with (
                open(part, "ab" if offset else "wb") as f,
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name) as bar,
            ):
                for block in response.iter_content(CHUNK):
                    f.write(block)
                    bar.update(len(block))
    if checksum is not None:
        got = file_digest(part, algorithm)
        if got != checksum:
            part.unlink()
            raise ChecksumError(
                f"{dest}: {algorithm} {got} != expected {checksum} (from {url}); "
                "the partial file was removed, run the download again"
            )
    part.replace(dest)
    return dest
