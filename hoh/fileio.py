"""Paths that may be local or remote (`gs://`, anything `tf.io.gfile` reads), in one place.

Kubeflow runs hand components `gs://` URIs while local runs and the CLI use plain paths: every
module that writes a report or reads a data root goes through these helpers, so "is this path
remote?" has one answer and TensorFlow is only imported when a remote path really occurs.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional


def is_remote(path: str | os.PathLike) -> bool:
    """A URI with a scheme (gs://, hdfs://, ...), which only tf.io.gfile can read."""
    return "://" in str(path)


def write_file(path: str, content: str | bytes) -> None:
    """Write text or bytes to a local path (parents created) or any tf.io.gfile URI."""
    mode = "wb" if isinstance(content, bytes) else "w"
    if is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, mode) as f:
            f.write(content)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
        f.write(content)


def write_json(path: str, value: Any) -> str:
    write_file(path, json.dumps(value, indent=2, default=str) + "\n")
    return path


def read_json(path: str) -> Optional[Any]:
    """The JSON document at `path`; None when it is absent or unreadable (a run that did not
    write it, or an older run), so summaries can show what there is."""
    try:
        if is_remote(path):
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "r") as f:
                return json.loads(f.read())
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError:
        return None
    except Exception as exc:  # OSError locally, tf.errors.OpError remotely
        if isinstance(exc, OSError) or type(exc).__module__.startswith("tensorflow"):
            return None
        raise


def listdir(path: str) -> list[str]:
    """Entry names of a local or remote directory ([] when it does not exist)."""
    if is_remote(path):
        import tensorflow as tf

        if not tf.io.gfile.isdir(path):
            return []
        return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def exists(path: str) -> bool:
    """Whether a local path or a tf.io.gfile URI exists."""
    if is_remote(path):
        import tensorflow as tf

        return bool(tf.io.gfile.exists(path))
    return os.path.exists(path)
