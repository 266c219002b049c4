"""Helpers shared by the tests that build small models by hand."""

from __future__ import annotations

import numpy as np


def randomize_batch_norm(model, seed: int) -> None:
    """Gives every BatchNormalization non-trivial statistics, as training would (Keras 3 or
    tf_keras)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.get_weights()[0].size
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n),
                               rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n)])


# Architectures as users build them, shared by the tests and tests/bench/architectures_bench.
# Random weights (He initialisation) and randomised BatchNorm statistics: fit for checking
# structure, fidelity to the original and speed, not real accuracy.

def _keras():
    import keras

    return keras, keras.layers


def sequential_cnn(seed: int = 1):
    keras, L = _keras()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((32, 32, 3))] + [
        layer for filters in (32, 32, 64, 64) for layer in (
            L.Conv2D(filters, 3, padding="same", use_bias=False), L.BatchNormalization(),
            L.ReLU())] + [L.MaxPooling2D(2), L.Flatten(), L.Dense(10, activation="softmax")],
        name="sequential_cnn")
    randomize_batch_norm(model, seed)
    return model


def mini_xception(seed: int = 2):
    """The shape of the mini-Xception face classifiers: 48x48 grey input, separable residual
    blocks with 1x1 strided shortcuts, global average pooling, 7 classes."""
    keras, L = _keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((48, 48, 1))
    x = inputs
    for _ in range(2):
        x = L.Conv2D(8, 3, use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
    for filters in (16, 32, 64, 128):
        skip = L.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x)
        skip = L.BatchNormalization()(skip)
        y = L.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        y = L.BatchNormalization()(y)
        y = L.ReLU()(y)
        y = L.SeparableConv2D(filters, 3, padding="same", use_bias=False)(y)
        y = L.BatchNormalization()(y)
        y = L.MaxPooling2D(3, strides=2, padding="same")(y)
        x = L.Add()([y, skip])
    x = L.Conv2D(7, 3, padding="same")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Activation("softmax")(x), name="mini_xception")
    randomize_batch_norm(model, seed)
    return model


def mobilenet_v2_style(seed: int = 3, size: int = 64):
    """Inverted residual blocks (1x1 expand, depthwise, 1x1 project, residual Add)."""
    keras, L = _keras()
    keras.utils.set_random_seed(seed)

    def conv_bn(x, filters, kernel=1, strides=1, act=True):
        x = L.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        return L.ReLU(6.0)(x) if act else x

    inputs = keras.Input((size, size, 3))
    x = conv_bn(inputs, 16, 3, strides=2)
    for filters, strides, repeat in ((16, 1, 1), (24, 2, 2), (32, 2, 3), (64, 2, 2)):
        for i in range(repeat):
            s = strides if i == 0 else 1
            y = conv_bn(x, int(x.shape[-1]) * 6)
            y = L.DepthwiseConv2D(3, strides=s, padding="same", use_bias=False)(y)
            y = L.BatchNormalization()(y)
            y = L.ReLU(6.0)(y)
            y = conv_bn(y, filters, act=False)
            x = L.Add()([x, y]) if s == 1 and int(x.shape[-1]) == filters else y
    x = conv_bn(x, 256)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(10, activation="softmax")(x), name="mobilenet_v2_style")
    randomize_batch_norm(model, seed)
    return model


def mixed_fcn(seed: int = 4):
    """A fully convolutional map output with grouped, depthwise and transposed convs."""
    keras, L = _keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 4))
    x = L.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = L.Conv2D(32, 3, padding="same", groups=4, activation="relu")(x)
    x = L.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.Conv2D(64, 1, activation="relu")(x)
    x = L.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu")(x)
    return keras.Model(inputs, L.Conv2D(2, 1)(x), name="mixed_fcn")


def activations_fcn(seed: int = 5):
    """Dynamic input size, PReLU/LeakyReLU/ELU/GELU/hard swish, Rescaling, sigmoid map."""
    keras, L = _keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = L.Conv2D(32, 3, padding="same")(x)
    x = L.PReLU(shared_axes=[1, 2])(x)
    x = L.Conv2D(32, 3, padding="same")(x)
    x = L.LeakyReLU(0.1)(x)
    x = L.Conv2D(48, 3, strides=2, padding="same", activation="elu")(x)
    x = L.Conv2D(48, 3, padding="same")(x)
    x = L.Activation("gelu")(x)
    x = L.Conv2D(48, 3, padding="same")(x)
    x = L.Activation("hard_swish")(x)
    return keras.Model(inputs, L.Conv2D(1, 1, activation="sigmoid")(x), name="activations_fcn")


def two_heads(seed: int = 6):
    keras, L = _keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters in (32, 64, 64):
        x = L.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, [L.Dense(4, name="box")(x),
                                L.Dense(5, activation="softmax", name="cls")(x)],
                       name="two_heads")


def vgg16_edges(seed: int = 7):
    """A VGG-16-style edge detector without BatchNorm: 14.7 M parameters, 224x224 input,
    a dense output map."""
    keras, L = _keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((224, 224, 3))
    x = inputs
    for block, (n, filters) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]):
        for i in range(n):
            x = L.Conv2D(filters, 3, padding="same", activation="relu",
                         name=f"block{block + 1}_conv{i + 1}")(x)
        if block < 4:
            x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(1, 1, activation="sigmoid", name="edges")(x)
    return keras.Model(inputs, L.UpSampling2D(16, interpolation="bilinear")(x),
                       name="vgg16_edges")


# name -> (builder, input range, --input_shape for dynamic inputs)
ARCHITECTURES = {
    "sequential_cnn": (sequential_cnn, (0.0, 1.0), None),
    "mini_xception": (mini_xception, (0.0, 1.0), None),
    "mobilenet_v2_style": (mobilenet_v2_style, (0.0, 1.0), None),
    "mixed_fcn": (mixed_fcn, (0.0, 1.0), None),
    "activations_fcn": (activations_fcn, (0.0, 255.0), (64, 64, 3)),
    "two_heads": (two_heads, (0.0, 1.0), None),
}
