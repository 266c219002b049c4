"""--dtype=int8 end to end: pruning in groups of input channels, the int8 conversion on the
probes, the rewrite to our int8 op (bit-exact with the stock int8 model it replaces), and the
CLI's refusals. Models are saved to disk and reloaded first."""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np
from absl.testing import absltest

from hybrid_pruning import (convert, graph, io, op_format, pipeline, probes, runtime,
                            targets, tflite_model)
from hybrid_pruning.techniques import weight_pruning

import test_models


class _Profile:
    """Our op five times faster than the builtin once 80 % sparse in blocks of 4 input x 4
    output channels, slower otherwise: the search must prune in blocks and choose our op."""

    modelled = True
    name = "formula"
    activation_pays = False

    def builtin(self, shape) -> float:
        return 1.0

    def ours(self, shape, sparsity: float, block: int = 1,
             activation_sparsity: float = 0.0) -> float:
        return 0.2 if block == 4 and sparsity >= 0.8 else 2.0


def _ops(flat: bytes) -> list[tuple[str, bytes | None]]:
    model = tflite_model.read(flat)
    out = []
    for op in model.subgraphs[0].operators:
        custom = tflite_model.custom_code(model, op)
        name = custom or str(tflite_model.builtin_code(model, op))
        out.append((name, bytes(op.customOptions) if custom else None))
    return out


class GroupsTest(absltest.TestCase):

    def test_blocks_along_input_channels_share_a_score_per_tap(self):
        rng = np.random.default_rng(0)
        kh, kw, in_c, out_c = 3, 3, 6, 5
        w = rng.standard_normal((kh * kw * in_c, out_c))
        scores = weight_pruning.block_scores(w, 1, in_c=in_c).reshape(kh * kw, in_c, out_c)
        # Channels 0-3 of a tap are one group, 4-5 (padded) the next.
        np.testing.assert_allclose(scores[:, :4], np.repeat(scores[:, :1], 4, axis=1))
        np.testing.assert_allclose(scores[:, 4:], np.repeat(scores[:, 4:5], 2, axis=1))
        expected = np.sqrt(np.square(w.reshape(kh * kw, in_c, out_c)[:, :4]).sum(1))
        np.testing.assert_allclose(scores[:, 0], expected)

    def test_blocks_of_output_channels_span_groups_of_input_channels(self):
        rng = np.random.default_rng(1)
        kh, kw, in_c, out_c = 3, 3, 6, 6
        w = rng.standard_normal((kh * kw * in_c, out_c))
        scores = weight_pruning.block_scores(w, 4, in_c=in_c).reshape(kh * kw, in_c, out_c)
        w3 = w.reshape(kh * kw, in_c, out_c)
        # Input channels 0-3 x output channels 0-3 of a tap are one block; 4-5 x 4-5 (both
        # padded) another.
        for (i0, i1), (o0, o1) in (((0, 4), (0, 4)), ((4, 6), (4, 6)), ((0, 4), (4, 6))):
            expected = np.sqrt(np.square(w3[:, i0:i1, o0:o1]).sum(axis=(1, 2)))
            np.testing.assert_allclose(scores[:, i0:i1, o0:o1],
                                       np.broadcast_to(expected[:, None, None],
                                                       (kh * kw, i1 - i0, o1 - o0)))


