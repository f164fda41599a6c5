"""Downloads: https only, resumed after a cut connection, checksummed, pinned, never leaking a
link's signature, and archives that cannot write outside the data folder.

Everything runs against a local https server with a self-signed certificate made for the test
and trusted through REQUESTS_CA_BUNDLE (requests' own setting): production code has no switch
that would accept plain http.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import shutil
import socket
import ssl
import stat
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from genrecon.data import download as dl
from genrecon.data.download import (
    ChecksumError,
    DownloadError,
    InsecureURLError,
    PinMismatchError,
    download,
    redact,
)
from genrecon.data.errors import DataFileError
from genrecon.data.lodopab import download_zenodo, extract_zip

SECRET = "X-Amz-Signature=SECRET123&X-Amz-Credential=AKIASECRET"


# ---- a local https server ---------------------------------------------------------------------
def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 in `folder` (openssl's command line)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test server's certificate")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """The test server's certificate, made once per test session."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `files` with Range support; `drops[path]` times it cuts the body halfway."""

    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    drops: dict[str, int] = {}

    def do_GET(self):  # noqa: N802 (http.server API)
        path = self.path.split("?")[0]  # presigned links: the query is the signature
        body = self.files.get(path)
        self.requests.append((path, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.drops.get(path, 0) > 0:  # the connection dies mid-body, without TLS goodbye
            self.drops[path] -= 1
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_https(handler: type[http.server.BaseHTTPRequestHandler], certificate):
    """A threaded https server on 127.0.0.1 for `handler`; yields its base URL.

    Clients trust it through REQUESTS_CA_BUNDLE=<certificate[0]> (see the `server` fixture).
    """
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(certificate, monkeypatch):
    RangeHandler.files, RangeHandler.requests, RangeHandler.drops = {}, [], {}
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(dl, "RETRY_WAIT", 0.0)
    with serve_https(RangeHandler, certificate) as url:
        yield url, RangeHandler


# ---- resumable, checksummed downloads ---------------------------------------------------------
def test_download_resumes_from_partial_file(tmp_path, server):
    url, handler = server
    payload = bytes(range(256)) * 1000
    handler.files["/f.bin"] = payload
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(payload[:100_000])  # an interrupted download
    download(f"{url}/f.bin", dest, hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload
    assert handler.requests == [("/f.bin", "bytes=100000-")]
    assert not (tmp_path / "f.bin.part").exists()


def test_finished_download_is_not_fetched_again(tmp_path, server):
    url, handler = server
    handler.files["/f.bin"] = b"abc"
    dest = tmp_path / "f.bin"
    md5 = hashlib.md5(b"abc").hexdigest()
    download(f"{url}/f.bin", dest, md5)
    download(f"{url}/f.bin", dest, md5)
    assert len(handler.requests) == 1


def test_corrupt_download_is_reported_and_removed(tmp_path, server):
    url, handler = server
    handler.files["/f.bin"] = b"corrupted bytes"
    with pytest.raises(ChecksumError, match=r"f\.bin: md5 .* != expected 0123"):
        download(f"{url}/f.bin", tmp_path / "f.bin", "0123" + "0" * 28)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_connection_cut_mid_body_is_resumed_and_verified(tmp_path, server, monkeypatch, capsys):
    """The first response dies halfway through the body: the same call resumes with Range
    from what reached the part file, and the checksum of the joined file passes."""
    url, handler = server
    monkeypatch.setattr(dl, "CHUNK", 4096)  # what arrived is on disk before the cut
    payload = bytes(range(256)) * 800
    handler.files["/f.bin"], handler.drops["/f.bin"] = payload, 1
    dest = tmp_path / "f.bin"
    download(f"{url}/f.bin", dest, hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload
    (first, _), (second, resumed) = handler.requests
    assert first == second == "/f.bin" and resumed is not None
    assert 0 < int(resumed.split("=")[1].rstrip("-")) < len(payload)
    assert "connection lost" in capsys.readouterr().err


def test_a_download_that_keeps_failing_keeps_its_part_for_the_rerun(tmp_path, server, monkeypatch):
    url, handler = server
    monkeypatch.setattr(dl, "CHUNK", 4096)
    monkeypatch.setattr(dl, "RETRIES", 1)
    payload = bytes(range(256)) * 800
    handler.files["/f.bin"], handler.drops["/f.bin"] = payload, 2
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    md5 = hashlib.md5(payload).hexdigest()
    with pytest.raises(DownloadError, match="failed after 2 attempt") as error:
        download(f"{url}/f.bin", dest, md5)
    assert "\n" not in str(error.value) and str(error.value).startswith(str(dest))
    kept = part.stat().st_size
    assert 0 < kept < len(payload) and not dest.exists()
    download(f"{url}/f.bin", dest, md5)  # the rerun resumes from the part file
    assert dest.read_bytes() == payload
    assert handler.requests[-1] == ("/f.bin", f"bytes={kept}-")


# ---- https only -------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["http", "ftp", "file"])
def test_download_refuses_anything_but_https(tmp_path, scheme):
    url = f"{scheme}://127.0.0.1/data/f.bin?{SECRET}"
    with pytest.raises(InsecureURLError, match="only https") as error:
        download(url, tmp_path / "f.bin", None, setting="datasets.x.urls[3]")
    message = str(error.value)
    assert "datasets.x.urls[3]" in message and f"{scheme}://127.0.0.1/data/f.bin" in message
    assert "SECRET" not in message and not (tmp_path / "f.bin.part").exists()


def test_fastmri_links_must_be_https(tmp_path):
    from genrecon.data.knee import FastMRIKnee

    cfg = {"source": "urls", "urls": [{"url": f"http://nyu.example/k.tar.xz?{SECRET}", "md5": "0"}]}
    with pytest.raises(InsecureURLError, match=r"datasets\.fastmri_knee\.urls\[0\]") as error:
        FastMRIKnee(cfg, seed=0).download(tmp_path)
    assert "http://nyu.example/k.tar.xz" in str(error.value) and "SECRET" not in str(error.value)
    assert not (tmp_path / "archives").exists()


def test_zenodo_api_must_be_https(tmp_path):
    with pytest.raises(InsecureURLError, match=r"genrecon\.data\.lodopab\.ZENODO_API"):
        download_zenodo(tmp_path, 1, api="http://zenodo.example/api/records/{record}")


# ---- the pinned Zenodo record -----------------------------------------------------------------
def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def serve_record(url: str, handler, archives: dict[str, bytes], scheme: str = "") -> dict:
    """A Zenodo-like record (API JSON in the layout Zenodo serves) of `archives`."""
    base = url.replace("https", scheme) if scheme else url
    record = {
        "files": [
            {
                "key": key,
                "size": len(data),
                "checksum": "md5:" + hashlib.md5(data).hexdigest(),
                "links": {"self": f"{base}/files/{key}"},
            }
            for key, data in archives.items()
        ]
    }
    handler.files["/api/records/3384092"] = json.dumps(record).encode()
    for key, data in archives.items():
        handler.files[f"/files/{key}"] = data
    return record


def pin_of(archives: dict[str, bytes]) -> dict:
    files = {k: {"size": len(v), "md5": hashlib.md5(v).hexdigest()} for k, v in archives.items()}
    return {"record": 3384092, "files": files}


ARCHIVES = {
    "ground_truth_test.zip": zip_bytes({"ground_truth_test_000.hdf5": b"fake-h5"}),
    "observation_test.zip": zip_bytes({"observation_test_000.hdf5": b"fake-obs"}),
}


def test_zenodo_record_without_pin_is_trusted_on_first_use(tmp_path, server, capsys):
    url, handler = server
    record = serve_record(url, handler, ARCHIVES)
    root, pins = tmp_path / "data", tmp_path / "pins"
    download_zenodo(root, 3384092, api=url + "/api/records/{record}", pins=pins)
    assert (root / "ground_truth_test_000.hdf5").read_bytes() == b"fake-h5"
    assert json.loads((root / "zenodo_record.json").read_text()) == record
    assert json.loads((root / "zenodo_3384092.json").read_text()) == pin_of(ARCHIVES)
    lines = [line for line in capsys.readouterr().err.splitlines() if "has no pin" in line]
    assert len(lines) == 1 and "src/genrecon/data/pins/" in lines[0] and "commit" in lines[0]


def test_zenodo_record_matching_its_pin_downloads(tmp_path, server, capsys):
    url, handler = server
    serve_record(url, handler, ARCHIVES)
    root, pins = tmp_path / "data", tmp_path / "pins"
    pins.mkdir()
    (pins / "zenodo_3384092.json").write_text(json.dumps(pin_of(ARCHIVES)))
    download_zenodo(root, 3384092, api=url + "/api/records/{record}", pins=pins)
    assert (root / "observation_test_000.hdf5").read_bytes() == b"fake-obs"
    assert not (root / "zenodo_3384092.json").exists() and "no pin" not in capsys.readouterr().err


def _changed_md5(pin: dict) -> str:
    pin["files"]["ground_truth_test.zip"]["md5"] = "f" * 32
    return f"changed md5: ground_truth_test.zip: pinned {'f' * 32}, record "


def _removed(pin: dict) -> str:
    pin["files"]["extra.zip"] = {"size": 3, "md5": "0" * 32}
    return "removed: extra.zip (pinned, not in the record)"


def _added(pin: dict) -> str:
    del pin["files"]["observation_test.zip"]
    return "added: observation_test.zip (size "


def _resized(pin: dict) -> str:
    pin["files"]["observation_test.zip"]["size"] = 1
    return "changed size: observation_test.zip: pinned 1, record "


@pytest.mark.parametrize("edit", [_changed_md5, _removed, _added, _resized])
def test_zenodo_record_differing_from_its_pin_stops_before_downloading(tmp_path, server, edit):
    url, handler = server
    serve_record(url, handler, ARCHIVES)
    root, pins = tmp_path / "data", tmp_path / "pins"
    pins.mkdir()
    pin = pin_of(ARCHIVES)
    line = edit(pin)
    (pins / "zenodo_3384092.json").write_text(json.dumps(pin))
    with pytest.raises(PinMismatchError, match="nothing was downloaded") as error:
        download_zenodo(root, 3384092, api=url + "/api/records/{record}", pins=pins)
    differences = str(error.value).splitlines()[1:]
    assert len(differences) == 1 and differences[0].strip().startswith(line)
    assert handler.requests == [("/api/records/3384092", None)]  # the metadata, nothing else
    assert not (root / "archives").exists() and not list(root.glob("*.hdf5"))


def test_zenodo_file_links_must_be_https(tmp_path, server):
    url, handler = server
    serve_record(url, handler, ARCHIVES, scheme="http")
    with pytest.raises(InsecureURLError, match="Zenodo record 3384092: the link of"):
        download_zenodo(tmp_path, 3384092, api=url + "/api/records/{record}", pins=tmp_path)
    assert handler.requests == [("/api/records/3384092", None)]


# ---- a presigned link's signature never reaches the output --------------------------------------
def test_redact_drops_query_fragment_and_credentials():
    assert redact(f"https://u:pw@host.example:8443/a/b.tar.xz?{SECRET}#x") == (
        "https://host.example:8443/a/b.tar.xz?<redacted>"
    )
    for plain in ("https://host.example/a.zip", "sqlite:///results/mlflow.db", "databricks"):
        assert redact(plain) == plain


def test_logged_settings_carry_no_signature():
    """`redact_urls` strips signatures from settings before they are logged (MLflow params)."""
    settings = {"data": {"urls": [{"url": f"https://nyu.example/k.tar.xz?{SECRET}", "md5": "0"}]}}
    assert dl.redact_urls(settings) == {
        "data": {"urls": [{"url": "https://nyu.example/k.tar.xz?<redacted>", "md5": "0"}]}
    }


def test_download_errors_and_progress_never_show_the_signature(
    tmp_path, server, monkeypatch, capsys
):
    url, handler = server
    monkeypatch.setattr(dl, "CHUNK", 4096)
    monkeypatch.setattr(dl, "RETRIES", 0)
    handler.files["/k.tar"] = bytes(range(256)) * 100
    messages = []
    for link, checksum, drops in [
        (f"{url}/k.tar?{SECRET}", "0" * 32, 0),  # wrong checksum
        (f"{url}/missing.tar?{SECRET}", None, 0),  # HTTP 404
        (f"{url}/k.tar?{SECRET}", None, 1),  # cut mid-body, no retries left
        (f"https://127.0.0.1:9/k.tar?{SECRET}", None, 0),  # nothing listening
    ]:
        handler.drops["/k.tar"] = drops
        with pytest.raises(DataFileError) as error:
            download(link, tmp_path / "k.tar", checksum, setting="datasets.fastmri_knee.urls[0]")
        messages.append(str(error.value))
    output = capsys.readouterr()
    for text in [*messages, output.out, output.err]:
        assert "SECRET" not in text and "AKIA" not in text
    assert all("?<redacted>" in m for m in messages) and "HTTP 404" in messages[1]


# ---- archives cannot write outside the data folder ----------------------------------------------
def _symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "entry", ["../evil.txt", "{tmp}/abs_evil.txt", "sub/../../evil.txt", "link"]
)
def test_zip_entries_outside_the_folder_are_refused(tmp_path, entry):
    """'{tmp}' is the test's own folder, so even a broken check writes nowhere else."""
    entry = entry.format(tmp=tmp_path)
    if entry == "link":
        archive = _symlink_zip()
    else:
        archive = zip_bytes({"ok.hdf5": b"x", entry: b"owned"})
    root = tmp_path / "data"
    root.mkdir()
    path = tmp_path / "archives" / "bad.zip"
    path.parent.mkdir()
    path.write_bytes(archive)
    with pytest.raises(DataFileError, match="could write outside") as error:
        extract_zip(path, root)
    message = str(error.value)
    assert message.startswith(f"{path}: entry {entry!r}") and "\n" not in message
    assert list(root.iterdir()) == []  # checked before anything is written
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs_evil.txt").exists()


def test_zip_extraction_replaces_a_truncated_file(tmp_path):
    root, path = tmp_path / "data", tmp_path / "a.zip"
    path.write_bytes(zip_bytes({"f_000.hdf5": b"0123456789"}))
    root.mkdir()
    (root / "f_000.hdf5").write_bytes(b"01234")  # an extraction killed midway
    extract_zip(path, root)
    assert (root / "f_000.hdf5").read_bytes() == b"0123456789"


def tar_bytes(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        data = b"" if target else b"owned"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "archive, entry",
    [
        (tar_bytes("../evil.txt"), "../evil.txt"),
        (tar_bytes("singlecoil_val/link", tarfile.SYMTYPE, "/etc"), "singlecoil_val/link"),
    ],
)
def test_tar_entries_outside_the_folder_are_refused(tmp_path, archive, entry):
    from genrecon.data.knee import extract

    path, dest = tmp_path / "knee.tar", tmp_path / "data" / "raw"
    path.write_bytes(archive)
    with pytest.raises(DataFileError, match="could write outside") as error:
        extract(path, dest)
    message = str(error.value)
    assert message.startswith(f"{path}: entry {entry!r}") and "\n" not in message
    assert not (tmp_path / "data" / "evil.txt").exists() and not (dest / entry).exists()
    assert not (dest / ".knee.tar.extracted").exists()  # a rerun tries again
