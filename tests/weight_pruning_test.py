"""Weight pruning on small hand-built Keras models where the right answer is known."""

from __future__ import annotations

import keras
import numpy as np
from absl.testing import absltest, parameterized

from tensorflow.lite.python import schema_py_generated as schema

from hybrid_pruning import (convert, graph, op_format, runtime, statistics, tflite_model,
                            tflite_rewrite)
from hybrid_pruning.techniques import weight_pruning


def _conv_model(strides=1, dilation=1, padding="same", batch_norm=True, use_bias=False,
                activation=None, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((11, 9, 6))
    x = keras.layers.Conv2D(12, 3, strides=strides, dilation_rate=dilation, padding=padding,
                            use_bias=use_bias, activation=activation)(inputs)
    if batch_norm:
        bn = keras.layers.BatchNormalization()
        x = bn(x)
        rng = np.random.default_rng(seed)
        bn.set_weights([rng.uniform(0.5, 2, 12), rng.normal(0, 1, 12), rng.normal(0, 1, 12),
                        rng.uniform(0.5, 2, 12)])
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)
    return keras.Model(inputs, outputs)


def _x(n=16, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (n, 11, 9, 6)).astype(np.float32)


class FoldingAndErrorTest(parameterized.TestCase):

    @parameterized.parameters(
        dict(strides=1, dilation=1, padding="same"),
        dict(strides=2, dilation=1, padding="same"),
        dict(strides=1, dilation=2, padding="valid"),
        dict(strides=2, dilation=1, padding="valid", batch_norm=False, use_bias=True),
    )
    def test_predicted_error_equals_measured_error(self, **kw):
        model = _conv_model(**kw)
        x = _x()
        layers, _ = graph.prunable_layers(model)
        conv = layers[0]
        self.assertEqual(conv.batch_norm is not None, kw.get("batch_norm", True))
        target = conv.batch_norm.output if conv.batch_norm is not None else conv.layer.output
        tap = keras.Model(model.inputs, target)
        before = tap.predict(x, verbose=0)
        # Folding: the folded kernel and bias reproduce conv + BatchNorm.
        p = statistics.patch_rows(conv, x)  # every position, in TF order
        folded = (p @ conv.folded_kernel.reshape(-1, 12) + conv.folded_bias).reshape(before.shape)
        np.testing.assert_allclose(folded, before, rtol=1e-4, atol=1e-4)
        inputs = graph.layer_inputs(model, layers, x)
        result = weight_pruning.prune_layer(conv, inputs[0], error_budget=0.3)
        self.assertGreater(result.sparsity, 0.05)
        conv.set_folded(result.kernel, result.bias_delta)
        after = tap.predict(x, verbose=0)
        measured = np.linalg.norm(after - before) / np.linalg.norm(before)
        self.assertAlmostEqual(measured, result.relative_error, delta=0.02 + 0.05 * measured)
        self.assertLessEqual(measured, 0.3 + 0.02)
        # The kernel itself carries the zeros that the rewrite will pack.
        self.assertAlmostEqual(float(np.mean(conv.kernel == 0)), result.sparsity, places=6)

    def test_zero_budget_is_the_identity(self):
        model = _conv_model()
        layers, _ = graph.prunable_layers(model)
        before = [pl.kernel.copy() for pl in layers]
        results = weight_pruning.prune_weights(layers, graph.layer_inputs(model, layers, _x()), 0.0)
        for pl, r, w in zip(layers, results, before):
            self.assertEqual(r.sparsity, 0.0)
            np.testing.assert_allclose(pl.kernel, w, rtol=1e-6)

    def test_refit_beats_plain_magnitude(self):
        model = _conv_model()
        layers, _ = graph.prunable_layers(model)
        # Correlated channels: the kept weights can stand in for the pruned ones.
        rng = np.random.default_rng(4)
        z = rng.normal(0, 1, (64, 11, 9, 2)) @ rng.normal(0, 1, (2, 6))
        z += 0.05 * rng.normal(0, 1, z.shape)
        x = graph.layer_inputs(model, layers, z.astype(np.float32))[0]
        plain = weight_pruning.prune_layer(layers[0], x, 0.2, reconstruct=False)
        refit = weight_pruning.prune_layer(layers[0], x, 0.2, reconstruct=True)
        self.assertGreater(refit.sparsity, plain.sparsity)

    def test_conjugate_gradient_refit_equals_direct_solves(self):
        rng = np.random.default_rng(3)
        k, out_c = 1200, 6
        p = rng.normal(size=(4000, k)) @ rng.normal(size=(k, k)) * 0.05 + rng.normal(size=k)
        cov = np.cov(p, rowvar=False)
        w2 = rng.normal(size=(k, out_c))
        keep = rng.uniform(size=(k, out_c)) > 0.7
        self.assertGreater(k, weight_pruning._DIRECT_MAX)  # refit takes the CG path
        cg = weight_pruning.refit(cov, w2, keep)
        saved = weight_pruning._DIRECT_MAX
        weight_pruning._DIRECT_MAX = k
        try:
            direct = weight_pruning.refit(cov, w2, keep)
        finally:
            weight_pruning._DIRECT_MAX = saved
        self.assertTrue(np.all(cg[~keep] == 0))
        # Same output error to within a hundredth of it.
        err = lambda new: float(np.sum((cov @ (w2 - new)) * (w2 - new)))
        self.assertAlmostEqual(err(cg), err(direct), delta=0.01 * err(direct))

    def test_block_structure(self):
        model = _conv_model()
        layers, _ = graph.prunable_layers(model)
        x = graph.layer_inputs(model, layers, _x())[0]
        r = weight_pruning.prune_layer(layers[0], x, 0.3, block_size=4)
        blocks = (r.kernel.reshape(-1, 3, 4) != 0)  # [K, 3 blocks, 4 channels]
        self.assertTrue(np.all(blocks.all(-1) | ~blocks.any(-1)), "blocks are all-or-nothing")
        self.assertGreater(r.sparsity, 0.05)


