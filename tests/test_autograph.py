"""The tf_keras AutoGraph exemption: in place, idempotent, and it really stops conversion."""

import tensorflow as tf
import tf_keras as keras
from tensorflow.python.autograph.core import config
from tensorflow.python.autograph.impl import conversion

import hoh  # noqa: F401
from hoh.autograph import TF_KERAS_MODULE, exempt_tf_keras


def _tf_keras_rules():
    return [r for r in config.CONVERSION_RULES if r.matches(TF_KERAS_MODULE)]


def test_rule_is_added_once():
    assert exempt_tf_keras() is True
    assert exempt_tf_keras() is True
    assert len(_tf_keras_rules()) == 1


def test_tf_keras_code_is_not_converted_but_user_code_is():
    exempt_tf_keras()
    layer_call = keras.layers.Dense.__call__
    assert conversion.is_allowlisted(layer_call)

    def user_fn(x):
        return x

    assert not conversion.is_allowlisted(user_fn)


def test_user_layer_control_flow_still_converted():
    """A user layer with a tensor-dependent `if` only works if AutoGraph still converts it."""
    exempt_tf_keras()

    class Clip(keras.layers.Layer):
        def call(self, x):
            if tf.reduce_sum(x) > 0:
                return x
            return -x

    inputs = keras.Input([2])
    model = keras.Model(inputs, Clip()(inputs))
    fn = tf.function(lambda x: model(x))
    assert fn(tf.constant([[-1.0, -2.0]])).numpy().tolist() == [[1.0, 2.0]]
    assert fn(tf.constant([[1.0, 2.0]])).numpy().tolist() == [[1.0, 2.0]]
