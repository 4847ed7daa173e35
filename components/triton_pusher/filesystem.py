"""The two filesystems a Triton repository lives on: a local path (fsynced renames, the atomic
guarantees of repository.py) and anything `tf.io.gfile` reads (gs://, where a write is durable
once it returns but a directory cannot be renamed atomically). TensorFlow is imported only when
a remote path really occurs, so local pushes and the serving tests never load it here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time

from hoh.fileio import is_remote


def join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/"), *(p.strip("/") for p in parts[1:])])


class LocalFS:
    """os/shutil operations, with fsync so a renamed version survives a power cut intact."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def read_bytes(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    @staticmethod
    def write_bytes(path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def replace(src: str, dst: str) -> None:
        os.replace(src, dst)

    @staticmethod
    def rename_dir(src: str, dst: str) -> None:
        if os.path.exists(dst):  # os.rename would silently replace an empty directory
            raise FileExistsError(dst)
        os.rename(src, dst)

    @staticmethod
    def rmtree(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)
        if os.path.isfile(path):
            os.remove(path)

    @staticmethod
    def age_s(path: str) -> float:
        return time.time() - os.stat(path).st_mtime

    @staticmethod
    def sync_tree(path: str) -> None:
        for root, _, files in os.walk(path):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            LocalFS.sync_dir(root)

    @staticmethod
    def sync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class GFileFS:
    """tf.io.gfile for gs:// and friends; imported lazily so local pushes never load TF here."""

    def __init__(self):
        import tensorflow as tf

        self._g = tf.io.gfile

    def exists(self, path: str) -> bool:
        return self._g.exists(path)

    def isdir(self, path: str) -> bool:
        return self._g.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return [n.rstrip("/") for n in self._g.listdir(path)]

    def makedirs(self, path: str) -> None:
        self._g.makedirs(path)

    def read_bytes(self, path: str) -> bytes:
        with self._g.GFile(path, "rb") as f:
            return f.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        with self._g.GFile(path, "wb") as f:
            f.write(data)

    def replace(self, src: str, dst: str) -> None:
        self._g.rename(src, dst, overwrite=True)

    def rename_dir(self, src: str, dst: str) -> None:
        if self._g.exists(dst):
            raise FileExistsError(dst)
        self._g.rename(src, dst, overwrite=False)

    def rmtree(self, path: str) -> None:
        if self._g.isdir(path):
            self._g.rmtree(path)
        elif self._g.exists(path):
            self._g.remove(path)

    def age_s(self, path: str) -> float:
        return time.time() - self._g.stat(path).mtime_nsec / 1e9

    def sync_tree(self, path: str) -> None:  # object stores are durable once a write returns
        pass

    def sync_dir(self, path: str) -> None:
        pass


def fs_for(path: str):
    return GFileFS() if is_remote(path) else LocalFS()


def copy_tree(src: str, dst: str) -> None:
    """Copy a SavedModel directory; saved_model.pb last, as the stock Pusher does."""
    if not (is_remote(src) or is_remote(dst)):
        shutil.copytree(src, dst)
        return
    import tensorflow as tf

    g = tf.io.gfile
    g.makedirs(dst)
    last = None
    for root, _, files in g.walk(src):
        rel = root[len(src) :].strip("/")
        g.makedirs(join(dst, rel) if rel else dst)
        for name in files:
            pair = (join(root, name), join(dst, rel, name) if rel else join(dst, name))
            if not rel and name == "saved_model.pb":
                last = pair
                continue
            g.copy(*pair, overwrite=True)
    if last:
        g.copy(*last, overwrite=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_sha256(fs, path: str) -> str:
    return hashlib.sha256(fs.read_bytes(path)).hexdigest() if fs.exists(path) else ""
