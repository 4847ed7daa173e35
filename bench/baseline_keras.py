"""The "original classifier": a plain Keras transfer-learning script, the baseline hoh is
measured against.

Deliberately free of hoh code: image_dataset_from_directory, a frozen ImageNet MobileNetV2,
global average pooling, dropout, one sigmoid unit (a softmax for 3+ class folders); pixels
/255 then rescaled to [-1, 1]; Adam 1e-3, batch 32. Prints one JSON object with its timings and
held-out metrics. The one exception is opt-in: `--exempt-tf-keras-autograph` applies hoh's
AutoGraph rule (hoh/autograph.py), for the stricter comparison in docs/BENCHMARKS.md.

    python bench/baseline_keras.py --train DIR --eval DIR --weights backbone.h5 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--weights", required=True, help="MobileNetV2 no-top .h5 (or 'imagenet')")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--exempt-tf-keras-autograph",
        action="store_true",
        help="apply the same AutoGraph rule hoh applies (hoh/autograph.py), so the "
        "comparison is not won by a TensorFlow workaround alone",
    )
    args = parser.parse_args()

    started = time.monotonic()
    import tensorflow as tf
    import tf_keras as keras

    if args.exempt_tf_keras_autograph:
        from hoh.autograph import exempt_tf_keras

        exempt_tf_keras()

    keras.utils.set_random_seed(args.seed)
    size = (args.image_size, args.image_size)
    num_classes = len([d for d in os.scandir(args.train) if d.is_dir()])
    binary = num_classes == 2
    common = dict(
        image_size=size,
        batch_size=args.batch_size,
        label_mode="binary" if binary else "int",
        seed=args.seed,
    )
    train = keras.utils.image_dataset_from_directory(args.train, shuffle=True, **common)
    evaluation = keras.utils.image_dataset_from_directory(args.eval, shuffle=False, **common)
    n_train = len(train.file_paths)
    n_eval = len(evaluation.file_paths)
    train = train.prefetch(tf.data.AUTOTUNE)
    evaluation = evaluation.prefetch(tf.data.AUTOTUNE)

    inputs = keras.Input(shape=size + (3,))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Rescaling(2.0, offset=-1.0)(x)
    base = keras.applications.MobileNetV2(
        input_shape=size + (3,), include_top=False, weights=args.weights
    )
    base.trainable = False
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    if binary:
        outputs = keras.layers.Dense(1, activation="sigmoid")(x)
        loss = "binary_crossentropy"
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
        loss = "sparse_categorical_crossentropy"
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=metrics)
    ready = time.monotonic()
    model.fit(train, epochs=args.epochs, verbose=0)
    fitted = time.monotonic()
    _, accuracy, *auc = model.evaluate(evaluation, verbose=0)
    done = time.monotonic()
    print(
        json.dumps(
            {
                "train_examples": n_train,
                "eval_examples": n_eval,
                "epochs": args.epochs,
                "setup_seconds": ready - started,
                "fit_seconds": fitted - ready,
                "eval_seconds": done - fitted,
                "total_seconds": done - started,
                "train_images_per_second": n_train * args.epochs / (fitted - ready),
                "exempt_tf_keras_autograph": args.exempt_tf_keras_autograph,
                "num_classes": num_classes,
                "accuracy": float(accuracy),
                "auc": float(auc[0]) if auc else None,
            }
        )
    )


if __name__ == "__main__":
    main()
