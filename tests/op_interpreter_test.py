"""HybridSparseConv2D inside the real LiteRT interpreter against the builtin CONV_2D."""

from __future__ import annotations

import platform

import numpy as np
from absl.testing import absltest
from hypothesis import given, settings, strategies as st
from ai_edge_litert import interpreter as litert

from hybrid_pruning import op_format, runtime, tflite_model


# Every kernel variant this machine can run goes through the interpreter tests.
def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}


_X86 = platform.machine() == "x86_64"
KERNELS = (["reference"] + (["avx2"] if _X86 and {"avx2", "fma"} <= _cpu_flags() else [])
           + (["avx512"] if _X86 and {"avx2", "avx512f"} <= _cpu_flags() else []))


def _run(model: bytes, x: np.ndarray, ours: bool, num_threads: int = 1, kernel: str = ""
         ) -> np.ndarray:
    return runtime.predict(model, x, num_threads, with_ops=ours, kernel=kernel)


def _random_case(rng: np.random.Generator):
    while True:
        kh, kw = rng.integers(1, 6, 2)
        g = op_format.ConvGeometry(
            int(kh), int(kw), int(rng.integers(1, 33)), int(rng.integers(1, 49)),
            *(int(v) for v in rng.integers(1, 4, 4)),
            padding=str(rng.choice(["SAME", "VALID"])),
            activation=str(rng.choice(["NONE", "RELU", "RELU6"])))
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 20)), int(rng.integers(1, 20)),
                 g.in_channels)
        eff_h = (g.kernel_h - 1) * g.dilation_h + 1
        eff_w = (g.kernel_w - 1) * g.dilation_w + 1
        if g.padding == "SAME" or (shape[1] >= eff_h and shape[2] >= eff_w):
            return g, shape


def _random_weights(rng, g, sparsity):
    w = rng.standard_normal((g.out_channels, g.kernel_h, g.kernel_w, g.in_channels))
    w[rng.random(w.shape) < sparsity] = 0.0
    return w.astype(np.float32), rng.standard_normal(g.out_channels).astype(np.float32)


def _rel_err(actual, expected):
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-6))


