"""Channel removal and activation pruning on hand-built models with known answers."""

from __future__ import annotations

import time

import keras
import numpy as np
from absl.testing import absltest

from hybrid_pruning import graph, pipeline, report
from hybrid_pruning.techniques import (activation_pruning, channel_merging, channel_reduction,
                                       constant_channels)


def _model(consumer_padding="valid", act=None, between=None):
    """conv1 (4 ch) -> [act] -> [between] -> conv2 (5 ch, 3x3) -> GAP -> Dense."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    if act:
        x = keras.layers.Activation(act)(x)
    if between == "maxpool":
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(5, 3, padding=consumer_padding, name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def _probes(n=32):
    return np.random.default_rng(1).normal(0, 1, (n, 10, 10, 3)).astype(np.float32)


def _set_constant_channel(model, channel=2, value=2.5):
    w, b = model.get_layer("conv1").get_weights()
    w[..., channel] = 0.0
    b[channel] = value
    model.get_layer("conv1").set_weights([w, b])


def _conv2_output(model, x):
    return keras.Model(model.inputs, model.get_layer("conv2").output).predict(x, verbose=0)


class ConstantChannelsTest(absltest.TestCase):

    def test_constant_channel_folds_exactly(self):
        model = _model(consumer_padding="valid", act="relu", between="maxpool")
        _set_constant_channel(model)
        x = _probes()
        new, plans, _ = constant_channels.fold_constant_channels(model, x, error_budget=1e-6)
        self.assertLen(plans, 1)
        self.assertEqual(plans[0].removed, [2])
        self.assertAlmostEqual(plans[0].replacements["conv2"][0].offset, 2.5, places=5)
        self.assertEqual(new.get_layer("conv1").get_weights()[0].shape[-1], 3)
        self.assertEqual(new.get_layer("conv2").get_weights()[0].shape[2], 3)
        np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0),
                                   rtol=1e-5, atol=1e-5)

    def test_zero_padding_border_effect_is_counted_and_refused(self):
        model = _model(consumer_padding="same")
        _set_constant_channel(model, value=0.3)
        x = _probes()
        layers, _ = graph.prunable_layers(model)
        stats = channel_reduction.ConsumerStats(layers[1], graph.layer_inputs(model, layers, x)[1])
        stats.configure(4)
        single = [stats.error([channel_reduction.Candidate(c, None, 0.0, 0.3 if c == 2 else 0.0,
                                                           0.0)]) for c in range(4)]
        # Constant inside the image, yet under SAME padding the fold is wrong at the borders.
        self.assertGreater(single[2], 1e-3)
        self.assertLess(single[2] * 1.01, min(single[:2] + single[3:]))
        _, plans, _ = constant_channels.fold_constant_channels(model, x, error_budget=1e-6)
        self.assertEmpty(plans)
        new, plans, _ = constant_channels.fold_constant_channels(model, x, single[2] * 1.01)
        self.assertEqual(plans[0].removed, [2])
        before, after = _conv2_output(model, x), _conv2_output(new, x)
        measured = np.linalg.norm(after - before) / np.linalg.norm(before)
        self.assertAlmostEqual(measured, plans[0].relative_error, delta=0.05 * measured + 1e-4)


def _bn_model_with_dead_channels():
    """conv1 -> BatchNorm -> ReLU -> conv2: on the probes channels 1 and 2 of conv1 are the
    constant -6, zero after the ReLU. The BatchNorm records that real inputs leave channel 1
    there too (its shift puts it 6 deviations below 0) but spread channel 2 around 0: the
    probes missed channel 2's level."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3, name="conv2")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(
        keras.layers.GlobalAveragePooling2D()(x)))
    w, b = model.get_layer("conv1").get_weights()
    w[..., 1:3], b[1:3] = 0.0, -6.0
    model.get_layer("conv1").set_weights([w, b])
    pre = keras.Model(inputs, model.get_layer("conv1").output).predict(_probes(), verbose=0)
    mean, var = pre.mean((0, 1, 2)), pre.var((0, 1, 2))
    mean[1:3], var[1:3] = (-6.0, 0.0), 1.0
    beta = np.array([0.0, -6.0, 0.0, 0.0])
    model.get_layer("bn").set_weights([np.ones(4), beta, mean, var])
    return model


class UnderExercisedChannelsTest(absltest.TestCase):

    def test_channel_the_batch_norm_records_as_varying_stays(self):
        model = _bn_model_with_dead_channels()
        x = _probes()
        for technique in (constant_channels.fold_constant_channels,
                          channel_merging.merge_channels):
            _, plans, _ = technique(model, x, error_budget=1e-3)
            self.assertLen(plans, 1, technique.__name__)
            self.assertIn(1, plans[0].removed, technique.__name__)
            self.assertNotIn(2, plans[0].removed, technique.__name__)
            self.assertEqual(plans[0].unjudged, 1)

    def test_the_report_names_the_channels_kept_unjudged(self):
        # The BatchNorm-matched probes cannot move channel 2 either (its kernel is zero).
        result = pipeline.compress(_bn_model_with_dead_channels(), pipeline.PruneConfig(
            quiet=True, objective="budgets", probe_count=32))
        self.assertEqual(result.report["channels_kept_unjudged"], {"conv1": 1})
        self.assertIn("channels of conv1 kept: 1 that the probes leave far flatter",
                      report.summary(result.report))

    def test_probes_that_match_the_batch_norm_are_trusted(self):
        model = _bn_model_with_dead_channels()
        layers, _ = graph.prunable_layers(model)
        values = graph.layer_inputs(model, layers, _probes())[1].reshape(-1, 4)
        missed = channel_reduction.under_exercised(model.get_layer("conv2"), values)
        np.testing.assert_array_equal(missed, [False, False, True, False])
        # A layer that does not read a BatchNorm through an activation: nothing to compare.
        self.assertIsNone(channel_reduction.under_exercised(model.get_layer("head"), values))


