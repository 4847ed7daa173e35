"""The exported SavedModel: its three signatures and the metadata files beside it.

- `serving_default(image_bytes)`: what Triton's python backend and `hoh predict` call; takes raw
  encoded images so clients never reimplement preprocessing.
- `serving_tf_example(examples)`: what TFMA calls (`ModelSpec(signature_name=...)`).
- `transform_features(examples)`: TFMA's preprocessing function, which yields the integer label.
`assets.extra/` carries labels, model facts and a real sample image, so the pusher can write
Triton's labels.txt and warmup request from the model alone, with no other pipeline input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from hoh import features
from hoh.autograph import exempt_tf_keras

EXTRA_DIR = "assets.extra"
LABELS_FILE = "labels.txt"
MODEL_INFO_FILE = "hoh_model.json"
SAMPLE_IMAGE_FILE = "sample_image"
PROBABILITIES = "probabilities"
PREDICTIONS = "predictions"  # the model's own output: sigmoid [N, 1] or softmax [N, C]; for TFMA
LABEL = "label"


def to_probabilities(outputs: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Model output -> [N, C] probabilities, column i = class i, also for the 1-unit binary head."""
    if num_classes == 2:
        positive = tf.reshape(outputs, [-1, 1])
        return tf.concat([1.0 - positive, positive], axis=1)
    return outputs


def make_serving_signatures(
    model: keras.Model, tf_transform_output: tft.TFTransformOutput, class_names: Sequence[str]
) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    # Tracked on the model so the transform graph's assets (the vocabulary) are saved with it.
    model.tft_layer = tf_transform_output.transform_features_layer()
    num_classes = len(class_names)
    names = tf.constant(list(class_names), dtype=tf.string)
    raw_spec = tf_transform_output.raw_feature_spec()
    image_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}
    labelled_spec = {k: raw_spec[k] for k in (features.IMAGE_KEY, features.LABEL_KEY)}

    def _predict(raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        transformed = model.tft_layer(raw)
        outputs = model(transformed[features.IMAGE_XF], training=False)
        probabilities = to_probabilities(outputs, num_classes)
        return {
            PROBABILITIES: probabilities,
            PREDICTIONS: outputs,
            LABEL: tf.gather(names, tf.argmax(probabilities, axis=1)),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_image_bytes(image_bytes):
        out = _predict({features.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])})
        return {PROBABILITIES: out[PROBABILITIES], LABEL: out[LABEL]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_tf_examples(serialized):
        # Only the image is parsed: callers need not send label/id/source to get a prediction.
        return _predict(tf.io.parse_example(serialized, image_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized):
        return model.tft_layer(tf.io.parse_example(serialized, labelled_spec))

    return {
        "serving_default": serve_image_bytes.get_concrete_function(),
        "serving_tf_example": serve_tf_examples.get_concrete_function(),
        "transform_features": transform_features.get_concrete_function(),
    }


def export_model(
    model: keras.Model,
    serving_dir: str,
    tf_transform_output: tft.TFTransformOutput,
    class_names: Sequence[str],
    image_size: int,
    sample_image: bytes,
    extra_info: dict | None = None,
) -> None:
    exempt_tf_keras()  # the signatures trace the whole model
    signatures = make_serving_signatures(model, tf_transform_output, class_names)
    # save_traces=False: Keras otherwise traces every layer's call for re-loading as Keras, which
    # took ~50 s for MobileNetV2; consumers use the signatures only (3 s).
    model.save(
        serving_dir,
        save_format="tf",
        signatures=signatures,
        include_optimizer=False,
        save_traces=False,
    )
    write_model_extras(serving_dir, class_names, image_size, sample_image, extra_info or {})


def write_model_extras(
    serving_dir: str,
    class_names: Sequence[str],
    image_size: int,
    sample_image: bytes,
    extra_info: dict,
) -> None:
    extra = Path(serving_dir) / EXTRA_DIR
    tf.io.gfile.makedirs(str(extra))
    with tf.io.gfile.GFile(str(extra / LABELS_FILE), "w") as f:
        f.write("".join(f"{name}\n" for name in class_names))
    info = {
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "image_size": image_size,
        "input": "image_bytes",
        "output": PROBABILITIES,
        **extra_info,
    }
    with tf.io.gfile.GFile(str(extra / MODEL_INFO_FILE), "w") as f:
        f.write(json.dumps(info, indent=2, sort_keys=True))
    with tf.io.gfile.GFile(str(extra / SAMPLE_IMAGE_FILE), "wb") as f:
        f.write(sample_image)
