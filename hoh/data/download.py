"""`hoh data download`: fetch the public horses-or-humans archive, verify it, unpack it.

Only when a user asks: nothing in hoh downloads at run time or in tests. The size and SHA-256
are the ones TensorFlow Datasets records for the same URL, so a truncated transfer, a captive
portal page or a changed upstream file is refused instead of silently training on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from hoh.errors import HohError


@dataclasses.dataclass(frozen=True)
class Archive:
    url: str
    size: int
    sha256: str
    folder: str  # unpacked into OUT/folder
    credit: str


HORSES_OR_HUMANS = Archive(
    url="https://storage.googleapis.com/download.tensorflow.org/data/horse-or-human.zip",
    size=149_574_867,
    sha256="e2e6f70d3d549c5dd10a57165e55af253ee66ad750403f95c0fb76bb943633a9",
    folder="horse-or-human",
    credit="Horses or Humans by Laurence Moroney, CC BY 2.0 (credit the author in any use)",
)
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    url: str, dest: Path, timeout: float = 60.0, progress: Optional[Callable[[int], None]] = None
) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            done = 0
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done)
    except (urllib.error.URLError, OSError) as exc:
        raise HohError(
            f"could not download {url}: {exc}. "
            "On a machine without internet, download it elsewhere "
            "and pass the file with --archive"
        ) from None


def verify(path: Path, archive: Archive) -> None:
    size = path.stat().st_size
    if size != archive.size:
        raise HohError(
            f"{path}: {size} bytes, expected {archive.size} for {archive.url} "
            "(truncated or a different file)"
        )
    digest = sha256_of(path)
    if digest != archive.sha256:
        raise HohError(f"{path}: sha256 {digest} does not match the expected {archive.sha256}")


def safe_extract(zip_path: Path, dest: Path) -> int:
    """Unpack refusing absolute paths and `..` (a zip can name any path); returns files written."""
    written = 0
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts:
                raise HohError(
                    f"{zip_path}: refusing to unpack {info.filename!r} outside the target folder"
                )
            if info.is_dir() or name.parts[0] == "__MACOSX":
                continue
            target = dest.joinpath(*name.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            written += 1
    return written


def download(
    out_dir: str | Path,
    archive: Archive = HORSES_OR_HUMANS,
    local_archive: Optional[Path] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> Path:
    """Verified and unpacked into OUT/<folder>; returns that folder.

    Never leaves a partial folder."""
    out_dir = Path(out_dir)
    target = out_dir / archive.folder
    if target.exists():
        raise HohError(f"{target} already exists; remove it or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".hoh-download-") as tmp:
        zip_path = Path(local_archive) if local_archive else Path(tmp) / "archive.zip"
        if local_archive is None:
            fetch(archive.url, zip_path, progress=progress)
        elif not zip_path.is_file():
            raise HohError(f"--archive {zip_path}: no such file")
        verify(zip_path, archive)
        staging = Path(tmp) / "unpacked"
        if safe_extract(zip_path, staging) == 0:
            raise HohError(f"{zip_path} holds no files")
        staging.rename(target)
    return target
