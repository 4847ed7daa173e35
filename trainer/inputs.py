"""tf.data input pipelines for the Trainer.

By default the Trainer reads the raw examples and applies the transform graph on the fly
(`tft_layer`), instead of reading Transform's materialized output: a 224px float image is
~0.6 MB, about 4x the PNG it came from, and writing then re-reading it costs more than decoding
again each epoch on the Trainer's cores. `transform.materialize: true` switches back.
"""

from __future__ import annotations

import os
from typing import List, Tuple

import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from hoh import features

AUTOTUNE = tf.data.AUTOTUNE


def make_dataset(
    file_pattern: List[str],
    data_accessor,
    tf_transform_output: tft.TFTransformOutput,
    batch_size: int,
    *,
    materialized: bool,
    shuffle: bool,
    seed: int,
    shuffle_buffer: int = 256,
) -> tf.data.Dataset:
    """One pass over the split as (images [B, S, S, 3] float32, label ids [B] int64) batches.

    num_epochs=1 so Keras' `epochs` means what users expect; the shuffle buffer counts raw
    examples (~150 KB each), not the tfx_bsl default of 10000 that would hold 1.5 GB.
    """
    schema = (
        tf_transform_output.transformed_metadata.schema
        if materialized
        else tf_transform_output.raw_metadata.schema
    )
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_buffer_size=shuffle_buffer,
        shuffle_seed=seed,
        num_epochs=1,
        drop_final_batch=False,
    )
    dataset = data_accessor.tf_dataset_factory(file_pattern, options, schema)
    if not materialized:
        tft_layer = tf_transform_output.transform_features_layer()
        keep = {features.IMAGE_KEY, features.LABEL_KEY}

        def _transform(raw):
            return tft_layer({k: v for k, v in raw.items() if k in keep})

        dataset = dataset.map(_transform, num_parallel_calls=AUTOTUNE)
    return (
        dataset.map(_to_xy, num_parallel_calls=AUTOTUNE)
        .prefetch(AUTOTUNE)
        .with_options(_bounded_threads())
    )


def _bounded_threads() -> tf.data.Options:
    """Keep the input pipeline from fighting the model for the cores.

    With tf.data's defaults each input op may itself use the whole intra-op pool while the
    model's convolutions want the same cores: measured on 2 cores, decode+resize alone 1.7
    ms/image, MobileNetV2 224 alone 7.0 ms/image, both overlapped 18.3 ms/image; with a private
    pool of one thread per core and single-threaded ops inside it, 10.6 ms/image.
    """
    options = tf.data.Options()
    options.threading.private_threadpool_size = os.cpu_count() or 1
    options.threading.max_intra_op_parallelism = 1
    return options


def _to_xy(transformed) -> Tuple[tf.Tensor, tf.Tensor]:
    return transformed[features.IMAGE_XF], tf.reshape(transformed[features.LABEL_XF], [-1])
