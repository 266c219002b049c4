"""convert.Reconverter: the pruning search's checks patch one conversion instead of converting
every candidate; what it emits must run exactly like a fresh conversion of the same weights."""

from __future__ import annotations

import numpy as np
from absl.testing import absltest, parameterized

import test_models
from hybrid_pruning import convert, graph, runtime


def _prune(layers, rng, sparsity: float) -> None:
    """What the search does to a candidate: zeros in every folded kernel, a bias shift where
    the layer can take one."""
    for pl in layers:
        k = pl.folded_kernel
        k = np.where(np.abs(k) < np.quantile(np.abs(k), sparsity), 0.0, k).astype(np.float32)
        delta = (rng.normal(0, 0.1, k.shape[-1]).astype(np.float32)
                 if pl.can_shift_bias else None)
        pl.set_folded(k, delta)


def _outputs(flat: bytes, x) -> list:
    return runtime.predict_all(flat, x, with_ops=False)


class ReconverterTest(parameterized.TestCase):

    @parameterized.parameters("sequential_cnn", "mini_xception", "mixed_fcn", "two_heads")
    def test_patched_weights_run_like_a_fresh_conversion(self, name):
        model = graph.normalize(getattr(test_models, name)())
        layers, _ = graph.prunable_layers(model)
        reconverter = convert.Reconverter(model, layers)
        self.assertIsNotNone(reconverter.slots, "every prunable layer should be patchable")
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (4, *model.inputs[0].shape[1:])).astype(np.float32)
        before = _outputs(reconverter(), x)
        for sparsity in (0.5, 0.8):
            _prune(layers, rng, sparsity)
            patched, fresh = _outputs(reconverter(), x), _outputs(convert.to_tflite(model), x)
            for p, f, b in zip(patched, fresh, before):
                scale = float(np.abs(f).max())
                np.testing.assert_allclose(p, f, atol=1e-5 * scale, rtol=1e-4)
                # The weights changed enough that an unpatched model would fail the check.
                self.assertGreater(float(np.abs(b - f).max()), 1e-3 * scale)
        self.assertEqual(reconverter.conversions, 1)

    def test_a_multiply_folded_into_the_first_conv_is_patched_with_its_factors(self):
        # A Rescaling before the first conv, as in most image models (EfficientNet's stem
        # too): the converter folds the multiply into the conv's filter.
        import keras

        keras.utils.set_random_seed(4)
        inputs = keras.Input((10, 10, 3))
        x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(6, 3, padding="same")(x)
        model = graph.normalize(keras.Model(inputs, x))
        layers, _ = graph.prunable_layers(model)
        reconverter = convert.Reconverter(model, layers)
        self.assertIsNotNone(reconverter.slots)
        self.assertTrue(any(slot[2] is not None for slot in reconverter.slots.values()))
        rng = np.random.default_rng(3)
        x = rng.uniform(0, 255, (3, 10, 10, 3)).astype(np.float32)
        _prune(layers, rng, 0.6)
        patched, fresh = _outputs(reconverter(), x)[0], _outputs(convert.to_tflite(model), x)[0]
        np.testing.assert_allclose(patched, fresh, atol=1e-5 * float(np.abs(fresh).max()),
                                   rtol=1e-4)
        self.assertEqual(reconverter.conversions, 1)

    def test_layers_it_cannot_tell_apart_are_converted_each_time(self):
        import keras

        inputs = keras.Input((8, 8, 4))
        a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
        b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
        model = keras.Model(inputs, b)
        model.get_layer("b").set_weights(model.get_layer("a").get_weights())
        layers, _ = graph.prunable_layers(model)
        reconverter = convert.Reconverter(model, layers)
        self.assertIsNone(reconverter.slots)
        _prune(layers, np.random.default_rng(1), 0.5)
        x = np.random.default_rng(2).uniform(0, 1, (2, 8, 8, 4)).astype(np.float32)
        np.testing.assert_allclose(_outputs(reconverter(), x)[0],
                                   _outputs(convert.to_tflite(model), x)[0], atol=1e-6)
        self.assertEqual(reconverter.conversions, 2)


if __name__ == "__main__":
    absltest.main()
