"""Resumable, checksummed HTTPS downloads with a progress bar, and pinned Zenodo records.

A partial file `NAME.part` is continued with an HTTP Range request; the finished file is
verified against its checksum before it is moved into place, so a corrupt download never
looks like a finished one. A connection lost mid-file is resumed from the part file.

Only https is accepted: the checksums protect the bytes, but the record metadata that supplies
them (Zenodo's API) and presigned links must not be open to anyone on the path. There is
deliberately no switch to allow plain http; tests use a local https server.

URLs are never printed whole: presigned links (fastMRI's) carry their signature in the query
string, so messages show them through `redact`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import requests
import yaml
from tqdm import tqdm

from genrecon.data.errors import DataError, DataFileError

CHUNK = 1 << 20
#: attempts after a lost connection, each resuming from the part file; waits grow by this (s)
RETRIES = 3
RETRY_WAIT = 2.0
#: pinned Zenodo records (package data): zenodo_<record>.json
PINS = Path(__file__).parent / "pins"
PIN_DIR_IN_REPO = "src/genrecon/data/pins/"


class ChecksumError(DataFileError):
    """A downloaded file does not match its published checksum."""


class DownloadError(DataFileError):
    """A download failed: the server refused it or the connection could not be resumed."""


class InsecureURLError(DataError, ValueError):
    """A download address that is not https."""


class PinMismatchError(DataError):
    """A Zenodo record's files differ from the pin committed in the repository."""


def redact(url: str) -> str:
    """`url` without what may be secret: user:password@, the query string and the fragment.

    A query string is replaced by `?<redacted>` rather than dropped, so the reader can tell
    that the link had one. A URL with none of these is returned unchanged.
    """
    parts = urllib.parse.urlsplit(url)
    if not (parts.query or parts.fragment or "@" in parts.netloc):
        return url
    host = parts.netloc.rpartition("@")[2]
    query = "?<redacted>" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + query


