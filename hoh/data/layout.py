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
once, so a link loop cannot hang the walk; a folder reached again through a link of the same
class is not read twice, with a warning. A link must not change a file's class:

* a linked folder that resolves into another class folder of SRC, or one real folder reached
  under two classes, stops the import with an error naming both paths (its images would
  otherwise be labelled with the class of the link, and the other class would look empty);
* a linked file that resolves into another class folder is rejected (`link_to_other_class`):
  the file itself is imported under its own class.

A folder that cannot be listed (permissions, I/O error, removed during the scan) stops the
import with an error naming it: training on a silently partial class is worse than not
importing. A single unreadable file is only rejected (`unreadable`), with the OS's reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hoh.data.report import Rejected
from hoh.errors import HohError


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
    warnings: list[str] = field(default_factory=list)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name arrive as lone surrogates
        return False
    return True


def _class_in_source(real: str, real_src: Path, class_dirs: list[str]) -> Optional[str]:
    """The class folder of SRC that a resolved path lies in, if any."""
    try:
        parts = Path(real).relative_to(real_src).parts
    except ValueError:  # outside SRC: shared storage, labelled by where the link is
        return None
    return parts[0] if parts and parts[0] in class_dirs else None


def _link_error(src: Path, what: str, label: Optional[str], other: Optional[str]) -> HohError:
    return HohError(
        f"import source {src}: {what}, so its images would be labelled {label!r} although they "
        f"are in {'SRC itself' if other is None else repr(other)}. A symbolic link must not "
        "change a class: replace it by the files it should add. Nothing was written."
    )


def _unreadable_error(src: Path, errors: list[OSError]) -> HohError:
    folders = "; ".join(f"{e.filename}: {e.strerror or e}" for e in errors)
    return HohError(
        f"import source {src}: cannot read {len(errors)} folder(s) ({folders}). Their images "
        "would be missing from the span without a trace; fix the permissions or move the "
        "folders out of SRC. Nothing was written."
    )


def class_name_problem(name: str) -> Optional[str]:
    """Why `name` could not be a class folder of an import source, or None when it could.

    Labels that arrive without a folder (a broker message's label header) must be names an
    import could have produced, so the same class never gets two spellings across the two
    paths and every label can be turned back into a folder by `hoh data import`.
    """
    if not name:
        return "is empty"
    if "/" in name or "\0" in name:
        return "contains '/' or a NUL byte (a class is one folder name)"
    if _is_hidden(name):
        return "starts with '.' (hidden folders are never read as classes)"
    if not _utf8(name):
        return "is not valid UTF-8"
    if len(name.encode("utf-8")) > 255:
        return "is longer than 255 bytes (a folder name's limit)"
    return None


def scan_source(src: Path, unlabeled: bool = False) -> SourceScan:
    """All candidate files under `src` in sorted order, plus files rejected for where they are.

    Raises HohError for a folder that cannot be listed or a link that would change a class.
    """
    scan = SourceScan()
    real_src = Path(os.path.realpath(src))
    visited: dict[str, tuple[str, Optional[str]]] = {}  # real dir -> (first source dir, label)
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(src, onerror=errors.append, followlinks=True):
        rel_dir = Path(dirpath).relative_to(src)
        label = None if unlabeled or rel_dir == Path(".") else rel_dir.parts[0]
        real = os.path.realpath(dirpath)
        into = None if unlabeled else _class_in_source(real, real_src, scan.class_dirs)
        first = visited.get(real)
        if into is not None and into != label:
            raise _link_error(
                src, f"{dirpath} resolves to {real}, inside class folder {src / into}", label, into
            )
        if first is not None and first[1] != label:
            raise _link_error(
                src, f"{dirpath} and {src / first[0]} are the same folder ({real})", label, first[1]
            )
        if first is not None:
            scan.warnings.append(
                f"folder {rel_dir.as_posix()} is {first[0]} again (a link); "
                "its files were read once"
            )
            dirnames[:] = []
            continue
        visited[real] = (rel_dir.as_posix(), label)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        if rel_dir == Path(".") and not unlabeled:
            scan.class_dirs = list(dirnames)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            source = (rel_dir / name).as_posix()
            linked_class = (
                _class_in_source(os.path.realpath(path), real_src, scan.class_dirs)
                if label is not None and path.is_symlink()
                else None
            )
            if not _utf8(source):
                # Labels and sources are stored as UTF-8; a name that is not would crash the write.
                reason = "file or folder name is not UTF-8"
                scan.rejected.append(Rejected(source, "bad_name", reason))
            elif _is_hidden(name):
                scan.rejected.append(
                    Rejected(source, "hidden_file", "hidden file (name starts with '.'); skipped")
                )
            elif linked_class is not None and linked_class != label:
                target = Path(os.path.realpath(path)).relative_to(real_src).as_posix()
                reason = (
                    f"symbolic link to {target} in class {linked_class!r}: it would be labelled "
                    f"{label!r}; that file is imported under its own class"
                )
                scan.rejected.append(Rejected(source, "link_to_other_class", reason))
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
                scan.files.append(SourceFile(path, source, label))
    if errors:
        raise _unreadable_error(src, errors)
    scan.files.sort(key=lambda f: f.source)
    scan.rejected.sort(key=lambda r: r.path)
    return scan
