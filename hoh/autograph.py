"""Keep AutoGraph out of tf-keras' own code, as TensorFlow already does for `keras`.

TF 2.16's AutoGraph rules exempt modules named `keras` (`DoNotConvert('keras')` in
`tensorflow/python/autograph/core/config.py`) but not `tf_keras`, the Keras 2 that TFX 1.16
requires. So every `tf.function` that calls a tf-keras model (Keras' own train/test/predict
functions, the Trainer's feature extraction, the export signatures) makes AutoGraph rewrite
Keras' layer code, and each converted call also updates a source map that grows with all the
code converted earlier in the process. Measured on 2 cores with MobileNetV2 224 (alpha 1.0):

- first `fit` step: 46.4 s with the stock rules, 9.2 s with tf_keras exempted;
- tracing the frozen backbone for the feature cache: 22.8 s vs. 1.1 s in a fresh process,
  ~29 s inside `hoh run` (after Transform and TFDV converted their own functions).

The exemption is the treatment TF gives `keras`. Layers defined outside tf_keras are still
converted, because Keras hands each layer's `call` to AutoGraph itself.
"""

from __future__ import annotations

from absl import logging

TF_KERAS_MODULE = "tf_keras"


def exempt_tf_keras() -> bool:
    """Add `DoNotConvert('tf_keras')` to AutoGraph's rules, once per process.

    Returns True when the rule is in place. TensorFlow keeps the rules in a private module; if a
    future TensorFlow moves it, training still works (only slower), so this warns instead of
    failing, and tests/test_autograph.py turns that into a red test on upgrade.
    """
    try:
        from tensorflow.python.autograph.core import config, config_lib
    except ImportError as exc:  # pragma: no cover - depends on the TensorFlow version
        logging.warning(
            "AutoGraph rules not found (%s): tf-keras code will be converted (slow tracing)", exc
        )
        return False
    if any(
        isinstance(rule, config_lib.DoNotConvert) and rule.matches(TF_KERAS_MODULE)
        for rule in config.CONVERSION_RULES
    ):
        return True
    config.CONVERSION_RULES = (config_lib.DoNotConvert(TF_KERAS_MODULE),) + tuple(
        config.CONVERSION_RULES
    )
    return True
