"""Which files of an import source are candidates, and under which label.

The labelled layout is the one Keras' `image_dataset_from_directory` reads, so users can point
hoh at a folder they already have: SRC/<class>/<image>. Rules:

* Each immediate subfolder of SRC is a class; its name is the label.
* Files nested deeper (SRC/<class>/a/b.png) belong to the top-level class: people sort images
  into sub-folders by date or source, and dropping them silently would lose data.
* Files directly in SRC have no class: they are rejected (`outside_class_folder`), not guessed.
* Folders whose name starts with '.' (.git, .ipynb_checkpoints, .Trash) are skipped silently at
  any depth: they hold tool state or stale copies, never training data.
* Files whose name starts with '.' (.DS_Store, macOS '._x.png' resource forks) are rejected as
  `hidden_file`, so the counts still add up and a user can see why a file was ignored.

In the unlabelled layout every non-hidden file at any depth is a candidate without a label.
Symlinks are followed (a class folder is often a link to shared storage), each real directory
once, so a link loop cannot hang the walk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hoh.data.report import Rejected


@dataclass(frozen=True)
class SourceFile:
    path: Path
    source: str  # POSIX path relative to SRC: stored in the example, stable across machines
    label: Optional[str]


@dataclass
class SourceScan:
    files: list[SourceFile] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    class_dirs: list[str] = field(default_factory=list)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name arrive as lone surrogates
        return False
    return True


def scan_source(src: Path, unlabeled: bool = False) -> SourceScan:
    """All candidate files under `src` in sorted order, plus files rejected for where they are."""
    scan = SourceScan()
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        rel_dir = Path(dirpath).relative_to(src)
        if rel_dir == Path(".") and not unlabeled:
            scan.class_dirs = list(dirnames)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            source = (rel_dir / name).as_posix()
            if not _utf8(source):
                # Labels and sources are stored as UTF-8; a name that is not would crash the write.
                reason = "file or folder name is not UTF-8"
                scan.rejected.append(Rejected(source, "bad_name", reason))
            elif _is_hidden(name):
                scan.rejected.append(
                    Rejected(source, "hidden_file", "hidden file (name starts with '.'); skipped")
                )
            elif unlabeled:
                scan.files.append(SourceFile(path, source, None))
            elif rel_dir == Path("."):
                scan.rejected.append(
                    Rejected(
                        source,
                        "outside_class_folder",
                        "not inside a class folder; move it to SRC/<class>/",
                    )
                )
            else:
                scan.files.append(SourceFile(path, source, rel_dir.parts[0]))
    scan.files.sort(key=lambda f: f.source)
    scan.rejected.sort(key=lambda r: r.path)
    return scan
