"""Data-free probes: 'auto' picks BatchNorm-matched probes where the model has BatchNorm and
image-like ones where it does not, and on a trained model without BatchNorm (committed,
loaded from disk) image-like probes keep far more of its real accuracy than uniform noise;
BatchNorm-matched probes are optimised in mini-batches where all of them would not fit in
memory at once, with the whole set's statistics, and on big images each probe's per-channel
level and contrast move at a rate of their own."""

from __future__ import annotations

import pathlib

import numpy as np
from absl.testing import absltest

from hybrid_pruning import data, fidelity, graph, io, pipeline, probes, runtime, statistics

_NOBN = pathlib.Path(__file__).parent.parent / "python" / "demo" / "digits_cnn_nobn.keras"


def _neighbour_correlation(x: np.ndarray) -> float:
    a, b = x[:, :, :-1].ravel(), x[:, :, 1:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _statistics_mismatch(model, x: np.ndarray) -> float:
    """Mean over BatchNorm layers and channels of |mean - moving mean| / moving std, on all
    of x at once."""
    bns = [l for l in model.layers if graph.class_name(l) == "BatchNormalization"]
    tap = graph.keras_module(model).Model(model.inputs, [bn.input for bn in bns])
    total = 0.0
    for bn, f in zip(bns, tap.predict(x, verbose=0)):
        w = {graph.variable_name(v): np.asarray(v.numpy()) for v in bn.weights}
        f = f.reshape(-1, f.shape[-1])
        std = np.sqrt(w["moving_variance"] + bn.epsilon)
        total += float(np.mean(np.abs(f.mean(0) - w["moving_mean"]) / std))
    return total / len(bns)


class ProbesTest(absltest.TestCase):

    @classmethod
    def setUpClass(cls):
        _, _, cls.x, cls.y = data.digits_split()
        cls.nobn = io.load_keras_model(str(_NOBN))

    def test_auto_choice(self):
        self.assertEqual(probes.resolve(self.nobn, "auto"), "image")
        demo = io.load_keras_model(str(io.DEMO_MODEL))
        self.assertEqual(probes.resolve(demo, "auto"), "bn")

    def test_image_probes_look_like_images(self):
        image = probes.make_probes(self.nobn, "image", 64, (0.0, 1.0), 0)
        noise = probes.make_probes(self.nobn, "random", 64, (0.0, 1.0), 0)
        self.assertEqual(image.shape, (64, 16, 16, 1))
        self.assertGreaterEqual(image.min(), 0.0)
        self.assertLessEqual(image.max(), 1.0)
        # Neighbouring pixels of natural images are strongly correlated; of noise, not.
        self.assertGreater(_neighbour_correlation(image), 0.5)
        self.assertLess(abs(_neighbour_correlation(noise)), 0.1)

    def test_bn_probes_in_batches_follow_the_whole_set(self):
        demo = io.load_keras_model(str(io.DEMO_MODEL))
        whole = probes.bn_matched_probes(demo, 24, (0.0, 1.0), 3, steps=1)
        # A budget of a few probes' activations: batches of 1-3 probes, not 24.
        per_probe = statistics.activation_bytes_per_probe(demo)
        batched = probes.bn_matched_probes(demo, 24, (0.0, 1.0), 3, steps=1,
                                           batch_bytes=6 * per_probe)
        # One Adam step moves each value by about the learning rate along its gradient's
        # sign: the same step unless that gradient is float noise.
        start = probes.random_probes(demo, 24, (0.0, 1.0), 3)
        self.assertGreater(np.mean(np.abs(whole - start)), 0.05)
        self.assertGreater(np.mean(np.isclose(whole, batched, atol=1e-4)), 0.999)
        # Over many steps both bring the statistics about as close.
        whole = probes.bn_matched_probes(demo, 24, (0.0, 1.0), 3, steps=40)
        batched = probes.bn_matched_probes(demo, 24, (0.0, 1.0), 3, steps=40,
                                           batch_bytes=6 * per_probe)
        before = _statistics_mismatch(demo, start)
        after = [_statistics_mismatch(demo, x) for x in (whole, batched)]
        self.assertLess(max(after), 0.5 * before, (before, after))
        self.assertLess(abs(after[0] - after[1]), 0.1 * after[0], after)

    def test_bn_learning_rate_falls_with_the_pixel_count(self):
        import keras

        demo = io.load_keras_model(str(io.DEMO_MODEL))
        self.assertEqual(probes.bn_learning_rate(demo), 0.1)
        big = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Conv2D(2, 3),
                                keras.layers.BatchNormalization()])
        # Where a 100-step descent at 0.1 left a trained model's statistics far off.
        self.assertLess(probes.bn_learning_rate(big), 0.012)

    def test_bn_probes_reach_a_recorded_level_and_contrast_through_their_own_rate(self):
        import keras

        self.assertEqual(probes.bn_affine_rate(probes.bn_learning_rate(
            io.load_keras_model(str(io.DEMO_MODEL)))), 0.0)
        # 128x128: the pixels' rate is a quarter of the full one. The BatchNorms record
        # inputs darker and flatter than the uniform start (level 0.1 to 0.4).
        keras.utils.set_random_seed(0)
        inputs = keras.Input((128, 128, 3))
        h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
        h = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same")(h))
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
        self.assertAlmostEqual(probes.bn_affine_rate(probes.bn_learning_rate(model)), 0.075)
        real = 0.1 + 0.3 * probes.random_probes(model, 64, (0.0, 1.0), 5)
        for bn in [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]:
            f = keras.Model(inputs, bn.input).predict(real, verbose=0)
            gamma, beta, _, _ = bn.get_weights()
            bn.set_weights([gamma, beta, f.mean((0, 1, 2)), f.var((0, 1, 2))])
        with_affine = probes.bn_matched_probes(model, 32, (0.0, 1.0), 0, steps=30)
        rate = probes.bn_affine_rate
        try:
            probes.bn_affine_rate = lambda pixel_rate: 0.0
            pixels_only = probes.bn_matched_probes(model, 32, (0.0, 1.0), 0, steps=30)
        finally:
            probes.bn_affine_rate = rate
        mismatch = [_statistics_mismatch(model, x) for x in (with_affine, pixels_only)]
        self.assertLess(mismatch[0], 0.7 * mismatch[1], mismatch)

    def test_bn_probes_stay_finite_where_activations_overflow(self):
        import keras

        # Statistics no input can reach without overflowing float32 on the way.
        inputs = keras.Input((6, 6, 1))
        h = keras.layers.Conv2D(2, 3, padding="same")(inputs)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.Conv2D(2, 3, padding="same")(h)
        h = keras.layers.BatchNormalization()(h)
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2D):
                layer.set_weights([np.full((3, 3, layer.input.shape[-1], 2), 3e18, np.float32),
                                   np.zeros(2, np.float32)])
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.set_weights([np.ones(2), np.zeros(2), np.full(2, 1e30), np.ones(2)])
        x = probes.bn_matched_probes(model, 8, (0.0, 1.0), 0, steps=5)
        self.assertTrue(np.all(np.isfinite(x)))
        np.testing.assert_array_equal(x, probes.random_probes(model, 8, (0.0, 1.0), 0))

    def test_image_probes_keep_real_accuracy_where_noise_does_not(self):
        accuracy = {}
        for kind in ("random", "image"):
            # The same budgets for both, no back-off: the probes alone differ.
            result = pipeline.compress(self.nobn, pipeline.PruneConfig(
                quiet=True, probe=kind, auto_backoff=False, objective="budgets"))
            self.assertEqual(result.report["probes"]["kind"], kind)
            out = runtime.predict_all(result.tflite, self.x)[0]
            accuracy[kind] = float(np.mean(out.argmax(1) == self.y))
        original = float(np.mean(self.nobn.predict(self.x, verbose=0).argmax(1) == self.y))
        self.assertGreater(original, 0.98)
        self.assertGreater(accuracy["image"], accuracy["random"] + 0.2, accuracy)


if __name__ == "__main__":
    absltest.main()