class RewriteTest(absltest.TestCase):

    def test_mixed_model_runs_and_matches_keras(self):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((8, 8, 3))
        a = keras.layers.Conv2D(8, 3, padding="same", activation="relu6")(inputs)
        b = keras.layers.Conv2D(8, 3, padding="same", activation="tanh")(a)
        c = keras.layers.Conv2D(4, 1, use_bias=False)(b)
        model = keras.Model(inputs, c)
        for layer in model.layers[1:3]:
            w = layer.get_weights()
            w[0][np.abs(w[0]) < np.quantile(np.abs(w[0]), 0.6)] = 0
            layer.set_weights(w)
        rewritten, records = tflite_rewrite.rewrite(convert.to_tflite(model))
        # tanh is a separate op after the conv; the dense 1x1 conv stays builtin.
        self.assertEqual([r.runs_as for r in records],
                         [op_format.OP_NAME, op_format.OP_NAME, "CONV_2D (dense)"])
        x = np.random.default_rng(0).normal(0, 1, (2, 8, 8, 3)).astype(np.float32)
        np.testing.assert_allclose(runtime.predict(rewritten, x), model.predict(x, verbose=0),
                                   rtol=1e-4, atol=1e-4)

    def test_unsupported_fused_activation_stays_builtin(self):
        g = op_format.ConvGeometry(3, 3, 2, 4)
        w = np.zeros((4, 3, 3, 2), np.float32)
        w[:, 1, 1, :] = 1.0
        model = tflite_model.read(tflite_model.single_conv_model((1, 5, 5, 2), w, None, g))
        model.subgraphs[0].operators[0].builtinOptions.fusedActivationFunction = (
            schema.ActivationFunctionType.TANH)
        _, records = tflite_rewrite.rewrite(tflite_model.write(model))
        self.assertIn("not supported", records[0].runs_as)



