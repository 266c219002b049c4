"""Target profiles: names and options, and the modelled latencies' structure (what the
optimiser relies on). One run writing a model per target: prune_cli_test."""

from __future__ import annotations

from absl.testing import absltest

from hybrid_pruning import runtime, targets

_3X3 = targets.ConvShape(32, 32, 64, 64, 3, 3, (1, 1), (1, 1), "SAME")
_1X1 = targets.ConvShape(28, 28, 128, 128, 1, 1, (1, 1), (1, 1), "SAME")
_STRIDED = targets.ConvShape(33, 31, 16, 24, 3, 3, (2, 2), (1, 1), "VALID")


class ParseTest(absltest.TestCase):

    def test_names_and_options(self):
        self.assertEqual(targets.parse_target("riscv64-rvv:vlen=512"), ("riscv64-rvv", 512))
        self.assertEqual(targets.parse_target("arm64-neon"), ("arm64-neon", None))
        self.assertEqual(targets.file_tag("riscv64-rvv:vlen=512"), "riscv64-rvv-vlen512")
        for bad, says in (("arm64", "unknown target 'arm64'"),
                          ("arm64-neon:vlen=128", "only riscv64-rvv"),
                          ("riscv64-rvv:vlen=100", "power of two")):
            with self.assertRaisesRegex(ValueError, says):
                targets.parse_target(bad)

    def test_x86_targets_this_cpu_has_are_measured_with_that_kernel(self):
        isa = targets.host_isa()
        if not isa:
            self.skipTest("not an x86 machine with AVX2")
        profile = targets.profile_for("x86_64-avx2")
        self.assertFalse(profile.modelled)
        self.assertEqual(profile.kernel, "avx2")
        self.assertTrue(targets.profile_for("arm64-neon").modelled)
        # int8 too: measured with that variant's int8 kernels (AVX2's here).
        int8 = targets.profile_for("x86_64-avx2", dtype="int8")
        self.assertEqual((int8.modelled, int8.kernel, int8.dtype), (False, "avx2", "int8"))
        self.assertEqual(targets.profile_for("arm64-neon", dtype="int8").dtype, "int8")


class ClockTest(absltest.TestCase):

    def test_the_analytic_model_gets_the_measured_clock(self):
        ghz = runtime.clock_ghz()
        if ghz == 0.0:
            self.skipTest("no timing loop for this architecture")
        # A chain of dependent one-cycle adds: any core of this decade runs 0.5-7 of them/ns.
        self.assertBetween(ghz, 0.5, 7.0)
        # The model prices in the measured clock, not /proc/cpuinfo's nominal one (one
        # measurement per process: two readings on a loaded machine need not agree).
        self.assertEqual(targets.host_ghz(), ghz)
        self.assertEqual(targets.ModelledProfile("x86_64-avx2", ghz=targets.host_ghz()).core.ghz,
                         ghz)


class ModelledProfileTest(absltest.TestCase):

    def test_every_target_prices_every_shape(self):
        for name in targets.CORES:
            p = targets.ModelledProfile(name)
            for shape in (_3X3, _1X1, _STRIDED):
                dense = p.builtin(shape)
                times = [p.ours(shape, s, 1) for s in (0.0, 0.5, 0.8, 0.95)]
                self.assertGreater(dense, 0, name)
                # Fewer nonzeros, less time; and never below the fixed costs.
                self.assertEqual(times, sorted(times, reverse=True), (name, shape))
                self.assertGreater(times[-1], 0)

    def test_blocks_reuse_input_loads_on_vector_targets(self):
        for name in ("x86_64-avx512", "arm64-neon", "riscv64-rvv"):
            p = targets.ModelledProfile(name)
            self.assertLess(p.ours(_3X3, 0.8, 4), p.ours(_3X3, 0.8, 1), name)
            # Zero inputs cost the vector kernels as much as any others.
            self.assertEqual(p.ours(_3X3, 0.8, 1, 0.5), p.ours(_3X3, 0.8, 1), name)
            self.assertFalse(p.activation_pays)

    def test_zero_inputs_pay_on_the_scalar_reference(self):
        p = targets.ModelledProfile("generic")
        self.assertTrue(p.activation_pays)
        self.assertLess(p.ours(_3X3, 0.5, 1, 0.5), p.ours(_3X3, 0.5, 1, 0.0))
        # Dense weights and inputs: the reference kernel is slower than a dense conv.
        self.assertGreater(p.ours(_3X3, 0.0, 1), p.builtin(_3X3))

    def test_longer_vectors_take_longer_per_instruction_and_tile_more(self):
        short = targets.ModelledProfile("riscv64-rvv", vlen=128)
        long = targets.ModelledProfile("riscv64-rvv", vlen=512)
        self.assertEqual((short.kernel.tile, long.kernel.tile), (16, 64))
        self.assertEqual(short.name, "riscv64-rvv:vlen=128")
        self.assertGreater(long.core.fma, short.core.fma)


