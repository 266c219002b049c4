"""prune accepts .keras, .h5 and tf.keras SavedModel directories, and models without
BatchNorm; each comes out as a working .tflite with our op."""

from __future__ import annotations

import os
import tempfile

import numpy as np
from absl.testing import absltest

from hybrid_pruning import io, op_format, pipeline, runtime, tflite_model

import test_models



def _cnn(layers_module, batch_norm: bool, seed: int):
    """A small CNN with either Keras: conv (+BN) + ReLU blocks, a strided conv, pooling, head."""
    L = layers_module
    inputs = L.Input((12, 12, 3))
    x = inputs
    for filters, strides in [(16, 1), (24, 2), (24, 1)]:
        x = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=not batch_norm)(x)
        if batch_norm:
            x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    return inputs, L.Dense(4)(x)


class ModelFormatsTest(absltest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        self.x = np.random.default_rng(0).uniform(0, 1, (8, 12, 12, 3)).astype(np.float32)

    def _check(self, path: str, original) -> None:
        model = io.load_keras_model(path)
        # Activation thresholds exist only in the .tflite: off, so that it must equal Keras.
        result = pipeline.compress(model, pipeline.PruneConfig(
            objective="budgets", guard=pipeline.fidelity.Guard(min_agreement=0.8),
            quiet=True, probe_count=32, weight_error_budget=0.1, activation_error_budget=0.0,
            constant_error_budget=0.05, merge_error_budget=0.05))
        self.assertGreater(result.report["totals"]["parameter_reduction"], 0.1)
        flat = tflite_model.read(result.tflite)
        ours = [op for op in flat.subgraphs[0].operators
                if tflite_model.custom_code(flat, op) == op_format.OP_NAME]
        self.assertLen(ours, 3)
        # The .tflite computes exactly the reduced Keras model (channel surgery, BatchNorm
        # folding, bias corrections and the packed weights all agree) ...
        got, want = runtime.predict(result.tflite, self.x), result.model.predict(self.x, verbose=0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        # ... which really changed.
        self.assertGreater(np.abs(want - original(self.x)).max(), 1e-4)

    def test_keras3_h5_without_batch_norm(self):
        import keras

        keras.utils.set_random_seed(1)
        model = keras.Model(*_cnn(keras.layers, batch_norm=False, seed=1))
        path = os.path.join(self.dir, "m.h5")
        model.save(path)
        self._check(path, lambda x: model.predict(x, verbose=0))

    def test_tf_keras_saved_model_with_batch_norm(self):
        import tf_keras

        tf_keras.utils.set_random_seed(2)
        model = tf_keras.Model(*_cnn(tf_keras.layers, batch_norm=True, seed=2))
        test_models.randomize_batch_norm(model, 2)
        path = os.path.join(self.dir, "saved")
        model.save(path, save_format="tf")
        self._check(path, lambda x: model.predict(x, verbose=0))

    def test_plain_saved_model_is_refused_by_name(self):
        import tensorflow as tf

        module = tf.Module()
        module.f = tf.function(lambda x: x * 2, input_signature=[tf.TensorSpec([1], tf.float32)])
        path = os.path.join(self.dir, "plain")
        tf.saved_model.save(module, path)
        with self.assertRaisesRegex(io.UserError, "plain.*Keras metadata"):
            io.load_keras_model(path)


if __name__ == "__main__":
    absltest.main()
