"""Image decoding shared by Transform, the Trainer's input pipeline and every serving signature.

There is exactly one decode/resize function so that training, TFMA and Triton see identical
pixels; a second copy drifting by one interpolation flag is a classic silent train/serve skew.
"""

import tensorflow as tf


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded PNG/JPEG/BMP/GIF bytes `[batch]` or `[batch, 1]` -> float32 `[batch, S, S, 3]`
    in [0, 1].

    SchemaGen(infer_feature_shape=True) makes the bytes feature `[batch, 1]`, serving feeds
    `[batch]`: both are flattened. `channels=3` drops alpha (the real images are RGBA) and expands
    grayscale; `expand_animations=False` keeps a GIF's first frame so every file yields one image.
    `tf.map_fn` with a fixed signature is needed because images in one batch differ in size.
    Decoding is the importer's own (`hoh.data.images.decode_rgb`), so an accepted file decodes
    here too, and JPEGs get the pixels Pillow and the ONNX flavour get.
    """
    from hoh.data.images import decode_rgb

    flat = tf.reshape(encoded, [-1])

    def _one(data: tf.Tensor) -> tf.Tensor:
        image = decode_rgb(data)
        image = tf.image.resize(image, [image_size, image_size], method="bilinear")
        image.set_shape([image_size, image_size, 3])
        return image / 255.0

    return tf.map_fn(
        _one, flat, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32)
    )