class GeometryTest(absltest.TestCase):

    def test_the_model_prices_the_tiles_the_plugin_is_built_with(self):
        g = runtime.kernel_geometry()  # every ISA's, whatever this build runs
        self.assertEqual(set(g["qs8"]), {"avx512vnni", "avx2", "neon", "neondot", "riscv-p"})
        self.assertEqual(set(g["f32"]) >= {"avx2", "avx2_wide", "avx512", "neon"}, True)
        neon = targets.microkernel("arm64-neon")
        self.assertEqual((neon.tile, neon.max_rows),
                         (g["f32"]["neon"]["tile"], g["f32"]["neon"]["max_rows"]))
        self.assertEqual(targets.microkernel("x86_64-avx2").unstructured_tile,
                         g["f32"]["avx2_wide"]["tile"])
        self.assertEqual(targets.int8_tiles("x86_64-avx512"),
                         tuple(g["qs8"]["avx512vnni"]["tiles"]))
        self.assertEqual(targets.int8_tiles("arm64-neon"), tuple(g["qs8"]["neondot"]["tiles"]))
        self.assertEqual(targets.int8_tiles("riscv64-rvv", 512), (512 // 32 * g["rvv"]["lmul"],))


class ModelledInt8Test(absltest.TestCase):

    def test_every_target_prices_int8(self):
        for name in targets.CORES:
            p = targets.ModelledProfile(name, dtype="int8")
            f32 = targets.ModelledProfile(name)
            for shape in (_3X3, _1X1, _STRIDED):
                times = [p.ours(shape, s, 4) for s in (0.0, 0.5, 0.8, 0.95)]
                self.assertEqual(times, sorted(times, reverse=True), (name, shape))
                self.assertGreater(times[-1], 0)
                # Dense int8 beats dense float32 where vectors hold more of it.
                if name == "generic":
                    self.assertEqual(p.builtin(shape), f32.builtin(shape))
                else:
                    self.assertLess(p.builtin(shape), f32.builtin(shape), (name, shape))

    def test_dot_product_targets_win_on_sparse_3x3(self):
        # At 90 % zero groups of 4 input channels a 3x3 layer is worth our int8 op where the
        # ISA has a 4-way byte dot product (its per-nonzero work is one instruction per
        # vector); dense, it is not.
        for name in ("x86_64-avx512", "arm64-neon"):
            p = targets.ModelledProfile(name, dtype="int8")
            self.assertLess(p.ours(_3X3, 0.9, 1), p.builtin(_3X3), name)
            self.assertGreater(p.ours(_3X3, 0.0, 1), p.builtin(_3X3), name)

    def test_block_kernels_reuse_input_loads(self):
        # Blocks of 4 output channels: one input load feeds 4 dot products where the ISA's
        # family has a block kernel; elsewhere blocks run as rows, the same words.
        for name in ("x86_64-avx512", "x86_64-avx2", "arm64-neon"):
            p = targets.ModelledProfile(name, dtype="int8")
            self.assertTrue(p.int8_block_tiles, name)
            self.assertLess(p.ours(_3X3, 0.7, 4), 0.9 * p.ours(_3X3, 0.7, 1), name)
        p = targets.ModelledProfile("riscv64-rvv", dtype="int8")
        self.assertFalse(p.int8_block_tiles)
        self.assertAlmostEqual(p.ours(_3X3, 0.7, 4) / p.ours(_3X3, 0.7, 1), 1.0, 6)

    def test_builtin_int8_pays_per_output(self):
        # XNNPACK requantizes every output: per MAC, a layer of few input channels costs it
        # more than one of many (conv_bench_int8.md: 1x1 112x112 32->64 against 28x28 256).
        few = targets.ConvShape(112, 112, 32, 64, 1, 1, (1, 1), (1, 1), "SAME")
        many = targets.ConvShape(28, 28, 256, 256, 1, 1, (1, 1), (1, 1), "SAME")
        p = targets.ModelledProfile("x86_64-avx512", dtype="int8")
        per_mac = [p.builtin(s) / (s.in_h * s.in_w * s.in_c * s.out_c) for s in (few, many)]
        self.assertGreater(per_mac[0], 1.5 * per_mac[1])

    def test_rvv_int8_tile_follows_vlen(self):
        short = targets.ModelledProfile("riscv64-rvv", vlen=128, dtype="int8")
        long = targets.ModelledProfile("riscv64-rvv", vlen=512, dtype="int8")
        self.assertEqual((short.int8_tiles, long.int8_tiles), ((16,), (64,)))


if __name__ == "__main__":
    absltest.main()
