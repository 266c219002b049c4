"""Trains the demo CNNs on scikit-learn's handwritten digits (real data shipped in the package).

    bazel run //python:train_demo -- --output=python/demo/digits_cnn.keras
    bazel run //python:train_demo -- --nobatch_norm --output=python/demo/digits_cnn_nobn.keras
    bazel run //python:train_demo -- --architecture=digits_resnet \
        --output=python/demo/digits_resnet.keras

digits_cnn is the small demo (16x16 inputs); digits_resnet is the realistic-size one: a
ResNet-style CNN on the digits upscaled to 64x64, about 0.1 G MACs, so that latency is spent
in convs the way it is in the models users ship.

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
flags.DEFINE_enum("architecture", "digits_cnn", ["digits_cnn", "digits_resnet"],
                  "Which model: the 16x16 demo CNN or the 64x64 ResNet-style one.")
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


RESNET_INPUT_SIZE = 64


def build_resnet():
    """A ResNet-style CNN (basic blocks, projection shortcuts where the shape changes) for
    64x64 digits: three stages at 32x32, 16x16 and 8x8 with 32, 64 and 128 channels."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel=3, strides=1, relu=True):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    def basic_block(x, filters, strides=1):
        shortcut = x
        if strides != 1 or x.shape[-1] != filters:
            shortcut = conv_bn(x, filters, kernel=1, strides=strides, relu=False)
        y = conv_bn(x, filters, strides=strides)
        y = conv_bn(y, filters, relu=False)
        return layers.ReLU()(layers.Add()([y, shortcut]))

    inputs = keras.Input((RESNET_INPUT_SIZE, RESNET_INPUT_SIZE, 1), name="image")
    x = conv_bn(inputs, 32, strides=2)  # 32x32
    for filters, strides in ((32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        x = basic_block(x, filters, strides)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="digits_resnet")


def train(seed: int, epochs: int, batch_norm: bool = True, architecture: str = "digits_cnn"):
    """Returns (model, test_accuracy)."""
    import keras
    import tensorflow as tf

    from hybrid_pruning import data

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    if architecture == "digits_resnet":
        x_train, y_train, x_test, y_test = data.digits_split(RESNET_INPUT_SIZE)
        model = build_resnet()
    else:
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

    if FLAGS.architecture == "digits_resnet" and not FLAGS.batch_norm:
        raise app.UsageError("--architecture=digits_resnet is built with BatchNorm only")
    model, accuracy = train(FLAGS.seed, FLAGS.epochs, FLAGS.batch_norm, FLAGS.architecture)
    out = io.user_path(FLAGS.output)
    io.save_keras_atomic(model, out)
    metrics = {"test_accuracy": accuracy, "seed": FLAGS.seed, "epochs": FLAGS.epochs,
               "batch_norm": FLAGS.batch_norm, "architecture": FLAGS.architecture,
               "parameters": int(model.count_params())}
    pathlib.Path(os.path.splitext(out)[0] + ".json").write_text(json.dumps(metrics, indent=2) + "\n")
    logging.info("wrote %s: test accuracy %.4f, %d parameters", out, accuracy, model.count_params())


if __name__ == "__main__":
    app.run(main)
