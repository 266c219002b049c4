"""The int8 op inside the real LiteRT interpreter: bit-exact with TFLite's reference int8
CONV_2D on the same weights, at both of TFLite's requantization roundings."""

from __future__ import annotations

import numpy as np
from absl.testing import absltest
from ai_edge_litert import interpreter as litert

from hybrid_pruning import op_format, runtime, tflite_model


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}


# The delegate's variants this CPU runs: each runs int8 with its ISA's int8 kernels (avx2:
# AVX2's; avx512: VNNI where the CPU has it, else AVX2's, and AMX tiles on the layers the
# plan expects them to suit where it has AMX-INT8), the reference with its own.
KERNELS = ["reference"] + [k for k, flag in (("avx2", "avx2"), ("avx512", "avx512f"))
                           if flag in _cpu_flags()]


def _random_case(rng: np.random.Generator):
    """Geometry, input shape, int8 weights, int32 bias and quantization parameters."""
    while True:
        kh, kw = (int(v) for v in rng.integers(1, 4, 2))
        # Widths past 16 and channels past 16 reach the vector kernels' full blocks (the
        # byte transpose of results, 16 positions x 16 channels; 8x8 words of packing).
        g = op_format.ConvGeometry(
            kh, kw, int(rng.integers(1, 41)), int(rng.integers(1, 41)),
            *(int(v) for v in rng.integers(1, 3, 4)),
            padding=str(rng.choice(["SAME", "VALID"])),
            activation=str(rng.choice(["NONE", "RELU", "RELU6"])))
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 41)), int(rng.integers(1, 41)),
                 g.in_channels)
        if g.padding == "SAME" or (shape[1] >= (kh - 1) * g.dilation_h + 1
                                   and shape[2] >= (kw - 1) * g.dilation_w + 1):
            break
    w = rng.integers(-127, 128, (g.out_channels, kh, kw, g.in_channels)).astype(np.int8)
    sparsity = float(rng.choice([0.0, 0.5, 0.8, 0.95]))
    # Zeros in groups of 4 input channels too, as pruning for the dot instructions leaves them.
    w[rng.random(w.shape) < sparsity] = 0
    groups = rng.random((g.out_channels, kh, kw, -(-g.in_channels // 4))) < sparsity / 2
    w[np.repeat(groups, 4, axis=-1)[..., :g.in_channels]] = 0
    input_q = (float(np.exp(rng.uniform(-6, 0))), int(rng.integers(-128, 128)))
    output_q = (float(np.exp(rng.uniform(-4, 1))), int(rng.integers(-128, 128)))
    filter_scales = np.exp(rng.uniform(-8, -3, g.out_channels)).astype(np.float32)
    bias = rng.integers(-20000, 20000, g.out_channels).astype(np.int32)
    quant = {"input": input_q, "output": output_q, "filter_scales": filter_scales}
    return g, shape, w, bias, quant


def _reference(model: bytes, x: np.ndarray) -> np.ndarray:
    """TFLite's reference kernels, no delegate (the stock default would hand the conv to
    XNNPACK, whose requantization is its own)."""
    it = litert.Interpreter(model_content=model,
                            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _requantize(acc: np.ndarray, real: np.ndarray, rounding: str) -> np.ndarray:
    """TFLite's QuantizeMultiplier + MultiplyByQuantizedMultiplier in numpy, per channel
    (last axis), written from its definition to check the single rounding, which the
    pinned runtime's builtin kernels do not use."""
    mant, exp = np.frexp(real.astype(np.float64))
    fixed = np.floor(mant * 2.0 ** 31 + 0.5).astype(np.int64)  # positive: round half up
    exp = np.where(fixed == 2 ** 31, exp + 1, exp).astype(np.int64)
    fixed = np.where(fixed == 2 ** 31, fixed // 2, fixed)
    a = acc.astype(np.int64)
    if rounding == "single":
        total = 31 - exp
        return (a * fixed + (np.int64(1) << (total - 1))) >> total
    a = a << np.maximum(exp, 0)
    ab = a * fixed
    high = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(high < 0, -((-high) >> 31), high >> 31)  # C's truncating division
    right = np.maximum(-exp, 0)
    mask = (np.int64(1) << right) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + ((high & mask) > threshold)


def _numpy_conv(x, w, bias, g: op_format.ConvGeometry, quant, rounding) -> np.ndarray:
    (sx, zx), (sy, zy) = quant["input"], quant["output"]
    n, h, wd, c = x.shape

    def out_size(size, k, s, d):
        eff = (k - 1) * d + 1
        return -(-size // s) if g.padding == "SAME" else (size - eff) // s + 1

    oh = out_size(h, g.kernel_h, g.stride_h, g.dilation_h)
    ow = out_size(wd, g.kernel_w, g.stride_w, g.dilation_w)
    pad_t = pad_l = 0
    if g.padding == "SAME":
        pad_t = max((oh - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1 - h, 0) // 2
        pad_l = max((ow - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1 - wd, 0) // 2
    big = max(h, wd) * 4 + 16
    xp = np.zeros((n, h + 2 * big, wd + 2 * big, c), np.int64)  # zero = the real zero
    xp[:, big:big + h, big:big + wd] = x.astype(np.int64) - zx
    acc = np.zeros((n, oh, ow, g.out_channels), np.int64) + bias
    for ky in range(g.kernel_h):
        for kx in range(g.kernel_w):
            y0 = big - pad_t + ky * g.dilation_h
            x0 = big - pad_l + kx * g.dilation_w
            patch = xp[:, y0:y0 + oh * g.stride_h:g.stride_h, x0:x0 + ow * g.stride_w:g.stride_w]
            acc += np.einsum("nhwc,oc->nhwo", patch, w[:, ky, kx, :].astype(np.int64))
    real = np.float64(sx) * quant["filter_scales"].astype(np.float64) / np.float64(sy)
    y = _requantize(acc, real, rounding) + zy
    lo, hi = -128, 127
    if g.activation != "NONE":
        lo = max(lo, zy)
    if g.activation == "RELU6":
        hi = min(hi, zy + int(np.round(np.float32(6.0) / np.float32(sy))))
    return np.clip(y, lo, hi).astype(np.int8)


class Int8OpTest(absltest.TestCase):

    def test_bit_exact_with_tflite_reference_conv(self):
        rng = np.random.default_rng(19)
        for case in range(120):
            g, shape, w, bias, quant = _random_case(rng)
            block = int(rng.choice([1, 1, 2, 4]))
            x = rng.integers(-128, 128, shape).astype(np.int8)
            builtin = tflite_model.single_conv_model(shape, w, bias, g, "builtin", int8=quant)
            ours = tflite_model.single_conv_model(shape, w, bias, g, "hybrid", block, int8=quant)
            expected = _reference(builtin, x)
            threads = int(rng.integers(1, 3))
            for kernel in KERNELS:
                got = runtime.predict(ours, x, num_threads=threads, kernel=kernel)
                self.assertEqual(got.dtype, np.int8)
                np.testing.assert_array_equal(
                    got, expected, err_msg=f"case {case}: {kernel} {g} input {shape} block "
                    f"{block} threads {threads} quantization {quant['input']} -> "
                    f"{quant['output']}")
            # The numpy definition agrees with the builtin: it can be trusted for the
            # rounding the builtin does not use.
            np.testing.assert_array_equal(_numpy_conv(x, w, bias, g, quant, "double"), expected)

    def test_single_rounding_matches_its_definition(self):
        rng = np.random.default_rng(20)
        differs = 0
        for case in range(60):
            g, shape, w, bias, quant = _random_case(rng)
            x = rng.integers(-128, 128, shape).astype(np.int8)
            single = dict(quant, rounding="single")
            ours = tflite_model.single_conv_model(shape, w, bias, g, "hybrid", int8=single)
            for kernel in KERNELS:
                got = runtime.predict(ours, x, kernel=kernel)
                np.testing.assert_array_equal(
                    got, _numpy_conv(x, w, bias, g, quant, "single"),
                    err_msg=f"case {case}: {kernel} {g}")
            differs += int(np.any(got != _numpy_conv(x, w, bias, g, quant, "double")))
        # The two roundings are really different computations on some outputs.
        self.assertGreater(differs, 0)

    def test_packing_round_trips(self):
        rng = np.random.default_rng(21)
        for in_c in (1, 3, 4, 5, 8, 13):
            g = op_format.ConvGeometry(3, 2, in_c, 7)
            w = rng.integers(-128, 128, (7, 3, 2, in_c)).astype(np.int8)
            w[rng.random(w.shape) < 0.7] = 0
            w[0, 0, 0, :] = np.int8(-128)  # words like 0x80000000 are no float -0.0 here
            for block in (1, 4):
                packed = op_format.pack_filter_qs8(w, block)
                self.assertEqual(packed.col_ptr.size, 3 * 2 * -(-in_c // 4) + 1)
                np.testing.assert_array_equal(op_format.unpack_filter_qs8(packed, g), w)

    def test_bad_int8_op_is_refused_by_name(self):
        rng = np.random.default_rng(22)
        g, shape, w, bias, quant = _random_case(rng)
        ours = tflite_model.single_conv_model(shape, w, bias, g, "hybrid", int8=quant)
        model = tflite_model.read(ours)
        sg = model.subgraphs[0]
        scales = sg.operators[0].inputs[5]
        sg.tensors[scales].shape = np.asarray([g.out_channels + 1], np.int32)
        model.buffers[sg.tensors[scales].buffer].data = np.zeros(
            4 * (g.out_channels + 1), np.uint8)
        with self.assertRaisesRegex(RuntimeError, "filter_scales has"):
            runtime.predict(tflite_model.write(model), rng.integers(-128, 128, shape)
                            .astype(np.int8))


if __name__ == "__main__":
    absltest.main()
