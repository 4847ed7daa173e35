"""A tiny SavedModel that follows the Trainer's model contract, for serving tests.

Serving tests need a model with the exported signature and `assets.extra/` files, not a trained
one: running the pipeline for that would cost minutes. This builds the same interface in about a
second: decode + resize (as the real `serving_default` does) then average-pool to a 4x4x3 grid and
one dense layer with weights drawn from a seed, so two seeds give two distinguishable "versions".

Contract reproduced (see the Trainer):
- `serving_default(image_bytes: tf.string[None])` -> `{"probabilities": float32[None, C],
  "label": tf.string[None]}`; bytes TensorFlow cannot decode raise InvalidArgumentError.
- `assets.extra/labels.txt`, `assets.extra/hoh_model.json`, `assets.extra/sample_image`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

import hoh  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

IMAGE_SIZE = 32
_GRID = 4


def make_image(seed: int, size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    """Encoded bytes of a deterministic random-colour image (PNG, JPEG, BMP or GIF)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, 1, 3))
    noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _build_module(class_names: Sequence[str], seed: int):
    import tensorflow as tf

    from hoh.transforms.images import decode_and_resize

    rng = np.random.default_rng(seed)
    features = _GRID * _GRID * 3
    # Centred inputs and weights ~ N(0, 1/sqrt(features)): probabilities stay away from 0 and 1, so
    # different images get different labels and float differences are visible in comparisons.
    kernel = rng.normal(0.0, 4.0 / np.sqrt(features), size=(features, len(class_names)))
    kernel = kernel.astype(np.float32)
    bias = rng.normal(0.0, 0.5, size=(len(class_names),)).astype(np.float32)

    class TinyClassifier(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(kernel, trainable=False)
            self.bias = tf.Variable(bias, trainable=False)
            self.class_names = tf.constant(list(class_names))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            # The Trainer's own decoding (JPEG's accurate IDCT included), so that either
            # flavour serves this model with the pixels it computes in process.
            images = decode_and_resize(image_bytes, IMAGE_SIZE)
            pool = IMAGE_SIZE // _GRID
            pooled = tf.nn.avg_pool2d(images, ksize=pool, strides=pool, padding="VALID")
            centred = tf.reshape(pooled, [-1, features]) - 0.5
            logits = tf.matmul(centred, self.kernel) + self.bias
            probabilities = tf.nn.softmax(logits)
            label = tf.gather(self.class_names, tf.argmax(probabilities, axis=1))
            return {"probabilities": probabilities, "label": label}

    return TinyClassifier()


def build_tiny_model(
    export_dir: str | Path,
    class_names: Sequence[str] = ("human", "horse"),
    seed: int = 0,
    sample_image: bytes | None = None,
) -> Path:
    """Write a contract-following SavedModel to `export_dir` and return its path."""
    import tensorflow as tf

    export_dir = Path(export_dir)
    module = _build_module(class_names, seed)
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
    extra = export_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / "labels.txt").write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
    meta = {
        "class_names": list(class_names),
        "image_size": IMAGE_SIZE,
        "num_classes": len(class_names),
        "trainer": "tests/tiny_model.py",  # an unknown key: consumers must ignore it
    }
    (extra / "hoh_model.json").write_text(json.dumps(meta), encoding="utf-8")
    (extra / "sample_image").write_bytes(
        sample_image if sample_image is not None else make_image(seed + 1000)
    )
    return export_dir


# The flavour that can push a `fake_saved_model` (push.flavor; the default, onnx, cannot).
FAKE_MODEL_FLAVOR = "tensorflow"


def fake_saved_model(
    path: str | Path,
    classes: Sequence[str] = ("human", "horse"),
    sample: bytes | None = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32,
    pb: bytes = b"graph",
) -> Path:
    """A directory shaped like the Trainer's export (not loadable): for tests that never load it.
    Only the TensorFlow flavour pushes it (it copies the SavedModel; the ONNX flavour exports the
    graph, which this one has not): push it with `FAKE_MODEL_FLAVOR`."""
    path = Path(path)
    extra = path / "assets.extra"
    extra.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(pb)
    (path / "variables").mkdir()
    (path / "variables" / "variables.index").write_bytes(b"index")
    (extra / "labels.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    meta = {"class_names": list(classes), "image_size": 224, "num_classes": len(classes), "x": 1}
    (extra / "hoh_model.json").write_text(json.dumps(meta), encoding="utf-8")
    if sample is not None:
        (extra / "sample_image").write_bytes(sample)
    return path


def build_model_artifact_dir(model_uri: str | Path, **kwargs) -> Path:
    """Lay the model out as a TFX Model artifact: `<uri>/Format-Serving/`."""
    return build_tiny_model(Path(model_uri) / "Format-Serving", **kwargs)


def predict_in_process(export_dir: str | Path, images: Sequence[bytes]) -> dict[str, np.ndarray]:
    """`serving_default` run in this process: the reference that served results must match."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir))
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(list(images)))
    return {k: v.numpy() for k, v in out.items()}


def run_pusher_executor(
    model_uri: str | Path,
    repository: str | Path,
    pushed_uri: str | Path,
    blessed: int | None = 1,
    examples_uri: str | Path | None = None,
    **push_config,
):
    """Run TritonPusher's executor `Do` on real TFX artifacts; returns the PushedModel artifact.

    `push_config`: settings of the `push:` section (they travel as the one JSON exec property).
    `blessed=None` runs without a ModelBlessing input (pushes unconditionally, as TFX does).
    `examples_uri`: an Examples artifact (`Split-train/`, `Split-eval/`) given to the pusher.
    """
    import json

    from tfx.types import standard_artifacts

    from hoh.components.triton_pusher import executor

    model = standard_artifacts.Model()
    model.uri = str(model_uri)
    inputs = {"model": [model]}
    if examples_uri is not None:
        examples = standard_artifacts.Examples()
        examples.uri = str(examples_uri)
        examples.split_names = '["train", "eval"]'
        inputs["examples"] = [examples]
    if blessed is not None:
        blessing = standard_artifacts.ModelBlessing()
        blessing.uri = str(Path(pushed_uri).parent / f"blessing-{Path(pushed_uri).name}")
        blessing.set_int_custom_property("blessed", blessed)
        inputs["model_blessing"] = [blessing]
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(pushed_uri)
    properties = {
        executor.MODEL_REPOSITORY_KEY: str(repository),
        executor.PUSH_CONFIG_KEY: json.dumps(push_config),
    }
    executor.Executor().Do(inputs, {"pushed_model": [pushed]}, properties)
    return pushed


def push_fake_model(model_uri: str | Path, repository: str | Path, pushed_uri: str | Path, **kw):
    """`run_pusher_executor` for a Model artifact holding a `fake_saved_model`."""
    return run_pusher_executor(model_uri, repository, pushed_uri, flavor=FAKE_MODEL_FLAVOR, **kw)