class ChannelMergingTest(absltest.TestCase):

    def test_affine_copy_merges_with_zero_error(self):
        model = _model(consumer_padding="valid")  # linear between conv1 and conv2
        w, b = model.get_layer("conv1").get_weights()
        w[..., 3] = -2.0 * w[..., 1]
        b[3] = -2.0 * b[1] + 0.5
        model.get_layer("conv1").set_weights([w, b])
        x = _probes()
        new, plans, _ = channel_merging.merge_channels(model, x, error_budget=1e-6)
        self.assertLen(plans, 1)
        (cand,) = plans[0].replacements["conv2"]
        self.assertEqual({cand.channel, cand.source}, {1, 3})
        self.assertEqual(plans[0].removed, [cand.channel])
        self.assertEqual(new.get_layer("conv1").get_weights()[0].shape[-1], 3)
        np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0),
                                   rtol=1e-4, atol=1e-4)

    def test_nothing_to_merge_in_independent_channels(self):
        model = _model()
        _, plans, _ = channel_merging.merge_channels(model, _probes(), error_budget=1e-6)
        self.assertEmpty(plans)

    def test_512_channel_layer_takes_seconds(self):
        keras.utils.set_random_seed(2)
        inputs = keras.Input((8, 8, 64))
        h = keras.layers.Conv2D(512, 1, activation="relu", name="wide")(inputs)
        y = keras.layers.Conv2D(512, 1, name="next")(h)
        model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(y))
        x = np.random.default_rng(0).normal(0, 1, (64, 8, 8, 64)).astype(np.float32)
        start = time.time()
        new, plans, _ = channel_merging.merge_channels(model, x, error_budget=0.05)
        elapsed = time.time() - start
        self.assertLess(elapsed, 30.0)
        # 64 input channels through a ReLU: the 512 outputs are highly redundant.
        self.assertTrue(plans)
        self.assertLess(new.get_layer("wide").get_weights()[0].shape[-1], 512)


class ChainsTest(absltest.TestCase):

    def test_residual_add_couples_producers_into_one_group(self):
        inputs = keras.Input((8, 8, 4))
        a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
        b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
        s = keras.layers.Add()([a, b])
        out = keras.layers.Conv2D(2, 1, name="c")(s)
        model = keras.Model(inputs, out)
        groups, refused = graph.channel_groups(model)
        self.assertLen(groups, 1)
        self.assertEqual(sorted(p.name for p in groups[0].producers), ["a", "b"])
        # b reads a's channels and writes them: it is a consumer and a producer of the group.
        self.assertEqual(sorted(c.name for c, _ in groups[0].consumers), ["b", "c"])
        self.assertIn("c", refused)  # c is the model output

    def test_concatenate_and_model_input_refuse(self):
        inputs = keras.Input((8, 8, 4))
        a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
        b = keras.layers.Conv2D(4, 1, name="b")(inputs)
        cat = keras.layers.Concatenate()([a, b])
        r = keras.layers.Add()([keras.layers.Conv2D(4, 1, name="r")(inputs), inputs])
        model = keras.Model(inputs, [keras.layers.Conv2D(2, 1)(cat),
                                     keras.layers.Conv2D(2, 1)(r)])
        groups, refused = graph.channel_groups(model)
        self.assertEmpty(groups)
        self.assertIn("Concatenate", refused["a"])
        self.assertIn("model input", refused["r"])

    def test_error_of_empty_and_single_sets(self):
        model = _model()
        layers, _ = graph.prunable_layers(model)
        x = graph.layer_inputs(model, layers, _probes())[1]
        stats = channel_reduction.ConsumerStats(layers[1], x)
        stats.configure(4)
        self.assertEqual(stats.error([]), 0.0)
        self.assertGreater(stats.error([channel_reduction.Candidate(0, None, 0.0, 0.0, 0.0)]), 0)


class ActivationPruningTest(absltest.TestCase):

    def test_zero_budget_sets_no_thresholds_and_budget_bounds_error(self):
        model = _model(act="relu")
        layers, _ = graph.prunable_layers(model)
        x = graph.layer_inputs(model, layers, _probes())[1]
        none = activation_pruning.prune_layer(layers[1], x, 0.0)
        self.assertIsNone(none.thresholds)
        self.assertAlmostEqual(none.activation_sparsity, float(np.mean(x == 0)), places=6)
        some = activation_pruning.prune_layer(layers[1], x, 0.2)
        self.assertIsNotNone(some.thresholds)
        self.assertGreater(some.activation_sparsity, none.activation_sparsity + 0.05)
        # The error it reports is the error of thresholding the input of conv2.
        conv2 = keras.Model(layers[1].layer.input, layers[1].layer.output)
        want = conv2.predict(x, verbose=0)
        got = conv2.predict(activation_pruning.threshold(x, some.thresholds), verbose=0)
        measured = np.linalg.norm(got - want) / np.linalg.norm(want)
        self.assertAlmostEqual(measured, some.relative_error, delta=0.02)
        self.assertLessEqual(measured, 0.2 + 0.02)


if __name__ == "__main__":
    absltest.main()
