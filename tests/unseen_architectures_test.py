"""The pipeline on architectures unlike the demo: residual adds, depthwise and dilated convs,
concatenation, average pooling, Flatten heads, layers without BatchNorm. It must not crash,
must keep coupled channels, and its .tflite must compute the reduced Keras model."""

from __future__ import annotations

import keras
import numpy as np
from absl.testing import absltest

from hybrid_pruning import fidelity, op_format, pipeline, runtime, tflite_model


def _residual_model():
    keras.utils.set_random_seed(11)
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    skip = x
    y = L.Conv2D(16, 3, padding="same", dilation_rate=2, activation="relu")(x)
    y = L.DepthwiseConv2D(3, padding="same")(y)
    y = L.Conv2D(16, 1)(y)
    x = L.Add()([skip, y])  # couples the channels of the first conv and the 1x1 conv
    x = L.AveragePooling2D(2)(x)
    a = L.Conv2D(8, 3, padding="valid", activation="relu6")(x)
    b = L.Conv2D(8, 1, strides=2, padding="same", activation="relu")(x)
    b = L.UpSampling2D(2)(b)
    b = L.Cropping2D(1)(b)
    x = L.Concatenate()([a, b])
    x = L.Conv2D(24, 3, strides=2, padding="same", activation="relu")(x)
    x = L.Dropout(0.1)(x)
    x = L.Flatten()(x)
    x = L.Dense(32, activation="relu")(x)
    return keras.Model(inputs, L.Dense(5, activation="softmax")(x))


def _sequential_model():
    keras.utils.set_random_seed(12)
    L = keras.layers
    return keras.Sequential([
        keras.Input((10, 10, 2)),
        L.Conv2D(12, 3, activation="relu"),
        L.MaxPooling2D(2),
        L.Conv2D(12, 3, padding="same", activation="relu"),
        L.GlobalAveragePooling2D(),
        L.Dense(3),
    ])


class UnseenArchitecturesTest(absltest.TestCase):

    def _run(self, model, shape):
        x = np.random.default_rng(0).uniform(0, 1, (6, *shape)).astype(np.float32)
        cfg = pipeline.PruneConfig(quiet=True, probe_count=32, activation_error_budget=0.0,
                                   objective="budgets", guard=fidelity.Guard(min_agreement=0.8),
                                   constant_error_budget=0.2, merge_error_budget=0.2)
        result = pipeline.compress(model, cfg)
        got = runtime.predict(result.tflite, x)
        want = result.model.predict(x, verbose=0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        return result

    def test_residual_depthwise_dilated_concat(self):
        result = self._run(_residual_model(), (16, 16, 3))
        refused = result.report["channel_removal_refused"]
        # The residual block's two producers form one coupled group: not refused.
        self.assertNotIn("conv2d", refused)
        self.assertNotIn("conv2d_2", refused)
        self.assertIn("Concatenate", refused["conv2d_3"])
        flat = tflite_model.read(result.tflite)
        ours = [op for op in flat.subgraphs[0].operators
                if tflite_model.custom_code(flat, op) == op_format.OP_NAME]
        self.assertGreaterEqual(len(ours), 4)
        self.assertGreater(result.report["totals"]["parameter_reduction"], 0.2)

    def test_sequential_without_batch_norm(self):
        result = self._run(_sequential_model(), (10, 10, 2))
        self.assertGreater(result.report["totals"]["parameter_reduction"], 0.1)


if __name__ == "__main__":
    absltest.main()