def _saved_sequential_cnn():
    """The test model as a user has it: saved to disk and loaded back."""
    path = os.path.join(tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR")), "m.keras")
    test_models.sequential_cnn().save(path)
    return io.load_keras_model(path)


class Int8PipelineTest(absltest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        model = test_models.sequential_cnn()
        path = os.path.join(cls.dir, "sequential_cnn.keras")
        model.save(path)
        cls.model = io.load_keras_model(path)
        cls.result = pipeline.compress(cls.model, pipeline.PruneConfig(
            quiet=True, probe_count=32, profile=_Profile(), measure_latency=False,
            sequential_refit=False, dtype="int8"))

    def test_writes_int8_with_our_int8_op_where_chosen(self):
        self.assertIsNone(self.result.fidelity_miss)
        ours = [opts for name, opts in _ops(self.result.tflite) if name == op_format.OP_NAME]
        self.assertNotEmpty(ours)
        for opts in ours:
            # Format version 2, dtype int8 (header field 14), blocks of 4 output channels
            # (what the profile made pay).
            self.assertEqual(int.from_bytes(opts[4:8], "little"), 2)
            self.assertEqual(int.from_bytes(opts[56:60], "little"), 1)
            self.assertEqual(op_format.decode_options(opts)[1], 4)
        rows = [r for r in self.result.report["layers"] if r["runs_as"] == op_format.OP_NAME]
        self.assertLen(rows, len(ours))
        self.assertEqual(self.result.report["config"]["dtype"], "int8")
        # Its convs are int8 (the model is full-integer: no float CONV_2D left).
        model = tflite_model.read(self.result.tflite)
        sg = model.subgraphs[0]
        for op in sg.operators:
            if tflite_model.builtin_code(model, op) == tflite_model.BuiltinOperator.CONV_2D:
                self.assertEqual(sg.tensors[op.inputs[1]].type, tflite_model.TensorType.INT8)

    def test_pruned_in_whole_groups_of_input_channels(self):
        layers, _ = graph.prunable_layers(self.result.model)
        pruned = [pl for pl in layers if pl.kind == "conv2d" and np.any(pl.kernel == 0)]
        self.assertNotEmpty(pruned)
        ours = {r["layer"] for r in self.result.report["layers"]
                if r["runs_as"] == op_format.OP_NAME}
        self.assertNotEmpty(ours)
        for pl in pruned:
            kh, kw, in_c, out_c = pl.kernel.shape
            groups = -(-in_c // 4)
            padded = np.zeros((kh, kw, groups * 4, out_c), bool)
            padded[:, :, :in_c] = pl.kernel != 0
            nonzero = padded.reshape(kh, kw, groups, 4, out_c)
            # A group is all zero or (up to weights that happen to be 0) kept whole, and so
            # is a block of 4 output channels where our op runs it.
            self.assertGreater(np.mean(~nonzero.any(3)), 0.7, pl.name)
            if pl.name not in ours:
                continue
            blocks = np.zeros((kh, kw, groups, -(-out_c // 4) * 4), bool)
            blocks[..., :out_c] = nonzero.any(3)
            blocks = blocks.reshape(kh, kw, groups, -1, 4)
            np.testing.assert_array_equal(blocks.any(-1), blocks.all(-1), pl.name)

    def test_rewrite_is_bit_exact_with_the_stock_int8_model(self):
        # The same pruned model converted by the stock converter on the same probes, run on
        # TFLite's reference kernels, against ours rewritten from it.
        model = self.result.model
        layers, _ = graph.prunable_layers(model)
        x = probes.make_probes(model, "random", 16, (0.0, 1.0), 7)
        stock = convert.to_tflite(model, "int8", x)
        ours, records = pipeline._to_ours(model, layers, {}, 1, int8_probes=x)
        self.assertTrue(any(r.runs_as == op_format.OP_NAME for r in records))
        inputs = np.random.default_rng(1).uniform(0, 1, (4, *x.shape[1:])).astype(np.float32)
        expected = runtime.make_interpreter(model_content=stock, with_ops=False,
                                            reference_ops=True)
        got = runtime.make_interpreter(model_content=ours, reference_ops=True)
        for it in (expected, got):
            it.resize_tensor_input(it.get_input_details()[0]["index"], inputs.shape)
            it.allocate_tensors()
            it.set_tensor(it.get_input_details()[0]["index"], inputs)
            it.invoke()
        np.testing.assert_array_equal(
            got.get_tensor(got.get_output_details()[0]["index"]),
            expected.get_tensor(expected.get_output_details()[0]["index"]))


class _WrongHostProfile(_Profile):
    """Claims our int8 op fast at 20-30 % sparsity in groups of 4 input channels (block 1),
    and runs it on the delegate's reference kernel, which really is slower than the builtin
    on any CPU (the fastest variant is not: on an AMX CPU its tiles beat the builtin at any
    sparsity, conv_bench_int8_xeon.md)."""

    modelled = False
    kernel = "reference"

    def ours(self, shape, sparsity: float, block: int = 1,
             activation_sparsity: float = 0.0) -> float:
        return 0.2 if block == 1 and 0.2 <= sparsity <= 0.3 else 2.0


class Int8FallbackTest(absltest.TestCase):

    def test_slower_layers_go_back_unpruned(self):
        result = pipeline.compress(_saved_sequential_cnn(), pipeline.PruneConfig(
            quiet=True, probe_count=32, profile=_WrongHostProfile(), num_threads=1,
            sequential_refit=False, refine_steps=0, dtype="int8"))
        search = result.report["global_budget_search"]
        self.assertIsNone(result.fidelity_miss)
        self.assertNotEmpty(search["measured_fallback"])
        self.assertTrue(search["measured_fallback_unpruned"])
        rows = {r["layer"]: r for r in result.report["layers"]}
        for name in search["measured_fallback"]:
            self.assertEqual(rows[name]["runs_as"], pipeline.SLOWER)
            self.assertEqual(rows[name]["weight_sparsity"], 0.0, name)
        ours = [n for n, _ in _ops(result.tflite) if n == op_format.OP_NAME]
        self.assertLen(ours, sum(r["runs_as"] == op_format.OP_NAME for r in rows.values()))


class ModelledInt8Test(absltest.TestCase):

    def test_modelled_device_gets_int8_with_our_op_priced_by_the_int8_model(self):
        result = pipeline.compress(_saved_sequential_cnn(), pipeline.PruneConfig(
            quiet=True, probe_count=32, targets=("arm64-neon",), sequential_refit=False,
            refine_steps=0, dtype="int8"))
        self.assertIsNone(result.fidelity_miss)
        self.assertEqual(result.report["target"], {"name": "arm64-neon",
                                                   "latency": "modelled"})
        self.assertNotIn("latency_on_host", result.report)
        predicted = result.report["global_budget_search"]["predicted_seconds"]
        profile = targets.ModelledProfile("arm64-neon", dtype="int8")
        ours = [r["layer"] for r in result.report["layers"]
                if r["runs_as"] == op_format.OP_NAME]
        self.assertNotEmpty(ours)  # the demo-sized convs at 90 % are worth it on A76 sdot
        layers = {pl.name: pl for pl in graph.prunable_layers(result.model)[0]}
        for name in ours:  # priced by the int8 model, and faster than XNNPACK's int8 there
            self.assertLess(predicted[name]["chosen"], predicted[name]["builtin"], name)
            self.assertAlmostEqual(predicted[name]["builtin"],
                                   profile.builtin(targets.conv_shape(layers[name])), 12)
        ops = [opts for name, opts in _ops(result.tflite) if name == op_format.OP_NAME]
        self.assertLen(ops, len(ours))
        for opts in ops:  # our int8 op (format header: dtype 1)
            self.assertEqual(int.from_bytes(opts[56:60], "little"), 1)


class CliTest(absltest.TestCase):

    def test_int8_refuses_the_budgets_objective_by_flag(self):
        prune = os.path.join(os.path.dirname(__file__), "..", "python", "prune")
        for extra, says in ((["--objective=budgets"], "--dtype=int8 needs --objective=latency"),):
            cwd = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
            out = os.path.join(cwd, "o.tflite")
            env = dict(os.environ, HYBRID_PRUNING_USER_CWD=cwd)
            run = subprocess.run([prune, "--model=demo", f"--output={out}", "--dtype=int8",
                                  *extra], capture_output=True, text=True, timeout=300, env=env,
                                 cwd=cwd, stdin=subprocess.DEVNULL)
            self.assertNotEqual(run.returncode, 0)
            self.assertIn(says, run.stderr)
            self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    absltest.main()
