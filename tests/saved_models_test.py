"""Models as users have them: built, saved to disk (.keras or .h5), reloaded, then pruned.

Covers what real CNNs contain beyond the demo: Sequential files (which Keras reloads with extra
call nodes per layer), SeparableConv2D (its pointwise half runs our op), DepthwiseConv2D,
grouped and transposed convs (stay builtin, still counted), PReLU/LeakyReLU/ELU/swish/GELU and
Rescaling, dynamic input sizes, dense output maps and several outputs. In every case the
written .tflite must compute the reduced Keras model, and every layer's MACs are in the
report's totals.
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
from absl.testing import absltest

from hybrid_pruning import (fidelity, graph, io, op_format, pipeline, runtime, statistics, tflite_model)

import test_models

L = keras.layers


def _config(**kw) -> pipeline.PruneConfig:
    # Activation thresholds exist only in the .tflite: off, so that it must equal Keras.
    # The per-layer budgets, judged by a guard of 0.8: these tests are about structure (what
    # is loaded, pruned, kept and written), not the default guard.
    base = dict(quiet=True, probe_count=24, activation_error_budget=0.0, objective="budgets",
                guard=fidelity.Guard(min_agreement=0.8))
    base.update(kw)
    return pipeline.PruneConfig(**base)


def _ours(tflite: bytes) -> int:
    flat = tflite_model.read(tflite)
    return sum(tflite_model.custom_code(flat, op) == op_format.OP_NAME
               for op in flat.subgraphs[0].operators)


def _all_macs(model) -> int:
    return sum(graph.layer_macs(layer) for layer in model.layers)


class SavedModelsTest(absltest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))

    def _reload(self, model, name: str):
        path = os.path.join(self.dir, name)
        model.save(path)
        return io.load_keras_model(path)

    def _check_matches(self, result, shape, outputs: int = 1):
        x = np.random.default_rng(5).uniform(0, 1, (4, *shape)).astype(np.float32)
        got = runtime.predict_all(result.tflite, x)
        want = result.model.predict(x, verbose=0)
        want = want if isinstance(want, list) else [want]
        self.assertLen(got, outputs)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())

    def test_sequential_file_prunes_every_conv(self):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([
            keras.Input((12, 12, 3)),
            L.Conv2D(16, 3, padding="same", use_bias=False), L.BatchNormalization(), L.ReLU(),
            L.Conv2D(16, 3, padding="same", use_bias=False), L.BatchNormalization(), L.ReLU(),
            L.MaxPooling2D(2),
            L.Conv2D(24, 3, use_bias=False), L.BatchNormalization(), L.ReLU(),
            L.Flatten(), L.Dense(5, activation="softmax"),
        ])
        test_models.randomize_batch_norm(model, 1)
        reloaded = self._reload(model, "seq.keras")
        # What Keras does on reload, and what broke sharing detection before.
        self.assertGreater(len(reloaded.layers[0]._inbound_nodes), 1)
        result = pipeline.compress(reloaded, _config())
        kinds = {r["layer"]: r["runs_as"] for r in result.report["layers"]}
        self.assertLen(kinds, 4)
        self.assertEqual(_ours(result.tflite), 3)
        self.assertNotIn("shared", str(result.report["skipped_layers"]))
        self._check_matches(result, (12, 12, 3))

    def test_separable_residual_classifier_from_h5(self):
        keras.utils.set_random_seed(2)
        inputs = keras.Input((16, 16, 3))
        x = L.Rescaling(1 / 255.0)(inputs)
        x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
        skip = L.Conv2D(32, 1, strides=2, padding="same", use_bias=False)(x)
        skip = L.BatchNormalization()(skip)
        y = L.SeparableConv2D(32, 3, padding="same", use_bias=False)(x)
        y = L.BatchNormalization()(y)
        y = L.Activation("swish")(y)
        y = L.SeparableConv2D(32, 3, padding="same", use_bias=False)(y)
        y = L.BatchNormalization()(y)
        y = L.MaxPooling2D(3, strides=2, padding="same")(y)
        x = L.Add()([y, skip])
        x = L.SeparableConv2D(24, 3, padding="same", activation="relu")(x)
        x = L.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, L.Dense(7, activation="softmax")(x))
        test_models.randomize_batch_norm(model, 2)
        reloaded = self._reload(model, "xception.h5")
        result = pipeline.compress(reloaded, _config(input_range=(0.0, 255.0),
                                                     merge_error_budget=0.2))
        rows = {r["layer"]: r for r in result.report["layers"]}
        separable = [n for n, r in rows.items() if r["kind"] == "separable"]
        self.assertLen(separable, 3)
        for name in separable:
            self.assertEqual(rows[name]["runs_as"], op_format.OP_NAME, name)
        depthwise = [b for b in result.report["builtin_layers"] if b["layer"].endswith(
            "/depthwise")]
        self.assertLen(depthwise, 3)
        # Every layer's MACs are in the totals, pruned or not.
        self.assertEqual(result.report["totals"]["macs_before"], _all_macs(
            graph.normalize(reloaded)))
        self._check_matches(result, (16, 16, 3))

    def test_tensor_expressions_hard_swish_and_squeeze_excite(self):
        # MobileNetV3's blocks: hard-swish written as expressions on tensors (x + 3.0,
        # * (1 / 6)), which Keras 3 keeps as operations outside model.layers, and a
        # squeeze-excite Multiply. A constant of one value per channel cannot lose channels.
        keras.utils.set_random_seed(9)
        inputs = keras.Input((12, 12, 3))
        x = L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
        x = L.BatchNormalization()(x)
        x = x * (L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0))
        s = L.GlobalAveragePooling2D(keepdims=True)(x)
        s = L.Conv2D(8, 1, activation="relu")(s)
        s = L.Conv2D(16, 1)(s)
        x = L.Multiply()([x, L.ReLU(6.0)(s + 3.0) * (1.0 / 6.0)])
        x = L.Conv2D(24, 3, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x) * np.linspace(0.5, 1.5, 24).astype(np.float32)
        x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
        x = L.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, L.Dense(5, activation="softmax")(x))
        test_models.randomize_batch_norm(model, 9)
        reloaded = self._reload(model, "hard_swish.keras")
        self.assertGreater(len(reloaded.operations), len(reloaded.layers))
        convs = [l.name for l in reloaded.layers if graph.class_name(l) == "Conv2D"]
        groups, refused = graph.channel_groups(reloaded)
        # The first conv's channels run through the expressions into the SE Multiply, which
        # couples them with the SE's second conv; the third conv's meet the constant.
        self.assertIn([convs[0], convs[2]], [[p.name for p in g.producers] for g in groups])
        self.assertIn("Multiply", refused[convs[3]])
        result = pipeline.compress(reloaded, _config())
        self.assertEqual(_ours(result.tflite), len(result.report["layers"]) - 1)
        self._check_matches(result, (12, 12, 3))

    def test_grouped_transposed_and_depthwise_stay_builtin(self):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((12, 12, 4))
        x = L.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        x = L.Conv2D(8, 3, padding="same", groups=2, activation="relu", name="grouped")(x)
        x = L.DepthwiseConv2D(3, padding="same")(x)
        x = L.Conv2D(12, 1, activation="relu")(x)
        x = L.Conv2DTranspose(6, 3, strides=2, padding="same")(x)
        model = keras.Model(inputs, L.Conv2D(2, 1)(x))
        reloaded = self._reload(model, "mixed.keras")
        result = pipeline.compress(reloaded, _config(guard=pipeline.fidelity.Guard(
            max_relative_error=None)))
        builtin = {b["kind"] for b in result.report["builtin_layers"]}
        self.assertEqual(builtin, {"Conv2D", "DepthwiseConv2D", "Conv2DTranspose"})
        self.assertIn("grouped", result.report["skipped_layers"]["grouped"])
        self.assertEqual(result.report["totals"]["macs_before"], _all_macs(
            graph.normalize(reloaded)))
        self._check_matches(result, (12, 12, 4))

    def test_dynamic_input_needs_a_shape_and_dense_maps_use_relative_error(self):
        keras.utils.set_random_seed(4)
        inputs = keras.Input((None, None, 3))
        x = L.Conv2D(16, 3, padding="same")(inputs)
        x = L.PReLU(shared_axes=[1, 2])(x)
        x = L.Conv2D(16, 3, padding="same")(x)
        x = L.LeakyReLU(0.1)(x)
        x = L.Conv2D(16, 3, padding="same", activation="elu")(x)
        x = L.Activation("gelu")(x)
        model = keras.Model(inputs, L.Conv2D(1, 1, activation="sigmoid")(x))
        # Two filters of the first conv are one filter twice (and their PReLU slopes agree):
        # merging removes the copy through the PReLU, whose slopes lose it too.
        w, b = model.layers[1].get_weights()
        w[..., 5], b[5] = w[..., 2], b[2]
        model.layers[1].set_weights([w, b])
        prelu = model.layers[2]
        alpha = prelu.get_weights()[0] + np.linspace(0.1, 0.3, 16)
        alpha[..., 5] = alpha[..., 2]
        prelu.set_weights([alpha])
        reloaded = self._reload(model, "fcn.keras")
        with self.assertRaisesRegex(io.UserError, "--input_shape"):
            pipeline.compress(reloaded, _config())
        result = pipeline.compress(reloaded, _config(input_shape=(20, 20, 3)))
        self.assertIn("relative_error", result.report["fidelity_on_probes"])
        self.assertNotIn("top1_agreement", result.report["fidelity_on_probes"])
        first = result.report["layers"][0]
        self.assertLess(first["channels_after"], first["channels_before"])
        self._check_matches(result, (20, 20, 3))

    def test_residual_group_loses_channels_across_the_add(self):
        keras.utils.set_random_seed(8)
        inputs = keras.Input((12, 12, 3))
        x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
        x = L.BatchNormalization(name="stem_bn")(x)
        x = L.ReLU()(x)
        y = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(x)
        y = L.Conv2D(16, 3, padding="same", use_bias=False, name="p2")(y)
        y = L.BatchNormalization(name="p2_bn")(y)
        x = L.ReLU()(L.Add()([x, y]))
        x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
        x = L.Conv2D(8, 1, activation="relu", name="head")(x)
        x = L.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, L.Dense(5, activation="softmax")(x))
        test_models.randomize_batch_norm(model, 8)
        # Channel 7 of the residual stream is channel 3 again, in both producers: after the
        # Add it is an exact copy, which only removal across the whole group can exploit.
        for conv, bn in (("stem", "stem_bn"), ("p2", "p2_bn")):
            (w,) = model.get_layer(conv).get_weights()
            w[..., 7] = w[..., 3]
            model.get_layer(conv).set_weights([w])
            stats = model.get_layer(bn).get_weights()
            for s in stats:
                s[7] = s[3]
            model.get_layer(bn).set_weights(stats)
        dw = model.get_layer("dw").get_weights()
        dw[0][:, :, 7], dw[1][7] = dw[0][:, :, 3], dw[1][3]
        model.get_layer("dw").set_weights(dw)
        reloaded = self._reload(model, "resnet.keras")
        result = pipeline.compress(reloaded, _config(
            weight_error_budget=0.0, constant_error_budget=0.0, merge_error_budget=1e-4))
        rows = {r["layer"]: r for r in result.report["layers"]}
        for producer in ("stem", "p2"):
            self.assertEqual((rows[producer]["channels_before"], rows[producer]["channels_after"]),
                             (16, 15), producer)
        self.assertNotIn("stem", result.report["channel_removal_refused"])
        x = np.random.default_rng(1).uniform(0, 1, (4, 12, 12, 3)).astype(np.float32)
        np.testing.assert_allclose(result.model.predict(x, verbose=0),
                                   reloaded.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
        self._check_matches(result, (12, 12, 3))

    def test_too_little_memory_is_refused_before_any_work(self):
        keras.utils.set_random_seed(9)
        model = keras.Sequential([keras.Input((10, 10, 2)), L.Conv2D(8, 3), L.Flatten(),
                                  L.Dense(3)])
        reloaded = self._reload(model, "tiny.keras")
        saved = statistics.available_bytes
        statistics.available_bytes = lambda: 1 << 20
        try:
            with self.assertRaisesRegex(io.UserError, "GB.*--probe_count=24"):
                pipeline.compress(reloaded, _config())
        finally:
            statistics.available_bytes = saved

    def test_several_outputs_in_keras_order(self):
        keras.utils.set_random_seed(6)
        inputs = keras.Input((10, 10, 3))
        x = L.Conv2D(12, 3, activation="relu")(inputs)
        x = L.Conv2D(12, 3, activation="relu")(x)
        x = L.GlobalAveragePooling2D()(x)
        heads = [L.Dense(2, name="z_box")(x), L.Dense(4, activation="softmax", name="a_cls")(x),
                 L.Dense(1, name="m_score")(x)]
        reloaded = self._reload(keras.Model(inputs, heads), "heads.keras")
        result = pipeline.compress(reloaded, _config())
        self.assertLen(result.report["fidelity_on_probes"]["outputs"], 3)
        self._check_matches(result, (10, 10, 3), outputs=3)

    def test_guard_reports_a_miss_and_backoff_meets_it(self):
        keras.utils.set_random_seed(7)
        model = keras.Sequential([
            keras.Input((10, 10, 2)), L.Conv2D(12, 3, activation="relu"),
            L.Conv2D(12, 3, activation="relu"), L.Flatten(), L.Dense(4)])
        reloaded = self._reload(model, "small.keras")
        crushed = pipeline.compress(reloaded, _config(target_macs=0.0))
        self.assertIn("--guard_agreement", crushed.fidelity_miss)
        self.assertFalse(crushed.report["fidelity_guard"]["met"])
        # Per-layer budgets far too large: halved until the guard holds.
        kept = pipeline.compress(reloaded, _config(weight_error_budget=3.0))
        self.assertIsNone(kept.fidelity_miss)
        self.assertLess(kept.report["fidelity_guard"]["budget_scale"], 1.0)
        self.assertGreaterEqual(kept.report["fidelity_on_probes"]["top1_agreement"], 0.8)
        self.assertEqual(kept.report["fidelity_guard"]["min_agreement"], 0.8)


if __name__ == "__main__":
    absltest.main()