class SequentialRefitTest(absltest.TestCase):

    def test_refitting_in_order_undoes_compounded_error(self):
        """Every conv of the trained demo (saved, reloaded) pruned to 70 % with the per-layer
        re-fit alone loses most of its agreement with the original on probes; re-fitting in
        order to the unpruned outputs recovers it, and never brings back a pruned weight (it
        may zero one whose input is now always zero)."""
        from hybrid_pruning import io, probes as probes_lib

        model = graph.normalize(io.load_keras_model(str(io.DEMO_MODEL)), None)
        layers, _ = graph.prunable_layers(model)
        probes = probes_lib.make_probes(model, "bn", 64, (0.0, 1.0), 0)
        reference = model.predict(probes, verbose=0).argmax(1)
        refit = weight_pruning.SequentialRefit(model, layers, probes)
        inputs = statistics.collect(model, layers, probes)
        for pl, x in zip(layers, inputs):
            if pl.kind == "conv2d":
                pruner = weight_pruning.LayerPruner(pl, x)
                r = pruner.result(*pruner.evaluate(0.7))
                pl.set_folded(r.kernel, r.bias_delta)
        masks = [pl.kernel != 0 for pl in layers]
        alone = np.mean(model.predict(probes, verbose=0).argmax(1) == reference)
        refit.apply()
        together = np.mean(model.predict(probes, verbose=0).argmax(1) == reference)
        self.assertLess(alone, 0.8)
        self.assertGreater(together, alone + 0.1)
        for pl, mask in zip(layers, masks):
            self.assertFalse(np.any((pl.kernel != 0) & ~mask), pl.name)

    def test_remembered_refits_equal_fresh_ones(self):
        """With levels, a layer whose own and upstream levels were re-fitted before takes the
        stored result: after another candidate in between, every weight and bias is what a
        fresh re-fit gives."""
        from hybrid_pruning import io, probes as probes_lib

        model = graph.normalize(io.load_keras_model(str(io.DEMO_MODEL)), None)
        layers, _ = graph.prunable_layers(model)
        probes = probes_lib.make_probes(model, "bn", 32, (0.0, 1.0), 0)
        refit = weight_pruning.SequentialRefit(model, layers, probes)
        pruners = [weight_pruning.LayerPruner(pl, x) for pl, x in
                   zip(layers, statistics.collect(model, layers, probes))]
        snapshot = model.get_weights(), [pl.shift.copy() for pl in layers]

        def candidate(sparsities, levels):
            model.set_weights(snapshot[0])
            for pl, shift in zip(layers, snapshot[1]):
                pl.shift = shift.copy()
            for pl, pruner, s in zip(layers, pruners, sparsities):
                r = pruner.result(*pruner.evaluate(s))
                pl.set_folded(r.kernel, r.bias_delta)
            refit.apply(levels)
            return [w.copy() for w in model.get_weights()] + [pl.folded_bias for pl in layers]

        first = [0.5, 0.6, 0.7, 0.5, 0.6, 0.7, 0.0]
        other = [0.5, 0.6, 0.3, 0.5, 0.6, 0.7, 0.0]  # the third layer differs
        fresh = {"first": candidate(first, None), "other": candidate(other, None)}
        for name, sparsities in (("first", first), ("other", other), ("first", first),
                                 ("other", other)):
            for a, b in zip(candidate(sparsities, sparsities), fresh[name]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
        # The layers after the third differ between the two: a cache keyed on a layer's own
        # level alone would hand them the other candidate's re-fit.
        candidate(first, None)
        fifth = layers[4].kernel
        candidate(other, None)
        self.assertFalse(np.allclose(fifth, layers[4].kernel))

    def test_stepwise_equals_a_pass_from_the_input(self):
        """statistics.Stepwise, one layer after another on a residual model with a separable
        conv, gives each layer the input a tap model from the input gives, also after the
        layers before it changed, and the model's outputs with the layer it stands at changed;
        SequentialRefit re-fits the same weights with it as with taps."""
        keras.utils.set_random_seed(3)
        inputs = keras.Input((12, 12, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
        y = keras.layers.SeparableConv2D(8, 3, padding="same")(y)
        x = keras.layers.Add()([keras.layers.Conv2D(8, 1)(x), y])  # the shortcut conv
        x = keras.layers.Conv2D(6, 1, strides=2)(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(4)(x))
        path = self.create_tempdir().full_path + "/residual.keras"
        model.save(path)
        model = graph.normalize(keras.models.load_model(path), None)
        layers, _ = graph.prunable_layers(model)
        probes = np.random.default_rng(0).uniform(0, 1, (40, 12, 12, 3)).astype(np.float32)
        planned = statistics.Stepwise.planned_bytes(model, layers, len(probes))
        self.assertGreater(planned, 0)
        self.assertEqual(statistics.planned_bytes(model, layers, len(probes), stepwise=True)
                         - statistics.planned_bytes(model, layers, len(probes)), planned)
        stepped = weight_pruning.SequentialRefit(model, layers, probes)
        saved = statistics.STEPWISE_BYTES
        statistics.STEPWISE_BYTES = 0  # a tap from the input per layer instead
        try:
            tapped = weight_pruning.SequentialRefit(model, layers, probes)
        finally:
            statistics.STEPWISE_BYTES = saved
        self.assertIsNotNone(stepped.stepwise)
        self.assertIsNone(tapped.stepwise)
        for a, b in zip(stepped.reference, tapped.reference):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

        def check():
            stepped.stepwise.restart()
            for k, pl in enumerate(layers):
                expected = statistics.tap_model(model, [pl]).predict(probes, verbose=0)
                np.testing.assert_allclose(stepped.stepwise.inputs(k), expected, rtol=1e-5,
                                           atol=1e-5, err_msg=pl.name)
                held = sum(v.nbytes for v in stepped.stepwise.values.values() if v is not probes)
                self.assertLessEqual(held, planned, pl.name)
            with self.assertRaisesRegex(ValueError, "restart"):
                stepped.stepwise.inputs(0)

        check()
        # outputs(): the model's outputs with the layer the pass stands at changed.
        stepped.stepwise.restart()
        for k, pl in enumerate(layers):
            stepped.stepwise.inputs(k)
            saved = pl.layer.get_weights()
            pl.set_kernel(pl.kernel * np.random.default_rng(k).uniform(0, 2, pl.kernel.shape))
            np.testing.assert_allclose(stepped.stepwise.outputs()[0],
                                       model.predict(probes, verbose=0), rtol=1e-4,
                                       atol=1e-5, err_msg=pl.name)
            pl.layer.set_weights(saved)
        for pl in layers:  # prune every layer: the next pass must see it
            pl.set_folded(np.where(np.abs(pl.folded_kernel) < 0.1, 0, pl.folded_kernel))
        check()
        pruned = model.get_weights(), [pl.shift.copy() for pl in layers]
        results = []
        for refit in (stepped, tapped):
            model.set_weights(pruned[0])
            for pl, shift in zip(layers, pruned[1]):
                pl.shift = shift.copy()
            refit.apply()
            results.append(model.get_weights())
        for a, b, c in zip(*results, pruned[0]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        self.assertFalse(all(np.array_equal(a, c) for a, c in zip(results[0], pruned[0])))

if __name__ == "__main__":
    absltest.main()
