"""Trains the demo CNN on scikit-learn's handwritten digits (real data shipped in the package).

    bazel run //python:train_demo -- --output=python/demo/digits_cnn.keras
    bazel run //python:train_demo -- --nobatch_norm --output=python/demo/digits_cnn_nobn.keras

Fixed seed, fixed stratified split, deterministic ops: retraining reproduces the committed
model's test accuracy within a point.
"""

from __future__ import annotations

import json
import os
import pathlib

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "python/demo/digits_cnn.keras",
                    "Where to write the trained .keras model (relative to where bazel run was called).")
flags.DEFINE_integer("seed", 20261125, "Seed of every random choice in training.")
flags.DEFINE_integer("epochs", 30, "Training epochs.")
flags.DEFINE_bool("batch_norm", True, "BatchNormalization after each conv (the demo); without "
                  "it, convs carry biases (the model the image-like probes are measured on).")


def build_model(batch_norm: bool = True):
    import keras
    from keras import layers

    def block(x, filters, strides=1):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=not batch_norm)(x)
        if batch_norm:
            x = layers.BatchNormalization()(x)
        return layers.ReLU()(x)

    inputs = keras.Input((16, 16, 1), name="image")
    x = block(inputs, 32)
    x = block(x, 32)
    x = block(x, 64, strides=2)  # 8x8
    x = block(x, 64)
    x = layers.MaxPooling2D(2)(x)  # 4x4
    x = block(x, 128)
    x = block(x, 128)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="digits_cnn" if batch_norm else "digits_cnn_nobn")


def train(seed: int, epochs: int, batch_norm: bool = True):
    """Returns (model, test_accuracy)."""
    import keras
    import tensorflow as tf

    from hybrid_pruning import data

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    x_train, y_train, x_test, y_test = data.digits_split()
    model = build_model(batch_norm)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return model, float(accuracy)


def main(argv):
    del argv
    from hybrid_pruning import io

    model, accuracy = train(FLAGS.seed, FLAGS.epochs, FLAGS.batch_norm)
    out = io.user_path(FLAGS.output)
    io.save_keras_atomic(model, out)
    metrics = {"test_accuracy": accuracy, "seed": FLAGS.seed, "epochs": FLAGS.epochs,
               "batch_norm": FLAGS.batch_norm,
               "parameters": int(model.count_params())}
    pathlib.Path(os.path.splitext(out)[0] + ".json").write_text(json.dumps(metrics, indent=2) + "\n")
    logging.info("wrote %s: test accuracy %.4f, %d parameters", out, accuracy, model.count_params())


if __name__ == "__main__":
    app.run(main)