class OpVsBuiltinTest(absltest.TestCase):

    def test_random_geometries_and_sparsities_match_builtin(self):
        rng = np.random.default_rng(1125)
        sparsities = [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
        for i in range(48):
            g, shape = _random_case(rng)
            sparsity = sparsities[i % len(sparsities)]
            block = int(rng.choice([1, 1, 2, 4, 8]))
            w, b = _random_weights(rng, g, sparsity)
            x = rng.standard_normal(shape).astype(np.float32)
            if i % 3 == 0:
                x[rng.random(shape) < 0.5] = 0.0
            want = _run(tflite_model.single_conv_model(shape, w, b, g, "builtin"), x, False)
            ours = tflite_model.single_conv_model(shape, w, b, g, "hybrid", block)
            for kernel in KERNELS:
                got = _run(ours, x, True, kernel=kernel)
                msg = f"{kernel} case {i}: {g} input {shape} sparsity {sparsity} block {block}"
                self.assertEqual(got.shape, want.shape, msg)
                self.assertLessEqual(_rel_err(got, want), 1e-5, msg)

    def test_thresholds_equal_builtin_on_thresholded_input(self):
        rng = np.random.default_rng(7)
        g = op_format.ConvGeometry(3, 3, 16, 24, 1, 1, 1, 1, "SAME", "RELU")
        w, b = _random_weights(rng, g, 0.6)
        x = rng.standard_normal((2, 10, 10, 16)).astype(np.float32)
        thr = rng.uniform(0.0, 1.0, 16).astype(np.float32)
        x_cut = np.where(np.abs(x) < thr, 0.0, x).astype(np.float32)
        want = _run(tflite_model.single_conv_model(x.shape, w, b, g, "builtin"), x_cut, False)
        for kernel in KERNELS:
            got = _run(tflite_model.single_conv_model(x.shape, w, b, g, "hybrid", 1, thr), x,
                       True, kernel=kernel)
            self.assertLessEqual(_rel_err(got, want), 1e-5, kernel)
        # The thresholds must matter: without them the result differs.
        plain = _run(tflite_model.single_conv_model(x.shape, w, b, g, "hybrid"), x, True)
        self.assertGreater(_rel_err(plain, want), 1e-3)

    def test_resize_and_threads(self):
        rng = np.random.default_rng(3)
        g = op_format.ConvGeometry(3, 3, 32, 64, 2, 2, 1, 1, "SAME", "RELU6")
        w, b = _random_weights(rng, g, 0.8)
        model_b = tflite_model.single_conv_model((1, 8, 8, 32), w, b, g, "builtin")
        model_h = tflite_model.single_conv_model((1, 8, 8, 32), w, b, g, "hybrid", 4)
        for shape, threads in [((1, 8, 8, 32), 1), ((3, 33, 17, 32), 2), ((2, 64, 64, 32), 2)]:
            x = rng.standard_normal(shape).astype(np.float32)
            want = _run(model_b, x, False, threads)
            for kernel in KERNELS:
                got = _run(model_h, x, True, threads, kernel)
                self.assertLessEqual(_rel_err(got, want), 1e-5, f"{kernel} {shape} {threads}")

    def test_packed_model_is_smaller_than_dense_at_half_sparsity(self):
        rng = np.random.default_rng(5)
        g = op_format.ConvGeometry(3, 3, 64, 64)
        w, b = _random_weights(rng, g, 0.5)
        dense = tflite_model.single_conv_model((1, 8, 8, 64), w, b, g, "builtin")
        ours = tflite_model.single_conv_model((1, 8, 8, 64), w, b, g, "hybrid")
        self.assertLess(len(ours), 0.8 * len(dense))


class OpErrorTest(absltest.TestCase):

    def _model(self, mutate):
        g = op_format.ConvGeometry(3, 3, 4, 8)
        w = np.ones((8, 3, 3, 4), np.float32)
        model = tflite_model.read(
            tflite_model.single_conv_model((1, 6, 6, 4), w, None, g, "hybrid"))
        mutate(model)
        return tflite_model.write(model)

    def _allocate_error(self, model: bytes) -> str:
        it = runtime.make_interpreter(model_content=model)
        with self.assertRaises(RuntimeError) as cm:
            it.allocate_tensors()
        return str(cm.exception)

    def test_corrupt_options_name_the_node_and_field(self):
        def corrupt(m):
            opts = bytearray(m.subgraphs[0].operators[0].customOptions.tobytes())
            opts[8] = 0  # kernel_h = 0
            m.subgraphs[0].operators[0].customOptions = np.frombuffer(bytes(opts), np.uint8)
        msg = self._allocate_error(self._model(corrupt))
        self.assertIn("HybridSparseConv2D node 0", msg)
        self.assertIn("kernel_h", msg)

    def test_truncated_options_are_rejected(self):
        for n in (0, 3, 20, 55):
            def cut(m, n=n):
                op = m.subgraphs[0].operators[0]
                op.customOptions = op.customOptions[:n] if n else None
            self.assertIn("custom options", self._allocate_error(self._model(cut)))

    def test_out_of_range_index_is_rejected(self):
        def bad_index(m):
            sg = m.subgraphs[0]
            t = sg.tensors[sg.operators[0].inputs[3]]
            m.buffers[t.buffer].data = np.frombuffer(
                np.full(t.shape, 99, np.int16).tobytes(), np.uint8)
        self.assertIn("row_block", self._allocate_error(self._model(bad_index)))

    def test_wrong_input_channels(self):
        def wrong_channels(m):
            sg = m.subgraphs[0]
            sg.tensors[sg.inputs[0]].shape = np.asarray([1, 6, 6, 5], np.int32)
        self.assertIn("channels", self._allocate_error(self._model(wrong_channels)))

    def test_without_delegate_the_op_is_unresolved(self):
        model = self._model(lambda m: None)
        it = litert.Interpreter(model_content=model)
        with self.assertRaisesRegex(RuntimeError, op_format.OP_NAME):
            it.allocate_tensors()

    def test_unknown_delegate_option(self):
        with self.assertRaisesRegex(ValueError, "unknown option 'nope'"):
            litert.load_delegate(runtime.delegate_path(), {"nope": "1"})
        with self.assertRaisesRegex(ValueError, "kernel='sve9' is not available"):
            litert.load_delegate(runtime.delegate_path(), {"kernel": "sve9"})


class FormatRoundTripTest(absltest.TestCase):

    @settings(max_examples=60, deadline=None)
    @given(out_c=st.integers(1, 40), kh=st.integers(1, 4), kw=st.integers(1, 4),
           in_c=st.integers(1, 12), block=st.sampled_from([1, 2, 3, 4, 8, 16]),
           sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
    def test_pack_unpack(self, out_c, kh, kw, in_c, block, sparsity, seed):
        rng = np.random.default_rng(seed)
        w = rng.standard_normal((out_c, kh, kw, in_c)).astype(np.float32)
        w[rng.random(w.shape) < sparsity] = 0.0
        g = op_format.ConvGeometry(kh, kw, in_c, out_c)
        packed = op_format.pack_filter(w, block)
        np.testing.assert_array_equal(op_format.unpack_filter(packed, g), w)
        self.assertEqual(packed.col_ptr[-1], packed.nonzero_blocks)
        geometry, block_size, thr = op_format.decode_options(
            op_format.encode_options(g, block, np.full(in_c, 0.5)))
        self.assertEqual((geometry, block_size), (g, block))
        np.testing.assert_array_equal(thr, np.full(in_c, 0.5, np.float32))


if __name__ == "__main__":
    absltest.main()
