"""`hoh data download`: verification and safe unpacking, against a local HTTP server
(no internet)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from hoh.data.download import HORSES_OR_HUMANS, download
from hoh.errors import HohError


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _archive_for(path: Path, url: str = "http://unused"):
    data = path.read_bytes()
    return dataclasses.replace(
        HORSES_OR_HUMANS, url=url, size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )


def test_published_checksum_is_pinned():
    assert HORSES_OR_HUMANS.size == 149_574_867 and len(HORSES_OR_HUMANS.sha256) == 64


def test_downloads_verifies_and_unpacks_from_a_local_server(tmp_path):
    served = tmp_path / "srv"
    served.mkdir()
    archive_path = _zip(
        served / "hoh.zip", {"horses/a.png": b"h", "humans/b.png": b"m", "__MACOSX/x": b""}
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hoh.zip"
        folder = download(tmp_path / "out", _archive_for(archive_path, url))
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "horses/a.png",
        "humans/b.png",
    ]
    with pytest.raises(HohError, match="already exists"):
        download(tmp_path / "out", _archive_for(archive_path, url))


def test_wrong_checksum_or_size_is_refused_and_leaves_nothing(tmp_path):
    good = _zip(tmp_path / "a.zip", {"horses/a.png": b"h"})
    archive = dataclasses.replace(_archive_for(good), sha256="0" * 64)
    with pytest.raises(HohError, match="does not match"):
        download(tmp_path / "out", archive, local_archive=good)
    with pytest.raises(HohError, match="truncated or a different file"):
        download(tmp_path / "out", dataclasses.replace(archive, size=1), local_archive=good)
    assert not (tmp_path / "out" / archive.folder).exists()
    assert not list((tmp_path / "out").glob(".hoh-download-*"))


def test_path_traversal_in_the_archive_is_refused(tmp_path):
    evil = _zip(tmp_path / "evil.zip", {"../escape.png": b"x"})
    with pytest.raises(HohError, match="outside the target folder"):
        download(tmp_path / "out", _archive_for(evil), local_archive=evil)
    assert not (tmp_path / "escape.png").exists()


def test_unreachable_url_names_the_url_and_the_offline_fix(tmp_path):
    archive = dataclasses.replace(HORSES_OR_HUMANS, url="http://127.0.0.1:9/none.zip")
    with pytest.raises(
        HohError, match=r"could not download http://127.0.0.1:9/none.zip.*--archive"
    ):
        download(tmp_path / "out", archive)
