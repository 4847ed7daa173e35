"""fsync helpers for publishing files and directories by rename.

A rename is atomic but not durable: after a power cut the new name may point at a directory
whose files were never flushed, or the rename itself may be lost. Publishing is durable when the
files' data, then the directories holding them, are synced before the rename, and the parent
directory is synced after it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def sync_path(path: str | Path) -> None:
    """Flush one file's data or one directory's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise(error: OSError) -> None:
    raise error


def sync_tree(root: str | Path) -> None:
    """Every file under `root`, then every directory bottom-up, so each entry names synced data.

    A folder that cannot be listed raises: skipping it would publish data that is not on disk.
    """
    for dirpath, _, filenames in os.walk(root, topdown=False, onerror=_raise):
        for name in filenames:
            sync_path(os.path.join(dirpath, name))
        sync_path(dirpath)


def write_hidden_temp(directory: str | Path, stem: str, text: str | bytes) -> Path:
    """Write `text` (str or bytes) durably to a new hidden file in `directory`, to be
    os.replace()d into place.

    The temporary file lives beside its destination so the replace is a same-filesystem rename,
    and it is hidden so no reader globbing the directory mistakes it for the real file.
    """
    path = Path(directory) / f".{stem}.tmp-{secrets.token_hex(4)}"
    try:
        binary = isinstance(text, bytes)
        with open(path, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
