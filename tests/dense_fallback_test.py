"""Dense fallback: convs too dense for the sparse kernels to win stay builtin CONV_2D, without
activation thresholds, and the report counts their MACs as dense."""

from __future__ import annotations

import numpy as np
from absl.testing import absltest

from hybrid_pruning import (convert, graph, op_format, pipeline, runtime, tflite_model, tflite_rewrite)


def _model(seed: int = 0):
    import keras

    rng = np.random.default_rng(seed)
    inp = keras.Input((12, 12, 8))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="low")(inp)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="high")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="head")(x))
    for name, sparsity in (("low", 0.3), ("high", 0.9)):
        layer = model.get_layer(name)
        k, b = layer.get_weights()
        k = rng.standard_normal(k.shape).astype(np.float32) * 0.3
        k[rng.random(k.shape) < sparsity] = 0.0
        layer.set_weights([k, rng.standard_normal(b.shape).astype(np.float32) * 0.1])
    return model


class RewriteTest(absltest.TestCase):

    def test_only_the_sparse_conv_runs_our_op_and_thresholds_of_the_other_are_dropped(self):
        model = _model()
        flat = convert.to_tflite(model)
        names = tflite_rewrite.match_layers(
            flat, {n: model.get_layer(n).get_weights()[0] for n in ("low", "high")})
        by_name = {n: i for i, n in names.items()}
        rng = np.random.default_rng(1)
        thr = {by_name["low"]: rng.uniform(0, 0.5, 8).astype(np.float32),
               by_name["high"]: rng.uniform(0, 0.5, 16).astype(np.float32)}
        fallback, records = tflite_rewrite.rewrite(flat, thresholds=thr, layer_names=names,
                                                   dense_below=0.6)
        runs = {r.layer: r.runs_as for r in records}
        self.assertStartsWith(runs["low"], "CONV_2D (dense fallback")
        self.assertEqual(runs["high"], op_format.OP_NAME)
        ops = tflite_model.read(fallback).subgraphs[0].operators
        self.assertLen([op for op in ops if tflite_model.custom_code(
            tflite_model.read(fallback), op) == op_format.OP_NAME], 1)

        x = rng.uniform(-1, 1, (3, 12, 12, 8)).astype(np.float32)
        got = runtime.predict(fallback, x)
        # The same model with the low layer's thresholds never given:
        only_high, _ = tflite_rewrite.rewrite(
            flat, thresholds={by_name["high"]: thr[by_name["high"]]}, layer_names=names)
        want = runtime.predict(only_high, x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # ... and the low layer's thresholds would have changed the result.
        both, _ = tflite_rewrite.rewrite(flat, thresholds=thr, layer_names=names)
        self.assertGreater(float(np.abs(runtime.predict(both, x) - want).max()), 1e-4)


class PipelineTest(absltest.TestCase):

    def test_fallback_convs_are_counted_dense(self):
        config = pipeline.PruneConfig(quiet=True, probe="random", probe_count=32,
                                      objective="budgets", constant_error_budget=0.0,
                                      guard=pipeline.fidelity.Guard(min_agreement=0.8), merge_error_budget=0.0,
                                      weight_error_budget=0.3, dense_below=1.0)
        result = pipeline.compress(_model(), config)
        ops = tflite_model.read(result.tflite).subgraphs[0].operators
        model = tflite_model.read(result.tflite)
        self.assertEmpty([op for op in ops if tflite_model.custom_code(model, op)])
        convs = [r for r in result.report["layers"] if r["kind"] == "conv2d"]
        self.assertLen(convs, 2)
        for row in convs:
            self.assertGreater(row["weight_sparsity"], 0.0, row)  # pruned, yet dense at run time
            self.assertStartsWith(row["runs_as"], "CONV_2D (dense fallback", row)
            self.assertEqual(row["effective_macs"], row["macs_after_dense"], row)
            self.assertEqual(row["vector_kernel_macs"], row["macs_after_dense"], row)
            self.assertFalse(row["activation_thresholds"], row)


if __name__ == "__main__":
    absltest.main()
