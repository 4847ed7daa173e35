"""The TFT `preprocessing_fn`, addressed by dotted path
(`hoh.transforms.preprocessing.preprocessing_fn`).

A dotted path (not `module_file`) lets Kubeflow compile without writing a wheel to the pipeline
root and lets the container image carry the code.
"""

from typing import Any, Dict, Optional

import tensorflow as tf
import tensorflow_transform as tft

from hoh import features
from hoh.config import TransformConfig, parse_section
from hoh.transforms.images import decode_and_resize

# A second vocabulary over the same labels, with counts, for class weights; the analyzer runs in
# the same Beam pass as the id vocabulary, so it costs nothing extra.
LABEL_COUNTS_NAME = "label_counts"


def preprocessing_fn(
    inputs: Dict[str, tf.Tensor], custom_config: Optional[Dict[str, Any]] = None
) -> Dict[str, tf.Tensor]:
    """Raw examples -> `image_xf` (float32 [S, S, 3] in [0, 1]) and `label_xf` (int64 class id).

    Class ids come from a TFT vocabulary so 2 or N classes need no code change; the vocabulary
    file travels inside the transform graph and the exported model, so serving, Triton's
    labels.txt and the Evaluator all agree on what id 0 means.
    """
    image_size = parse_section(
        TransformConfig, custom_config or {}, "Transform custom_config"
    ).image_size
    outputs = {features.IMAGE_XF: decode_and_resize(inputs[features.IMAGE_KEY], image_size)}
    if features.LABEL_KEY in inputs:
        labels = tf.reshape(inputs[features.LABEL_KEY], [-1])
        outputs[features.LABEL_XF] = tft.compute_and_apply_vocabulary(
            labels, vocab_filename=features.LABEL_VOCAB_NAME
        )
        tft.vocabulary(labels, vocab_filename=LABEL_COUNTS_NAME, store_frequency=True)
    return outputs
