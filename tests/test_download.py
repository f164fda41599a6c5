"""Downloads resume with HTTP Range and fail loudly on checksum mismatch (local server only)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile

import pytest

from genrecon.data.download import ChecksumError, download
from genrecon.data.lodopab import download_zenodo


class RangeHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 (http.server API)
        body = self.files.get(self.path)
        self.requests.append((self.path, self.headers.get("Range")))
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
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.files, RangeHandler.requests = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", RangeHandler
    httpd.shutdown()


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


def test_zenodo_record_download_and_unzip(tmp_path, server):
    url, handler = server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("ground_truth_test_000.hdf5", b"fake-h5")
    archive = buffer.getvalue()
    record = {
        "files": [
            {
                "key": "ground_truth_test.zip",
                "checksum": "md5:" + hashlib.md5(archive).hexdigest(),
                "links": {"self": f"{url}/files/ground_truth_test.zip"},
            }
        ]
    }
    handler.files["/api/records/3384092"] = json.dumps(record).encode()
    handler.files["/files/ground_truth_test.zip"] = archive
    download_zenodo(tmp_path, 3384092, api=url + "/api/records/{record}")
    assert (tmp_path / "ground_truth_test_000.hdf5").read_bytes() == b"fake-h5"
    assert json.loads((tmp_path / "zenodo_record.json").read_text()) == record
