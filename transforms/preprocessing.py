"""The TFT `preprocessing_fn`, addressed by dotted path
(`hoh.transforms.preprocessing.preprocessing_fn`).

A dotted path (not `module_file`) lets Kubeflow compile without writing a wheel to the pipeline
root and lets the container image carry the code.
"""

from typing import Any, Dict, Optional, Sequence

import tensorflow as tf
import tensorflow_transform as tft

from hoh import features
from hoh.config import ConfigError, TransformConfig, parse_section
from hoh.transforms.images import decode_and_resize

# A second vocabulary over the same labels, with counts, for class weights; the analyzer runs in
# the same Beam pass as the id vocabulary, so it costs nothing extra.
LABEL_COUNTS_NAME = "label_counts"


def preprocessing_fn(
    inputs: Dict[str, tf.Tensor], custom_config: Optional[Dict[str, Any]] = None
) -> Dict[str, tf.Tensor]:
    """Raw examples -> `image_xf` (float32 [S, S, 3] in [0, 1]) and `label_xf` (int64 class id).

    Class ids follow `classes` (custom_config; the pipeline passes `data.classes` or the span's
    class folders sorted), never label frequencies: a retrain on a span with other proportions
    keeps every id, and a new class appended at the end leaves the old ids alone. The order
    travels as the TFT vocabulary `label_vocab` inside the transform graph and the exported
    model, so serving, Triton's labels.txt and the Evaluator all agree on what id 0 means.
    """
    config = dict(custom_config or {})
    classes = config.pop(features.CLASSES_KEY, [])
    image_size = parse_section(TransformConfig, config, "Transform custom_config").image_size
    outputs = {features.IMAGE_XF: decode_and_resize(inputs[features.IMAGE_KEY], image_size)}
    if features.LABEL_KEY in inputs:
        labels = tf.reshape(inputs[features.LABEL_KEY], [-1])
        outputs[features.LABEL_XF] = class_ids(labels, classes)
        tft.vocabulary(labels, vocab_filename=LABEL_COUNTS_NAME, store_frequency=True)
    return outputs


def class_ids(labels: tf.Tensor, classes: Sequence[str]) -> tf.Tensor:
    """Ids in the order of `classes`.

    TFT orders a vocabulary by total weight, so a vocabulary over the class names themselves,
    weighted by falling ranks, is `classes` in the given order; every batch adds the same
    weights, so the order holds however many batches there are.
    """
    if not classes:
        raise ConfigError(
            "Transform custom_config: `classes` is empty; the pipeline passes the class names "
            "(data.classes, or the span's class folders)"
        )
    names = tf.constant(list(classes))
    ranks = tf.constant([float(len(classes) - i) for i in range(len(classes))])
    vocab = tft.vocabulary(names, weights=ranks, vocab_filename=features.LABEL_VOCAB_NAME)
    # -1 for a label outside `classes`: the factory checks the span's classes against them
    # before the run; an assert here would fire while TFT analyses with a placeholder vocabulary.
    return tft.apply_vocabulary(labels, vocab, default_value=-1)
