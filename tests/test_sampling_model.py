"""A Keras model whose outputs are known in closed form, and the Predictor checked against it.

The model follows the Trainer's export contract (a Functional model with a nested "backbone",
`serving_default(image_bytes)`, `assets.extra/labels.txt` and `hoh_model.json`), but its backbone
is a global average pool: for a solid-colour image the embedding is the colour / 255 and the
probabilities are softmax(SCALE * colour / 255), so tests know every score exactly.
`make_known_model` is imported by the other sampling and drift tests.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from PIL import Image

import hoh  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

CLASSES = ("blue", "green", "red")  # class i <- channel (2 - i): alphabetical, like the vocabulary
SCALE = 6.0
IMAGE_SIZE = 16


def known_probabilities(colours: np.ndarray) -> np.ndarray:
    """What the model outputs for solid images of `colours` (uint8 [n, 3] RGB)."""
    logits = SCALE * np.asarray(colours, dtype=np.float64)[:, ::-1] / 255.0
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def solid_png(colour: Sequence[int], size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), tuple(int(c) for c in colour)).save(buf, "PNG")
    return buf.getvalue()


def noise_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_known_model(directory: Path) -> Path:
    """Save the model under `directory/Format-Serving` (a Trainer Model artifact's layout)."""
    import tensorflow as tf
    import tf_keras as keras

    from hoh.trainer.export import write_model_extras
    from hoh.transforms.images import decode_and_resize

    inner = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    backbone = keras.Model(inner, keras.layers.GlobalAveragePooling2D()(inner), name="backbone")
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image_xf")
    head = keras.layers.Dense(len(CLASSES), activation="softmax", name="probabilities")
    model = keras.Model(inputs, head(backbone(inputs)))
    kernel = SCALE * np.eye(3, dtype=np.float32)[:, ::-1]  # column i reads channel 2 - i
    head.set_weights([kernel, np.zeros(3, np.float32)])
    names = tf.constant(list(CLASSES))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        probabilities = model(decode_and_resize(image_bytes, IMAGE_SIZE), training=False)
        return {
            "probabilities": probabilities,
            "label": tf.gather(names, tf.argmax(probabilities, axis=1)),
        }

    serving = Path(directory) / "Format-Serving"
    model.save(
        str(serving),
        save_format="tf",
        signatures={"serving_default": serve.get_concrete_function()},
        include_optimizer=False,
        save_traces=False,
    )
    write_model_extras(str(serving), CLASSES, IMAGE_SIZE, solid_png((1, 2, 3)), {})
    return Path(directory)


COLOURS = np.array(
    [[200, 10, 10], [120, 110, 100], [10, 240, 30], [90, 90, 200], [128, 128, 128]], np.uint8
)


def test_keras_path_gives_known_probabilities_and_colour_embeddings(known_model):
    from hoh.trainer.predictor import Predictor

    predictor = Predictor(known_model, embeddings=True)
    assert predictor.has_embeddings and predictor.class_names == list(CLASSES)
    assert predictor.image_size == IMAGE_SIZE and predictor.model_version == known_model.name
    out = predictor.predict([solid_png(c) for c in COLOURS])
    np.testing.assert_allclose(out.probabilities, known_probabilities(COLOURS), atol=1e-5)
    np.testing.assert_allclose(out.embeddings, COLOURS / 255.0, atol=1e-5)
    assert out.ok == list(range(len(COLOURS))) and not out.failed


def test_signature_path_agrees_with_the_keras_path(known_model):
    """The single-pass Keras path must see the pixels serving_default sees (no train/serve skew)."""
    from hoh.trainer.predictor import Predictor

    images = [solid_png(c) for c in COLOURS] + [noise_jpeg(3)]
    keras_path = Predictor(known_model, embeddings=True).predict(images)
    signature_path = Predictor(known_model, embeddings=False).predict(images)
    assert signature_path.embeddings is None
    np.testing.assert_allclose(keras_path.probabilities, signature_path.probabilities, atol=1e-6)


def test_undecodable_images_in_a_batch_are_isolated(known_model):
    from hoh.trainer.predictor import Predictor

    predictor = Predictor(known_model, embeddings=True)
    good = solid_png((10, 20, 30))
    out = predictor.predict([good, b"not an image", solid_png((200, 0, 0))[:40], good])
    assert out.ok == [0, 3]
    assert set(out.failed) == {1, 2} and all("cannot decode" in r for r in out.failed.values())
    assert out.probabilities.shape == (2, 3) and out.embeddings.shape == (2, 3)


def test_model_paths_that_are_not_hoh_models_are_refused(tmp_path, known_model):
    from hoh.errors import HohError
    from hoh.trainer.predictor import Predictor, find_serving_dir

    assert find_serving_dir(known_model) == known_model / "Format-Serving"
    assert find_serving_dir(known_model / "Format-Serving") == known_model / "Format-Serving"
    with pytest.raises(HohError, match="no saved_model.pb"):
        Predictor(tmp_path)


def test_an_onnx_version_directory_stands_for_the_model_it_was_pushed_from(tmp_path, known_model):
    import json

    from hoh.errors import HohError
    from hoh.trainer.predictor import find_serving_dir, read_class_names

    version = tmp_path / "repo" / "hoh" / "1"  # an ensemble version: no SavedModel inside
    version.mkdir(parents=True)
    info = {"source": str(known_model / "Format-Serving"), "flavor": "onnx"}
    (version / "hoh_push.json").write_text(json.dumps(info))
    assert find_serving_dir(version) == known_model / "Format-Serving"
    assert read_class_names(version) == read_class_names(known_model)
    info["source"] = str(tmp_path / "cleaned-up")
    (version / "hoh_push.json").write_text(json.dumps(info))
    with pytest.raises(HohError, match="cleaned-up, is gone"):
        find_serving_dir(version)