def redact_urls(value: Any) -> Any:
    """Settings (nested dicts and lists) with every URL in them `redact`ed, for logging.

    The fastMRI `urls` may sit inline in params.yaml; a job that logs its settings (MLflow
    params) must not copy their signatures into the tracking store.
    """
    if isinstance(value, dict):
        return {key: redact_urls(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_urls(item) for item in value]
    if isinstance(value, str) and "://" in value:
        return redact(value)
    return value


_QUERY = re.compile(r"\?[^\s'\"<>)]+")
_USERINFO = re.compile(r"(//)[^/\s@'\"]+@")


def redact_text(text: str) -> str:
    """A library's error text with any URL's query string and credentials redacted.

    requests/urllib3 put the full URL (signature included) into their messages.
    """
    return _USERINFO.sub(r"\1", _QUERY.sub("?<redacted>", " ".join(str(text).split())))


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {redact_text(str(error))}"


def require_https(url: str, setting: str) -> None:
    """Refuse any scheme but https, naming the (redacted) URL and the setting it came from."""
    scheme = urllib.parse.urlsplit(str(url)).scheme.lower()
    if scheme != "https":
        raise InsecureURLError(
            f"{setting} = {redact(str(url))}: only https downloads are accepted "
            f"(scheme {scheme or 'none'!r}); give the https address"
        )


def file_digest(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class _Interrupted(Exception):
    """The connection broke while the body was streaming (the part file holds what arrived)."""


def _fetch(url: str, part: Path, name: str, timeout: float) -> None:
    """One attempt: GET the rest of `url` after what `part` holds, appending to it."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if offset and response.status_code == 416:  # nothing left to fetch
            return
        if offset and response.status_code == 200:  # server ignored the range: start over
            offset = 0
        response.raise_for_status()
        total = response.headers.get("Content-Length")
        total = int(total) + offset if total is not None else None
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name) as bar,
        ):
            try:
                for block in response.iter_content(CHUNK):
                    f.write(block)
                    bar.update(len(block))
            except requests.RequestException as error:
                raise _Interrupted(error) from error


def download(
    url: str,
    dest: Path,
    checksum: str | None,
    algorithm: str = "md5",
    timeout: float = 60.0,
    setting: str = "the download URL",
) -> Path:
    """Download `url` to `dest`, resuming `dest.part`; verify `checksum` (hex) when given.

    `setting` names where the URL came from, for the errors. A connection lost mid-file is
    resumed from the part file (RETRIES times); an HTTP error, a failed TLS check or a
    connection that cannot be resumed raises DownloadError, keeping the part file so the next
    run resumes. A checksum mismatch raises ChecksumError naming the file and both digests;
    the corrupt part file is removed so the next attempt starts clean. A finished `dest` with
    the right checksum is not fetched again.
    """
    require_https(url, setting)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (checksum is None or file_digest(dest, algorithm) == checksum):
        return dest
    part = dest.with_name(dest.name + ".part")
    for attempt in range(RETRIES + 1):
        try:
            _fetch(url, part, dest.name, timeout)
            break
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else "?"
            reason = error.response.reason if error.response is not None else ""
            raise DownloadError(
                dest,
                f"{redact(url)} answered HTTP {status} {reason}",
                f"check {setting} (an expired or mistyped link?) and rerun `snakemake`",
            ) from None
        except requests.exceptions.SSLError as error:  # before any byte: not worth retrying
            raise DownloadError(
                dest,
                f"TLS check of {redact(url)} failed ({describe(error)})",
                f"check {setting}; behind a proxy that re-signs traffic, point "
                "REQUESTS_CA_BUNDLE at its certificate",
            ) from None
        except (_Interrupted, requests.RequestException) as error:
            cause = error.__cause__ if isinstance(error, _Interrupted) else error
            have = part.stat().st_size if part.exists() else 0
            if attempt == RETRIES:
                last = describe(cause or error)
                raise DownloadError(
                    dest,
                    f"download from {redact(url)} failed after {RETRIES + 1} attempt(s), "
                    f"last with {last}; {have} bytes are kept in {part.name}",
                    "rerun `snakemake` to resume it",
                ) from None
            print(
                f"{dest.name}: connection lost after {have} bytes ({describe(cause or error)}); "
                f"resuming (attempt {attempt + 2} of {RETRIES + 1})",
                file=sys.stderr,
            )
            time.sleep(RETRY_WAIT * attempt)
    if checksum is not None:
        got = file_digest(part, algorithm)
        if got != checksum:
            part.unlink()
            raise ChecksumError(
                dest,
                f"{algorithm} {got} != expected {checksum} (from {redact(url)})",
                "the partial file was removed; rerun `snakemake` to download it again",
            )
    part.replace(dest)
    return dest


def get_json(url: str, setting: str, timeout: float = 60.0) -> Any:
    """GET a JSON document over https (e.g. a Zenodo record's metadata); errors redacted."""
    require_https(url, setting)
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as error:
        raise DataError(
            f"{setting}: could not read {redact(url)} ({describe(error)}); "
            "check the connection and rerun `snakemake`"
        ) from None


# ---- pinned Zenodo records ------------------------------------------------------------------
def record_files(meta: dict) -> dict[str, dict[str, Any]]:
    """A Zenodo record's files as a pin holds them: key -> {size, <algorithm>: digest}."""
    files = {}
    for entry in meta["files"]:
        algorithm, digest = entry["checksum"].split(":", 1)
        files[entry["key"]] = {"size": entry.get("size"), algorithm: digest}
    return files


def pin_differences(pinned: dict[str, dict], current: dict[str, dict]) -> list[str]:
    """One line per difference between a pin and a record: added, removed, changed fields."""
    lines = []
    for key in sorted(set(pinned) | set(current)):
        if key not in current:
            lines.append(f"removed: {key} (pinned, not in the record)")
        elif key not in pinned:
            fields = ", ".join(f"{k} {v}" for k, v in current[key].items())
            lines.append(f"added: {key} ({fields})")
        else:
            for field in sorted(set(pinned[key]) | set(current[key])):
                old, new = pinned[key].get(field), current[key].get(field)
                if old != new:
                    lines.append(f"changed {field}: {key}: pinned {old}, record {new}")
    return lines


def check_zenodo_pin(meta: dict, record: int, root: Path, pins: Path = PINS) -> None:
    """Compare a record's files with its committed pin before anything is downloaded.

    Why: the md5 sums that verify the downloads come from the record itself, so a changed (or
    tampered) record would verify its own files. The pin in the repository fixes the version
    the results were made with. Without a pin (trust on first use), the record as first seen
    is written to `root` and the user is told to commit it; until then, later downloads into
    the same folder are checked against that first-seen copy.
    """
    current = record_files(meta)
    name = f"zenodo_{record}.json"
    first_seen = Path(root) / name
    pin_path = Path(pins) / name if (Path(pins) / name).exists() else first_seen
    if pin_path.exists():
        pinned = json.loads(pin_path.read_text())["files"]
        differences = pin_differences(pinned, current)
        if differences:
            raise PinMismatchError(
                f"Zenodo record {record} does not match its pin {pin_path}; nothing was "
                "downloaded. If the record was changed on purpose, review the differences, "
                "then update the pin and commit it:\n  " + "\n  ".join(differences)
            )
        return
    first_seen.write_text(json.dumps({"record": record, "files": current}, indent=1) + "\n")
    print(
        f"Zenodo record {record} has no pin: wrote {first_seen} from the record as first seen; "
        f"copy it into {PIN_DIR_IN_REPO} and commit it so later downloads are checked against it",
        file=sys.stderr,
    )


def user_url_entries(urls: list[dict] | str | None, setting: str, wanted: str) -> list[dict]:
    """A user's download list (`setting`, e.g. datasets.fastmri_knee.urls): given inline or as
    the path of a YAML file holding it (kept out of the repository), each entry a `url` with a
    `sha256` or `md5`. `wanted` says, in the error for an empty list, which links are needed."""
    if isinstance(urls, str):
        path = Path(urls).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{setting} = {urls!r}: no such file")
        urls = yaml.safe_load(path.read_text())
    if not urls:
        raise ValueError(f"{setting} is empty: source 'urls' needs {wanted}")
    for index, entry in enumerate(urls):
        if not isinstance(entry, dict) or "url" not in entry or not {"sha256", "md5"} & set(entry):
            raise ValueError(f"{setting}[{index}]: each entry needs `url` and `sha256` (or `md5`)")
    return list(urls)
